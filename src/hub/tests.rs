//! Hub tests with plain subscribers: no sockets, no bus.

use std::future::poll_fn;
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::protocol::websocket::{Assembler, Incoming, Step};

fn msg(offset: u64, epoch: &str) -> Message {
    Message {
        topic: Topic::parse("t").unwrap(),
        offset,
        epoch: Arc::from(epoch),
        data: Bytes::from(offset.to_string()),
    }
}

/// Offsets of the `msg` frames queued for `s`, in order.
async fn offsets(s: &Subscriber) -> Vec<u64> {
    let mut buf = Vec::new();
    if s.outbox.is_closing() {
        return vec![];
    }
    let pending =
        poll_fn(|cx| std::task::Poll::Ready(s.outbox.poll_take(cx, &mut buf, usize::MAX))).await;
    if pending.is_pending() {
        return vec![];
    }
    let mut out = Vec::new();
    let mut a = Assembler::client(1 << 20);
    let mut at = 0;
    while let Ok(Step::Message(n, Incoming::Text(p))) = a.step(&buf[at..]) {
        at += n;
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        if v["op"] == "msg" {
            out.push(v["offset"].as_u64().unwrap());
        }
    }
    out
}

#[tokio::test]
async fn catch_up_queues_replay_then_held_messages_without_gap_or_duplicate() {
    let hub = Hub::new(1 << 20);
    let t = Topic::parse("t").unwrap();
    let s = hub.connect(Codec::Json);
    assert_eq!(hub.subscribe(&t, &s), Subscribed::Added { first: true });
    // Published while the replay is being read: held.
    hub.deliver(&msg(4, "e"));
    hub.deliver(&msg(5, "e"));
    // The replay read overlaps the held messages (3..=4).
    let since = Position {
        offset: 2,
        epoch: Arc::from("e"),
    };
    hub.go_live(&t, s.id, None, vec![msg(3, "e"), msg(4, "e")], Some(since));
    hub.deliver(&msg(5, "e"));
    hub.deliver(&msg(6, "e"));
    assert_eq!(offsets(&s).await, vec![3, 4, 5, 6]);
}

#[tokio::test]
async fn a_new_epoch_is_delivered_even_with_lower_offsets() {
    let hub = Hub::new(1 << 20);
    let t = Topic::parse("t").unwrap();
    let s = hub.connect(Codec::Json);
    hub.subscribe(&t, &s);
    let latest = Position {
        offset: 9,
        epoch: Arc::from("old"),
    };
    hub.go_live(&t, s.id, None, vec![], Some(latest));
    hub.deliver(&msg(9, "old"));
    hub.deliver(&msg(1, "new"));
    assert_eq!(offsets(&s).await, vec![1]);
}

#[tokio::test]
async fn first_and_last_subscriber_are_reported_once() {
    let hub = Hub::new(1 << 20);
    let t = Topic::parse("t").unwrap();
    let a = hub.connect(Codec::Json);
    let b = hub.connect(Codec::MsgPack);
    assert_eq!(hub.subscribe(&t, &a), Subscribed::Added { first: true });
    assert_eq!(hub.subscribe(&t, &b), Subscribed::Added { first: false });
    assert_eq!(hub.subscribe(&t, &b), Subscribed::Already);
    assert_eq!(hub.unsubscribe(&t, a.id), Some(false));
    assert_eq!(hub.unsubscribe(&t, a.id), None);
    assert_eq!(hub.unsubscribe(&t, b.id), Some(true));
}

#[tokio::test]
async fn one_encoding_is_shared_by_every_subscriber_of_a_codec() {
    let hub = Hub::new(1 << 20);
    let t = Topic::parse("t").unwrap();
    let subs: Vec<_> = (0..3).map(|_| hub.connect(Codec::Json)).collect();
    for s in &subs {
        hub.subscribe(&t, s);
        hub.go_live(&t, s.id, None, vec![], None);
    }
    hub.deliver(&msg(1, "e"));
    for s in &subs {
        assert_eq!(offsets(s).await, vec![1]);
    }
}

#[tokio::test]
async fn close_topic_closes_only_that_topics_subscribers() {
    let hub = Hub::new(1 << 20);
    let (t, other) = (Topic::parse("t").unwrap(), Topic::parse("u").unwrap());
    let (a, b, c) = (
        hub.connect(Codec::Json),
        hub.connect(Codec::MsgPack),
        hub.connect(Codec::Json),
    );
    hub.subscribe(&t, &a);
    hub.subscribe(&t, &b);
    hub.subscribe(&other, &c);
    assert_eq!(hub.close_topic(&t, CloseCode::Restarting), 2);
    assert!(a.outbox.is_closing() && b.outbox.is_closing());
    assert!(!c.outbox.is_closing());
    assert_eq!(
        hub.close_topic(&Topic::parse("none").unwrap(), CloseCode::Restarting),
        0
    );
}
