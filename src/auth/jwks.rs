//! The JWKS cache (`jwt_jwks_url`): the identity provider's public keys, fetched at start,
//! refreshed in the background, and refetched when a token names a `kid` nobody knows.
//!
//! Policy:
//! - At start the node fetches at once and, until a fetch succeeds, retries with a backoff from
//!   1 s to 30 s, saying so in the log. Meanwhile a token that only a JWKS key could verify is
//!   refused as `unavailable` (503), never accepted.
//! - After a good fetch the keys are refreshed every `jwks_refresh_secs` (default 300). A failed
//!   refresh keeps the cached keys (an outage of the provider fails no token whose key is
//!   cached) and is retried with the same backoff.
//! - A token whose `kid` is unknown asks for a refetch, at most one per `jwks_refresh_min_secs`
//!   (default 30) for the whole node: a flood of made-up `kid`s costs the provider one request
//!   per interval. Verifiers asking while a refetch is in flight wait for it.
//! - A response must be 200 within 10 s, at most 1 MiB, and hold at least one usable signing
//!   key; anything else is a failed fetch. At most [`MAX_JWKS_KEYS`] keys are kept.
//!
//! Owns: the HTTP client for the JWKS URL, the cached keys, the refresh task. The keys are
//! swapped whole (an `Arc`), so a verifier holds the read lock only to clone it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::keys::{KeyError, MAX_JWKS_KEYS, VerifyKey, parse_jwks};

/// Longest a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS document read.
const MAX_BODY: usize = 1024 * 1024;
/// First and longest wait before retrying a failed fetch.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest a token waits for a refetch it asked for; then it is refused with `unavailable`.
const REFETCH_WAIT: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What a refetch asked for by a token came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refetch {
    /// An attempt that started after the asking finished (with or without new keys).
    Done,
    /// The last refetch was asked for less than `jwks_refresh_min_secs` ago: none now.
    Throttled,
    /// No attempt finished within [`REFETCH_WAIT`] (the JWKS server is slow or hangs).
    TimedOut,
}

/// Why a JWKS fetch failed (logged; the cached keys stay).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The URL does not parse as an HTTP URI.
    #[error("the JWKS URL is not a valid URL")]
    Url(#[source] hyper::http::uri::InvalidUri),
    /// Connecting, sending or reading failed.
    #[error("the JWKS request failed: {0}")]
    Request(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No answer within the timeout.
    #[error("the JWKS server did not answer within {} s", FETCH_TIMEOUT.as_secs())]
    Timeout,
    /// An answer other than 200.
    #[error("the JWKS server answered {0}")]
    Status(u16),
    /// Not a key set.
    #[error(transparent)]
    Document(#[from] KeyError),
    /// A key set without one usable signing key.
    #[error(
        "the JWKS holds no usable signing key ({skipped} entries were encryption keys, \
         symmetric keys or of an unsupported type)"
    )]
    NoKeys {
        /// Entries skipped.
        skipped: usize,
    },
}

/// The cached key set of one JWKS URL, and the state of its refresh.
pub struct Jwks {
    /// The URL without its query string, for log lines.
    shown: String,
    uri: hyper::Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    refresh: Duration,
    min_interval: Duration,
    /// The keys of the last good fetch; `None` until the first. Swapped whole; the lock is
    /// held only to clone or replace the `Arc`.
    keys: RwLock<Option<Arc<[VerifyKey]>>>,
    /// Wakes the refresh task for a refetch a verifier asked for.
    demand: Notify,
    /// The number of fetch attempts finished (good or bad): verifiers waiting on a refetch
    /// watch it.
    finished: watch::Sender<u64>,
    /// The refetch verifiers asked for. Locked only to read or update its fields.
    asked: Mutex<Asked>,
}

/// Refetches asked for by verifiers: at most one per `min_interval`.
#[derive(Default)]
struct Asked {
    /// When the last one was asked for.
    last: Option<Instant>,
    /// Fetch attempts started so far.
    started: u64,
    /// The attempt the waiting verifiers wait for (one that started after they asked), while
    /// it has not finished.
    target: Option<u64>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("url", &self.shown).finish()
    }
}

impl Jwks {
    /// A cache for `url` (already checked by the config: `https://`, or `http://` to a loopback
    /// address). Nothing is fetched until [`Jwks::run`].
    pub fn new(url: &str, refresh: Duration, min_interval: Duration) -> Result<Jwks, JwksError> {
        let uri: hyper::Uri = url.parse().map_err(JwksError::Url)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        let connector = HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let shown = url.split('?').next().unwrap_or(url).to_owned();
        Ok(Jwks {
            shown,
            uri,
            client,
            refresh,
            min_interval,
            keys: RwLock::new(None),
            demand: Notify::new(),
            finished: watch::Sender::new(0),
            asked: Mutex::new(Asked::default()),
        })
    }

    /// Fetch attempts finished so far, good or bad.
    pub fn attempts(&self) -> u64 {
        *self.finished.borrow()
    }

    /// The cached keys; `None` before the first good fetch.
    pub(crate) fn current(&self) -> Option<Arc<[VerifyKey]>> {
        self.keys.read().clone()
    }

    /// Asks for a refetch because a token named an unknown `kid` (or arrived before the first
    /// fetch), and waits for it (an attempt that starts after the asking) at most
    /// [`REFETCH_WAIT`]: a request is never held for a JWKS server that hangs.
    pub(crate) async fn refetch(&self) -> Refetch {
        let target = {
            let mut asked = self.asked.lock();
            match asked.target {
                Some(t) => t,
                None => {
                    let now = Instant::now();
                    if asked
                        .last
                        .is_some_and(|t| now.duration_since(t) < self.min_interval)
                    {
                        return Refetch::Throttled;
                    }
                    asked.last = Some(now);
                    let t = asked.started + 1;
                    asked.target = Some(t);
                    self.demand.notify_one();
                    t
                }
            }
        };
        let mut finished = self.finished.subscribe();
        match tokio::time::timeout(REFETCH_WAIT, finished.wait_for(|&n| n >= target)).await {
            Ok(Ok(_)) => Refetch::Done,
            _ => Refetch::TimedOut,
        }
    }

    /// Fetches now and then keeps the keys fresh until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = RETRY_MIN;
        loop {
            self.asked.lock().started += 1;
            let result = self.fetch().await;
            let had = self.current().map_or(0, |k| k.len());
            let wait = match result {
                Ok(keys) => {
                    backoff = RETRY_MIN;
                    let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
                    tracing::info!(url = %self.shown, keys = keys.len(), ?kids, "JWKS fetched");
                    *self.keys.write() = Some(keys.into());
                    self.refresh
                }
                Err(e) => {
                    if had == 0 {
                        tracing::error!(
                            url = %self.shown, error = %e, retry_in_secs = backoff.as_secs(),
                            "cannot fetch the JWKS: tokens signed by its keys are refused \
                             (unavailable) until it can be fetched"
                        );
                    } else {
                        tracing::warn!(
                            url = %self.shown, error = %e, cached_keys = had,
                            retry_in_secs = backoff.as_secs(),
                            "cannot refresh the JWKS: keeping the cached keys"
                        );
                    }
                    let wait = backoff;
                    backoff = (backoff * 2).min(RETRY_MAX);
                    wait.min(self.refresh)
                }
            };
            let done = {
                let mut asked = self.asked.lock();
                if asked.target.is_some_and(|t| t <= asked.started) {
                    asked.target = None;
                }
                asked.started
            };
            self.finished.send_replace(done);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = self.demand.notified() => {}
            }
        }
    }

    /// One GET of the JWKS URL.
    async fn fetch(&self) -> Result<Vec<VerifyKey>, JwksError> {
        let req = hyper::Request::get(self.uri.clone())
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "herald")
            .body(Empty::new())
            .map_err(|e| JwksError::Request(e.into()))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| JwksError::Request(e.into()))?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Err(JwksError::Status(status));
            }
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(JwksError::Request)?
                .to_bytes();
            let parsed = parse_jwks(&body)?;
            if parsed.keys.is_empty() {
                return Err(JwksError::NoKeys {
                    skipped: parsed.skipped,
                });
            }
            if parsed.skipped > 0 {
                tracing::debug!(
                    url = %self.shown, skipped = parsed.skipped, max = MAX_JWKS_KEYS,
                    "JWKS entries not used (not signing keys, unsupported, or over the bound)"
                );
            }
            Ok(parsed.keys)
        };
        tokio::time::timeout(FETCH_TIMEOUT, work)
            .await
            .unwrap_or(Err(JwksError::Timeout))
    }
}
