//! Fan-out: every subscriber gets every message of its topics once, in offset order, with the
//! same data whatever its codec (proto/README.md sections 6.3 and 7.1).

use serde_json::{Value, json};

use crate::support::{Codec, Node, codec_name, grants};

fn payload(i: u64) -> Value {
    json!({"i": i, "text": format!("message {i}"), "f": 0.5, "tags": ["a", null, true], "neg": -3})
}

#[tokio::test]
async fn every_subscriber_receives_each_message_once_in_offset_order_in_any_codec() {
    let node = Node::start().await;
    let topic = "prices.EUR_USD.tick";
    let mut subs = Vec::new();
    for codec in [Codec::Json, Codec::MsgPack, Codec::Json] {
        let mut c = node.client(codec).await;
        let ok = c.sub(1, topic).await;
        assert_eq!(ok["offset"], 0);
        subs.push(c);
    }
    // A subscriber of another topic receives none of these.
    let mut bystander = node.client(Codec::MsgPack).await;
    bystander.sub(1, "prices.GBP_USD.tick").await;

    // 200 messages: the odd ones through HTTP, the even ones through a client's `pub`, in turn.
    let mut publisher = node
        .client_for(Codec::MsgPack, "pub", &grants(&[], &["prices.>"], &[]))
        .await;
    for i in 1..=200u64 {
        if i % 2 == 1 {
            let (offset, _) = node.publish(topic, payload(i)).await;
            assert_eq!(offset, i);
        } else {
            let ok = publisher
                .request(json!({"op": "pub", "id": i, "topic": topic, "data": payload(i)}))
                .await;
            assert_eq!(
                (ok["op"].as_str(), ok["offset"].as_u64()),
                (Some("ok"), Some(i)),
                "{ok}"
            );
        }
    }
    let mut epoch = None;
    for c in &mut subs {
        let msgs = c.expect_offsets(topic, 1..=200).await;
        for (m, i) in msgs.iter().zip(1u64..) {
            assert_eq!(m["data"], payload(i), "{}: {m}", codec_name(c.codec));
            let e = epoch.get_or_insert_with(|| m["epoch"].clone());
            assert_eq!(&m["epoch"], e, "{m}");
        }
    }
    // Nothing more for anyone: a marker published now is the next frame each one sees.
    node.publish(topic, json!("end")).await;
    node.publish("prices.GBP_USD.tick", json!("own")).await;
    for c in &mut subs {
        assert_eq!(c.next_msg(topic).await["offset"], 201);
    }
    let m = bystander.next_frame().await;
    assert_eq!(
        (m["topic"].as_str(), m["data"].as_str()),
        (Some("prices.GBP_USD.tick"), Some("own")),
        "{m}"
    );
}

#[tokio::test]
async fn one_connection_gets_each_of_its_topics_in_offset_order() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let node = Node::start().await;
        let mut c = node.client(codec).await;
        c.sub(1, "a").await;
        c.sub(2, "b").await;
        for i in 0..50 {
            node.publish(if i % 3 == 0 { "b" } else { "a" }, json!(i))
                .await;
        }
        let (mut last_a, mut last_b) = (0, 0);
        for _ in 0..50 {
            let m = c.next_frame().await;
            let offset = m["offset"].as_u64().expect("a msg");
            let last = match m["topic"].as_str() {
                Some("a") => &mut last_a,
                Some("b") => &mut last_b,
                _ => panic!("unexpected frame {m}"),
            };
            assert_eq!(offset, *last + 1, "{m}");
            *last = offset;
        }
        assert_eq!((last_a, last_b), (33, 17));
    }
}

#[tokio::test]
async fn topic_endpoint_sends_welcome_then_only_its_topic_messages() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let node = Node::start().await;
        let ticket = node
            .ticket_for("gina", &grants(&["news.>"], &[], &[]))
            .await;
        let mut c = node
            .open(&format!("/topics/news.eu?ticket={ticket}"), codec)
            .await;
        let w = c.next_frame().await;
        assert_eq!(
            (w["op"].as_str(), w["user"].as_str()),
            (Some("welcome"), Some("gina")),
            "{w}"
        );
        // "Already subscribed": once the welcome is here, nothing published is missed.
        for i in 1..=20u64 {
            node.publish("news.eu", json!({"n": i})).await;
            node.publish("news.us", json!({"n": i})).await;
        }
        let msgs = c.expect_offsets("news.eu", 1..=20).await;
        for (m, i) in msgs.iter().zip(1u64..) {
            assert_eq!(m["data"], json!({"n": i}), "{}: {m}", codec_name(codec));
        }
    }
}
