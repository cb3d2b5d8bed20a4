//! Hostile clients over real sockets: readers that stop, pipeliners that never read, slowloris
//! heads and bodies, floods from one address, and the addresses trusted proxies name. Each gets
//! a defined answer, and none holds a socket, a task or a slot for longer than its bound.

use std::net::SocketAddr;
use std::time::Duration;

use herald::protocol::websocket::OpCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::raw::{connect_small, upgrade, upgrade_on};
use crate::support::{API_KEY, Node};

/// Subscribes a raw client with a small receive buffer to `topic` and returns it unread.
async fn stalled_subscriber(node: &Node, topic: &str) -> crate::support::RawWs {
    let ticket = node.ticket().await;
    let stream = connect_small(node.addr, 4096).await;
    let mut ws = upgrade_on(stream, node.addr, &format!("/ws?ticket={ticket}"), &[])
        .await
        .into_ws();
    assert_eq!(ws.next_frame().await["op"], "welcome");
    let sub = json!({"op": "sub", "id": 1, "topic": topic}).to_string();
    ws.send_frame(OpCode::Text, sub.as_bytes()).await;
    assert_eq!(ws.next_frame().await["op"], "ok");
    ws
}

/// Publishes about 5 MB to `topic` in 16 KiB messages.
async fn publish_5mb(node: &Node, topic: &str) {
    let pad = "x".repeat(16 * 1024);
    for _ in 0..320 {
        node.publish(topic, json!({ "pad": pad })).await;
    }
}

/// A node with this outbox size, ping interval and write timeout; a subscriber of `topic` that
/// never reads; 5 MB published to it. Returns the subscriber's socket once the node has dropped
/// the connection (`what` ended it), which must happen within `bound`.
async fn dropped_stalled_subscriber(
    [outbox, ping, write_timeout]: [&str; 3],
    topic: &str,
    bound: Duration,
    what: &str,
) -> crate::support::RawWs {
    let node = Node::with(&[
        ("HERALD_OUTBOX_BYTES", outbox),
        ("HERALD_PING_INTERVAL_SECS", ping),
        ("HERALD_WRITE_TIMEOUT_SECS", write_timeout),
    ])
    .await;
    let ws = stalled_subscriber(&node, topic).await;
    publish_5mb(&node, topic).await;
    node.until(bound, what, |gw| gw.hub.connections() == 0)
        .await;
    ws
}

#[tokio::test]
async fn a_write_that_makes_no_progress_drops_the_connection_after_write_timeout_secs() {
    // No heartbeat and an outbox that never overflows: only the write deadline can end it.
    let settings = ["16777216", "600", "2"];
    let what = "the stalled connection is dropped";
    let mut ws = dropped_stalled_subscriber(settings, "stall", Duration::from_secs(30), what).await;
    ws.expect_reset().await;
}

#[tokio::test]
async fn a_close_that_is_due_ends_a_connection_whose_peer_never_reads() {
    // The outbox overflows (4008) while a write is pending; the write deadline is far away.
    let settings = ["131072", "600", "600"];
    let what = "the 4008 close takes effect";
    let mut ws =
        dropped_stalled_subscriber(settings, "overflow", Duration::from_secs(20), what).await;
    // Its close frame could not be written either: the socket is reset, not left lingering.
    ws.expect_reset().await;
}

#[tokio::test]
async fn a_heartbeat_close_ends_a_connection_whose_peer_never_reads_nor_pongs() {
    let settings = ["16777216", "1", "600"];
    let what = "the 4000 close takes effect";
    let mut ws =
        dropped_stalled_subscriber(settings, "silent", Duration::from_secs(20), what).await;
    ws.expect_reset().await;
}

#[tokio::test]
async fn an_http_client_that_pipelines_and_never_reads_is_dropped() {
    let node = Node::with(&[("HERALD_WRITE_TIMEOUT_SECS", "2")]).await;
    let mut stream = connect_small(node.addr, 4096).await;
    node.until(Duration::from_secs(5), "the connection is counted", |gw| {
        gw.conns.open() == 1
    })
    .await;
    // Requests until the server stops reading them (it cannot write the answers).
    let writer = tokio::spawn(async move {
        let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64);
        for _ in 0..4000 {
            if stream.write_all(&req).await.is_err() {
                break;
            }
        }
        stream
    });
    node.until(
        Duration::from_secs(40),
        "the pipelining connection is dropped",
        |gw| gw.conns.open() == 0,
    )
    .await;
    writer.abort();
}

/// Reads until the server closes; panics if it does not within `bound`.
async fn closed_within(stream: &mut TcpStream, bound: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(bound, read)
        .await
        .expect("the server closes the connection");
    got
}

#[tokio::test]
async fn a_connection_that_sends_nothing_or_a_head_byte_by_byte_is_closed() {
    let node = Node::start().await;
    let mut idle = TcpStream::connect(node.addr).await.unwrap();
    let mut slow = TcpStream::connect(node.addr).await.unwrap();
    let mut kept = TcpStream::connect(node.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        closed_within(&mut slow, Duration::from_secs(30)).await
    });
    closed_within(&mut idle, Duration::from_secs(30)).await;
    // A kept-alive connection gets its answer, then is closed when idle.
    let answer = closed_within(&mut kept, Duration::from_secs(30)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    trickle.await.unwrap();
}

#[tokio::test]
async fn a_body_that_does_not_arrive_gets_408() {
    let node = Node::start().await;
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Length: 100\r\n\r\n{{\"topic\""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = closed_within(&mut s, Duration::from_secs(30)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"timeout\""), "{text}");
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let node = Node::start().await;
    let big = "a".repeat(20 * 1024);
    let up = upgrade(node.addr, "/ws", &[("X-Big", &big)]).await;
    assert_eq!(up.status, 431);
    let many: Vec<(String, String)> = (0..100).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(upgrade(node.addr, "/ws", &many).await.status, 431);
}

/// A raw HTTP/1.1 exchange: the status, the `Retry-After` header and the `error` code.
async fn get_on(mut s: TcpStream, path: &str, extra: &str) -> (u16, Option<String>, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let answer = closed_within(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {text:?}"));
    let retry = text.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after:")
            .map(|v| v.trim().to_owned())
    });
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, retry, code)
}

/// A TCP connection to `addr` from loopback address `from` (another client address).
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(addr).await.unwrap()
}

#[tokio::test]
async fn every_tcp_connection_counts_against_max_connections_and_the_one_over_gets_503() {
    let node = Node::with(&[("HERALD_MAX_CONNECTIONS", "3")]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(node.addr).await.unwrap());
    }
    node.until(Duration::from_secs(5), "three connections counted", |gw| {
        gw.conns.open() == 3
    })
    .await;
    let over = TcpStream::connect(node.addr).await.unwrap();
    let (status, retry, code) = get_on(over, "/healthz", "").await;
    assert_eq!((status, code.as_str()), (503, "too_many_connections"));
    assert!(retry.is_some(), "503 carries Retry-After");
    held.pop();
    node.until(Duration::from_secs(5), "a place is free", |gw| {
        gw.conns.open() == 2
    })
    .await;
    let s = TcpStream::connect(node.addr).await.unwrap();
    assert_eq!(get_on(s, "/healthz", "").await.0, 200);
}

#[tokio::test]
async fn an_address_over_max_connections_per_ip_gets_429_and_other_addresses_do_not() {
    let node = Node::with(&[("HERALD_MAX_CONNECTIONS_PER_IP", "2")]).await;
    let _a = connect_from("127.0.0.1", node.addr).await;
    let _b = connect_from("127.0.0.1", node.addr).await;
    node.until(Duration::from_secs(5), "two connections counted", |gw| {
        gw.conns.open() == 2
    })
    .await;
    let (status, retry, code) =
        get_on(connect_from("127.0.0.1", node.addr).await, "/healthz", "").await;
    assert_eq!((status, code.as_str()), (429, "too_many_connections"));
    assert!(retry.is_some(), "429 carries Retry-After");
    let other = connect_from("127.0.0.2", node.addr).await;
    assert_eq!(get_on(other, "/healthz", "").await.0, 200);
}

#[tokio::test]
async fn ten_thousand_connection_attempts_from_one_address_are_refused_past_its_rate() {
    let node = Node::with(&[("HERALD_CONNECTION_RATE_PER_IP", "50")]).await;
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..10_000 {
        let s = connect_from("127.0.0.3", node.addr).await;
        match get_on(s, "/healthz", "").await {
            (200, _, _) => ok += 1,
            (429, Some(_), code) if code == "rate_limited" => limited += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // A burst of twice the rate, then the rate itself, over the seconds the loop took.
    assert!(ok >= 100, "the burst passes: {ok}");
    assert!(limited > 0, "the flood is refused: {ok} passed");
    // Another address is served all along.
    let other = connect_from("127.0.0.4", node.addr).await;
    assert_eq!(get_on(other, "/healthz", "").await.0, 200);
}

#[tokio::test]
async fn x_forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let trusted = Node::with(&[
        ("HERALD_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("HERALD_MAX_CONNECTIONS_PER_IP", "1"),
    ])
    .await;
    let t1 = trusted.ticket().await;
    let t2 = trusted.ticket().await;
    let t3 = trusted.ticket().await;
    let first = upgrade(
        trusted.addr,
        &format!("/ws?ticket={t1}"),
        &[("X-Forwarded-For", "192.0.2.1")],
    )
    .await;
    assert_eq!(first.status, 101);
    let again = upgrade(
        trusted.addr,
        &format!("/ws?ticket={t2}"),
        &[("X-Forwarded-For", "192.0.2.1")],
    )
    .await;
    again.assert_refused(429, "too_many_connections");
    let other = upgrade(
        trusted.addr,
        &format!("/ws?ticket={t3}"),
        &[("X-Forwarded-For", "192.0.2.2")],
    )
    .await;
    assert_eq!(other.status, 101);

    // Not trusted: the header is the client's own claim and changes nothing.
    let plain = Node::with(&[("HERALD_MAX_CONNECTIONS_PER_IP", "1")]).await;
    let _held = connect_from("127.0.0.5", plain.addr).await;
    plain
        .until(Duration::from_secs(5), "one connection counted", |gw| {
            gw.conns.open() == 1
        })
        .await;
    let s = connect_from("127.0.0.5", plain.addr).await;
    let (status, _, _) = get_on(s, "/healthz", "X-Forwarded-For: 192.0.2.9\r\n").await;
    assert_eq!(status, 429);
}

/// A PROXY protocol v2 header naming `ip:1234` (TCP over IPv4) as the source.
fn proxy_v2(ip: [u8; 4]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&ip);
    h.extend_from_slice(&[127, 0, 0, 1, 0x04, 0xd2, 0x1f, 0x90]);
    h
}

#[tokio::test]
async fn a_proxy_protocol_header_names_the_client_and_a_connection_without_one_is_closed() {
    let node = Node::with(&[
        ("HERALD_TRUSTED_PROXIES", "127.0.0.1"),
        ("HERALD_PROXY_PROTOCOL", "true"),
        ("HERALD_MAX_CONNECTIONS_PER_IP", "1"),
    ])
    .await;
    let mut a = TcpStream::connect(node.addr).await.unwrap();
    let mut first = proxy_v2([192, 0, 2, 1]);
    first.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    a.write_all(&first).await.unwrap();
    // Answered (and so counted for 192.0.2.1), and kept alive.
    let mut answer = [0u8; 12];
    a.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let mut b = TcpStream::connect(node.addr).await.unwrap();
    b.write_all(&proxy_v2([192, 0, 2, 1])).await.unwrap();
    assert_eq!(get_on(b, "/healthz", "").await.0, 429);
    let mut c = TcpStream::connect(node.addr).await.unwrap();
    c.write_all(&proxy_v2([192, 0, 2, 2])).await.unwrap();
    assert_eq!(get_on(c, "/healthz", "").await.0, 200);
    // Without the header, the request itself is read as one and refused: the connection closes.
    let mut d = TcpStream::connect(node.addr).await.unwrap();
    d.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut d, Duration::from_secs(10)).await;
    assert!(answer.is_empty(), "no answer without the header");
    drop(a);
}

#[tokio::test]
async fn tickets_are_rate_limited_per_user_and_per_address() {
    let node = Node::with(&[("HERALD_TICKET_RATE_PER_USER", "1")]).await;
    let jwt = node.jwt("mallory", &crate::support::grants(&["a"], &[], &[]));
    let mut refused = None;
    for _ in 0..5 {
        let (status, body) = node.http.post("/v1/tickets", Some(&jwt), "").await;
        if status == 429 {
            refused = Some(body);
            break;
        }
        assert_eq!(status, 200);
    }
    let body = refused.expect("a user past its ticket rate is refused");
    assert_eq!(body["error"], "rate_limited");
    // Another user is not.
    let other = node.jwt("trent", &crate::support::grants(&["a"], &[], &[]));
    assert_eq!(node.http.post("/v1/tickets", Some(&other), "").await.0, 200);

    let node = Node::with(&[("HERALD_TICKET_RATE_PER_IP", "1")]).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        // Refused before the token is even looked at.
        statuses.push(node.http.post("/v1/tickets", Some("not-a-jwt"), "").await.0);
    }
    assert_eq!(statuses[0], 401);
    assert!(statuses.contains(&429), "{statuses:?}");
}
