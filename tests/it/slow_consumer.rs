//! A client that stops reading is closed with 4008 once its outbox bound is passed, and loses
//! nothing when it reconnects with `since` (proto/README.md sections 5.6 and 7.2).

use herald::protocol::websocket::{Incoming, OpCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::raw::{connect_small, upgrade_on};
use crate::support::ws::encode;
use crate::support::{CODECS, Codec, Node, WAIT, codec_name};

/// Payload bytes per published message, and the total published while the client does not read.
const PAD: usize = 16 * 1024;
const TOTAL: usize = 20 << 20;

fn decode(codec: Codec, m: &Incoming) -> Option<Value> {
    match (codec, m) {
        (Codec::Json, Incoming::Text(t)) => Some(serde_json::from_slice(t).expect("JSON")),
        (Codec::MsgPack, Incoming::Binary(b)) => Some(rmp_serde::from_slice(b).expect("msgpack")),
        (_, Incoming::Ping(_) | Incoming::Pong) => None,
        (_, other) => panic!("unexpected {other:?} on {}", codec_name(codec)),
    }
}

/// What a stalled client saw: the last offset it read before its 4008, the last offset
/// published meanwhile, and the topic's epoch.
struct Stalled {
    last_read: u64,
    last_published: u64,
    epoch: String,
}

/// Subscribes a raw client to `topic`, stops reading while ~20 MB are published, then resumes:
/// checks the frames that were on their way are contiguous from offset 1 and end with 4008.
async fn stall_until_4008(node: &Node, codec: Codec, topic: &str) -> Stalled {
    // A small receive buffer, so the socket fills long before the 20 MB are out.
    let ticket = node.ticket().await;
    let stream = connect_small(node.addr, 64 * 1024).await;
    let mut ws = upgrade_on(
        stream,
        node.addr,
        &format!("/ws?ticket={ticket}"),
        &[("Sec-WebSocket-Protocol", codec.subprotocol())],
    )
    .await
    .into_ws();
    assert_eq!(ws.next_frame().await["op"], "welcome");
    let (opcode, payload) = match encode(codec, &json!({"op": "sub", "id": 1, "topic": topic})) {
        Message::Text(t) => (OpCode::Text, t.as_bytes().to_vec()),
        Message::Binary(b) => (OpCode::Binary, b.to_vec()),
        other => unreachable!("{other:?}"),
    };
    ws.send_frame(opcode, &payload).await;
    let ok = ws.next_frame().await;
    assert_eq!(
        (ok["op"].as_str(), ok["offset"].as_u64()),
        (Some("ok"), Some(0)),
        "{ok}"
    );
    let epoch = ok["epoch"].as_str().expect("an epoch").to_owned();

    // The client reads nothing while ~20 MB are published.
    let pad = "x".repeat(PAD);
    let mut last_published = 0;
    for _ in 0..TOTAL / PAD {
        last_published = node.publish(topic, json!({"pad": pad})).await.0;
    }

    // Resuming: the frames that were on their way, contiguous from 1, then 4008.
    let mut last_read = 0;
    let code = loop {
        match ws.next_incoming_within(WAIT).await {
            Incoming::Close(code) => break code.expect("a close code"),
            m => {
                if let Some(f) = decode(codec, &m) {
                    assert_eq!(f["op"], "msg", "{f}");
                    assert_eq!(f["offset"], last_read + 1, "no gap before the close");
                    last_read += 1;
                }
            }
        }
    };
    assert_eq!(code, 4008, "{}", codec_name(codec));
    assert!(
        last_read < last_published,
        "the client was cut off before the end"
    );
    Stalled {
        last_read,
        last_published,
        epoch,
    }
}

fn node_env() -> [(&'static str, &'static str); 3] {
    [
        ("HERALD_OUTBOX_BYTES", "65536"),
        // An outbox must hold at least one message of the largest size.
        ("HERALD_MAX_MESSAGE_BYTES", "32768"),
        ("HERALD_HISTORY_SIZE", "100000"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_is_closed_with_4008_after_the_frames_on_their_way() {
    let node = Node::with(&node_env()).await;
    for codec in CODECS {
        stall_until_4008(&node, codec, &format!("firehose.{}", codec_name(codec))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_reconnecting_with_since_gets_every_later_offset() {
    let node = Node::with(&node_env()).await;
    for codec in CODECS {
        let topic = format!("firehose.{}", codec_name(codec));
        let s = stall_until_4008(&node, codec, &topic).await;
        // A new ticket, `since` = the last offset read: every later offset, no gap.
        let mut c = node.client(codec).await;
        let since = json!({"offset": s.last_read, "epoch": s.epoch});
        c.send_json(json!({"op": "sub", "id": 1, "topic": topic, "since": since}))
            .await;
        let missed = s.last_published - s.last_read;
        let ok = c.next_event().await.unwrap_or_else(|code| {
            panic!(
                "{}: closed with {code} before the ok; the replay is {missed} messages of \
                 {PAD} bytes (offsets {}..={})",
                codec_name(codec),
                s.last_read + 1,
                s.last_published
            )
        });
        assert_eq!(
            (ok["op"].as_str(), ok["recovered"].as_bool()),
            (Some("ok"), Some(true)),
            "{}: {ok}",
            codec_name(codec)
        );
        c.expect_offsets(&topic, s.last_read + 1..=s.last_published)
            .await;
    }
}
