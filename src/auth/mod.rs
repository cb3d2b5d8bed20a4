//! Who a caller is and what it may do: JWT verification ([`jwt`]), one-time connection tickets
//! ([`ticket`]), topic and service grants ([`grants`]), and the server API key check.
//!
//! Strings in, errors out: this module knows no HTTP or WebSocket types. The gateway hands it the
//! raw `Authorization` header value or `?ticket=` parameter and maps an [`AuthError`] to a response
//! with [`AuthError::status`] and [`AuthError::code`]. No message ever echoes a secret, a token or a
//! ticket.

pub mod grants;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod ticket;

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::protocol::ErrorCode;
use crate::protocol::topic::TopicError;

pub use grants::{Grants, RawGrants};
pub use jwks::Jwks;
pub use jwt::{JwtVerifier, Signer, mint_token};
pub use keys::KeyError;
pub use ticket::{MemoryTicketStore, TicketKey, TicketStore, Tickets};

/// An authenticated user, as established from a verified JWT and carried by its ticket.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The JWT's `sub`.
    pub user: Arc<str>,
    /// What the user may subscribe to, publish to and send to.
    pub grants: Arc<Grants>,
    /// The JWT's `exp`, unix seconds.
    pub expires_at: u64,
}

/// Longest pattern excerpt quoted in an error message.
const QUOTE_MAX: usize = 80;

/// Why a request could not be authenticated or authorised.
///
/// Every variant maps to one public error code ([`AuthError::code`]) and HTTP status
/// ([`AuthError::status`]). Messages are written for the developer integrating with Herald.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("the request has no Authorization header; send `Authorization: Bearer <token>`")]
    MissingAuthorization,
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("the Authorization header is not of the form `Bearer <token>`")]
    BadAuthorization,
    /// A JWT that is malformed, badly signed, uses another algorithm, or has no usable `sub`.
    #[error("the token is not valid: {reason}")]
    InvalidToken {
        /// What is wrong, in words (never the token itself).
        reason: &'static str,
        /// The JWT library's error, when there is one.
        #[source]
        source: Option<jsonwebtoken::errors::Error>,
    },
    /// A JWT whose `exp` has passed (beyond the configured leeway).
    #[error("the token has expired (its `exp` is in the past); get a fresh token from its issuer")]
    TokenExpired(#[source] jsonwebtoken::errors::Error),
    /// A JWT whose `nbf` is still in the future (beyond the configured leeway).
    #[error(
        "the token is not valid yet (its `nbf` is in the future); check the issuer's clock or wait"
    )]
    TokenNotYetValid(#[source] jsonwebtoken::errors::Error),
    /// A JWT without a `grants` claim.
    #[error(
        "the token has no `grants` claim; add one such as \
         {{\"subscribe\": [\"news.>\"], \"publish\": [], \"send\": []}}"
    )]
    MissingGrants,
    /// A `grants` claim that is not an object of three optional lists of strings.
    #[error(
        "the token's `grants` claim must be an object with optional `subscribe`, `publish` and \
         `send` lists of pattern strings, and nothing else"
    )]
    InvalidGrants(#[source] serde_json::Error),
    /// A grant pattern that does not parse.
    #[error("the token's `grants.{list}` holds {pattern:?}, which is not a valid pattern")]
    InvalidGrantPattern {
        /// `subscribe`, `publish` or `send`.
        list: &'static str,
        /// The pattern as written (shortened if very long).
        pattern: String,
        /// Why it does not parse.
        #[source]
        source: TopicError,
    },
    /// A server API key that does not match the configured one.
    #[error("the API key is not valid")]
    InvalidApiKey,
    /// A WebSocket upgrade without `?ticket=`.
    #[error(
        "the request has no ticket; get one from POST /v1/tickets and pass it as `?ticket=...`"
    )]
    MissingTicket,
    /// A ticket that is not 43 base64url characters.
    #[error(
        "the ticket is not valid: a ticket is 43 base64url characters, as POST /v1/tickets returns it"
    )]
    MalformedTicket,
    /// A well-formed ticket that this gateway never issued (or forgot long ago).
    #[error("the ticket is not valid: it is unknown; get a new one from POST /v1/tickets")]
    InvalidTicket,
    /// A ticket that was redeemed before: tickets are good for one connection.
    #[error(
        "the ticket was already used; tickets are good for one connection, get a new one from \
         POST /v1/tickets"
    )]
    TicketUsed,
    /// A ticket presented after its time to live.
    #[error("the ticket has expired; redeem tickets within seconds of getting them")]
    TicketExpired,
    /// A JWKS is configured and has not been fetched yet: no token that only its keys could
    /// verify is accepted (or refused as invalid) until it has.
    #[error(
        "the identity provider's keys (jwt_jwks_url) could not be fetched yet; try again shortly"
    )]
    KeysUnavailable,
    /// The ticket store could not be reached (e.g. Redis is down).
    #[error("the ticket store is unavailable; try again shortly")]
    StoreUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The operating system's random number generator failed.
    #[error("could not get random bytes from the operating system")]
    Random(#[source] getrandom::Error),
    /// A token could not be signed (only when minting).
    #[error("could not sign the token")]
    Signing(#[source] jsonwebtoken::errors::Error),
}

impl AuthError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::StoreUnavailable(_) | AuthError::KeysUnavailable => 503,
            AuthError::Random(_) | AuthError::Signing(_) => 500,
            _ => 401,
        }
    }

    /// The public error code (the `error` field of the JSON body).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingAuthorization => "missing_authorization",
            AuthError::BadAuthorization => "bad_authorization",
            AuthError::InvalidToken { .. } => "invalid_token",
            AuthError::TokenExpired(_) => "token_expired",
            AuthError::TokenNotYetValid(_) => "token_not_yet_valid",
            AuthError::MissingGrants => "missing_grants",
            AuthError::InvalidGrants(_) | AuthError::InvalidGrantPattern { .. } => "invalid_grants",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::MissingTicket => "missing_ticket",
            AuthError::MalformedTicket | AuthError::InvalidTicket => "invalid_ticket",
            AuthError::TicketUsed => "ticket_used",
            AuthError::TicketExpired => "ticket_expired",
            AuthError::StoreUnavailable(_) | AuthError::KeysUnavailable => "unavailable",
            AuthError::Random(_) | AuthError::Signing(_) => "internal",
        }
    }

    /// The `code` of the `error` frame that answers a `refresh` whose ticket was refused: the
    /// ticket codes are those of the upgrade's 401s.
    pub fn frame_code(&self) -> ErrorCode {
        match self {
            AuthError::MissingTicket | AuthError::MalformedTicket | AuthError::InvalidTicket => {
                ErrorCode::InvalidTicket
            }
            AuthError::TicketUsed => ErrorCode::TicketUsed,
            AuthError::TicketExpired => ErrorCode::TicketExpired,
            AuthError::StoreUnavailable(_) => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

/// Shortens `s` for quoting in an error message.
pub(crate) fn quote(s: &str) -> String {
    if s.chars().count() <= QUOTE_MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(QUOTE_MAX).collect();
        out.push('…');
        out
    }
}

/// Extracts the token from an `Authorization` header value: "Bearer <token>" (scheme
/// case-insensitive, one space or more).
///
/// Whitespace around the whole value is ignored; the token itself may not contain whitespace.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::MissingAuthorization)?.trim();
    let (scheme, rest) = value.split_once(' ').ok_or(AuthError::BadAuthorization)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::BadAuthorization);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || token.chars().any(char::is_whitespace) {
        return Err(AuthError::BadAuthorization);
    }
    Ok(token)
}

/// Constant-time comparison of a presented API key (from an Authorization Bearer header) with the
/// configured one.
///
/// Both keys are hashed first, so the comparison takes the same time whatever the lengths and
/// contents; an empty configured key matches nothing.
pub fn check_api_key(expected: &str, header: Option<&str>) -> Result<(), AuthError> {
    let presented = bearer(header)?;
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(presented.as_bytes());
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    if std::hint::black_box(diff) == 0 && !expected.is_empty() {
        Ok(())
    } else {
        Err(AuthError::InvalidApiKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_accepts_any_case_scheme_and_several_spaces() {
        assert_eq!(bearer(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(Some("bearer abc")).unwrap(), "abc");
        assert_eq!(
            bearer(Some("BEARER   abc.def-ghi_")).unwrap(),
            "abc.def-ghi_"
        );
        assert_eq!(bearer(Some("  Bearer abc  ")).unwrap(), "abc");
    }

    #[test]
    fn bearer_refuses_missing_header_as_missing_authorization() {
        let err = bearer(None).unwrap_err();
        assert_eq!(err.code(), "missing_authorization");
        assert_eq!(err.status(), 401);
    }

    #[test]
    fn bearer_refuses_anything_but_bearer_and_one_token() {
        for bad in [
            "",
            " ",
            "Bearer",
            "Bearer ",
            "Bearer    ",
            "Basic dXNlcjpwYXNz",
            "Bearerabc",
            "Token abc",
            "Bearer abc def",
            "Bearer\tabc",
            "abc",
        ] {
            let err = bearer(Some(bad)).unwrap_err();
            assert_eq!(err.code(), "bad_authorization", "{bad:?}");
        }
    }

    #[test]
    fn api_key_matches_only_the_exact_configured_key() {
        let key = "0123456789abcdef-key";
        assert!(check_api_key(key, Some("Bearer 0123456789abcdef-key")).is_ok());
        for bad in [
            "Bearer 0123456789abcdef-kez",
            "Bearer 0123456789abcdef-key0",
            "Bearer 0123456789abcdef-ke",
            "Bearer x",
        ] {
            assert_eq!(
                check_api_key(key, Some(bad)).unwrap_err().code(),
                "invalid_api_key"
            );
        }
        assert_eq!(
            check_api_key(key, None).unwrap_err().code(),
            "missing_authorization"
        );
        assert_eq!(
            check_api_key(key, Some(key)).unwrap_err().code(),
            "bad_authorization"
        );
    }

    #[test]
    fn an_empty_configured_api_key_matches_nothing() {
        assert_eq!(
            check_api_key("", Some("Bearer x")).unwrap_err().code(),
            "invalid_api_key"
        );
    }

    #[test]
    fn messages_never_echo_the_presented_key() {
        let err =
            check_api_key("right-key-0123456789", Some("Bearer wrong-key-secret")).unwrap_err();
        assert!(!err.to_string().contains("wrong-key-secret"));
    }

    #[test]
    fn every_client_error_is_401_and_server_faults_are_not() {
        let client = [
            AuthError::MissingAuthorization,
            AuthError::BadAuthorization,
            AuthError::MissingGrants,
            AuthError::InvalidApiKey,
            AuthError::MissingTicket,
            AuthError::MalformedTicket,
            AuthError::InvalidTicket,
            AuthError::TicketUsed,
            AuthError::TicketExpired,
        ];
        for err in client {
            assert_eq!(err.status(), 401, "{}", err.code());
        }
        let store = AuthError::StoreUnavailable("down".into());
        assert_eq!((store.status(), store.code()), (503, "unavailable"));
        let keys = AuthError::KeysUnavailable;
        assert_eq!((keys.status(), keys.code()), (503, "unavailable"));
    }

    #[test]
    fn a_refused_ticket_has_the_same_code_in_a_frame_as_at_the_upgrade() {
        for err in [
            AuthError::MalformedTicket,
            AuthError::InvalidTicket,
            AuthError::TicketUsed,
            AuthError::TicketExpired,
            AuthError::StoreUnavailable("down".into()),
        ] {
            assert_eq!(err.frame_code().as_str(), err.code());
        }
        assert_eq!(
            AuthError::MissingTicket.frame_code(),
            ErrorCode::InvalidTicket
        );
    }
}
