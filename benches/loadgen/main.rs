//! herald-bench: an independent load generator for Herald. It speaks only the wire protocol
//! (HTTP tickets, WebSocket JSON/MessagePack, HTTP publish) and does not link the `herald`
//! library, so it measures the server from outside. See benches/README.md.

mod codec;
mod conn;
mod hist;
mod http;
mod msgpack;
mod pace;
mod proxy;
mod publish;
mod report;
mod run;
mod rx;
mod stall;
mod storm;
mod sys;
mod tls;
mod wire;

use clap::Parser;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds since a process-local epoch: the clock of `t` in every published message and of
/// every receive time, so latency needs no clock sync.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "herald-bench",
    about = "Load generator for Herald: N subscribers, paced publishing, deliveries/s, latency, server CPU and RSS; \
             or a storm of new connections (--storm)",
    after_help = "Exit status: 0 all expected deliveries arrived and every connection opened (--storm: \
                  every connection completed and none was ended by the node); 3 the run finished but \
                  something was lost, failed or refused; 1 the bench could not run."
)]
pub struct Args {
    /// Server base URL (loopback only). `https://` (TLS, with --ca) only with --storm.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Drive herald-baseline (benches/baseline) instead of Herald: no tickets and no JWT, the
    /// upgrade on `/ws` directly; everything else as against Herald. `--publish-via ws` and
    /// `--codec json` only.
    #[arg(long)]
    pub baseline: bool,
    /// A connection storm instead of fan-out: open --conns new authenticated connections,
    /// --connect-concurrency at a time (ticket, connect, TLS, upgrade, welcome, sub), time each
    /// step, hold them until all are done, then close them.
    #[arg(long)]
    pub storm: bool,
    /// With an https:// --url: the PEM certificate(s) to trust.
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// With an https:// --url: offer only this key exchange group (e.g. X25519, secp256r1,
    /// X25519MLKEM768); default: the provider's list, best first.
    #[arg(long)]
    pub tls_kx: Option<String>,
    /// With --storm: connections are spread round-robin over this many users (one JWT each,
    /// `herald-bench-<i>`; needs --jwt-secret). 1: every connection is user `herald-bench`.
    #[arg(long, default_value_t = 1)]
    pub users: usize,
    /// With --storm: every ticket on a new HTTP connection (over TLS, a second full handshake
    /// per client), instead of a keep-alive pool.
    #[arg(long)]
    pub fresh_ticket_conns: bool,
    /// With --storm: Redis's process id, to report its CPU time too.
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// More nodes of the same cluster (repeatable): subscribers are spread round-robin over
    /// `--url` and these. Tickets come from `--url` (a cluster redeems them on any node).
    #[arg(long = "also-url")]
    pub also_urls: Vec<String>,
    /// Redis of the cluster, for `--publish-via redis` (loopback only).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Proxy scenarios instead of fan-out: `send` (through the node to `--service`), `direct`
    /// (the same requests to `--backend-url`), or `backend` (an echo backend on `--listen`).
    #[arg(long, value_enum)]
    pub proxy: Option<proxy::Mode>,
    /// With `--proxy send`: the service name.
    #[arg(long)]
    pub service: Option<String>,
    /// With `--proxy direct`: the backend's base URL (loopback).
    #[arg(long)]
    pub backend_url: Option<String>,
    /// With `--proxy backend`: where to listen (127.0.0.1:<port>).
    #[arg(long)]
    pub listen: Option<String>,
    /// With `--proxy send|direct`: requests in total (spread over `--conns` connections, at
    /// `--publish-rate` per second in all).
    #[arg(long, default_value_t = 10_000)]
    pub requests: u64,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    pub conns: usize,
    /// Topics (`<prefix>.0` .. `<prefix>.{T-1}`); connections are assigned round-robin.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Messages per second over all topics, or `max` (as fast as accepted, bounded in flight).
    #[arg(long, default_value = "max")]
    pub publish_rate: String,
    /// Messages to publish in total (round-robin over the topics).
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Approximate size in bytes of each `msg` frame a subscriber receives (header included).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Subprotocol of subscribers and WebSocket publishers (herald.v1.json / herald.v1.msgpack).
    #[arg(long, value_enum, default_value = "json")]
    pub codec: codec::Codec,
    /// Subscribers offer permessage-deflate (as browsers do) and inflate what arrives compressed.
    #[arg(long)]
    pub deflate: bool,
    /// What fills each message up to `--size`: `pad` (one string of `x`, which compresses to
    /// almost nothing) or `feed` (an array of market ticks with varying symbols, prices and
    /// sizes, compressible as a real JSON feed is; needs `--codec json`).
    #[arg(long, value_enum, default_value = "pad")]
    pub payload: codec::Payload,
    /// Publish with `pub` over WebSocket (pipelined), with `POST /v1/publish` (needs --api-key), or
    /// with `FCALL herald_publish` straight to Redis (needs --redis-url), as a backend would.
    #[arg(long, value_enum, default_value = "ws")]
    pub publish_via: publish::Via,
    /// CPUs on which to watch for machine stalls during the measured phase (a thread per CPU
    /// that sleeps 2 ms at a time and counts wake-ups over 5 ms late), e.g. `0,1`. Default: one
    /// watcher wherever the bench runs.
    #[arg(long, value_delimiter = ',')]
    pub watch_cpus: Vec<usize>,
    /// How paced messages are timed: `exact` (a timerfd: each message at its instant, the
    /// publishers interleaved) or `tick` (tokio's millisecond timer: bursts at each tick).
    #[arg(long, value_enum, default_value = "exact")]
    pub pacing: pace::Pacing,
    /// Publisher connections (each owns a share of the topics; at most one per topic).
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Requests in flight per WebSocket publisher (HTTP publishers have one each).
    #[arg(long, default_value_t = 256)]
    pub inflight: usize,
    /// With `--publish-rate max`: most deliveries owed (published but not yet received by the
    /// bench) before publishing waits; keeps the server saturated without an unbounded queue.
    /// 0 = no bound (then only --inflight limits, and the server may queue every message).
    #[arg(long, default_value_t = 500_000)]
    pub max_backlog: u64,
    /// Seconds allowed for the publish phase (publishing and draining).
    #[arg(long, default_value_t = 60.0)]
    pub duration_limit: f64,
    /// Stop early when publishing is over and nothing new arrived for this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub stall_timeout: f64,
    /// Connection attempts in progress at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Connect (and fetch tickets) from this many loopback addresses, 127.0.1.1 upwards, in
    /// turn, so that the node's per-address limits can stay at their defaults. 0: one address.
    #[arg(long, default_value_t = 0)]
    pub source_addrs: usize,
    /// Seconds allowed for opening and subscribing all connections.
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout: f64,
    /// Server process id: report its CPU time during the publish phase and its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Open and subscribe the connections, wait, report RSS per connection, publish nothing.
    #[arg(long)]
    pub idle: bool,
    /// Seconds to wait with idle connections before measuring (with --idle).
    #[arg(long, default_value_t = 5.0)]
    pub idle_wait: f64,
    /// Seconds to wait after all subscribed before measuring RSS and publishing (with --storm:
    /// before measuring RSS, and again after closing before reading the close's CPU).
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// HS256 secret to mint the JWT with.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A ready-made JWT (instead of --jwt-secret).
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// API key for `POST /v1/publish` (with --publish-via http).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Topic name prefix.
    #[arg(long, default_value = "bench")]
    pub topic_prefix: String,
    /// Runtime worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also write the report as one JSON object to this file (whatever --json says).
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    /// None = max.
    pub fn rate(&self) -> anyhow::Result<Option<f64>> {
        if self.publish_rate.eq_ignore_ascii_case("max") {
            return Ok(None);
        }
        match self.publish_rate.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 => Ok(Some(r)),
            _ => anyhow::bail!(
                "--publish-rate must be a positive number or `max`, not {:?}",
                self.publish_rate
            ),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.conns > 0, "--conns must be at least 1");
        anyhow::ensure!(self.topics > 0, "--topics must be at least 1");
        anyhow::ensure!(
            self.idle || self.messages > 0,
            "--messages must be at least 1"
        );
        anyhow::ensure!(
            self.duration_limit > 0.0 && self.duration_limit <= 86_400.0,
            "--duration-limit out of range"
        );
        anyhow::ensure!(
            self.connect_concurrency > 0,
            "--connect-concurrency must be at least 1"
        );
        anyhow::ensure!(
            self.topic_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "--topic-prefix may use letters, digits, '-', '_' and '.'"
        );
        anyhow::ensure!(
            self.payload == codec::Payload::Pad || self.codec == codec::Codec::Json,
            "--payload feed needs --codec json"
        );
        anyhow::ensure!(
            self.storm || (self.ca.is_none() && self.tls_kx.is_none()),
            "--ca and --tls-kx go with --storm (and an https:// --url)"
        );
        anyhow::ensure!(
            self.storm || (self.users == 1 && !self.fresh_ticket_conns && self.redis_pid.is_none()),
            "--users, --fresh-ticket-conns and --redis-pid go with --storm"
        );
        anyhow::ensure!(
            !self.storm || (self.proxy.is_none() && !self.idle),
            "--storm is a mode of its own: not with --proxy or --idle"
        );
        anyhow::ensure!(self.users >= 1, "--users must be at least 1");
        anyhow::ensure!(
            !self.baseline
                || (self.publish_via == publish::Via::Ws
                    && self.codec == codec::Codec::Json
                    && !self.storm
                    && self.proxy.is_none()
                    && self.also_urls.is_empty()),
            "--baseline (herald-baseline) takes only `--publish-via ws` and `--codec json`; not \
             --storm, --proxy or --also-url"
        );
        if self.storm {
            return Ok(());
        }
        self.rate()?;
        // Exact duplicate/loss accounting keeps one bit per (subscriber, message of its topic).
        let per_topic = self.messages.div_ceil(self.topics as u64);
        let bits = per_topic.saturating_mul(self.conns as u64);
        anyhow::ensure!(
            self.idle || bits / 8 <= 1 << 30,
            "--messages x --conns / --topics is too large for exact accounting (over 1 GiB of bitmaps)"
        );
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    now_ns();
    if let Err(e) = args.validate().and_then(|_| {
        // Subscribers, publishers, the ticket pool and some slack.
        let fds =
            args.conns as u64 + args.publishers as u64 + args.connect_concurrency as u64 * 2 + 64;
        sys::ensure_nofile(fds)
    }) {
        eprintln!("herald-bench: {e:#}");
        return ExitCode::from(1);
    }
    let threads = args
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-bench: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(mode) = args.proxy {
        let jwt = args.token.clone().or_else(|| {
            let s = args.jwt_secret.as_deref()?;
            http::mint_jwt(s.as_bytes(), "bench", std::time::Duration::from_secs(3600)).ok()
        });
        let r = rt.block_on(proxy::run(&args, mode, jwt));
        rt.shutdown_timeout(std::time::Duration::from_secs(2));
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("herald-bench: {e:#}");
                ExitCode::from(3)
            }
        };
    }
    let outcome = if args.storm {
        rt.block_on(storm::run(args.clone(), threads))
    } else {
        rt.block_on(run::run(args.clone(), threads))
    };
    match outcome {
        Ok((report, clean)) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("herald-bench: report: {e}"),
                }
            } else {
                print!("{}", report.human());
            }
            if let Some(path) = &args.json_out {
                let written = serde_json::to_vec(&report)
                    .map_err(std::io::Error::other)
                    .and_then(|j| std::fs::write(path, j));
                if let Err(e) = written {
                    eprintln!("herald-bench: --json-out {}: {e}", path.display());
                }
            }
            // Do not wait for stragglers (e.g. sockets the server never closes).
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            ExitCode::from(1)
        }
    }
}
