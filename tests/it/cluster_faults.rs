//! Redis faults made for real: the node's pub/sub connection killed while messages keep being
//! published, and Redis restarted with and without persistence. Clients stay connected and see
//! every message Redis accepted, once, in order.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::redis::RedisServer;
use crate::support::{API_KEY, CODECS, Node};

async fn node(redis: &RedisServer) -> Node {
    Node::with(&[("HERALD_REDIS_URL", &redis.url())]).await
}

/// Polls `/readyz` until it answers `want` (bounded).
async fn until_ready_is(n: &Node, want: u16) {
    let start = Instant::now();
    loop {
        let status = n.http.get("/readyz").await.status;
        if status == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "/readyz stayed {status}, never {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn messages_published_while_the_nodes_pubsub_connection_is_down_are_filled_in_order() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    for codec in CODECS {
        let topic = format!("gap.{}", crate::support::codec_name(codec));
        let mut c = a.client(codec).await;
        c.sub(1, &topic).await;
        let http = crate::support::http::Http::new(b.addr);
        for i in 1..=400u64 {
            let body = json!({"topic": topic, "data": {"i": i}}).to_string();
            let (s, _) = http.post("/v1/publish", Some(API_KEY), &body).await;
            assert_eq!(s, 200);
            if i == 100 {
                // Cut every pub/sub connection (node a's among them) mid-stream.
                let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
                assert_ne!(killed.trim(), "0", "a pub/sub connection was killed");
            }
        }
        c.expect_offsets(&topic, 1..=400).await;
    }
}

#[tokio::test]
async fn redis_restarted_without_persistence_gives_a_new_epoch_and_clients_stay_connected() {
    let mut redis = RedisServer::start_with(false);
    let n = node(&redis).await;
    let mut c = n.client(CODECS[0]).await;
    c.sub(1, "restart").await;
    let (_, old_epoch) = n.publish("restart", json!({"before": 1})).await;
    c.expect_offsets("restart", 1..=1).await;

    redis.kill();
    until_ready_is(&n, 503).await;
    let body = json!({"topic": "restart", "data": {}}).to_string();
    let (status, err) = n.http.post("/v1/publish", Some(API_KEY), &body).await;
    assert_eq!(status, 503, "publishing without Redis fails clearly: {err}");
    assert_eq!(err["error"], "unavailable");

    redis.restart();
    until_ready_is(&n, 200).await;
    // Redis came back empty: the library was reloaded, and the topic has a new epoch.
    let (offset, epoch) = n.publish("restart", json!({"after": 1})).await;
    assert_eq!(offset, 1);
    assert_ne!(epoch, old_epoch);
    let m = c.next_msg("restart").await;
    assert_eq!(
        (m["offset"].as_u64(), m["epoch"].as_str()),
        (Some(1), Some(epoch.as_str()))
    );
    // Resuming in the lost epoch is refused plainly, never replayed wrongly.
    let mut d = n.client(CODECS[1]).await;
    let r = d.sub_since(1, "restart", 1, &old_epoch).await;
    assert_eq!(r["recovered"], false, "{r}");
}

#[tokio::test]
async fn redis_restarted_with_persistence_keeps_history_and_offsets() {
    let mut redis = RedisServer::start_with(true);
    let n = node(&redis).await;
    let mut c = n.client(CODECS[0]).await;
    c.sub(1, "kept").await;
    let mut epoch = String::new();
    for i in 1..=5 {
        epoch = n.publish("kept", json!({"i": i})).await.1;
    }
    c.expect_offsets("kept", 1..=5).await;
    redis.kill();
    until_ready_is(&n, 503).await;
    redis.restart();
    until_ready_is(&n, 200).await;
    let (offset, e) = n.publish("kept", json!({"i": 6})).await;
    assert_eq!((offset, e.as_str()), (6, epoch.as_str()));
    c.expect_offsets("kept", 6..=6).await;
    let mut d = n.client(CODECS[1]).await;
    let r = d.sub_since(1, "kept", 2, &epoch).await;
    assert_eq!(r["recovered"], true, "{r}");
    d.expect_offsets("kept", 3..=6).await;
}

/// A `herald serve` process on a free port, sharing `redis`.
async fn process(redis: &RedisServer) -> (tokio::process::Child, Node) {
    process_with(redis, &[]).await
}

/// [`process`] with more environment.
async fn process_with(
    redis: &RedisServer,
    extra: &[(&str, &str)],
) -> (tokio::process::Child, Node) {
    let url = redis.url();
    let mut env = vec![("HERALD_REDIS_URL", url.as_str())];
    env.extend_from_slice(extra);
    crate::support::proc::serve(&[], &env).await
}

#[tokio::test]
async fn a_node_killed_with_sigkill_loses_nothing_for_clients_that_move_to_another() {
    let redis = RedisServer::start();
    let (mut doomed, n1) = process(&redis).await;
    let (_other, n2) = process(&redis).await;
    let mut c = n1.client(CODECS[1]).await;
    c.sub(1, "survive").await;
    let http = crate::support::http::Http::new(n2.addr);
    let publisher = tokio::spawn(async move {
        for i in 1..=300u64 {
            let body = json!({"topic": "survive", "data": {"i": i}}).to_string();
            let (s, _) = http.post("/v1/publish", Some(API_KEY), &body).await;
            assert_eq!(s, 200);
        }
    });
    // Read a while, then kill the node under the client.
    let (mut last, mut epoch) = (0, String::new());
    for want in 1..=50u64 {
        let m = c.next_msg("survive").await;
        assert_eq!(m["offset"], want);
        // The epoch comes with the messages (the `ok` of a topic with no history has none yet).
        epoch = m["epoch"].as_str().unwrap().to_owned();
        last = want;
    }
    doomed.start_kill().expect("kill -9");
    doomed.wait().await.expect("reaped");
    // The client notices, moves to the other node and resumes where it stopped.
    while let Some(f) = c.next_or_gone().await {
        if f["op"] == "msg" {
            assert_eq!(f["offset"], last + 1, "no gap before the node died");
            last += 1;
        }
    }
    let mut c = n2.client(CODECS[1]).await;
    let r = c.sub_since(1, "survive", last, &epoch).await;
    assert_eq!(r["recovered"], true, "{r}");
    publisher.await.unwrap();
    c.expect_offsets("survive", last + 1..=300).await;
}

#[tokio::test]
async fn a_node_holds_one_redis_subscription_per_topic_whatever_its_subscribers() {
    let redis = RedisServer::start();
    let n = Node::with(&[("HERALD_REDIS_URL", &redis.url())]).await;
    let numsub = |redis: &RedisServer| {
        let out = redis.cli(&["PUBSUB", "NUMSUB", "herald:{shared}:msg"]);
        out.lines().nth(1).unwrap_or("").trim().to_owned()
    };
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = n.client(CODECS[0]).await;
        c.sub(1, "shared").await;
        clients.push(c);
    }
    assert_eq!(
        numsub(&redis),
        "1",
        "three local subscribers, one Redis subscription"
    );
    for c in &mut clients {
        let r = c
            .request(json!({"op": "unsub", "id": 2, "topic": "shared"}))
            .await;
        assert_eq!(r["op"], "ok");
    }
    assert_eq!(numsub(&redis), "0", "dropped after the last");
}

#[tokio::test]
async fn the_per_user_connection_limit_holds_across_nodes_and_a_killed_nodes_share_expires() {
    let redis = RedisServer::start();
    let limit = [("HERALD_MAX_CONNECTIONS_PER_USER", "2")];
    let url = redis.url();
    let env = |extra: &[(&'static str, &'static str)]| {
        let mut v: Vec<(&str, &str)> = vec![("HERALD_REDIS_URL", url.as_str())];
        v.extend_from_slice(extra);
        v
    };
    let a = Node::with(&env(&limit)).await;
    let b = Node::with(&env(&limit)).await;
    let _on_a = a.client(CODECS[0]).await;
    let on_b = b.client(CODECS[0]).await;
    let third =
        crate::support::raw::upgrade(a.addr, &format!("/ws?ticket={}", a.ticket().await), &[])
            .await;
    assert_eq!(third.status, 429, "{:?}", third.body);
    assert_eq!(third.body["error"], "too_many_connections");
    // One closes: a connection is accepted again (the count drops when the close is processed).
    drop(on_b);
    let start = Instant::now();
    let _again = loop {
        let path = format!("/ws?ticket={}", b.ticket().await);
        match crate::support::ws::open(b.addr, &path, None, &[]).await {
            Ok((c, _)) => break c,
            Err(_) => {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "the closed one still counts"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // A node killed with its connections: they stop counting after node_ttl_secs.
    let redis2 = RedisServer::start();
    let (mut doomed, n1) = process_with(
        &redis2,
        &[
            ("HERALD_MAX_CONNECTIONS_PER_USER", "1"),
            ("HERALD_NODE_TTL_SECS", "3"),
        ],
    )
    .await;
    let (_other, n2) = process_with(
        &redis2,
        &[
            ("HERALD_MAX_CONNECTIONS_PER_USER", "1"),
            ("HERALD_NODE_TTL_SECS", "3"),
        ],
    )
    .await;
    let _held = n1.client(CODECS[0]).await;
    let refused =
        crate::support::raw::upgrade(n2.addr, &format!("/ws?ticket={}", n2.ticket().await), &[])
            .await;
    assert_eq!(refused.status, 429);
    doomed.start_kill().expect("kill -9");
    doomed.wait().await.expect("reaped");
    let start = Instant::now();
    loop {
        let r = crate::support::raw::upgrade(
            n2.addr,
            &format!("/ws?ticket={}", n2.ticket().await),
            &[],
        )
        .await;
        if r.status == 101 {
            break;
        }
        assert_eq!(r.status, 429);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the dead node's connection never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn presence_spans_nodes_and_a_killed_nodes_members_leave_after_node_ttl() {
    let redis = RedisServer::start();
    let env = [
        ("HERALD_PRESENCE_TOPICS", "room.*"),
        ("HERALD_NODE_TTL_SECS", "3"),
    ];
    let (_a_proc, a) = process_with(&redis, &env).await;
    let (mut doomed, b) = process_with(&redis, &env).await;
    let all = crate::support::grants(&[">"], &[], &[]);
    let mut alice = a.client_for(CODECS[0], "alice", &all).await;
    alice.sub(1, "room.1").await;
    let mut carol = b.client_for(CODECS[1], "carol", &all).await;
    carol.sub(1, "room.1").await;
    let mut seen = Vec::new();
    while !seen.contains(&"carol".to_string()) {
        let f = alice.next_frame().await;
        if f["op"] == "join" {
            seen.push(f["user"].as_str().unwrap().to_owned());
        }
    }
    let list = alice
        .request(json!({"op": "presence", "id": 2, "topic": "room.1"}))
        .await;
    let mut users: Vec<&str> = list["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "carol"], "{list}");
    // carol's node dies without a word: her entry expires and alice gets the leave.
    doomed.start_kill().expect("kill -9");
    doomed.wait().await.expect("reaped");
    drop(carol);
    let start = Instant::now();
    loop {
        let f = alice.next_frame().await;
        if f["op"] == "leave" {
            assert_eq!(f["user"], "carol", "{f}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no leave for carol"
        );
    }
    let list = alice
        .request(json!({"op": "presence", "id": 3, "topic": "room.1"}))
        .await;
    assert_eq!(list["presence"].as_array().unwrap().len(), 1, "{list}");
}
