//! Hub tests with plain subscribers: no sockets, no bus.

use std::future::poll_fn;
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::protocol::codec::OkFields;
use crate::protocol::websocket::{Assembler, Incoming, Step};

fn msg(offset: u64, epoch: &str) -> Message {
    Message {
        topic: Topic::parse("t").unwrap(),
        offset,
        epoch: Arc::from(epoch),
        data: Bytes::from(offset.to_string()),
    }
}

/// The frames queued for `s`, in order, read back the way its connection's writer takes them
/// ([`Outbox::poll_take`]) and decoded (JSON connections only).
async fn frames(s: &Subscriber) -> Vec<serde_json::Value> {
    let mut batch = std::collections::VecDeque::new();
    if s.outbox.is_closing() {
        return vec![];
    }
    let probe = super::Probe::new(crate::metrics::Metrics::new().unwrap());
    let mut take = |cx: &mut std::task::Context<'_>| s.outbox.poll_take(cx, &mut batch, &probe);
    let pending = poll_fn(|cx| std::task::Poll::Ready(take(cx))).await;
    if pending.is_pending() {
        return vec![];
    }
    let buf: Vec<u8> = batch.iter().flat_map(|f| f.iter().copied()).collect();
    let mut out = Vec::new();
    let mut a = Assembler::client(1 << 20);
    let mut at = 0;
    while let Ok(Step::Message(n, Incoming::Text(p))) = a.step(&buf[at..]) {
        at += n;
        out.push(serde_json::from_slice(&p).unwrap());
    }
    assert_eq!(at, buf.len(), "every byte queued is a whole text frame");
    out
}

/// Offsets of the `msg` frames queued for `s`, in order.
async fn offsets(s: &Subscriber) -> Vec<u64> {
    frames(s)
        .await
        .iter()
        .filter(|v| v["op"] == "msg")
        .map(|v| v["offset"].as_u64().unwrap())
        .collect()
}

/// The path a connection takes (`gateway::connection`): it subscribes (live messages are held
/// from then on), queues its `ok` and the replay itself, then goes live after the last position
/// it replayed. The held messages and later ones follow with no gap and no duplicate, even where
/// the replay overlaps what was held.
#[tokio::test]
async fn catch_up_queues_replay_then_held_messages_without_gap_or_duplicate() {
    let hub = Hub::new(1 << 20);
    let t = Topic::parse("t").unwrap();
    let s = hub.connect(Codec::Json);
    assert_eq!(hub.subscribe(&t, &s), Subscribed::Added);
    // Published while the replay is being read: held.
    hub.deliver(&msg(4, "e"));
    hub.deliver(&msg(5, "e"));
    // The connection queues its `ok`, then the replay it read (3..=4, overlapping the held 4).
    let ok = OkFields {
        offset: Some(4),
        epoch: Some("e"),
        recovered: Some(true),
        expires_at: None,
    };
    s.push(Codec::Json.ok(1, ok));
    let mut floor = None;
    for m in [msg(3, "e"), msg(4, "e")] {
        s.push(Codec::Json.msg(&m));
        floor = Some(Position {
            offset: m.offset,
            epoch: m.epoch.clone(),
        });
    }
    assert!(hub.go_live(&t, s.id, floor));
    hub.deliver(&msg(5, "e"));
    hub.deliver(&msg(6, "e"));
    let f = frames(&s).await;
    assert_eq!(
        (f[0]["op"].as_str(), f[0]["id"].as_u64()),
        (Some("ok"), Some(1))
    );
    let got: Vec<u64> = f[1..]
        .iter()
        .map(|v| v["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![3, 4, 5, 6], "{f:?}");
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
    hub.go_live(&t, s.id, Some(latest));
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
    assert_eq!(hub.subscribe(&t, &a), Subscribed::Added);
    assert_eq!(hub.subscribe(&t, &b), Subscribed::Added);
    assert_eq!(hub.subscribe(&t, &b), Subscribed::Already);
    assert!(hub.unsubscribe(&t, a.id));
    assert!(!hub.unsubscribe(&t, a.id));
    assert!(hub.unsubscribe(&t, b.id));
}

/// Fan-out encodes a message once per codec in use: every subscriber of a codec is queued the
/// very same bytes (one allocation, shared), not an equal copy.
#[tokio::test]
async fn one_encoding_is_shared_by_every_subscriber_of_a_codec() {
    let hub = Hub::new(1 << 20);
    let t = Topic::parse("t").unwrap();
    let json: Vec<_> = (0..3).map(|_| hub.connect(Codec::Json)).collect();
    let msgpack: Vec<_> = (0..2).map(|_| hub.connect(Codec::MsgPack)).collect();
    for s in json.iter().chain(&msgpack) {
        hub.subscribe(&t, s);
        hub.go_live(&t, s.id, None);
    }
    let m = msg(1, "e");
    hub.deliver(&m);
    let only = |s: &Subscriber| {
        let q = s.outbox.queued();
        assert_eq!(q.len(), 1, "one frame queued for {}", s.id);
        q[0].clone()
    };
    let (j, p) = (only(&json[0]), only(&msgpack[0]));
    assert_eq!(j, Codec::Json.msg(&m));
    assert_eq!(p, Codec::MsgPack.msg(&m));
    for s in &json[1..] {
        assert_eq!(
            only(s).as_ptr(),
            j.as_ptr(),
            "json subscribers share one encoding"
        );
    }
    for s in &msgpack[1..] {
        assert_eq!(
            only(s).as_ptr(),
            p.as_ptr(),
            "msgpack subscribers share one encoding"
        );
    }
    for s in &json {
        assert_eq!(offsets(s).await, vec![1]);
    }
}

/// A message with a large payload is compressed once per codec for the subscribers that
/// negotiated permessage-deflate, and they all share that frame (RSV1 set, smaller); the others
/// share the plain one. A small message goes plain to everyone.
#[tokio::test]
async fn one_compressed_frame_is_shared_by_every_deflate_subscriber_of_a_codec() {
    let hub = Hub::new(1 << 20).compressing_from(512);
    let t = Topic::parse("t").unwrap();
    let plain: Vec<_> = (0..2).map(|_| hub.connect(Codec::Json)).collect();
    let zipped: Vec<_> = (0..3).map(|_| hub.connect_deflate(Codec::Json)).collect();
    let zipped_mp = hub.connect_deflate(Codec::MsgPack);
    for s in plain.iter().chain(&zipped).chain([&zipped_mp]) {
        hub.subscribe(&t, s);
        hub.go_live(&t, s.id, None);
    }
    let text = format!(
        "[{}]",
        vec!["{\"price\":101.5,\"sym\":\"ABC\"}"; 40].join(",")
    );
    let big = Message {
        data: Bytes::from(text),
        ..msg(1, "e")
    };
    hub.deliver(&big);
    let only = |s: &Subscriber| {
        let q = s.outbox.queued();
        assert_eq!(q.len(), 1, "one frame queued for {}", s.id);
        q[0].clone()
    };
    let p = only(&plain[0]);
    assert_eq!(p, Codec::Json.msg(&big));
    assert_eq!(only(&plain[1]).as_ptr(), p.as_ptr());
    let z = only(&zipped[0]);
    assert_eq!(z[0], 0xC1, "FIN, RSV1, text");
    assert!(z.len() < p.len() / 2, "{} against {}", z.len(), p.len());
    for s in &zipped[1..] {
        assert_eq!(only(s).as_ptr(), z.as_ptr(), "one compression, shared");
    }
    let zm = only(&zipped_mp);
    assert_eq!(zm[0], 0xC2, "FIN, RSV1, binary");
    // What the deflate subscribers read inflates to what the others read.
    let mut a = Assembler::client(1 << 20).with_deflate(true);
    let Ok(Step::Message(_, Incoming::Text(t1))) = a.step(&z) else {
        panic!("a compressed text frame")
    };
    assert_eq!(&t1[..], &p[4..]);
    // A small message: the plain frame, shared by everyone.
    hub.deliver(&msg(2, "e"));
    let small = plain[0].outbox.queued()[1].clone();
    for s in zipped.iter().chain(&plain[1..]) {
        assert_eq!(s.outbox.queued()[1].as_ptr(), small.as_ptr());
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

#[tokio::test]
async fn close_user_closes_the_users_connections_that_are_selected_and_keeps_their_frames() {
    let hub = Hub::new(1 << 20);
    let (bob, alice): (Arc<str>, Arc<str>) = (Arc::from("bob"), Arc::from("alice"));
    let (a, b, c) = (
        hub.connect(Codec::Json),
        hub.connect(Codec::MsgPack),
        hub.connect(Codec::Json),
    );
    hub.attach_user(&bob, &a);
    hub.attach_user(&bob, &b);
    hub.attach_user(&alice, &c);
    assert_eq!(hub.deliver_direct("bob", None, b"1"), 2);
    // Only `a`: `b` and alice's connection stay open.
    let code = CloseCode::Disconnected;
    assert_eq!(hub.close_user("bob", code, |id| id == a.id), Some(1));
    assert_eq!(a.outbox.close_code(), Some(code.code()));
    assert!(!b.outbox.is_closing() && !c.outbox.is_closing());
    // What was queued before the order is still taken for writing, then the close.
    let mut batch = std::collections::VecDeque::new();
    let probe = hub.probe();
    let first = poll_fn(|cx| a.outbox.poll_take(cx, &mut batch, probe)).await;
    assert!(
        matches!(first, Take::Frames(_)) && batch.len() == 1,
        "{first:?}"
    );
    batch.clear();
    let then = poll_fn(|cx| a.outbox.poll_take(cx, &mut batch, probe)).await;
    assert_eq!(then, Take::Close(code));
    // Every connection of bob; a user with none here answers `None`.
    assert_eq!(hub.close_user("bob", code, |_| true), Some(2));
    assert!(b.outbox.is_closing() && !c.outbox.is_closing());
    assert_eq!(hub.close_user("carol", code, |_| true), None);
}

/// `name{labels}` in the hub's rendered metrics (0 when absent).
fn metric(hub: &Hub, name: &str, labels: &[(&str, &str)]) -> f64 {
    let s = crate::metrics::exposition::parse(&hub.metrics().render(false)).unwrap();
    crate::metrics::exposition::value(&s, name, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn a_timed_fan_out_is_recorded_when_its_first_and_last_subscribers_write_it() {
    let hub = Hub::new(1 << 20);
    let topic = Topic::parse("t").unwrap();
    let subs = [hub.connect(Codec::Json), hub.connect(Codec::MsgPack)];
    for s in &subs {
        hub.subscribe(&topic, s);
        hub.go_live(&topic, s.id, None);
    }
    hub.deliver(&msg(1, "e"));
    // Taken by the writers (each its own encoding), then written one after the other.
    let mut marks = Vec::new();
    for s in &subs {
        let mut batch = std::collections::VecDeque::new();
        let t = poll_fn(|cx| s.outbox.poll_take(cx, &mut batch, hub.probe())).await;
        let Take::Frames(Some(mark)) = t else {
            panic!("the batch holds the timed frame: {t:?}")
        };
        marks.push(mark);
    }
    let count = |which| {
        metric(
            &hub,
            "herald_publish_to_write_seconds_count",
            &[("which", which)],
        )
    };
    hub.probe().written(marks[0]);
    assert_eq!((count("first"), count("last")), (1.0, 0.0));
    hub.probe().written(marks[1]);
    assert_eq!((count("first"), count("last")), (1.0, 1.0));
    assert_eq!(metric(&hub, "herald_deliveries_total", &[]), 2.0);
    assert_eq!(metric(&hub, "herald_bus_messages_total", &[]), 1.0);
    // The next fan-out within the interval is not timed: its frames carry no mark.
    hub.deliver(&msg(2, "e"));
    let mut batch = std::collections::VecDeque::new();
    let t = poll_fn(|cx| subs[0].outbox.poll_take(cx, &mut batch, hub.probe())).await;
    assert!(matches!(t, Take::Frames(None)), "{t:?}");
}

#[test]
fn subscriptions_and_topics_are_counted_as_they_come_and_go() {
    let hub = Hub::new(1 << 20);
    let (a, b) = (hub.connect(Codec::Json), hub.connect(Codec::Json));
    let (t1, t2) = (Topic::parse("t1").unwrap(), Topic::parse("t2").unwrap());
    hub.subscribe(&t1, &a);
    hub.subscribe(&t1, &b);
    hub.subscribe(&t2, &a);
    assert_eq!(hub.subscribe(&t2, &a), Subscribed::Already);
    let now = |name| metric(&hub, name, &[]);
    assert_eq!(
        (now("herald_subscriptions"), now("herald_topics")),
        (3.0, 2.0)
    );
    assert_eq!(now("herald_connections"), 2.0);
    hub.unsubscribe(&t1, a.id);
    hub.unsubscribe(&t2, a.id);
    assert!(!hub.unsubscribe(&t2, a.id));
    assert_eq!(
        (now("herald_subscriptions"), now("herald_topics")),
        (1.0, 1.0)
    );
}

#[tokio::test]
async fn close_ids_closes_the_named_connections_still_open_and_no_others() {
    let hub = Hub::new(1 << 20);
    let (a, b, c) = (
        hub.connect(Codec::Json),
        hub.connect(Codec::MsgPack),
        hub.connect(Codec::Json),
    );
    let mut ids = hub.ids();
    ids.sort_unstable();
    let mut want = vec![a.id, b.id, c.id];
    want.sort_unstable();
    assert_eq!(ids, want, "every open connection, once");
    // `c` went away meanwhile: it is not counted.
    hub.disconnect(c.id);
    assert_eq!(hub.close_ids(&[a.id, c.id], CloseCode::Restarting), 1);
    assert_eq!(a.outbox.close_code(), Some(CloseCode::Restarting.code()));
    assert!(!b.outbox.is_closing() && !c.outbox.is_closing());
}

#[test]
fn a_connection_keeps_the_hubs_own_topic_name_not_a_copy_of_it() {
    let hub = Hub::new(1 << 20);
    let (a, b) = (hub.connect(Codec::Json), hub.connect(Codec::Json));
    let first = Topic::parse("room.1").unwrap();
    hub.subscribe(&first, &a);
    // Another connection's own parse of the same name: equal, but a string of its own.
    let second = Topic::parse("room.1").unwrap();
    hub.subscribe(&second, &b);
    let kept = hub.shared_name(&second);
    assert_eq!(kept, second);
    assert!(Arc::ptr_eq(kept.as_arc(), first.as_arc()));
    // A topic without local subscribers is kept as it is.
    let other = Topic::parse("room.2").unwrap();
    assert!(Arc::ptr_eq(
        hub.shared_name(&other).as_arc(),
        other.as_arc()
    ));
}

#[test]
fn a_users_connections_leave_in_any_order_and_the_rest_stay_reachable() {
    let hub = Hub::new(1 << 20);
    let user: Arc<str> = Arc::from("many");
    let subs: Vec<_> = (0..6).map(|_| hub.connect(Codec::Json)).collect();
    for (i, s) in subs.iter().enumerate() {
        assert_eq!(hub.attach_user(&user, s), i == 0);
    }
    let mut left: Vec<u64> = subs.iter().map(|s| s.id).collect();
    for i in [1, 5, 0, 3, 2, 4] {
        let last = hub.detach_user(&user, &subs[i]);
        left.retain(|id| *id != subs[i].id);
        assert_eq!(last, left.is_empty());
        // Leaving twice changes nothing.
        assert!(!hub.detach_user(&user, &subs[i]) || left.is_empty());
        let reached = hub.deliver_direct("many", None, b"1");
        assert_eq!(reached, left.len());
        for s in &subs {
            let queued = !s.outbox.queued().is_empty();
            let should = left.contains(&s.id);
            assert!(!should || queued, "connection {} still attached", s.id);
        }
    }
}
