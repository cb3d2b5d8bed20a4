//! The entry points of the fuzz targets (`fuzz/`) and of their regression tests
//! (`tests/it/fuzz_regressions.rs`): each takes arbitrary bytes, feeds them to one parser exactly
//! as the node does, and panics only when an invariant of that parser breaks. A panic here is a
//! bug, whatever the input.
//!
//! Owns nothing and touches no socket, file or clock beyond a ticket store of its own. Public
//! only so that the fuzz crate can reach it; not part of Herald's API.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::auth::jwt::JwtVerifier;
use crate::auth::ticket::{MemoryTicketStore, Tickets};
use crate::auth::{AuthError, Identity};
use crate::protocol::codec::Codec;
use crate::protocol::frame::{MAX_EPOCH, Request};
use crate::protocol::websocket::{Assembler, Incoming, OpCode, Step, WsError};
use crate::protocol::{Message, Topic};

/// The largest message the assembler under test accepts (small, so that the limit is reached).
const MAX_MESSAGE: usize = 4096;

/// The secret of the JWT target; seeds are signed with it so that the fuzzer starts past the
/// signature check.
pub const JWT_SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret-0123";

/// The key prefix of the Redis envelope target.
pub const REDIS_PREFIX: &str = "herald:";

/// Client frames on the wire. The first byte chooses how the rest is cut into reads (1 to 256
/// bytes each), as a socket may deliver them; the assembler must give the same answer whatever
/// the cut, and every message it yields must respect its limits (inflated ones too: the bytes
/// are read both without and with permessage-deflate negotiated).
pub fn websocket_frames(data: &[u8]) {
    let Some((&cut, wire)) = data.split_first() else {
        return;
    };
    for deflate in [false, true] {
        let whole = assemble(wire, wire.len().max(1), deflate);
        let in_reads = assemble(wire, usize::from(cut) + 1, deflate);
        assert_eq!(
            whole, in_reads,
            "the answer depends on how the bytes were cut"
        );
    }
}

/// Feeds `wire` to a server-side assembler `chunk` bytes at a time, as the connection's read loop
/// does (on a connection that negotiated permessage-deflate when `deflate`): everything it
/// yields, and the error that stopped it if any.
fn assemble(wire: &[u8], chunk: usize, deflate: bool) -> (Vec<Incoming>, Option<WsError>) {
    let mut asm = Assembler::server(MAX_MESSAGE).with_deflate(deflate);
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut fed = 0;
    loop {
        match asm.step(&buf) {
            Ok(Step::NeedMore) => {
                if fed == wire.len() {
                    return (out, None);
                }
                let end = (fed + chunk).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
            Ok(Step::Consumed(n)) => {
                assert!(n > 0 && n <= buf.len(), "consumed {n} of {}", buf.len());
                buf.drain(..n);
            }
            Ok(Step::Message(n, msg)) => {
                assert!(n > 0 && n <= buf.len(), "consumed {n} of {}", buf.len());
                buf.drain(..n);
                check_incoming(&msg);
                out.push(msg);
            }
            Err(e) => return (out, Some(e)),
        }
    }
}

fn check_incoming(msg: &Incoming) {
    match msg {
        Incoming::Text(t) => {
            assert!(t.len() <= MAX_MESSAGE, "text message over the limit");
            assert!(std::str::from_utf8(t).is_ok(), "text message not UTF-8");
        }
        Incoming::Binary(b) => assert!(b.len() <= MAX_MESSAGE, "binary message over the limit"),
        Incoming::Ping(p) => assert!(p.len() <= 125, "control frame over 125 bytes"),
        Incoming::Pong => {}
        Incoming::Close(code) => {
            if let Some(code) = code {
                assert!(*code >= 1000, "close code {code} passed");
            }
        }
    }
}

/// A client frame's payload. The first byte chooses the codec and the frame type it arrived in.
/// A request that decodes must be one the node can act on: its topic valid, its `since` epoch
/// bounded, and the `data` of `pub` and `send` JSON text that every subscriber can be sent, in
/// either codec.
pub fn client_frame(data: &[u8]) {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    let codec = if sel & 1 == 0 {
        Codec::Json
    } else {
        Codec::MsgPack
    };
    let binary = sel & 2 != 0;
    let Ok(request) = codec.decode(payload, binary) else {
        return;
    };
    match request {
        Request::Sub { topic, since, .. } => {
            Topic::parse(topic.as_str()).expect("a decoded topic parses again");
            if let Some(p) = since {
                assert!(p.epoch.len() <= MAX_EPOCH, "epoch over the limit");
            }
        }
        Request::Pub { topic, data, .. } => {
            check_data(&data);
            let m = Message {
                topic,
                offset: u64::MAX,
                epoch: Arc::from("e"),
                data,
            };
            check_msg_frames(&m);
        }
        Request::Send { data, .. } => check_data(&data),
        Request::Unsub { .. } | Request::Presence { .. } | Request::Refresh { .. } => {}
    }
}

/// Published data is stored as JSON text and re-read to transcode it for MessagePack
/// subscribers: it must read back, or they would get `null`.
fn check_data(data: &[u8]) {
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(data) {
        panic!("accepted data does not read back as JSON: {e}");
    }
}

/// The `msg` frame of `m`, in both codecs: the JSON one must be valid JSON, the MessagePack one
/// must carry the data (not `null` in its place).
fn check_msg_frames(m: &Message) {
    let json = Codec::Json.msg(m);
    let (payload, op) = unframe(&json);
    assert_eq!(op, OpCode::Text);
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&payload) {
        panic!("a JSON msg frame is not JSON: {e}");
    }
    let packed = Codec::MsgPack.msg(m);
    let (payload, op) = unframe(&packed);
    assert_eq!(op, OpCode::Binary);
    let v: serde_json::Value = rmp_serde::from_slice(&payload).expect("a msgpack msg frame reads");
    let data_is_null = m.data.as_ref() == b"null";
    assert_eq!(v["data"].is_null(), data_is_null, "msgpack lost the data");
}

/// The payload and opcode of one unmasked server frame.
fn unframe(frame: &[u8]) -> (Vec<u8>, OpCode) {
    match Assembler::client(usize::MAX).step(frame) {
        Ok(Step::Message(n, msg)) => {
            assert_eq!(n, frame.len(), "one frame, whole");
            match msg {
                Incoming::Text(p) => (p, OpCode::Text),
                Incoming::Binary(p) => (p, OpCode::Binary),
                other => panic!("not a data frame: {other:?}"),
            }
        }
        other => panic!("a server frame did not parse: {other:?}"),
    }
}

/// A bearer token. Whatever the bytes, verification answers (never panics); a token it accepts
/// names a user and grants.
pub fn jwt(data: &[u8]) {
    static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| JwtVerifier::hmac(JWT_SECRET, Duration::from_secs(5)));
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(identity) = verifier.verify_cached(token) {
        assert!(!identity.user.is_empty(), "accepted a token without a user");
    }
}

/// The query string of a WebSocket upgrade: `since`/`epoch` and the ticket. A well-formed ticket
/// that was issued is redeemed once; whatever else is sent answers with an error, never a panic.
pub fn ticket(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uri) = format!("/ws?{query}").parse::<axum::http::Uri>() else {
        return;
    };
    let Ok(axum::extract::Query(params)) =
        axum::extract::Query::<HashMap<String, String>>::try_from_uri(&uri)
    else {
        return;
    };
    if let Ok(Some(p)) = crate::gateway::upgrade::parse_since(&params) {
        assert!(p.epoch.len() <= MAX_EPOCH, "epoch over the limit");
    }
    let tickets = Tickets::new(Arc::new(MemoryTicketStore::new()), Duration::from_secs(30));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let issued = tickets.issue(identity()).await.expect("issue");
        let sent = params.get("ticket").map(String::as_str);
        match tickets.redeem(sent).await {
            Ok(_) => assert_eq!(
                sent,
                Some(issued.as_str()),
                "redeemed a ticket never issued"
            ),
            Err(AuthError::MissingTicket | AuthError::MalformedTicket) => {}
            Err(AuthError::TicketUsed | AuthError::InvalidTicket) => {}
            Err(e) => panic!("unexpected answer to a ticket: {e}"),
        }
        // The issued one still works once, and only once.
        assert!(tickets.redeem(Some(&issued)).await.is_ok() || sent == Some(issued.as_str()));
        assert!(tickets.redeem(Some(&issued)).await.is_err());
    });
}

fn identity() -> Identity {
    Identity {
        user: Arc::from("fuzz"),
        grants: Arc::default(),
        expires_at: u64::MAX,
    }
}

/// A pub/sub push from Redis, `[channel, payload]`, split at the first NUL of `data`. A message
/// it accepts must be one the node can send: a valid topic, and an epoch that needs no escaping
/// in a JSON frame.
pub fn redis_envelope(data: &[u8]) {
    let (channel, payload) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let push = [
        redis::Value::BulkString(channel.to_vec()),
        redis::Value::BulkString(payload.to_vec()),
    ];
    use crate::bus::redis::parse;
    if let Some(m) = parse::parse_push(REDIS_PREFIX, &push) {
        Topic::parse(m.topic.as_str()).expect("a parsed topic parses again");
        assert!(
            m.epoch
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'),
            "an epoch that a JSON frame would have to escape: {:?}",
            m.epoch
        );
    }
    let _ = parse::parse_presence(REDIS_PREFIX, &push);
    let _ = parse::parse_user(REDIS_PREFIX, &push);
    for v in &push {
        let _ = parse::as_u64(v);
        let _ = parse::as_str(v);
    }
}
