//! Sessions that end: a connection's identity expires with its JWT (plus the leeway) and the node
//! closes it with 4001, unless the client refreshed it in band with a fresh ticket of the same
//! user, whose grants then replace the old ones (proto/README.md sections 3, 6.2, 6.3 and 8); the
//! same for a cookie session that the auth hook let in with an `expires_at`.
//!
//! The nodes here allow no leeway, and the short-lived tokens expire a few seconds after they
//! are minted: a test waits for the close itself (bounded), never for a time.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use crate::support::redis::RedisServer;
use crate::support::ws::{self, encode};
use crate::support::{
    API_KEY, CODECS, Client, Codec, JWT_SECRET, ManualClock, Node, codec_name, grants, now_secs,
    signed_jwt,
};

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

/// `POST /v1/tickets` with the API key: a backend-minted ticket, whose identity never expires.
async fn minted(node: &Node, user: &str, grants: Value) -> String {
    let body = json!({"sub": user, "grants": grants});
    let (status, out) = node
        .http
        .post("/v1/tickets", Some(API_KEY), &body.to_string())
        .await;
    assert_eq!(status, 200, "{out}");
    out["ticket"].as_str().expect("a ticket").to_owned()
}

fn refresh(id: u64, ticket: &str) -> Value {
    json!({"op": "refresh", "id": id, "ticket": ticket})
}

#[tokio::test]
async fn a_connection_is_closed_with_4001_once_its_jwt_has_expired() {
    let node = node().await;
    let exp = now_secs() + SHORT;
    let mut clients = Vec::new();
    for codec in CODECS {
        let (mut c, w) = expiring(&node, codec, "alice", exp).await;
        assert_eq!(w["expires_at"], exp, "welcome says when: {w}");
        c.sub(1, "news").await;
        clients.push(c);
    }
    for (mut c, codec) in clients.into_iter().zip(CODECS) {
        let code = c.expect_close_within(UNTIL_EXPIRED).await;
        assert_eq!(code, 4001, "{}", codec_name(codec));
    }
}

#[tokio::test]
async fn a_connection_of_a_backend_minted_ticket_has_no_expiry() {
    let node = node().await;
    for codec in CODECS {
        let ticket = minted(&node, "bob", json!({"subscribe": ["news"]})).await;
        let (_c, w) = connect(&node, codec, &ticket).await;
        assert_eq!(w["user"], "bob", "{w}");
        assert!(w.get("expires_at").is_none(), "no expiry, no field: {w}");
    }
}

#[tokio::test]
async fn a_backend_minted_ticket_with_expires_at_opens_a_session_that_ends_with_4001() {
    let node = node().await;
    let exp = now_secs() + SHORT;
    let body = json!({"sub": "carol", "grants": all(), "expires_at": exp});
    let (status, out) = node
        .http
        .post("/v1/tickets", Some(API_KEY), &body.to_string())
        .await;
    assert_eq!(status, 200, "{out}");
    let ticket = out["ticket"].as_str().unwrap();
    let (mut c, w) = connect(&node, Codec::Json, ticket).await;
    assert_eq!(w["expires_at"], exp, "{w}");
    assert_eq!(c.expect_close_within(UNTIL_EXPIRED).await, 4001);
    // An expiry already past is refused, not a session that ends at once.
    let body = json!({"sub": "carol", "grants": all(), "expires_at": now_secs() - 1});
    let (status, out) = node
        .http
        .post("/v1/tickets", Some(API_KEY), &body.to_string())
        .await;
    assert_eq!(
        (status, out["error"].as_str()),
        (400, Some("bad_request")),
        "{out}"
    );
}

#[tokio::test]
async fn a_connection_refreshed_in_band_outlives_its_old_expiry_and_keeps_its_messages() {
    let node = node().await;
    let exp = now_secs() + SHORT;
    // Its twin expires at the same second and is not refreshed: its close says the old expiry
    // has passed (one sweep closes every connection due).
    let (mut twin, _) = expiring(&node, Codec::Json, "alice", exp).await;
    let (mut c, _) = expiring(&node, Codec::MsgPack, "alice", exp).await;
    c.sub(1, "news").await;
    let later = now_secs() + 3600;
    let ticket = node.ticket_with(&jwt("alice", all(), later)).await;
    let ok = c.request(refresh(2, &ticket)).await;
    assert_eq!(ok, json!({"op": "ok", "id": 2, "expires_at": later}));

    assert_eq!(twin.expect_close_within(UNTIL_EXPIRED).await, 4001);
    node.publish("news", json!("still here")).await;
    let m = c.next_msg("news").await;
    assert_eq!(m["data"], "still here", "{m}");
    let ok = c
        .request(json!({"op": "pub", "id": 3, "topic": "news", "data": 1}))
        .await;
    assert_eq!(ok["op"], "ok", "{ok}");
}

#[tokio::test]
async fn a_refresh_with_another_users_ticket_is_forbidden_and_the_connection_still_expires() {
    let node = node().await;
    let (mut c, _) = expiring(&node, Codec::Json, "alice", now_secs() + SHORT).await;
    let bobs = node
        .ticket_with(&jwt("bob", all(), now_secs() + 3600))
        .await;
    let e = c.request(refresh(1, &bobs)).await;
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{e}"
    );
    assert_eq!(e["id"], 1, "{e}");
    // Nothing changed: the old grants still hold, and so does the old expiry.
    c.sub(2, "news").await;
    assert_eq!(c.expect_close_within(UNTIL_EXPIRED).await, 4001);
}

#[tokio::test]
async fn a_refresh_with_narrower_grants_ends_the_subscriptions_they_no_longer_allow() {
    let node = node().await;
    for codec in CODECS {
        let wide = grants(&["news.>", "chat.*"], &["chat.*"], &[]);
        let mut c = node.client_for(codec, "alice", &wide).await;
        c.sub(1, "news.eu").await;
        c.sub(2, "chat.room1").await;

        let narrow = json!({"subscribe": ["news.>"], "publish": [], "send": []});
        let exp = now_secs() + 3600;
        let ticket = node.ticket_with(&jwt("alice", narrow, exp)).await;
        c.send_json(refresh(3, &ticket)).await;
        // The push for each subscription that ended comes before the refresh's `ok`.
        let push = c.next_frame().await;
        assert_eq!(
            push,
            json!({"op": "unsubscribed", "topic": "chat.room1", "reason": "forbidden"}),
            "{}",
            codec_name(codec)
        );
        let ok = c.next_frame().await;
        assert_eq!(ok, json!({"op": "ok", "id": 3, "expires_at": exp}));

        // The allowed subscription still delivers; the ended one does not (published first).
        node.publish("chat.room1", json!("gone")).await;
        node.publish("news.eu", json!("here")).await;
        let m = c.next_frame().await;
        assert_eq!(
            (m["op"].as_str(), m["topic"].as_str()),
            (Some("msg"), Some("news.eu")),
            "{m}"
        );
        // Publishing and subscribing follow the new grants at once.
        for (id, f) in [
            (
                4,
                json!({"op": "pub", "id": 4, "topic": "chat.room1", "data": 1}),
            ),
            (5, json!({"op": "sub", "id": 5, "topic": "chat.room1"})),
        ] {
            let e = c.request(f).await;
            assert_eq!(
                (e["id"].as_u64(), e["code"].as_str()),
                (Some(id), Some("forbidden")),
                "{e}"
            );
        }
        c.sub(6, "news.fr").await;
    }
}

#[tokio::test]
async fn a_refresh_ticket_works_once_and_is_refused_with_the_upgrades_codes() {
    let clock = ManualClock::new();
    let node = Node::with_ticket_clock(&[("HERALD_TICKET_TTL_SECS", "5")], &clock).await;
    for codec in CODECS {
        let mut c = node.client(codec).await;
        // Spent by an upgrade, or by a refresh: used.
        let ticket = node.ticket().await;
        let _other = connect(&node, codec, &ticket).await;
        let e = c.request(refresh(1, &ticket)).await;
        assert_eq!(
            (e["id"].as_u64(), e["code"].as_str()),
            (Some(1), Some("ticket_used")),
            "{e}"
        );
        let ticket = node.ticket().await;
        let ok = c.request(refresh(2, &ticket)).await;
        assert_eq!(ok["op"], "ok", "{ok}");
        let e = c.request(refresh(3, &ticket)).await;
        assert_eq!(e["code"], "ticket_used", "{e}");
        // Unknown or malformed: invalid; not a ticket at all: a bad request.
        for (id, t) in [(4, "A".repeat(43)), (5, "not-a-ticket".to_owned())] {
            let e = c.request(refresh(id, &t)).await;
            assert_eq!(
                (e["id"].as_u64(), e["code"].as_str()),
                (Some(id), Some("invalid_ticket")),
                "{e}"
            );
        }
        for (id, f) in [
            (6, json!({"op": "refresh", "id": 6})),
            (7, json!({"op": "refresh", "id": 7, "ticket": ""})),
            (8, json!({"op": "refresh", "id": 8, "ticket": 7})),
        ] {
            let e = c.request(f).await;
            assert_eq!(
                (e["id"].as_u64(), e["code"].as_str()),
                (Some(id), Some("bad_request")),
                "{e}"
            );
        }
    }
    // Past its lifetime: expired.
    let mut c = node.client(Codec::Json).await;
    let ticket = node.ticket().await;
    clock.advance(Duration::from_secs(5));
    let e = c.request(refresh(9, &ticket)).await;
    assert_eq!(e["code"], "ticket_expired", "{e}");
}

#[tokio::test]
async fn a_refresh_to_a_backend_minted_ticket_ends_the_expiry() {
    let node = node().await;
    let (mut c, _) = expiring(&node, Codec::Json, "alice", now_secs() + 3600).await;
    let ticket = minted(&node, "alice", all()).await;
    let ok = c.request(refresh(1, &ticket)).await;
    assert_eq!(ok, json!({"op": "ok", "id": 1}), "no expiry, no field");
}

#[tokio::test]
async fn a_refresh_goes_through_the_frame_rate_limit() {
    let node = Node::with(&[("HERALD_RATE_LIMIT", "1"), ("HERALD_RATE_BURST", "1")]).await;
    let mut c = node.client(Codec::Json).await;
    let ticket = node.ticket().await;
    // Two frames in one write: the first takes the only token, the second is refused undecoded.
    c.feed(encode(Codec::Json, &refresh(1, &ticket))).await;
    c.feed(encode(Codec::Json, &refresh(2, &ticket))).await;
    c.flush().await;
    let mut got = vec![c.next_frame().await, c.next_frame().await];
    got.sort_by_key(|f| f["op"].as_str().map(str::to_owned));
    assert_eq!(
        (got[0]["op"].as_str(), got[0]["code"].as_str()),
        (Some("error"), Some("rate_limited")),
        "{got:?}"
    );
    assert!(got[0].get("id").is_none(), "{got:?}");
    assert_eq!(
        (got[1]["op"].as_str(), got[1]["id"].as_u64()),
        (Some("ok"), Some(1)),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_ticket_from_another_node_refreshes_through_redis_and_keeps_its_expiry() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [
        ("HERALD_REDIS_URL", url.as_str()),
        ("HERALD_JWT_LEEWAY_SECS", "0"),
    ];
    let (a, b) = (Node::with(&env).await, Node::with(&env).await);
    let exp = now_secs() + 3600;
    let (mut c, w) = expiring(&a, Codec::MsgPack, "alice", exp).await;
    assert_eq!(
        w["expires_at"], exp,
        "the ticket store keeps the expiry: {w}"
    );
    c.sub(1, "news").await;
    let later = exp + 60;
    let ticket = b.ticket_with(&jwt("alice", all(), later)).await;
    let ok = c.request(refresh(2, &ticket)).await;
    assert_eq!(ok, json!({"op": "ok", "id": 2, "expires_at": later}));
    // Once, cluster-wide.
    let (mut d, _) = expiring(&b, Codec::Json, "alice", exp).await;
    let e = d.request(refresh(3, &ticket)).await;
    assert_eq!(e["code"], "ticket_used", "{e}");
}

#[tokio::test]
async fn a_session_the_auth_hook_let_in_ends_at_its_expires_at_unless_refreshed() {
    // The app's session backend: every session is carol's, and ends at `exp`.
    let exp = now_secs() + SHORT;
    let app = axum::Router::new().route(
        "/herald/connect",
        axum::routing::post(move || async move {
            axum::Json(
                json!({"sub": "carol", "grants": {"subscribe": ["news"]}, "expires_at": exp}),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let toml = format!(
        "auth_service = \"sessions\"\n[services.sessions]\nendpoints = [\"http://{addr}\"]\n"
    );
    let node = Node::with_toml(&toml, &[("HERALD_JWT_LEEWAY_SECS", "0")]).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (mut c, _) = ws::open(node.addr, "/ws", Some(Codec::Json), &[])
            .await
            .expect("the hook lets carol in");
        let w = c.next_frame().await;
        assert_eq!(
            (w["user"].as_str(), w["expires_at"].as_u64()),
            (Some("carol"), Some(exp)),
            "{w}"
        );
        clients.push(c);
    }
    let (mut ended, mut kept) = (clients.remove(0), clients.remove(0));
    // No JWT behind a cookie session: the app's backend mints the refresh ticket.
    let ticket = minted(&node, "carol", json!({"subscribe": ["news"]})).await;
    let ok = kept.request(refresh(1, &ticket)).await;
    assert_eq!(
        ok,
        json!({"op": "ok", "id": 1}),
        "a minted identity has no expiry"
    );
    kept.sub(2, "news").await;

    assert_eq!(ended.expect_close_within(UNTIL_EXPIRED).await, 4001);
    node.publish("news", json!("kept")).await;
    assert_eq!(kept.next_msg("news").await["data"], "kept");
    backend.abort();
}
