//! Heartbeat: the server pings every interval and closes with 4000 a client it has not heard from
//! for two intervals; a client that answers pings stays (proto/README.md section 5.5).

use std::time::Duration;

use herald::protocol::websocket::Incoming;

use crate::support::{CODECS, Node, codec_name, upgrade};

#[tokio::test]
async fn client_that_never_answers_pings_is_closed_with_4000() {
    let node = Node::with(&[("HERALD_PING_INTERVAL_SECS", "1")]).await;
    let ticket = node.ticket().await;
    let mut ws = upgrade(node.addr, &format!("/ws?ticket={ticket}"), &[])
        .await
        .into_ws();
    let welcome = ws.next_frame().await;
    assert_eq!(welcome["ping"], 1, "{welcome}");
    // The raw client reads (and so sees the pings) but never answers.
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let code = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_incoming_within(left).await {
            Incoming::Ping(_) => pings += 1,
            Incoming::Close(code) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, Some(4000));
    assert!(pings >= 1, "the server pinged before giving up");
}

#[tokio::test]
async fn client_that_answers_pings_stays_open() {
    let node = Node::with(&[("HERALD_PING_INTERVAL_SECS", "1")]).await;
    let mut json = node.client(CODECS[0]).await;
    let mut msgpack = node.client(CODECS[1]).await;
    // A client that never answers gets at most three pings (a visit a second, pinging while it
    // was heard from within 2 s) and is closed at the next visit. Five pings, each one answered
    // by tungstenite as it reads it, are visits that found the client heard from.
    let bound = Duration::from_secs(15);
    let (a, b) = tokio::join!(json.answer_pings(5, bound), msgpack.answer_pings(5, bound));
    assert!(a.is_empty() && b.is_empty(), "{a:?} {b:?}");
    for (i, c) in [&mut json, &mut msgpack].into_iter().enumerate() {
        let ok = c.sub(1, "still.here").await;
        assert_eq!(ok["id"], 1, "{}", codec_name(CODECS[i]));
    }
}
