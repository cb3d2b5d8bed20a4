//! `POST /v1/publish` and the health endpoints (proto/README.md sections 4.4, 4.6 and 4.7).

use serde_json::{Value, json};

use crate::support::{API_KEY, Codec, Node};

fn assert_error(got: (u16, Value), status: u16, code: &str) {
    let (s, body) = got;
    assert_eq!((s, body["error"].as_str()), (status, Some(code)), "{body}");
    assert!(body["message"].is_string(), "{body}");
}

#[tokio::test]
async fn publish_answers_offset_and_epoch_counting_from_one_per_topic() {
    let node = Node::start().await;
    let (o1, e1) = node.publish("news", json!({"headline": "one"})).await;
    let (o2, e2) = node.publish("news", json!("two")).await;
    let (other, _) = node.publish("sport", json!([1, 2])).await;
    assert_eq!((o1, o2, other), (1, 2, 1));
    assert_eq!(e1, e2, "one epoch for a topic while the node runs");
    assert!(!e1.is_empty());
}

#[tokio::test]
async fn publish_with_null_data_is_accepted_and_delivered_as_null() {
    let node = Node::start().await;
    let mut c = node.client(Codec::Json).await;
    c.sub(1, "news").await;
    let body = r#"{"topic": "news", "data": null}"#;
    let (status, out) = node.http.post("/v1/publish", Some(API_KEY), body).await;
    assert_eq!((status, out["offset"].as_u64()), (200, Some(1)), "{out}");
    let m = c.next_msg("news").await;
    assert!(m.get("data").is_some_and(Value::is_null), "{m}");
}

#[tokio::test]
async fn publish_with_wrong_api_key_is_401_invalid_api_key() {
    let node = Node::start().await;
    let body = json!({"topic": "news", "data": 1}).to_string();
    let wrong = format!("{API_KEY}x");
    assert_error(
        node.http.post("/v1/publish", Some(&wrong), &body).await,
        401,
        "invalid_api_key",
    );
    // A JWT is not an API key.
    let jwt = node.jwt("alice", &herald::auth::RawGrants::all());
    assert_error(
        node.http.post("/v1/publish", Some(&jwt), &body).await,
        401,
        "invalid_api_key",
    );
}

#[tokio::test]
async fn publish_without_or_with_non_bearer_authorization_is_401() {
    let node = Node::start().await;
    let body = json!({"topic": "news", "data": 1}).to_string();
    assert_error(
        node.http
            .post_authorization("/v1/publish", None, &body)
            .await,
        401,
        "missing_authorization",
    );
    let basic = format!("Basic {API_KEY}");
    assert_error(
        node.http
            .post_authorization("/v1/publish", Some(&basic), &body)
            .await,
        401,
        "bad_authorization",
    );
}

#[tokio::test]
async fn publish_with_malformed_body_is_400_bad_request() {
    let node = Node::start().await;
    for body in [
        "",
        "not json",
        "[1, 2]",
        "\"news\"",
        r#"{"data": 1}"#,
        r#"{"topic": "news"}"#,
        r#"{"topic": 7, "data": 1}"#,
        r#"{"topic": "news", "data": 1"#,
    ] {
        let (status, out) = node.http.post("/v1/publish", Some(API_KEY), body).await;
        assert_eq!(
            (status, out["error"].as_str()),
            (400, Some("bad_request")),
            "body {body:?}: {out}"
        );
    }
}

#[tokio::test]
async fn publish_to_a_malformed_topic_is_400_bad_topic() {
    let node = Node::start().await;
    let long = "a".repeat(256);
    for topic in [
        "",
        "bad..name",
        "news.*",
        "news.>",
        "news/eu",
        "café",
        &long,
    ] {
        let body = json!({"topic": topic, "data": 1}).to_string();
        let (status, out) = node.http.post("/v1/publish", Some(API_KEY), &body).await;
        assert_eq!(
            (status, out["error"].as_str()),
            (400, Some("bad_topic")),
            "topic {topic:?}: {out}"
        );
    }
}

#[tokio::test]
async fn publish_body_over_max_message_bytes_is_413_payload_too_large() {
    let node = Node::with(&[("HERALD_MAX_MESSAGE_BYTES", "1024")]).await;
    let body = json!({"topic": "news", "data": "x".repeat(2000)}).to_string();
    assert_error(
        node.http.post("/v1/publish", Some(API_KEY), &body).await,
        413,
        "payload_too_large",
    );
    // Under the limit it goes through.
    let body = json!({"topic": "news", "data": "x".repeat(900)}).to_string();
    let (status, out) = node.http.post("/v1/publish", Some(API_KEY), &body).await;
    assert_eq!(status, 200, "{out}");
}

#[tokio::test]
async fn healthz_readyz_are_200_and_metrics_count_connections() {
    let node = Node::start().await;
    let _c = node.client(Codec::Json).await;
    assert_eq!(node.http.get("/healthz").await.status, 200);
    assert_eq!(node.http.get("/readyz").await.status, 200);
    let m = node.metrics().await;
    assert_eq!(m.status, 200);
    assert!(
        m.text.lines().any(|l| l.starts_with("herald_connections ")),
        "{}",
        m.text
    );
}
