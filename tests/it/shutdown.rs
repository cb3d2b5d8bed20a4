//! Draining: `/readyz` turns 503 and new work is refused while every client is closed with 1012,
//! then the node finishes; the same for the `herald serve` process on SIGTERM (proto/README.md sections 4.6, 8).

use std::time::Duration;

use tokio::net::TcpStream;

use crate::support::http::Http;
use crate::support::proc::{free_addr, herald, sigterm, stderr, wait_exit, wait_healthy};
use crate::support::{API_KEY, CODECS, JWT_SECRET, Node, codec_name, upgrade};

/// While the node drains it still answers: `/readyz` 503 (on a new connection, as a probe
/// makes), and new work refused with 503 `draining`; every client gets 1012; once they are gone
/// the drain completes and the listener closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_client_with_1012_turns_readyz_503_and_completes() {
    let mut node = Node::with(&[("HERALD_SHUTDOWN_TIMEOUT_SECS", "60")]).await;
    let mut clients = Vec::new();
    for codec in CODECS {
        let mut c = node.client(codec).await;
        c.sub(1, "news").await;
        clients.push(c);
    }
    let ticket = node.ticket().await;
    let mut topic_client = node
        .open(&format!("/topics/news?ticket={ticket}"), CODECS[0])
        .await;
    assert_eq!(topic_client.next_frame().await["op"], "welcome");
    let spare = node.ticket().await;
    let jwt = node.jwt("alice", &herald::auth::RawGrants::all());
    assert_eq!(node.http.get("/readyz").await.status, 200);

    // Holds the drain open, as a connection still closing would, until the checks are done.
    let closing = node.gateway().tracker.token();
    node.shutdown();
    let probe = Http::new(node.addr);
    let r = probe.get("/readyz").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json()["draining"], true, "{}", r.text);
    upgrade(node.addr, &format!("/ws?ticket={spare}"), &[])
        .await
        .assert_refused(503, "draining");
    let (status, body) = probe.post("/v1/tickets", Some(&jwt), "").await;
    assert_eq!((status, body["error"].as_str()), (503, Some("draining")));
    for c in &mut clients {
        assert_eq!(c.expect_close().await, 1012, "{}", codec_name(c.codec));
    }
    assert_eq!(topic_client.expect_close().await, 1012);
    drop(closing);
    tokio::time::timeout(Duration::from_secs(10), node.wait())
        .await
        .expect("shutdown completes once its clients are gone, long before its deadline");
    assert!(
        TcpStream::connect(node.addr).await.is_err(),
        "the listener is closed once the drain is complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_1012_and_the_process_exits_0() {
    let addr = free_addr();
    let listen = addr.to_string();
    let mut child = herald(
        &["serve"],
        &[
            ("HERALD_LISTEN", &listen),
            ("HERALD_API_KEY", API_KEY),
            ("HERALD_JWT_SECRET", JWT_SECRET),
            ("HERALD_SHUTDOWN_TIMEOUT_SECS", "5"),
        ],
    )
    .spawn()
    .expect("spawning herald serve");
    stderr(&mut child).drain();
    let node = Node::external(addr);
    wait_healthy(&node, Duration::from_secs(15)).await;
    let mut clients = Vec::new();
    for codec in CODECS {
        let mut c = node.client(codec).await;
        c.sub(1, "news").await;
        clients.push(c);
    }

    sigterm(&child);
    for c in &mut clients {
        assert_eq!(c.expect_close().await, 1012, "{}", codec_name(c.codec));
    }
    let status = wait_exit(&mut child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{status}");
}
