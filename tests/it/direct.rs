//! Directed messages to one user (`POST /v1/publish` with `user`): every connection of that
//! user gets a `direct` frame, in either codec; nobody else does.

use serde_json::json;

use crate::support::{API_KEY, CODECS, Node, grants};

#[tokio::test]
async fn a_directed_message_reaches_every_connection_of_its_user_and_nobody_else() {
    let n = Node::start().await;
    let all = grants(&[">"], &[">"], &[]);
    let mut bob_json = n.client_for(CODECS[0], "bob", &all).await;
    let mut bob_mp = n.client_for(CODECS[1], "bob", &all).await;
    let mut alice = n.client_for(CODECS[0], "alice", &all).await;
    let body = json!({"user": "bob", "from": "billing", "data": {"due": 12}}).to_string();
    let (status, out) = n.http.post("/v1/publish", Some(API_KEY), &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out, json!({"sent": true}));
    for c in [&mut bob_json, &mut bob_mp] {
        let f = c.next_frame().await;
        assert_eq!(
            f,
            json!({"op": "direct", "from": "billing", "data": {"due": 12}})
        );
    }
    // Without `from`, the frame has none.
    let body = json!({"user": "bob", "data": [1]}).to_string();
    assert_eq!(
        n.http.post("/v1/publish", Some(API_KEY), &body).await.0,
        200
    );
    assert_eq!(
        bob_json.next_frame().await,
        json!({"op": "direct", "data": [1]})
    );
    // alice got nothing: the next frame she sees is the reply to her own request.
    let r = alice
        .request(json!({"op": "unsub", "id": 9, "topic": "x"}))
        .await;
    assert_eq!(r["code"], "not_subscribed", "{r}");
}

#[tokio::test]
async fn a_publish_body_must_name_exactly_one_target() {
    let n = Node::start().await;
    for (body, why) in [
        (json!({"topic": "a", "user": "bob", "data": 1}), "both"),
        (json!({"data": 1}), "neither"),
        (json!({"user": "b o b", "data": 1}), "a space in the user"),
        (
            json!({"user": "bob", "from": "x y", "data": 1}),
            "a space in from",
        ),
    ] {
        let (status, out) = n
            .http
            .post("/v1/publish", Some(API_KEY), &body.to_string())
            .await;
        assert_eq!(status, 400, "{why}: {out}");
        assert_eq!(out["error"], "bad_request", "{why}: {out}");
    }
}

#[tokio::test]
async fn many_users_connecting_at_once_are_each_watched_and_all_unwatched_when_they_leave() {
    let redis = crate::support::redis::RedisServer::start();
    let n = Node::with(&[("HERALD_REDIS_URL", &redis.url())]).await;
    let all = grants(&[">"], &[">"], &[]);
    let users: Vec<String> = (0..150).map(|i| format!("storm-{i}")).collect();
    // All at once: their channels' SUBSCRIBEs are applied in batches, never lost among them.
    let opening = users
        .iter()
        .enumerate()
        .map(|(i, u)| n.client_for(CODECS[i % 2], u, &all));
    let mut clients = futures_util::future::join_all(opening).await;
    for (u, c) in users.iter().zip(&mut clients) {
        let body = json!({"user": u, "data": {"to": u}}).to_string();
        let (status, out) = n.http.post("/v1/publish", Some(API_KEY), &body).await;
        assert_eq!((status, &out), (200, &json!({"sent": true})), "{u}");
        assert_eq!(
            c.next_frame().await,
            json!({"op": "direct", "data": {"to": u}})
        );
    }
    let watched = || redis.cli(&["PUBSUB", "CHANNELS", "herald:{user:storm-*"]);
    assert_eq!(watched().lines().count(), users.len());
    // All at once again: every UNSUBSCRIBE applied, none left behind.
    futures_util::future::join_all(clients.iter_mut().map(|c| c.close(1000))).await;
    let start = std::time::Instant::now();
    while !watched().trim().is_empty() {
        assert!(
            start.elapsed() < crate::support::WAIT,
            "still watched: {}",
            watched()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
