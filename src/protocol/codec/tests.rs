//! Codec tests, including the golden examples in `proto/golden/` (the same files the protocol
//! documentation shows).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use super::*;
use crate::protocol::Request;
use crate::protocol::frame::ServerFrame;
use crate::protocol::websocket::{Assembler, Incoming, Step};
use crate::protocol::{Message, Topic};

/// The payload of a complete server frame, read back with a client-side assembler.
fn payload(frame: &Bytes) -> (Vec<u8>, bool) {
    match Assembler::client(1 << 24).step(frame).unwrap() {
        Step::Message(n, Incoming::Text(p)) if n == frame.len() => (p, false),
        Step::Message(n, Incoming::Binary(p)) if n == frame.len() => (p, true),
        other => panic!("not one whole data frame: {other:?}"),
    }
}

fn as_json(codec: Codec, frame: &Bytes) -> Value {
    let (p, binary) = payload(frame);
    assert_eq!(
        binary,
        codec == Codec::MsgPack,
        "frame type follows the codec"
    );
    match codec {
        Codec::Json => serde_json::from_slice(&p).unwrap(),
        Codec::MsgPack => rmp_serde::from_slice(&p).unwrap(),
    }
}

fn encode_client(codec: Codec, v: &Value) -> (Vec<u8>, bool) {
    match codec {
        Codec::Json => (serde_json::to_vec(v).unwrap(), false),
        Codec::MsgPack => (rmp_serde::to_vec_named(v).unwrap(), true),
    }
}

fn golden(name: &str) -> Vec<Value> {
    let path = format!("{}/proto/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn golden_client_frames_decode_or_fail_with_their_code_in_both_codecs() {
    let cases = golden("client.json");
    assert!(cases.len() >= 20, "the golden file covers the protocol");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        for codec in [Codec::Json, Codec::MsgPack] {
            let result = if let Some(raw) = case.get("raw") {
                let raw = raw.as_str().unwrap().as_bytes();
                codec.decode(raw, codec == Codec::MsgPack)
            } else {
                let (bytes, binary) = encode_client(codec, &case["frame"]);
                codec.decode(&bytes, binary)
            };
            // Other codes depend on the state of the connection or the node (a used ticket):
            // the frame itself must decode.
            let expect_error = case
                .get("expect_error")
                .filter(|c| ["bad_frame", "bad_request"].contains(&c.as_str().unwrap()));
            match (expect_error, result) {
                (None, Ok(r)) => assert_eq!(
                    request_json(&r),
                    known_fields(&case["frame"]),
                    "{name} ({codec:?}) decodes to what it says"
                ),
                (Some(code), Err(e)) => {
                    // Bytes that are not JSON can still be valid MessagePack (e.g. a fixint).
                    if case.get("raw").is_some() && codec == Codec::MsgPack {
                        continue;
                    }
                    assert_eq!(
                        e.code.as_str(),
                        code.as_str().unwrap(),
                        "{name} ({codec:?})"
                    )
                }
                (None, Err(e)) => panic!("{name} ({codec:?}) should decode: {e}"),
                (Some(code), Ok(r)) => {
                    if case.get("raw").is_some() && codec == Codec::MsgPack {
                        continue;
                    }
                    panic!("{name} ({codec:?}) should fail with {code}, got {r:?}")
                }
            }
        }
    }
}

/// A decoded request as the frame a client sends for it: what the decoder kept, in JSON.
/// `data` must be compact JSON text (what is stored and fanned out as it is).
fn request_json(r: &Request) -> Value {
    let data = |d: &Bytes| {
        let v: Value = serde_json::from_slice(d).expect("`data` is JSON text");
        assert_eq!(
            serde_json::to_vec(&v).unwrap(),
            d.to_vec(),
            "`data` is compact"
        );
        v
    };
    match r {
        Request::Sub { id, topic, since } => {
            let mut v = json!({"op": "sub", "id": id, "topic": topic.as_str()});
            if let Some(p) = since {
                v["since"] = json!({"offset": p.offset, "epoch": &*p.epoch});
            }
            v
        }
        Request::Unsub { id, topic } => json!({"op": "unsub", "id": id, "topic": topic.as_str()}),
        Request::Pub { id, topic, data: d } => {
            json!({"op": "pub", "id": id, "topic": topic.as_str(), "data": data(d)})
        }
        Request::Presence { id, topic } => {
            json!({"op": "presence", "id": id, "topic": topic.as_str()})
        }
        Request::Send { id, to, data: d } => {
            json!({"op": "send", "id": id, "to": to, "data": data(d)})
        }
        Request::Refresh { id, ticket } => json!({"op": "refresh", "id": id, "ticket": ticket.0}),
    }
}

/// A golden client frame without the fields the server ignores (proto/README.md section 6.1).
fn known_fields(frame: &Value) -> Value {
    let mut v = frame.clone();
    let known = ["op", "id", "topic", "since", "data", "to", "ticket"];
    v.as_object_mut()
        .expect("a golden frame is an object")
        .retain(|k, _| known.contains(&k.as_str()));
    v
}

#[test]
fn golden_server_frames_round_trip_through_both_codecs() {
    for case in golden("server.json") {
        let name = case["name"].as_str().unwrap();
        let frame: ServerFrame = serde_json::from_value(case["frame"].clone())
            .unwrap_or_else(|e| panic!("{name}: not a server frame: {e}"));
        let ours = encode_server(Codec::Json, &frame);
        assert_eq!(as_json(Codec::Json, &ours), case["frame"], "{name} (json)");
        let ours = encode_server(Codec::MsgPack, &frame);
        assert_eq!(
            as_json(Codec::MsgPack, &ours),
            case["frame"],
            "{name} (msgpack)"
        );
        assert_eq!(
            Codec::MsgPack.decode_server(&payload(&ours).0).unwrap(),
            frame
        );
    }
}

/// Encodes a frame with the server's own encoders (not serde on `ServerFrame`).
fn encode_server(codec: Codec, f: &ServerFrame) -> Bytes {
    match f {
        ServerFrame::Welcome {
            conn,
            node,
            user,
            ping,
            expires_at,
        } => codec.welcome(conn, node, user, *ping, *expires_at),
        ServerFrame::Ok {
            id,
            presence: Some(p),
            ..
        } => codec.ok_presence(*id, p),
        ServerFrame::Join { topic, user, conn } => codec.presence_event(true, topic, user, conn),
        ServerFrame::Leave { topic, user, conn } => codec.presence_event(false, topic, user, conn),
        ServerFrame::Ok {
            id,
            offset,
            epoch,
            recovered,
            presence: None,
            expires_at,
        } => codec.ok(
            *id,
            OkFields {
                offset: *offset,
                epoch: epoch.as_deref(),
                recovered: *recovered,
                expires_at: *expires_at,
            },
        ),
        ServerFrame::Error {
            id,
            code,
            message,
            status,
        } => {
            let code: ErrorCode =
                serde_json::from_value(json!(code)).unwrap_or(ErrorCode::Internal);
            codec.error(*id, code, message, *status)
        }
        ServerFrame::Msg {
            topic,
            offset,
            epoch,
            data,
        } => codec.msg(&Message {
            topic: Topic::parse(topic).unwrap(),
            offset: *offset,
            epoch: Arc::from(epoch.as_str()),
            data: Bytes::from(serde_json::to_vec(data).unwrap()),
        }),
        ServerFrame::Reply { id, data } => codec.reply(*id, &serde_json::to_vec(data).unwrap()),
        ServerFrame::Direct { from, data } => {
            codec.direct(from.as_deref(), &serde_json::to_vec(data).unwrap())
        }
        ServerFrame::Unsubscribed { topic, reason } => {
            let reason: ErrorCode = serde_json::from_value(json!(reason)).unwrap();
            codec.unsubscribed(topic, reason)
        }
    }
}

#[test]
fn wrong_frame_type_for_the_subprotocol_is_bad_frame() {
    let sub = br#"{"op":"sub","id":1,"topic":"a"}"#;
    assert_eq!(
        Codec::Json.decode(sub, true).unwrap_err().code,
        ErrorCode::BadFrame
    );
    assert_eq!(
        Codec::MsgPack.decode(sub, false).unwrap_err().code,
        ErrorCode::BadFrame
    );
}

#[test]
fn msg_frames_carry_the_payload_unchanged_in_json_and_as_a_map_in_msgpack() {
    let m = Message {
        topic: Topic::parse("news.eu").unwrap(),
        offset: 42,
        epoch: Arc::from("e1"),
        data: Bytes::from_static(br#"{"headline":"hi","n":[1,2.5,null]}"#),
    };
    let want = json!({"op":"msg","topic":"news.eu","offset":42,"epoch":"e1","data":{"headline":"hi","n":[1,2.5,null]}});
    assert_eq!(as_json(Codec::Json, &Codec::Json.msg(&m)), want);
    assert_eq!(as_json(Codec::MsgPack, &Codec::MsgPack.msg(&m)), want);
}

#[test]
fn ids_must_be_positive_safe_integers() {
    let ok = |v: Value| Codec::Json.decode(v.to_string().as_bytes(), false);
    assert!(ok(json!({"op":"unsub","id":9007199254740991u64,"topic":"a"})).is_ok());
    let e = ok(json!({"op":"unsub","id":9007199254740992u64,"topic":"a"})).unwrap_err();
    assert_eq!((e.id, e.code), (None, ErrorCode::BadRequest));
}
