//! The two codecs of protocol v1: `herald.v1.json` (text frames) and `herald.v1.msgpack`
//! (binary frames carrying MessagePack maps with the same field names).
//!
//! Every encoder returns a complete WebSocket frame (header included) as shared `Bytes`, so a
//! message is encoded once per codec and written to any number of sockets as it is.

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::Message;
use super::Request;
use super::error_code::ErrorCode;
use super::frame::{Member, RequestError, ServerFrame, request_from_value};
use super::websocket::{FrameBuf, OpCode};

/// A connection's codec, chosen by subprotocol at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// `herald.v1.json`: text frames.
    Json,
    /// `herald.v1.msgpack`: binary frames.
    MsgPack,
}

/// The subprotocols in the server's order of preference.
pub const SUBPROTOCOLS: [&str; 2] = ["herald.v1.json", "herald.v1.msgpack"];

/// Fields of an `ok` frame beyond `op` and `id`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OkFields<'a> {
    /// Latest offset (`sub`) or the message's offset (`pub`).
    pub offset: Option<u64>,
    /// The topic's epoch.
    pub epoch: Option<&'a str>,
    /// Only for `sub` with `since`.
    pub recovered: Option<bool>,
    /// Only for `refresh`: when the new identity expires (unix seconds), if it does.
    pub expires_at: Option<u64>,
}

/// Every server frame has this shape; absent fields are skipped.
#[derive(Serialize)]
struct Out<'a, D: Serialize> {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ping: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence: Option<&'a [Member]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<D>,
}

impl<D: Serialize> Out<'_, D> {
    fn new(op: &'static str) -> Self {
        Out {
            op,
            id: None,
            conn: None,
            node: None,
            user: None,
            ping: None,
            code: None,
            message: None,
            status: None,
            topic: None,
            from: None,
            offset: None,
            epoch: None,
            recovered: None,
            presence: None,
            expires_at: None,
            reason: None,
            data: None,
        }
    }
}

impl Codec {
    /// The codec of a subprotocol name.
    pub fn from_subprotocol(name: &str) -> Option<Codec> {
        match name {
            "herald.v1.json" => Some(Codec::Json),
            "herald.v1.msgpack" => Some(Codec::MsgPack),
            _ => None,
        }
    }

    /// The subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Codec::Json => SUBPROTOCOLS[0],
            Codec::MsgPack => SUBPROTOCOLS[1],
        }
    }

    /// The WebSocket opcode its frames use.
    pub fn opcode(self) -> OpCode {
        match self {
            Codec::Json => OpCode::Text,
            Codec::MsgPack => OpCode::Binary,
        }
    }

    /// Decodes a client message. `binary` is the frame type it arrived in.
    pub fn decode(self, payload: &[u8], binary: bool) -> Result<Request, RequestError> {
        let value = match (self, binary) {
            (Codec::Json, false) => serde_json::from_slice::<serde_json::Value>(payload)
                .map_err(|e| RequestError::bad_frame(format!("not valid JSON: {e}")))?,
            (Codec::MsgPack, true) => {
                rmp_serde::from_slice::<serde_json::Value>(payload).map_err(|e| {
                    RequestError::bad_frame(format!(
                        "not valid MessagePack (or a value with no JSON form): {e}"
                    ))
                })?
            }
            (Codec::Json, true) => {
                return Err(RequestError::bad_frame(
                    "binary frame on herald.v1.json: send text frames",
                ));
            }
            (Codec::MsgPack, false) => {
                return Err(RequestError::bad_frame(
                    "text frame on herald.v1.msgpack: send binary frames",
                ));
            }
        };
        request_from_value(value)
    }

    /// Decodes a server frame (the client side of this codec).
    pub fn decode_server(self, payload: &[u8]) -> Result<ServerFrame, String> {
        match self {
            Codec::Json => serde_json::from_slice(payload).map_err(|e| e.to_string()),
            Codec::MsgPack => rmp_serde::from_slice(payload).map_err(|e| e.to_string()),
        }
    }

    fn frame<D: Serialize>(self, out: &Out<'_, D>, size_hint: usize) -> Bytes {
        let mut f = FrameBuf::with_capacity(size_hint);
        match self {
            Codec::Json => serde_json::to_writer(f.payload(), out).expect("frame serialises"),
            Codec::MsgPack => {
                rmp_serde::encode::write_named(f.payload(), out).expect("frame serialises")
            }
        }
        f.finish(self.opcode())
    }

    /// `{"op":"welcome","conn":..,"node":..,"user":..,"ping":..,"expires_at":..}`; `expires_at`
    /// (unix seconds) only when the identity expires.
    pub fn welcome(
        self,
        conn: &str,
        node: &str,
        user: &str,
        ping_secs: u64,
        expires_at: Option<u64>,
    ) -> Bytes {
        let mut o = Out::<()>::new("welcome");
        o.conn = Some(conn);
        o.node = Some(node);
        o.user = Some(user);
        o.ping = Some(ping_secs);
        o.expires_at = expires_at;
        self.frame(&o, 112 + user.len())
    }

    /// `{"op":"ok","id":..}` with the given fields.
    pub fn ok(self, id: u64, f: OkFields<'_>) -> Bytes {
        let mut o = Out::<()>::new("ok");
        o.id = Some(id);
        o.offset = f.offset;
        o.epoch = f.epoch;
        o.recovered = f.recovered;
        o.expires_at = f.expires_at;
        self.frame(&o, 96)
    }

    /// `{"op":"unsubscribed","topic":..,"reason":..}`: the server ended a subscription, for
    /// `reason` (an error code: `forbidden` when the connection's refreshed grants no longer
    /// allow the topic).
    pub fn unsubscribed(self, topic: &str, reason: ErrorCode) -> Bytes {
        let mut o = Out::<()>::new("unsubscribed");
        o.topic = Some(topic);
        o.reason = Some(reason.as_str());
        self.frame(&o, 64 + topic.len())
    }

    /// `{"op":"error","id":..,"code":..,"message":..}`; `id` absent for connection-level errors.
    pub fn error(
        self,
        id: Option<u64>,
        code: ErrorCode,
        message: &str,
        status: Option<u16>,
    ) -> Bytes {
        let mut o = Out::<()>::new("error");
        o.id = id;
        o.code = Some(code.as_str());
        o.message = Some(message);
        o.status = status;
        self.frame(&o, 64 + message.len())
    }

    /// `{"op":"msg","topic":..,"offset":..,"epoch":..,"data":..}`: encoded once per codec for all
    /// subscribers. JSON is written directly around the stored JSON text; MessagePack transcodes it.
    pub fn msg(self, m: &Message) -> Bytes {
        match self {
            Codec::Json => {
                let mut f = FrameBuf::with_capacity(m.data.len() + m.topic.as_str().len() + 64);
                let p = f.payload();
                // Topic names and epochs are [A-Za-z0-9_.-]: nothing to escape.
                p.extend_from_slice(b"{\"op\":\"msg\",\"topic\":\"");
                p.extend_from_slice(m.topic.as_str().as_bytes());
                p.extend_from_slice(b"\",\"offset\":");
                p.extend_from_slice(itoa::Buffer::new().format(m.offset).as_bytes());
                p.extend_from_slice(b",\"epoch\":\"");
                p.extend_from_slice(m.epoch.as_bytes());
                p.extend_from_slice(b"\",\"data\":");
                p.extend_from_slice(&m.data);
                p.push(b'}');
                f.finish(OpCode::Text)
            }
            Codec::MsgPack => {
                let data: serde_json::Value =
                    serde_json::from_slice(&m.data).unwrap_or(serde_json::Value::Null);
                let mut o = Out::new("msg");
                o.topic = Some(m.topic.as_str());
                o.offset = Some(m.offset);
                o.epoch = Some(&m.epoch);
                o.data = Some(&data);
                self.frame(&o, m.data.len() + 64)
            }
        }
    }

    /// `{"op":"ok","id":..,"presence":[{"user":..,"conn":..},...]}`.
    pub fn ok_presence(self, id: u64, members: &[Member]) -> Bytes {
        let mut o = Out::<()>::new("ok");
        o.id = Some(id);
        o.presence = Some(members);
        self.frame(&o, 32 + members.len() * 48)
    }

    /// `{"op":"join"|"leave","topic":..,"user":..,"conn":..}`.
    pub fn presence_event(self, join: bool, topic: &str, user: &str, conn: &str) -> Bytes {
        let mut o = Out::<()>::new(if join { "join" } else { "leave" });
        o.topic = Some(topic);
        o.user = Some(user);
        o.conn = Some(conn);
        self.frame(&o, 64 + topic.len() + user.len())
    }

    /// `{"op":"direct","from":..,"data":..}` for a message a backend sent to one user.
    pub fn direct(self, from: Option<&str>, data: &[u8]) -> Bytes {
        self.with_data("direct", None, from, data)
    }

    /// `{"op":"reply","id":..,"data":..}`: a backend's answer to `send`.
    pub fn reply(self, id: u64, data: &[u8]) -> Bytes {
        self.with_data("reply", Some(id), None, data)
    }

    fn with_data(
        self,
        op: &'static str,
        id: Option<u64>,
        from: Option<&str>,
        data: &[u8],
    ) -> Bytes {
        match self {
            Codec::Json => {
                let raw: Option<&RawValue> = serde_json::from_slice(data).ok();
                let mut o = Out::new(op);
                o.id = id;
                o.from = from;
                o.data = Some(raw);
                self.frame(&o, data.len() + 48)
            }
            Codec::MsgPack => {
                let v: serde_json::Value =
                    serde_json::from_slice(data).unwrap_or(serde_json::Value::Null);
                let mut o = Out::new(op);
                o.id = id;
                o.from = from;
                o.data = Some(&v);
                self.frame(&o, data.len() + 48)
            }
        }
    }
}

#[cfg(test)]
mod tests;
