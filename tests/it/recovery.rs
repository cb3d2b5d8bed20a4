//! Recovery with `since`: exactly the missed messages, then live ones, no gap and no duplicate;
//! or `recovered: false` and nothing replayed (proto/README.md section 7).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use crate::support::{CODECS, Client, Node, WAIT, codec_name};

/// Publishes `n` messages to `topic`; returns the epoch.
async fn publish_n(node: &Node, topic: &str, n: u64) -> String {
    let mut epoch = String::new();
    for i in 0..n {
        epoch = node.publish(topic, json!({"n": i})).await.1;
    }
    epoch
}

/// After a `recovered: false`, the next message must be the next one published (nothing replayed).
async fn only_new_messages_follow(node: &Node, c: &mut Client, topic: &str, latest: u64) {
    node.publish(topic, json!("new")).await;
    let m = c.next_msg(topic).await;
    assert_eq!(
        m["offset"],
        latest + 1,
        "no replay after recovered:false: {m}"
    );
    assert_eq!(m["data"], "new", "{m}");
}

#[tokio::test]
async fn since_in_the_current_epoch_replays_the_missed_messages_then_goes_live() {
    for codec in CODECS {
        let node = Node::start().await;
        let epoch = publish_n(&node, "news", 10).await;
        let mut c = node.client(codec).await;
        let ok = c.sub_since(1, "news", 4, &epoch).await;
        assert_eq!(ok["op"], "ok", "{ok}");
        assert_eq!(ok["recovered"], true, "{}: {ok}", codec_name(codec));
        assert_eq!(
            (ok["offset"].as_u64(), ok["epoch"].as_str()),
            (Some(10), Some(epoch.as_str()))
        );
        let replayed = c.expect_offsets("news", 5..=10).await;
        for (m, i) in replayed.iter().zip(4u64..) {
            assert_eq!(m["data"], json!({"n": i}), "{m}");
            assert_eq!(m["epoch"], epoch.as_str());
        }
        for i in 10..15 {
            node.publish("news", json!({"n": i})).await;
        }
        c.expect_offsets("news", 11..=15).await;
    }
}

#[tokio::test]
async fn since_the_latest_offset_or_zero_is_recovered() {
    for codec in CODECS {
        let node = Node::start().await;
        let epoch = publish_n(&node, "news", 3).await;
        let mut c = node.client(codec).await;
        // Nothing missed: recovered, nothing replayed, then live.
        let ok = c.sub_since(1, "news", 3, &epoch).await;
        assert_eq!(
            (ok["recovered"].as_bool(), ok["offset"].as_u64()),
            (Some(true), Some(3)),
            "{ok}"
        );
        only_new_messages_follow(&node, &mut c, "news", 3).await;
        // Offset 0 asks for the whole history.
        let mut c = node.client(codec).await;
        let ok = c.sub_since(1, "news", 0, &epoch).await;
        assert_eq!(ok["recovered"], true, "{ok}");
        c.expect_offsets("news", 1..=4).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_while_messages_are_published_concurrently_is_contiguous() {
    for codec in CODECS {
        let node = Arc::new(Node::start().await);
        let epoch = publish_n(&node, "ticks", 50).await;
        let published = Arc::new(AtomicU64::new(50));
        let publisher = {
            let (node, published) = (node.clone(), published.clone());
            tokio::spawn(async move {
                for i in 0..500 {
                    let (offset, _) = node.publish("ticks", json!({"live": i})).await;
                    published.store(offset, Ordering::SeqCst);
                }
            })
        };
        // Subscribe once the publisher is under way.
        let deadline = tokio::time::Instant::now() + WAIT;
        while published.load(Ordering::SeqCst) < 80 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the publisher is stuck"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let mut c = node.client(codec).await;
        let ok = c.sub_since(1, "ticks", 20, &epoch).await;
        assert_eq!(ok["recovered"], true, "{}: {ok}", codec_name(codec));
        let at_sub = ok["offset"].as_u64().unwrap();
        assert!(at_sub >= 80, "{ok}");
        tokio::time::timeout(WAIT * 6, publisher)
            .await
            .expect("the publisher finishes")
            .expect("the publisher did not fail");
        // Every offset from 21 to 550, once, in order, across the replay/live boundary.
        c.expect_offsets("ticks", 21..=550).await;
    }
}

#[tokio::test]
async fn since_with_another_epoch_is_not_recovered_and_only_new_messages_follow() {
    for codec in CODECS {
        let node = Node::start().await;
        publish_n(&node, "news", 5).await;
        let mut c = node.client(codec).await;
        let ok = c.sub_since(1, "news", 3, "not-the-epoch").await;
        assert_eq!(ok["op"], "ok", "not an error: {ok}");
        assert_eq!(
            (ok["recovered"].as_bool(), ok["offset"].as_u64()),
            (Some(false), Some(5)),
            "{ok}"
        );
        only_new_messages_follow(&node, &mut c, "news", 5).await;
    }
}

#[tokio::test]
async fn since_beyond_the_latest_offset_is_not_recovered() {
    for codec in CODECS {
        let node = Node::start().await;
        let epoch = publish_n(&node, "news", 5).await;
        let mut c = node.client(codec).await;
        let ok = c.sub_since(1, "news", 9, &epoch).await;
        assert_eq!(
            (ok["recovered"].as_bool(), ok["offset"].as_u64()),
            (Some(false), Some(5)),
            "{ok}"
        );
        only_new_messages_follow(&node, &mut c, "news", 5).await;
    }
}

#[tokio::test]
async fn since_older_than_the_history_is_not_recovered_and_never_partially_replayed() {
    for codec in CODECS {
        let node = Node::with(&[("HERALD_HISTORY_SIZE", "5")]).await;
        let epoch = publish_n(&node, "news", 10).await;
        // History holds 6..=10: since 4 would need 5.
        let mut c = node.client(codec).await;
        let ok = c.sub_since(1, "news", 4, &epoch).await;
        assert_eq!(
            (ok["recovered"].as_bool(), ok["offset"].as_u64()),
            (Some(false), Some(10)),
            "{ok}"
        );
        only_new_messages_follow(&node, &mut c, "news", 10).await;
        // Since 6 (needs 7..=11, all kept) is recovered.
        let mut c = node.client(codec).await;
        let ok = c.sub_since(1, "news", 6, &epoch).await;
        assert_eq!(ok["recovered"], true, "{ok}");
        c.expect_offsets("news", 7..=11).await;
    }
}

#[tokio::test]
async fn topic_endpoint_with_since_and_epoch_replays_then_goes_live() {
    for codec in CODECS {
        let node = Node::start().await;
        let epoch = publish_n(&node, "news.eu", 10).await;
        let ticket = node.ticket().await;
        let path = format!("/topics/news.eu?since=4&epoch={epoch}&ticket={ticket}");
        let mut c = node.open(&path, codec).await;
        assert_eq!(c.next_frame().await["op"], "welcome");
        c.expect_offsets("news.eu", 5..=10).await;
        node.publish("news.eu", json!("live")).await;
        let m = c.next_msg("news.eu").await;
        assert_eq!(
            (m["offset"].as_u64(), m["data"].as_str()),
            (Some(11), Some("live")),
            "{m}"
        );

        // With another epoch: nothing replayed, live from the next message.
        let ticket = node.ticket().await;
        let path = format!("/topics/news.eu?since=4&epoch=other&ticket={ticket}");
        let mut c = node.open(&path, codec).await;
        assert_eq!(c.next_frame().await["op"], "welcome");
        only_new_messages_follow(&node, &mut c, "news.eu", 11).await;
    }
}

#[tokio::test]
async fn since_past_any_offset_a_store_holds_is_not_recovered_and_a_non_integer_is_bad_request() {
    let redis = crate::support::redis::RedisServer::start();
    let url = redis.url();
    for (bus, env) in [
        ("memory", vec![]),
        ("redis", vec![("HERALD_REDIS_URL", url.as_str())]),
    ] {
        let node = Node::with(&env).await;
        let epoch = publish_n(&node, "far", 3).await;
        let mut latest = 3;
        for codec in CODECS {
            let mut c = node.client(codec).await;
            // Integers in 0..=2^64-1: past 2^53 (Lua's exact doubles), 10^19, the largest u64.
            for (id, offset) in [
                (1, (1u64 << 53) + 1),
                (2, 10_000_000_000_000_000_000),
                (3, u64::MAX),
            ] {
                let ok = c.sub_since(id, "far", offset, &epoch).await;
                assert_eq!(
                    (
                        ok["op"].as_str(),
                        ok["recovered"].as_bool(),
                        ok["offset"].as_u64()
                    ),
                    (Some("ok"), Some(false), Some(latest)),
                    "{bus} {}: since {offset}: {ok}",
                    codec_name(codec)
                );
                let r = c
                    .request(json!({"op": "unsub", "id": 10 + id, "topic": "far"}))
                    .await;
                assert_eq!(r["op"], "ok", "{r}");
            }
            c.sub_since(4, "far", u64::MAX, &epoch).await;
            only_new_messages_follow(&node, &mut c, "far", latest).await;
            latest += 1;
        }
        // Not an integer of 0..=2^64-1 (JSON reads 1e19 and 2^64 as floats): a clear error, and
        // the connection goes on.
        let mut c = node.client(CODECS[0]).await;
        for (id, offset) in [
            (1, "1e19"),
            (2, "18446744073709551616"),
            (3, "-1"),
            (4, "1.5"),
        ] {
            let frame = format!(
                r#"{{"op":"sub","id":{id},"topic":"far","since":{{"offset":{offset},"epoch":"{epoch}"}}}}"#
            );
            c.send(tokio_tungstenite::tungstenite::Message::text(frame))
                .await;
            let e = c.next_frame().await;
            assert_eq!(
                (e["op"].as_str(), e["id"].as_u64(), e["code"].as_str()),
                (Some("error"), Some(id), Some("bad_request")),
                "{bus}: since.offset {offset}: {e}"
            );
        }
        let ok = c.sub(5, "far").await;
        assert_eq!(ok["offset"], latest, "{bus}: {ok}");
        // The same on /topics/{topic}: the largest u64 is not recovered, 1e19 is a 400.
        let ticket = node.ticket().await;
        let path = format!(
            "/topics/far?since={}&epoch={epoch}&ticket={ticket}",
            u64::MAX
        );
        let mut t = node.open(&path, CODECS[0]).await;
        assert_eq!(t.next_frame().await["op"], "welcome");
        only_new_messages_follow(&node, &mut t, "far", latest).await;
        let ticket = node.ticket().await;
        let path = format!("/topics/far?since=1e19&epoch={epoch}&ticket={ticket}");
        let refused = crate::support::raw::upgrade(node.addr, &path, &[]).await;
        assert_eq!(refused.status, 400, "{bus}");
        assert_eq!(
            refused.body["error"], "bad_request",
            "{bus}: {:?}",
            refused.body
        );
    }
}

/// `herald_replay_pages_total` from the node's `/metrics`.
async fn replay_pages(node: &Node) -> u64 {
    let m = node.metrics().await;
    m.text
        .lines()
        .find_map(|l| l.strip_prefix("herald_replay_pages_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no herald_replay_pages_total in {}", m.text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_is_replayed_page_by_page_in_order_while_publishing_goes_on() {
    const BEFORE: u64 = 4500;
    const DURING: u64 = 300;
    let redis = crate::support::redis::RedisServer::start();
    let url = redis.url();
    for (bus, mut env) in [
        ("memory", vec![]),
        ("redis", vec![("HERALD_REDIS_URL", url.as_str())]),
    ] {
        env.push(("HERALD_HISTORY_SIZE", "10000"));
        let node = Arc::new(Node::with(&env).await);
        let mut epoch = String::new();
        for chunk in (1..=BEFORE).collect::<Vec<_>>().chunks(100) {
            let publishes = chunk.iter().map(|i| node.publish("long", json!({"i": i})));
            epoch = futures_util::future::join_all(publishes)
                .await
                .pop()
                .unwrap()
                .1;
        }
        let pages_before = replay_pages(&node).await;
        let mut c = node.client(CODECS[0]).await;
        // Publishing goes on while the replay is read and queued.
        let publisher = {
            let node = node.clone();
            tokio::spawn(async move {
                for i in BEFORE + 1..=BEFORE + DURING {
                    node.publish("long", json!({"i": i})).await;
                }
            })
        };
        let ok = c.sub_since(1, "long", 0, &epoch).await;
        assert_eq!(ok["recovered"], true, "{bus}: {ok}");
        c.expect_offsets("long", 1..=BEFORE + DURING).await;
        publisher.await.unwrap();
        let pages = replay_pages(&node).await - pages_before;
        // 4500 in pages of at most 1000: at least five reads.
        assert!(pages > BEFORE / 1000, "{bus}: {pages} pages");
    }
}

#[tokio::test]
async fn past_history_bytes_the_oldest_history_of_any_topic_goes_and_resuming_before_it_is_not_recovered()
 {
    // 64 KiB of history for the whole node: about 55 entries of a 1000-byte payload.
    let node = Node::with(&[("HERALD_HISTORY_BYTES", "65536")]).await;
    let pad = "x".repeat(1000);
    let mut live = node.client(CODECS[1]).await;
    live.sub(1, "busy").await;
    let mut quiet = String::new();
    for i in 1..=20 {
        quiet = node.publish("quiet", json!({"i": i, "pad": pad})).await.1;
    }
    let mut busy = String::new();
    for i in 1..=100 {
        busy = node.publish("busy", json!({"i": i, "pad": pad})).await.1;
    }
    // The live subscriber lost nothing.
    live.expect_offsets("busy", 1..=100).await;
    let mut c = node.client(CODECS[0]).await;
    // The quiet topic's history was the oldest: all gone, honestly.
    let ok = c.sub_since(1, "quiet", 0, &quiet).await;
    assert_eq!(
        (&ok["recovered"], &ok["offset"]),
        (&json!(false), &json!(20)),
        "{ok}"
    );
    // The busy topic keeps its most recent messages, not its oldest.
    let ok = c.sub_since(2, "busy", 0, &busy).await;
    assert_eq!(ok["recovered"], false, "{ok}");
    let mut d = node.client(CODECS[0]).await;
    let ok = d.sub_since(1, "busy", 70, &busy).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    d.expect_offsets("busy", 71..=100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_whose_next_page_is_gone_closes_with_1012_after_the_pages_it_had() {
    // Pages of 1000 messages of 32 KiB: far more than the outbox and the socket buffers hold,
    // so the first page is still being queued while the history moves on under it.
    let redis = crate::support::redis::RedisServer::start();
    let url = redis.url();
    let pad = "x".repeat(32 << 10);
    for (bus, mut env) in [
        ("memory", vec![]),
        ("redis", vec![("HERALD_REDIS_URL", url.as_str())]),
    ] {
        env.push(("HERALD_HISTORY_SIZE", "1001"));
        let node = Arc::new(Node::with(&env).await);
        let mut epoch = String::new();
        for chunk in (1..=1001).collect::<Vec<u64>>().chunks(50) {
            let publishes = chunk
                .iter()
                .map(|i| node.publish("moving", json!({"i": i, "pad": pad})));
            epoch = futures_util::future::join_all(publishes)
                .await
                .pop()
                .unwrap()
                .1;
        }
        let mut c = node.client(CODECS[0]).await;
        let ok = c.sub_since(1, "moving", 0, &epoch).await;
        assert_eq!(ok["recovered"], true, "{bus}: {ok}");
        // While the client has read nothing, the history loses 1001 (the second page).
        if bus == "memory" {
            for i in 0..1001 {
                node.publish("moving", json!(i)).await;
            }
        } else {
            redis.cli(&["DEL", "herald:{moving}:log", "herald:{moving}:meta"]);
        }
        c.expect_offsets("moving", 1..=1000).await;
        let code = c.expect_close().await;
        assert_eq!(code, 1012, "{bus}: resume with since, never a gap");
    }
}
