//! `deploy/local-cluster.sh`, run as a newcomer would: `up` starts Redis, three nodes, HAProxy and
//! the example backend on loopback (free ports here) and prints `KEY=value` lines. Clients connect
//! through HAProxy (one of them with a session cookie from the example backend, through the auth
//! hook), the backend publishes through Redis, one node is killed (SIGKILL) and another restarted
//! (SIGTERM, drain, start again), and every client ends with every message, in order, once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::support::http::Http;
use crate::support::proc::free_addr;
use crate::support::ws::{Client, open};
use crate::support::{CODECS, Codec};

const CLIENTS: usize = 12;
const TOPIC: &str = "demo.feed";
const MESSAGES: u64 = 240;
/// Time between two publishes (a steady stream, not a wait for anything).
const PACE: Duration = Duration::from_millis(20);
/// The bound of the whole test's waits.
const BOUND: Duration = Duration::from_secs(60);

/// The cluster the script started; `down` when dropped, whatever happened.
struct Cluster {
    env: Vec<(String, String)>,
    out: HashMap<String, String>,
}

impl Cluster {
    fn script(&self, args: &[&str]) -> std::process::Output {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        Command::new(root.join("deploy/local-cluster.sh"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("running deploy/local-cluster.sh")
    }

    fn up() -> Cluster {
        let herald = PathBuf::from(env!("CARGO_BIN_EXE_herald"));
        let backend = herald.with_file_name("herald-example-backend");
        assert!(
            backend.exists(),
            "{} is missing: `cargo test` at the workspace root builds it (or run \
             `cargo build -p herald-example-backend`)",
            backend.display()
        );
        let port = |a: SocketAddr| a.port().to_string();
        let (lb, redis, be) = (free_addr(), free_addr(), free_addr());
        let nodes: Vec<String> = (0..3).map(|_| port(free_addr())).collect();
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        let dir = std::env::temp_dir().join(format!("herald-lc-{:016x}", u64::from_le_bytes(r)));
        let env = vec![
            ("HERALD_BIN".into(), herald.display().to_string()),
            ("BACKEND_BIN".into(), backend.display().to_string()),
            ("LB_PORT".into(), port(lb)),
            ("NODE_PORTS".into(), nodes.join(" ")),
            ("REDIS_PORT".into(), port(redis)),
            ("BACKEND_PORT".into(), port(be)),
            ("CLUSTER_DIR".into(), dir.display().to_string()),
        ];
        let mut c = Cluster {
            env,
            out: HashMap::new(),
        };
        let up = c.script(&["up"]);
        let stdout = String::from_utf8_lossy(&up.stdout).into_owned();
        assert!(
            up.status.success(),
            "local-cluster.sh up failed: {}\n{stdout}",
            String::from_utf8_lossy(&up.stderr)
        );
        c.out = stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        for key in ["URL", "REDIS_URL", "API_KEY", "JWT"] {
            assert!(c.out.contains_key(key), "`up` prints {key}=: {stdout}");
        }
        c
    }

    fn addr(&self, key: &str) -> SocketAddr {
        let url = &self.out[key];
        url.trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|_| panic!("{key}={url} is an http://address:port"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script(&["down"]);
    }
}

/// How a follower gets in: a ticket for the demo JWT, or a session cookie.
#[derive(Clone)]
enum Login {
    Jwt(String),
    Cookie { cookie: String, origin: String },
}

/// A client that goes through HAProxy and, whenever its connection ends, reconnects and
/// resubscribes with `since` until it has offset `end`.
struct Follower {
    i: usize,
    lb: SocketAddr,
    login: Login,
}

impl Follower {
    async fn connect(&self, deadline: Instant) -> Client {
        let codec = CODECS[self.i % 2];
        let mut backoff = Duration::from_millis(50);
        loop {
            assert!(
                Instant::now() < deadline,
                "client {}: never connected",
                self.i
            );
            if let Some(c) = self.try_connect(codec).await {
                return c;
            }
            // HAProxy routes to a node it has not yet seen die: back off a little (bounded).
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn try_connect(&self, codec: Codec) -> Option<Client> {
        let (path, headers) = match &self.login {
            Login::Jwt(jwt) => {
                let auth = format!("Bearer {jwt}");
                let t = Http::new(self.lb)
                    .try_request(
                        Method::POST,
                        "/v1/tickets",
                        &[("authorization", &auth)],
                        vec![],
                    )
                    .await
                    .ok()?
                    .json();
                (format!("/ws?ticket={}", t["ticket"].as_str()?), vec![])
            }
            Login::Cookie { cookie, origin } => (
                "/ws".to_owned(),
                vec![("cookie", cookie.as_str()), ("origin", origin.as_str())],
            ),
        };
        let (mut c, _) = open(self.lb, &path, Some(codec), &headers).await.ok()?;
        c.next_or_end_within(BOUND)
            .await
            .ok()
            .filter(|w| w["op"] == "welcome")
            .map(|_| c)
    }

    async fn run(self, mut end: watch::Receiver<Option<u64>>, ready: mpsc::Sender<()>) -> Vec<u64> {
        let deadline = Instant::now() + BOUND;
        let mut offsets: Vec<u64> = Vec::new();
        let mut epoch: Option<String> = None;
        let mut ready = Some(ready);
        loop {
            let mut c = self.connect(deadline).await;
            let mut sub = json!({"op": "sub", "id": 1, "topic": TOPIC});
            if let Some(e) = &epoch {
                sub["since"] = json!({"offset": offsets.last().copied().unwrap_or(0), "epoch": e});
            }
            let Ok(ok) = c.try_request(sub).await else {
                continue;
            };
            assert_eq!(ok["op"], "ok", "client {}: {ok}", self.i);
            if epoch.is_some() {
                assert_eq!(ok["recovered"], true, "client {}: {ok}", self.i);
            } else {
                epoch = ok["epoch"].as_str().map(str::to_owned);
                assert_eq!(
                    ok["offset"], 0,
                    "client {} subscribed before any message",
                    self.i
                );
            }
            if let Some(r) = ready.take() {
                let _ = r.send(()).await;
            }
            loop {
                let done = *end.borrow_and_update();
                if done.is_some_and(|e| offsets.last() >= Some(&e)) {
                    return offsets;
                }
                let f = tokio::select! {
                    f = c.next_or_end_within(BOUND) => f,
                    _ = end.changed() => continue,
                };
                match f {
                    Ok(m) if m["op"] == "msg" => {
                        // Subscribed before the first publish, the `ok` named epoch "0"
                        // (nothing yet): the first message names the topic's real epoch.
                        epoch = m["epoch"].as_str().map(str::to_owned);
                        offsets.push(m["offset"].as_u64().expect("an offset"));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
    }
}

/// Signs `user` in at the example backend: its session cookie (`name=value`).
async fn login(backend: SocketAddr, user: &str) -> String {
    let r = Http::new(backend)
        .request(
            Method::POST,
            "/login",
            &[("content-type", "application/json")],
            json!({"user": user}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "login");
    let set = r
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie");
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_behind_haproxy_loses_nothing_when_a_node_dies_and_another_restarts() {
    let cluster = Cluster::up();
    let lb = cluster.addr("URL");
    let backend = cluster.addr("BACKEND_URL");
    let cookie = login(backend, "ann").await;
    let origin = format!("http://127.0.0.1:{}", backend.port());

    let (end_tx, end_rx) = watch::channel(None);
    let (ready_tx, mut ready) = mpsc::channel(CLIENTS);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let login = if i == 0 {
                Login::Cookie {
                    cookie: cookie.clone(),
                    origin: origin.clone(),
                }
            } else {
                Login::Jwt(cluster.out["JWT"].clone())
            };
            tokio::spawn(Follower { i, lb, login }.run(end_rx.clone(), ready_tx.clone()))
        })
        .collect();
    drop(ready_tx);
    for _ in 0..CLIENTS {
        tokio::time::timeout(BOUND, ready.recv())
            .await
            .expect("every client subscribes")
            .expect("a client failed before subscribing (see its panic)");
    }

    // The backend publishes through Redis (FCALL herald_publish) at a steady pace, while one
    // node is killed and another restarted.
    let http = Http::new(backend);
    let mut tick = tokio::time::interval(PACE);
    let mut last = 0;
    for n in 1..=MESSAGES {
        tick.tick().await;
        let r = http
            .request(
                Method::POST,
                "/publish",
                &[("content-type", "application/json")],
                json!({"topic": TOPIC, "data": {"n": n}})
                    .to_string()
                    .into_bytes(),
            )
            .await;
        assert_eq!(r.status, 200, "the backend publishes");
        last = r.json()["offset"].as_u64().expect("an offset");
        if n == MESSAGES / 4 {
            let out = cluster.script(&["stop-node", "1", "--kill"]);
            assert!(out.status.success(), "stop-node 1 --kill");
        }
        if n == MESSAGES / 2 {
            let out = cluster.script(&["stop-node", "2"]);
            assert!(out.status.success(), "stop-node 2");
            let out = cluster.script(&["start-node", "2"]);
            assert!(out.status.success(), "start-node 2: {out:?}");
        }
    }
    assert_eq!(
        last, MESSAGES,
        "one topic, one publisher: offsets 1..=MESSAGES"
    );
    end_tx.send(Some(last)).expect("the clients listen");

    let want: Vec<u64> = (1..=last).collect();
    for (i, c) in clients.into_iter().enumerate() {
        let offsets = tokio::time::timeout(BOUND, c)
            .await
            .unwrap_or_else(|_| panic!("client {i} never got offset {last}"))
            .expect("a client (see its panic)");
        if offsets != want {
            let at = offsets.iter().zip(&want).position(|(a, b)| a != b);
            panic!(
                "client {i}: {} offsets, not 1..={last} in order once each; first difference at \
                 index {at:?}",
                offsets.len()
            );
        }
    }
    // The backend read the lifecycle events the nodes wrote (one connect per connection at least).
    let stats: Value = http.get("/stats").await.json();
    let connects = stats["events"]["connect"].as_u64().unwrap_or(0);
    assert!(
        connects >= CLIENTS as u64,
        "lifecycle events reached the backend: {stats}"
    );
}
