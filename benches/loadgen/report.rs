//! The report: one serialisable struct, printed as text or (with `--json`) one JSON object.

use crate::hist::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Serialize, Default)]
pub(crate) struct Report {
    pub mode: &'static str,
    pub config: serde_json::Value,
    pub connections: Connections,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<Published>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<Deliveries>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<crate::storm::Storm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<Server>,
    pub bench: Bench,
}

#[derive(Serialize, Default)]
pub(crate) struct Connections {
    pub requested: usize,
    pub ok: usize,
    pub failed: usize,
    pub failures: BTreeMap<String, u64>,
    pub connect_secs: f64,
    /// Subscribers the server disconnected before the bench stopped them, by reason.
    pub ended_early: BTreeMap<String, u64>,
}

#[derive(Serialize, Default)]
pub(crate) struct Published {
    pub planned: u64,
    pub sent: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub publisher_failures: Vec<String>,
    pub send_rate_per_sec: f64,
}

#[derive(Serialize, Default)]
pub(crate) struct Deliveries {
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Seqs beyond what this run published (stale traffic on the topic).
    pub unexpected: u64,
    pub foreign_msgs: u64,
    pub server_error_frames: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_server_error: Option<String>,
    pub elapsed_secs: f64,
    pub per_sec: f64,
    /// Bytes read by the subscribers, as they crossed the wire (compressed, when they were),
    /// over frames received.
    pub avg_frame_bytes: f64,
    /// Bytes read by the subscribers in all, as they crossed the wire.
    pub wire_bytes: u64,
    /// Subscribers that negotiated permessage-deflate (`--deflate`).
    pub deflate_conns: u64,
    /// Frames that arrived compressed.
    pub compressed_frames: u64,
    /// complete | duration-limit | stalled
    pub stop_reason: String,
}

#[derive(Serialize, Default)]
pub(crate) struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub(crate) fn from(h: &Histogram) -> Option<Latency> {
        if h.count() == 0 {
            return None;
        }
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Some(Latency {
            count: h.count(),
            p50: us(h.quantile(0.5)),
            p90: us(h.quantile(0.9)),
            p99: us(h.quantile(0.99)),
            p999: us(h.quantile(0.999)),
            max: us(h.max()),
            mean: (h.mean() / 100.0).round() / 10.0,
        })
    }
}

#[derive(Serialize, Default)]
pub(crate) struct Server {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_secs_per_million_deliveries: Option<f64>,
    /// Storm mode: CPU seconds per 1000 connections completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_secs_per_1000_conns: Option<f64>,
    pub rss_before_kib: Option<u64>,
    pub rss_subscribed_kib: Option<u64>,
    pub rss_per_conn_kib: Option<f64>,
    pub rss_end_kib: Option<u64>,
}

#[derive(Serialize, Default)]
pub(crate) struct Bench {
    pub threads: usize,
    pub cpu_secs: Option<f64>,
    /// Storm mode: the machine's busy time over the phase less the server's, Redis's and the
    /// bench's: other processes, and kernel work charged to no process (softirq).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub others_cpu_secs: Option<f64>,
    /// Machine stalls seen during the measured phase (see `stall`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalls: Option<Vec<crate::stall::Stalls>>,
}

fn fmt_map(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{v} x {k}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|x| x.to_string())
        .unwrap_or_else(|| "n/a".into())
}

impl Report {
    pub(crate) fn human(&self) -> String {
        let mut o = String::new();
        let c = &self.connections;
        let _ = writeln!(o, "herald-bench ({})  {}", self.mode, self.config);
        let _ = writeln!(
            o,
            "connections      {} ok, {} failed of {} in {:.2} s",
            c.ok, c.failed, c.requested, c.connect_secs
        );
        if !c.failures.is_empty() {
            let _ = writeln!(o, "  failures       {}", fmt_map(&c.failures));
        }
        if !c.ended_early.is_empty() {
            let _ = writeln!(o, "  ended early    {}", fmt_map(&c.ended_early));
        }
        if let Some(st) = &self.storm {
            storm_lines(&mut o, st);
        }
        if let Some(p) = &self.published {
            let _ = writeln!(
                o,
                "published        {} ok of {} sent ({} planned), {:.0} msgs/s sent",
                p.ok, p.sent, p.planned, p.send_rate_per_sec
            );
            if !p.errors.is_empty() {
                let _ = writeln!(o, "  errors         {}", fmt_map(&p.errors));
            }
            for f in &p.publisher_failures {
                let _ = writeln!(o, "  failure        {f}");
            }
        }
        if let Some(d) = &self.deliveries {
            let _ = writeln!(
                o,
                "deliveries       {} received of {} expected ({})",
                d.received, d.expected, d.stop_reason
            );
            let _ = writeln!(
                o,
                "  lost {}  duplicated {}  out-of-order {}  unexpected {}  foreign {}  server errors {}",
                d.lost,
                d.duplicated,
                d.out_of_order,
                d.unexpected,
                d.foreign_msgs,
                d.server_error_frames
            );
            if let Some(e) = &d.first_server_error {
                let _ = writeln!(o, "  first error    {e}");
            }
            let _ = writeln!(
                o,
                "throughput       {:.0} deliveries/s over {:.3} s (avg frame {:.0} B on the wire)",
                d.per_sec, d.elapsed_secs, d.avg_frame_bytes
            );
            if d.deflate_conns > 0 {
                let _ = writeln!(
                    o,
                    "compression      {} subscribers negotiated permessage-deflate; {} frames arrived compressed; {} bytes read in all",
                    d.deflate_conns, d.compressed_frames, d.wire_bytes
                );
            }
        }
        if let Some(l) = &self.latency_us {
            let _ = writeln!(
                o,
                "latency (us)     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}  (n={})",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
            );
        }
        if let Some(s) = &self.server
            && self.mode == "storm"
        {
            storm_server_lines(&mut o, s, self.storm.as_ref());
        } else if let Some(s) = &self.server {
            let phase = if self.mode == "idle" {
                "idle wait"
            } else {
                "publish phase"
            };
            let _ = write!(
                o,
                "server pid {:<7} cpu {} s in the {phase}",
                s.pid,
                opt(&s.cpu_secs.map(|v| format!("{v:.2}"))),
            );
            match s.cpu_secs_per_million_deliveries {
                Some(v) => {
                    let _ = writeln!(o, ", {v:.3} cpu-s per million deliveries");
                }
                None => o.push('\n'),
            }
            let _ = writeln!(
                o,
                "  rss            before {} KiB, subscribed {} KiB, end {} KiB, per connection {} KiB",
                opt(&s.rss_before_kib),
                opt(&s.rss_subscribed_kib),
                opt(&s.rss_end_kib),
                opt(&s.rss_per_conn_kib.map(|v| format!("{v:.2}")))
            );
        }
        let _ = write!(
            o,
            "bench            {} threads, cpu {} s",
            self.bench.threads,
            opt(&self.bench.cpu_secs.map(|v| format!("{v:.2}")))
        );
        match (&self.storm, self.bench.cpu_secs) {
            (Some(st), Some(cpu)) if st.elapsed_secs > 0.0 => {
                let busy = cpu / st.elapsed_secs / self.bench.threads.max(1) as f64;
                let _ = write!(o, " ({:.0}% of its threads over the phase)", busy * 100.0);
                if let Some(others) = self.bench.others_cpu_secs {
                    let _ = write!(
                        o,
                        "\n  others         {others:.2} cpu-s of other processes and softirq over the phase \
                         ({:.0}% of one core)",
                        others / st.elapsed_secs * 100.0
                    );
                }
                if busy > 0.9 {
                    let _ = write!(
                        o,
                        "\n  note           the bench was nearly saturated: the rate may be the bench's limit; \
                         the server's capacity line is the node's own"
                    );
                }
                o.push('\n');
            }
            _ => o.push('\n'),
        }
        if let Some(s) = &self.bench.stalls {
            let _ = writeln!(o, "machine stalls   {}", crate::stall::describe(s));
        }
        o
    }
}

/// The storm section: the rate and every step's latency (in milliseconds).
fn storm_lines(o: &mut String, st: &crate::storm::Storm) {
    let _ = writeln!(
        o,
        "storm            {:.0} conns/s over {:.3} s (steady {:.0}/s from 10% to 90% of completions), \
         {} at a time, {} user(s), tickets over {} connections",
        st.conns_per_sec,
        st.elapsed_secs,
        st.steady_conns_per_sec,
        st.concurrency,
        st.users,
        st.ticket_conns
    );
    if st.slow_connects > 0 {
        let _ = writeln!(
            o,
            "  slow connects  {} TCP connects over 0.9 s: SYNs dropped by a full listen queue and sent again",
            st.slow_connects
        );
    }
    if let Some(t) = &st.tls {
        let _ = writeln!(o, "  tls            {t} (full handshakes: no resumption)");
    }
    let _ = writeln!(
        o,
        "  step (ms)        p50      p90      p99      max     mean"
    );
    let s = &st.steps_us;
    let rows: [(&str, &Option<Latency>); 7] = [
        ("ticket", &s.ticket),
        ("upgrade (to 101)", &s.upgrade),
        ("  tcp connect", &s.tcp_connect),
        ("  tls handshake", &s.tls_handshake),
        ("welcome", &s.welcome),
        ("subscribe", &s.subscribe),
        ("total", &s.total),
    ];
    for (name, l) in rows {
        if let Some(l) = l {
            let ms = |us: f64| us / 1000.0;
            let _ = writeln!(
                o,
                "  {name:<16}{:>7.3}  {:>7.3}  {:>7.3}  {:>7.3}  {:>7.3}",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.max),
                ms(l.mean)
            );
        }
    }
    let c = &st.close;
    let _ = writeln!(
        o,
        "close            {} closed in {:.2} s ({} unanswered); server cpu {} s until --settle after ({} per 1000)",
        c.closed,
        c.secs,
        c.unanswered,
        opt(&c.server_cpu_secs.map(|v| format!("{v:.2}"))),
        opt(&c.server_cpu_secs_per_1000_conns.map(|v| format!("{v:.3}")))
    );
    if let Some(r) = &st.redis {
        let _ = writeln!(
            o,
            "redis pid {:<8}cpu {} s in the storm phase ({} per 1000 connections), {} s in the close",
            r.pid,
            opt(&r.cpu_secs.map(|v| format!("{v:.2}"))),
            opt(&r.cpu_secs_per_1000_conns.map(|v| format!("{v:.3}"))),
            opt(&c.redis_cpu_secs.map(|v| format!("{v:.2}")))
        );
    }
}

/// The server lines of a storm: CPU per 1000 connections and what it predicts, RSS.
fn storm_server_lines(o: &mut String, s: &Server, st: Option<&crate::storm::Storm>) {
    let _ = write!(
        o,
        "server pid {:<7} cpu {} s in the storm phase",
        s.pid,
        opt(&s.cpu_secs.map(|v| format!("{v:.2}"))),
    );
    match s.cpu_secs_per_1000_conns {
        Some(v) if v > 0.0 => {
            let busy = match (s.cpu_secs, st) {
                (Some(c), Some(st)) if st.elapsed_secs > 0.0 => {
                    format!(", busy {:.0}% of one core", c / st.elapsed_secs * 100.0)
                }
                _ => String::new(),
            };
            let _ = writeln!(
                o,
                ", {v:.3} cpu-s per 1000 connections (one core would complete {:.0}/s{busy})",
                1000.0 / v
            );
        }
        _ => o.push('\n'),
    }
    let _ = writeln!(
        o,
        "  rss            before {} KiB, after {} KiB ({} KiB per connection), end (all closed) {} KiB",
        opt(&s.rss_before_kib),
        opt(&s.rss_subscribed_kib),
        opt(&s.rss_per_conn_kib.map(|v| format!("{v:.2}"))),
        opt(&s.rss_end_kib),
    );
}
