//! Micro-benchmarks of the hot path without sockets: encoding a `msg` frame once per codec,
//! decoding client requests, and the hub's fan-out into outboxes (the per-delivery cost before
//! any syscall). Run: `cargo bench --bench codec`. Prints ns per operation; bounded loops only.

use std::future::poll_fn;
use std::hint::black_box;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use herald::hub::Hub;
use herald::protocol::{Codec, Message, Topic};

fn time<F: FnMut()>(name: &str, iters: u64, per: u64, mut f: F) {
    for _ in 0..iters / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    let ns = t.elapsed().as_nanos() as f64 / (iters * per) as f64;
    println!("{name:<52} {ns:>9.1} ns");
}

fn message(size: usize) -> Message {
    let pad = "x".repeat(size.saturating_sub(40));
    Message {
        topic: Topic::parse("bench.0").unwrap(),
        offset: 123_456,
        epoch: Arc::from("a1b2c3d40"),
        data: Bytes::from(format!(r#"{{"t":1234567890123,"s":42,"p":"{pad}"}}"#)),
    }
}

fn main() {
    // `cargo test --all-targets` runs this without `--bench`, unoptimised: timings would mean
    // nothing there, so only `cargo bench` measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("codec benchmarks: run them with `cargo bench --bench codec`");
        return;
    }
    let m = message(100);
    time(
        "encode msg frame, JSON (100 B payload)",
        1_000_000,
        1,
        || {
            black_box(Codec::Json.msg(black_box(&m)));
        },
    );
    time(
        "encode msg frame, MessagePack (100 B payload)",
        300_000,
        1,
        || {
            black_box(Codec::MsgPack.msg(black_box(&m)));
        },
    );
    let sub = br#"{"op":"sub","id":17,"topic":"chat.room-1","since":{"offset":41,"epoch":"e1"}}"#;
    time("decode sub request, JSON", 300_000, 1, || {
        black_box(Codec::Json.decode(black_box(sub), false).unwrap());
    });
    let v: serde_json::Value = serde_json::from_slice(sub).unwrap();
    let sub_mp = rmp_serde::to_vec_named(&v).unwrap();
    time("decode sub request, MessagePack", 300_000, 1, || {
        black_box(Codec::MsgPack.decode(black_box(&sub_mp), true).unwrap());
    });

    // Fan-out into 10,000 outboxes, then drain them as the connection tasks would.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let n = 10_000u64;
        let hub = Hub::new(1 << 30);
        let topic = m.topic.clone();
        let subs: Vec<_> = (0..n)
            .map(|i| hub.connect_as(Codec::Json, false, i + 1))
            .collect();
        for s in &subs {
            hub.subscribe(&topic, s);
            hub.go_live(&topic, s.id, None);
        }
        let rounds = 50u64;
        let t = Instant::now();
        for i in 0..rounds {
            let mut msg = m.clone();
            msg.offset = i + 1;
            hub.deliver(&msg);
        }
        let push_ns = t.elapsed().as_nanos() as f64 / (rounds * n) as f64;
        println!(
            "{:<52} {push_ns:>9.1} ns",
            "fan-out: queue one delivery (10,000 subscribers)"
        );
        let mut batch = std::collections::VecDeque::new();
        let t = Instant::now();
        for s in &subs {
            let mut take =
                |cx: &mut std::task::Context<'_>| s.outbox.poll_take(cx, &mut batch, hub.probe());
            let _ = poll_fn(|cx| Poll::Ready(take(cx))).await;
            let n: usize = batch.iter().map(|f| f.len()).sum();
            batch.clear();
            s.outbox.written(n);
        }
        let drain_ns = t.elapsed().as_nanos() as f64 / (rounds * n) as f64;
        println!(
            "{:<52} {drain_ns:>9.1} ns",
            "drain: take one connection's queued frames for writing"
        );
    });
}
