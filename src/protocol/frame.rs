//! Client requests (decoded from a generic map, so every malformed field gets a precise
//! error) and the server frames as a client reads them ([`ServerFrame`], used by the CLI,
//! the tests and any Rust client).

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error_code::ErrorCode;
use super::topic::{self, Topic};

/// Largest request id: JavaScript's largest safe integer, so every client can hold it.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// Longest epoch a client may send back (epochs are short; this only bounds memory).
pub const MAX_EPOCH: usize = 255;

/// A point in a topic's history: the last offset a client saw in an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The offset (0 means "before the first message").
    pub offset: u64,
    /// The epoch the offset belongs to.
    pub epoch: Arc<str>,
}

/// A request from a client, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `{"op":"sub","id":1,"topic":"news","since":{"offset":41,"epoch":"e1"}}`
    Sub {
        /// Request id.
        id: u64,
        /// The topic.
        topic: Topic,
        /// Resume after this position.
        since: Option<Position>,
    },
    /// `{"op":"unsub","id":2,"topic":"news"}`
    Unsub {
        /// Request id.
        id: u64,
        /// The topic.
        topic: Topic,
    },
    /// `{"op":"pub","id":3,"topic":"chat.room1","data":{...}}`
    Pub {
        /// Request id.
        id: u64,
        /// The topic.
        topic: Topic,
        /// The payload as compact JSON text.
        data: Bytes,
    },
    /// `{"op":"presence","id":5,"topic":"room"}`: who is subscribed, across the cluster.
    Presence {
        /// Request id.
        id: u64,
        /// The topic.
        topic: Topic,
    },
    /// `{"op":"send","id":4,"to":"orders","data":{...}}`
    Send {
        /// Request id.
        id: u64,
        /// The service name.
        to: String,
        /// The payload as compact JSON text.
        data: Bytes,
    },
    /// `{"op":"refresh","id":6,"ticket":"..."}`: a fresh ticket of the same user replaces the
    /// connection's grants and expiry.
    Refresh {
        /// Request id.
        id: u64,
        /// The ticket, as `POST /v1/tickets` returned it (opaque here; redeemed by the gateway).
        ticket: Secret,
    },
}

/// A credential a client sent (a ticket): used as the text inside, never shown by `Debug`, so a
/// request printed for debugging cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Request {
    /// The request's id.
    pub fn id(&self) -> u64 {
        match self {
            Request::Sub { id, .. }
            | Request::Unsub { id, .. }
            | Request::Pub { id, .. }
            | Request::Presence { id, .. }
            | Request::Send { id, .. }
            | Request::Refresh { id, .. } => *id,
        }
    }
}

/// A request that could not be decoded: answered with an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct RequestError {
    /// The request's id when it had a valid one.
    pub id: Option<u64>,
    /// `bad_frame` or `bad_request`.
    pub code: ErrorCode,
    /// What was wrong, for the developer.
    pub message: String,
}

impl RequestError {
    pub(crate) fn bad_frame(message: impl Into<String>) -> RequestError {
        RequestError {
            id: None,
            code: ErrorCode::BadFrame,
            message: message.into(),
        }
    }

    fn bad_request(id: Option<u64>, message: impl Into<String>) -> RequestError {
        RequestError {
            id,
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

/// Validates a decoded frame (a JSON value, from either codec) as a request.
pub fn request_from_value(value: Value) -> Result<Request, RequestError> {
    let Value::Object(mut map) = value else {
        return Err(RequestError::bad_request(None, "a frame must be an object"));
    };
    let id = match map.get("id") {
        None => return Err(RequestError::bad_request(None, "missing `id`")),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_ID).contains(&n) => n,
            _ => {
                return Err(RequestError::bad_request(
                    None,
                    "`id` must be a positive integer (1 to 2^53-1)",
                ));
            }
        },
    };
    let bad = |m: String| RequestError::bad_request(Some(id), m);
    let op = match map.get("op") {
        None => return Err(bad("missing `op`".into())),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad("`op` must be a string".into())),
    };
    match op.as_str() {
        "sub" => {
            let topic = take_topic(&map, id)?;
            let since = match map.get("since") {
                None => None,
                Some(v) => Some(parse_since(v).map_err(bad)?),
            };
            Ok(Request::Sub { id, topic, since })
        }
        "unsub" => Ok(Request::Unsub {
            id,
            topic: take_topic(&map, id)?,
        }),
        "presence" => Ok(Request::Presence {
            id,
            topic: take_topic(&map, id)?,
        }),
        "pub" => {
            let topic = take_topic(&map, id)?;
            let data = take_data(&mut map, id)?;
            Ok(Request::Pub { id, topic, data })
        }
        "send" => {
            let to = match map.get("to") {
                None => return Err(bad("missing `to` (the service name)".into())),
                Some(Value::String(s)) => Topic::parse(s)
                    .map_err(|e| bad(format!("bad service name in `to`: {e}")))?
                    .as_str()
                    .to_owned(),
                Some(_) => return Err(bad("`to` must be a string".into())),
            };
            let data = take_data(&mut map, id)?;
            Ok(Request::Send { id, to, data })
        }
        "refresh" => match map.remove("ticket") {
            None => Err(bad(
                "missing `ticket` (a fresh one from POST /v1/tickets)".into()
            )),
            Some(Value::String(ticket)) if !ticket.is_empty() => Ok(Request::Refresh {
                id,
                ticket: Secret(ticket),
            }),
            Some(_) => Err(bad("`ticket` must be a non-empty string".into())),
        },
        other => Err(bad(format!(
            "unknown op {:?} (expected sub, unsub, pub, send, presence or refresh)",
            truncate(other)
        ))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

fn take_topic(map: &Map<String, Value>, id: u64) -> Result<Topic, RequestError> {
    let bad = |m: String| RequestError::bad_request(Some(id), m);
    match map.get("topic") {
        None => Err(bad("missing `topic`".into())),
        Some(Value::String(s)) => {
            if topic::has_wildcard(s) {
                return Err(bad(format!(
                    "{:?} is a pattern; subscribe to concrete topics (patterns belong in grants)",
                    truncate(s)
                )));
            }
            Topic::parse(s).map_err(|e| bad(format!("bad topic: {e}")))
        }
        Some(_) => Err(bad("`topic` must be a string".into())),
    }
}

fn take_data(map: &mut Map<String, Value>, id: u64) -> Result<Bytes, RequestError> {
    match map.remove("data") {
        None => Err(RequestError::bad_request(Some(id), "missing `data`")),
        Some(v) => {
            let json = serde_json::to_vec(&v).map_err(|e| {
                RequestError::bad_request(Some(id), format!("`data` cannot be JSON: {e}"))
            })?;
            check_nesting(&json).map_err(|e| RequestError::bad_request(Some(id), e))?;
            Ok(Bytes::from(json))
        }
    }
}

/// Deepest nesting of arrays and objects a payload may have: well inside what every codec reads
/// back (serde_json stops at 128, and a frame adds its own level), so that no subscriber ever
/// gets a payload it cannot decode.
pub const MAX_NESTING: usize = 100;

/// Refuses JSON text nested deeper than [`MAX_NESTING`] (a single pass over the bytes; the text
/// is assumed to be JSON otherwise).
pub fn check_nesting(json: &[u8]) -> Result<(), String> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!(
                        "`data` is nested deeper than {MAX_NESTING} arrays and objects"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn parse_since(v: &Value) -> Result<Position, String> {
    let Value::Object(m) = v else {
        return Err("`since` must be an object {\"offset\": N, \"epoch\": \"...\"}".into());
    };
    let offset = match m.get("offset") {
        None => return Err("`since` is missing `offset`".into()),
        Some(o) => o
            .as_u64()
            .ok_or("`since.offset` must be a non-negative integer")?,
    };
    let epoch = match m.get("epoch") {
        None => return Err("`since` is missing `epoch`".into()),
        Some(Value::String(e)) if e.len() <= MAX_EPOCH => Arc::from(e.as_str()),
        Some(_) => {
            return Err(format!(
                "`since.epoch` must be a string (at most {MAX_EPOCH} bytes)"
            ));
        }
    };
    Ok(Position { offset, epoch })
}

/// One connection subscribed to a presence topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Member {
    /// The user (the JWT's `sub`).
    pub user: String,
    /// The connection (as in its `welcome`).
    pub conn: String,
}

/// A server frame as a client decodes it.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ServerFrame {
    /// First frame on every connection.
    Welcome {
        /// Connection id.
        conn: String,
        /// Node id.
        node: String,
        /// The user of the ticket.
        user: String,
        /// Heartbeat interval, seconds.
        ping: u64,
        /// When the connection's identity expires (unix seconds); absent when it never does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// A request succeeded.
    Ok {
        /// The request's id.
        id: u64,
        /// `sub`: the topic's latest offset; `pub`: the message's offset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// The topic's epoch (`sub`, `pub`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// Only for a `sub` with `since`: whether the missed messages follow.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Only for `presence`: who is subscribed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        presence: Option<Vec<Member>>,
        /// Only for `refresh`: when the new identity expires (unix seconds); absent when it
        /// never does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// A request (or the connection) failed.
    Error {
        /// The failed request's id; absent for connection-level problems.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The error code.
        code: String,
        /// What went wrong.
        message: String,
        /// The backend's HTTP status, for `upstream_error`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
    },
    /// A published message.
    Msg {
        /// Its topic.
        topic: String,
        /// Its offset.
        offset: u64,
        /// The topic's epoch.
        epoch: String,
        /// The payload.
        data: Value,
    },
    /// A backend's answer to `send`.
    Reply {
        /// The `send` request's id.
        id: u64,
        /// The answer.
        data: Value,
    },
    /// Someone subscribed to a presence topic.
    Join {
        /// The topic.
        topic: String,
        /// Who.
        user: String,
        /// Their connection.
        conn: String,
    },
    /// Someone left a presence topic (unsubscribed, disconnected, or their node died).
    Leave {
        /// The topic.
        topic: String,
        /// Who.
        user: String,
        /// Their connection.
        conn: String,
    },
    /// A message a backend sent to this user.
    Direct {
        /// The backend that sent it, when it named itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// The payload.
        data: Value,
    },
    /// The server ended one of the connection's subscriptions.
    Unsubscribed {
        /// The topic.
        topic: String,
        /// Why: `forbidden` (the refreshed grants no longer allow it).
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn nesting_up_to_the_limit_passes_and_deeper_is_refused() {
        assert!(check_nesting(nested(MAX_NESTING).as_bytes()).is_ok());
        assert!(check_nesting(nested(MAX_NESTING + 1).as_bytes()).is_err());
        // What passes, serde_json reads back inside a frame.
        let frame = format!("{{\"op\":\"msg\",\"data\":{}}}", nested(MAX_NESTING));
        assert!(serde_json::from_str::<Value>(&frame).is_ok());
        // Brackets inside strings do not count, escaped quotes included.
        let s = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert!(check_nesting(s.as_bytes()).is_ok());
    }
}
