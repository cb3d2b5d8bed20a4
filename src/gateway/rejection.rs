//! Everything the HTTP side can refuse, in one enum, each with its status, stable `error` code and
//! message: `{"error": "<code>", "message": "..."}`. Refusals of an upgrade happen here, before the
//! 101, so a client sees an HTTP status rather than a socket that opens and closes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::bus::BusError;
use crate::protocol::codec::SUBPROTOCOLS;
use crate::protocol::topic::TopicError;

/// A refused HTTP request or upgrade.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Authentication failed (JWT, API key or ticket).
    #[error(transparent)]
    Auth(#[from] AuthError),
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
    /// Over the connection limit.
    #[error("connection limit ({0}) reached; try again later or another node")]
    TooManyConnections(usize),
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

impl Rejection {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Auth(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            Rejection::Draining | Rejection::Unavailable(_) | Rejection::Events(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rejection::NotWebSocket(_)
            | Rejection::UnsupportedSubprotocol
            | Rejection::BadTopic(_)
            | Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::OriginNotAllowed(_) | Rejection::Forbidden(_) => StatusCode::FORBIDDEN,
            Rejection::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::TooManyConnections(_) | Rejection::TooManyUserConnections(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
        }
    }

    /// The stable `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Auth(e) => e.code(),
            Rejection::Draining => "draining",
            Rejection::NotWebSocket(_) => "not_websocket",
            Rejection::OriginNotAllowed(_) => "origin_not_allowed",
            Rejection::UnsupportedSubprotocol => "unsupported_subprotocol",
            Rejection::BadTopic(_) => "bad_topic",
            Rejection::BadRequest(_) => "bad_request",
            Rejection::Forbidden(_) => "forbidden",
            Rejection::PayloadTooLarge(_) => "payload_too_large",
            Rejection::TooManyConnections(_) | Rejection::TooManyUserConnections(_) => {
                "too_many_connections"
            }
            Rejection::Unavailable(_) | Rejection::Events(_) => "unavailable",
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        crate::metrics::rejected();
        let mut body = serde_json::json!({"error": self.code(), "message": self.to_string()});
        if matches!(self, Rejection::UnsupportedSubprotocol) {
            body["supported"] = serde_json::json!(SUBPROTOCOLS);
        }
        let mut r = (self.status(), axum::Json(body)).into_response();
        if matches!(self, Rejection::NotWebSocket(_)) {
            r.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        r
    }
}
