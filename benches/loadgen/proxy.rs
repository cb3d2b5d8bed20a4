//! The proxy scenarios: `send`-to-`reply` latency through a node, the same requests made
//! directly to the backend (to measure the proxy's overhead), and a minimal echo backend for
//! both. Closed loops: each connection sends one request, waits for its answer, and is paced to
//! its share of the rate; every loop stops after `--requests` or `--duration-limit`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

use crate::codec::Codec;
use crate::hist::Histogram;
use crate::http::{Target, Tickets};
use crate::{Args, conn};

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Clients `send` to `--service` through the node at `--url`.
    Send,
    /// The same requests POSTed straight to `--backend-url`.
    Direct,
    /// An echo backend on `--listen` (for `--duration-limit` seconds).
    Backend,
}

struct Outcome {
    hist: Histogram,
    ok: u64,
    errors: std::collections::BTreeMap<String, u64>,
}

/// Runs the mode; prints a report.
pub(crate) async fn run(args: &Args, mode: Mode, jwt: Option<String>) -> anyhow::Result<()> {
    let limit = Duration::from_secs_f64(args.duration_limit);
    if mode == Mode::Backend {
        let addr = args.listen.as_deref().unwrap_or("127.0.0.1:9001");
        anyhow::ensure!(
            addr.starts_with("127.0.0.1:"),
            "--listen must be 127.0.0.1:<port>"
        );
        let app = Router::new()
            .route(
                "/herald",
                post(|body: Bytes| async move {
                    // Echo the request's `data` back as the answer.
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    axum::Json(v.get("data").cloned().unwrap_or_default())
                }),
            )
            .route("/healthz", get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("herald-bench: echo backend on {addr} for {:?}", limit);
        let _ = tokio::time::timeout(limit, axum::serve(listener, app)).await;
        return Ok(());
    }
    let rate = args.rate()?.unwrap_or(1000.0);
    let conns = args.conns.max(1);
    let per_conn = rate / conns as f64;
    let total = args.requests;
    let out = Arc::new(Mutex::new(Outcome {
        hist: Histogram::new(),
        ok: 0,
        errors: Default::default(),
    }));
    let deadline = Instant::now() + limit;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..conns {
        let n = total / conns as u64 + u64::from((k as u64) < total % conns as u64);
        let out = out.clone();
        let pad = "x".repeat(args.size.saturating_sub(40));
        match mode {
            Mode::Send => {
                let target = Target::parse(&args.url)?;
                target.require_plain("--proxy send")?;
                let tickets = Tickets::new(&target, jwt.as_deref().unwrap_or(""))?;
                let service = args.service.clone().unwrap_or_else(|| "orders".into());
                let mut ws = conn::open(&target, Some(&tickets), Codec::Json, false)
                    .await
                    .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
                tasks.push(tokio::spawn(async move {
                    for i in 0..n {
                        pace(started, per_conn, i).await;
                        if Instant::now() >= deadline {
                            break;
                        }
                        let id = i + 1;
                        let req = serde_json::json!({"op": "send", "id": id, "to": service, "data": {"p": pad}});
                        let t = Instant::now();
                        let r = async {
                            ws.send(req.to_string().as_bytes()).await.map_err(|e| e.to_string())?;
                            ws.reply(id).await.map_err(|e| format!("{e:?}"))
                        };
                        let r = tokio::time::timeout(Duration::from_secs(10), r).await;
                        record(&out, t, match r {
                            Ok(Ok(v)) if v["op"] == "reply" => Ok(()),
                            Ok(Ok(v)) => Err(v["code"].as_str().unwrap_or("?").to_owned()),
                            Ok(Err(e)) => Err(e),
                            Err(_) => Err("timeout".into()),
                        })
                        .await;
                    }
                }));
            }
            Mode::Direct => {
                let url = args
                    .backend_url
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("--proxy direct needs --backend-url"))?;
                anyhow::ensure!(
                    url.starts_with("http://127.0.0.1:"),
                    "--backend-url must be loopback"
                );
                let mut c = HttpConnector::new();
                c.set_nodelay(true);
                let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(c);
                tasks.push(tokio::spawn(async move {
                    for i in 0..n {
                        pace(started, per_conn, i).await;
                        if Instant::now() >= deadline {
                            break;
                        }
                        let body = serde_json::json!({"id": i + 1, "user": "bench", "conn": "c", "data": {"p": pad}});
                        let req = hyper::Request::post(format!("{url}/herald"))
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body.to_string())))
                            .expect("a request");
                        let t = Instant::now();
                        let r = async {
                            let resp = client.request(req).await.map_err(|e| e.to_string())?;
                            let ok = resp.status().is_success();
                            resp.into_body().collect().await.map_err(|e| e.to_string())?;
                            if ok { Ok(()) } else { Err("status".to_string()) }
                        };
                        let r = tokio::time::timeout(Duration::from_secs(10), r).await;
                        record(&out, t, r.unwrap_or_else(|_| Err("timeout".into()))).await;
                    }
                }));
            }
            Mode::Backend => unreachable!("handled above"),
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let o = out.lock().await;
    let us = |q: f64| o.hist.quantile(q) as f64 / 1000.0;
    println!(
        "proxy {mode:?}: {} ok, errors {:?}, {:.0} req/s over {secs:.2} s, {conns} connections",
        o.ok,
        o.errors,
        o.ok as f64 / secs
    );
    println!(
        "latency (us)     p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        us(0.50),
        us(0.90),
        us(0.99),
        o.hist.max() as f64 / 1000.0
    );
    anyhow::ensure!(o.errors.is_empty(), "some requests failed");
    Ok(())
}

async fn pace(start: Instant, rate: f64, i: u64) {
    if rate > 0.0 {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
    }
}

async fn record(out: &Mutex<Outcome>, t: Instant, r: Result<(), String>) {
    let ns = t.elapsed().as_nanos() as u64;
    let mut o = out.lock().await;
    match r {
        Ok(()) => {
            o.ok += 1;
            o.hist.record(ns);
        }
        Err(e) => *o.errors.entry(e).or_default() += 1,
    }
}
