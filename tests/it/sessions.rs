//! Sessions that end: a connection's identity expires with its JWT (plus the leeway) and the node
//! closes it with 4001 (proto/README.md sections 3.1 and 8).
//!
//! The nodes here allow no leeway, and the short-lived tokens expire a few seconds after they
//! are minted: a test waits for the close itself (bounded), never for a time.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use crate::support::{CODECS, Client, Codec, JWT_SECRET, Node, codec_name, now_secs, signed_jwt};

/// Seconds from now until the short-lived tokens expire: time enough to get a ticket and
/// connect on a loaded machine.
const SHORT: u64 = 3;
/// How long a test waits for a short-lived connection's close: its expiry, a second of sweep
/// precision, and a wide margin.
const UNTIL_EXPIRED: Duration = Duration::from_secs(SHORT + 15);

/// A node that allows no clock leeway on `exp`, so connections close right after it.
async fn node() -> Node {
    Node::with(&[("HERALD_JWT_LEEWAY_SECS", "0")]).await
}

/// A JWT for `user` with `grants` that expires at `exp` (unix seconds).
fn jwt(user: &str, grants: Value, exp: u64) -> String {
    let claims = json!({"sub": user, "iat": now_secs(), "exp": exp, "grants": grants});
    signed_jwt(&claims, JWT_SECRET.as_bytes(), Algorithm::HS256)
}

/// Every grant.
fn all() -> Value {
    json!({"subscribe": [">"], "publish": [">"], "send": [">"]})
}

/// A `/ws` client with `ticket`, and its `welcome`.
async fn connect(node: &Node, codec: Codec, ticket: &str) -> (Client, Value) {
    let mut c = node.open(&format!("/ws?ticket={ticket}"), codec).await;
    let w = c.next_frame().await;
    assert_eq!(w["op"], "welcome", "{w}");
    (c, w)
}

/// A `/ws` client of `user` whose JWT expires at `exp`, and its `welcome`.
async fn expiring(node: &Node, codec: Codec, user: &str, exp: u64) -> (Client, Value) {
    let ticket = node.ticket_with(&jwt(user, all(), exp)).await;
    connect(node, codec, &ticket).await
}

#[tokio::test]
async fn a_connection_is_closed_with_4001_once_its_jwt_has_expired() {
    let node = node().await;
    let exp = now_secs() + SHORT;
    let mut clients = Vec::new();
    for codec in CODECS {
        let (mut c, _) = expiring(&node, codec, "alice", exp).await;
        c.sub(1, "news").await;
        clients.push(c);
    }
    for (mut c, codec) in clients.into_iter().zip(CODECS) {
        let code = c.expect_close_within(UNTIL_EXPIRED).await;
        assert_eq!(code, 4001, "{}", codec_name(codec));
    }
}
