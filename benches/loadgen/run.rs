//! The phases of a run: connect and subscribe (bounded concurrency, no retries), optionally
//! idle, publish and drain until every expected delivery arrived or the time limit, then stop
//! every subscriber and add up what each one saw.

use crate::hist::Recorder;
use crate::http::{self, Target, Tickets};
use crate::publish::{self, Plan, PubStats};
use crate::report::{self, Report};
use crate::rx::{self, Shared, Sink, SubStats};
use crate::stall;
use crate::sys::{self, CpuClock};
use crate::{Args, codec, conn, now_ns};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};

/// Time allowed for one connection's ticket + connect + upgrade + welcome + subscribe.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

struct Subscribers {
    handles: Vec<JoinHandle<()>>,
    /// Per connection: subscribed in time (counted in the expectations).
    counted: Vec<bool>,
    subs_per_topic: Vec<u64>,
    ok: usize,
    failures: BTreeMap<String, u64>,
    epoch: Option<String>,
    secs: f64,
}

/// One ticket, to fail fast on a wrong secret or a server that is not there.
pub(crate) async fn preflight(tickets: &Tickets, target: &Target) -> anyhow::Result<()> {
    if let Err(e) = tickets.get().await {
        let hint = if e.contains("HTTP 401") {
            "the JWT was refused: is --jwt-secret (HERALD_JWT_SECRET) the server's secret?"
        } else if e.contains("ticket http") {
            "is the server running and listening on this address (and, over TLS, is --ca its certificate)?"
        } else {
            "the server answered unexpectedly"
        };
        anyhow::bail!("preflight ticket request to {}: {e} ({hint})", target.base);
    }
    Ok(())
}

pub(crate) async fn run(args: Args, threads: usize) -> anyhow::Result<(Report, bool)> {
    let target = Target::parse(&args.url)?.with_sources(args.source_addrs)?;
    target.require_plain("the publish and idle runs")?;
    // Subscribers go round-robin over every node given.
    let mut targets = vec![target.clone()];
    for u in &args.also_urls {
        let t = Target::parse(u)?.with_sources(args.source_addrs)?;
        t.require_plain("the publish and idle runs")?;
        targets.push(t);
    }
    if let Some(r) = &args.redis_url {
        let host = r
            .strip_prefix("redis://")
            .and_then(|h| h.split([':', '/']).next())
            .unwrap_or("");
        anyhow::ensure!(
            matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
            "--redis-url must be a loopback redis:// URL, not {r:?}"
        );
    }
    let tickets = if args.baseline {
        // No tickets: one connection, to fail fast when nothing listens.
        if let Err(e) = target.connect().await {
            anyhow::bail!(
                "connect to {}: {e} (is herald-baseline running there?)",
                target.base
            );
        }
        None
    } else {
        let jwt = match (&args.token, &args.jwt_secret) {
            (Some(t), _) => t.clone(),
            (None, Some(s)) => {
                http::mint_jwt(s.as_bytes(), "herald-bench", Duration::from_secs(6 * 3600))?
            }
            (None, None) => anyhow::bail!(
                "give --jwt-secret (or HERALD_JWT_SECRET) or --token (or HERALD_TOKEN)"
            ),
        };
        let tickets = Tickets::new(&target, &jwt)?;
        preflight(&tickets, &target).await?;
        Some(tickets)
    };

    let rate = args.rate()?;
    let topics: Arc<Vec<String>> = Arc::new(
        (0..args.topics)
            .map(|i| format!("{}.{i}", args.topic_prefix))
            .collect(),
    );
    let pid = args.server_pid.map(|p| p.to_string());
    let tck = sys::clk_tck();
    let me = std::process::id().to_string();
    let rss_before = pid.as_deref().and_then(sys::rss_kib);
    if let Some(p) = &pid {
        anyhow::ensure!(
            rss_before.is_some(),
            "--server-pid {p}: no such process (cannot read /proc/{p}/status)"
        );
    }

    let shared = Arc::new(Shared {
        hist: Recorder::new(threads * 2),
        delivered: Default::default(),
        last_rx_ns: Default::default(),
    });
    let sink: Sink = Default::default();
    let per_topic_msgs = if args.idle {
        0
    } else {
        args.messages.div_ceil(args.topics as u64)
    };
    let subs = connect_all(
        &args,
        &targets,
        tickets.as_ref(),
        &topics,
        per_topic_msgs,
        &shared,
        &sink,
    )
    .await;
    progress(
        &args,
        format_args!(
            "{} subscribed, {} failed in {:.2} s",
            subs.ok,
            args.conns - subs.ok,
            subs.secs
        ),
    );

    let mut rep = Report {
        mode: if args.idle { "idle" } else { "publish" },
        config: serde_json::json!({
            "url": target.base, "baseline": args.baseline, "conns": args.conns, "topics": args.topics, "publish_rate": args.publish_rate,
            "messages": args.messages, "size": args.size, "codec": args.codec, "deflate": args.deflate, "payload": args.payload, "publish_via": args.publish_via, "pacing": args.pacing,
            "publishers": args.publishers, "inflight": args.inflight, "duration_limit": args.duration_limit, "max_backlog": args.max_backlog,
        }),
        ..Default::default()
    };
    rep.connections = report::Connections {
        requested: args.conns,
        ok: subs.ok,
        failed: args.conns - subs.ok,
        failures: subs.failures.clone(),
        connect_secs: subs.secs,
        ended_early: BTreeMap::new(),
    };
    rep.bench.threads = threads;

    let wait = if args.idle {
        args.idle_wait
    } else {
        args.settle
    };
    // With --idle the CPU clocks and the stall watch cover the idle wait (heartbeats and
    // timers); otherwise the publish phase.
    let mut bench_cpu = CpuClock::start(&me, tck);
    let mut server_cpu = pid.as_deref().map(|p| CpuClock::start(p, tck));
    let watch = || match stall::Watch::start(&args.watch_cpus) {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("herald-bench: cannot start the stall watch: {e}");
            None
        }
    };
    let mut stalls = if args.idle { watch() } else { None };
    tokio::time::sleep(Duration::from_secs_f64(wait.max(0.0))).await;
    let rss_subscribed = pid.as_deref().and_then(sys::rss_kib);

    let mut clean = subs.ok == args.conns;
    if !args.idle {
        bench_cpu = CpuClock::start(&me, tck);
        server_cpu = pid.as_deref().map(|p| CpuClock::start(p, tck));
        stalls = watch();
    }
    if !args.idle && subs.ok > 0 {
        let epoch = subs.epoch.clone().unwrap_or_default();
        let pad = codec::pad_for(
            args.codec,
            args.payload,
            args.size,
            topics.last().map(String::as_str).unwrap_or(""),
            &epoch,
        );
        let pstats = Arc::new(PubStats::new(&subs.subs_per_topic));
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(args.duration_limit);
        let start_ns = now_ns();
        let plan = Arc::new(Plan {
            total: args.messages,
            topics: topics.clone(),
            publishers: args.publishers,
            rate,
            pacing: args.pacing,
            inflight: args.inflight,
            pad,
            payload: args.payload,
            codec: args.codec,
            via: args.publish_via,
            deadline,
            target: target.clone(),
            tickets: tickets.clone(),
            api_key: args.api_key.clone(),
            redis_url: args.redis_url.clone(),
            backlog: (args.max_backlog > 0).then_some(args.max_backlog),
            shared: shared.clone(),
        });
        let mut pub_task = tokio::spawn(publish::run(plan, pstats.clone()));
        let mut failures: Option<Vec<String>> = None;
        let expected = |ps: &PubStats| -> u64 {
            ps.ok_per_topic
                .iter()
                .zip(&subs.subs_per_topic)
                .map(|(o, s)| o.load(Relaxed) * s)
                .sum()
        };
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut next_progress = start + Duration::from_secs(5);
        let (mut last_seen, mut last_change) = (0u64, Instant::now());
        let stop_reason = loop {
            tokio::select! {
                r = &mut pub_task, if failures.is_none() => {
                    failures = Some(r.unwrap_or_else(|e| vec![format!("publishers: {e}")]));
                    last_change = Instant::now();
                }
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let got = shared.delivered.load(Relaxed);
            if got != last_seen {
                (last_seen, last_change) = (got, now);
            }
            if failures.is_some() && got >= expected(&pstats) {
                break "complete";
            }
            if now >= deadline {
                break "duration-limit";
            }
            if failures.is_some()
                && now.duration_since(last_change).as_secs_f64() >= args.stall_timeout
            {
                break "stalled";
            }
            if now >= next_progress {
                next_progress += Duration::from_secs(5);
                progress(
                    &args,
                    format_args!(
                        "{:.0} s: {} sent, {} ok, {} of {} deliveries",
                        (now - start).as_secs_f64(),
                        pstats.sent.load(Relaxed),
                        pstats.ok.load(Relaxed),
                        got,
                        expected(&pstats)
                    ),
                );
            }
        };
        let server_secs = server_cpu.as_ref().and_then(CpuClock::seconds);
        rep.bench.cpu_secs = bench_cpu.seconds();
        rep.bench.stalls = stalls.map(stall::Watch::finish);
        let end_ns = if stop_reason == "complete" {
            shared.last_rx_ns.load(Relaxed).max(start_ns)
        } else {
            now_ns()
        };
        if failures.is_none() {
            // Publishers stop by the same deadline; give them a moment, then stop waiting.
            failures = Some(
                match tokio::time::timeout(Duration::from_secs(5), &mut pub_task).await {
                    Ok(r) => r.unwrap_or_else(|e| vec![format!("publishers: {e}")]),
                    Err(_) => {
                        pub_task.abort();
                        vec!["publishers still running at the stop".into()]
                    }
                },
            );
        }
        let stats = stop_all(subs.handles, &subs.counted, &sink).await;
        let sent = pstats.sent.load(Relaxed);
        let (first, last) = (
            pstats.first_send_ns.load(Relaxed),
            pstats.last_send_ns.load(Relaxed),
        );
        let errors = pstats.errors.lock().map(|m| m.clone()).unwrap_or_default();
        rep.published = Some(report::Published {
            planned: args.messages,
            sent,
            ok: pstats.ok.load(Relaxed),
            errors: errors.clone(),
            publisher_failures: failures.unwrap_or_default(),
            send_rate_per_sec: if sent > 1 && last > first {
                (sent - 1) as f64 * 1e9 / (last - first) as f64
            } else {
                0.0
            },
        });
        let mut d = report::Deliveries {
            stop_reason: if sent == 0 {
                "nothing-published".to_string()
            } else {
                stop_reason.to_string()
            },
            ..Default::default()
        };
        let (mut frames, mut bytes) = (0u64, 0u64);
        let (mut compressed, mut deflate_conns) = (0u64, 0u64);
        for s in &stats {
            let exp = pstats.ok_per_topic[s.topic].load(Relaxed);
            d.expected += exp;
            d.received += s.unique;
            d.lost += exp.saturating_sub(s.unique);
            d.duplicated += s.dups;
            d.out_of_order += s.out_of_order;
            d.unexpected += s.unexpected;
            d.foreign_msgs += s.foreign;
            d.server_error_frames += s.server_errors;
            if d.first_server_error.is_none() {
                d.first_server_error = s.first_error.clone();
            }
            frames += s.frames;
            bytes += s.bytes;
            compressed += s.compressed;
            deflate_conns += u64::from(s.deflate);
            if let Some(e) = &s.ended {
                *rep.connections.ended_early.entry(e.clone()).or_default() += 1;
            }
        }
        d.elapsed_secs = end_ns.saturating_sub(start_ns) as f64 / 1e9;
        d.per_sec = if d.elapsed_secs > 0.0 {
            d.received as f64 / d.elapsed_secs
        } else {
            0.0
        };
        d.avg_frame_bytes = if frames > 0 {
            bytes as f64 / frames as f64
        } else {
            0.0
        };
        d.wire_bytes = bytes;
        d.compressed_frames = compressed;
        d.deflate_conns = deflate_conns;
        clean &= d.lost == 0
            && d.duplicated == 0
            && d.out_of_order == 0
            && errors.is_empty()
            && stop_reason == "complete"
            && rep.connections.ended_early.is_empty();
        let delivered_total = d.received;
        rep.deliveries = Some(d);
        rep.latency_us = report::Latency::from(&shared.hist.snapshot());
        rep.server = pid.as_ref().map(|_| report::Server {
            cpu_secs: server_secs,
            cpu_secs_per_million_deliveries: server_secs
                .filter(|_| delivered_total > 0)
                .map(|s| s * 1e6 / delivered_total as f64),
            ..Default::default()
        });
    } else {
        let server_secs = server_cpu.as_ref().and_then(CpuClock::seconds);
        rep.bench.cpu_secs = bench_cpu.seconds();
        rep.bench.stalls = stalls.map(stall::Watch::finish);
        let stats = stop_all(subs.handles, &subs.counted, &sink).await;
        for s in stats.iter().filter_map(|s| s.ended.as_ref()) {
            *rep.connections.ended_early.entry(s.clone()).or_default() += 1;
        }
        clean &= rep.connections.ended_early.is_empty() && args.idle;
        rep.server = pid.as_ref().map(|_| report::Server {
            cpu_secs: server_secs,
            ..Default::default()
        });
    }
    if let (Some(s), Some(p)) = (rep.server.as_mut(), args.server_pid) {
        s.pid = p;
        s.rss_before_kib = rss_before;
        s.rss_subscribed_kib = rss_subscribed;
        s.rss_per_conn_kib = match (rss_before, rss_subscribed) {
            (Some(a), Some(b)) if subs.ok > 0 => Some((b as f64 - a as f64) / subs.ok as f64),
            _ => None,
        };
        s.rss_end_kib = pid.as_deref().and_then(sys::rss_kib);
    }
    Ok((rep, clean))
}

fn progress(args: &Args, msg: std::fmt::Arguments<'_>) {
    if !args.quiet {
        eprintln!("herald-bench: {msg}");
    }
}

/// Open and subscribe all connections, `connect_concurrency` at a time, no retries.
async fn connect_all(
    args: &Args,
    targets: &[Target],
    tickets: Option<&Tickets>,
    topics: &Arc<Vec<String>>,
    per_topic_msgs: u64,
    shared: &Arc<Shared>,
    sink: &Sink,
) -> Subscribers {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(args.connect_timeout);
    let sem = Arc::new(Semaphore::new(args.connect_concurrency));
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<(usize, Result<String, String>)>();
    let mut out = Subscribers {
        handles: Vec::with_capacity(args.conns),
        counted: vec![false; args.conns],
        subs_per_topic: vec![0; args.topics],
        ok: 0,
        failures: BTreeMap::new(),
        epoch: None,
        secs: 0.0,
    };
    let mut pending = 0usize;
    let mut next_progress = t0 + Duration::from_secs(5);
    let handle_event = |out: &mut Subscribers, (c, r): (usize, Result<String, String>)| match r {
        Ok(epoch) => {
            out.counted[c] = true;
            out.subs_per_topic[c % args.topics] += 1;
            out.ok += 1;
            out.epoch.get_or_insert(epoch);
        }
        Err(e) => *out.failures.entry(e).or_default() += 1,
    };
    for c in 0..args.conns {
        let permit = match tokio::time::timeout_at(deadline, sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                *out.failures
                    .entry("not attempted: connect phase timed out".into())
                    .or_default() += (args.conns - c) as u64;
                break;
            }
        };
        while let Ok(ev) = ev_rx.try_recv() {
            pending -= 1;
            handle_event(&mut out, ev);
        }
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(5);
            progress(
                args,
                format_args!(
                    "connecting: {} subscribed, {} failed, {} attempted",
                    out.ok,
                    out.failures.values().sum::<u64>(),
                    c
                ),
            );
        }
        let (target, tickets, topics, shared, sink, ev_tx) = (
            targets[c % targets.len()].clone(),
            tickets.cloned(),
            topics.clone(),
            shared.clone(),
            sink.clone(),
            ev_tx.clone(),
        );
        let tp = c % args.topics;
        let codec = args.codec;
        let deflate = args.deflate;
        pending += 1;
        out.handles.push(tokio::spawn(async move {
            let opened = tokio::time::timeout(STEP_TIMEOUT, async {
                let mut ws = conn::open(&target, tickets.as_ref(), codec, deflate).await?;
                let epoch = ws.subscribe(&topics[tp]).await?;
                Ok::<_, String>((ws, epoch))
            })
            .await
            .unwrap_or_else(|_| Err("timeout opening or subscribing".into()));
            drop(permit);
            match opened {
                Ok((ws, epoch)) => {
                    let _ = ev_tx.send((c, Ok(epoch)));
                    rx::run(ws, c, tp, per_topic_msgs, shared, sink).await;
                }
                Err(e) => {
                    let _ = ev_tx.send((c, Err(e)));
                }
            }
        }));
    }
    drop(ev_tx);
    while pending > 0 {
        match tokio::time::timeout_at(deadline, ev_rx.recv()).await {
            Ok(Some(ev)) => {
                pending -= 1;
                handle_event(&mut out, ev);
            }
            _ => {
                *out.failures
                    .entry("connect phase timed out".into())
                    .or_default() += pending as u64;
                break;
            }
        }
    }
    out.secs = t0.elapsed().as_secs_f64();
    out
}

/// Stop every subscriber (abort its task; its stats reach the sink as it is dropped) and return
/// the stats of those counted in the expectations.
async fn stop_all(handles: Vec<JoinHandle<()>>, counted: &[bool], sink: &Sink) -> Vec<SubStats> {
    for h in &handles {
        h.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for h in handles {
        if tokio::time::timeout_at(deadline, h).await.is_err() {
            break;
        }
    }
    let all = std::mem::take(&mut *sink.lock().unwrap_or_else(|p| p.into_inner()));
    all.into_iter().filter(|s| counted[s.conn]).collect()
}
