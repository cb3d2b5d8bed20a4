//! Redis faults that the node's reconnection must survive whatever the error it meets: its
//! authentication refused for a while, Redis full (`maxclients`), Redis stalled (SIGSTOP), the
//! history function denied, and Redis away for longer than subscribers are kept waiting. A
//! backend publishes with `FCALL herald_publish` on its own connection throughout. In every case a
//! subscriber either gets every offset in order or is closed with 1012 (then resumes with
//! `since`): never a jump, never silence.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::support::redis::RedisServer;
use crate::support::ws::Client;
use crate::support::{API_KEY, CODECS, Node};

/// Polls `/readyz` until it answers `want`, for at most `bound`; returns how long it took.
async fn until_ready_is(n: &Node, want: u16, bound: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let status = n.http.get("/readyz").await.status;
        if status == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "/readyz stayed {status}, not {want} within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `probe` until it is true, for at most `bound`.
async fn until(what: &str, bound: Duration, mut probe: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !probe().await {
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `FCALL herald_publish` of `{"i": i}` to `topic` for each `i`, as a backend does; checks the
/// offsets Redis gave (each topic here starts at offset 1, so offset = i).
async fn publish(c: &mut MultiplexedConnection, topic: &str, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        let (offset, _epoch): (u64, String) = redis::cmd("FCALL")
            .arg("herald_publish")
            .arg(1)
            .arg(topic)
            .arg(format!("{{\"i\":{i}}}"))
            .query_async(c)
            .await
            .expect("FCALL herald_publish");
        assert_eq!(offset, i, "{topic}");
    }
}

/// A node with its own ACL user (`herald`, all permissions), so that Redis can refuse it alone.
async fn node_as_herald(redis: &RedisServer) -> Node {
    let out = redis.cli(&["ACL", "SETUSER", "herald", "on", ">pw", "~*", "&*", "+@all"]);
    assert_eq!(out.trim(), "OK");
    Node::with(&[("HERALD_REDIS_URL", &redis.url_as("herald", "pw"))]).await
}

/// How many times Redis refused an authentication (the sum of `ACL LOG`'s auth entries).
async fn auth_refusals(c: &mut MultiplexedConnection) -> u64 {
    let log: Vec<HashMap<String, redis::Value>> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(c)
        .await
        .expect("ACL LOG");
    log.iter()
        .filter(|e| matches!(e.get("reason"), Some(redis::Value::BulkString(r)) if r == b"auth"))
        .filter_map(|e| match e.get("count") {
            Some(redis::Value::Int(n)) => Some(*n as u64),
            _ => None,
        })
        .sum()
}

/// A number from `INFO <section>`.
async fn info_field(c: &mut MultiplexedConnection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(c)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} in INFO {section}"))
        .trim()
        .parse()
        .expect("a number")
}

/// Reads `c`'s frames until every topic reached its last wanted offset (`Ok`) or the server
/// closed the connection (`Err(code)`). Each topic's offsets must follow `next` (the offset it
/// expects first) one by one: a jump or a repeat fails the test at once. `next` is left at the
/// offset each topic would have needed next.
async fn read_in_order(
    c: &mut Client,
    next: &mut HashMap<&'static str, u64>,
    last: &HashMap<&'static str, u64>,
    bound: Duration,
) -> Result<(), u16> {
    let deadline = Instant::now() + bound;
    while last.iter().any(|(t, l)| next[t] <= *l) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "not every message within {bound:?}: {next:?}"
        );
        let f = c.next_event_within(left).await?;
        if f["op"] != "msg" {
            continue;
        }
        let topic = f["topic"].as_str().expect("a topic");
        let want = next
            .get_mut(topic)
            .unwrap_or_else(|| panic!("a msg of an unexpected topic: {f}"));
        assert_eq!(
            f["offset"], *want,
            "offsets in order, no gap, no repeat: {f}"
        );
        *want += 1;
    }
    Ok(())
}

/// Switches the node's Redis user off and kills its connections matching `kill` (a `CLIENT KILL`
/// filter; at least `min_killed` of them), then waits until the node is not ready. Returns the
/// refused logins so far, for [`until_refused_twice`].
async fn refuse_logins(
    redis: &RedisServer,
    n: &Node,
    backend: &mut MultiplexedConnection,
    kill: [&str; 2],
    min_killed: u32,
) -> u64 {
    let refused = auth_refusals(backend).await;
    assert_eq!(redis.cli(&["ACL", "SETUSER", "herald", "off"]).trim(), "OK");
    let killed = redis.cli(&["CLIENT", "KILL", kill[0], kill[1]]);
    assert!(
        killed.trim().parse::<u32>().is_ok_and(|k| k >= min_killed),
        "CLIENT KILL {kill:?} killed {killed:?}, not at least {min_killed}"
    );
    until_ready_is(n, 503, Duration::from_secs(5)).await;
    refused
}

/// Waits until the node has tried to come back and been refused twice since `refused`.
async fn until_refused_twice(backend: &mut MultiplexedConnection, refused: u64) {
    until(
        "two refused reconnects",
        Duration::from_secs(10),
        async || auth_refusals(backend).await >= refused + 2,
    )
    .await;
}

#[tokio::test]
async fn a_node_refused_by_redis_for_a_while_recovers_and_delivers_what_was_published_meanwhile() {
    let redis = RedisServer::start();
    let n = node_as_herald(&redis).await;
    let mut backend = redis.connect().await;
    let mut c = n.client(CODECS[0]).await;
    // One topic with messages before the fault, one without.
    c.sub(1, "acl.busy").await;
    c.sub(2, "acl.quiet").await;
    publish(&mut backend, "acl.busy", 1..=3).await;
    c.expect_offsets("acl.busy", 1..=3).await;

    // The node's pub/sub connection.
    let refused = refuse_logins(&redis, &n, &mut backend, ["TYPE", "pubsub"], 1).await;
    publish(&mut backend, "acl.busy", 4..=10).await;
    publish(&mut backend, "acl.quiet", 1..=5).await;
    until_refused_twice(&mut backend, refused).await;
    publish(&mut backend, "acl.busy", 11..=12).await;

    assert_eq!(redis.cli(&["ACL", "SETUSER", "herald", "on"]).trim(), "OK");
    let took = until_ready_is(&n, 200, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(4), "ready again after {took:?}");
    publish(&mut backend, "acl.busy", 13..=14).await;
    publish(&mut backend, "acl.quiet", 6..=6).await;
    let mut next = HashMap::from([("acl.busy", 4), ("acl.quiet", 1)]);
    let last = HashMap::from([("acl.busy", 14), ("acl.quiet", 6)]);
    let r = read_in_order(&mut c, &mut next, &last, Duration::from_secs(10)).await;
    assert_eq!(r, Ok(()), "every message, in order, on the same connection");
}

#[tokio::test]
async fn a_node_whose_every_connection_is_refused_for_a_while_recovers_its_commands_too() {
    // All the node's connections killed while its login is refused: the command connection
    // (publishes, tickets, history) must come back as well as the pub/sub one.
    let redis = RedisServer::start();
    let n = node_as_herald(&redis).await;
    let mut backend = redis.connect().await;
    let mut c = n.client(CODECS[0]).await;
    c.sub(1, "acl.all").await;
    publish(&mut backend, "acl.all", 1..=2).await;
    c.expect_offsets("acl.all", 1..=2).await;

    // Its pub/sub and command connections.
    let refused = refuse_logins(&redis, &n, &mut backend, ["USER", "herald"], 2).await;
    // Meanwhile a publish through the node is refused honestly (and makes its command connection
    // try to reconnect while its login is refused).
    let body = serde_json::json!({"topic": "acl.all", "data": 0}).to_string();
    let (status, answer) = n.http.post("/v1/publish", Some(API_KEY), &body).await;
    assert_eq!(status, 503);
    assert_eq!(answer["error"], "unavailable", "{answer}");
    // Redis's own words (here its WRONGPASS) stay in the node's log, never reach a client.
    assert!(!answer.to_string().contains("WRONGPASS"), "{answer}");
    publish(&mut backend, "acl.all", 3..=5).await;
    until_refused_twice(&mut backend, refused).await;

    assert_eq!(redis.cli(&["ACL", "SETUSER", "herald", "on"]).trim(), "OK");
    until_ready_is(&n, 200, Duration::from_secs(5)).await;
    // Commands work again: a publish through the node, and a new client's ticket.
    let (offset, _) = n.publish("acl.all", serde_json::json!({"i": 6})).await;
    assert_eq!(offset, 6);
    let mut late = n.client(CODECS[0]).await;
    late.sub(1, "acl.all").await;
    publish(&mut backend, "acl.all", 7..=7).await;
    let mut next = HashMap::from([("acl.all", 3)]);
    let last = HashMap::from([("acl.all", 7)]);
    let r = read_in_order(&mut c, &mut next, &last, Duration::from_secs(10)).await;
    assert_eq!(r, Ok(()), "every message, in order, on the same connection");
    late.expect_offsets("acl.all", 7..=7).await;
}

#[tokio::test]
async fn a_node_that_finds_redis_full_on_reconnect_fills_the_gap_once_it_gets_in() {
    let redis = RedisServer::start();
    let n = Node::with(&[("HERALD_REDIS_URL", &redis.url())]).await;
    // Opened before Redis is full: the backend publishes and reconfigures through it.
    let mut backend = redis.connect().await;
    let mut c = n.client(CODECS[1]).await;
    c.sub(1, "full.busy").await;
    c.sub(2, "full.quiet").await;
    publish(&mut backend, "full.busy", 1..=3).await;
    c.expect_offsets("full.busy", 1..=3).await;

    let rejected = info_field(&mut backend, "stats", "rejected_connections").await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(1)
        .query_async(&mut backend)
        .await
        .expect("CONFIG SET maxclients");
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut backend)
        .await
        .expect("CLIENT KILL");
    assert!(killed >= 1, "the node's pub/sub connection was killed");
    until_ready_is(&n, 503, Duration::from_secs(5)).await;
    publish(&mut backend, "full.busy", 4..=8).await;
    publish(&mut backend, "full.quiet", 1..=3).await;
    until(
        "two rejected reconnects",
        Duration::from_secs(10),
        async || info_field(&mut backend, "stats", "rejected_connections").await >= rejected + 2,
    )
    .await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(10000)
        .query_async(&mut backend)
        .await
        .expect("CONFIG SET maxclients");
    until_ready_is(&n, 200, Duration::from_secs(5)).await;
    publish(&mut backend, "full.busy", 9..=9).await;
    publish(&mut backend, "full.quiet", 4..=4).await;
    let mut next = HashMap::from([("full.busy", 4), ("full.quiet", 1)]);
    let last = HashMap::from([("full.busy", 9), ("full.quiet", 4)]);
    let r = read_in_order(&mut c, &mut next, &last, Duration::from_secs(10)).await;
    assert_eq!(r, Ok(()), "every message, in order, on the same connection");
}

/// Sends SIGCONT when dropped, so that a failed test leaves no stopped server behind it.
struct Resume<'a>(&'a RedisServer);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.signal_stop(false);
    }
}

#[tokio::test]
async fn readiness_follows_a_stalled_redis_within_three_seconds() {
    let redis = RedisServer::start();
    let n = Node::with(&[("HERALD_REDIS_URL", &redis.url())]).await;
    let mut c = n.client(CODECS[0]).await;
    c.sub(1, "stall").await;
    n.publish("stall", serde_json::json!({"i": 1})).await;
    c.expect_offsets("stall", 1..=1).await;

    redis.signal_stop(true);
    let resume = Resume(&redis);
    let took = until_ready_is(&n, 503, Duration::from_secs(10)).await;
    assert!(
        took < Duration::from_millis(3500),
        "/readyz 503 after {took:?}"
    );
    drop(resume);
    until_ready_is(&n, 200, Duration::from_secs(10)).await;
    n.publish("stall", serde_json::json!({"i": 2})).await;
    c.expect_offsets("stall", 2..=2).await;
}

/// Every FCALL function but `herald_history`: what the node's user may call while its history
/// reads are denied.
const ALL_BUT_HISTORY: [&str; 12] = [
    "herald_publish",
    "herald_publish_user",
    "herald_presence_join",
    "herald_presence_leave",
    "herald_presence",
    "herald_conn_open",
    "herald_conn_refresh",
    "herald_conn_close",
    "herald_event",
    "herald_events_reap",
    "herald_events_join",
    "herald_events_beat",
];

#[tokio::test]
async fn a_gap_that_cannot_be_read_closes_its_subscribers_with_1012_and_they_resume_exactly() {
    let redis = RedisServer::start();
    let n = node_as_herald(&redis).await;
    let mut backend = redis.connect().await;
    let mut c = n.client(CODECS[0]).await;
    c.sub(1, "denied").await;
    publish(&mut backend, "denied", 1..=3).await;
    let got = c.expect_offsets("denied", 1..=3).await;
    let epoch = got[2]["epoch"].as_str().unwrap().to_owned();

    // The node may do everything but read history, and for a while not even log in; its
    // pub/sub connection drops, and 4 to 8 are published while it cannot resubscribe.
    let mut deny = vec!["ACL", "SETUSER", "herald", "off", "-fcall"];
    let allowed: Vec<String> = ALL_BUT_HISTORY
        .iter()
        .map(|f| format!("+fcall|{f}"))
        .collect();
    deny.extend(allowed.iter().map(String::as_str));
    assert_eq!(redis.cli(&deny).trim(), "OK");
    let refused = auth_refusals(&mut backend).await;
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_ne!(killed.trim(), "0");
    until_ready_is(&n, 503, Duration::from_secs(5)).await;
    publish(&mut backend, "denied", 4..=8).await;
    until(
        "two refused reconnects",
        Duration::from_secs(10),
        async || auth_refusals(&mut backend).await >= refused + 2,
    )
    .await;
    assert_eq!(redis.cli(&["ACL", "SETUSER", "herald", "on"]).trim(), "OK");
    // Once it is subscribed again, live messages come while the gap still cannot be filled.
    until("resubscribed", Duration::from_secs(5), async || {
        let (_, subs): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("herald:{denied}:msg")
            .query_async(&mut backend)
            .await
            .expect("PUBSUB NUMSUB");
        subs == 1
    })
    .await;
    publish(&mut backend, "denied", 9..=10).await;

    // Never 9 and 10 without 4 to 8: the subscriber is told to resume instead.
    let mut next = HashMap::from([("denied", 4)]);
    let last = HashMap::from([("denied", 10)]);
    let r = read_in_order(&mut c, &mut next, &last, Duration::from_secs(15)).await;
    assert_eq!(
        r,
        Err(1012),
        "closed with 1012 (restarting: resume elsewhere)"
    );
    assert_eq!(next["denied"], 4, "nothing after the gap was delivered");

    // History readable again: resuming with `since` replays exactly what was missed.
    assert_eq!(
        redis.cli(&["ACL", "SETUSER", "herald", "+fcall"]).trim(),
        "OK"
    );
    until_ready_is(&n, 200, Duration::from_secs(5)).await;
    let mut d = n.client(CODECS[1]).await;
    let r = d.sub_since(1, "denied", 3, &epoch).await;
    assert_eq!(r["recovered"], true, "{r}");
    d.expect_offsets("denied", 4..=10).await;
}

#[tokio::test]
async fn subscribers_are_not_kept_waiting_while_redis_stays_away() {
    let mut redis = RedisServer::start_with(true);
    let n = Node::with(&[("HERALD_REDIS_URL", &redis.url())]).await;
    let mut c = n.client(CODECS[1]).await;
    c.sub(1, "away").await;
    let (_, epoch) = n.publish("away", serde_json::json!({"i": 1})).await;
    c.expect_offsets("away", 1..=1).await;

    redis.kill();
    let start = Instant::now();
    let code = c.expect_close_within(Duration::from_secs(20)).await;
    assert_eq!(code, 1012, "restarting: resume elsewhere with since");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(9),
        "a short outage does not close subscribers (closed after {took:?})"
    );

    redis.restart();
    until_ready_is(&n, 200, Duration::from_secs(10)).await;
    n.publish("away", serde_json::json!({"i": 2})).await;
    let mut d = n.client(CODECS[0]).await;
    let r = d.sub_since(1, "away", 1, &epoch).await;
    assert_eq!(r["recovered"], true, "{r}");
    d.expect_offsets("away", 2..=2).await;
}

#[tokio::test]
async fn held_messages_past_the_byte_bound_close_their_subscribers_with_1012_at_once() {
    let redis = RedisServer::start();
    let n = node_as_herald(&redis).await;
    let mut backend = redis.connect().await;
    let mut c = n.client(CODECS[1]).await;
    c.sub(1, "heavy").await;
    publish(&mut backend, "heavy", 1..=1).await;
    c.expect_offsets("heavy", 1..=1).await;

    // History unreadable: after its pub/sub connection drops, the node holds live messages.
    let mut deny = vec!["ACL", "SETUSER", "herald", "-fcall"];
    let allowed: Vec<String> = ALL_BUT_HISTORY
        .iter()
        .map(|f| format!("+fcall|{f}"))
        .collect();
    deny.extend(allowed.iter().map(String::as_str));
    assert_eq!(redis.cli(&deny).trim(), "OK");
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_ne!(killed.trim(), "0");
    let start = Instant::now();
    until("resubscribed", Duration::from_secs(5), async || {
        let (_, subs): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("herald:{heavy}:msg")
            .query_async(&mut backend)
            .await
            .expect("PUBSUB NUMSUB");
        subs == 1
    })
    .await;
    // 17 messages of 1 MiB: past the node's 16 MiB bound on held messages.
    let pad = "x".repeat(1 << 20);
    for i in 2..=18u64 {
        let (offset, _): (u64, String) = redis::cmd("FCALL")
            .arg("herald_publish")
            .arg(1)
            .arg("heavy")
            .arg(format!("{{\"i\":{i},\"pad\":\"{pad}\"}}"))
            .query_async(&mut backend)
            .await
            .expect("FCALL herald_publish");
        assert_eq!(offset, i);
    }
    let mut next = HashMap::from([("heavy", 2)]);
    let last = HashMap::from([("heavy", 18)]);
    let r = read_in_order(&mut c, &mut next, &last, Duration::from_secs(15)).await;
    assert_eq!(r, Err(1012), "closed with 1012");
    assert_eq!(next["heavy"], 2, "nothing after the gap was delivered");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "closed when the bound was passed, not after the wait for Redis ({took:?})"
    );
}
