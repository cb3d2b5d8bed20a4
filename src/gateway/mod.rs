//! The gateway: the only module with sockets. It accepts TCP connections, serves HTTP/1.1 with
//! hyper (the API routes and the upgrade checks), and runs one task per WebSocket connection.
//! It also serves the operator's routes: `/metrics` ([`admin`]) and the dashboard
//! ([`dashboard`]).

pub mod admin;
pub mod auth_hook;
pub mod client;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod connection;
pub mod dashboard;
pub mod guarded;
pub mod http;
pub mod limits;
mod rate;
pub mod rejection;
pub mod tls;
pub mod upgrade;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{JwtVerifier, Tickets};
use crate::bus::{Bus, BusError, Interest};
use crate::config::Config;
use crate::hub::Hub;
use crate::protocol::Topic;
use client::ConnInfo;
use guarded::Guarded;
use limits::{Buckets, ConnLimits, IpKey, Permit, Refusal};
use rejection::Rejection;

/// What every handler and connection task shares.
pub struct Gateway {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Local subscribers and fan-out.
    pub hub: Arc<Hub>,
    /// Offsets, history, publishing, directed messages, presence, connection counts.
    pub bus: Arc<dyn Bus>,
    /// What this node listens for on a bus shared with other nodes; `None` on the in-process
    /// bus, where everything published reaches the hub anyway.
    pub interest: Option<Arc<dyn Interest>>,
    /// Verifies the JWTs exchanged for tickets.
    pub jwt: JwtVerifier,
    /// Issues and redeems one-time tickets.
    pub tickets: Tickets,
    /// Forwards clients' `send` to backend services (shared with the lifecycle events' sender).
    pub proxy: Arc<crate::proxy::Proxy>,
    /// Records lifecycle events (a no-op when they are off).
    pub events: crate::lifecycle::Lifecycle,
    /// Set when shutdown starts: `/readyz` turns 503 (the node still serves everything).
    pub draining: AtomicBool,
    /// Set when the drain starts closing connections (after `drain_delay_secs`): upgrades,
    /// tickets and publishes get 503 `draining` from then on.
    pub closing: AtomicBool,
    /// Every TCP connection, counted on the node and per client address.
    pub conns: Arc<ConnLimits>,
    /// `POST /v1/tickets` per client address.
    pub tickets_by_ip: Buckets<IpKey>,
    /// `POST /v1/tickets` per user.
    pub tickets_by_user: Buckets<Arc<str>>,
    /// Numbers the connections (with the node id: their ids, unique in the cluster and, with a
    /// random upper half, across restarts).
    pub next_conn_key: std::sync::atomic::AtomicU64,
    /// Every connection task, so shutdown can wait for them to finish closing.
    pub tracker: TaskTracker,
    /// The log of refused upgrades and connections, a few lines a second at most.
    pub(crate) refusals: rejection::RefusalLog,
    /// The node's metrics (the hub counts into the same).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The nodes' summaries for the dashboard: through Redis, or this node's alone.
    pub summaries: Arc<dyn crate::bus::summaries::Summaries>,
    /// The dashboard's recent points and the cluster's last read.
    pub dashboard: dashboard::Dashboard,
}

impl Gateway {
    /// Listens for `topic` on a bus shared with other nodes (on the in-process bus every message
    /// reaches the hub anyway: nothing to do).
    pub(crate) async fn watch(&self, topic: &Topic) -> Result<(), BusError> {
        match &self.interest {
            Some(i) => i.watch(topic).await,
            None => Ok(()),
        }
    }

    /// One listener of `topic` fewer (after a successful [`Gateway::watch`]).
    pub(crate) async fn unwatch(&self, topic: &Topic) {
        if let Some(i) = &self.interest {
            let _ = i.unwatch(topic).await;
        }
    }

    /// Listens for directed messages to `user` on a shared bus.
    pub(crate) async fn watch_user(&self, user: &str) -> Result<(), BusError> {
        match &self.interest {
            Some(i) => i.watch_user(user).await,
            None => Ok(()),
        }
    }

    /// One listener of `user` fewer (after a successful [`Gateway::watch_user`]).
    pub(crate) async fn unwatch_user(&self, user: &str) {
        if let Some(i) = &self.interest {
            let _ = i.unwatch_user(user).await;
        }
    }
}

/// A connection's id, as in its `welcome` (unique in the cluster): its node's id, then its
/// number on that node in hex.
pub(crate) fn conn_id(node: &str, number: u64) -> String {
    format!("{node}-{number:x}")
}

/// The number on node `node` of the connection whose id is `conn` ([`conn_id`]); `None` when
/// it is not one of that node's.
pub(crate) fn conn_number(node: &str, conn: &str) -> Option<u64> {
    let hex = conn.strip_prefix(node)?.strip_prefix('-')?;
    let n = u64::from_str_radix(hex, 16).ok()?;
    // Only the spelling `conn_id` writes (no `+`, no upper case, no leading zero).
    (format!("{n:x}") == hex).then_some(n)
}

/// The HTTP routes.
pub fn router(gw: Arc<Gateway>) -> Router {
    let router = Router::new();
    #[cfg(feature = "conformance")]
    let router = router.route("/conformance/echo", get(conformance::echo));
    router
        .route("/ws", get(upgrade::ws))
        .route("/topics/{topic}", get(upgrade::topic))
        .route("/v1/tickets", post(http::tickets))
        .route("/v1/publish", post(http::publish))
        .route("/v1/disconnect", post(http::disconnect))
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(admin::metrics))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/data", get(dashboard::data))
        .fallback(http::not_found)
        .with_state(gw)
}

/// Accepts connections until `stop` is cancelled; each is counted ([`limits`]), then served as
/// HTTP/1.1 with upgrades, over TLS when `tls` is given.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let app = router(gw.clone());
    // Refusals answered at once, each holding its socket for a moment; past this many at a
    // time, a refused connection is closed without an answer.
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let peer = peer.ip().to_canonical();
        // Counted before any TLS or HTTP work.
        let permit = match gw.conns.admit() {
            Ok(p) => p,
            Err(r) => {
                refuse(stream, peer, r, tls.is_some(), &refusing, &gw);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = NewConnection {
            gw: gw.clone(),
            app: app.clone(),
            tls: tls.clone(),
            stop: stop.clone(),
            refusing: refusing.clone(),
        };
        tokio::spawn(ctx.run(stream, peer, permit));
    }
}

/// What a newly accepted connection's task needs.
struct NewConnection {
    gw: Arc<Gateway>,
    app: Router,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
    /// Bounds the refusals answered at once (shared with the accept loop).
    refusing: Arc<Semaphore>,
}

impl NewConnection {
    /// Finds the client address (a PROXY header first, from a trusted proxy that sends one),
    /// counts it, then serves the connection.
    async fn run(self, mut stream: TcpStream, peer: IpAddr, mut permit: Permit) {
        let limits = &self.gw.config.limits;
        let trusted = limits.is_trusted_proxy(peer);
        let mut info = ConnInfo {
            client: peer,
            forwarded: trusted,
        };
        if trusted && limits.proxy_protocol {
            match client::read_proxy_header(&mut stream).await {
                Ok(named) => {
                    info = ConnInfo {
                        client: named.unwrap_or(peer),
                        forwarded: false,
                    }
                }
                Err(e) => {
                    tracing::info!(%peer, "connection refused: {e}");
                    self.gw.metrics.refused("bad_proxy_header");
                    return;
                }
            }
        }
        // A proxy that names clients per request is counted per request instead.
        if !info.forwarded
            && let Err(r) = self.gw.conns.admit_address(&mut permit, info.client)
        {
            drop(permit);
            refuse(
                stream,
                info.client,
                r,
                self.tls.is_some(),
                &self.refusing,
                &self.gw,
            );
            return;
        }
        let io = Guarded::new(stream, permit);
        let svc = TowerToHyperService::new(WithInfo {
            app: self.app,
            info,
        });
        match self.tls {
            None => http(io, svc, self.stop).await,
            Some(acceptor) => {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => http(tls, svc, self.stop).await,
                    Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
        }
    }
}

/// The router, with the connection's [`ConnInfo`] added to every request (cheaper than a
/// router layer per connection).
#[derive(Clone)]
struct WithInfo {
    app: Router,
    info: ConnInfo,
}

impl tower::Service<axum::http::Request<hyper::body::Incoming>> for WithInfo {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = axum::routing::future::RouteFuture<std::convert::Infallible>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.info);
        tower::Service::call(&mut self.app, req)
    }
}

/// Most refusals answered at once.
const MAX_REFUSING: usize = 256;

/// Answers a connection refused by the counts: for plain HTTP a 503 or 429 (with `Retry-After`)
/// written at once without reading the request; over TLS the socket is closed before any
/// handshake work.
fn refuse(
    stream: TcpStream,
    client: IpAddr,
    r: Refusal,
    tls: bool,
    refusing: &Arc<Semaphore>,
    gw: &Gateway,
) {
    let rejection = Rejection::from(r);
    gw.refusals.refused("connection", client, &rejection);
    gw.metrics.refused(rejection.code());
    if tls {
        return;
    }
    let Ok(slot) = refusing.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _slot = slot;
        let mut stream = stream;
        let answer = rejection.raw_response();
        let write = async {
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            // Read what the client sent until it closes, so that closing does not reset the
            // connection before the client has read the answer.
            let mut sink = [0u8; 1024];
            let mut left: usize = 64 * 1024;
            while left > 0 {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => left = left.saturating_sub(n),
                }
            }
            std::io::Result::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
    });
}

/// Time allowed for a TLS handshake, and for sending an HTTP request head (on a new connection,
/// and between requests on a kept-alive one).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (431 beyond).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most request headers (431 beyond).
const MAX_HEADERS: usize = 64;

/// Serves one HTTP/1.1 connection (with upgrades) until it ends or shutdown. Pipelined requests
/// are answered one at a time, and a client that sends them without reading the answers meets
/// the write deadline of [`Guarded`].
async fn http<I>(io: I, svc: TowerToHyperService<WithInfo>, stop: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => { if let Err(e) = r { tracing::debug!("http connection: {e}") } }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{conn_id, conn_number};

    #[test]
    fn a_connection_id_names_its_node_and_its_number_there() {
        let id = conn_id("node_A-1", 0x2a_0000_0001);
        assert_eq!(id, "node_A-1-2a00000001");
        assert_eq!(conn_number("node_A-1", &id), Some(0x2a_0000_0001));
        // Another node's, or not spelled as `conn_id` spells it.
        assert_eq!(conn_number("node_A", &id), None);
        assert_eq!(conn_number("node_A-1", "node_A-1-2A00000001"), None);
        assert_eq!(conn_number("node_A-1", "node_A-1-+2a"), None);
        assert_eq!(conn_number("node_A-1", "node_A-1-02a"), None);
        assert_eq!(conn_number("node_A-1", "node_A-1-"), None);
    }
}
