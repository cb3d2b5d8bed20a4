//! The logs of a real `herald serve` process, as JSON lines (`log_format = "json"`) at the most
//! verbose level (`RUST_LOG=herald=trace`): every line is one JSON object; the lines of a
//! connection carry its span (connection id, user, node); a refused upgrade is one line with its
//! reason and the client address; a slow consumer's close is one line; Redis's state is logged;
//! and no line holds a secret: not the JWT (nor a forged one), the ticket, the API key, the JWT
//! secret or the Redis password.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald::auth::{RawGrants, mint_token};
use herald::protocol::websocket::OpCode;
use serde_json::{Value, json};

use crate::support::http::Http;
use crate::support::proc::{free_addr, herald, sigterm, stderr, stdout, wait_exit};
use crate::support::raw::{connect_small, upgrade, upgrade_on};
use crate::support::redis::RedisServer;
use crate::support::{API_KEY, Codec, JWT_SECRET, Node};

const REDIS_PASSWORD: &str = "redis-pw-never-logged-0123456789";
const NODE: &str = "logs-node";
const BOUND: Duration = Duration::from_secs(15);

/// A stalled client of `user` (it never reads, through a small receive buffer) subscribed to
/// `topic`.
async fn stalled(node: &Node, user: &str, topic: &str) -> crate::support::raw::RawWs {
    let ticket = node.ticket_for(user, &RawGrants::all()).await;
    let stream = connect_small(node.addr, 64 * 1024).await;
    let mut ws = upgrade_on(stream, node.addr, &format!("/ws?ticket={ticket}"), &[])
        .await
        .into_ws();
    assert_eq!(ws.next_frame().await["op"], "welcome");
    let sub = json!({"op": "sub", "id": 1, "topic": topic}).to_string();
    ws.send_frame(OpCode::Text, sub.as_bytes()).await;
    assert_eq!(ws.next_frame().await["op"], "ok");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_connection_spans_and_refusals_and_never_a_secret() {
    let redis = RedisServer::start();
    let pw = format!(">{REDIS_PASSWORD}");
    let acl = [
        "ACL",
        "SETUSER",
        "herald-logs",
        "on",
        &pw,
        "~*",
        "&*",
        "+@all",
    ];
    assert_eq!(redis.cli(&acl).trim(), "OK");
    let url = redis.url_as("herald-logs", REDIS_PASSWORD);
    let addr = free_addr();
    let listen = addr.to_string();
    let mut child = herald(
        &["serve"],
        &[
            ("HERALD_LISTEN", &listen),
            ("HERALD_API_KEY", API_KEY),
            ("HERALD_JWT_SECRET", JWT_SECRET),
            ("HERALD_NODE_ID", NODE),
            ("HERALD_REDIS_URL", &url),
            ("HERALD_LOG_FORMAT", "json"),
            ("RUST_LOG", "herald=trace"),
            // Big messages and a small outbox: a stalled client is a slow consumer quickly.
            ("HERALD_MAX_MESSAGE_BYTES", "1048576"),
            ("HERALD_OUTBOX_BYTES", "2097152"),
        ],
    )
    .spawn()
    .expect("spawning herald serve");
    let mut log = stderr(&mut child);
    stdout(&mut child).drain();
    log.until(BOUND, |l| l.contains("listening on")).await;
    let node = Node::external(addr);

    // JWT, ticket, upgrade, sub, publish, msg.
    let jwt = node.jwt("alice", &RawGrants::all());
    let ticket = node.ticket_with(&jwt).await;
    let mut c = node
        .open(&format!("/ws?ticket={ticket}"), Codec::Json)
        .await;
    let welcome = c.next_frame().await;
    let conn = welcome["conn"]
        .as_str()
        .expect("a connection id")
        .to_owned();
    c.sub(1, "news").await;
    node.publish("news", json!({"hello": "logs"})).await;
    assert_eq!(c.next_msg("news").await["data"], json!({"hello": "logs"}));

    // The ticket again, and one never issued: refused upgrades. A JWT signed with another
    // secret, and a wrong API key: refused API requests.
    let again = upgrade(addr, &format!("/ws?ticket={ticket}"), &[]).await;
    assert_eq!(again.status, 401, "{}", again.body);
    let forged_ticket = "Zm9yZ2VkLXRpY2tldC1uZXZlci1pc3N1ZWQtYnktaGVyYWxk"
        .chars()
        .take(43);
    let forged_ticket: String = forged_ticket.collect();
    let r = upgrade(addr, &format!("/ws?ticket={forged_ticket}"), &[]).await;
    r.assert_refused(401, "invalid_ticket");
    let forged_jwt = mint_token(
        b"another-secret-that-is-long-enough-0123",
        "mallory",
        &RawGrants::all(),
        Duration::from_secs(3600),
    )
    .unwrap();
    let (status, _) = node.http.post("/v1/tickets", Some(&forged_jwt), "").await;
    assert_eq!(status, 401);
    let body = json!({"topic": "news", "data": 1}).to_string();
    let (status, _) = node
        .http
        .post("/v1/publish", Some("not-the-api-key-0123456789"), &body)
        .await;
    assert_eq!(status, 401);

    // A slow consumer: big messages to a client that does not read, until its close is logged.
    let _bob = stalled(&node, "bob", "big").await;
    let enough = Arc::new(AtomicBool::new(false));
    let stop = enough.clone();
    let publisher = tokio::spawn(async move {
        let http = Http::new(addr);
        let body = json!({"topic": "big", "data": "x".repeat(512 * 1024)}).to_string();
        for _ in 0..64 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let (status, out) = http.post("/v1/publish", Some(API_KEY), &body).await;
            assert_eq!(status, 200, "{out}");
        }
    });
    log.until(BOUND, |l| l.contains("slow consumer")).await;
    enough.store(true, Ordering::Relaxed);
    publisher.await.expect("the publisher");

    sigterm(&child);
    let lines = log.rest(BOUND).await;
    assert_eq!(wait_exit(&mut child, BOUND).await.code(), Some(0));

    let whole = lines.join("\n");
    let signature = jwt.rsplit('.').next().unwrap();
    for (what, secret) in [
        ("the JWT", jwt.as_str()),
        ("the JWT's signature", signature),
        ("a forged JWT", forged_jwt.as_str()),
        ("the ticket", ticket.as_str()),
        ("a forged ticket", forged_ticket.as_str()),
        ("the API key", API_KEY),
        ("the JWT secret", JWT_SECRET),
        ("the Redis password", REDIS_PASSWORD),
    ] {
        assert!(!whole.contains(secret), "{what} is in the log:\n{whole}");
    }

    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for v in &parsed {
        assert!(
            v["timestamp"].is_string() && v["level"].is_string() && v["fields"].is_object(),
            "{v}"
        );
        // The only span is a connection's, and it carries all three.
        if let Some(span) = v.get("span") {
            assert_eq!(span["name"], "conn", "{v}");
            for field in ["conn", "user", "node"] {
                assert!(span[field].is_string(), "{field} missing: {v}");
            }
            assert_eq!(span["node"], NODE, "{v}");
        }
    }
    let message = |v: &Value| v["fields"]["message"].as_str().unwrap_or("").to_owned();
    let of_conn: Vec<&Value> = parsed
        .iter()
        .filter(|v| v["span"]["conn"] == conn)
        .collect();
    assert!(
        of_conn
            .iter()
            .any(|v| message(v).contains("connection open")),
        "alice's connection has lines in its span: {of_conn:?}"
    );
    assert!(of_conn.iter().all(|v| v["span"]["user"] == "alice"));

    let refused: Vec<&Value> = parsed
        .iter()
        .filter(|v| message(v).starts_with("upgrade refused"))
        .collect();
    assert_eq!(
        refused.len(),
        2,
        "one line per refused upgrade: {refused:?}"
    );
    for v in &refused {
        assert_eq!(v["fields"]["client"], "127.0.0.1", "{v}");
        assert_eq!(v["fields"]["status"], 401, "{v}");
    }
    let errors: Vec<&str> = refused
        .iter()
        .map(|v| v["fields"]["error"].as_str().unwrap())
        .collect();
    assert!(
        matches!(errors[0], "ticket_used" | "invalid_ticket") && errors[1] == "invalid_ticket",
        "{errors:?}"
    );

    let slow: Vec<&Value> = parsed
        .iter()
        .filter(|v| message(v).contains("slow consumer"))
        .collect();
    assert_eq!(slow.len(), 1, "one line per slow consumer: {slow:?}");
    assert_eq!(slow[0]["span"]["user"], "bob", "{}", slow[0]);
    // The line names the connection itself too: at info level there is no connection span.
    assert_eq!(slow[0]["fields"]["user"], "bob", "{}", slow[0]);
    assert!(slow[0]["fields"]["conn"].is_string(), "{}", slow[0]);

    let redis_ready = parsed
        .iter()
        .find(|v| v["fields"]["redis"] == "ready")
        .expect("the Redis connection is logged");
    let shown = redis_ready["fields"]["url"].as_str().unwrap();
    assert!(shown.contains("***@127.0.0.1"), "{shown}");
}
