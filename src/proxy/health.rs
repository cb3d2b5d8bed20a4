//! Endpoint health: active checks (consecutive failures take an endpoint out, consecutive
//! successes bring it back) and passive suspicion (a refused connection takes it out for a few
//! seconds). Endpoints start healthy, so a fresh node serves at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio_util::sync::CancellationToken;

use crate::config::services::HealthConfig;

/// How long a passive failure keeps an endpoint out of rotation.
pub(crate) const SUSPECT_FOR: Duration = Duration::from_secs(5);

/// One endpoint of a service and what is known of it.
pub(crate) struct Endpoint {
    /// Its base URL.
    pub base: String,
    /// Its base URL without credentials: its `endpoint` label in the metrics.
    pub label: String,
    /// The active check's verdict (true without a check).
    healthy: AtomicBool,
    /// Milliseconds (since `epoch`) until which a passive failure keeps it out.
    suspect_until: AtomicU64,
    /// Requests in flight, for `least_requests`.
    pub in_flight: AtomicUsize,
    /// Consecutive failed and successful checks.
    fails: AtomicU32,
    oks: AtomicU32,
    epoch: Instant,
}

impl Endpoint {
    /// A healthy endpoint at `base`.
    pub(crate) fn new(base: String) -> Endpoint {
        Endpoint {
            label: crate::config::redact_url(&base),
            base,
            healthy: AtomicBool::new(true),
            suspect_until: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            fails: AtomicU32::new(0),
            oks: AtomicU32::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// In rotation: healthy and not suspect.
    pub(crate) fn is_up(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.now_ms() >= self.suspect_until.load(Ordering::Relaxed)
    }

    /// A connection to it was refused or reset before the request went out.
    pub(crate) fn suspect(&self) {
        let until = self.now_ms() + SUSPECT_FOR.as_millis() as u64;
        self.suspect_until.store(until, Ordering::Relaxed);
    }

    fn checked(&self, ok: bool, h: &HealthConfig) {
        if ok {
            self.fails.store(0, Ordering::Relaxed);
            let n = self.oks.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= h.rise && !self.healthy.swap(true, Ordering::Relaxed) {
                tracing::info!("{} is healthy again", self.base);
            }
        } else {
            self.oks.store(0, Ordering::Relaxed);
            let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= h.fall && self.healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!("{} failed {n} health checks: out of rotation", self.base);
            }
        }
    }
}

/// Checks `endpoints` every interval until `stop`.
pub(crate) async fn run(
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    endpoints: Vec<Arc<Endpoint>>,
    check: HealthConfig,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let limit = check.interval.max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for e in &endpoints {
            let uri = format!("{}{}", e.base, check.path);
            let ok = match uri.parse::<hyper::Uri>() {
                Ok(u) => matches!(
                    tokio::time::timeout(limit, client.get(u)).await,
                    Ok(Ok(r)) if r.status().is_success()
                ),
                Err(_) => false,
            };
            e.checked(ok, &check);
        }
    }
}
