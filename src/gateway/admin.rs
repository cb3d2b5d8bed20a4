//! The operator's key: `/metrics` and the dashboard take the admin key (`admin_key`, or the API
//! key when it is unset) as `Authorization: Bearer <key>`; the dashboard also takes the cookie it
//! sets once it was opened with the key ([`super::dashboard`]). `/metrics` answers anyone when
//! `metrics_public` is set. A refusal is a 401 [`Rejection::Admin`]. Keys are compared in
//! constant time, through their digests.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::Gateway;
use super::rejection::Rejection;
use crate::auth::{self, AuthError};

/// The dashboard's cookie.
pub(crate) const COOKIE: &str = "herald_dashboard";

/// Checks the admin key in `Authorization: Bearer`, or (when `cookie`) the dashboard's cookie.
pub(crate) fn check(gw: &Gateway, headers: &HeaderMap, cookie: bool) -> Result<(), Rejection> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if cookie
        && presented.is_none()
        && let Some(value) = cookie_of(headers)
    {
        let expected = cookie_value(gw.config.admin_key());
        return match same_secret(expected.as_bytes(), value.as_bytes()) {
            true => Ok(()),
            false => Err(Rejection::Admin { missing: false }),
        };
    }
    match auth::check_api_key(gw.config.admin_key(), presented) {
        Ok(()) => Ok(()),
        Err(AuthError::MissingAuthorization) => Err(Rejection::Admin { missing: true }),
        Err(_) => Err(Rejection::Admin { missing: false }),
    }
}

/// The dashboard cookie's value for `key`: a digest of it, so that the cookie never holds the
/// key (which may be the API key) and opens only the dashboard.
pub(crate) fn cookie_value(key: &str) -> String {
    let d = Sha256::new()
        .chain_update(b"herald dashboard cookie\0")
        .chain_update(key.as_bytes())
        .finalize();
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of the dashboard's cookie among the request's `Cookie` headers.
fn cookie_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (name, value) = c.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// Whether two secrets are equal, in a time that depends on neither.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The node's metrics in the Prometheus text format, the gauges read at render time set first.
/// `full`, for a scrape: the open file descriptors counted (a long directory with many sockets)
/// and the connections' own traffic counts summed (a pass over every connection); the
/// dashboard's sampler, every second, charts neither and skips both.
pub(crate) fn render(gw: &Gateway, full: bool) -> String {
    gw.metrics.events_pending.set(gw.events.pending() as f64);
    if full {
        // Connections count their own writes and bytes; the node's counters take the sum.
        let t = gw.hub.traffic();
        gw.metrics.writes.absolute(t.writes);
        gw.metrics.bytes_out.absolute(t.bytes_out);
        gw.metrics.bytes_in.absolute(t.bytes_in);
    }
    gw.metrics.render(full)
}

/// `GET /metrics`: the Prometheus text format, with the admin key unless `metrics_public`.
pub async fn metrics(State(gw): State<Arc<Gateway>>, req: Request) -> Result<Response, Rejection> {
    if !gw.config.admin.metrics_public {
        check(&gw, req.headers(), false)?;
    }
    let body = render(&gw, true);
    let kind = "text/plain; version=0.0.4; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, kind)], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_is_not_the_key() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; herald_dashboard=abc ; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_of(&h), Some("abc"));
        let v = cookie_value("the-admin-key-0123456789");
        assert_eq!(v.len(), 64);
        assert!(!v.contains("the-admin-key"));
        assert!(same_secret(
            v.as_bytes(),
            cookie_value("the-admin-key-0123456789").as_bytes()
        ));
        assert!(!same_secret(v.as_bytes(), b"abc"));
    }
}
