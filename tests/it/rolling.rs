//! A rolling restart behind a load balancer, made for real: three `herald serve` processes on one
//! Redis are restarted one after another (SIGTERM, wait for the exit, start again on the same
//! port) while a backend publishes through Redis the whole time, and clients do what a drain asks
//! of them (proto/README.md section 8): on a close, reconnect at once to a ready node (as a load
//! balancer picks one: `/readyz` 200) and resubscribe with `since`. Every client ends with every
//! offset, in order, none twice, and each was moved by a 1012 at least once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::support::proc::{free_addr, serve_on, sigterm, wait_exit};
use crate::support::redis::RedisServer;
use crate::support::ws::{Client, open};
use crate::support::{CODECS, Node};

const NODES: usize = 3;
const CLIENTS: usize = 30;
const TOPIC: &str = "rolling";
/// The most messages published: the loop ends earlier, when the restarts are done.
const MAX_MESSAGES: u64 = 5000;
/// Time between two publishes (pacing a steady stream, not waiting for anything).
const PACE: Duration = Duration::from_millis(20);
/// The bound of the whole test's waits.
const BOUND: Duration = Duration::from_secs(50);

/// Each node's environment: a short drain, history enough for any client's absence.
fn node_env(redis: &str) -> Vec<(&'static str, String)> {
    vec![
        ("HERALD_REDIS_URL", redis.to_owned()),
        ("HERALD_DRAIN_DELAY_SECS", "1".into()),
        ("HERALD_DRAIN_WINDOW_SECS", "2".into()),
        ("HERALD_SHUTDOWN_TIMEOUT_SECS", "20".into()),
        ("HERALD_HISTORY_SIZE", "100000".into()),
        // Every client is 127.0.0.1, reconnecting all at once: lift the per-address rates.
        ("HERALD_CONNECTION_RATE_PER_IP", "100000".into()),
        ("HERALD_TICKET_RATE_PER_IP", "100000".into()),
    ]
}

async fn start(addr: SocketAddr, env: &[(&'static str, String)]) -> tokio::process::Child {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    serve_on(addr, &[], &env).await.0
}

/// What a client saw over the whole run.
struct Story {
    offsets: Vec<u64>,
    /// The close code of each connection that ended (`None`: without one).
    closes: Vec<Option<u16>>,
}

/// A client that follows the drain's advice until it has offset `end` (once known).
struct Follower {
    i: usize,
    nodes: Arc<[SocketAddr]>,
    epoch: String,
    /// Round robin over the nodes, from this client's own.
    next: usize,
}

impl Follower {
    /// A connection to a ready node, as a load balancer would make it: `/readyz` 200, a ticket,
    /// the upgrade; a node that refuses or is away is skipped.
    async fn connect(&mut self, deadline: Instant) -> Client {
        loop {
            assert!(
                Instant::now() < deadline,
                "client {}: no ready node",
                self.i
            );
            let addr = self.nodes[self.next % NODES];
            self.next += 1;
            if self.next.is_multiple_of(NODES) {
                // A round over every node: a little backoff before the next (bounded above).
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let node = Node::external(addr);
            let ready = node
                .http
                .try_request(Method::GET, "/readyz", &[], Vec::new())
                .await;
            if !ready.is_ok_and(|r| r.status == 200) {
                continue;
            }
            let jwt = node.jwt(&format!("user{}", self.i), &herald::auth::RawGrants::all());
            let auth = format!("Bearer {jwt}");
            let headers = [("authorization", auth.as_str())];
            let t = node
                .http
                .try_request(Method::POST, "/v1/tickets", &headers, Vec::new())
                .await;
            let Ok(t) = t.map(|r| r.json()) else { continue };
            let Some(ticket) = t["ticket"].as_str() else {
                continue;
            };
            let codec = CODECS[self.i % 2];
            let Ok((mut c, _)) =
                open(addr, &format!("/ws?ticket={ticket}"), Some(codec), &[]).await
            else {
                continue;
            };
            if c.next_or_end_within(BOUND)
                .await
                .is_ok_and(|w| w["op"] == "welcome")
            {
                return c;
            }
        }
    }

    async fn run(
        mut self,
        mut end: watch::Receiver<Option<u64>>,
        subscribed: mpsc::Sender<()>,
    ) -> Story {
        let deadline = Instant::now() + BOUND;
        let mut story = Story {
            offsets: Vec::new(),
            closes: Vec::new(),
        };
        let mut first = Some(subscribed);
        loop {
            let mut c = self.connect(deadline).await;
            let last = story.offsets.last().copied().unwrap_or(0);
            let sub = json!({"op": "sub", "id": 1, "topic": TOPIC,
                "since": {"offset": last, "epoch": self.epoch}});
            match c.try_request(sub).await {
                Ok(ok) => assert_eq!(ok["recovered"], true, "client {}: {ok}", self.i),
                Err(code) => {
                    story.closes.push(Some(code));
                    continue;
                }
            }
            if let Some(s) = first.take() {
                let _ = s.send(()).await;
            }
            loop {
                let done = *end.borrow_and_update();
                if done.is_some_and(|e| story.offsets.last() >= Some(&e)) {
                    return story;
                }
                let f = tokio::select! {
                    f = c.next_or_end_within(BOUND) => f,
                    _ = end.changed() => continue,
                };
                match f {
                    Ok(m) if m["op"] == "msg" => {
                        story.offsets.push(m["offset"].as_u64().expect("an offset"));
                    }
                    Ok(_) => {}
                    Err(code) => {
                        story.closes.push(code);
                        break;
                    }
                }
            }
        }
    }
}

/// `FCALL herald_publish` of `data`: its offset and epoch.
async fn publish(con: &mut redis::aio::MultiplexedConnection, data: &Value) -> (u64, String) {
    redis::cmd("FCALL")
        .arg("herald_publish")
        .arg(1)
        .arg(TOPIC)
        .arg(data.to_string())
        .query_async(con)
        .await
        .expect("FCALL herald_publish")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_steady_publishing_loses_and_repeats_nothing() {
    let redis = RedisServer::start();
    let env = node_env(&redis.url());
    let addrs: Arc<[SocketAddr]> = (0..NODES).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for a in addrs.iter() {
        nodes.push(start(*a, &env).await);
    }
    // The first message, so that every client knows the epoch and starts at offset 1.
    let mut con = redis.connect().await;
    let (first, epoch) = publish(&mut con, &json!({"n": 0})).await;
    assert_eq!(first, 1);

    let (end_tx, end_rx) = watch::channel(None);
    let (sub_tx, mut subscribed) = mpsc::channel(CLIENTS);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let f = Follower {
                i,
                nodes: addrs.clone(),
                epoch: epoch.clone(),
                next: i,
            };
            tokio::spawn(f.run(end_rx.clone(), sub_tx.clone()))
        })
        .collect();
    drop(sub_tx);
    for _ in 0..CLIENTS {
        tokio::time::timeout(BOUND, subscribed.recv())
            .await
            .expect("every client subscribes")
            .expect("a client failed before subscribing (see its panic)");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(PACE);
        let mut last = first;
        while !stopped.load(Ordering::Relaxed) && last < MAX_MESSAGES {
            tick.tick().await;
            last = publish(&mut con, &json!({"n": last})).await.0;
        }
        last
    });

    for (i, child) in nodes.iter_mut().enumerate() {
        sigterm(child);
        let status = wait_exit(child, Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(0), "node {i}: {status}");
        *child = start(addrs[i], &env).await;
    }
    stop.store(true, Ordering::Relaxed);
    let last = publisher.await.expect("the publisher");
    assert!(
        last < MAX_MESSAGES,
        "publishing went on until the restarts were over"
    );
    end_tx.send(Some(last)).expect("the clients listen");

    let want: Vec<u64> = (1..=last).collect();
    for (i, c) in clients.into_iter().enumerate() {
        let story = tokio::time::timeout(BOUND, c)
            .await
            .unwrap_or_else(|_| panic!("client {i} never got offset {last}"))
            .expect("a client (see its panic)");
        if story.offsets != want {
            let at = story.offsets.iter().zip(&want).position(|(a, b)| a != b);
            panic!(
                "client {i}: {} offsets, not 1..={last} in order once each; first difference at \
                 index {at:?}; closes {:?}",
                story.offsets.len(),
                story.closes
            );
        }
        assert!(
            !story.closes.is_empty() && story.closes.iter().all(|c| *c == Some(1012)),
            "client {i} was moved by a drain, always with 1012: {:?}",
            story.closes
        );
    }
}
