//! Presence on the topics `presence_topics` enables: `presence` lists who is subscribed, and
//! subscribers get `join` and `leave` pushes (on unsubscribe and on disconnect), in both codecs.

use serde_json::{Value, json};

use crate::support::ws::Client;
use crate::support::{CODECS, Node, grants};

/// The next frame with `op` (others skipped); fails after the client's usual bound per frame.
async fn next_op(c: &mut Client, op: &str) -> Value {
    loop {
        let f = c.next_frame().await;
        if f["op"] == op {
            return f;
        }
    }
}

fn users(list: &Value) -> Vec<String> {
    let mut u: Vec<String> = list
        .as_array()
        .expect("a presence list")
        .iter()
        .map(|m| m["user"].as_str().unwrap().to_owned())
        .collect();
    u.sort();
    u
}

#[tokio::test]
async fn subscribers_see_joins_and_leaves_and_can_list_who_is_there() {
    let n = Node::with(&[("HERALD_PRESENCE_TOPICS", "room.*")]).await;
    let all = grants(&[">"], &[], &[]);
    let mut alice = n.client_for(CODECS[0], "alice", &all).await;
    alice.sub(1, "room.1").await;
    assert_eq!(next_op(&mut alice, "join").await["user"], "alice");
    let mut bob = n.client_for(CODECS[1], "bob", &all).await;
    bob.sub(1, "room.1").await;
    let j = next_op(&mut alice, "join").await;
    assert_eq!(
        (j["topic"].as_str(), j["user"].as_str()),
        (Some("room.1"), Some("bob"))
    );
    assert!(j["conn"].as_str().is_some_and(|c| !c.is_empty()), "{j}");
    let list = alice
        .request(json!({"op": "presence", "id": 2, "topic": "room.1"}))
        .await;
    assert_eq!(list["op"], "ok", "{list}");
    assert_eq!(users(&list["presence"]), ["alice", "bob"]);
    // bob unsubscribes: a leave.
    let r = bob
        .request(json!({"op": "unsub", "id": 3, "topic": "room.1"}))
        .await;
    assert_eq!(r["op"], "ok");
    assert_eq!(next_op(&mut alice, "leave").await["user"], "bob");
    // carol disconnects: a leave too.
    let mut carol = n.client_for(CODECS[0], "carol", &all).await;
    carol.sub(1, "room.1").await;
    assert_eq!(next_op(&mut alice, "join").await["user"], "carol");
    drop(carol);
    assert_eq!(next_op(&mut alice, "leave").await["user"], "carol");
    let list = alice
        .request(json!({"op": "presence", "id": 4, "topic": "room.1"}))
        .await;
    assert_eq!(users(&list["presence"]), ["alice"]);
}

#[tokio::test]
async fn presence_is_refused_where_it_is_off_or_outside_the_grants() {
    let n = Node::with(&[("HERALD_PRESENCE_TOPICS", "room.*")]).await;
    for codec in CODECS {
        let mut c = n
            .client_for(codec, "dave", &grants(&["room.1", "lobby"], &[], &[]))
            .await;
        let r = c
            .request(json!({"op": "presence", "id": 1, "topic": "lobby"}))
            .await;
        assert_eq!(r["code"], "bad_request", "{r}");
        let r = c
            .request(json!({"op": "presence", "id": 2, "topic": "room.2"}))
            .await;
        assert_eq!(r["code"], "forbidden", "{r}");
        let r = c
            .request(json!({"op": "presence", "id": 3, "topic": "room.1"}))
            .await;
        assert_eq!(r["op"], "ok", "{r}");
        assert_eq!(r["presence"], json!([]));
    }
}
