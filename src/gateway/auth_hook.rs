//! The auth hook: a WebSocket upgrade without `?ticket=` is authenticated by the backend named by
//! `auth_service`, which knows the app's session cookies. Herald POSTs
//! `{endpoint}/herald/connect` with the upgrade's headers that the service allowlists
//! (`forward_headers`, e.g. `cookie`) and a JSON body `{"address", "path", "origin", "node"}`;
//! the service answers `200 {"sub", "grants", "expires_at"?}` or 401/403.
//!
//! The Origin allowlist has been checked before this runs (a cookie is sent by the browser
//! whatever page opened the socket: without the check any site could open a socket as the
//! user). Policy on failure: 401 and 403 from the service reach the client as 401
//! `session_rejected` and 403 `forbidden`; a service that is down, slow, over its concurrency,
//! or answers anything else gets 503 `unavailable`, never an open door. The service's answer is
//! bounded by `max_message_bytes` and its timeout; nothing it says is echoed to the client.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use crate::auth::{Grants, Identity, RawGrants};
use crate::proxy::{Proxy, ProxyError};

/// The path under the service's endpoint.
pub(crate) const CONNECT_PATH: &str = "/herald/connect";

/// Why the hook did not yield an identity.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The service answered 401: no valid session.
    #[error(
        "the auth service did not accept this request's session (401); sign in again, or \
         connect with a ticket"
    )]
    Unauthenticated,
    /// The service answered 403: a session, not allowed to connect.
    #[error("the auth service refused this connection (403)")]
    Forbidden,
    /// The service could not answer (down, slow, overloaded, another status).
    #[error("the auth service is unavailable; try again shortly")]
    Unavailable(#[source] ProxyError),
    /// The service answered 200 with something that is not an identity.
    #[error("the auth service's answer is not an identity: {0}")]
    BadAnswer(&'static str),
}

/// What the hook sends about the request.
#[derive(serde::Serialize)]
struct Ask<'a> {
    address: String,
    path: &'a str,
    origin: Option<&'a str>,
    node: &'a str,
}

/// The service's 200 answer.
#[derive(Deserialize)]
struct Answer {
    sub: String,
    grants: RawGrants,
    #[serde(default)]
    expires_at: Option<u64>,
}

/// The request being authenticated.
pub(crate) struct Request<'a> {
    pub(crate) address: IpAddr,
    pub(crate) path: &'a str,
    pub(crate) origin: Option<&'a str>,
    pub(crate) node: &'a str,
    /// The upgrade's headers that some service forwards (the proxy keeps this service's).
    pub(crate) headers: &'a [(String, String)],
}

/// Asks `service` who the client of `req` is; `now` is the unix time in seconds.
pub(crate) async fn authenticate(
    proxy: &Proxy,
    service: &str,
    req: Request<'_>,
    now: u64,
) -> Result<Identity, HookError> {
    let address = req.address.to_string();
    let body = serde_json::to_vec(&Ask {
        address: address.clone(),
        path: req.path,
        origin: req.origin,
        node: req.node,
    })
    .map_err(|_| HookError::BadAnswer("the request could not be encoded"))?;
    let answer = proxy
        .post_to(
            service,
            CONNECT_PATH,
            &address,
            req.headers,
            Bytes::from(body),
        )
        .await
        .map_err(|e| match e.status() {
            Some(401) => HookError::Unauthenticated,
            Some(403) => HookError::Forbidden,
            _ => HookError::Unavailable(e),
        })?;
    identity(&answer, now)
}

/// Reads the service's 200 answer.
fn identity(answer: &[u8], now: u64) -> Result<Identity, HookError> {
    let a: Answer = serde_json::from_slice(answer).map_err(|_| {
        HookError::BadAnswer(
            "expected {\"sub\": \"...\", \"grants\": {...}, \"expires_at\": <unix seconds>}",
        )
    })?;
    if a.sub.is_empty() || a.sub.len() > 255 {
        return Err(HookError::BadAnswer("`sub` must be 1 to 255 bytes"));
    }
    let grants =
        Grants::from_raw(&a.grants).map_err(|_| HookError::BadAnswer("`grants` do not parse"))?;
    let expires_at = a.expires_at.unwrap_or(u64::MAX);
    if expires_at <= now {
        return Err(HookError::Unauthenticated);
    }
    Ok(Identity {
        user: a.sub.into(),
        grants: Arc::new(grants),
        expires_at,
    })
}

impl HookError {
    /// The HTTP status for the client.
    pub(crate) fn status(&self) -> u16 {
        match self {
            HookError::Unauthenticated => 401,
            HookError::Forbidden => 403,
            HookError::Unavailable(_) | HookError::BadAnswer(_) => 503,
        }
    }

    /// The `error` code for the client.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            HookError::Unauthenticated => "session_rejected",
            HookError::Forbidden => "forbidden",
            HookError::Unavailable(_) | HookError::BadAnswer(_) => "unavailable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_an_identity_with_its_expiry_or_none() {
        let id = identity(
            br#"{"sub": "ann", "grants": {"subscribe": ["news.>"]}, "expires_at": 2000}"#,
            1000,
        )
        .unwrap();
        assert_eq!((&*id.user, id.expires_at), ("ann", 2000));
        assert!(id.grants.can_subscribe("news.eu"));
        let id = identity(br#"{"sub": "ann", "grants": {}}"#, 1000).unwrap();
        assert_eq!(id.expires_at, u64::MAX);
    }

    #[test]
    fn answers_that_are_not_identities_are_refused() {
        for bad in [
            &br#"{"grants": {}}"#[..],
            br#"{"sub": "", "grants": {}}"#,
            br#"{"sub": "a"}"#,
            br#"{"sub": "a", "grants": {"subscribe": ["bad pattern"]}}"#,
            br#"{"sub": "a", "grants": {}, "expires_at": "soon"}"#,
            b"null",
            b"<html>",
        ] {
            let e = identity(bad, 1000).unwrap_err();
            assert_eq!(e.status(), 503, "{}", String::from_utf8_lossy(bad));
        }
        // An expiry in the past is no session.
        let e = identity(br#"{"sub": "a", "grants": {}, "expires_at": 999}"#, 1000).unwrap_err();
        assert_eq!((e.status(), e.code()), (401, "session_rejected"));
    }
}
