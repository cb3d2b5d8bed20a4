//! Every malformed frame gets an `error` naming what was wrong, and the connection goes on
//! (proto/README.md sections 5.2, 6.1 and 6.4).

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::ws::encode;
use crate::support::{CODECS, Client, Codec, Node, codec_name};

/// The next frame must be an `error` with `code`, with `id` exactly when `id` is `Some`.
async fn expect_error(c: &mut Client, code: &str, id: Option<u64>, what: &str) -> Value {
    let e = c.next_frame().await;
    assert_eq!(e["op"], "error", "{what}: {e}");
    assert_eq!(e["code"], code, "{what}: {e}");
    match id {
        Some(id) => assert_eq!(e["id"], id, "{what}: {e}"),
        None => assert!(e.get("id").is_none(), "{what}: no id expected: {e}"),
    }
    assert!(e["message"].is_string(), "{what}: {e}");
    e
}

/// Proves the connection still works: a `sub` gets its `ok`.
async fn still_works(c: &mut Client, id: u64) {
    let ok = c.sub(id, &format!("alive{id}")).await;
    assert_eq!(ok["id"], id);
}

#[tokio::test]
async fn malformed_payload_is_bad_frame_without_id_and_the_connection_survives() {
    let node = Node::start().await;
    for codec in CODECS {
        let mut c = node.client(codec).await;
        let garbage: Vec<Message> = match codec {
            Codec::Json => vec![
                Message::text("{\"op\":\"sub\",\"id\":1,"),
                Message::text("not json"),
                Message::text(""),
            ],
            // 0xc1 is never used in MessagePack; 0x85 announces a map of 5 and ends.
            Codec::MsgPack => vec![
                Message::binary(vec![0xc1]),
                Message::binary(vec![0x85, 0xa2, b'o', b'p']),
                Message::binary(Vec::new()),
            ],
        };
        for (i, m) in garbage.into_iter().enumerate() {
            c.send(m).await;
            expect_error(&mut c, "bad_frame", None, codec_name(codec)).await;
            still_works(&mut c, i as u64 + 1).await;
        }
    }
}

#[tokio::test]
async fn wrong_frame_type_for_the_subprotocol_is_bad_frame() {
    let node = Node::start().await;
    let sub = json!({"op": "sub", "id": 1, "topic": "news"});
    // Binary on json (even holding valid JSON), text on msgpack (even holding valid JSON).
    for (codec, m) in [
        (Codec::Json, Message::binary(sub.to_string().into_bytes())),
        (Codec::Json, encode(Codec::MsgPack, &sub)),
        (Codec::MsgPack, Message::text(sub.to_string())),
    ] {
        let mut c = node.client(codec).await;
        c.send(m).await;
        expect_error(&mut c, "bad_frame", None, codec_name(codec)).await;
        still_works(&mut c, 2).await;
    }
}

/// Frames with a valid id whose fields are wrong: `bad_request` carrying the id.
#[tokio::test]
async fn malformed_request_with_a_valid_id_is_bad_request_with_that_id() {
    let long = "a".repeat(256);
    let cases = [
        (
            "unknown op",
            json!({"op": "subscribe", "id": 21, "topic": "news"}),
        ),
        ("missing op", json!({"id": 21, "topic": "news"})),
        ("op not a string", json!({"op": 1, "id": 21})),
        ("missing topic", json!({"op": "sub", "id": 21})),
        (
            "topic not a string",
            json!({"op": "sub", "id": 21, "topic": ["news"]}),
        ),
        (
            "pattern * in sub",
            json!({"op": "sub", "id": 21, "topic": "news.*"}),
        ),
        (
            "pattern > in sub",
            json!({"op": "sub", "id": 21, "topic": "news.>"}),
        ),
        (
            "pattern in unsub",
            json!({"op": "unsub", "id": 21, "topic": ">"}),
        ),
        (
            "pattern in pub",
            json!({"op": "pub", "id": 21, "topic": "a.*", "data": 1}),
        ),
        ("empty topic", json!({"op": "sub", "id": 21, "topic": ""})),
        (
            "bad topic ..",
            json!({"op": "sub", "id": 21, "topic": "bad..name"}),
        ),
        (
            "bad topic /",
            json!({"op": "sub", "id": 21, "topic": "news/eu"}),
        ),
        (
            "topic too long",
            json!({"op": "sub", "id": 21, "topic": long}),
        ),
        (
            "pub without data",
            json!({"op": "pub", "id": 21, "topic": "news"}),
        ),
        (
            "send without to",
            json!({"op": "send", "id": 21, "data": 1}),
        ),
        (
            "send to a bad name",
            json!({"op": "send", "id": 21, "to": "a b", "data": 1}),
        ),
        (
            "since null",
            json!({"op": "sub", "id": 21, "topic": "n", "since": null}),
        ),
        (
            "since a number",
            json!({"op": "sub", "id": 21, "topic": "n", "since": 4}),
        ),
        (
            "since without epoch",
            json!({"op": "sub", "id": 21, "topic": "n", "since": {"offset": 4}}),
        ),
        (
            "since without offset",
            json!({"op": "sub", "id": 21, "topic": "n", "since": {"epoch": "e"}}),
        ),
        (
            "since offset negative",
            json!({"op": "sub", "id": 21, "topic": "n", "since": {"offset": -1, "epoch": "e"}}),
        ),
        (
            "since offset a string",
            json!({"op": "sub", "id": 21, "topic": "n", "since": {"offset": "4", "epoch": "e"}}),
        ),
        (
            "since offset a float",
            json!({"op": "sub", "id": 21, "topic": "n", "since": {"offset": 4.5, "epoch": "e"}}),
        ),
        (
            "since epoch a number",
            json!({"op": "sub", "id": 21, "topic": "n", "since": {"offset": 4, "epoch": 1}}),
        ),
    ];
    let node = Node::start().await;
    for codec in CODECS {
        let mut c = node.client(codec).await;
        for (i, (what, frame)) in cases.iter().enumerate() {
            c.send_json(frame.clone()).await;
            let what = format!("{what} ({})", codec_name(codec));
            expect_error(&mut c, "bad_request", Some(21), &what).await;
            if i % 8 == 0 {
                still_works(&mut c, 100 + i as u64).await;
            }
        }
        still_works(&mut c, 99).await;
    }
}

/// Frames whose id is missing or invalid: `bad_request` without id, and not carried out.
#[tokio::test]
async fn missing_or_invalid_id_is_bad_request_without_id() {
    let node = Node::start().await;
    for codec in CODECS {
        let mut c = node.client(codec).await;
        let ids = vec![
            None,
            Some(json!(0)),
            Some(json!(-1)),
            Some(json!(1.0)),
            Some(json!("1")),
            Some(json!(null)),
            Some(json!(9007199254740992u64)),
        ];
        for id in ids {
            let mut f = json!({"op": "sub", "topic": "never"});
            if let Some(id) = &id {
                f["id"] = id.clone();
            }
            c.send_json(f).await;
            let what = format!("id {id:?} ({})", codec_name(codec));
            expect_error(&mut c, "bad_request", None, &what).await;
        }
        if codec == Codec::Json {
            // Written with an exponent: not an integer on the wire.
            c.send(Message::text(r#"{"op":"sub","id":1e0,"topic":"never"}"#))
                .await;
            expect_error(&mut c, "bad_request", None, "id 1e0").await;
        }
        // Not a map at all.
        c.send_json(json!([1, 2])).await;
        expect_error(&mut c, "bad_request", None, "an array frame").await;
        // None of those `sub`s took effect: subscribing now is not `already_subscribed`.
        c.sub(1, "never").await;
        // The largest valid id works.
        let ok = c.sub(9007199254740991, "largest").await;
        assert_eq!(ok["id"], 9007199254740991u64);
    }
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let node = Node::start().await;
    for codec in CODECS {
        let mut c = node.client(codec).await;
        let r = c
            .request(json!({
                "op": "sub", "id": 1, "topic": "news", "extra": {"x": 1},
                "since": {"offset": 0, "epoch": "whatever", "more": true},
            }))
            .await;
        assert_eq!(r["op"], "ok", "{r}");
    }
}

#[tokio::test]
async fn any_frame_on_the_topic_endpoint_is_bad_request_without_id_and_it_survives() {
    let node = Node::start().await;
    for codec in CODECS {
        let ticket = node.ticket().await;
        let topic = format!("ro.{}", codec_name(codec));
        let mut c = node
            .open(&format!("/topics/{topic}?ticket={ticket}"), codec)
            .await;
        assert_eq!(c.next_frame().await["op"], "welcome");
        let garbage = match codec {
            Codec::Json => Message::text("not json"),
            Codec::MsgPack => Message::binary(vec![0xc1]),
        };
        let frames = [
            encode(codec, &json!({"op": "sub", "id": 7, "topic": "other"})),
            encode(
                codec,
                &json!({"op": "pub", "id": 8, "topic": topic, "data": 1}),
            ),
            encode(codec, &json!({"hello": "there"})),
            garbage,
        ];
        let mut errors = Vec::new();
        for f in frames {
            c.send(f.clone()).await;
            let e = c.next_frame().await;
            assert_eq!(e["op"], "error", "{f:?}: {e}");
            errors.push((f, e));
        }
        // Still subscribed, and the frames had no effect (the pub published nothing).
        let (offset, _) = node.publish(&topic, json!("after")).await;
        assert_eq!(offset, 1, "the client's pub on /topics was not carried out");
        let m = c.next_msg(&topic).await;
        assert_eq!(m["offset"], 1, "{m}");
        // "dropped unread and answered with {"op":"error","code":"bad_request",...} (no id)".
        let wrong: Vec<String> = errors
            .iter()
            .filter(|(_, e)| e["code"] != "bad_request" || e.get("id").is_some())
            .map(|(f, e)| format!("{f:?} -> {e}"))
            .collect();
        assert!(wrong.is_empty(), "{}: {wrong:#?}", codec_name(codec));
    }
}

/// JSON nested `depth` arrays deep.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

#[tokio::test]
async fn payloads_nested_deeper_than_every_codec_reads_are_refused_and_none_reaches_a_subscriber_as_null()
 {
    let node = Node::start().await;
    // Over HTTP: 400 before it is stored.
    let deep = format!(
        "{{\"topic\":\"deep\",\"data\":{}}}",
        "[".repeat(200) + &"]".repeat(200)
    );
    let (status, body) = node
        .http
        .post("/v1/publish", Some(crate::support::API_KEY), &deep)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    // Over the socket, from either codec (MessagePack reads deeper than JSON does).
    for codec in CODECS {
        let mut c = node.client(codec).await;
        let frame = json!({"op": "pub", "id": 7, "topic": "deep", "data": nested(101)});
        c.send(encode(codec, &frame)).await;
        expect_error(&mut c, "bad_request", Some(7), codec_name(codec)).await;
    }
    // At the limit, subscribers of both codecs get the payload itself.
    for codec in CODECS {
        let mut sub = node.client(codec).await;
        sub.sub(1, "deep").await;
        node.publish("deep", nested(100)).await;
        let m = sub.next_frame().await;
        assert_eq!(m["data"], nested(100), "not null: {}", codec_name(codec));
    }
}

#[tokio::test]
async fn a_flood_of_subscriptions_past_max_subscriptions_gets_forbidden_each_and_holds_nothing() {
    let node = Node::with(&[("HERALD_MAX_SUBSCRIPTIONS", "8")]).await;
    let mut c = node.client(Codec::Json).await;
    for i in 0..8 {
        c.sub(i + 1, &format!("flood.{i}")).await;
    }
    // 100 more, sent at once without waiting for an answer (under the frame rate's burst).
    for i in 8..108u64 {
        c.send_json(json!({"op": "sub", "id": i + 1, "topic": format!("flood.{i}")}))
            .await;
    }
    for i in 8..108u64 {
        let e = expect_error(&mut c, "forbidden", Some(i + 1), "sub past the limit").await;
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("subscription limit (8)"),
            "{e}"
        );
    }
    // None of them took hold: a message to a refused topic does not arrive, one to a held
    // topic does, and freeing one slot lets one more in.
    node.publish("flood.50", json!("refused")).await;
    node.publish("flood.0", json!("held")).await;
    let m = c.next_msg("flood.0").await;
    assert_eq!(m["data"], "held");
    let r = c
        .request(json!({"op": "unsub", "id": 500, "topic": "flood.0"}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    c.sub(501, "flood.50").await;
    node.publish("flood.50", json!("now held")).await;
    let m = c.next_msg("flood.50").await;
    assert_eq!(m["data"], "now held");
}
