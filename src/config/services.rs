//! `[services.NAME]` tables, validated: the backend services that clients `send` to, how requests
//! are balanced over their endpoints, their limits, and their health checks.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ConfigError;
use super::raw::{RawHealth, RawService};

/// How a service's requests are spread over its healthy endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// In turn.
    RoundRobin,
    /// The endpoint with the fewest requests in flight.
    LeastRequests,
    /// The same endpoint for the same user while it stays healthy (rendezvous hashing).
    UserHash,
}

/// An active health check.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Path of the GET (2xx is healthy).
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// Consecutive failures that take an endpoint out of rotation.
    pub fall: u32,
    /// Consecutive successes that bring it back.
    pub rise: u32,
}

/// One backend service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Its name, as clients `send` `to` it (and as grants' `send` patterns match).
    pub name: String,
    /// Base URLs, `http://host:port`, without a trailing slash.
    pub endpoints: Vec<String>,
    /// Path appended to an endpoint for each `send`.
    pub path: String,
    /// The balancing strategy.
    pub balance: Balance,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Requests in flight at once; beyond it, `overloaded` at once.
    pub max_concurrency: usize,
    /// Whether a request that may have reached a backend may be retried on another.
    pub idempotent: bool,
    /// Upgrade-request headers passed on (lowercase names).
    pub forward_headers: Vec<String>,
    /// The active health check, if any.
    pub health: Option<HealthConfig>,
    /// CA file for `https://` endpoints (`None`: the public web roots).
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Headers Herald sets or that belong to the connection, never forwarded from a client.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "x-request-id",
];

pub(super) fn validate(
    raw: BTreeMap<String, RawService>,
) -> Result<Vec<ServiceConfig>, ConfigError> {
    raw.into_iter().map(|(name, s)| one(name, s)).collect()
}

fn one(name: String, s: RawService) -> Result<ServiceConfig, ConfigError> {
    let bad = |problem: String| ConfigError::Service {
        name: name.clone(),
        problem,
    };
    if crate::protocol::Topic::parse(&name).is_err() {
        return Err(bad(
            "a service name is dot-separated [A-Za-z0-9_-] segments".into(),
        ));
    }
    if s.endpoints.is_empty() {
        return Err(bad("endpoints: at least one is needed".into()));
    }
    let mut endpoints = Vec::new();
    for e in &s.endpoints {
        let ok = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', '?', '#', ' ']));
        if !ok {
            return Err(bad(format!(
                "endpoints: {e:?}: expected http://host:port or https://host:port"
            )));
        }
        endpoints.push(e.trim_end_matches('/').to_owned());
    }
    let path = s.path.unwrap_or_else(|| "/herald".into());
    if !path.starts_with('/') {
        return Err(bad(format!("path: {path:?} must start with /")));
    }
    let balance = match s.balance.as_deref().unwrap_or("round_robin") {
        "round_robin" => Balance::RoundRobin,
        "least_requests" => Balance::LeastRequests,
        "user_hash" => Balance::UserHash,
        other => {
            return Err(bad(format!(
                "balance: {other:?}: expected round_robin, least_requests or user_hash"
            )));
        }
    };
    let timeout_ms = s.timeout_ms.unwrap_or(2000);
    if !(1..=600_000).contains(&timeout_ms) {
        return Err(bad("timeout_ms: expected 1 to 600000".into()));
    }
    let max_concurrency = s.max_concurrency.unwrap_or(256);
    if !(1..=1_000_000).contains(&max_concurrency) {
        return Err(bad("max_concurrency: expected 1 to 1000000".into()));
    }
    let mut forward_headers = Vec::new();
    for h in s.forward_headers.unwrap_or_default() {
        let lower = h.to_ascii_lowercase();
        if lower.starts_with("x-herald-") {
            return Err(bad(format!(
                "forward_headers: {h:?}: X-Herald-* headers are set by Herald and cannot be \
                 forwarded from clients"
            )));
        }
        if NOT_FORWARDED.contains(&lower.as_str()) || lower.starts_with("sec-websocket-") {
            return Err(bad(format!(
                "forward_headers: {h:?} belongs to the connection"
            )));
        }
        if axum::http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(bad(format!("forward_headers: {h:?} is not a header name")));
        }
        forward_headers.push(lower);
    }
    let health = s.health.map(|h| health(&bad, h)).transpose()?;
    if let Some(ca) = &s.tls_ca
        && let Err(e) = std::fs::File::open(ca)
    {
        return Err(bad(format!("tls_ca: cannot read {}: {e}", ca.display())));
    }
    Ok(ServiceConfig {
        name: name.clone(),
        endpoints,
        path,
        balance,
        timeout: Duration::from_millis(timeout_ms),
        max_concurrency: max_concurrency as usize,
        idempotent: s.idempotent.unwrap_or(false),
        forward_headers,
        health,
        tls_ca: s.tls_ca,
    })
}

fn health(bad: &dyn Fn(String) -> ConfigError, h: RawHealth) -> Result<HealthConfig, ConfigError> {
    if !h.path.starts_with('/') {
        return Err(bad(format!("health.path: {:?} must start with /", h.path)));
    }
    let interval = h.interval_ms.unwrap_or(1000);
    if !(50..=600_000).contains(&interval) {
        return Err(bad("health.interval_ms: expected 50 to 600000".into()));
    }
    let (fall, rise) = (h.fall.unwrap_or(2), h.rise.unwrap_or(2));
    if fall == 0 || rise == 0 {
        return Err(bad("health.fall and health.rise: at least 1".into()));
    }
    Ok(HealthConfig {
        path: h.path,
        interval: Duration::from_millis(interval),
        fall,
        rise,
    })
}
