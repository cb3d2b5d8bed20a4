//! The harness: a node started in-process on `127.0.0.1:0` (or a `herald` process), JWTs and
//! tickets, an HTTP client, a WebSocket client speaking either codec, and a raw socket client for
//! what a well-behaved library would never send.

pub(crate) mod backend;
pub(crate) mod http;
pub(crate) mod keys;
pub(crate) mod proc;
pub(crate) mod raw;
pub(crate) mod redis;
pub(crate) mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::auth::ticket::Clock;
use herald::auth::{RawGrants, mint_token};
use herald::config::Config;
use herald::server::{Hooks, Running};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub(crate) use herald::protocol::Codec;
pub(crate) use raw::{RawWs, upgrade};
pub(crate) use ws::Client;

/// The server API key of test nodes (32 characters).
pub(crate) const API_KEY: &str = "it-api-key-0123456789abcdefghijk";
/// The JWT secret of test nodes (40 bytes).
pub(crate) const JWT_SECRET: &str = "it-jwt-secret-0123456789-abcdefghijklmno";
/// An override that removes the variable from the test defaults (e.g. `HERALD_JWT_SECRET`).
pub(crate) const UNSET: &str = "\u{0}unset";
/// The node id of test nodes, as `welcome.node` shows it.
pub(crate) const NODE_ID: &str = "it-node";
/// How long a test waits for something that should arrive; only a thing that never arrives fails.
pub(crate) const WAIT: Duration = Duration::from_secs(5);
/// Both codecs: every protocol test runs in each.
pub(crate) const CODECS: [Codec; 2] = [Codec::Json, Codec::MsgPack];

/// A running node and an HTTP client for it.
pub(crate) struct Node {
    /// The address it listens on (the real port).
    pub addr: SocketAddr,
    /// HTTP client bound to this node.
    pub http: http::Http,
    running: Option<Running>,
}

impl Node {
    /// A production-mode node with the test secrets and every default.
    pub(crate) async fn start() -> Node {
        Node::with(&[]).await
    }

    /// A node whose environment is the test defaults overridden by `overrides`.
    pub(crate) async fn with(overrides: &[(&str, &str)]) -> Node {
        Node::with_file(None, overrides).await
    }

    /// [`Node::with`] plus a TOML config file with `toml` in it (for `[services.*]`).
    pub(crate) async fn with_toml(toml: &str, overrides: &[(&str, &str)]) -> Node {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        let path = std::env::temp_dir().join(format!("herald-{:016x}.toml", u64::from_le_bytes(r)));
        std::fs::write(&path, toml).expect("writing the config file");
        let node = Node::with_file(Some(&path), overrides).await;
        let _ = std::fs::remove_file(&path);
        node
    }

    /// [`Node::with`] whose in-process ticket store reads expiry from `clock`, which moves
    /// only when the test advances it.
    pub(crate) async fn with_ticket_clock(overrides: &[(&str, &str)], clock: &ManualClock) -> Node {
        let hooks = Hooks {
            ticket_clock: Some(clock.clock()),
        };
        Node::with_hooks(None, overrides, hooks).await
    }

    async fn with_file(file: Option<&std::path::Path>, overrides: &[(&str, &str)]) -> Node {
        Node::with_hooks(file, overrides, Hooks::default()).await
    }

    async fn with_hooks(
        file: Option<&std::path::Path>,
        overrides: &[(&str, &str)],
        hooks: Hooks,
    ) -> Node {
        let mut env: Vec<(String, String)> = [
            ("HERALD_LISTEN", "127.0.0.1:0"),
            ("HERALD_API_KEY", API_KEY),
            ("HERALD_JWT_SECRET", JWT_SECRET),
            ("HERALD_NODE_ID", NODE_ID),
            // Every test client is 127.0.0.1 and most are one user, minting tickets as fast as
            // they can: the per-address and per-user rates are lifted here, and tested with
            // their own values where they are the subject (hostile.rs).
            ("HERALD_CONNECTION_RATE_PER_IP", "100000"),
            ("HERALD_TICKET_RATE_PER_IP", "100000"),
            ("HERALD_TICKET_RATE_PER_USER", "100000"),
            // A drain closes everything at once unless a test of the drain says otherwise.
            ("HERALD_DRAIN_DELAY_SECS", "0"),
            ("HERALD_DRAIN_WINDOW_SECS", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in overrides {
            env.retain(|(name, _)| name != k);
            if *v != UNSET {
                env.push((k.to_string(), v.to_string()));
            }
        }
        let config = Config::load(file, &env).expect("the test configuration is valid");
        let running = herald::server::start_with(config, hooks)
            .await
            .expect("the node starts");
        Node {
            addr: running.addr,
            http: http::Http::new(running.addr),
            running: Some(running),
        }
    }

    /// A handle on a node that runs elsewhere (a `herald serve` process).
    pub(crate) fn external(addr: SocketAddr) -> Node {
        Node {
            addr,
            http: http::Http::new(addr),
            running: None,
        }
    }

    /// Starts draining (in-process nodes only).
    pub(crate) fn shutdown(&self) {
        self.running
            .as_ref()
            .expect("an in-process node")
            .shutdown();
    }

    /// Cuts the drain short, as a second SIGTERM does (in-process nodes only).
    pub(crate) fn hurry(&self) {
        self.running.as_ref().expect("an in-process node").hurry();
    }

    /// Waits until shutdown has completed (in-process nodes only).
    pub(crate) async fn wait(&mut self) {
        self.running
            .take()
            .expect("an in-process node")
            .wait()
            .await;
    }

    /// The in-process node's shared state.
    pub(crate) fn gateway(&self) -> &herald::gateway::Gateway {
        &self.running.as_ref().expect("an in-process node").gateway
    }

    /// Waits (bounded by `bound`) until `done` holds of this node's state.
    pub(crate) async fn until(
        &self,
        bound: Duration,
        what: &str,
        done: impl Fn(&herald::gateway::Gateway) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + bound;
        while !done(self.gateway()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never: {what} (within {bound:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /metrics` with the API key (the admin key of a node that sets none): the response.
    pub(crate) async fn metrics(&self) -> http::Response {
        let auth = format!("Bearer {API_KEY}");
        self.http
            .request(
                hyper::Method::GET,
                "/metrics",
                &[("authorization", &auth)],
                Vec::new(),
            )
            .await
    }

    /// A JWT for `user` with `grants`, valid for an hour, signed with the test secret.
    pub(crate) fn jwt(&self, user: &str, grants: &RawGrants) -> String {
        mint_token(
            JWT_SECRET.as_bytes(),
            user,
            grants,
            Duration::from_secs(3600),
        )
        .expect("minting a token")
    }

    /// `POST /v1/tickets` with `jwt`; fails the test unless it is 200.
    pub(crate) async fn ticket_with(&self, jwt: &str) -> String {
        let (status, body) = self.http.post("/v1/tickets", Some(jwt), "").await;
        assert_eq!(status, 200, "POST /v1/tickets: {body}");
        body["ticket"].as_str().expect("a ticket").to_owned()
    }

    /// A ticket for user `alice` with every grant.
    pub(crate) async fn ticket(&self) -> String {
        self.ticket_for("alice", &RawGrants::all()).await
    }

    /// A ticket for `user` with `grants`.
    pub(crate) async fn ticket_for(&self, user: &str, grants: &RawGrants) -> String {
        self.ticket_with(&self.jwt(user, grants)).await
    }

    /// `POST /v1/publish` of `data` to `topic`; returns the offset and epoch.
    pub(crate) async fn publish(&self, topic: &str, data: Value) -> (u64, String) {
        let body = json!({"topic": topic, "data": data}).to_string();
        let (status, out) = self.http.post("/v1/publish", Some(API_KEY), &body).await;
        assert_eq!(status, 200, "POST /v1/publish: {out}");
        (
            out["offset"].as_u64().expect("an offset"),
            out["epoch"].as_str().expect("an epoch").to_owned(),
        )
    }

    /// A `/ws` client of user `alice` with every grant; its `welcome` already read and checked.
    pub(crate) async fn client(&self, codec: Codec) -> Client {
        self.client_for(codec, "alice", &RawGrants::all()).await
    }

    /// A `/ws` client of `user` with `grants`; its `welcome` already read and checked.
    pub(crate) async fn client_for(&self, codec: Codec, user: &str, grants: &RawGrants) -> Client {
        let ticket = self.ticket_for(user, grants).await;
        let mut c = self.open(&format!("/ws?ticket={ticket}"), codec).await;
        let w = c.next_frame().await;
        assert_eq!(w["op"], "welcome", "the first frame is welcome: {w}");
        assert_eq!(w["user"], user, "{w}");
        c
    }

    /// Opens a WebSocket on `path` (with its query) offering `codec`'s subprotocol; nothing read.
    pub(crate) async fn open(&self, path: &str, codec: Codec) -> Client {
        let (c, resp) = ws::open(self.addr, path, Some(codec), &[])
            .await
            .unwrap_or_else(|e| panic!("upgrade of {path} failed: {e}"));
        assert_eq!(resp.status(), 101);
        c
    }
}

/// A clock for a node's tickets ([`Node::with_ticket_clock`]): it stands still until advanced.
pub(crate) struct ManualClock {
    base: std::time::Instant,
    millis: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at the present moment, standing still.
    pub(crate) fn new() -> ManualClock {
        ManualClock {
            base: std::time::Instant::now(),
            millis: Arc::default(),
        }
    }

    /// Moves it on by `d`.
    pub(crate) fn advance(&self, d: Duration) {
        self.millis
            .fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }

    fn clock(&self) -> Clock {
        let (base, millis) = (self.base, self.millis.clone());
        Arc::new(move || base + Duration::from_millis(millis.load(Ordering::SeqCst)))
    }
}

/// Grants from three lists of patterns.
pub(crate) fn grants(subscribe: &[&str], publish: &[&str], send: &[&str]) -> RawGrants {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    RawGrants {
        subscribe: v(subscribe),
        publish: v(publish),
        send: v(send),
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// A JWT with exactly `claims`, signed with `secret` using `alg`.
pub(crate) fn signed_jwt(claims: &Value, secret: &[u8], alg: Algorithm) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret))
        .expect("encoding a JWT")
}

/// `json` or `msgpack`.
pub(crate) fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::Json => "json",
        Codec::MsgPack => "msgpack",
    }
}
