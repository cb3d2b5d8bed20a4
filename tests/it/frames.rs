//! The requests of `/ws` and their replies, in both codecs (proto/README.md section 6).

use serde_json::json;

use crate::support::{CODECS, Node, codec_name, grants};

#[tokio::test]
async fn welcome_comes_first_with_conn_node_user_and_ping() {
    let node = Node::with(&[("HERALD_PING_INTERVAL_SECS", "7")]).await;
    for codec in CODECS {
        let ticket = node.ticket_for("bob", &grants(&[">"], &[], &[])).await;
        let mut c = node.open(&format!("/ws?ticket={ticket}"), codec).await;
        // A request sent at once is answered after the welcome.
        c.send_json(json!({"op": "sub", "id": 1, "topic": "news"}))
            .await;
        let w = c.next_frame().await;
        assert_eq!(w["op"], "welcome", "{codec:?}: {w}");
        assert!(w["conn"].as_str().is_some_and(|s| !s.is_empty()), "{w}");
        assert_eq!(w["node"], crate::support::NODE_ID, "{w}");
        assert_eq!(w["user"], "bob", "{w}");
        assert_eq!(w["ping"], 7, "{w}");
        assert_eq!(c.next_frame().await["op"], "ok");
    }
}

#[tokio::test]
async fn sub_is_answered_with_latest_offset_and_epoch_and_no_recovered() {
    for codec in CODECS {
        let node = Node::start().await;
        let mut c = node.client(codec).await;
        let ok = c.sub(1, "fresh").await;
        assert_eq!(ok["id"], 1, "{ok}");
        assert_eq!(ok["offset"], 0, "nothing published yet: {ok}");
        assert!(ok["epoch"].is_string(), "{ok}");
        assert!(
            ok.get("recovered").is_none(),
            "no since, no recovered: {ok}"
        );

        node.publish("used", json!(1)).await;
        let (_, epoch) = node.publish("used", json!(2)).await;
        let ok = c.sub(2, "used").await;
        assert_eq!(
            (ok["offset"].as_u64(), ok["epoch"].as_str()),
            (Some(2), Some(epoch.as_str()))
        );
        assert!(ok.get("recovered").is_none(), "{ok}");
    }
}

#[tokio::test]
async fn client_pub_is_answered_with_offset_and_epoch_and_delivered_as_msg() {
    for codec in CODECS {
        let node = Node::start().await;
        let mut sub = node.client(codec).await;
        sub.sub(1, "chat.room1").await;
        let mut publisher = node
            .client_for(codec, "carol", &grants(&[], &["chat.*"], &[]))
            .await;
        let data = json!({"text": "hi", "n": 3, "f": 1.5, "list": [true, null, "x"]});
        let ok = publisher
            .request(json!({"op": "pub", "id": 9, "topic": "chat.room1", "data": data}))
            .await;
        assert_eq!(ok["op"], "ok", "{ok}");
        assert_eq!(ok["offset"], 1, "{ok}");
        let m = sub.next_msg("chat.room1").await;
        assert_eq!(m["offset"], 1, "{m}");
        assert_eq!(m["epoch"], ok["epoch"], "{m}");
        assert_eq!(m["data"], data, "{}: {m}", codec_name(codec));
        // `null` is a valid payload.
        let ok = publisher
            .request(json!({"op": "pub", "id": 10, "topic": "chat.room1", "data": null}))
            .await;
        assert_eq!(ok["offset"], 2, "{ok}");
        let m = sub.next_msg("chat.room1").await;
        assert!(m["data"].is_null(), "{m}");
    }
}

#[tokio::test]
async fn pub_outside_publish_grants_is_forbidden_with_its_id() {
    for codec in CODECS {
        let node = Node::start().await;
        let mut c = node
            .client_for(codec, "dave", &grants(&[">"], &["chat.*"], &[]))
            .await;
        for topic in ["news", "chat.room1.typing"] {
            let r = c
                .request(json!({"op": "pub", "id": 5, "topic": topic, "data": 1}))
                .await;
            assert_eq!(
                (r["op"].as_str(), r["code"].as_str()),
                (Some("error"), Some("forbidden")),
                "{r}"
            );
            assert_eq!(r["id"], 5, "{r}");
            assert!(r["message"].is_string(), "{r}");
        }
        // Nothing was published.
        let (offset, _) = node.publish("news", json!(1)).await;
        assert_eq!(offset, 1);
    }
}

#[tokio::test]
async fn sub_outside_subscribe_grants_is_forbidden() {
    for codec in CODECS {
        let node = Node::start().await;
        let mut c = node
            .client_for(codec, "erin", &grants(&["news.>"], &[">"], &[]))
            .await;
        for topic in ["news", "admin.logs"] {
            let r = c
                .request(json!({"op": "sub", "id": 3, "topic": topic}))
                .await;
            assert_eq!(
                (r["op"].as_str(), r["code"].as_str()),
                (Some("error"), Some("forbidden")),
                "{r}"
            );
            assert_eq!(r["id"], 3, "{r}");
        }
        c.sub(4, "news.eu").await;
    }
}

#[tokio::test]
async fn unsub_is_ok_and_stops_delivery() {
    for codec in CODECS {
        let node = Node::start().await;
        let mut c = node.client(codec).await;
        c.sub(1, "a").await;
        c.sub(2, "b").await;
        let ok = c
            .request(json!({"op": "unsub", "id": 3, "topic": "a"}))
            .await;
        assert_eq!(ok, json!({"op": "ok", "id": 3}), "only op and id");
        node.publish("a", json!("gone")).await;
        node.publish("b", json!("here")).await;
        // The next frame is b's message: a's was not delivered.
        let m = c.next_frame().await;
        assert_eq!(
            (m["op"].as_str(), m["topic"].as_str()),
            (Some("msg"), Some("b")),
            "{m}"
        );
    }
}

#[tokio::test]
async fn unsub_of_a_topic_not_subscribed_is_not_subscribed() {
    for codec in CODECS {
        let node = Node::start().await;
        let mut c = node.client(codec).await;
        let r = c
            .request(json!({"op": "unsub", "id": 4, "topic": "never"}))
            .await;
        assert_eq!(
            (r["code"].as_str(), r["id"].as_u64()),
            (Some("not_subscribed"), Some(4)),
            "{r}"
        );
        // Another connection's subscription does not count as this one's.
        let mut other = node.client(codec).await;
        other.sub(1, "theirs").await;
        let r = c
            .request(json!({"op": "unsub", "id": 5, "topic": "theirs"}))
            .await;
        assert_eq!(r["code"], "not_subscribed", "{r}");
        // Unsubscribing twice.
        c.sub(6, "mine").await;
        c.request(json!({"op": "unsub", "id": 7, "topic": "mine"}))
            .await;
        let r = c
            .request(json!({"op": "unsub", "id": 8, "topic": "mine"}))
            .await;
        assert_eq!(r["code"], "not_subscribed", "{r}");
    }
}

#[tokio::test]
async fn second_sub_to_a_topic_is_already_subscribed_and_changes_nothing() {
    for codec in CODECS {
        let node = Node::start().await;
        let mut c = node.client(codec).await;
        c.sub(1, "news").await;
        let r = c
            .request(json!({"op": "sub", "id": 2, "topic": "news"}))
            .await;
        assert_eq!(
            (r["code"].as_str(), r["id"].as_u64()),
            (Some("already_subscribed"), Some(2)),
            "{r}"
        );
        node.publish("news", json!(1)).await;
        node.publish("news", json!(2)).await;
        // Still exactly one subscription: each message once.
        c.expect_offsets("news", 1..=2).await;
        let r = c
            .request(json!({"op": "unsub", "id": 3, "topic": "news"}))
            .await;
        assert_eq!(r["op"], "ok", "{r}");
    }
}

#[tokio::test]
async fn sub_past_max_subscriptions_is_forbidden() {
    for codec in CODECS {
        let node = Node::with(&[("HERALD_MAX_SUBSCRIPTIONS", "2")]).await;
        let mut c = node.client(codec).await;
        c.sub(1, "t1").await;
        c.sub(2, "t2").await;
        let r = c
            .request(json!({"op": "sub", "id": 3, "topic": "t3"}))
            .await;
        assert_eq!(
            (r["code"].as_str(), r["id"].as_u64()),
            (Some("forbidden"), Some(3)),
            "{r}"
        );
        // An unsub frees a place.
        c.request(json!({"op": "unsub", "id": 4, "topic": "t1"}))
            .await;
        c.sub(5, "t3").await;
    }
}

#[tokio::test]
async fn send_to_a_granted_name_is_unknown_service_and_outside_grants_is_forbidden() {
    for codec in CODECS {
        let node = Node::start().await;
        let mut c = node
            .client_for(codec, "frank", &grants(&[], &[], &["orders"]))
            .await;
        let r = c
            .request(json!({"op": "send", "id": 11, "to": "orders", "data": {"qty": 2}}))
            .await;
        assert_eq!(
            (r["code"].as_str(), r["id"].as_u64()),
            (Some("unknown_service"), Some(11)),
            "{r}"
        );
        let r = c
            .request(json!({"op": "send", "id": 12, "to": "billing", "data": 1}))
            .await;
        assert_eq!(
            (r["code"].as_str(), r["id"].as_u64()),
            (Some("forbidden"), Some(12)),
            "{r}"
        );
    }
}
