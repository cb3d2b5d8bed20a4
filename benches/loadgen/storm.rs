//! Storm mode (`--storm`): `--conns` new authenticated connections opened as fast as the node
//! completes them, `--connect-concurrency` at a time, each through the whole path a returning
//! client takes: a ticket (`POST /v1/tickets` with a JWT), the TCP connect, the TLS handshake
//! (with an `https://` URL), the upgrade to the 101, `welcome`, and `sub` answered. Every step is
//! timed into its own histogram; the phase's rate, the server's CPU per 1000 connections and its
//! RSS before and after are reported. The connections stay open until the phase ends, then each
//! sends a close frame and waits (bounded) for the node's answer, and the close is measured too.

use crate::hist::Histogram;
use crate::http::{self, Target, Tickets};
use crate::report::{self, Report};
use crate::stall;
use crate::sys::{self, CpuClock};
use crate::wire::{self, FrameReader, OP_CLOSE};
use crate::{Args, codec, conn, run::preflight};
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};

/// Time allowed for one connection's whole path, ticket to `sub` answered.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for one connection's close (its close frame out, the node's close or EOF back).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for every connection to close, all together.
const CLOSE_ALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Width of one bucket of the completion timeline.
const BUCKET: Duration = Duration::from_millis(100);
/// A TCP connect this slow waited for the kernel to send its SYN again (first after 1 s): the
/// node's listen queue was full and the SYN was dropped.
const SLOW_CONNECT: Duration = Duration::from_millis(900);

/// When each step of one connection ended (the start is `t0`).
#[derive(Clone, Copy)]
struct Times {
    t0: Instant,
    ticket: Instant,
    tcp: Instant,
    /// Only over TLS.
    tls: Option<Instant>,
    upgraded: Instant,
    welcomed: Instant,
    subscribed: Instant,
}

/// What every connection's task shares.
struct Ctx {
    target: Target,
    tickets: Tickets,
    users: usize,
    topics: Vec<String>,
    codec: codec::Codec,
    /// The first TLS handshake's version, suite and group.
    tls_seen: OnceLock<String>,
}

/// The per-step histograms, in nanoseconds.
struct Steps {
    slow_connects: u64,
    ticket: Histogram,
    upgrade: Histogram,
    tcp: Histogram,
    tls: Histogram,
    welcome: Histogram,
    subscribe: Histogram,
    total: Histogram,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            slow_connects: 0,
            ticket: Histogram::new(),
            upgrade: Histogram::new(),
            tcp: Histogram::new(),
            tls: Histogram::new(),
            welcome: Histogram::new(),
            subscribe: Histogram::new(),
            total: Histogram::new(),
        }
    }

    fn record(&mut self, t: &Times) {
        let ns = |a: Instant, b: Instant| b.saturating_duration_since(a).as_nanos() as u64;
        self.ticket.record(ns(t.t0, t.ticket));
        self.tcp.record(ns(t.ticket, t.tcp));
        if t.tcp.saturating_duration_since(t.ticket) > SLOW_CONNECT {
            self.slow_connects += 1;
        }
        if let Some(tls) = t.tls {
            self.tls.record(ns(t.tcp, tls));
        }
        self.upgrade.record(ns(t.ticket, t.upgraded));
        self.welcome.record(ns(t.upgraded, t.welcomed));
        self.subscribe.record(ns(t.welcomed, t.subscribed));
        self.total.record(ns(t.t0, t.subscribed));
    }
}

/// The storm section of the report. Step latencies are in microseconds.
#[derive(Serialize, Default)]
pub(crate) struct Storm {
    pub concurrency: usize,
    pub users: usize,
    /// `keep-alive` (a pool, as today) or `fresh` (a new connection per ticket).
    pub ticket_conns: &'static str,
    /// Protocol version, cipher suite and key exchange group of the handshakes; `None`: plain.
    pub tls: Option<String>,
    /// From the first attempt to the last connection completed or failed.
    pub elapsed_secs: f64,
    /// Connections completed per second over the phase.
    pub conns_per_sec: f64,
    /// Completions per second between the 10th and the 90th percentile of completion times:
    /// the rate without the ramp-up and the tail.
    pub steady_conns_per_sec: f64,
    /// Connections completed in each 100 ms of the phase.
    pub completed_per_100ms: Vec<u32>,
    /// TCP connects that took over 900 ms: their SYN was dropped (a full listen queue) and sent
    /// again after the kernel's 1 s (then 3 s, 7 s...).
    pub slow_connects: u64,
    pub steps_us: StepLatencies,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<Other>,
    pub close: Close,
}

#[derive(Serialize, Default)]
pub(crate) struct StepLatencies {
    /// `POST /v1/tickets` answered.
    pub ticket: Option<report::Latency>,
    /// TCP connect, TLS handshake and HTTP upgrade, to the 101.
    pub upgrade: Option<report::Latency>,
    /// The TCP connect alone (part of `upgrade`).
    pub tcp_connect: Option<report::Latency>,
    /// The TLS handshake alone (part of `upgrade`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_handshake: Option<report::Latency>,
    /// From the 101 to `welcome`.
    pub welcome: Option<report::Latency>,
    /// From `welcome` to the `ok` of `sub`.
    pub subscribe: Option<report::Latency>,
    /// The whole path, ticket to `ok`.
    pub total: Option<report::Latency>,
}

/// Another process watched during the phase (Redis).
#[derive(Serialize, Default)]
pub(crate) struct Other {
    pub pid: u32,
    pub cpu_secs: Option<f64>,
    pub cpu_secs_per_1000_conns: Option<f64>,
}

/// The end of the phase: every connection closed by the bench.
#[derive(Serialize, Default)]
pub(crate) struct Close {
    pub closed: usize,
    /// From the stop signal until the last connection finished closing.
    pub secs: f64,
    /// Server CPU from the stop signal until `--settle` seconds after the last close.
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_secs_per_1000_conns: Option<f64>,
    pub redis_cpu_secs: Option<f64>,
    /// Closes that got no answer in time.
    pub unanswered: usize,
}

/// One connection's task: its path, then holding the connection until `stop`, then closing it.
/// Returns why the node ended the connection before the stop, if it did, and whether the close
/// was answered.
type Held = JoinHandle<(Option<String>, bool)>;

pub(crate) async fn run(args: Args, threads: usize) -> anyhow::Result<(Report, bool)> {
    anyhow::ensure!(
        args.also_urls.is_empty(),
        "--storm drives one node: --also-url is not used"
    );
    let target = Target::parse(&args.url)?
        .with_sources(args.source_addrs)?
        .with_tls(args.ca.as_deref(), args.tls_kx.as_deref())?;
    let users = args.users.max(1);
    let jwts: Vec<String> = match (&args.token, &args.jwt_secret) {
        (Some(t), _) => {
            anyhow::ensure!(
                users == 1,
                "--users needs --jwt-secret (a --token is one user)"
            );
            vec![t.clone()]
        }
        (None, Some(s)) => {
            let ttl = Duration::from_secs(6 * 3600);
            if users == 1 {
                vec![http::mint_jwt(s.as_bytes(), "herald-bench", ttl)?]
            } else {
                (0..users)
                    .map(|i| http::mint_jwt(s.as_bytes(), &format!("herald-bench-{i}"), ttl))
                    .collect::<anyhow::Result<_>>()?
            }
        }
        (None, None) => {
            anyhow::bail!("give --jwt-secret (or HERALD_JWT_SECRET) or --token (or HERALD_TOKEN)")
        }
    };
    let tickets = Tickets::for_users(&target, &jwts, args.fresh_ticket_conns)?;
    drop(jwts);
    preflight(&tickets, &target).await?;

    let pid = args.server_pid.map(|p| p.to_string());
    let redis_pid = args.redis_pid.map(|p| p.to_string());
    let tck = sys::clk_tck();
    let me = std::process::id().to_string();
    let rss_before = pid.as_deref().and_then(sys::rss_kib);
    if let Some(p) = &pid {
        anyhow::ensure!(
            rss_before.is_some(),
            "--server-pid {p}: no such process (cannot read /proc/{p}/status)"
        );
    }
    let ctx = Arc::new(Ctx {
        target: target.clone(),
        tickets,
        users,
        topics: (0..args.topics)
            .map(|i| format!("{}.{i}", args.topic_prefix))
            .collect(),
        codec: args.codec,
        tls_seen: OnceLock::new(),
    });

    let watch_stalls = || match stall::Watch::start(&args.watch_cpus) {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("herald-bench: cannot start the stall watch: {e}");
            None
        }
    };
    let stalls = watch_stalls();
    let bench_cpu = CpuClock::start(&me, tck);
    let server_cpu = pid.as_deref().map(|p| CpuClock::start(p, tck));
    let redis_cpu = redis_pid.as_deref().map(|p| CpuClock::start(p, tck));
    let machine_start = sys::machine_busy_ticks();
    let (stop_tx, stop_rx) = watch::channel(false);
    let phase = open_all(&args, &ctx, stop_rx).await;
    let server_secs = server_cpu.as_ref().and_then(CpuClock::seconds);
    let redis_secs = redis_cpu.as_ref().and_then(CpuClock::seconds);
    let bench_secs = bench_cpu.seconds();
    let others_secs = match (machine_start, sys::machine_busy_ticks(), bench_secs) {
        (Some(a), Some(b), Some(mine)) => {
            let machine = b.saturating_sub(a) as f64 / tck as f64;
            let known = mine + server_secs.unwrap_or(0.0) + redis_secs.unwrap_or(0.0);
            Some((machine - known).max(0.0))
        }
        _ => None,
    };
    let stalls = stalls.map(stall::Watch::finish);
    progress(
        &args,
        format_args!(
            "{} connected, {} failed in {:.2} s",
            phase.ok,
            args.conns - phase.ok,
            phase.elapsed.as_secs_f64()
        ),
    );
    tokio::time::sleep(Duration::from_secs_f64(args.settle.max(0.0))).await;
    let rss_after = pid.as_deref().and_then(sys::rss_kib);

    // The close: every connection sends its close frame at once.
    let close_server = pid.as_deref().map(|p| CpuClock::start(p, tck));
    let close_redis = redis_pid.as_deref().map(|p| CpuClock::start(p, tck));
    let closing = Instant::now();
    let _ = stop_tx.send(true);
    let mut ended_early: BTreeMap<String, u64> = BTreeMap::new();
    let (mut closed, mut unanswered) = (0usize, 0usize);
    let deadline = closing + CLOSE_ALL_TIMEOUT;
    let mut handles = phase.held.into_iter();
    for h in handles.by_ref() {
        match tokio::time::timeout_at(deadline, h).await {
            Ok(Ok((Some(why), _))) => *ended_early.entry(why).or_default() += 1,
            Ok(Ok((None, answered))) => {
                closed += 1;
                unanswered += usize::from(!answered);
            }
            Ok(Err(_)) => {}
            Err(_) => {
                unanswered += 1;
                break;
            }
        }
    }
    for h in handles {
        h.abort();
        unanswered += 1;
    }
    let close_secs = closing.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.settle.max(0.0))).await;
    let close_server_secs = close_server.as_ref().and_then(CpuClock::seconds);
    let close_redis_secs = close_redis.as_ref().and_then(CpuClock::seconds);

    let ok = phase.ok;
    let per_1000 = |s: Option<f64>| s.filter(|_| ok > 0).map(|s| s * 1000.0 / ok as f64);
    let elapsed = phase.elapsed.as_secs_f64();
    let mut done = phase.completions;
    done.sort_unstable();
    let steady = steady_rate(&done);
    let timeline = timeline(&done, phase.elapsed);
    let lat = |h: &Histogram| report::Latency::from(h);
    let s = &phase.steps;
    let mut rep = Report {
        mode: "storm",
        config: serde_json::json!({
            "url": target.base, "conns": args.conns, "connect_concurrency": args.connect_concurrency,
            "users": users, "topics": args.topics, "codec": args.codec, "fresh_ticket_conns": args.fresh_ticket_conns,
            "source_addrs": args.source_addrs, "tls_kx": args.tls_kx,
        }),
        ..Default::default()
    };
    rep.connections = report::Connections {
        requested: args.conns,
        ok,
        failed: args.conns - ok,
        failures: phase.failures,
        connect_secs: elapsed,
        ended_early: ended_early.clone(),
    };
    rep.storm = Some(Storm {
        concurrency: args.connect_concurrency,
        users,
        ticket_conns: if args.fresh_ticket_conns {
            "fresh"
        } else {
            "keep-alive"
        },
        tls: ctx.tls_seen.get().cloned(),
        elapsed_secs: elapsed,
        conns_per_sec: if elapsed > 0.0 {
            ok as f64 / elapsed
        } else {
            0.0
        },
        steady_conns_per_sec: steady,
        completed_per_100ms: timeline,
        slow_connects: s.slow_connects,
        steps_us: StepLatencies {
            ticket: lat(&s.ticket),
            upgrade: lat(&s.upgrade),
            tcp_connect: lat(&s.tcp),
            tls_handshake: lat(&s.tls),
            welcome: lat(&s.welcome),
            subscribe: lat(&s.subscribe),
            total: lat(&s.total),
        },
        redis: args.redis_pid.map(|p| Other {
            pid: p,
            cpu_secs: redis_secs,
            cpu_secs_per_1000_conns: per_1000(redis_secs),
        }),
        close: Close {
            closed,
            secs: close_secs,
            server_cpu_secs: close_server_secs,
            server_cpu_secs_per_1000_conns: per_1000(close_server_secs),
            redis_cpu_secs: close_redis_secs,
            unanswered,
        },
    });
    rep.server = args.server_pid.map(|p| report::Server {
        pid: p,
        cpu_secs: server_secs,
        cpu_secs_per_1000_conns: per_1000(server_secs),
        rss_before_kib: rss_before,
        rss_subscribed_kib: rss_after,
        rss_per_conn_kib: match (rss_before, rss_after) {
            (Some(a), Some(b)) if ok > 0 => Some((b as f64 - a as f64) / ok as f64),
            _ => None,
        },
        rss_end_kib: pid.as_deref().and_then(sys::rss_kib),
        ..Default::default()
    });
    rep.bench.threads = threads;
    rep.bench.cpu_secs = bench_secs;
    rep.bench.others_cpu_secs = others_secs;
    rep.bench.stalls = stalls;
    let clean = ok == args.conns && ended_early.is_empty();
    Ok((rep, clean))
}

/// Completions per second between the 10th and the 90th percentile of the completion times
/// (`done`: sorted, in ns); 0 with fewer than 20.
fn steady_rate(done: &[u64]) -> f64 {
    if done.len() < 20 {
        return 0.0;
    }
    let (a, b) = (done.len() / 10, done.len() * 9 / 10);
    let span = done[b].saturating_sub(done[a]) as f64 / 1e9;
    if span > 0.0 {
        (b - a) as f64 / span
    } else {
        0.0
    }
}

/// Completions in each [`BUCKET`] of a phase of `elapsed` (`done`: completion times in ns).
fn timeline(done: &[u64], elapsed: Duration) -> Vec<u32> {
    let width = BUCKET.as_nanos() as u64;
    let mut out = vec![0u32; (elapsed.as_nanos() as u64 / width) as usize + 1];
    for t in done {
        if let Some(b) = out.get_mut((t / width) as usize) {
            *b += 1;
        }
    }
    out
}

fn progress(args: &Args, msg: std::fmt::Arguments<'_>) {
    if !args.quiet {
        eprintln!("herald-bench: {msg}");
    }
}

/// What the phase of opening gave.
struct Phase {
    ok: usize,
    failures: BTreeMap<String, u64>,
    steps: Steps,
    /// Completion times of the connections that completed, ns after the phase's start.
    completions: Vec<u64>,
    /// From the first attempt to the last outcome.
    elapsed: Duration,
    held: Vec<Held>,
}

/// Opens `--conns` connections, `--connect-concurrency` at a time, no retries; each is held
/// until `stop` once it is subscribed.
async fn open_all(args: &Args, ctx: &Arc<Ctx>, stop: watch::Receiver<bool>) -> Phase {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(args.connect_timeout);
    let sem = Arc::new(Semaphore::new(args.connect_concurrency));
    type Event = (Result<Times, String>, Instant);
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let mut out = Phase {
        ok: 0,
        failures: BTreeMap::new(),
        steps: Steps::new(),
        completions: Vec::with_capacity(args.conns),
        elapsed: Duration::ZERO,
        held: Vec::with_capacity(args.conns),
    };
    let mut last = t0;
    let mut handle = |out: &mut Phase, (r, at): Event| {
        last = last.max(at);
        match r {
            Ok(t) => {
                out.ok += 1;
                out.steps.record(&t);
                out.completions
                    .push(at.saturating_duration_since(t0).as_nanos() as u64);
            }
            Err(e) => *out.failures.entry(e).or_default() += 1,
        }
    };
    let mut pending = 0usize;
    let mut next_progress = t0 + Duration::from_secs(5);
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
            handle(&mut out, ev);
        }
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(5);
            progress(
                args,
                format_args!(
                    "storm: {} connected, {} failed, {} attempted",
                    out.ok,
                    out.failures.values().sum::<u64>(),
                    c
                ),
            );
        }
        let (ctx, ev_tx, mut stop) = (ctx.clone(), ev_tx.clone(), stop.clone());
        pending += 1;
        // The task's own future stays small (its steps are boxed): spawning copies all of it.
        out.held.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let opened = Box::pin(attempt(&ctx, c, t0, t0 + STEP_TIMEOUT)).await;
            drop(permit);
            let (times, held) = match opened {
                Ok((t, h)) => (Ok(t), Some(h)),
                Err(e) => (Err(e), None),
            };
            let _ = ev_tx.send((times, Instant::now()));
            match held {
                Some(Open::Plain(ws)) => Box::pin(hold(ws, &mut stop)).await,
                Some(Open::Tls(ws)) => Box::pin(hold(*ws, &mut stop)).await,
                None => (None, true),
            }
        }));
    }
    drop(ev_tx);
    while pending > 0 {
        match tokio::time::timeout_at(deadline, ev_rx.recv()).await {
            Ok(Some(ev)) => {
                pending -= 1;
                handle(&mut out, ev);
            }
            _ => {
                *out.failures
                    .entry("connect phase timed out".into())
                    .or_default() += pending as u64;
                last = Instant::now();
                break;
            }
        }
    }
    out.elapsed = last.saturating_duration_since(t0);
    out
}

/// A connection that completed its path.
enum Open {
    Plain(conn::Ws<tokio::net::TcpStream>),
    /// Boxed: a TLS session is kilobytes.
    Tls(Box<conn::Ws<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>),
}

/// `f` within `deadline`; a timeout is a failure of `step`.
async fn step<T>(
    deadline: Instant,
    name: &str,
    f: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout_at(deadline, f)
        .await
        .unwrap_or_else(|_| Err(format!("{name}: timed out")))
}

/// One connection's path, ticket to `sub` answered.
async fn attempt(
    ctx: &Ctx,
    c: usize,
    t0: Instant,
    deadline: Instant,
) -> Result<(Times, Open), String> {
    let ticket = step(deadline, "ticket", ctx.tickets.get_for(c % ctx.users)).await?;
    let ticket_at = Instant::now();
    let tcp = step(deadline, "connect", async {
        ctx.target
            .connect()
            .await
            .map_err(|e| format!("connect: {}", e.kind()))
    })
    .await?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let mut t = Times {
        t0,
        ticket: ticket_at,
        tcp: Instant::now(),
        tls: None,
        upgraded: t0,
        welcomed: t0,
        subscribed: t0,
    };
    let topic = &ctx.topics[c % ctx.topics.len()];
    match &ctx.target.tls {
        None => {
            let ws = after_connect(ctx, tcp, &ticket, topic, deadline, &mut t).await?;
            Ok((t, Open::Plain(ws)))
        }
        Some(tls) => {
            let s = step(deadline, "tls", async {
                tls.connect(tcp)
                    .await
                    .map_err(|e| format!("tls: {}", e.kind()))
            })
            .await?;
            t.tls = Some(Instant::now());
            if ctx.tls_seen.get().is_none() {
                let _ = ctx.tls_seen.set(crate::tls::describe(&s));
            }
            let ws = after_connect(ctx, s, &ticket, topic, deadline, &mut t).await?;
            Ok((t, Open::Tls(Box::new(ws))))
        }
    }
}

/// The upgrade, `welcome` and `sub` over a connected stream, each step's end noted in `t`.
async fn after_connect<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    stream: S,
    ticket: &str,
    topic: &str,
    deadline: Instant,
    t: &mut Times,
) -> Result<conn::Ws<S>, String> {
    let authority = &ctx.target.authority;
    let mut ws = step(
        deadline,
        "upgrade",
        conn::upgrade(stream, authority, Some(ticket), ctx.codec, false),
    )
    .await?;
    t.upgraded = Instant::now();
    step(deadline, "welcome", ws.welcome()).await?;
    t.welcomed = Instant::now();
    step(deadline, "sub", async {
        ws.subscribe(topic).await.map(drop)
    })
    .await?;
    t.subscribed = Instant::now();
    Ok(ws)
}

/// Holds an open connection until `stop` (answering pings; noting it when the node ends it),
/// then closes it: a close frame, and the node's close frame or EOF awaited for at most
/// [`CLOSE_TIMEOUT`]. Returns (why the node ended it early, whether the close was answered).
async fn hold<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: conn::Ws<S>,
    stop: &mut watch::Receiver<bool>,
) -> (Option<String>, bool) {
    // Let go of the buffer the handshake's reads grew, and wait with a small one (16 KiB each:
    // 10,000 of them add up, and the bench would spend its time having the kernel clear pages).
    let left =
        std::mem::replace(&mut ws.reader, FrameReader::new(Vec::new(), false)).into_leftover();
    ws.reader = FrameReader::with_chunk(left.to_vec(), 256);
    let ended = loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break None,
            r = ws.next_message() => {
                if let Err(e) = r {
                    break Some(conn::wire_err("ended", e));
                }
            }
        }
    };
    if ended.is_some() {
        return (ended, true);
    }
    let answered = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let mut out = Vec::with_capacity(8);
        wire::push_frame(&mut out, OP_CLOSE, &1000u16.to_be_bytes(), &mut ws.rng);
        ws.stream.write_all(&out).await.ok()?;
        // The node answers with its close frame and closes: read to the end.
        let mut sink = [0u8; 512];
        loop {
            match ws.stream.read(&mut sink).await {
                Ok(0) | Err(_) => return Some(()),
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok_and(|r| r.is_some());
    let _ = tokio::time::timeout(Duration::from_millis(100), ws.stream.shutdown()).await;
    (None, answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_leaves_out_the_ramp_and_the_tail() {
        // 1000 completions 1 ms apart (1000/s), then 10 stragglers a second later.
        let mut done: Vec<u64> = (0..1000).map(|i| i * 1_000_000).collect();
        done.extend((0..10).map(|i| 2_000_000_000 + i));
        let r = steady_rate(&done);
        assert!((r - 1000.0).abs() < 5.0, "{r}");
        assert_eq!(steady_rate(&done[..19]), 0.0);
    }

    #[test]
    fn timeline_counts_each_bucket() {
        let done = [0, 50_000_000, 150_000_000, 250_000_000];
        let t = timeline(&done, Duration::from_millis(250));
        assert_eq!(t, vec![2, 1, 1]);
    }
}
