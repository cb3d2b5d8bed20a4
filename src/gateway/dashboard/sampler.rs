//! The dashboard's sampler: once a second it renders the node's metrics (the same text a scraper
//! gets, which also moves the histograms' buffered observations into their buckets), reads them
//! back, and makes a [`Point`]: the figures the dashboard charts, rates per second and latency
//! quantiles over the last [`WINDOW`] seconds included. The point joins this node's history
//! ([`super::Dashboard`]) and is shared with the cluster as the node's summary.
//!
//! Pure but for the clock readings passed in: the state between two samples is the previous
//! counters and the last [`WINDOW`] histogram snapshots (bounded).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::metrics::exposition::{self, Sample};

/// Seconds of histogram snapshots the latency quantiles are computed over.
pub(crate) const WINDOW: usize = 10;

const PUBLISH_TO_WRITE: &str = "herald_publish_to_write_seconds";

/// Publish-to-write quantiles over the window, milliseconds (`None`: nothing was timed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Latency {
    pub(crate) first_p50: Option<f64>,
    pub(crate) first_p99: Option<f64>,
    pub(crate) last_p50: Option<f64>,
    pub(crate) last_p99: Option<f64>,
}

/// Redis as the node sees it (cluster mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RedisState {
    pub(crate) connected: bool,
    pub(crate) reconnects: f64,
}

/// One second of one node: what the dashboard charts, and what the node shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Point {
    /// The node's id.
    pub(crate) node: String,
    /// When, unix milliseconds.
    pub(crate) at: u64,
    pub(crate) connections: f64,
    pub(crate) deliveries_total: f64,
    pub(crate) deliveries_per_sec: f64,
    /// Messages the bus handed to the hub, per second.
    pub(crate) messages_per_sec: f64,
    pub(crate) publish_to_write_ms: Latency,
    /// By close code (the metrics' `code` label), per second, over the codes seen so far.
    pub(crate) disconnects_per_sec: BTreeMap<String, f64>,
    pub(crate) slow_consumers_total: f64,
    pub(crate) slow_consumers_per_sec: f64,
    /// `None` without Redis.
    pub(crate) redis: Option<RedisState>,
    /// CPU cores in use (CPU seconds per second).
    pub(crate) cpu: f64,
    pub(crate) rss_bytes: f64,
}

/// Counters of the previous sample, for rates.
#[derive(Default)]
struct Previous {
    at: u64,
    deliveries: f64,
    messages: f64,
    slow: f64,
    cpu: f64,
    disconnects: BTreeMap<String, f64>,
}

/// A histogram's cumulative buckets: (upper bound, count), `+Inf` last.
type Buckets = Vec<(f64, f64)>;

/// The state between samples.
#[derive(Default)]
pub(crate) struct Sampler {
    previous: Option<Previous>,
    /// The last [`WINDOW`] + 1 cumulative bucket snapshots, first and last, oldest first.
    snapshots: VecDeque<(Buckets, Buckets)>,
}

/// `now - before`, per bucket (the same bounds; an empty `before` counts as zeros).
fn window(now: &[(f64, f64)], before: &[(f64, f64)]) -> Buckets {
    now.iter()
        .map(|&(le, n)| {
            let b = before.iter().find(|(l, _)| *l == le).map_or(0.0, |b| b.1);
            (le, (n - b).max(0.0))
        })
        .collect()
}

fn ms(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    exposition::quantile(q, buckets).map(|s| (s * 1e6).round() / 1e3)
}

impl Sampler {
    /// The point of `samples` (one render of the node's metrics) read at `at` (unix ms).
    pub(crate) fn point(&mut self, node: &str, samples: &[Sample], at: u64) -> Point {
        let v = |name: &str| exposition::value(samples, name, &[]).unwrap_or(0.0);
        let deliveries = v("herald_deliveries_total");
        let messages = v("herald_bus_messages_total");
        let slow = v("herald_slow_consumers_total");
        let cpu = v("process_cpu_seconds_total");
        let disconnects: BTreeMap<String, f64> = samples
            .iter()
            .filter(|s| s.name == "herald_disconnects_total")
            .filter_map(|s| Some((s.label("code")?.to_owned(), s.value)))
            .collect();
        let first = exposition::buckets(samples, PUBLISH_TO_WRITE, &[("which", "first")]);
        let last = exposition::buckets(samples, PUBLISH_TO_WRITE, &[("which", "last")]);
        self.snapshots.push_back((first.clone(), last.clone()));
        while self.snapshots.len() > WINDOW + 1 {
            self.snapshots.pop_front();
        }
        let (first_before, last_before) = match self.snapshots.front() {
            Some(oldest) if self.snapshots.len() > 1 => (oldest.0.clone(), oldest.1.clone()),
            _ => (Vec::new(), Vec::new()),
        };
        let (first, last) = (window(&first, &first_before), window(&last, &last_before));
        let latency = Latency {
            first_p50: ms(0.5, &first),
            first_p99: ms(0.99, &first),
            last_p50: ms(0.5, &last),
            last_p99: ms(0.99, &last),
        };
        let (secs, prev) = match &self.previous {
            Some(p) if at > p.at => ((at - p.at) as f64 / 1000.0, Some(p)),
            _ => (1.0, None),
        };
        let rate = |now: f64, before: Option<f64>| match before {
            Some(b) => ((now - b).max(0.0) / secs * 100.0).round() / 100.0,
            None => 0.0,
        };
        let disconnects_per_sec = disconnects
            .iter()
            .map(|(code, n)| {
                let before = prev.map(|p| p.disconnects.get(code).copied().unwrap_or(0.0));
                (code.clone(), rate(*n, before))
            })
            .collect();
        let redis = samples
            .iter()
            .any(|s| s.name == "herald_redis_connected")
            .then(|| RedisState {
                connected: v("herald_redis_connected") >= 1.0,
                reconnects: v("herald_redis_reconnects_total"),
            });
        let point = Point {
            node: node.to_owned(),
            at,
            connections: v("herald_connections"),
            deliveries_total: deliveries,
            deliveries_per_sec: rate(deliveries, prev.map(|p| p.deliveries)),
            messages_per_sec: rate(messages, prev.map(|p| p.messages)),
            publish_to_write_ms: latency,
            disconnects_per_sec,
            slow_consumers_total: slow,
            slow_consumers_per_sec: rate(slow, prev.map(|p| p.slow)),
            redis,
            cpu: rate(cpu, prev.map(|p| p.cpu)),
            rss_bytes: v("process_resident_memory_bytes"),
        };
        self.previous = Some(Previous {
            at,
            deliveries,
            messages,
            slow,
            cpu,
            disconnects,
        });
        point
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(deliveries: u32, last_fast: u32, disconnects_4008: u32) -> Vec<Sample> {
        let text = format!(
            "herald_connections 3\nherald_deliveries_total {deliveries}\n\
             herald_disconnects_total{{code=\"4008\"}} {disconnects_4008}\n\
             herald_publish_to_write_seconds_bucket{{which=\"last\",le=\"0.001\"}} {last_fast}\n\
             herald_publish_to_write_seconds_bucket{{which=\"last\",le=\"0.01\"}} {last_fast}\n\
             herald_publish_to_write_seconds_bucket{{which=\"last\",le=\"+Inf\"}} {last_fast}\n"
        );
        exposition::parse(&text).unwrap()
    }

    #[test]
    fn rates_are_per_second_and_quantiles_cover_the_window() {
        let mut s = Sampler::default();
        let p = s.point("n1", &samples(100, 0, 0), 10_000);
        assert_eq!((p.connections, p.deliveries_per_sec), (3.0, 0.0));
        assert_eq!(p.publish_to_write_ms, Latency::default());
        assert!(p.redis.is_none());
        let p = s.point("n1", &samples(300, 4, 1), 12_000);
        assert_eq!(p.deliveries_per_sec, 100.0);
        assert_eq!(p.disconnects_per_sec.get("4008"), Some(&0.5));
        assert_eq!(p.publish_to_write_ms.last_p50, Some(0.5));
        assert_eq!(p.publish_to_write_ms.first_p50, None);
        // Past the window, old observations no longer count.
        for i in 0..=WINDOW as u64 {
            s.point("n1", &samples(300, 4, 1), 13_000 + i * 1000);
        }
        let p = s.point("n1", &samples(300, 4, 1), 30_000);
        assert_eq!(p.publish_to_write_ms.last_p50, None);
        assert_eq!(p.disconnects_per_sec.get("4008"), Some(&0.0));
    }

    #[test]
    fn a_point_is_small_and_reads_back() {
        let mut s = Sampler::default();
        let p = s.point("node-with-a-long-name-0123456789", &samples(1, 1, 1), 1);
        let json = serde_json::to_vec(&p).unwrap();
        assert!(
            json.len() < crate::bus::summaries::MAX_SUMMARY_BYTES / 4,
            "{}",
            json.len()
        );
        assert_eq!(serde_json::from_slice::<Point>(&json).unwrap(), p);
    }
}
