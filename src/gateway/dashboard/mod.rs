//! The dashboard: `GET /dashboard`, a page of live charts of this node and of the cluster, its
//! script (`/dashboard/app.js`) and its figures (`/dashboard/data`). Every asset is embedded in
//! the binary (`include_str!`): no CDN, no build step, it works offline. Vanilla JavaScript draws
//! on canvases, polling the figures every second.
//!
//! Access: the admin key ([`super::admin`]) as `Authorization: Bearer`, or the cookie that
//! `/dashboard?key=<admin key>` sets (`HttpOnly`, `SameSite=Strict`, `Secure` over TLS, holding a
//! digest of the key) before redirecting to `/dashboard`, so that the key leaves the address bar.
//!
//! Figures: the sampler ([`sampler`], run by [`run`] once a second) makes a point of this node,
//! keeps the last [`HISTORY`] of them, and shares each with the cluster through the bus's
//! summaries ([`crate::bus::summaries`]); `/dashboard/data` answers this node's points after
//! `?since=` and every live node's latest, read from the bus at most once a second.

pub(crate) mod sampler;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::Gateway;
use super::admin;
use super::rejection::Rejection;
use sampler::{Point, Sampler};

/// Points of this node kept (five minutes, one a second).
pub(crate) const HISTORY: usize = 300;
/// How long a node's shared summary lives unless shared again.
const SUMMARY_TTL: Duration = Duration::from_secs(5);
/// How long the cluster's summaries read from the bus are reused.
const CLUSTER_FRESH: Duration = Duration::from_secs(1);
/// How long the dashboard's cookie lasts.
const COOKIE_SECS: u64 = 12 * 3600;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");

/// What the page may load and do: itself, its script, and its figures; nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
                   style-src 'unsafe-inline'; img-src data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The dashboard's state: this node's recent points, and the cluster's last read.
#[derive(Default)]
pub struct Dashboard {
    /// Oldest first, at most [`HISTORY`]. Plain mutex, never held across `.await`.
    points: parking_lot::Mutex<VecDeque<Point>>,
    /// When the cluster was last read, and what it said. Plain mutex, never held across `.await`.
    cluster: parking_lot::Mutex<Option<(tokio::time::Instant, Arc<Cluster>)>>,
}

/// The cluster's summaries as last read.
#[derive(serde::Serialize, Default)]
struct Cluster {
    nodes: Vec<Point>,
    /// Why they could not be read, when they could not.
    error: Option<String>,
}

impl Dashboard {
    fn push(&self, p: Point) {
        let mut points = self.points.lock();
        points.push_back(p);
        while points.len() > HISTORY {
            points.pop_front();
        }
    }

    fn since(&self, at: u64) -> Vec<Point> {
        self.points
            .lock()
            .iter()
            .filter(|p| p.at > at)
            .cloned()
            .collect()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Once a second: a point of this node, kept and shared with the cluster. (The render it reads
/// also keeps the histograms' buffers to a second of observations.) It goes on while the node
/// drains, so that the dashboard shows the connections leaving, and ends once `stop` was
/// cancelled and every connection has ended.
pub(crate) async fn run(gw: Arc<Gateway>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampler = Sampler::default();
    loop {
        tick.tick().await;
        if stop.is_cancelled() && gw.tracker.is_closed() && gw.tracker.is_empty() {
            return;
        }
        let text = admin::render(&gw, false);
        let samples = match crate::metrics::exposition::parse(&text) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("the dashboard cannot read the metrics: {e}");
                continue;
            }
        };
        let point = sampler.point(&gw.config.node_id, &samples, unix_ms());
        let shared = serde_json::to_vec(&point).map(Bytes::from);
        gw.dashboard.push(point);
        if let Ok(summary) = shared {
            let node = &gw.config.node_id;
            if let Err(e) = gw.summaries.share_summary(node, summary, SUMMARY_TTL).await {
                tracing::debug!("this node's summary is not shared: {e}");
            }
        }
    }
}

/// The cluster's summaries, read from the bus unless read less than [`CLUSTER_FRESH`] ago.
async fn cluster(gw: &Gateway) -> Arc<Cluster> {
    let now = tokio::time::Instant::now();
    if let Some((at, c)) = &*gw.dashboard.cluster.lock()
        && now.duration_since(*at) < CLUSTER_FRESH
    {
        return c.clone();
    }
    let read = match gw.summaries.summaries().await {
        Ok(all) => Cluster {
            nodes: all
                .iter()
                .filter_map(|(_, s)| serde_json::from_slice::<Point>(s).ok())
                .collect(),
            error: None,
        },
        Err(e) => Cluster {
            nodes: Vec::new(),
            error: Some(e.to_string()),
        },
    };
    let read = Arc::new(read);
    *gw.dashboard.cluster.lock() = Some((now, read.clone()));
    read
}

/// The request's query, or a 400.
fn query(req: &Request) -> Result<HashMap<String, String>, Rejection> {
    Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .map(|q| q.0)
        .map_err(|e| Rejection::BadRequest(format!("bad query string: {e}")))
}

/// Headers of every dashboard answer: no caching, no framing, no referrer, no sniffing.
fn guarded(mut r: Response, kind: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// `GET /dashboard`: the page; with `?key=<admin key>`, the cookie and a redirect to the page.
pub async fn page(State(gw): State<Arc<Gateway>>, req: Request) -> Result<Response, Rejection> {
    if let Some(key) = query(&req)?.get("key") {
        if !admin::same_secret(key.as_bytes(), gw.config.admin_key().as_bytes()) {
            return Err(Rejection::Admin { missing: false });
        }
        let secure = if gw.config.tls.is_some() {
            "; Secure"
        } else {
            ""
        };
        let cookie = format!(
            "{}={}; Path=/dashboard; Max-Age={COOKIE_SECS}; HttpOnly; SameSite=Strict{secure}",
            admin::COOKIE,
            admin::cookie_value(gw.config.admin_key()),
        );
        let mut r = guarded(StatusCode::SEE_OTHER.into_response(), "text/plain");
        let h = r.headers_mut();
        h.insert(header::LOCATION, HeaderValue::from_static("/dashboard"));
        let cookie = HeaderValue::from_str(&cookie)
            .map_err(|_| Rejection::BadRequest("the cookie cannot be set".into()))?;
        h.insert(header::SET_COOKIE, cookie);
        return Ok(r);
    }
    admin::check(&gw, req.headers(), true)?;
    Ok(guarded(PAGE.into_response(), "text/html; charset=utf-8"))
}

/// `GET /dashboard/app.js`: the page's script.
pub async fn script(State(gw): State<Arc<Gateway>>, req: Request) -> Result<Response, Rejection> {
    admin::check(&gw, req.headers(), true)?;
    Ok(guarded(
        SCRIPT.into_response(),
        "text/javascript; charset=utf-8",
    ))
}

/// `GET /dashboard/data[?since=<unix ms>]`: this node's points after `since` (all that are
/// kept without it), and the cluster's latest: `{"node", "redis", "points", "cluster":
/// {"nodes", "error"}}`.
pub async fn data(State(gw): State<Arc<Gateway>>, req: Request) -> Result<Response, Rejection> {
    admin::check(&gw, req.headers(), true)?;
    let since = match query(&req)?.get("since") {
        None => 0,
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| Rejection::BadRequest("`since` must be unix milliseconds".into()))?,
    };
    let points = gw.dashboard.since(since);
    let cluster = cluster(&gw).await;
    let body = serde_json::json!({
        "node": gw.config.node_id,
        "redis": gw.config.redis.is_some(),
        "points": points,
        "cluster": &*cluster,
    });
    Ok(guarded(Json(body).into_response(), "application/json"))
}
