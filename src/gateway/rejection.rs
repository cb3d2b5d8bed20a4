//! Everything the HTTP side can refuse, in one enum, each with its status, stable `error` code and
//! message: `{"error": "<code>", "message": "..."}`. Refusals of an upgrade happen here, before the
//! 101, so a client sees an HTTP status rather than a socket that opens and closes.
//!
//! And the log of refusals ([`RefusalLog`]): one `info` line per refused upgrade or refused
//! connection, with its `error` code and the client address, at most
//! [`REFUSAL_LINES_PER_SEC`] lines a second so that a flood cannot fill the logs; the refusals
//! past the cap are counted, and the next line logged says how many were left out. (Refused
//! API requests, such as a bad JWT at `POST /v1/tickets`, are answered but not logged.)

use std::net::IpAddr;
use std::time::Instant;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

use crate::auth::AuthError;
use crate::bus::BusError;
use crate::protocol::codec::SUBPROTOCOLS;
use crate::protocol::topic::TopicError;

use super::limits::Refusal;

/// A refused HTTP request or upgrade.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Authentication failed (JWT, API key or ticket).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// `/metrics` or the dashboard without the admin key (`missing`: no key at all).
    #[error("{}", admin_message(*.missing))]
    Admin {
        /// No key was presented.
        missing: bool,
    },
    /// The auth hook (`auth_service`) did not authenticate the upgrade.
    #[error(transparent)]
    Hook(#[from] super::auth_hook::HookError),
    /// The node is draining.
    #[error("this node is shutting down; connect to another node")]
    Draining,
    /// Not a valid WebSocket upgrade.
    #[error("not a WebSocket upgrade: {0}")]
    NotWebSocket(&'static str),
    /// The `Origin` is not in the allowlist.
    #[error("origin {0:?} is not allowed (configure allowed_origins / HERALD_ALLOWED_ORIGINS)")]
    OriginNotAllowed(String),
    /// Only subprotocols we do not speak were offered.
    #[error("none of the offered subprotocols is supported")]
    UnsupportedSubprotocol,
    /// A malformed topic.
    #[error("bad topic: {0}")]
    BadTopic(#[source] TopicError),
    /// A malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// Outside the grants.
    #[error("{0}")]
    Forbidden(String),
    /// A body over the limit.
    #[error("body is over the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// The node holds `max_connections` TCP connections.
    #[error("this node holds its most connections ({0}); try again later or another node")]
    TooManyConnections(usize),
    /// The client address holds `max_connections_per_ip` connections.
    #[error("this address already has {0} connections open (max_connections_per_ip)")]
    TooManyAddressConnections(usize),
    /// The client address or user is over a rate (new connections, tickets).
    #[error("{what}: too many in too short a time; retry after {retry_after} s")]
    TooFast {
        /// What was counted.
        what: &'static str,
        /// Seconds until a retry may succeed (`Retry-After`).
        retry_after: u64,
    },
    /// The request body did not arrive in time.
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    /// The user holds the most connections allowed, across the cluster.
    #[error(
        "this user already has {0} connections open (max_connections_per_user); close one first"
    )]
    TooManyUserConnections(usize),
    /// The bus is down.
    #[error(transparent)]
    Unavailable(#[from] BusError),
    /// A lifecycle event could not be recorded, so what it records may not happen.
    #[error(transparent)]
    Events(#[from] crate::lifecycle::LifecycleError),
}

/// What [`Rejection::Admin`] says.
fn admin_message(missing: bool) -> &'static str {
    if missing {
        "this route needs the admin key (admin_key, or the API key when it is unset): send \
         `Authorization: Bearer <key>`, or open /dashboard?key=<key> once in a browser"
    } else {
        "the admin key is not valid"
    }
}

impl Rejection {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Auth(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            Rejection::Hook(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            Rejection::Admin { .. } => StatusCode::UNAUTHORIZED,
            Rejection::Draining
            | Rejection::Unavailable(_)
            | Rejection::Events(_)
            | Rejection::TooManyConnections(_) => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::NotWebSocket(_)
            | Rejection::UnsupportedSubprotocol
            | Rejection::BadTopic(_)
            | Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::OriginNotAllowed(_) | Rejection::Forbidden(_) => StatusCode::FORBIDDEN,
            Rejection::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::TooManyUserConnections(_)
            | Rejection::TooManyAddressConnections(_)
            | Rejection::TooFast { .. } => StatusCode::TOO_MANY_REQUESTS,
            Rejection::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The stable `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Auth(e) => e.code(),
            Rejection::Hook(e) => e.code(),
            Rejection::Admin { missing: true } => "missing_authorization",
            Rejection::Admin { missing: false } => "invalid_admin_key",
            Rejection::Draining => "draining",
            Rejection::NotWebSocket(_) => "not_websocket",
            Rejection::OriginNotAllowed(_) => "origin_not_allowed",
            Rejection::UnsupportedSubprotocol => "unsupported_subprotocol",
            Rejection::BadTopic(_) => "bad_topic",
            Rejection::BadRequest(_) => "bad_request",
            Rejection::Forbidden(_) => "forbidden",
            Rejection::PayloadTooLarge(_) => "payload_too_large",
            Rejection::TooManyConnections(_)
            | Rejection::TooManyUserConnections(_)
            | Rejection::TooManyAddressConnections(_) => "too_many_connections",
            Rejection::TooFast { .. } => "rate_limited",
            Rejection::BodyTimeout(_) => "timeout",
            Rejection::Unavailable(_) | Rejection::Events(_) => "unavailable",
        }
    }

    /// Seconds to send in `Retry-After`, for refusals that pass with time.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Rejection::TooFast { retry_after, .. } => Some(*retry_after),
            Rejection::TooManyConnections(_) | Rejection::TooManyAddressConnections(_) => Some(5),
            _ => None,
        }
    }

    fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({"error": self.code(), "message": self.to_string()});
        if matches!(self, Rejection::UnsupportedSubprotocol) {
            body["supported"] = serde_json::json!(SUBPROTOCOLS);
        }
        body
    }

    /// The whole HTTP/1.1 response, for a connection refused before hyper serves it.
    pub fn raw_response(&self) -> Vec<u8> {
        let body = self.body().to_string();
        let status = self.status();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if let Some(s) = self.retry_after() {
            out.push_str(&format!("retry-after: {s}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&body);
        out.into_bytes()
    }
}

impl From<Refusal> for Rejection {
    fn from(r: Refusal) -> Rejection {
        match r {
            Refusal::NodeFull(n) => Rejection::TooManyConnections(n),
            Refusal::AddressFull(n) => Rejection::TooManyAddressConnections(n),
            Refusal::TooFast(s) => Rejection::TooFast {
                what: "new connections from this address",
                retry_after: s,
            },
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut r = (self.status(), axum::Json(self.body())).into_response();
        if matches!(self, Rejection::NotWebSocket(_)) {
            r.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        if let Some(s) = self.retry_after() {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if matches!(self, Rejection::Admin { .. }) {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"herald admin\""),
            );
        }
        r
    }
}

/// Most refusal lines logged in one second, all kinds together.
pub(crate) const REFUSAL_LINES_PER_SEC: u32 = 20;

/// The rate-limited log of refused upgrades and connections (see the module's comment).
pub(crate) struct RefusalLog {
    started: Instant,
    /// A few integers, locked for a few instructions per refusal, never across `.await`.
    state: Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    /// The second (since `started`) the lines are being counted in.
    second: u64,
    /// Lines logged in that second.
    lines: u32,
    /// Refusals not logged since the last line.
    left_out: u64,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog {
            started: Instant::now(),
            state: Mutex::new(LogState::default()),
        }
    }
}

impl RefusalLog {
    /// Logs that `what` ("upgrade", "connection") from `client` was refused with `r`, unless
    /// this second's lines are used up (then it is only counted).
    pub(crate) fn refused(&self, what: &'static str, client: IpAddr, r: &Rejection) {
        let Some(left_out) = self.admit(self.started.elapsed().as_secs()) else {
            return;
        };
        let (status, error) = (r.status().as_u16(), r.code());
        if left_out == 0 {
            tracing::info!(%client, status, error, "{what} refused: {r}");
        } else {
            tracing::info!(
                %client,
                status,
                error,
                left_out,
                "{what} refused: {r} ({left_out} refusals before this one were not logged: \
                 over {REFUSAL_LINES_PER_SEC} lines a second)"
            );
        }
    }

    /// Counts one refusal in second `now`: `Some(refusals left out before it)` when it may be
    /// logged, `None` when it may not.
    fn admit(&self, now: u64) -> Option<u64> {
        let mut st = self.state.lock();
        if st.second != now {
            st.second = now;
            st.lines = 0;
        }
        if st.lines >= REFUSAL_LINES_PER_SEC {
            st.left_out += 1;
            return None;
        }
        st.lines += 1;
        Some(std::mem::take(&mut st.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_takes_a_few_lines_a_second_and_counts_the_rest() {
        let log = RefusalLog::default();
        for _ in 0..REFUSAL_LINES_PER_SEC {
            assert_eq!(log.admit(7), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(log.admit(7), None);
        }
        // The next second: the first line tells how many were left out, then none again.
        assert_eq!(log.admit(8), Some(5));
        assert_eq!(log.admit(8), Some(0));
    }
}
