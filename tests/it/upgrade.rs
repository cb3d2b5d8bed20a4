//! WebSocket upgrades: everything that can be refused is refused before the 101 with a status and
//! a JSON body; subprotocol negotiation picks the codec (proto/README.md sections 4.2, 4.3, 5.1).

use std::time::Duration;

use herald::protocol::websocket::accept_key;
use serde_json::json;

use crate::support::{Codec, ManualClock, Node, grants, upgrade, ws};

/// A `/ws` upgrade with a fresh ticket and `headers`; the answer.
async fn upgrade_ws(node: &Node, headers: &[(&str, &str)]) -> crate::support::raw::Upgrade {
    let ticket = node.ticket().await;
    upgrade(node.addr, &format!("/ws?ticket={ticket}"), headers).await
}

#[tokio::test]
async fn upgrade_without_ticket_is_401_missing_ticket() {
    let node = Node::start().await;
    for path in ["/ws", "/ws?ticket=", "/topics/news"] {
        upgrade(node.addr, path, &[])
            .await
            .assert_refused(401, "missing_ticket");
    }
}

#[tokio::test]
async fn unknown_or_malformed_ticket_is_401_invalid_ticket() {
    let node = Node::start().await;
    let unknown = "A".repeat(43);
    for t in [unknown.as_str(), "short", "%21%21%21"] {
        upgrade(node.addr, &format!("/ws?ticket={t}"), &[])
            .await
            .assert_refused(401, "invalid_ticket");
    }
}

#[tokio::test]
async fn reused_ticket_is_refused_with_401_ticket_used() {
    let node = Node::start().await;
    let ticket = node.ticket().await;
    let path = format!("/ws?ticket={ticket}");
    let first = upgrade(node.addr, &path, &[]).await;
    assert_eq!(first.status, 101, "{}", first.body);
    upgrade(node.addr, &path, &[])
        .await
        .assert_refused(401, "ticket_used");
}

/// A ticket is good for its whole ttl (the configured one) and `ticket_expired` from then on:
/// the node's ticket clock is moved by the test, not waited for.
#[tokio::test]
async fn expired_ticket_is_401_ticket_expired() {
    let clock = ManualClock::new();
    let node = Node::with_ticket_clock(&[("HERALD_TICKET_TTL_SECS", "5")], &clock).await;
    let jwt = node.jwt("alice", &grants(&[">"], &[], &[]));
    let (status, body) = node.http.post("/v1/tickets", Some(&jwt), "").await;
    assert_eq!(
        (status, body["expires_in"].as_u64()),
        (200, Some(5)),
        "{body}"
    );
    let expiring = body["ticket"].as_str().unwrap();
    let last_moment = node.ticket_with(&jwt).await;
    clock.advance(Duration::from_millis(4999));
    let up = upgrade(node.addr, &format!("/ws?ticket={last_moment}"), &[]).await;
    assert_eq!(up.status, 101, "good until its ttl is over: {}", up.body);
    clock.advance(Duration::from_millis(1));
    upgrade(node.addr, &format!("/ws?ticket={expiring}"), &[])
        .await
        .assert_refused(401, "ticket_expired");
}

#[tokio::test]
async fn origin_not_allowed_is_403_origin_not_allowed() {
    // Production mode without HERALD_ALLOWED_ORIGINS allows no browser origin at all.
    let node = Node::start().await;
    upgrade_ws(&node, &[("Origin", "https://evil.example")])
        .await
        .assert_refused(403, "origin_not_allowed");

    let node = Node::with(&[("HERALD_ALLOWED_ORIGINS", "https://app.example")]).await;
    for origin in ["https://evil.example", "http://app.example", "null"] {
        upgrade_ws(&node, &[("Origin", origin)])
            .await
            .assert_refused(403, "origin_not_allowed");
    }
}

#[tokio::test]
async fn allowed_origin_and_no_origin_are_both_accepted() {
    let node = Node::with(&[("HERALD_ALLOWED_ORIGINS", "https://app.example")]).await;
    let up = upgrade_ws(&node, &[("Origin", "https://app.example")]).await;
    assert_eq!(up.status, 101, "{}", up.body);
    let ticket = node.ticket().await;
    let up = upgrade(node.addr, &format!("/ws?ticket={ticket}"), &[]).await;
    assert_eq!(up.status, 101, "{}", up.body);
}

#[tokio::test]
async fn a_wildcard_origin_admits_its_subdomains_and_never_the_bare_domain_or_another_scheme() {
    let node = Node::with(&[("HERALD_ALLOWED_ORIGINS", "https://*.example.com")]).await;
    for origin in ["https://app.example.com", "https://a.b.example.com"] {
        let up = upgrade_ws(&node, &[("Origin", origin)]).await;
        assert_eq!(up.status, 101, "{origin}: {}", up.body);
    }
    for origin in [
        "https://example.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com.evil.net",
    ] {
        upgrade_ws(&node, &[("Origin", origin)])
            .await
            .assert_refused(403, "origin_not_allowed");
    }
}

#[tokio::test]
async fn only_unknown_subprotocols_are_400_unsupported_subprotocol_listing_supported() {
    let node = Node::start().await;
    for offered in ["graphql-ws", "mqtt, herald.v2.json", "HERALD.V1.JSON"] {
        let up = upgrade_ws(&node, &[("Sec-WebSocket-Protocol", offered)]).await;
        up.assert_refused(400, "unsupported_subprotocol");
        assert_eq!(
            up.body["supported"],
            json!(["herald.v1.json", "herald.v1.msgpack"]),
            "{offered}: {}",
            up.body
        );
    }
}

#[tokio::test]
async fn no_subprotocol_speaks_json_and_the_101_names_none() {
    let node = Node::start().await;
    let ticket = node.ticket().await;
    let up = upgrade(node.addr, &format!("/ws?ticket={ticket}"), &[]).await;
    assert_eq!(up.status, 101);
    assert_eq!(up.header("sec-websocket-protocol"), None);
    assert_eq!(up.header("sec-websocket-extensions"), None);
    assert_eq!(
        up.header("sec-websocket-accept"),
        Some(accept_key(b"dGhlIHNhbXBsZSBub25jZQ==").as_str())
    );
    let mut ws = up.into_ws();
    let welcome = ws.next_frame().await;
    assert_eq!(welcome["op"], "welcome");

    // The same through a WebSocket library: text frames.
    let ticket = node.ticket().await;
    let (mut c, resp) = ws::open(node.addr, &format!("/ws?ticket={ticket}"), None, &[])
        .await
        .expect("upgrade");
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    assert_eq!(c.codec, Codec::Json);
    assert_eq!(c.next_frame().await["op"], "welcome");
}

#[tokio::test]
async fn msgpack_subprotocol_is_named_in_the_101_and_frames_are_binary() {
    let node = Node::start().await;
    for (offered, chosen) in [
        ("herald.v1.msgpack", "herald.v1.msgpack"),
        ("mqtt, herald.v1.msgpack", "herald.v1.msgpack"),
        ("herald.v1.json", "herald.v1.json"),
    ] {
        let up = upgrade_ws(&node, &[("Sec-WebSocket-Protocol", offered)]).await;
        assert_eq!(up.status, 101, "{offered}: {}", up.body);
        assert_eq!(
            up.header("sec-websocket-protocol"),
            Some(chosen),
            "{offered}"
        );
        let mut ws = up.into_ws();
        let first = ws.next_incoming_within(crate::support::WAIT).await;
        let binary = matches!(first, herald::protocol::websocket::Incoming::Binary(_));
        assert_eq!(
            binary,
            chosen == "herald.v1.msgpack",
            "{offered}: {first:?}"
        );
    }
}

#[tokio::test]
async fn topic_endpoint_outside_subscribe_grants_is_403_forbidden() {
    let node = Node::start().await;
    let ticket = node
        .ticket_for("alice", &grants(&["news.>"], &[">"], &[]))
        .await;
    upgrade(node.addr, &format!("/topics/admin?ticket={ticket}"), &[])
        .await
        .assert_refused(403, "forbidden");
}

#[tokio::test]
async fn malformed_topic_in_the_path_is_400_bad_topic() {
    let node = Node::start().await;
    for topic in ["bad..name", ".news", "news.", "news*", "caf%C3%A9"] {
        let ticket = node.ticket().await;
        upgrade(node.addr, &format!("/topics/{topic}?ticket={ticket}"), &[])
            .await
            .assert_refused(400, "bad_topic");
    }
}

#[tokio::test]
async fn bad_since_or_epoch_query_is_400_bad_request() {
    let node = Node::start().await;
    for query in [
        "since=abc&epoch=e",
        "since=-1&epoch=e",
        "since=4",
        "epoch=e",
    ] {
        let ticket = node.ticket().await;
        upgrade(
            node.addr,
            &format!("/topics/x?{query}&ticket={ticket}"),
            &[],
        )
        .await
        .assert_refused(400, "bad_request");
    }
}

#[tokio::test]
async fn plain_get_on_ws_is_400_not_websocket() {
    let node = Node::start().await;
    let ticket = node.ticket().await;
    let r = node.http.get(&format!("/ws?ticket={ticket}")).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["error"], "not_websocket", "{}", r.text);
}

#[tokio::test]
async fn connections_over_the_limit_are_503_and_a_closed_one_frees_its_slot() {
    // Every TCP connection counts: the test's pooled HTTP client (one connection) and two sockets.
    let node = Node::with(&[("HERALD_MAX_CONNECTIONS", "3")]).await;
    let tickets: Vec<String> = {
        let mut t = Vec::new();
        for _ in 0..40 {
            t.push(node.ticket().await);
        }
        t
    };
    let mut tickets = tickets.into_iter();
    let a = crate::support::raw::upgrade(
        node.addr,
        &format!("/ws?ticket={}", tickets.next().unwrap()),
        &[],
    )
    .await
    .into_ws();
    let _b = crate::support::raw::upgrade(
        node.addr,
        &format!("/ws?ticket={}", tickets.next().unwrap()),
        &[],
    )
    .await
    .into_ws();
    let over = format!("/ws?ticket={}", tickets.next().unwrap());
    let up = upgrade(node.addr, &over, &[]).await;
    up.assert_refused(503, "too_many_connections");
    assert!(up.header("retry-after").is_some(), "503 says when to retry");

    drop(a);
    // The slot is released once the server has seen the socket go; poll, bounded.
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    loop {
        let ticket = tickets.next().expect("tickets enough for the wait");
        let up = upgrade(node.addr, &format!("/ws?ticket={ticket}"), &[]).await;
        if up.status == 101 {
            break;
        }
        up.assert_refused(503, "too_many_connections");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection's slot was never released"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test]
async fn a_user_over_max_connections_per_user_is_429_too_many_connections() {
    let n = Node::with(&[("HERALD_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let _one = n.client(Codec::Json).await;
    let two = n.client(Codec::Json).await;
    let r = crate::support::raw::upgrade(n.addr, &format!("/ws?ticket={}", n.ticket().await), &[])
        .await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert_eq!(r.body["error"], "too_many_connections");
    // Another user is not affected.
    let bob = n.ticket_for("bob", &herald::auth::RawGrants::all()).await;
    let r = crate::support::raw::upgrade(n.addr, &format!("/ws?ticket={bob}"), &[]).await;
    assert_eq!(r.status, 101);
    drop(two);
    let start = std::time::Instant::now();
    loop {
        let r =
            crate::support::raw::upgrade(n.addr, &format!("/ws?ticket={}", n.ticket().await), &[])
                .await;
        if r.status == 101 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "the closed one still counts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_conformance_echo_route_is_not_in_a_default_build() {
    let node = Node::start().await;
    let up = upgrade(node.addr, "/conformance/echo", &[]).await;
    assert_eq!(
        up.status, 404,
        "only a build with the feature `conformance` has it"
    );
}
