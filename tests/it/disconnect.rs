//! `POST /v1/disconnect` (proto/README.md section 4.5): a backend closes every connection of a
//! user, or one of them, with 4003, on whichever node it is; through Redis across nodes (and
//! with `FCALL herald_disconnect` from a backend); bad requests are refused and close nothing.

use herald::auth::RawGrants;
use serde_json::{Value, json};

use crate::support::redis::RedisServer;
use crate::support::{API_KEY, CODECS, Client, Codec, Node, WAIT};

/// 4003, `disconnected`.
const DISCONNECTED: u16 = 4003;

/// A `/ws` client of `user` with every grant, and its connection id (from its `welcome`).
async fn connect(node: &Node, codec: Codec, user: &str) -> (Client, String) {
    let ticket = node.ticket_for(user, &RawGrants::all()).await;
    let mut c = node.open(&format!("/ws?ticket={ticket}"), codec).await;
    let w = c.next_frame().await;
    assert_eq!(
        (w["op"].as_str(), w["user"].as_str()),
        (Some("welcome"), Some(user)),
        "{w}"
    );
    let conn = w["conn"]
        .as_str()
        .expect("welcome names the connection")
        .to_owned();
    (c, conn)
}

/// `POST /v1/disconnect` with `body` and the API key; its answer, which must be 200.
async fn disconnect(node: &Node, body: Value) -> Value {
    let (status, out) = node
        .http
        .post("/v1/disconnect", Some(API_KEY), &body.to_string())
        .await;
    assert_eq!(status, 200, "POST /v1/disconnect {body}: {out}");
    out
}

/// The connection is open: a request gets its answer.
async fn answers(c: &mut Client, id: u64) {
    let r = c
        .request(json!({"op": "unsub", "id": id, "topic": "none"}))
        .await;
    assert_eq!(r["code"], "not_subscribed", "{r}");
}

#[tokio::test]
async fn disconnect_closes_every_connection_of_the_user_with_4003_and_a_new_ticket_still_connects()
{
    let node = Node::start().await;
    let (mut bob_json, _) = connect(&node, CODECS[0], "bob").await;
    let (mut bob_mp, _) = connect(&node, CODECS[1], "bob").await;
    let (mut alice, _) = connect(&node, Codec::Json, "alice").await;
    let out = disconnect(&node, json!({"user": "bob"})).await;
    assert_eq!(out, json!({"nodes": 1}), "this node held bob's connections");
    assert_eq!(bob_json.expect_close().await, DISCONNECTED);
    assert_eq!(bob_mp.expect_close().await, DISCONNECTED);
    answers(&mut alice, 1).await;
    // Once their tasks have ended, nobody is left to close: no node holds a connection of bob.
    node.until(WAIT, "bob's connections end", |gw| {
        gw.hub.connections() == 1
    })
    .await;
    assert_eq!(
        disconnect(&node, json!({"user": "bob"})).await,
        json!({"nodes": 0})
    );
    // Future tickets are not revoked: bob comes back, and directed messages reach him again.
    let (mut bob, _) = connect(&node, Codec::Json, "bob").await;
    let body = json!({"user": "bob", "data": {"back": true}}).to_string();
    assert_eq!(
        node.http.post("/v1/publish", Some(API_KEY), &body).await.0,
        200
    );
    assert_eq!(
        bob.next_frame().await,
        json!({"op": "direct", "data": {"back": true}})
    );
}

#[tokio::test]
async fn disconnect_with_conn_closes_only_that_connection_and_the_others_keep_receiving() {
    let node = Node::start().await;
    let (mut first, first_id) = connect(&node, Codec::Json, "bob").await;
    let (mut second, _) = connect(&node, Codec::MsgPack, "bob").await;
    let (mut alice, alice_id) = connect(&node, Codec::Json, "alice").await;
    second.sub(1, "news").await;
    alice.sub(1, "news").await;
    // Alice's connection named with user bob: not bob's, so nothing closes.
    let out = disconnect(&node, json!({"user": "bob", "conn": alice_id})).await;
    assert_eq!(out, json!({"nodes": 1}));
    let out = disconnect(&node, json!({"user": "bob", "conn": first_id})).await;
    assert_eq!(out, json!({"nodes": 1}));
    assert_eq!(first.expect_close().await, DISCONNECTED);
    let (offset, _) = node.publish("news", json!({"after": "the order"})).await;
    for c in [&mut second, &mut alice] {
        let m = c.next_msg("news").await;
        assert_eq!(
            (m["offset"].as_u64(), &m["data"]),
            (Some(offset), &json!({"after": "the order"}))
        );
    }
}

#[tokio::test]
async fn a_disconnect_posted_to_one_node_closes_the_users_connections_on_another_through_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = Node::with(&[("HERALD_REDIS_URL", &url)]).await;
    let b = Node::with(&[("HERALD_REDIS_URL", &url)]).await;
    let (mut on_b, on_b_id) = connect(&b, Codec::Json, "bob").await;
    let (mut also_on_b, _) = connect(&b, Codec::MsgPack, "bob").await;
    let (mut on_a, _) = connect(&a, Codec::Json, "bob").await;
    also_on_b.sub(1, "news").await;
    on_a.sub(1, "news").await;
    // One connection on node B, posted to node A: both nodes hold bob, and got the order.
    let out = disconnect(&a, json!({"user": "bob", "conn": on_b_id})).await;
    assert_eq!(out, json!({"nodes": 2}));
    assert_eq!(on_b.expect_close().await, DISCONNECTED);
    let (offset, _) = a.publish("news", json!(1)).await;
    for c in [&mut also_on_b, &mut on_a] {
        assert_eq!(c.next_msg("news").await["offset"].as_u64(), Some(offset));
    }
    // Every connection of bob, on both nodes.
    assert_eq!(
        disconnect(&a, json!({"user": "bob"})).await,
        json!({"nodes": 2})
    );
    assert_eq!(also_on_b.expect_close().await, DISCONNECTED);
    assert_eq!(on_a.expect_close().await, DISCONNECTED);
    // A backend does the same through Redis alone, as proto/redis.md says.
    let (mut carol, _) = connect(&b, Codec::Json, "carol").await;
    let out = redis.cli(&["FCALL", "herald_disconnect", "1", "carol"]);
    assert_eq!(out.trim(), "1", "one node held carol's connection: {out}");
    assert_eq!(carol.expect_close().await, DISCONNECTED);
    let refused = redis.cli(&["FCALL", "herald_disconnect", "1", "carol", "not an id"]);
    assert!(refused.contains("bad connection id"), "{refused}");
}

#[tokio::test]
async fn disconnect_refuses_a_missing_or_wrong_key_and_a_bad_body_and_closes_nothing() {
    let node = Node::start().await;
    let (mut bob, _) = connect(&node, Codec::Json, "bob").await;
    let body = json!({"user": "bob"}).to_string();
    let refusal = |(status, out): (u16, Value)| (status, out["error"].as_str().map(str::to_owned));
    let no_key = node
        .http
        .post_authorization("/v1/disconnect", None, &body)
        .await;
    assert_eq!(refusal(no_key), (401, Some("missing_authorization".into())));
    let wrong = format!("{API_KEY}x");
    let wrong_key = node.http.post("/v1/disconnect", Some(&wrong), &body).await;
    assert_eq!(refusal(wrong_key), (401, Some("invalid_api_key".into())));
    // A JWT is not an API key.
    let jwt = node.jwt("bob", &RawGrants::all());
    let jwt_key = node.http.post("/v1/disconnect", Some(&jwt), &body).await;
    assert_eq!(refusal(jwt_key), (401, Some("invalid_api_key".into())));
    let long = "b".repeat(256);
    for (bad, why) in [
        ("".to_owned(), "no body"),
        ("not json".to_owned(), "not JSON"),
        (r#"{"user": "bob""#.to_owned(), "cut short"),
        ("[\"bob\"]".to_owned(), "not an object"),
        ("{}".to_owned(), "no user"),
        (r#"{"user": 7}"#.to_owned(), "a user that is not a string"),
        (r#"{"user": ""}"#.to_owned(), "an empty user"),
        (r#"{"user": "b o b"}"#.to_owned(), "a space in the user"),
        (json!({"user": long}).to_string(), "a user over 255 bytes"),
        (
            r#"{"user": "bob", "connn": "x"}"#.to_owned(),
            "a misspelt conn",
        ),
        (r#"{"user": "bob", "conn": ""}"#.to_owned(), "an empty conn"),
        (
            r#"{"user": "bob", "conn": "a b"}"#.to_owned(),
            "a conn no node names",
        ),
    ] {
        let (status, out) = node.http.post("/v1/disconnect", Some(API_KEY), &bad).await;
        assert_eq!(
            (status, out["error"].as_str()),
            (400, Some("bad_request")),
            "{why}: {out}"
        );
        assert!(out["message"].is_string(), "{why}: {out}");
    }
    let huge = json!({"user": "bob", "conn": "x".repeat(5000)}).to_string();
    let (status, out) = node.http.post("/v1/disconnect", Some(API_KEY), &huge).await;
    assert_eq!(
        (status, out["error"].as_str()),
        (413, Some("payload_too_large")),
        "{out}"
    );
    // None of these closed bob's connection.
    answers(&mut bob, 1).await;
}
