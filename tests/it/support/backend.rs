//! Real HTTP backends for the proxy tests, in-process on 127.0.0.1:0 (axum). Each echoes what it
//! received (which endpoint, the body, the headers that matter), signals each request's arrival,
//! and can be told to hold its answers, to answer a status, to answer too much or no JSON, to
//! fail its health check, or to die.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::WAIT;

/// How a backend behaves; changed by tests while it runs.
#[derive(Default)]
pub(crate) struct Behaviour {
    /// A status to answer instead of 200 (0: 200).
    pub status: AtomicU16,
    /// Answer this many bytes of JSON (0: the echo).
    pub big: AtomicUsize,
    /// Answer text that is not JSON.
    pub not_json: AtomicBool,
    /// `GET /healthz` answers 500.
    pub unhealthy: AtomicBool,
    /// Requests to `POST /herald` so far.
    pub hits: AtomicUsize,
    /// The same count, for tests that wait for a request to arrive ([`Behaviour::arrived`]).
    arrivals: watch::Sender<usize>,
    /// While true, answers to `POST /herald` wait (the requests have arrived and are counted).
    held: watch::Sender<bool>,
}

impl Behaviour {
    /// Holds every answer to `POST /herald` from now on (`true`), or releases them all.
    pub(crate) fn hold(&self, on: bool) {
        self.held.send_replace(on);
    }

    /// Waits until `n` requests to `POST /herald` have arrived in all; fails the test when they
    /// have not within [`WAIT`].
    pub(crate) async fn arrived(&self, n: usize) {
        let mut rx = self.arrivals.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|&k| k >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} requests did not arrive within {WAIT:?}"))
            .expect("the backend is running");
    }
}

/// A running backend.
pub(crate) struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    /// Its behaviour.
    pub b: Arc<Behaviour>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Starts one; `name` is echoed as `endpoint`.
    pub(crate) async fn start(name: &'static str) -> Backend {
        Backend::start_with(name, None).await
    }

    /// One serving HTTPS (HTTP/2 or HTTP/1.1 by ALPN) with the PEM `cert` and `key`.
    pub(crate) async fn start_tls(name: &'static str, cert: &str, key: &str) -> Backend {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Backend::start_with(name, Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn start_with(name: &'static str, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let b = Arc::new(Behaviour::default());
        let (bs, bh) = (b.clone(), b.clone());
        let app = Router::new()
            .route(
                "/herald",
                post(
                    move |version: axum::http::Version, headers: HeaderMap, body: String| {
                        let b = bs.clone();
                        async move { answer(name, &b, version, headers, body).await }
                    },
                ),
            )
            .route(
                "/healthz",
                get(move || {
                    let b = bh.clone();
                    async move {
                        if b.unhealthy.load(Ordering::Relaxed) {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::OK
                        }
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = match tls {
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
            Some(acceptor) => tokio::spawn(async move {
                use hyper_util::rt::{TokioExecutor, TokioIo};
                use hyper_util::service::TowerToHyperService;
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, app) = (acceptor.clone(), app.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                            .await;
                    });
                }
            }),
        };
        Backend { addr, b, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:<port>`.
    pub(crate) fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stops it, and waits until its port refuses connections (the abort takes effect when the
    /// server task is next polled).
    pub(crate) async fn kill(&self) {
        self.task.abort();
        let start = std::time::Instant::now();
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{} kept accepting",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn answer(
    name: &str,
    b: &Behaviour,
    version: axum::http::Version,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    b.hits.fetch_add(1, Ordering::Relaxed);
    b.arrivals.send_modify(|n| *n += 1);
    let _ = b.held.subscribe().wait_for(|held| !held).await;
    let status = b.status.load(Ordering::Relaxed);
    if status != 0 {
        return (StatusCode::from_u16(status).unwrap(), "no").into_response();
    }
    if b.not_json.load(Ordering::Relaxed) {
        return "this is not json".into_response();
    }
    let big = b.big.load(Ordering::Relaxed);
    if big > 0 {
        return format!("\"{}\"", "x".repeat(big)).into_response();
    }
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let req: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    axum::Json(json!({
        "endpoint": name,
        "version": format!("{version:?}"),
        "request": req,
        "headers": {
            "x-herald-user": h("x-herald-user"),
            "x-herald-conn": h("x-herald-conn"),
            "x-request-id": h("x-request-id"),
            "cookie": h("cookie"),
            "x-custom": h("x-custom"),
        },
    }))
    .into_response()
}
