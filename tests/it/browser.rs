//! Herald in a real browser, Debian's chromium driven by playwright-core (`tests/browser`):
//! - the dashboard: two `herald serve` processes on one real redis-server, a small bounded load on
//!   both (subscribers reading, a publisher), and `dashboard.mjs` against the first node: the
//!   charts draw, their numbers move, the cluster view lists both nodes;
//! - permessage-deflate: `compression.mjs` opens a WebSocket from a page, which negotiates it,
//!   publishes a large message and reads it back intact; the node's byte counters show it crossed
//!   compressed both ways.
//!
//! Ignored by a plain `cargo test`: they need chromium and the browser test's `node_modules`.
//! `./test.sh` installs both and runs them (`cargo test --test it browser -- --ignored`).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::support::proc::serve;
use crate::support::redis::RedisServer;
use crate::support::{Codec, Node};

const ADMIN_KEY: &str = "browser-admin-key-0123456789";

/// The browser tests' folder and the browser, both checked to be there.
fn prerequisites() -> (std::path::PathBuf, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "run `npm ci` in {} first (./test.sh does)",
        dir.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing (./test.sh installs it)"
    );
    (dir, chromium)
}

/// Runs `node script` in `dir` with `env` (bounded: 120 s) and checks that every check passed.
async fn run_script(dir: &Path, script: &str, env: &[(&str, &std::ffi::OsStr)]) {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(script).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let run = cmd.stdin(Stdio::null()).kill_on_drop(true).output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser test finishes within 120 s")
        .expect("node runs (./test.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

/// The node's WebSocket byte counters, as a scrape of `/metrics` gives them (connections count
/// their own; a scrape sums them): read from clients, written to them.
async fn bytes(node: &Node) -> (f64, f64) {
    use herald::metrics::exposition::{parse, value};
    let scraped = node.metrics().await;
    let s = parse(&scraped.text).expect("the node's metrics parse");
    let get = |name| value(&s, name, &[]).unwrap_or(0.0);
    (
        get("herald_bytes_received_total"),
        get("herald_bytes_written_total"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and tests/browser/node_modules: ./test.sh installs them and runs it"]
async fn a_browser_negotiates_permessage_deflate_and_reads_a_large_message() {
    let (dir, chromium) = prerequisites();
    let node = Node::with(&[("HERALD_ALLOWED_ORIGINS", "*")]).await;
    let ticket = node.ticket().await;
    let before = bytes(&node).await;
    let url = format!("http://{}", node.addr);
    run_script(
        &dir,
        "compression.mjs",
        &[
            ("HERALD_URL", url.as_ref()),
            ("HERALD_TICKET", ticket.as_ref()),
            ("CHROMIUM", chromium.as_ref()),
        ],
    )
    .await;
    // The page published a message of about 40 KB and read it back: the browser's frame and
    // the node's both crossed compressed (with the small requests and replies beside them).
    let after = bytes(&node).await;
    let (read, written) = (after.0 - before.0, after.1 - before.1);
    println!("bytes read from the browser: {read}, written to it: {written}");
    assert!(
        read > 0.0 && read < 15_000.0,
        "{read} bytes read from the browser"
    );
    assert!(
        written > 0.0 && written < 15_000.0,
        "{written} bytes written to the browser"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and tests/browser/node_modules: ./test.sh installs them and runs it"]
async fn the_dashboard_draws_moves_and_lists_the_cluster_in_a_real_browser() {
    let (dir, chromium) = prerequisites();

    let redis = RedisServer::start();
    let url = redis.url();
    let env = |id: &str| -> Vec<(&'static str, String)> {
        vec![
            ("HERALD_REDIS_URL", url.clone()),
            ("HERALD_NODE_ID", String::from(id)),
            ("HERALD_ADMIN_KEY", ADMIN_KEY.into()),
            ("HERALD_CONNECTION_RATE_PER_IP", "100000".into()),
            ("HERALD_TICKET_RATE_PER_IP", "100000".into()),
            ("HERALD_TICKET_RATE_PER_USER", "100000".into()),
        ]
    };
    let (env_a, env_b) = (env("browser-a"), env("browser-b"));
    let a_pairs: Vec<(&str, &str)> = env_a.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let b_pairs: Vec<(&str, &str)> = env_b.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_a_proc, a) = serve(&[], &a_pairs).await;
    let (_b_proc, b) = serve(&[], &b_pairs).await;

    // The load: two subscribers on each node reading everything, and a publisher, until the
    // browser is done (bounded).
    let mut readers = Vec::new();
    for node in [&a, &b] {
        for _ in 0..2 {
            let mut c = node.client(Codec::Json).await;
            c.sub(1, "load").await;
            readers.push(tokio::spawn(async move {
                while c.next_or_gone().await.is_some() {}
            }));
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (done, addr) = (done.clone(), a.addr);
        tokio::spawn(async move {
            let node = Node::external(addr);
            for i in 0..6000u32 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                node.publish("load", json!({"i": i})).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let url = format!("http://{}", a.addr);
    run_script(
        &dir,
        "dashboard.mjs",
        &[
            ("HERALD_URL", url.as_ref()),
            ("HERALD_KEY", ADMIN_KEY.as_ref()),
            ("HERALD_NODES", "browser-a,browser-b".as_ref()),
            ("CHROMIUM", chromium.as_ref()),
            ("SCREENSHOTS", screenshots.as_os_str()),
        ],
    )
    .await;
    done.store(true, Ordering::Relaxed);
    let _ = publisher.await;
    for r in readers {
        r.abort();
    }
}
