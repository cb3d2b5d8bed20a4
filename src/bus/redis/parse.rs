//! Names and envelopes on the Redis side: the channels of topics and users, and the parsing of
//! what arrives on them (messages, presence changes, directed messages), plus small helpers to
//! read Redis values. Pure functions.

use std::sync::Arc;

use bytes::Bytes;
use redis::Value;

use crate::bus::{Direct, Disconnect, PresenceEvent, is_conn_id};
use crate::protocol::{Message, Topic};

/// The channel of `topic`.
pub(super) fn channel(prefix: &str, topic: &str) -> String {
    format!("{prefix}{{{topic}}}:msg")
}

/// The channel of `user`'s directed messages.
pub(super) fn user_channel(prefix: &str, user: &str) -> String {
    format!("{prefix}{{user:{user}}}:direct")
}

/// The channel name and payload of a pub/sub `message` push.
pub(super) fn channel_and_payload(data: &[Value]) -> Option<(&str, &[u8])> {
    match (data.first(), data.get(1)) {
        (Some(Value::BulkString(ch)), Some(Value::BulkString(payload))) => {
            Some((std::str::from_utf8(ch).ok()?, payload))
        }
        _ => None,
    }
}

/// Parses a presence change on a topic's channel: payload `J <conn> <user>` or `L <conn> <user>`.
pub(crate) fn parse_presence(prefix: &str, data: &[Value]) -> Option<PresenceEvent> {
    let (ch, payload) = channel_and_payload(data)?;
    let join = match payload.get(..2)? {
        b"J " => true,
        b"L " => false,
        _ => return None,
    };
    let name = ch
        .strip_prefix(prefix)?
        .strip_prefix('{')?
        .strip_suffix("}:msg")?;
    let rest = std::str::from_utf8(&payload[2..]).ok()?;
    let (conn, user) = rest.split_once(' ')?;
    Some(PresenceEvent {
        topic: Topic::parse(name).ok()?,
        join,
        conn: Arc::from(conn),
        user: Arc::from(user),
    })
}

/// What arrives on a user's channel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum UserPush {
    /// A directed message.
    Direct(Direct),
    /// An order to close the user's connections (or one of them).
    Disconnect(Disconnect),
}

/// The payload of a disconnect order on a user's channel (`herald_disconnect`), alone or
/// followed by `:<conn>`. It holds no space, so it is never a directed message's payload.
const DISCONNECT: &[u8] = b"!disconnect";

/// Parses what arrives on channel `<prefix>{user:<user>}:direct`: a disconnect order (payload
/// `!disconnect` or `!disconnect:<conn>`), or a directed message (payload `<from> <data>`;
/// `from` is `-` when the sender did not name itself).
pub(crate) fn parse_user(prefix: &str, data: &[Value]) -> Option<UserPush> {
    let (ch, payload) = channel_and_payload(data)?;
    let user = ch
        .strip_prefix(prefix)?
        .strip_prefix("{user:")?
        .strip_suffix("}:direct")?;
    if let Some(rest) = payload.strip_prefix(DISCONNECT) {
        let conn = match rest {
            [] => Some(None),
            [b':', conn @ ..] if is_conn_id(conn) => std::str::from_utf8(conn).ok().map(Some),
            // Anything else (it has a space) is a directed message from a sender named so.
            _ => None,
        };
        if let Some(conn) = conn {
            return Some(UserPush::Disconnect(Disconnect {
                user: Arc::from(user),
                conn: conn.map(Arc::from),
            }));
        }
    }
    let mut parts = payload.splitn(2, |b| *b == b' ');
    let from = std::str::from_utf8(parts.next()?).ok()?;
    let body = parts.next()?;
    Some(UserPush::Direct(Direct {
        user: Arc::from(user),
        from: (from != "-").then(|| Arc::from(from)),
        data: Bytes::copy_from_slice(body),
    }))
}

/// Parses a pub/sub message into a [`Message`]: channel `<prefix>{<topic>}:msg`, payload
/// `<offset> <epoch> <data>`.
pub(crate) fn parse_push(prefix: &str, data: &[Value]) -> Option<Message> {
    let (ch, payload) = channel_and_payload(data)?;
    let name = ch
        .strip_prefix(prefix)?
        .strip_prefix('{')?
        .strip_suffix("}:msg")?;
    let topic = Topic::parse(name).ok()?;
    let mut parts = payload.splitn(3, |b| *b == b' ');
    let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let epoch = std::str::from_utf8(parts.next()?)
        .ok()
        .filter(|e| is_epoch(e))?;
    let body = parts.next()?;
    Some(Message {
        topic,
        offset,
        epoch: Arc::from(epoch),
        data: Bytes::copy_from_slice(body),
    })
}

/// Epochs are written by `herald.lua` in hex. Anything else did not come from Herald, and would
/// have to be escaped in the JSON frames, which write epochs as they are.
fn is_epoch(e: &str) -> bool {
    e.len() <= crate::protocol::frame::MAX_EPOCH
        && e.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(crate) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(crate) fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn envelopes_parse_and_foreign_channels_are_ignored() {
        let v = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let m = parse_push(
            "herald:",
            &[v("herald:{news.eu}:msg"), v("42 e1 {\"a\": 1}")],
        )
        .unwrap();
        assert_eq!(
            (m.topic.as_str(), m.offset, &*m.epoch),
            ("news.eu", 42, "e1")
        );
        assert_eq!(&m.data[..], b"{\"a\": 1}");
        assert!(parse_push("herald:", &[v("other:{news}:msg"), v("1 e x")]).is_none());
        assert!(parse_push("herald:", &[v("herald:{news}:msg"), v("x e {}")]).is_none());
        // An epoch Herald never writes (one a JSON frame would have to escape) is not Herald's.
        assert!(parse_push("herald:", &[v("herald:{news}:msg"), v("1 e\"1 {}")]).is_none());
    }

    #[test]
    fn a_users_channel_carries_directed_messages_and_disconnect_orders() {
        let v = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let ch = v("herald:{user:bob}:direct");
        let parse = |payload: &str| parse_user("herald:", &[ch.clone(), v(payload)]);
        let order = |conn: Option<&str>| {
            Some(UserPush::Disconnect(Disconnect {
                user: Arc::from("bob"),
                conn: conn.map(Arc::from),
            }))
        };
        assert_eq!(parse("!disconnect"), order(None));
        assert_eq!(parse("!disconnect:n1-2a"), order(Some("n1-2a")));
        // Neither an order nor a directed message (which always has a space).
        assert_eq!(parse("!disconnect:"), None);
        assert_eq!(parse("!disconnected"), None);
        // A sender named `!disconnect` (or `!disconnect:x`) is a directed message, as
        // herald_publish_user writes it: its payload always has a space.
        let Some(UserPush::Direct(d)) = parse("!disconnect:x 1") else {
            panic!("a directed message");
        };
        assert_eq!(
            (d.from.as_deref(), &d.data[..]),
            (Some("!disconnect:x"), &b"1"[..])
        );
        let Some(UserPush::Direct(d)) = parse("!disconnect {}") else {
            panic!("a directed message");
        };
        assert_eq!(
            (d.from.as_deref(), &d.data[..]),
            (Some("!disconnect"), &b"{}"[..])
        );
        let Some(UserPush::Direct(d)) = parse("- [1]") else {
            panic!("a directed message");
        };
        assert_eq!((d.from, &d.data[..]), (None, &b"[1]"[..]));
        assert_eq!(
            parse_user("herald:", &[v("herald:{bob}:msg"), v("!disconnect")]),
            None
        );
    }
}
