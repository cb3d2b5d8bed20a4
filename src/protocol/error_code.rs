//! The `code` of an `error` frame: a closed set, each with its meaning in `proto/README.md`.

use serde::Serialize;

/// Why a request (or the connection) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not valid JSON/MessagePack, or the wrong frame type for the subprotocol.
    BadFrame,
    /// Unknown `op`, missing or ill-typed field, malformed topic, pattern in `sub`, bad `since`.
    BadRequest,
    /// Outside the connection's grants, or over a per-connection limit.
    Forbidden,
    /// `sub` to a topic this connection is already subscribed to.
    AlreadySubscribed,
    /// `unsub` of a topic this connection is not subscribed to.
    NotSubscribed,
    /// Over the per-connection frame rate: the frame was not processed.
    RateLimited,
    /// `send` to a service that no config names.
    UnknownService,
    /// The backend did not answer in time.
    UpstreamTimeout,
    /// The backend answered with a non-2xx status.
    UpstreamError,
    /// No healthy endpoint for the service.
    UpstreamUnavailable,
    /// Over a concurrency limit.
    Overloaded,
    /// The bus is down.
    Unavailable,
    /// A `refresh` ticket that is malformed or unknown (as the upgrade's 401 `invalid_ticket`).
    InvalidTicket,
    /// A `refresh` ticket that was already redeemed (as the upgrade's 401 `ticket_used`).
    TicketUsed,
    /// A `refresh` ticket past its lifetime (as the upgrade's 401 `ticket_expired`).
    TicketExpired,
    /// A bug or an unexpected failure on the server.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UnknownService => "unknown_service",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::InvalidTicket => "invalid_ticket",
            ErrorCode::TicketUsed => "ticket_used",
            ErrorCode::TicketExpired => "ticket_expired",
            ErrorCode::Internal => "internal",
        }
    }
}
