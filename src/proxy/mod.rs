//! The proxy: a client's `send` becomes `POST {endpoint}{path}` to one healthy endpoint of the
//! named service, and the backend's answer becomes the `reply`. No WebSocket types here.
//!
//! Pooled keep-alive connections per endpoint (HTTP/1.1, or HTTP/2 when an `https://` endpoint
//! offers it by ALPN); balancing in [`balance`] (pure); health
//! in [`health`]. Failure policy: a connection refused or reset before the request was sent
//! marks the endpoint suspect and is retried once on another; a request that may have reached a
//! backend is retried only for an `idempotent` service. Over `max_concurrency`, `overloaded` at
//! once (no queue). Every error knows its `error` code. Every attempt is counted by configured
//! service, endpoint and outcome, with its time (`herald_proxy_*`); a request no endpoint was
//! tried for counts with endpoint `none`, and one to a service nobody configured with service
//! `unknown` (its name is the client's, not a bounded label value).

pub(crate) mod balance;
pub(crate) mod health;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::services::ServiceConfig;
use crate::metrics::Metrics;
use crate::protocol::ErrorCode;
use health::Endpoint;

/// Why a `send` failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No service has that name.
    #[error("no service named {0:?} is configured on this node")]
    UnknownService(String),
    /// Every endpoint is down.
    #[error("no healthy endpoint of {0:?}")]
    Unavailable(String),
    /// Over the service's concurrency limit.
    #[error("{0:?} has its maximum of requests in flight; try again")]
    Overloaded(String),
    /// The backend did not answer in time.
    #[error("{service:?} did not answer within {ms} ms")]
    Timeout {
        /// The service.
        service: String,
        /// The timeout.
        ms: u128,
    },
    /// The backend answered with a status other than 2xx.
    #[error("{service:?} answered {status}")]
    Status {
        /// The service.
        service: String,
        /// Its status.
        status: u16,
    },
    /// A service's TLS settings could not be loaded (at start).
    #[error("services.{service}: {problem}")]
    Setup {
        /// The service.
        service: String,
        /// What is wrong.
        problem: String,
    },
    /// The answer was unusable (too big, not JSON) or the exchange broke after the request left.
    /// The client is told what went wrong, not the transport's own words (those are the cause,
    /// for the logs).
    #[error("{service:?}: {problem}")]
    Broken {
        /// The service.
        service: String,
        /// What went wrong.
        problem: &'static str,
        /// The transport's error, when there was one.
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl ProxyError {
    /// The `error` frame's code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProxyError::UnknownService(_) => ErrorCode::UnknownService,
            ProxyError::Unavailable(_) => ErrorCode::UpstreamUnavailable,
            ProxyError::Overloaded(_) => ErrorCode::Overloaded,
            ProxyError::Timeout { .. } => ErrorCode::UpstreamTimeout,
            ProxyError::Status { .. } | ProxyError::Broken { .. } => ErrorCode::UpstreamError,
            ProxyError::Setup { .. } => ErrorCode::Internal,
        }
    }

    /// The backend's status, for `upstream_error`.
    pub fn status(&self) -> Option<u16> {
        match self {
            ProxyError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A `send` on its way to a service.
pub struct Outgoing<'a> {
    /// The request's id (echoed to the backend).
    pub id: u64,
    /// The user (from the ticket; never from the client's data).
    pub user: &'a str,
    /// The connection's id.
    pub conn: &'a str,
    /// The payload, JSON text.
    pub data: &'a [u8],
    /// The upgrade request's headers (name lowercase, value), filtered per service.
    pub headers: &'a [(String, String)],
}

/// The connector of every client: `https://` (rustls, ALPN h2 or http/1.1) or `http://`.
type Connector = HttpsConnector<HttpConnector>;

struct Service {
    config: ServiceConfig,
    /// Pooled keep-alive connections to its endpoints.
    client: Client<Connector, Full<Bytes>>,
    endpoints: Vec<Arc<Endpoint>>,
    /// Round-robin turn.
    turn: AtomicUsize,
    /// Requests in flight, bounded by `max_concurrency`: a permit per request, `overloaded` when
    /// none is left.
    permits: Arc<Semaphore>,
}

/// All configured services.
pub struct Proxy {
    services: HashMap<String, Service>,
    /// Every header name some service forwards, captured at the upgrade.
    forwarded: Vec<String>,
    max_reply: usize,
    metrics: Arc<Metrics>,
}

/// A connector trusting `ca` (a PEM file), or the public web roots.
fn connector(service: &str, ca: Option<&std::path::Path>) -> Result<Connector, ProxyError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let setup = |problem: String| ProxyError::Setup {
        service: service.to_owned(),
        problem,
    };
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let builder = match ca {
        None => HttpsConnectorBuilder::new().with_webpki_roots(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| setup(format!("tls_ca {}: {e}", path.display())))?;
            for c in certs {
                let c = c.map_err(|e| setup(format!("tls_ca {}: {e}", path.display())))?;
                roots
                    .add(c)
                    .map_err(|e| setup(format!("tls_ca {}: {e}", path.display())))?;
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| setup(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            HttpsConnectorBuilder::new().with_tls_config(tls)
        }
    };
    Ok(builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

impl Proxy {
    /// The services of the config, with their health checks running until `stop`.
    pub fn new(
        configs: &[ServiceConfig],
        max_reply: usize,
        stop: &CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Result<Proxy, ProxyError> {
        let mut services = HashMap::new();
        for c in configs {
            let conn = connector(&c.name, c.tls_ca.as_deref())?;
            let client = Client::builder(TokioExecutor::new())
                .pool_idle_timeout(std::time::Duration::from_secs(60))
                .build(conn.clone());
            let endpoints: Vec<Arc<Endpoint>> = c
                .endpoints
                .iter()
                .map(|e| Arc::new(Endpoint::new(e.clone())))
                .collect();
            if let Some(h) = &c.health {
                let checker: Client<Connector, Empty<Bytes>> =
                    Client::builder(TokioExecutor::new()).build(conn);
                tokio::spawn(health::run(
                    checker,
                    endpoints.clone(),
                    h.clone(),
                    stop.clone(),
                ));
            }
            services.insert(
                c.name.clone(),
                Service {
                    permits: Arc::new(Semaphore::new(c.max_concurrency)),
                    config: c.clone(),
                    client,
                    endpoints,
                    turn: AtomicUsize::new(0),
                },
            );
        }
        let mut forwarded: Vec<String> = configs
            .iter()
            .flat_map(|s| s.forward_headers.iter().cloned())
            .collect();
        forwarded.sort();
        forwarded.dedup();
        Ok(Proxy {
            services,
            forwarded,
            max_reply,
            metrics,
        })
    }

    /// Every header name some service forwards (to capture at the upgrade).
    pub fn forwarded_headers(&self) -> &[String] {
        &self.forwarded
    }

    /// Forwards `out` to service `name`; the backend's answer (JSON text) on success.
    pub async fn send(&self, name: &str, out: Outgoing<'_>) -> Result<Bytes, ProxyError> {
        let call = Call {
            path: None,
            key: out.user,
            identity: Some((out.user, out.conn)),
            request_id: format!("{}-{}", out.conn, out.id),
            headers: out.headers,
            body: Bytes::from(request_body(&out)),
        };
        self.forward(name, call).await
    }

    /// POSTs `body` (JSON) to service `name` on no client's behalf (lifecycle events): the
    /// same balancing, health, limits and answer checks as `send`, without identity headers.
    pub async fn post(
        &self,
        name: &str,
        key: &str,
        request_id: &str,
        body: Bytes,
    ) -> Result<Bytes, ProxyError> {
        let call = Call {
            path: None,
            key,
            identity: None,
            request_id: request_id.to_owned(),
            headers: &[],
            body,
        };
        self.forward(name, call).await
    }

    /// POSTs `body` (JSON) to `{endpoint}{path}` of service `name` for a client that has no
    /// identity yet (the auth hook), with the upgrade's `headers` that the service allowlists.
    /// Balanced on `key` (the client address).
    pub async fn post_to(
        &self,
        name: &str,
        path: &str,
        key: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Bytes, ProxyError> {
        let call = Call {
            path: Some(path),
            key,
            identity: None,
            request_id: String::new(),
            headers,
            body,
        };
        self.forward(name, call).await
    }

    async fn forward(&self, name: &str, call: Call<'_>) -> Result<Bytes, ProxyError> {
        let Some(s) = self.services.get(name) else {
            let e = ProxyError::UnknownService(name.to_owned());
            self.metrics
                .proxy_request("unknown", "none", e.code().as_str(), None);
            return Err(e);
        };
        let _permit = s.permits.clone().try_acquire_owned().map_err(|_| {
            let e = ProxyError::Overloaded(name.to_owned());
            self.metrics
                .proxy_request(name, "none", e.code().as_str(), None);
            e
        })?;
        let mut failed: Option<usize> = None;
        loop {
            let views: Vec<balance::View<'_>> = s
                .endpoints
                .iter()
                .map(|e| balance::View {
                    base: &e.base,
                    up: e.is_up(),
                    in_flight: e.in_flight.load(Ordering::Relaxed),
                })
                .collect();
            let turn = s.turn.fetch_add(1, Ordering::Relaxed);
            let Some(i) = balance::pick(s.config.balance, &views, turn, call.key, failed) else {
                let e = ProxyError::Unavailable(name.to_owned());
                self.metrics
                    .proxy_request(name, "none", e.code().as_str(), None);
                return Err(e);
            };
            let e = &s.endpoints[i];
            e.in_flight.fetch_add(1, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let r = self.attempt(s, e, &call).await;
            e.in_flight.fetch_sub(1, Ordering::Relaxed);
            let outcome = match &r {
                Attempt::Done(Ok(_)) => "ok",
                Attempt::Done(Err(err)) | Attempt::Retry(err) => err.code().as_str(),
            };
            self.metrics
                .proxy_request(name, &e.label, outcome, Some(started.elapsed()));
            match r {
                Attempt::Done(r) => return r,
                Attempt::Retry(err) => {
                    if failed.is_some() {
                        return Err(err);
                    }
                    failed = Some(i);
                }
            }
        }
    }

    async fn attempt(&self, s: &Service, e: &Endpoint, call: &Call<'_>) -> Attempt {
        let name = &s.config.name;
        let broken =
            |problem: &'static str, cause: Option<Box<dyn std::error::Error + Send + Sync>>| {
                ProxyError::Broken {
                    service: name.clone(),
                    problem,
                    cause,
                }
            };
        let uri = format!("{}{}", e.base, call.path.unwrap_or(&s.config.path));
        let mut req = hyper::Request::post(uri).header("content-type", "application/json");
        if !call.request_id.is_empty() {
            req = req.header("x-request-id", call.request_id.as_str());
        }
        if let Some((user, conn)) = call.identity {
            req = req
                .header("x-herald-user", user)
                .header("x-herald-conn", conn);
        }
        for (k, v) in call.headers {
            if s.config.forward_headers.iter().any(|h| h == k) {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        let req = match req.body(Full::new(call.body.clone())) {
            Ok(r) => r,
            Err(err) => {
                return Attempt::Done(Err(broken(
                    "the request could not be built",
                    Some(err.into()),
                )));
            }
        };
        let timeout = s.config.timeout;
        let answer = tokio::time::timeout(timeout, async {
            let resp = s.client.request(req).await?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), self.max_reply)
                .collect()
                .await;
            Ok::<_, hyper_util::client::legacy::Error>((status, body))
        })
        .await;
        match answer {
            Err(_) => Attempt::Done(Err(ProxyError::Timeout {
                service: name.clone(),
                ms: timeout.as_millis(),
            })),
            Ok(Err(err)) if err.is_connect() => {
                // Never reached the backend: safe to try another endpoint.
                e.suspect();
                Attempt::Retry(ProxyError::Unavailable(name.clone()))
            }
            Ok(Err(err)) if s.config.idempotent => {
                Attempt::Retry(broken("the exchange broke", Some(err.into())))
            }
            Ok(Err(err)) => Attempt::Done(Err(broken(
                "the exchange broke after the request was sent (not retried: the service is not \
                 idempotent)",
                Some(err.into()),
            ))),
            Ok(Ok((status, _))) if !status.is_success() => Attempt::Done(Err(ProxyError::Status {
                service: name.clone(),
                status: status.as_u16(),
            })),
            Ok(Ok((_, Err(err)))) => Attempt::Done(Err(broken(
                "its reply is over the size limit (max_message_bytes) or broke off; not forwarded",
                Some(err),
            ))),
            Ok(Ok((_, Ok(collected)))) => {
                let bytes = collected.to_bytes();
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return Attempt::Done(Ok(Bytes::from_static(b"null")));
                }
                match serde_json::from_slice::<&serde_json::value::RawValue>(&bytes) {
                    Ok(_) => Attempt::Done(Ok(bytes)),
                    Err(err) => {
                        Attempt::Done(Err(broken("its reply is not JSON", Some(err.into()))))
                    }
                }
            }
        }
    }
}

/// One request to a service.
struct Call<'a> {
    /// The path under the endpoint; `None`: the service's `path`.
    path: Option<&'a str>,
    /// What `user_hash` balances on.
    key: &'a str,
    /// The user and connection, for `X-Herald-User` and `X-Herald-Conn`.
    identity: Option<(&'a str, &'a str)>,
    /// `X-Request-Id` (none when empty).
    request_id: String,
    /// Upgrade headers, forwarded when the service allowlists them.
    headers: &'a [(String, String)],
    /// The JSON body.
    body: Bytes,
}

enum Attempt {
    Done(Result<Bytes, ProxyError>),
    /// Failed in a way that may be retried once on another endpoint.
    Retry(ProxyError),
}

/// `{"id", "user", "conn", "data"}`, with `data` as the client sent it.
fn request_body(out: &Outgoing<'_>) -> Vec<u8> {
    let mut b = Vec::with_capacity(out.data.len() + 96);
    b.extend_from_slice(b"{\"id\":");
    b.extend_from_slice(out.id.to_string().as_bytes());
    b.extend_from_slice(b",\"user\":");
    serde_json::to_writer(&mut b, out.user).expect("a string serialises");
    b.extend_from_slice(b",\"conn\":");
    serde_json::to_writer(&mut b, out.conn).expect("a string serialises");
    b.extend_from_slice(b",\"data\":");
    b.extend_from_slice(out.data);
    b.push(b'}');
    b
}
