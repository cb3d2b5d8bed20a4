//! permessage-deflate on the wire (proto/README.md section 5): negotiated at the upgrade, a
//! broadcast reaches the subscribers that negotiated it compressed (RSV1, fewer bytes) and the
//! others plain, small messages go plain to everyone, a client's compressed messages are
//! inflated (a bomb gets 1009), and `compression = false` never negotiates it. The tests read
//! the frames raw and inflate them with flate2, not with Herald's own code.

use std::io::Write;

use flate2::write::DeflateEncoder;
use herald::protocol::websocket::{OpCode, client_frame};
use serde_json::{Value, json};

use crate::support::raw::{MASK, RawWs, Upgrade};
use crate::support::{API_KEY, Node, WAIT, upgrade};

/// What browsers offer.
const OFFER: &str = "permessage-deflate; client_max_window_bits";
/// What Herald answers.
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A `/ws` upgrade with a fresh ticket, offering `offer` when given.
async fn open(node: &Node, offer: Option<&str>) -> Upgrade {
    let ticket = node.ticket().await;
    let headers: Vec<(&str, &str)> = offer
        .iter()
        .map(|o| ("Sec-WebSocket-Extensions", *o))
        .collect();
    upgrade(node.addr, &format!("/ws?ticket={ticket}"), &headers).await
}

/// An open connection, its welcome read, subscribed to `topic`.
async fn subscribed(node: &Node, offer: Option<&str>, topic: &str) -> RawWs {
    let up = open(node, offer).await;
    let mut ws = up.into_ws();
    assert_eq!(ws.next_frame().await["op"], "welcome");
    ws.send_frame(
        OpCode::Text,
        json!({"op": "sub", "id": 1, "topic": topic})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(ws.next_frame().await["op"], "ok");
    ws
}

/// A payload such as a market feed sends: about `n` bytes of JSON.
fn feed(n: usize) -> Value {
    let ticks: Vec<Value> = (0..n / 60)
        .map(|i| json!({"sym": format!("ABC{}", i % 9), "px": 100.25 + i as f64, "side": "buy"}))
        .collect();
    json!({ "ticks": ticks })
}

/// Raw deflate of `data`, the sync tail removed, as a client sends a compressed message.
fn deflated(data: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.flush().unwrap();
    let mut out = e.get_ref().clone();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// Inflates a compressed message's payload as a client does.
fn inflated(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .unwrap();
    out
}

/// A masked client frame with RSV1 set.
fn compressed_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut f = client_frame(opcode, true, &deflated(payload), MASK);
    f[0] |= 0x40;
    f
}

#[tokio::test]
async fn an_offer_is_answered_with_no_context_takeover_both_ways() {
    let node = Node::start().await;
    let up = open(&node, Some(OFFER)).await;
    assert_eq!(up.status, 101);
    assert_eq!(up.header("sec-websocket-extensions"), Some(ANSWER));
    // No offer, no answer.
    let up = open(&node, None).await;
    assert_eq!(
        (up.status, up.header("sec-websocket-extensions")),
        (101, None)
    );
    // An offer that cannot be honoured (a smaller server window), or a malformed one, is
    // declined: the upgrade goes on without the extension.
    for offer in [
        "permessage-deflate; server_max_window_bits=10",
        "permessage-deflate; client_max_window_bits=\"9",
        "permessage-deflate; bogus",
    ] {
        let up = open(&node, Some(offer)).await;
        assert_eq!(
            (up.status, up.header("sec-websocket-extensions")),
            (101, None),
            "{offer}"
        );
    }
    // The client's first offer that can be honoured, across headers.
    let ticket = node.ticket().await;
    let up = upgrade(
        node.addr,
        &format!("/ws?ticket={ticket}"),
        &[
            (
                "Sec-WebSocket-Extensions",
                "foo, permessage-deflate; server_max_window_bits=9",
            ),
            (
                "Sec-WebSocket-Extensions",
                "permessage-deflate; server_max_window_bits=15",
            ),
        ],
    )
    .await;
    assert_eq!(
        up.header("sec-websocket-extensions"),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=15"
        )
    );
}

#[tokio::test]
async fn a_compressed_and_a_plain_subscriber_both_read_a_large_message() {
    let node = Node::start().await;
    let mut zipped = subscribed(&node, Some(OFFER), "feed").await;
    let mut plain = subscribed(&node, None, "feed").await;
    let data = feed(4000);
    node.publish("feed", data.clone()).await;
    let (zb0, z) = zipped.next_wire_frame().await;
    let (pb0, p) = plain.next_wire_frame().await;
    assert_eq!(zb0, 0xC1, "FIN, RSV1, text");
    assert_eq!(pb0, 0x81, "FIN, text");
    assert!(
        z.len() * 3 < p.len(),
        "compressed {} bytes, plain {}",
        z.len(),
        p.len()
    );
    assert_eq!(inflated(&z), p, "the same message");
    let m: Value = serde_json::from_slice(&p).unwrap();
    assert_eq!((m["op"].as_str(), &m["data"]), (Some("msg"), &data));
}

#[tokio::test]
async fn a_large_direct_message_reaches_a_compressed_connection_compressed() {
    let node = Node::start().await;
    // Both connections are alice's (the ticket of `open`).
    let mut zipped = subscribed(&node, Some(OFFER), "x").await;
    let mut plain = subscribed(&node, None, "x").await;
    let data = feed(3000);
    let body = json!({"user": "alice", "data": data}).to_string();
    let (status, out) = node.http.post("/v1/publish", Some(API_KEY), &body).await;
    assert_eq!(status, 200, "{out}");
    let (zb0, z) = zipped.next_wire_frame().await;
    let (pb0, p) = plain.next_wire_frame().await;
    assert_eq!((zb0, pb0), (0xC1, 0x81));
    assert_eq!(inflated(&z), p);
    let m: Value = serde_json::from_slice(&p).unwrap();
    assert_eq!((m["op"].as_str(), &m["data"]), (Some("direct"), &data));
}

#[tokio::test]
async fn a_message_under_compression_min_bytes_goes_plain() {
    let node = Node::with(&[("HERALD_COMPRESSION_MIN_BYTES", "2000")]).await;
    let mut zipped = subscribed(&node, Some(OFFER), "feed").await;
    node.publish("feed", feed(1000)).await;
    let (b0, p) = zipped.next_wire_frame().await;
    assert_eq!(b0, 0x81, "plain: under 2000 bytes");
    assert_eq!(
        serde_json::from_slice::<Value>(&p).unwrap()["data"],
        feed(1000)
    );
    node.publish("feed", feed(3000)).await;
    let (b0, z) = zipped.next_wire_frame().await;
    assert_eq!(b0, 0xC1, "compressed: over 2000 bytes");
    let m: Value = serde_json::from_slice(&inflated(&z)).unwrap();
    assert_eq!(m["data"], feed(3000));
}

#[tokio::test]
async fn a_clients_compressed_pub_is_accepted() {
    let node = Node::start().await;
    let mut reader = subscribed(&node, None, "chat").await;
    let mut writer = subscribed(&node, Some(OFFER), "elsewhere").await;
    let data = feed(3000);
    let req = json!({"op": "pub", "id": 2, "topic": "chat", "data": data}).to_string();
    writer
        .write(&compressed_frame(OpCode::Text, req.as_bytes()))
        .await;
    let ok = writer.next_frame().await;
    assert_eq!(
        (ok["op"].as_str(), ok["id"].as_u64()),
        (Some("ok"), Some(2)),
        "{ok}"
    );
    let m = reader.next_frame().await;
    assert_eq!(m["data"], data);
    // Fragmented: RSV1 on the first frame only, the message inflated once reassembled.
    let z = deflated(
        json!({"op": "pub", "id": 3, "topic": "chat", "data": "again"})
            .to_string()
            .as_bytes(),
    );
    let (a, b) = z.split_at(z.len() / 2);
    let mut first = client_frame(OpCode::Text, false, a, MASK);
    first[0] |= 0x40;
    writer.write(&first).await;
    writer
        .write(&client_frame(OpCode::Continuation, true, b, MASK))
        .await;
    assert_eq!(writer.next_frame().await["id"], 3);
    assert_eq!(reader.next_frame().await["data"], "again");
}

#[tokio::test]
async fn a_decompression_bomb_gets_1009() {
    let node = Node::start().await;
    let mut ws = subscribed(&node, Some(OFFER), "t").await;
    // 16 MiB of one character inside a pub: about 16 KiB compressed, far over the 64 KiB limit
    // once inflated.
    let mut req = br#"{"op":"pub","id":2,"topic":"t","data":""#.to_vec();
    req.resize(16 << 20, b'a');
    req.extend_from_slice(br#""}"#);
    ws.write(&compressed_frame(OpCode::Text, &req)).await;
    assert_eq!(ws.expect_close_within(WAIT).await, 1009);
}

#[tokio::test]
async fn rsv1_where_deflate_was_not_negotiated_gets_1002() {
    let node = Node::start().await;
    let mut ws = subscribed(&node, None, "t").await;
    ws.write(&compressed_frame(OpCode::Text, b"{}")).await;
    assert_eq!(ws.expect_close_within(WAIT).await, 1002);
    // And on a control frame where it was.
    let mut ws = subscribed(&node, Some(OFFER), "t").await;
    let mut ping = client_frame(OpCode::Ping, true, b"p", MASK);
    ping[0] |= 0x40;
    ws.write(&ping).await;
    assert_eq!(ws.expect_close_within(WAIT).await, 1002);
}

#[tokio::test]
async fn compression_false_never_negotiates() {
    let node = Node::with(&[("HERALD_COMPRESSION", "false")]).await;
    let up = open(&node, Some(OFFER)).await;
    assert_eq!(
        (up.status, up.header("sec-websocket-extensions")),
        (101, None)
    );
    let mut ws = subscribed(&node, Some(OFFER), "feed").await;
    node.publish("feed", feed(4000)).await;
    let (b0, p) = ws.next_wire_frame().await;
    assert_eq!(b0, 0x81);
    assert_eq!(
        serde_json::from_slice::<Value>(&p).unwrap()["data"],
        feed(4000)
    );
}
