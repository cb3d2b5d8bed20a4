//! Close codes: the one table of why the server ends a WebSocket (RFC 6455 section 7.4 and the
//! private range 4000-4999). `proto/README.md` lists the same table.

/// 1005: what a library reports when a close frame carried no code (never sent on the wire).
pub const NO_STATUS: u16 = 1005;
/// 1006: what a library reports when a connection ended without a close frame (never sent on
/// the wire): the socket broke, timed out or was reset.
pub const ABNORMAL: u16 = 1006;

/// A close code the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: normal closure (the client asked to close).
    Normal,
    /// 1002: the client broke RFC 6455 (unmasked frame, reserved bits, bad control frame, ...).
    ProtocolError,
    /// 1007: a text frame that is not UTF-8.
    InvalidPayload,
    /// 1009: a message over the size limit.
    TooBig,
    /// 1011: the server hit an internal error.
    Internal,
    /// 1012: the node is restarting or draining: reconnect (to another node) with `since`.
    Restarting,
    /// 4000: no pong or other traffic for two ping intervals.
    HeartbeatTimeout,
    /// 4001: the connection's identity expired (the JWT's `exp`, or the auth hook's
    /// `expires_at`, plus the leeway) and was not refreshed in band: get a fresh ticket and
    /// reconnect with `since`.
    SessionExpired,
    /// 4003: a backend revoked the connection (`POST /v1/disconnect`): do not reconnect with
    /// the same credentials.
    Disconnected,
    /// 4008: the client read too slowly and its outbox filled: reconnect with `since`.
    SlowConsumer,
    /// 4029: the client kept sending over its frame rate after `rate_limited` errors.
    RateLimited,
}

impl CloseCode {
    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::Restarting => 1012,
            CloseCode::HeartbeatTimeout => 4000,
            CloseCode::SessionExpired => 4001,
            CloseCode::Disconnected => 4003,
            CloseCode::SlowConsumer => 4008,
            CloseCode::RateLimited => 4029,
        }
    }

    /// The reason text sent with the code (at most 123 bytes by RFC 6455).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "bye",
            CloseCode::ProtocolError => "websocket protocol error",
            CloseCode::InvalidPayload => "text frame is not valid UTF-8",
            CloseCode::TooBig => "message too big",
            CloseCode::Internal => "internal error",
            CloseCode::Restarting => "server restarting: reconnect with since",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::SessionExpired => {
                "session_expired: get a fresh ticket and reconnect with since"
            }
            CloseCode::Disconnected => "disconnected: do not reconnect with the same credentials",
            CloseCode::SlowConsumer => "slow consumer: reconnect with since",
            CloseCode::RateLimited => "rate limited",
        }
    }
}
