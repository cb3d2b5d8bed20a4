//! What Herald leaves in Redis and what it lets in: reading a topic (subscribing, replaying)
//! creates no key, every key a publish creates expires, and an idle topic starts a new epoch.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::redis::RedisServer;
use crate::support::{CODECS, Node};

async fn node(redis: &RedisServer, extra: &[(&str, &str)]) -> Node {
    let url = redis.url();
    let mut env = vec![("HERALD_REDIS_URL", url.as_str())];
    env.extend_from_slice(extra);
    Node::with(&env).await
}

/// Every key in `redis` with its TTL in milliseconds (-1: persistent).
fn keys_and_ttls(redis: &RedisServer) -> Vec<(String, i64)> {
    redis
        .cli(&["--scan"])
        .lines()
        .filter(|k| !k.is_empty())
        .map(|k| {
            let ttl = redis.cli(&["PTTL", k]).trim().parse().unwrap();
            (k.to_owned(), ttl)
        })
        .collect()
}

/// Polls `probe` until it is true, for at most `bound`.
fn until(what: &str, bound: Duration, probe: impl Fn() -> bool) {
    let start = Instant::now();
    while !probe() {
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn redis_reading_topics_creates_no_key_and_every_key_a_publish_creates_expires() {
    let redis = RedisServer::start();
    // 240 requests at once: past the default frame rate, which is not the subject here.
    let n = node(
        &redis,
        &[
            ("HERALD_RATE_LIMIT", "100000"),
            ("HERALD_RATE_BURST", "100000"),
        ],
    )
    .await;
    // A client granted `>` subscribes to many names nobody publishes to, with and without `since`.
    let mut c = n.client(CODECS[0]).await;
    for i in 0..120u64 {
        let topic = format!("ghost.t{i}");
        if i % 2 == 0 {
            let ok = c.sub(1 + i, &topic).await;
            assert_eq!(ok["offset"], 0, "{ok}");
        } else {
            let ok = c.sub_since(1 + i, &topic, 5, "e1").await;
            assert_eq!((&ok["op"], &ok["recovered"]), (&json!("ok"), &json!(false)));
        }
        let r = c
            .request(json!({"op": "unsub", "id": 1000 + i, "topic": topic}))
            .await;
        assert_eq!(r["op"], "ok", "{r}");
    }
    // The function a node calls, as any client may call it: it answers and writes nothing.
    let out = redis.cli(&["FCALL", "herald_history", "1", "ghost.direct", "0"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["0", "0", "0"], "{out}");
    let out = redis.cli(&["FCALL_RO", "herald_history", "1", "ghost.ro", ""]);
    assert_eq!(out.lines().count(), 3, "read-only callable: {out}");

    let keys = keys_and_ttls(&redis);
    assert!(
        keys.iter().all(|(k, _)| !k.contains("ghost")),
        "reading topics created keys: {keys:?}"
    );
    assert!(
        keys.iter().all(|(_, ttl)| *ttl >= 0),
        "persistent keys: {keys:?}"
    );

    // A publish creates the topic's meta and log, both expiring after `history_ttl_secs` (300).
    n.publish("ghost.t0", json!({"x": 1})).await;
    let keys = keys_and_ttls(&redis);
    for suffix in [":meta", ":log"] {
        let key = format!("herald:{{ghost.t0}}{suffix}");
        let ttl = keys.iter().find(|(k, _)| *k == key).map(|(_, t)| *t);
        assert!(
            ttl.is_some_and(|t| t > 0 && t <= 300_000),
            "{key}: {ttl:?} in {keys:?}"
        );
    }
    assert!(keys.iter().all(|(_, ttl)| *ttl >= 0), "{keys:?}");
}

#[tokio::test]
async fn redis_a_topic_idle_past_history_ttl_starts_a_new_epoch_and_old_positions_are_not_recovered()
 {
    let redis = RedisServer::start();
    let n = node(&redis, &[("HERALD_HISTORY_TTL_SECS", "1")]).await;
    let mut live = n.client(CODECS[1]).await;
    live.sub(1, "idle").await;
    let mut old = String::new();
    for i in 1..=3 {
        old = n.publish("idle", json!({"i": i})).await.1;
    }
    live.expect_offsets("idle", 1..=3).await;
    until(
        "the idle topic's meta expires",
        Duration::from_secs(10),
        || redis.cli(&["EXISTS", "herald:{idle}:meta"]).trim() == "0",
    );
    assert_eq!(redis.cli(&["EXISTS", "herald:{idle}:log"]).trim(), "0");
    let (offset, new) = n.publish("idle", json!({"i": 4})).await;
    assert_eq!(offset, 1, "offsets start again");
    assert_ne!(new, old, "in a new epoch");
    // The live subscriber stays, and sees the new epoch on the next message.
    let m = live.next_msg("idle").await;
    assert_eq!(
        (m["offset"].as_u64(), m["epoch"].as_str()),
        (Some(1), Some(new.as_str()))
    );
    // A position in the expired epoch is answered honestly.
    let mut d = n.client(CODECS[0]).await;
    let r = d.sub_since(1, "idle", 3, &old).await;
    assert_eq!(
        (&r["recovered"], &r["offset"]),
        (&json!(false), &json!(1)),
        "{r}"
    );
    let r = d.sub_since(2, "other", 0, "0").await;
    assert_eq!(
        r["recovered"], false,
        "a since in no epoch is never replayed: {r}"
    );
}

#[tokio::test]
async fn redis_fcall_publish_refuses_what_a_subscriber_could_not_read_and_leaves_no_gap() {
    let redis = RedisServer::start();
    let n = node(&redis, &[]).await;
    let mut subs = Vec::new();
    for codec in CODECS {
        let mut c = n.client(codec).await;
        c.sub(1, "checked").await;
        subs.push(c);
    }
    let mut backend = redis.connect().await;
    let deep = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("invalid UTF-8", b"\"\xff\"".to_vec(), "UTF-8"),
        ("an overlong form", b"\"\xc0\x80\"".to_vec(), "UTF-8"),
        ("a UTF-8 surrogate", b"\"\xed\xa0\x80\"".to_vec(), "UTF-8"),
        ("a truncated sequence", b"[\"\xe2\x82\"]".to_vec(), "UTF-8"),
        ("NaN", b"NaN".to_vec(), "must be JSON"),
        ("Infinity", b"{\"x\":Infinity}".to_vec(), "must be JSON"),
        ("-Infinity", b"[-Infinity]".to_vec(), "must be JSON"),
        ("a hex number", b"{\"x\":0x10}".to_vec(), "must be JSON"),
        ("a number out of range", b"[1e400]".to_vec(), "finite"),
        ("nesting of 101", deep(101).into_bytes(), "100 deep"),
        (
            "a lone surrogate escape",
            b"\"\\ud800\"".to_vec(),
            "must be JSON",
        ),
        ("trailing text", b"{} x".to_vec(), "must be JSON"),
    ];
    let fcall = |f: &str, key: &str, data: &[u8]| {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(f).arg(1).arg(key).arg(data);
        cmd
    };
    let good: [Vec<u8>; 3] = [
        b"{\"i\":1}".to_vec(),
        deep(100).into_bytes(),
        "{\"text\":\"h\u{e9}llo \u{1F600}\",\"n\":1e300}"
            .as_bytes()
            .to_vec(),
    ];
    for (i, ok) in good.iter().enumerate() {
        for (what, data, says) in &bad {
            for f in ["herald_publish", "herald_publish_user"] {
                let key = if f == "herald_publish" {
                    "checked"
                } else {
                    "alice"
                };
                let r: redis::RedisResult<redis::Value> =
                    fcall(f, key, data).query_async(&mut backend).await;
                let e = r.expect_err(what).to_string();
                assert!(
                    e.contains("herald: the payload must be JSON"),
                    "{what}: {e}"
                );
                assert!(e.contains(says), "{what}: {e}");
            }
        }
        let (offset, _): (u64, String) = fcall("herald_publish", "checked", ok)
            .query_async(&mut backend)
            .await
            .unwrap();
        assert_eq!(offset, i as u64 + 1, "the refused ones took no offset");
        let want: serde_json::Value = serde_json::from_slice(ok).unwrap();
        for c in &mut subs {
            // Not closed, and the next message is the next good one.
            let m = c.next_msg("checked").await;
            assert_eq!(m["offset"], i as u64 + 1, "{m}");
            assert_eq!(m["data"], want, "{m}");
        }
    }
}
