//! Nodes sharing topics through a real redis-server: backends publishing with the documented raw
//! command, delivery across nodes in both codecs, resuming on another node without a gap while
//! publishing continues, and tickets redeemed once across nodes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::redis::RedisServer;
use crate::support::{CODECS, Node};

async fn node(redis: &RedisServer) -> Node {
    Node::with(&[("HERALD_REDIS_URL", &redis.url())]).await
}

#[tokio::test]
async fn a_backend_publishes_with_one_fcall_exactly_as_proto_redis_md_says() {
    let redis = RedisServer::start();
    let n = node(&redis).await;
    for codec in CODECS {
        let topic = format!("news.{}", crate::support::codec_name(codec));
        let mut c = n.client(codec).await;
        c.sub(1, &topic).await;
        // What proto/redis.md tells a backend to run, with redis-cli and no Herald code.
        let out = redis.cli(&[
            "FCALL",
            "herald_publish",
            "1",
            &topic,
            r#"{"headline":"hi"}"#,
        ]);
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("1"), "the offset comes first: {out}");
        let epoch = lines.next().expect("then the epoch").to_owned();
        let m = c.next_msg(&topic).await;
        assert_eq!(m["offset"], 1);
        assert_eq!(m["epoch"], epoch.as_str());
        assert_eq!(m["data"], json!({"headline": "hi"}));
    }
    let refused = redis.cli(&["FCALL", "herald_publish", "1", "news", "not json"]);
    assert!(refused.contains("must be JSON"), "{refused}");
    let refused = redis.cli(&["FCALL", "herald_publish", "1", "bad..topic", "{}"]);
    assert!(refused.contains("bad topic"), "{refused}");
}

#[tokio::test]
async fn messages_published_on_one_node_reach_subscribers_on_another_in_both_codecs() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let mut subs = Vec::new();
    for codec in CODECS {
        let mut c = a.client(codec).await;
        c.sub(1, "room").await;
        subs.push(c);
    }
    let mut publisher = b.client(CODECS[0]).await;
    for i in 1..=100u64 {
        if i % 2 == 0 {
            b.publish("room", json!({"i": i})).await;
        } else {
            let r = publisher
                .request(json!({"op": "pub", "id": i, "topic": "room", "data": {"i": i}}))
                .await;
            assert_eq!(r["op"], "ok", "{r}");
        }
    }
    for c in &mut subs {
        let got = c.expect_offsets("room", 1..=100).await;
        let data: Vec<Value> = got.iter().map(|m| m["data"]["i"].clone()).collect();
        assert_eq!(data, (1..=100).map(|i| json!(i)).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_client_resumes_on_another_node_without_gap_while_publishing_continues() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    for codec in CODECS {
        let topic = format!("live.{}", crate::support::codec_name(codec));
        let mut c = a.client(codec).await;
        c.sub(1, &topic).await;
        for i in 0..20 {
            b.publish(&topic, json!({"i": i})).await;
        }
        // The epoch comes with the messages (the `ok` of a topic with no history has none yet).
        let got = c.expect_offsets(&topic, 1..=20).await;
        let epoch = got[19]["epoch"].as_str().unwrap().to_owned();
        drop(c);
        // Publishing goes on while the client is away and while it resubscribes: it resubscribes
        // once 20 more are published (the publisher says so), and the rest follow meanwhile.
        let (twenty_more, under_way) = tokio::sync::oneshot::channel();
        let publisher = {
            let http = crate::support::http::Http::new(b.addr);
            let topic = topic.clone();
            tokio::spawn(async move {
                let mut twenty_more = Some(twenty_more);
                for i in 20..320 {
                    let body = json!({"topic": topic, "data": {"i": i}}).to_string();
                    let (s, _) = http
                        .post("/v1/publish", Some(crate::support::API_KEY), &body)
                        .await;
                    assert_eq!(s, 200);
                    if i == 39 {
                        let _ = twenty_more.take().expect("once").send(());
                    }
                }
            })
        };
        under_way.await.expect("the publisher published 20 more");
        let mut c = b.client(codec).await;
        let ok = c.sub_since(2, &topic, 20, &epoch).await;
        assert_eq!(ok["op"], "ok", "{ok}");
        assert_eq!(ok["recovered"], true, "{ok}");
        assert!(ok["offset"].as_u64() >= Some(40), "{ok}");
        publisher.await.unwrap();
        c.expect_offsets(&topic, 21..=320).await;
    }
}

#[tokio::test]
async fn a_ticket_minted_on_one_node_is_redeemed_once_on_any_node() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let ticket = a.ticket().await;
    let (c, resp) = crate::support::ws::open(b.addr, &format!("/ws?ticket={ticket}"), None, &[])
        .await
        .expect("redeemed on the other node");
    assert_eq!(resp.status(), 101);
    drop(c);
    let again = crate::support::raw::upgrade(a.addr, &format!("/ws?ticket={ticket}"), &[]).await;
    assert_eq!(again.status, 401);
    assert_eq!(again.body["error"], "ticket_used", "{:?}", again.body);

    // Two nodes racing for one ticket: exactly one wins.
    for _ in 0..20 {
        let ticket = a.ticket().await;
        let path = format!("/ws?ticket={ticket}");
        let (ra, rb) = tokio::join!(
            crate::support::raw::upgrade(a.addr, &path, &[]),
            crate::support::raw::upgrade(b.addr, &path, &[]),
        );
        let wins = [ra.status, rb.status].iter().filter(|s| **s == 101).count();
        assert_eq!(wins, 1, "statuses {} and {}", ra.status, rb.status);
    }
}

#[tokio::test]
async fn readiness_reports_the_bus_and_a_bad_redis_url_stops_the_start() {
    let redis = RedisServer::start();
    let n = node(&redis).await;
    assert_eq!(n.http.get("/readyz").await.status, 200);
    let env: Vec<(String, String)> = [
        ("HERALD_LISTEN", "127.0.0.1:0"),
        ("HERALD_API_KEY", crate::support::API_KEY),
        ("HERALD_JWT_SECRET", crate::support::JWT_SECRET),
        ("HERALD_REDIS_URL", "http://127.0.0.1:1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let err = herald::config::Config::load(None, &env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("HERALD_REDIS_URL"), "{err}");
}

#[tokio::test]
async fn a_directed_message_reaches_its_user_on_every_node() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let all = crate::support::grants(&[">"], &[], &[]);
    let mut on_a = a.client_for(CODECS[0], "bob", &all).await;
    let mut on_b = b.client_for(CODECS[1], "bob", &all).await;
    // What proto/redis.md tells a backend to run, with redis-cli and no Herald code.
    let out = redis.cli(&[
        "FCALL",
        "herald_publish_user",
        "1",
        "bob",
        r#"{"x":1}"#,
        "billing",
    ]);
    assert_eq!(out.trim(), "2", "both nodes got it: {out}");
    for c in [&mut on_a, &mut on_b] {
        let f = c.next_frame().await;
        assert_eq!(
            f,
            json!({"op": "direct", "from": "billing", "data": {"x": 1}})
        );
    }
    // Through a node's HTTP API too, without `from`.
    let body = json!({"user": "bob", "data": "hi"}).to_string();
    let (status, _) = b
        .http
        .post("/v1/publish", Some(crate::support::API_KEY), &body)
        .await;
    assert_eq!(status, 200);
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.next_frame().await, json!({"op": "direct", "data": "hi"}));
    }
    // Once bob has left a node, that node stops listening for him.
    drop(on_a);
    let start = std::time::Instant::now();
    loop {
        let out = redis.cli(&["FCALL", "herald_publish_user", "1", "bob", "{}"]);
        if out.trim() == "1" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "node a kept bob's channel: {out}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
