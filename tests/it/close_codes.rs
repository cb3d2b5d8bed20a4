//! When the server closes a connection, and with which code: RFC 6455 violations, the size
//! limit, the frame rate (proto/README.md sections 5.2 to 5.4 and 8).

use herald::protocol::websocket::{OpCode, client_frame};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::raw::MASK;
use crate::support::redis::RedisServer;
use crate::support::ws::encode;
use crate::support::{CODECS, Node, RawWs, WAIT, codec_name, upgrade};

/// A raw `/ws` connection (JSON), its welcome read.
async fn raw_client(node: &Node) -> RawWs {
    let ticket = node.ticket().await;
    let mut ws = upgrade(node.addr, &format!("/ws?ticket={ticket}"), &[])
        .await
        .into_ws();
    assert_eq!(ws.next_frame().await["op"], "welcome");
    ws
}

#[tokio::test]
async fn message_over_max_message_bytes_is_closed_with_1009() {
    let node = Node::with(&[("HERALD_MAX_MESSAGE_BYTES", "1024")]).await;
    for codec in CODECS {
        let mut c = node.client(codec).await;
        let frame = json!({"op": "pub", "id": 1, "topic": "news", "data": "x".repeat(2000)});
        c.send(encode(codec, &frame)).await;
        assert_eq!(c.expect_close().await, 1009, "{}", codec_name(codec));
    }
}

#[tokio::test]
async fn message_at_the_limit_is_accepted() {
    let node = Node::with(&[("HERALD_MAX_MESSAGE_BYTES", "1024")]).await;
    let mut c = node.client(crate::support::Codec::Json).await;
    let base = json!({"op": "pub", "id": 1, "topic": "news", "data": ""}).to_string();
    let pad = 1024 - base.len();
    let text = json!({"op": "pub", "id": 1, "topic": "news", "data": "x".repeat(pad)}).to_string();
    assert_eq!(text.len(), 1024);
    c.send(Message::text(text)).await;
    assert_eq!(c.next_frame().await["op"], "ok");
}

#[tokio::test]
async fn fragmented_message_over_the_limit_is_closed_with_1009() {
    let node = Node::with(&[("HERALD_MAX_MESSAGE_BYTES", "1024")]).await;
    let mut ws = raw_client(&node).await;
    ws.write(&client_frame(OpCode::Text, false, &[b' '; 800], MASK))
        .await;
    ws.write(&client_frame(
        OpCode::Continuation,
        true,
        &[b' '; 800],
        MASK,
    ))
    .await;
    assert_eq!(ws.expect_close_within(WAIT).await, 1009);
}

#[tokio::test]
async fn fragmented_message_is_reassembled() {
    let node = Node::start().await;
    let mut ws = raw_client(&node).await;
    let text = json!({"op": "sub", "id": 4, "topic": "news"}).to_string();
    let (a, b) = text.as_bytes().split_at(10);
    ws.write(&client_frame(OpCode::Text, false, a, MASK)).await;
    // A control frame may come between fragments.
    ws.write(&client_frame(OpCode::Ping, true, b"hi", MASK))
        .await;
    ws.write(&client_frame(OpCode::Continuation, true, b, MASK))
        .await;
    let ok = ws.next_frame().await;
    assert_eq!(
        (ok["op"].as_str(), ok["id"].as_u64()),
        (Some("ok"), Some(4)),
        "{ok}"
    );
}

#[tokio::test]
async fn unmasked_client_frame_is_closed_with_1002() {
    let node = Node::start().await;
    let mut ws = raw_client(&node).await;
    let payload = json!({"op": "sub", "id": 1, "topic": "news"}).to_string();
    let mut frame = vec![0x81, payload.len() as u8];
    frame.extend_from_slice(payload.as_bytes());
    ws.write(&frame).await;
    assert_eq!(ws.expect_close_within(WAIT).await, 1002);
}

#[tokio::test]
async fn reserved_bits_and_opcodes_are_closed_with_1002() {
    let node = Node::start().await;
    // RSV1 (permessage-deflate was not negotiated), then a reserved opcode (0x3).
    for first_byte in [0x80 | 0x40 | 0x1, 0x80 | 0x3] {
        let mut ws = raw_client(&node).await;
        let mut frame = client_frame(OpCode::Text, true, b"{}", MASK);
        frame[0] = first_byte;
        ws.write(&frame).await;
        assert_eq!(ws.expect_close_within(WAIT).await, 1002, "{first_byte:#x}");
    }
}

#[tokio::test]
async fn invalid_utf8_text_is_closed_with_1007() {
    let node = Node::start().await;
    let mut ws = raw_client(&node).await;
    ws.write(&client_frame(
        OpCode::Text,
        true,
        b"{\"op\":\"\xff\xfe\"}",
        MASK,
    ))
    .await;
    assert_eq!(ws.expect_close_within(WAIT).await, 1007);
}

#[tokio::test]
async fn client_close_is_answered_with_its_code() {
    let node = Node::start().await;
    for codec in CODECS {
        let mut c = node.client(codec).await;
        c.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await;
        assert_eq!(c.expect_close().await, 1000, "{}", codec_name(codec));
    }
}

#[tokio::test]
async fn a_client_close_with_a_registered_code_1012_to_1014_is_echoed_not_refused() {
    let node = Node::start().await;
    for code in [1012u16, 1013, 1014] {
        let mut ws = raw_client(&node).await;
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(b"going");
        ws.send_frame(OpCode::Close, &payload).await;
        assert_eq!(ws.expect_close_within(WAIT).await, code);
    }
}

#[tokio::test]
async fn flooding_past_the_rate_limit_gets_rate_limited_errors_then_4029() {
    let node = Node::with(&[("HERALD_RATE_LIMIT", "5"), ("HERALD_RATE_BURST", "5")]).await;
    for codec in CODECS {
        let mut c = node.client(codec).await;
        for i in 1..=50u64 {
            let f = json!({"op": "sub", "id": i, "topic": format!("flood{i}")});
            c.feed(encode(codec, &f)).await;
        }
        c.flush().await;
        let mut oks = 0;
        let mut limited = 0;
        let code = loop {
            match c.next_event().await {
                Err(code) => break code,
                Ok(f) if f["op"] == "ok" => oks += 1,
                Ok(f) => {
                    assert_eq!(f["code"], "rate_limited", "{f}");
                    assert!(f.get("id").is_none(), "rate_limited has no id: {f}");
                    limited += 1;
                }
            }
        };
        assert_eq!(code, 4029, "{}", codec_name(codec));
        assert!(
            limited >= 1,
            "rate_limited errors come before the close ({oks} ok, {limited} rate_limited)"
        );
        assert!(
            (5..50).contains(&oks),
            "the burst is served, not the flood: {oks} ok"
        );
    }
}

#[tokio::test]
async fn every_sub_and_unsub_past_the_burst_is_answered_and_only_a_continued_flood_gets_4029() {
    // The default burst (200), refilled at 1 frame/s: the frames past it are refused however
    // fast or slow the machine is. On the in-process bus and on Redis, where every sub and unsub
    // is a SUBSCRIBE or UNSUBSCRIBE round trip.
    const BURST: u64 = 200;
    let redis = RedisServer::start();
    let url = redis.url();
    let rate = [("HERALD_RATE_LIMIT", "1"), ("HERALD_RATE_BURST", "200")];
    let on_redis = [rate[0], rate[1], ("HERALD_REDIS_URL", url.as_str())];
    let nodes = [
        ("memory", Node::with(&rate).await),
        ("redis", Node::with(&on_redis).await),
    ];
    for ((bus, node), codec) in nodes.iter().flat_map(|n| CODECS.map(|c| (n, c))) {
        let case = format!("{bus}, {}", codec_name(codec));
        let topic = format!("pairs.{bus}.{}", codec_name(codec));
        let mut c = node.client(codec).await;
        // 120 sub/unsub pairs, each request waiting for its answer: 40 frames past the burst,
        // too few refused in a row for 4029.
        let mut limited = 0;
        for id in 1..=BURST + 40 {
            let op = if id % 2 == 1 { "sub" } else { "unsub" };
            let r = c
                .try_request(json!({"op": op, "id": id, "topic": topic}))
                .await
                .unwrap_or_else(|code| panic!("{case}: closed with {code} at request {id}"));
            if r["code"] == "rate_limited" {
                assert!(r.get("id").is_none(), "{case}: rate_limited has no id: {r}");
                assert!(
                    id > BURST,
                    "{case}: the burst is served, yet {id} was refused"
                );
                limited += 1;
                continue;
            }
            assert_eq!(r["id"], id, "{case}: {r}");
            // A pair whose sub was refused gets not_subscribed for its unsub, and so on.
            let refused_pair = matches!(
                r["code"].as_str(),
                Some("already_subscribed" | "not_subscribed")
            );
            assert!(
                r["op"] == "ok" || (id > BURST && refused_pair),
                "{case}: {r}"
            );
        }
        assert!(limited >= 1, "{case}: nothing past the burst was refused");
        // The flood goes on: refused frames in a row pass the burst, and the node closes.
        for id in BURST + 41..=2 * BURST + 100 {
            c.feed(encode(
                codec,
                &json!({"op": "sub", "id": id, "topic": topic}),
            ))
            .await;
        }
        c.flush().await;
        let mut limited = 0;
        let code = loop {
            match c.next_event().await {
                Err(code) => break code,
                Ok(f) if f["code"] == "rate_limited" => {
                    assert!(f.get("id").is_none(), "{case}: rate_limited has no id: {f}");
                    limited += 1;
                }
                Ok(f) => assert!(f["id"].as_u64() > Some(BURST + 40), "{case}: {f}"),
            }
        };
        assert_eq!(code, 4029, "{case}");
        assert!(limited >= 1, "{case}: rate_limited errors come before 4029");
    }
}
