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
    pub rss_before_kib: Option<u64>,
    pub rss_subscribed_kib: Option<u64>,
    pub rss_per_conn_kib: Option<f64>,
    pub rss_end_kib: Option<u64>,
}

#[derive(Serialize, Default)]
pub(crate) struct Bench {
    pub threads: usize,
    pub cpu_secs: Option<f64>,
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
        if let Some(s) = &self.server {
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
        let _ = writeln!(
            o,
            "bench            {} threads, cpu {} s",
            self.bench.threads,
            opt(&self.bench.cpu_secs.map(|v| format!("{v:.2}")))
        );
        if let Some(s) = &self.bench.stalls {
            let _ = writeln!(o, "machine stalls   {}", crate::stall::describe(s));
        }
        o
    }
}
