//! The gateway: the only module with sockets. It accepts TCP connections, serves HTTP/1.1 with
//! hyper (the API routes and the upgrade checks), and runs one task per WebSocket connection.

pub mod connection;
pub mod http;
pub mod rejection;
pub mod tls;
pub mod upgrade;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{JwtVerifier, Tickets};
use crate::bus::Bus;
use crate::config::Config;
use crate::hub::Hub;

/// What every handler and connection task shares.
pub struct Gateway {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Local subscribers and fan-out.
    pub hub: Arc<Hub>,
    /// Offsets, history, publishing.
    pub bus: Arc<dyn Bus>,
    /// Verifies the JWTs exchanged for tickets.
    pub jwt: JwtVerifier,
    /// Issues and redeems one-time tickets.
    pub tickets: Tickets,
    /// Forwards clients' `send` to backend services (shared with the lifecycle events' sender).
    pub proxy: Arc<crate::proxy::Proxy>,
    /// Records lifecycle events (a no-op when they are off).
    pub events: crate::lifecycle::Lifecycle,
    /// Set when shutdown starts: upgrades get 503 and `/readyz` turns 503.
    pub draining: AtomicBool,
    /// WebSocket connections open or being opened, against `max_connections`.
    pub conn_slots: AtomicUsize,
    /// Numbers the connections (with the node id: their ids, unique in the cluster and, with a
    /// random upper half, across restarts).
    pub next_conn_key: std::sync::atomic::AtomicU64,
    /// Every connection task, so shutdown can wait for them to finish closing.
    pub tracker: TaskTracker,
}

/// The HTTP routes.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/ws", get(upgrade::ws))
        .route("/topics/{topic}", get(upgrade::topic))
        .route("/v1/tickets", post(http::tickets))
        .route("/v1/publish", post(http::publish))
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .fallback(http::not_found)
        .with_state(gw)
}

/// Accepts connections until `stop` is cancelled; each is served as HTTP/1.1 with upgrades,
/// over TLS when `tls` is given.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let app = router(gw);
    loop {
        let (stream, _peer) = tokio::select! {
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
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        match tls.clone() {
            None => {
                tokio::spawn(http(stream, svc, stop));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => http(tls, svc, stop).await,
                        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Time allowed for a TLS handshake, and for sending an HTTP request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one HTTP/1.1 connection (with upgrades) until it ends or shutdown.
async fn http<I>(io: I, svc: TowerToHyperService<Router>, stop: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
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
