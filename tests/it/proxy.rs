//! `send` to backend services through the proxy, against three real HTTP backends: replies
//! routed to the right client under concurrency, each balancing strategy, an endpoint killed
//! mid-run, health checks taking an endpoint out and back, timeouts, non-2xx, oversize and
//! non-JSON answers, the concurrency limit, identity headers a client cannot spoof, and the
//! header allowlist.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::backend::Backend;
use crate::support::{CODECS, Node, grants};

async fn backends() -> [Backend; 3] {
    [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ]
}

/// A `[services.orders]` table over `bs`, with `extra` lines (balance, limits, health).
fn service(bs: &[&Backend], extra: &str) -> String {
    let eps: Vec<String> = bs.iter().map(|b| format!("{:?}", b.url())).collect();
    format!(
        "[services.orders]\nendpoints = [{}]\npath = \"/herald\"\n{extra}\n",
        eps.join(", ")
    )
}

fn send(id: u64, data: Value) -> Value {
    json!({"op": "send", "id": id, "to": "orders", "data": data})
}

async fn node(toml: &str) -> Node {
    Node::with_toml(
        toml,
        &[
            ("HERALD_RATE_LIMIT", "10000"),
            ("HERALD_RATE_BURST", "10000"),
        ],
    )
    .await
}

fn endpoint_of(reply: &Value) -> String {
    assert_eq!(reply["op"], "reply", "{reply}");
    reply["data"]["endpoint"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn replies_reach_the_client_that_sent_under_concurrency_in_both_codecs() {
    let [a, b, c] = backends().await;
    let n = node(&service(&[&a, &b, &c], "")).await;
    let sends = grants(&[], &[], &["orders"]);
    let mut clients = Vec::new();
    for (codec, user) in CODECS.iter().zip(["alice", "bob"]) {
        clients.push((n.client_for(*codec, user, &sends).await, user));
    }
    for (c, user) in &mut clients {
        for i in 1..=50u64 {
            c.send_json(send(i, json!({"from": *user, "i": i}))).await;
        }
    }
    for (c, user) in &mut clients {
        let mut seen = HashMap::new();
        while seen.len() < 50 {
            let f = c.next_frame().await;
            assert_eq!(f["op"], "reply", "{f}");
            let data = &f["data"];
            assert_eq!(
                data["request"]["user"], *user,
                "the backend saw the sender: {f}"
            );
            assert_eq!(data["request"]["data"]["from"], *user, "{f}");
            assert_eq!(data["request"]["id"], f["id"]);
            assert_eq!(
                data["request"]["data"]["i"], f["id"],
                "the reply of this request"
            );
            seen.insert(f["id"].as_u64().unwrap(), ());
        }
    }
}

#[tokio::test]
async fn round_robin_spreads_evenly_and_user_hash_keeps_a_user_on_one_endpoint() {
    let [a, b, c] = backends().await;
    let n = node(&service(&[&a, &b, &c], "balance = \"round_robin\"")).await;
    let mut cl = n
        .client_for(CODECS[0], "u", &grants(&[], &[], &[">"]))
        .await;
    for i in 1..=30 {
        cl.request(send(i, json!(i))).await;
    }
    for be in [&a, &b, &c] {
        assert_eq!(
            be.b.hits.load(Ordering::Relaxed),
            10,
            "round robin: 10 each"
        );
    }
    let n = node(&service(&[&a, &b, &c], "balance = \"user_hash\"")).await;
    let mut places = HashMap::new();
    for user in ["u1", "u2", "u3", "u4", "u5", "u6"] {
        let mut cl = n
            .client_for(CODECS[1], user, &grants(&[], &[], &[">"]))
            .await;
        let mut eps: Vec<String> = Vec::new();
        for i in 1..=5 {
            eps.push(endpoint_of(&cl.request(send(i, json!(i))).await));
        }
        eps.dedup();
        assert_eq!(eps.len(), 1, "{user} stayed on one endpoint");
        places.insert(user, eps[0].clone());
    }
    let distinct: std::collections::HashSet<_> = places.values().collect();
    assert!(
        distinct.len() >= 2,
        "users spread over endpoints: {places:?}"
    );
}

/// `a` holds every answer: once it has a request in flight while `b` and `c` have none (each
/// request is sent once the one before it is answered, or has arrived at `a`), it gets no more.
#[tokio::test]
async fn least_requests_sends_less_to_a_slow_endpoint() {
    let [a, b, c] = backends().await;
    a.b.hold(true);
    let extra = "balance = \"least_requests\"\ntimeout_ms = 60000";
    let n = node(&service(&[&a, &b, &c], extra)).await;
    let mut cl = n
        .client_for(CODECS[0], "u", &grants(&[], &[], &[">"]))
        .await;
    let mut answered = 0;
    for i in 1..=30u64 {
        let at_a = a.b.hits.load(Ordering::Relaxed);
        cl.send_json(send(i, json!(i))).await;
        tokio::select! {
            f = cl.next_frame() => {
                assert_ne!(endpoint_of(&f), "a", "a answers nothing while held");
                answered += 1;
            }
            () = a.b.arrived(at_a + 1) => {}
        }
    }
    let slow = a.b.hits.load(Ordering::Relaxed);
    let fast = b.b.hits.load(Ordering::Relaxed) + c.b.hits.load(Ordering::Relaxed);
    assert!(
        slow <= 1,
        "only a request sent while no endpoint had one in flight may go to a: {slow} of 30"
    );
    assert_eq!((answered, slow + fast), (30 - slow, 30));
    a.b.hold(false);
    for _ in 0..slow {
        assert_eq!(endpoint_of(&cl.next_frame().await), "a");
    }
}

#[tokio::test]
async fn a_killed_endpoint_costs_no_request_and_health_checks_take_one_out_and_back() {
    let [a, b, c] = backends().await;
    let health =
        "[services.orders.health]\npath = \"/healthz\"\ninterval_ms = 50\nfall = 2\nrise = 2";
    let n = node(&service(&[&a, &b, &c], health)).await;
    let mut cl = n
        .client_for(CODECS[0], "u", &grants(&[], &[], &[">"]))
        .await;
    a.kill().await;
    // Connection refused before anything was sent: retried on another endpoint, never seen.
    for i in 1..=30 {
        let r = cl.request(send(i, json!(i))).await;
        assert_ne!(endpoint_of(&r), "a");
    }
    // b fails its checks: after `fall` checks it gets nothing...
    b.b.unhealthy.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let mut id = 100;
    loop {
        let before = b.b.hits.load(Ordering::Relaxed);
        for _ in 0..10 {
            id += 1;
            let r = cl.request(send(id, json!(id))).await;
            assert_eq!(r["op"], "reply", "{r}");
        }
        if b.b.hits.load(Ordering::Relaxed) == before {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "b stayed in rotation"
        );
    }
    // ...and once it passes `rise` checks it is back.
    b.b.unhealthy.store(false, Ordering::Relaxed);
    let start = Instant::now();
    loop {
        id += 1;
        if endpoint_of(&cl.request(send(id, json!(id))).await) == "b" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "b never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn timeouts_statuses_and_bad_answers_get_their_error_codes() {
    let [a, _b, _c] = backends().await;
    let limits = "timeout_ms = 200";
    let n = Node::with_toml(
        &service(&[&a], limits),
        &[("HERALD_MAX_MESSAGE_BYTES", "2048")],
    )
    .await;
    // JSON here (the last step kills the backend); the other tests cover both codecs.
    let mut cl = n
        .client_for(CODECS[0], "u", &grants(&[], &[], &[">"]))
        .await;
    // An answer that never comes while held: the request times out.
    a.b.hold(true);
    let r = cl.request(send(1, json!(1))).await;
    assert_eq!(r["code"], "upstream_timeout", "{r}");
    a.b.hold(false);
    a.b.status.store(418, Ordering::Relaxed);
    let r = cl.request(send(2, json!(2))).await;
    assert_eq!(
        (r["code"].as_str(), r["status"].as_u64()),
        (Some("upstream_error"), Some(418)),
        "{r}"
    );
    a.b.status.store(0, Ordering::Relaxed);
    a.b.big.store(10_000, Ordering::Relaxed);
    let r = cl.request(send(3, json!(3))).await;
    assert_eq!(
        r["code"], "upstream_error",
        "an oversize answer is refused: {r}"
    );
    a.b.big.store(0, Ordering::Relaxed);
    a.b.not_json.store(true, Ordering::Relaxed);
    let r = cl.request(send(4, json!(4))).await;
    assert_eq!(r["code"], "upstream_error", "{r}");
    a.b.not_json.store(false, Ordering::Relaxed);
    a.kill().await;
    let r = cl.request(send(5, json!(5))).await;
    assert_eq!(r["code"], "upstream_unavailable", "{r}");
}

/// With the one slot taken by a request the backend holds, the next is `overloaded` at once,
/// without reaching the backend; the held one is answered once released.
#[tokio::test]
async fn over_max_concurrency_is_overloaded_at_once() {
    let [a, _b, _c] = backends().await;
    a.b.hold(true);
    let n = node(&service(&[&a], "max_concurrency = 1\ntimeout_ms = 60000")).await;
    let mut cl = n
        .client_for(CODECS[0], "u", &grants(&[], &[], &[">"]))
        .await;
    cl.send_json(send(1, json!(1))).await;
    a.b.arrived(1).await;
    let r = cl.request(send(2, json!(2))).await;
    assert_eq!(r["code"], "overloaded", "{r}");
    a.b.hold(false);
    let f = cl.next_frame().await;
    assert_eq!(
        (f["op"].as_str(), f["id"].as_u64()),
        (Some("reply"), Some(1)),
        "{f}"
    );
    assert_eq!(
        a.b.hits.load(Ordering::Relaxed),
        1,
        "the refused one never reached it"
    );
}

#[tokio::test]
async fn identity_headers_cannot_be_spoofed_and_only_allowlisted_headers_pass() {
    let [a, _b, _c] = backends().await;
    let n = node(&service(&[&a], "forward_headers = [\"cookie\"]")).await;
    let ticket = n.ticket_for("alice", &grants(&[], &[], &[">"])).await;
    let (mut cl, _) = crate::support::ws::open(
        n.addr,
        &format!("/ws?ticket={ticket}"),
        None,
        &[
            ("cookie", "session=42"),
            ("x-herald-user", "mallory"),
            ("x-custom", "nope"),
        ],
    )
    .await
    .unwrap();
    let welcome = cl.next_frame().await;
    let r = cl.request(send(1, json!({}))).await;
    let h = &r["data"]["headers"];
    assert_eq!(h["x-herald-user"], "alice", "{r}");
    assert_eq!(h["x-herald-conn"], welcome["conn"], "{r}");
    assert!(
        h["x-request-id"].as_str().is_some_and(|s| !s.is_empty()),
        "{r}"
    );
    assert_eq!(h["cookie"], "session=42");
    assert_eq!(h["x-custom"], Value::Null, "not in the allowlist");
}

#[tokio::test]
async fn a_config_that_forwards_an_x_herald_header_is_refused_at_start() {
    let toml = "[services.orders]\nendpoints = [\"http://127.0.0.1:9\"]\nforward_headers = [\"X-Herald-User\"]\n";
    let dir = std::env::temp_dir().join(format!("herald-bad-{}.toml", std::process::id()));
    std::fs::write(&dir, toml).unwrap();
    let env: Vec<(String, String)> = [
        ("HERALD_API_KEY", crate::support::API_KEY),
        ("HERALD_JWT_SECRET", crate::support::JWT_SECRET),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let err = herald::config::Config::load(Some(&dir), &env)
        .unwrap_err()
        .to_string();
    let _ = std::fs::remove_file(&dir);
    assert!(
        err.contains("services.orders") && err.contains("X-Herald"),
        "{err}"
    );
}

#[tokio::test]
async fn https_endpoints_are_reached_over_http2_with_the_configured_ca() {
    let dir = crate::tls::tempdir();
    let (cert, key) = crate::tls::make_cert(&dir);
    let backend = Backend::start_tls("secure", &cert, &key).await;
    let toml = format!(
        "[services.orders]\nendpoints = [{:?}]\ntls_ca = {cert:?}\n",
        backend.https_url()
    );
    let n = node(&toml).await;
    let mut cl = n
        .client_for(CODECS[0], "u", &grants(&[], &[], &[">"]))
        .await;
    for i in 1..=3 {
        let r = cl.request(send(i, json!({"i": i}))).await;
        assert_eq!(endpoint_of(&r), "secure");
        assert_eq!(r["data"]["version"], "HTTP/2.0", "ALPN picked HTTP/2: {r}");
    }
    // Without the CA, the backend's certificate is not trusted: nothing reaches it.
    let untrusted = format!(
        "[services.orders]\nendpoints = [{:?}]\n",
        backend.https_url()
    );
    let n = node(&untrusted).await;
    let mut cl = n
        .client_for(CODECS[0], "u", &grants(&[], &[], &[">"]))
        .await;
    let r = cl.request(send(9, json!({}))).await;
    assert_eq!(r["op"], "error", "{r}");
    assert_eq!(backend.b.hits.load(Ordering::Relaxed), 3);
    let _ = std::fs::remove_dir_all(&dir);
}
