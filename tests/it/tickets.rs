//! `POST /v1/tickets`: a JWT in, a one-time ticket out; every way a JWT can be wrong gets its own
//! 401 code (proto/README.md sections 3, 4.1 and 4.7).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald::auth::ticket::REMEMBER_EXPIRED;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use crate::support::{
    API_KEY, CODECS, JWT_SECRET, ManualClock, Node, grants, now_secs, signed_jwt,
};

/// Claims of a valid token for `alice`, to be altered by each test.
fn claims() -> Value {
    let now = now_secs();
    json!({
        "sub": "alice",
        "iat": now,
        "exp": now + 3600,
        "grants": {"subscribe": ["news.>"], "publish": [], "send": []},
    })
}

/// `POST /v1/tickets` with `Authorization: Bearer <jwt>`; the status and the `error` code.
async fn exchange(node: &Node, jwt: &str) -> (u16, Value) {
    node.http.post("/v1/tickets", Some(jwt), "").await
}

fn assert_refused(got: (u16, Value), code: &str) {
    let (status, body) = got;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some(code)),
        "{body}"
    );
    assert!(body["message"].is_string(), "{body}");
}

#[tokio::test]
async fn good_jwt_gets_a_43_char_base64url_ticket_and_expires_in() {
    let node = Node::start().await;
    let jwt = signed_jwt(&claims(), JWT_SECRET.as_bytes(), Algorithm::HS256);
    let (status, body) = exchange(&node, &jwt).await;
    assert_eq!(status, 200, "{body}");
    let ticket = body["ticket"].as_str().expect("a ticket string");
    assert_eq!(ticket.len(), 43, "{ticket}");
    assert!(
        ticket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "base64url alphabet: {ticket}"
    );
    assert_eq!(URL_SAFE_NO_PAD.decode(ticket).expect("base64url").len(), 32);
    assert_eq!(body["expires_in"], 30, "{body}");
}

#[tokio::test]
async fn aud_is_ignored_unless_jwt_audience_is_set_then_aud_and_iss_must_match() {
    let with = |aud: Option<&str>, iss: Option<&str>| {
        let mut c = claims();
        if let Some(a) = aud {
            c["aud"] = json!(a);
        }
        if let Some(i) = iss {
            c["iss"] = json!(i);
        }
        signed_jwt(&c, JWT_SECRET.as_bytes(), Algorithm::HS256)
    };
    // Unset: an identity provider's `aud` does not get a token refused.
    let node = Node::start().await;
    let (status, body) = exchange(&node, &with(Some("some-api"), None)).await;
    assert_eq!(status, 200, "{body}");

    let node = Node::with(&[
        ("HERALD_JWT_AUDIENCE", "herald"),
        ("HERALD_JWT_ISSUER", "https://id.example.com"),
    ])
    .await;
    let iss = Some("https://id.example.com");
    let (status, body) = exchange(&node, &with(Some("herald"), iss)).await;
    assert_eq!(status, 200, "{body}");
    for (aud, iss) in [
        (Some("some-api"), iss),
        (None, iss),
        (Some("herald"), Some("https://evil.example.com")),
        (Some("herald"), None),
    ] {
        assert_refused(exchange(&node, &with(aud, iss)).await, "invalid_token");
    }
}

#[tokio::test]
async fn a_backend_with_the_api_key_mints_a_ticket_for_a_user_with_its_grants() {
    let node = Node::start().await;
    let body = json!({"sub": "bob", "grants": {"subscribe": ["news.>"]}, "expires_in": 10});
    let (status, out) = node
        .http
        .post("/v1/tickets", Some(API_KEY), &body.to_string())
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["expires_in"], 10, "{out}");
    let ticket = out["ticket"].as_str().expect("a ticket");
    // The ticket carries the user and grants the backend named.
    let mut c = node.open(&format!("/ws?ticket={ticket}"), CODECS[0]).await;
    let w = c.next_frame().await;
    assert_eq!(w["user"], "bob", "{w}");
    c.sub(1, "news.eu").await;
    let e = c
        .request(json!({"op": "sub", "id": 2, "topic": "chat.room"}))
        .await;
    assert_eq!(e["code"], "forbidden", "{e}");

    // Malformed asks are 400; a wrong key is not a backend (then it is read as a JWT).
    for bad in [
        json!({"grants": {}}),
        json!({"sub": "", "grants": {}}),
        json!({"sub": "bob"}),
        json!({"sub": "bob", "grants": {}, "expires_in": 0}),
        json!({"sub": "bob", "grants": {}, "expires_in": 31}),
        json!({"sub": "bob", "grants": {"subscribe": ["a..b"]}}),
    ] {
        let (status, out) = node
            .http
            .post("/v1/tickets", Some(API_KEY), &bad.to_string())
            .await;
        assert_eq!(
            (status, out["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}: {out}"
        );
    }
    let wrong = "not-the-api-key-0123456789";
    assert_refused(exchange(&node, wrong).await, "invalid_token");
}

#[tokio::test]
async fn hs384_and_hs512_jwts_are_accepted() {
    let node = Node::start().await;
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let jwt = signed_jwt(&claims(), JWT_SECRET.as_bytes(), alg);
        let (status, body) = exchange(&node, &jwt).await;
        assert_eq!(status, 200, "{alg:?}: {body}");
    }
}

#[tokio::test]
async fn two_tickets_from_one_jwt_differ() {
    let node = Node::start().await;
    let jwt = node.jwt("alice", &grants(&["a"], &[], &[]));
    assert_ne!(node.ticket_with(&jwt).await, node.ticket_with(&jwt).await);
}

#[tokio::test]
async fn missing_authorization_is_401_missing_authorization() {
    let node = Node::start().await;
    let got = node.http.post_authorization("/v1/tickets", None, "").await;
    assert_refused(got, "missing_authorization");
}

#[tokio::test]
async fn basic_authorization_is_401_bad_authorization() {
    let node = Node::start().await;
    for value in ["Basic x", "Basic YWxpY2U6cHc=", "Bearer", "Bearer a b"] {
        let got = node
            .http
            .post_authorization("/v1/tickets", Some(value), "")
            .await;
        assert_refused(got, "bad_authorization");
    }
}

#[tokio::test]
async fn expired_jwt_is_401_token_expired() {
    let node = Node::start().await;
    let mut c = claims();
    // Well past the 30 s leeway.
    c["exp"] = json!(now_secs() - 600);
    c["iat"] = json!(now_secs() - 4000);
    let jwt = signed_jwt(&c, JWT_SECRET.as_bytes(), Algorithm::HS256);
    assert_refused(exchange(&node, &jwt).await, "token_expired");
}

#[tokio::test]
async fn jwt_with_future_nbf_is_401_token_not_yet_valid() {
    let node = Node::start().await;
    let mut c = claims();
    c["nbf"] = json!(now_secs() + 600);
    let jwt = signed_jwt(&c, JWT_SECRET.as_bytes(), Algorithm::HS256);
    assert_refused(exchange(&node, &jwt).await, "token_not_yet_valid");
}

#[tokio::test]
async fn jwt_signed_with_another_key_is_401_invalid_token() {
    let node = Node::start().await;
    let jwt = signed_jwt(
        &claims(),
        b"another-secret-of-forty-bytes-0123456789",
        Algorithm::HS256,
    );
    assert_refused(exchange(&node, &jwt).await, "invalid_token");
}

#[tokio::test]
async fn unsigned_alg_none_jwt_is_401_invalid_token() {
    let node = Node::start().await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    for jwt in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        assert_refused(exchange(&node, &jwt).await, "invalid_token");
    }
}

#[tokio::test]
async fn tampered_jwt_is_401_invalid_token() {
    let node = Node::start().await;
    let jwt = signed_jwt(&claims(), JWT_SECRET.as_bytes(), Algorithm::HS256);
    let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
    let mut c = claims();
    c["sub"] = json!("mallory");
    c["grants"] = json!({"subscribe": [">"], "publish": [">"], "send": [">"]});
    parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
    assert_refused(exchange(&node, &parts.join(".")).await, "invalid_token");
}

#[tokio::test]
async fn garbage_and_claimless_jwts_are_401_invalid_token() {
    let node = Node::start().await;
    assert_refused(exchange(&node, "not-a-jwt").await, "invalid_token");
    let mut no_sub = claims();
    no_sub.as_object_mut().unwrap().remove("sub");
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    for c in [no_sub, no_exp] {
        let jwt = signed_jwt(&c, JWT_SECRET.as_bytes(), Algorithm::HS256);
        assert_refused(exchange(&node, &jwt).await, "invalid_token");
    }
}

#[tokio::test]
async fn jwt_without_grants_is_401_missing_grants() {
    let node = Node::start().await;
    let mut c = claims();
    c.as_object_mut().unwrap().remove("grants");
    let jwt = signed_jwt(&c, JWT_SECRET.as_bytes(), Algorithm::HS256);
    assert_refused(exchange(&node, &jwt).await, "missing_grants");
}

#[tokio::test]
async fn malformed_grants_are_401_invalid_grants() {
    let node = Node::start().await;
    for g in [
        json!({"subscribe": ["news*"]}),
        json!({"publish": ["a>"]}),
        json!({"send": ["bad..name"]}),
        json!({"subscribe": [">", "news.>.x"]}),
        json!({"subscribe": "news"}),
        json!({"subscribe": [1]}),
        json!(["news"]),
    ] {
        let mut c = claims();
        c["grants"] = g.clone();
        let jwt = signed_jwt(&c, JWT_SECRET.as_bytes(), Algorithm::HS256);
        let (status, body) = exchange(&node, &jwt).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_grants")),
            "grants {g}: {body}"
        );
    }
}

/// "Keys other than these three are ignored", and `"grants": {}` is valid.
#[tokio::test]
async fn empty_grants_and_unknown_grant_keys_are_accepted() {
    let node = Node::start().await;
    for g in [json!({}), json!({"subscribe": ["news"], "presence": ["x"]})] {
        let mut c = claims();
        c["grants"] = g.clone();
        let jwt = signed_jwt(&c, JWT_SECRET.as_bytes(), Algorithm::HS256);
        let (status, body) = exchange(&node, &jwt).await;
        assert_eq!(status, 200, "grants {g}: {body}");
    }
}

/// Upgrades with `ticket` on `nodes` in turn, `n` at once; the statuses and error codes.
async fn redeem_at_once(nodes: &[&Node], ticket: &str, n: usize) -> Vec<(u16, Value)> {
    let path = format!("/ws?ticket={ticket}");
    let tries = (0..n).map(|i| {
        let (addr, path) = (nodes[i % nodes.len()].addr, path.clone());
        async move {
            let u = crate::support::raw::upgrade(addr, &path, &[]).await;
            (u.status, u.body["error"].clone())
        }
    });
    futures_util::future::join_all(tries).await
}

/// Exactly one 101, and `ticket_used` for every other.
fn assert_one_winner(got: &[(u16, Value)]) {
    let wins = got.iter().filter(|(s, _)| *s == 101).count();
    assert_eq!(wins, 1, "{got:?}");
    for (status, code) in got.iter().filter(|(s, _)| *s != 101) {
        assert_eq!(
            (*status, code.as_str()),
            (401, Some("ticket_used")),
            "{got:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ticket_redeemed_by_100_upgrades_at_once_wins_once_and_the_rest_get_ticket_used() {
    let node = Node::start().await;
    for _ in 0..3 {
        let ticket = node.ticket().await;
        assert_one_winner(&redeem_at_once(&[&node], &ticket, 100).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_one_ticket_redeemed_by_100_upgrades_on_two_nodes_wins_once_and_the_rest_get_ticket_used()
 {
    let redis = crate::support::redis::RedisServer::start();
    let env = [("HERALD_REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (a, b) = (Node::with(&env).await, Node::with(&env).await);
    for round in 0..3 {
        let ticket = if round % 2 == 0 {
            a.ticket().await
        } else {
            b.ticket().await
        };
        assert_one_winner(&redeem_at_once(&[&a, &b], &ticket, 100).await);
    }
}

/// Upgrades with `path` (its ticket redeemed already) and returns the refusal's code.
async fn refusal(node: &Node, path: &str) -> String {
    let again = crate::support::raw::upgrade(node.addr, path, &[]).await;
    assert_eq!(again.status, 401, "{}", again.body);
    again.body["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_redeemed_ticket_is_ticket_used_until_it_would_have_expired_then_ticket_expired_on_both_stores()
 {
    // The in-process store, on a ticket clock the test moves: `ticket_used` for the rest of the
    // ttl, `ticket_expired` from its end for a minute, then forgotten.
    let clock = ManualClock::new();
    let node = Node::with_ticket_clock(&[("HERALD_TICKET_TTL_SECS", "1")], &clock).await;
    let path = format!("/ws?ticket={}", node.ticket().await);
    let first = crate::support::raw::upgrade(node.addr, &path, &[]).await;
    assert_eq!(first.status, 101);
    assert_eq!(refusal(&node, &path).await, "ticket_used");
    clock.advance(Duration::from_millis(999));
    assert_eq!(refusal(&node, &path).await, "ticket_used");
    clock.advance(Duration::from_millis(1));
    assert_eq!(refusal(&node, &path).await, "ticket_expired");
    clock.advance(REMEMBER_EXPIRED - Duration::from_millis(1));
    assert_eq!(refusal(&node, &path).await, "ticket_expired");
    clock.advance(Duration::from_millis(1));
    assert_eq!(refusal(&node, &path).await, "invalid_ticket");

    // Redis: its store reads the real clock (there is no hook), so the ttl is waited out,
    // polling with a bound. Used while the ticket lives, then expired: never `invalid_ticket`.
    let redis = crate::support::redis::RedisServer::start();
    let url = redis.url();
    let node = Node::with(&[
        ("HERALD_REDIS_URL", url.as_str()),
        ("HERALD_TICKET_TTL_SECS", "1"),
    ])
    .await;
    let path = format!("/ws?ticket={}", node.ticket().await);
    let first = crate::support::raw::upgrade(node.addr, &path, &[]).await;
    assert_eq!(first.status, 101);
    let start = std::time::Instant::now();
    let mut seen = Vec::new();
    loop {
        let code = refusal(&node, &path).await;
        if seen.last() != Some(&code) {
            seen.push(code.clone());
        }
        if code != "ticket_used" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, ["ticket_used", "ticket_expired"]);
    // In Redis, the redeemed ticket is kept as long as the memory store keeps it: ttl + 60 s
    // from its issue, and no second key.
    let keys = redis.cli(&["--scan", "--pattern", "herald:ticket*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis.cli(&["PTTL", keys[0]]).trim().parse().unwrap();
    assert!(ttl > 55_000 && ttl <= 61_000, "{ttl}");
}
