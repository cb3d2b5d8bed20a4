//! `GET /metrics`: the admin key (or the API key when none is set, or no key with
//! `metrics_public`), the Prometheus text format (read here by a parser of the test's own), and a
//! node's own counts moving as a scripted flow goes: connections, refusals by reason, recoveries,
//! the publish-to-write histogram, disconnects by code, a slow consumer, a backend service's
//! requests and Redis's state. Two nodes in one process count apart, and no label carries a
//! topic, user or connection name.

use std::time::Duration;

use herald::protocol::websocket::OpCode;
use hyper::Method;
use serde_json::json;

use crate::support::backend::Backend;
use crate::support::raw::{connect_small, upgrade, upgrade_on};
use crate::support::redis::RedisServer;
use crate::support::{API_KEY, Codec, Node, WAIT, grants};

/// An admin key for the nodes that set one.
const ADMIN_KEY: &str = "it-admin-key-abcdefghijklmnop";

/// One sample line.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// A scrape: the text, and its samples.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

fn name_ok(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Reads the Prometheus text format strictly: every sample's family has a `# TYPE` line before
/// it, names and label names have their shape, label values are quoted (with `\"`, `\\`, `\n`
/// escapes), values are numbers.
fn parse(text: &str) -> Vec<Sample> {
    let mut typed: Vec<(String, String)> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(name_ok(name), "{line}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.push((name.to_owned(), kind.to_owned()));
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "an unknown comment: {line}");
        let (head, value) = line.rsplit_once(' ').expect("a sample and its value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("a number: {line}")),
        };
        let (name, labels) = match head.split_once('{') {
            None => (head, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                (name, labels_of(body, line))
            }
        };
        assert!(name_ok(name), "{line}");
        let family = typed.iter().find(|(t, kind)| {
            t == name
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(t.as_str())))
        });
        assert!(family.is_some(), "no # TYPE before {line}");
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

fn labels_of(mut body: &str, line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let (k, rest) = body.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
        assert!(name_ok(k) && !k.contains(':'), "a label name: {line}");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('"' | '\\'))) => value.push(c),
                    _ => panic!("a bad escape: {line}"),
                },
                Some((_, c)) => value.push(c),
                None => panic!("an unterminated label value: {line}"),
            }
        };
        out.push((k.to_owned(), value));
        body = &rest[end + 1..];
        body = body.strip_prefix(',').unwrap_or(body);
    }
    out
}

impl Scrape {
    /// The value of `name` with (at least) `labels`; 0 when absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map_or(0.0, |s| s.value)
    }
}

/// `GET /metrics` with `Authorization: Bearer <key>` (when given): the status and body.
async fn get_metrics(node: &Node, key: Option<&str>) -> crate::support::http::Response {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    node.http
        .request(Method::GET, "/metrics", &headers, Vec::new())
        .await
}

/// The node's metrics, read with the API key (the admin key of nodes that set none).
async fn scrape(node: &Node) -> Scrape {
    let r = get_metrics(node, Some(API_KEY)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    Scrape {
        samples: parse(&r.text),
        text: r.text,
    }
}

/// Scrapes until `done` holds (bounded by `bound`); returns that scrape.
async fn scrape_until(
    node: &Node,
    bound: Duration,
    what: &str,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let s = scrape(node).await;
        if done(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never: {what} (within {bound:?}):\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_take_the_admin_key_or_the_api_key_when_none_is_set_or_none_when_public() {
    let node = Node::start().await;
    let r = get_metrics(&node, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "missing_authorization", "{}", r.text);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer"))
    );
    assert!(r.json()["message"].as_str().is_some());
    let r = get_metrics(&node, Some("not-the-key-0123456789")).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("invalid_admin_key"))
    );
    let s = scrape(&node).await;
    assert!(
        s.get("herald_connections", &[]) == 0.0
            && s.text.contains("# TYPE herald_connections gauge")
    );
    assert!(
        s.text.contains("# TYPE process_cpu_seconds_total counter"),
        "{}",
        s.text
    );
    assert!(s.get("process_resident_memory_bytes", &[]) > 0.0);
    assert!(s.get("process_open_fds", &[]) > 0.0);

    let with_admin = Node::with(&[("HERALD_ADMIN_KEY", ADMIN_KEY)]).await;
    assert_eq!(get_metrics(&with_admin, Some(API_KEY)).await.status, 401);
    let r = get_metrics(&with_admin, Some(ADMIN_KEY)).await;
    assert_eq!(r.status, 200);
    parse(&r.text);
    assert_eq!(get_metrics(&with_admin, None).await.status, 401);

    let public = Node::with(&[("HERALD_METRICS_PUBLIC", "true")]).await;
    let r = get_metrics(&public, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    parse(&r.text);
    // The dashboard still needs the key.
    assert_eq!(public.http.get("/dashboard").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_own_counts_move_with_a_scripted_flow_and_labels_name_no_one() {
    let (node, other) = (Node::start().await, Node::start().await);
    let (topic, user) = ("metrics.topic-name-7f3a", "metrics-user-name-9c1e");
    let everything = grants(&[">"], &[">"], &[]);
    let mut a = node.client_for(Codec::Json, user, &everything).await;
    let mut b = node.client_for(Codec::MsgPack, user, &everything).await;
    a.sub(1, topic).await;
    b.sub(1, topic).await;
    let (offset, epoch) = node.publish(topic, json!({"n": 1})).await;
    assert_eq!(a.next_msg(topic).await["offset"], offset);
    assert_eq!(b.next_msg(topic).await["offset"], offset);
    // Refused upgrades, by their error code.
    upgrade(
        node.addr,
        "/ws?ticket=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        &[],
    )
    .await
    .assert_refused(401, "invalid_ticket");
    upgrade(node.addr, "/ws", &[])
        .await
        .assert_refused(401, "missing_ticket");
    // A recovery that is exact, and one that is not.
    let mut c = node.client_for(Codec::Json, user, &everything).await;
    let ok = c.sub_since(1, topic, 0, &epoch).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(c.next_msg(topic).await["offset"], offset);
    let ok = c.sub_since(2, "metrics.other", 5, "no-such-epoch").await;
    assert_eq!(ok["recovered"], false, "{ok}");
    c.close(1000).await;

    let s = scrape_until(&node, WAIT, "the flow is counted", |s| {
        s.get(
            "herald_publish_to_write_seconds_count",
            &[("which", "last")],
        ) >= 1.0
            && s.get("herald_disconnects_total", &[("code", "1000")]) >= 1.0
    })
    .await;
    assert_eq!(s.get("herald_connections", &[]), 2.0);
    assert_eq!(s.get("herald_connections_accepted_total", &[]), 3.0);
    assert_eq!(s.get("herald_subscriptions", &[]), 2.0);
    assert_eq!(s.get("herald_topics", &[]), 1.0);
    assert_eq!(
        s.get("herald_messages_published_total", &[("via", "api")]),
        1.0
    );
    assert_eq!(s.get("herald_bus_messages_total", &[]), 1.0);
    assert_eq!(s.get("herald_deliveries_total", &[]), 2.0);
    assert_eq!(s.get("herald_tickets_issued_total", &[]), 3.0);
    let refused = |reason| s.get("herald_connections_refused_total", &[("reason", reason)]);
    assert_eq!(
        (refused("invalid_ticket"), refused("missing_ticket")),
        (1.0, 1.0)
    );
    let recovered = |outcome| s.get("herald_recoveries_total", &[("outcome", outcome)]);
    assert_eq!((recovered("exact"), recovered("not_recovered")), (1.0, 1.0));
    assert_eq!(recovered("failed"), 0.0);
    assert_eq!(
        s.get(
            "herald_publish_to_write_seconds_count",
            &[("which", "first")]
        ),
        1.0
    );
    assert_eq!(s.get("herald_handshake_duration_seconds_count", &[]), 3.0);
    assert!(s.get("herald_socket_writes_total", &[]) >= 3.0);
    assert!(s.get("herald_bytes_written_total", &[]) > 0.0);
    assert!(s.get("herald_frames_received_total", &[]) >= 4.0);
    assert!(s.get("herald_bytes_received_total", &[]) > 0.0);
    assert!(
        s.text
            .contains("herald_publish_to_write_seconds_bucket{which=\"last\",le=\"0.005\"}")
    );
    // No label names anyone: not the topic, the user, nor a connection.
    for name in [topic, user, "metrics.other", crate::support::NODE_ID] {
        assert!(
            !s.text.contains(name),
            "{name} appears in the metrics:\n{}",
            s.text
        );
    }
    // The other node in the same process counted nothing of it.
    let o = scrape(&other).await;
    assert_eq!(o.get("herald_connections_accepted_total", &[]), 0.0);
    assert_eq!(o.get("herald_deliveries_total", &[]), 0.0);
    assert_eq!(
        o.get(
            "herald_publish_to_write_seconds_count",
            &[("which", "last")]
        ),
        0.0
    );
}

#[tokio::test]
async fn a_slow_consumer_is_counted_with_its_close_code() {
    let node = Node::with(&[
        ("HERALD_OUTBOX_BYTES", "65536"),
        ("HERALD_MAX_MESSAGE_BYTES", "40000"),
    ])
    .await;
    let ticket = node.ticket().await;
    let stream = connect_small(node.addr, 16 * 1024).await;
    let path = format!("/ws?ticket={ticket}");
    let mut ws = upgrade_on(stream, node.addr, &path, &[]).await.into_ws();
    assert_eq!(ws.next_frame().await["op"], "welcome");
    let sub = json!({"op": "sub", "id": 1, "topic": "slow"}).to_string();
    ws.send_frame(OpCode::Text, sub.as_bytes()).await;
    assert_eq!(ws.next_frame().await["op"], "ok");
    // The client reads nothing more: publish until its outbox overflows (some message is no
    // longer queued to it), bounded; its connection then ends within the close grace.
    let pad = "x".repeat(30_000);
    let mut published = 0.0;
    loop {
        for _ in 0..20 {
            node.publish("slow", json!({"pad": pad})).await;
        }
        published += 20.0;
        let s = scrape(&node).await;
        if s.get("herald_deliveries_total", &[]) < published {
            break;
        }
        assert!(
            published < 2000.0,
            "no overflow after {published} messages of 30 KB"
        );
    }
    let s = scrape_until(&node, WAIT, "the slow consumer's close is counted", |s| {
        s.get("herald_disconnects_total", &[("code", "4008")]) >= 1.0
    })
    .await;
    assert_eq!(s.get("herald_slow_consumers_total", &[]), 1.0);
    assert_eq!(s.get("herald_connections", &[]), 0.0);
}

#[tokio::test]
async fn backend_requests_are_counted_by_service_endpoint_and_outcome() {
    let backend = Backend::start("a").await;
    let toml = format!(
        "[services.orders]\nendpoints = [{:?}]\npath = \"/herald\"\n",
        backend.url()
    );
    let node = Node::with_toml(&toml, &[]).await;
    let mut c = node
        .client_for(Codec::Json, "alice", &grants(&[], &[], &[">"]))
        .await;
    let r = c
        .request(json!({"op": "send", "id": 1, "to": "orders", "data": {}}))
        .await;
    assert_eq!(r["op"], "reply", "{r}");
    let unknown = "no-such.service-4e2b";
    let r = c
        .request(json!({"op": "send", "id": 2, "to": unknown, "data": {}}))
        .await;
    assert_eq!(r["code"], "unknown_service", "{r}");
    let s = scrape(&node).await;
    let endpoint = backend.url();
    let ok = [
        ("service", "orders"),
        ("endpoint", endpoint.as_str()),
        ("outcome", "ok"),
    ];
    assert_eq!(s.get("herald_proxy_requests_total", &ok), 1.0, "{}", s.text);
    let timed = [("service", "orders"), ("endpoint", endpoint.as_str())];
    assert_eq!(
        s.get("herald_proxy_request_duration_seconds_count", &timed),
        1.0
    );
    let none = [
        ("service", "unknown"),
        ("endpoint", "none"),
        ("outcome", "unknown_service"),
    ];
    assert_eq!(s.get("herald_proxy_requests_total", &none), 1.0);
    assert!(!s.text.contains(unknown), "{}", s.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_state_reconnects_and_probe_round_trips_are_counted() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let node = Node::with(&[("HERALD_REDIS_URL", url.as_str())]).await;
    let s = scrape_until(&node, WAIT, "a probe came back", |s| {
        s.get("herald_redis_probe_rtt_seconds_count", &[]) >= 1.0
    })
    .await;
    assert_eq!(s.get("herald_redis_connected", &[]), 1.0);
    assert_eq!(s.get("herald_redis_reconnects_total", &[]), 0.0);
    // Redis restarts: not connected, then connected again with one reconnect more.
    redis.restart();
    scrape_until(&node, Duration::from_secs(15), "reconnected", |s| {
        s.get("herald_redis_reconnects_total", &[]) >= 1.0
            && s.get("herald_redis_connected", &[]) == 1.0
    })
    .await;
    // A node without Redis has none of these.
    let local = scrape(&Node::start().await).await;
    assert!(!local.text.contains("herald_redis_"), "{}", local.text);
}

#[tokio::test]
async fn the_heartbeat_samples_every_connections_outbox() {
    let node = Node::with(&[("HERALD_PING_INTERVAL_SECS", "1")]).await;
    let _c = node.client(Codec::Json).await;
    let s = scrape_until(&node, WAIT, "an outbox sampled", |s| {
        s.get("herald_outbox_bytes_count", &[]) >= 1.0
    })
    .await;
    assert!(
        s.text.contains("herald_outbox_bytes_bucket{le=\"0\"}"),
        "{}",
        s.text
    );
}
