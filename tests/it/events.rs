//! Lifecycle events, at least once: in a cluster, entries of the Redis stream (read back with
//! plain `XRANGE`), including a `kill -9`ed node's disconnects recorded exactly once by the
//! survivors, a restarted node's leftovers, and a node that was declared dead joining again; on a
//! single node, POSTs to a real HTTP service, in order, surviving the service being down and the
//! node being killed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::support::redis::RedisServer;
use crate::support::{CODECS, Client, Node, WAIT, proc};

const ALL: &str = "connect,disconnect,subscribe,unsubscribe";
const STREAM: &str = "herald:{events}:stream";

/// The stream's entries, oldest first, as field maps (plus `id`).
async fn stream(redis: &RedisServer) -> Vec<HashMap<String, String>> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    entries
        .into_iter()
        .map(|(id, kv)| {
            let mut m: HashMap<String, String> =
                kv.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
            m.insert("id".into(), id);
            m
        })
        .collect()
}

/// Polls until `pred` holds for the stream (bounded), and returns it.
async fn stream_until(
    redis: &RedisServer,
    what: &str,
    pred: impl Fn(&[HashMap<String, String>]) -> bool,
) -> Vec<HashMap<String, String>> {
    let start = Instant::now();
    loop {
        let s = stream(redis).await;
        if pred(&s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} never appeared in the stream: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The deadline `node` last gave itself in the registry: every beat sets a new one, in the same
/// atomic call that reaps dead nodes' connections.
fn beat_mark(redis: &RedisServer, node: &str) -> String {
    let mark = redis.cli(&["ZSCORE", "herald:{events}:nodes", node]);
    assert!(!mark.trim().is_empty(), "{node} is registered");
    mark.trim().to_owned()
}

/// Waits (bounded) until each of `nodes` has beaten `n` times since the call: a beat seen is a
/// whole beat after it, as each is one atomic call.
async fn beats(redis: &RedisServer, nodes: &[&str], n: usize) {
    let mut last: Vec<String> = nodes.iter().map(|id| beat_mark(redis, id)).collect();
    let mut seen = vec![0; nodes.len()];
    let start = Instant::now();
    while seen.iter().any(|&k| k < n) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "beats of {nodes:?}: {seen:?}, not {n} each"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (i, id) in nodes.iter().enumerate() {
            let mark = beat_mark(redis, id);
            if mark != last[i] {
                seen[i] += 1;
                last[i] = mark;
            }
        }
    }
}

fn of_conn<'a>(s: &'a [HashMap<String, String>], conn: &str) -> Vec<&'a HashMap<String, String>> {
    s.iter().filter(|e| e["conn"] == conn).collect()
}

fn kinds(s: &[&HashMap<String, String>]) -> Vec<String> {
    s.iter().map(|e| e["event"].clone()).collect()
}

/// A `/ws` client of `user` and its connection id (from `welcome`).
async fn connect(n: &Node, codec: crate::support::Codec, user: &str) -> (Client, String) {
    let ticket = n.ticket_for(user, &herald::auth::RawGrants::all()).await;
    let mut c = n.open(&format!("/ws?ticket={ticket}"), codec).await;
    let w = c.next_frame().await;
    assert_eq!(w["op"], "welcome", "{w}");
    (c, w["conn"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_cluster_records_connect_subscribe_unsubscribe_and_disconnect_in_order() {
    let redis = RedisServer::start();
    let n = Node::with(&[("HERALD_REDIS_URL", &redis.url()), ("HERALD_EVENTS", ALL)]).await;
    for codec in CODECS {
        let (mut c, conn) = connect(&n, codec, "alice").await;
        c.sub(1, "room.1").await;
        let ok = c
            .request(json!({"op": "unsub", "id": 2, "topic": "room.1"}))
            .await;
        assert_eq!(ok["op"], "ok", "{ok}");
        c.close(1000).await;
        let s = stream_until(&redis, "the disconnect", |s| {
            of_conn(s, &conn).iter().any(|e| e["event"] == "disconnect")
        })
        .await;
        let mine = of_conn(&s, &conn);
        assert_eq!(
            kinds(&mine),
            ["connect", "subscribe", "unsubscribe", "disconnect"]
        );
        for e in &mine {
            assert_eq!(
                (e["user"].as_str(), e["node"].as_str()),
                ("alice", "it-node")
            );
        }
        assert_eq!(mine[1]["topic"], "room.1");
        assert_eq!(mine[2]["topic"], "room.1");
        assert_eq!(
            (mine[3]["code"].as_str(), mine[3]["reason"].as_str()),
            ("1000", "closed")
        );
    }
}

/// A stream entry as `XREAD` gives it: its id and fields.
type Entry = (String, HashMap<String, String>);

/// A backend that reads the stream (blocking `XREAD`, as a consumer would) and answers every
/// `connect` with a directed message to its user, through Redis; returns once it has answered
/// `n` connects.
async fn greeter(url: String, n: usize) {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut last = "0-0".to_owned();
    let mut answered = 0;
    while answered < n {
        let reply: redis::Value = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(10_000)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(&last)
            .query_async(&mut c)
            .await
            .unwrap();
        let entries: Vec<(String, Vec<Entry>)> =
            redis::from_redis_value(reply).expect("an XREAD answer within 10 s");
        for (id, fields) in entries.into_iter().flat_map(|(_, e)| e) {
            last = id;
            if fields["event"] == "connect" {
                let hello = json!({"hello": fields["conn"]}).to_string();
                let _: i64 = redis::cmd("FCALL")
                    .arg("herald_publish_user")
                    .arg(1)
                    .arg(&fields["user"])
                    .arg(hello)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                answered += 1;
            }
        }
    }
}

#[tokio::test]
async fn a_directed_message_sent_on_the_connect_event_reaches_the_new_connection() {
    let redis = RedisServer::start();
    let n = Node::with(&[("HERALD_REDIS_URL", &redis.url()), ("HERALD_EVENTS", ALL)]).await;
    // New users each time: the node watches each one's channel for the first time.
    let rounds = 20;
    let backend = tokio::spawn(greeter(redis.url(), rounds));
    for i in 0..rounds {
        let codec = CODECS[i % CODECS.len()];
        let (mut c, conn) = connect(&n, codec, &format!("greeted-{i}")).await;
        // The connection is watched and reachable before its connect is recorded, so the
        // backend's answer is its first frame after welcome, every time.
        let d = c.next_frame().await;
        assert_eq!(d["op"], "direct", "{i}: {d}");
        assert_eq!(d["data"], json!({"hello": conn}), "{i}: {d}");
        c.close(1000).await;
    }
    backend.await.unwrap();
}

#[tokio::test]
async fn a_subscription_that_a_refresh_ends_is_recorded_as_an_unsubscribe_before_the_ok() {
    let redis = RedisServer::start();
    let n = Node::with(&[("HERALD_REDIS_URL", &redis.url()), ("HERALD_EVENTS", ALL)]).await;
    let (mut c, conn) = connect(&n, CODECS[0], "alice").await;
    c.sub(1, "room.1").await;
    c.sub(2, "news").await;
    let narrow = crate::support::grants(&["news"], &[], &[]);
    let ticket = n.ticket_for("alice", &narrow).await;
    let ok = c
        .request(json!({"op": "refresh", "id": 3, "ticket": ticket}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let s = stream(&redis).await;
    let mine = of_conn(&s, &conn);
    assert_eq!(
        kinds(&mine),
        ["connect", "subscribe", "subscribe", "unsubscribe"]
    );
    assert_eq!(mine[3]["topic"], "room.1");
}

#[tokio::test]
async fn only_the_configured_kinds_are_recorded() {
    let redis = RedisServer::start();
    let n = Node::with(&[
        ("HERALD_REDIS_URL", &redis.url()),
        ("HERALD_EVENTS", "subscribe"),
    ])
    .await;
    let (mut c, conn) = connect(&n, CODECS[0], "bob").await;
    c.sub(1, "only").await;
    c.close(1000).await;
    // A connection's task ends after its disconnect is recorded (when disconnects are): once
    // it has ended, the stream holds everything this connection will ever add to it.
    n.until(WAIT, "the connection's task ended", |gw| {
        gw.tracker.is_empty()
    })
    .await;
    let s = stream(&redis).await;
    assert_eq!(kinds(&of_conn(&s, &conn)), ["subscribe"]);
    assert_eq!(s.len(), 1, "nothing else: {s:#?}");
}

/// A `herald serve` process in the cluster with events on, node id `id`.
async fn process(redis: &RedisServer, id: &str) -> (tokio::process::Child, Node) {
    let url = redis.url();
    let env = [
        ("HERALD_REDIS_URL", url.as_str()),
        ("HERALD_NODE_ID", id),
        ("HERALD_NODE_TTL_SECS", "3"),
        ("HERALD_EVENTS", ALL),
    ];
    proc::serve(&[], &env).await
}

#[tokio::test]
async fn a_killed_nodes_disconnects_are_recorded_exactly_once_by_the_survivors() {
    let redis = RedisServer::start();
    let (mut doomed, a) = process(&redis, "doomed").await;
    let survivors = [
        Node::with(&[
            ("HERALD_REDIS_URL", &redis.url()),
            ("HERALD_EVENTS", ALL),
            ("HERALD_NODE_TTL_SECS", "3"),
            ("HERALD_NODE_ID", "s1"),
        ])
        .await,
        Node::with(&[
            ("HERALD_REDIS_URL", &redis.url()),
            ("HERALD_EVENTS", ALL),
            ("HERALD_NODE_TTL_SECS", "3"),
            ("HERALD_NODE_ID", "s2"),
        ])
        .await,
    ];
    let (mut c1, conn1) = connect(&a, CODECS[0], "alice").await;
    let (_c2, conn2) = connect(&a, CODECS[1], "bob").await;
    c1.sub(1, "t").await;
    doomed.start_kill().unwrap();
    doomed.wait().await.unwrap();
    let done = |s: &[HashMap<String, String>]| {
        [&conn1, &conn2]
            .iter()
            .all(|c| of_conn(s, c).iter().any(|e| e["event"] == "disconnect"))
    };
    stream_until(&redis, "both disconnects", done).await;
    // Two more beats of both survivors (each beat reaps dead nodes): still one disconnect each.
    beats(&redis, &["s1", "s2"], 2).await;
    let s = stream(&redis).await;
    for conn in [&conn1, &conn2] {
        let d: Vec<_> = of_conn(&s, conn)
            .into_iter()
            .filter(|e| e["event"] == "disconnect")
            .collect();
        assert_eq!(d.len(), 1, "exactly one disconnect for {conn}: {d:#?}");
        assert_eq!(d[0]["reason"], "node_lost");
        assert_eq!(d[0]["node"], "doomed");
        assert!(["s1", "s2"].contains(&d[0]["by"].as_str()), "{:?}", d[0]);
    }
    drop(survivors);
}

#[tokio::test]
async fn a_restarted_node_records_the_disconnects_its_previous_run_left() {
    let redis = RedisServer::start();
    let (mut first, a) = process(&redis, "phoenix").await;
    let (_c, conn) = connect(&a, CODECS[0], "alice").await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    // Back at once, long before its registration would expire: only the restart can tell.
    let (_second, _b) = process(&redis, "phoenix").await;
    let s = stream_until(&redis, "the restart's disconnect", |s| {
        of_conn(s, &conn).iter().any(|e| e["event"] == "disconnect")
    })
    .await;
    let d = of_conn(&s, &conn);
    assert_eq!(kinds(&d), ["connect", "disconnect"]);
    assert_eq!(
        (d[1]["reason"].as_str(), d[1]["code"].as_str()),
        ("node_restart", "1006")
    );
}

#[tokio::test]
async fn a_node_declared_dead_while_alive_records_its_leftovers_and_joins_again() {
    let redis = RedisServer::start();
    let n = Node::with(&[
        ("HERALD_REDIS_URL", &redis.url()),
        ("HERALD_EVENTS", ALL),
        ("HERALD_NODE_TTL_SECS", "3"),
    ])
    .await;
    let (mut c, conn) = connect(&n, CODECS[0], "alice").await;
    c.sub(1, "kept").await;
    // As if the node had paused past its deadline (or Redis lost its data).
    let removed = redis.cli(&["ZREM", "herald:{events}:nodes", "it-node"]);
    assert_eq!(removed.trim(), "1");
    let s = stream_until(&redis, "the rejoin", |s| {
        of_conn(s, &conn)
            .iter()
            .filter(|e| e["event"] == "subscribe")
            .count()
            == 2
    })
    .await;
    let mine = of_conn(&s, &conn);
    assert_eq!(
        kinds(&mine),
        ["connect", "subscribe", "disconnect", "connect", "subscribe"]
    );
    assert_eq!(mine[2]["reason"], "node_lost");
    assert_eq!(mine[3]["reason"], "rejoin");
    assert_eq!(mine[4]["topic"], "kept");
    // The client never noticed, and its story ends where it is: connected and subscribed.
    n.publish("kept", json!({"still": "here"})).await;
    assert_eq!(c.next_msg("kept").await["data"]["still"], "here");
}

#[tokio::test]
async fn many_connections_finding_their_node_declared_dead_cause_one_rejoin() {
    let redis = RedisServer::start();
    // Default node_ttl (30 s): no beat comes before the subscribes below, so they find out.
    let n = Node::with(&[("HERALD_REDIS_URL", &redis.url()), ("HERALD_EVENTS", ALL)]).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect(&n, CODECS[0], "erin").await);
    }
    let removed = redis.cli(&["ZREM", "herald:{events}:nodes", "it-node"]);
    assert_eq!(removed.trim(), "1");
    // All five subscribe at once, and each first finds the node unregistered.
    let subs = clients.iter_mut().map(|(c, _)| c.sub(1, "crowd"));
    for ok in futures_util::future::join_all(subs).await {
        assert_eq!(ok["op"], "ok", "{ok}");
    }
    let s = stream(&redis).await;
    for (_, conn) in &clients {
        let rejoins = of_conn(&s, conn)
            .into_iter()
            .filter(|e| {
                e["event"] == "connect" && e.get("reason").map(String::as_str) == Some("rejoin")
            })
            .count();
        assert_eq!(
            rejoins,
            1,
            "one rejoin connect for {conn}: {:#?}",
            of_conn(&s, conn)
        );
        let subscribes = of_conn(&s, conn)
            .into_iter()
            .filter(|e| e["event"] == "subscribe")
            .count();
        assert_eq!(subscribes, 1, "{:#?}", of_conn(&s, conn));
    }
}

/// A real HTTP events service: it keeps every POSTed body, or answers 503 while told to fail.
struct Collector {
    addr: SocketAddr,
    bodies: Arc<parking_lot::Mutex<Vec<Value>>>,
    fail: Arc<AtomicBool>,
    /// POSTs answered 503 so far (while told to fail).
    refused: watch::Receiver<usize>,
}

impl Collector {
    async fn start() -> Collector {
        let bodies: Arc<parking_lot::Mutex<Vec<Value>>> = Arc::default();
        let fail = Arc::new(AtomicBool::new(false));
        let (refusals, refused) = watch::channel(0);
        let refusals = Arc::new(refusals);
        let (b, f) = (bodies.clone(), fail.clone());
        let app = axum::Router::new().route(
            "/events",
            post(move |axum::Json(v): axum::Json<Value>| {
                let (b, f, r) = (b.clone(), f.clone(), refusals.clone());
                async move {
                    if f.load(Ordering::Relaxed) {
                        r.send_modify(|n| *n += 1);
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    b.lock().push(v);
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        Collector {
            addr,
            bodies,
            fail,
            refused,
        }
    }

    /// Waits until the service has refused `n` POSTs in all; fails the test after [`WAIT`].
    async fn refused(&self, n: usize) {
        let mut rx = self.refused.clone();
        tokio::time::timeout(WAIT, rx.wait_for(|&k| k >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} POSTs were not refused within {WAIT:?}"))
            .expect("the service is running");
    }

    fn toml(&self) -> String {
        format!(
            "[services.lifecycle]\nendpoints = [\"http://{}\"]\npath = \"/events\"\ntimeout_ms = 1000\n",
            self.addr
        )
    }

    /// Every event received so far, in the order received.
    fn events(&self) -> Vec<Value> {
        self.bodies
            .lock()
            .iter()
            .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    async fn until(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let e = self.events();
            if pred(&e) {
                return e;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what} never reached the service: {e:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn conn_events<'a>(e: &'a [Value], conn: &str) -> Vec<&'a Value> {
    e.iter().filter(|v| v["conn"] == conn).collect()
}

fn journal_path() -> String {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).unwrap();
    std::env::temp_dir()
        .join(format!("herald-events-{:016x}", u64::from_le_bytes(r)))
        .join("events.journal")
        .display()
        .to_string()
}

#[tokio::test]
async fn a_single_node_posts_events_in_order_and_again_after_the_service_recovers() {
    let svc = Collector::start().await;
    let journal = journal_path();
    let mut n = Node::with_toml(
        &svc.toml(),
        &[
            ("HERALD_EVENTS", ALL),
            ("HERALD_EVENTS_SERVICE", "lifecycle"),
            ("HERALD_EVENTS_JOURNAL", &journal),
        ],
    )
    .await;
    let (mut c, conn) = connect(&n, CODECS[1], "carol").await;
    c.sub(1, "a").await;
    let e = svc
        .until("connect and subscribe", |e| {
            conn_events(e, &conn).len() == 2
        })
        .await;
    let mine = conn_events(&e, &conn);
    assert_eq!(mine[0]["event"], "connect");
    assert_eq!(
        (mine[1]["event"].as_str(), mine[1]["topic"].as_str()),
        (Some("subscribe"), Some("a"))
    );
    assert!(mine[0]["seq"].as_u64() < mine[1]["seq"].as_u64());
    assert!(mine[0]["ts"].as_u64().unwrap() > 1_600_000_000_000);
    // The service goes down: events wait in the journal, and arrive once it is back.
    svc.fail.store(true, Ordering::Relaxed);
    let ok = c
        .request(json!({"op": "unsub", "id": 2, "topic": "a"}))
        .await;
    assert_eq!(
        ok["op"], "ok",
        "recorded in the journal, so the unsubscribe goes ahead: {ok}"
    );
    // The node has tried to post it, and been refused, before the service comes back.
    svc.refused(1).await;
    // Meanwhile its metrics show the event waiting, and the refused POST by its outcome.
    let m = n.metrics().await.text;
    let pending = m
        .lines()
        .find_map(|l| l.strip_prefix("herald_lifecycle_events_pending "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(pending.is_some_and(|p| p >= 1.0), "{m}");
    assert!(
        m.contains("outcome=\"upstream_error\"") && m.contains("service=\"lifecycle\""),
        "{m}"
    );
    svc.fail.store(false, Ordering::Relaxed);
    let e = svc
        .until("the unsubscribe", |e| conn_events(e, &conn).len() == 3)
        .await;
    assert_eq!(conn_events(&e, &conn)[2]["event"], "unsubscribe");
    // Shutdown: the drain's disconnect (1012) still reaches the service.
    n.shutdown();
    n.wait().await;
    let e = svc
        .until("the drain's disconnect", |e| {
            conn_events(e, &conn).len() == 4
        })
        .await;
    let d = conn_events(&e, &conn)[3];
    assert_eq!(
        (d["event"].as_str(), d["code"].as_u64()),
        (Some("disconnect"), Some(1012))
    );
    let seqs: Vec<u64> = e.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        seqs, sorted,
        "in order, each once while nothing failed mid-request"
    );
}

#[tokio::test]
async fn a_killed_single_node_delivers_its_unsent_events_and_disconnects_on_restart() {
    let svc = Collector::start().await;
    svc.fail.store(true, Ordering::Relaxed);
    let dir = journal_path();
    let cfg = std::path::Path::new(&dir).with_file_name("herald.toml");
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    std::fs::write(&cfg, svc.toml()).unwrap();
    let cfg = cfg.display().to_string();
    let env = [
        ("HERALD_NODE_ID", "solo"),
        ("HERALD_EVENTS", ALL),
        ("HERALD_EVENTS_SERVICE", "lifecycle"),
        ("HERALD_EVENTS_JOURNAL", dir.as_str()),
    ];
    let args = ["--config", cfg.as_str()];
    let spawn = || proc::serve(&args, &env);
    let (mut first, a) = spawn().await;
    let (mut c, conn) = connect(&a, CODECS[0], "dave").await;
    c.sub(1, "x").await;
    // Nothing was taken by the service yet; the node dies with everything in its journal.
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    assert!(svc.events().is_empty());
    svc.fail.store(false, Ordering::Relaxed);
    let (_second, _b) = spawn().await;
    let e = svc
        .until("the events of the killed run", |e| {
            conn_events(e, &conn).len() == 3
        })
        .await;
    let mine = conn_events(&e, &conn);
    assert_eq!(kinds_of(&mine), ["connect", "subscribe", "disconnect"]);
    assert_eq!(
        (mine[2]["reason"].as_str(), mine[2]["code"].as_u64()),
        (Some("node_restart"), Some(1006))
    );
}

fn kinds_of(e: &[&Value]) -> Vec<String> {
    e.iter()
        .map(|v| v["event"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn clients_that_leave_in_the_middle_of_their_upgrade_leave_nothing_behind() {
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::start();
    let n = Node::with(&[("HERALD_REDIS_URL", &redis.url()), ("HERALD_EVENTS", ALL)]).await;
    for i in 0..100 {
        let ticket = n
            .ticket_for(&format!("leaver-{i}"), &herald::auth::RawGrants::all())
            .await;
        let mut s = tokio::net::TcpStream::connect(n.addr).await.unwrap();
        let req = format!(
            "GET /ws?ticket={ticket} HTTP/1.1\r\nHost: herald\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        // Gone at a different point of the node's work each time: at once, or a little later.
        for _ in 0..i % 4 {
            tokio::task::yield_now().await;
        }
        drop(s);
    }
    // Whatever each one got to: no connection left in the hub, no user channel watched, and
    // every connect recorded has its disconnect.
    let start = Instant::now();
    loop {
        let watched = redis.cli(&["PUBSUB", "CHANNELS", "herald:{user:leaver-*"]);
        let s = stream(&redis).await;
        let connects = s.iter().filter(|e| e["event"] == "connect").count();
        let disconnects = s.iter().filter(|e| e["event"] == "disconnect").count();
        let hub = n.gateway().hub.connections();
        if hub == 0 && watched.trim().is_empty() && connects == disconnects {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "left behind: {hub} in the hub, watched {watched:?}, {connects} connects and \
             {disconnects} disconnects"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
