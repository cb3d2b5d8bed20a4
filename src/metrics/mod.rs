//! A node's metrics: a value the server owns and hands to whoever counts, never process globals,
//! so that several nodes in one process (the tests) each count their own.
//!
//! Built on the `metrics` facade's handles and `metrics-exporter-prometheus`'s recorder, which
//! renders the Prometheus text format for `GET /metrics`. No recorder is installed globally: the
//! node builds its own [`PrometheusRecorder`] and registers every handle on it directly, and the
//! handles live here (or, for a labelled family, are registered when first used), so counting
//! is an atomic add through an `Arc` and nothing looks a metric up by name on a hot path. What
//! is counted where, and what it costs: per fan-out (never per delivery) in the hub, per write
//! batch in the connection's pump; the publish-to-write latency is sampled ([`crate::hub::probe`]).
//!
//! Histograms are real Prometheus histograms (the buckets in [`catalog`]), not summaries. Their
//! observations are buffered by the recorder until the next render, which the dashboard's
//! sampler does every second: the buffer holds one second of observations at most.
//!
//! The figures of the process (CPU, memory, file descriptors) are read from `/proc` when
//! rendering ([`process`]). Every metric, its labels and its meaning are in [`catalog`], which
//! the README's table mirrors. Label values are bounded: error codes, close codes of the
//! protocol's table, configured service names; never a topic, a user or a connection.
//!
//! A leaf: imports nothing from the crate.

pub(crate) mod catalog;
pub mod exposition;
pub mod process;

use std::sync::Arc;
use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use catalog::*;

/// Why the recorder could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A histogram's buckets were refused (empty).
    #[error("histogram buckets of {name}: {source}")]
    Buckets {
        /// The histogram.
        name: &'static str,
        /// The exporter's reason.
        #[source]
        source: metrics_exporter_prometheus::BuildError,
    },
}

/// The outcome of a subscription with `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Every missed message was replayed.
    Exact,
    /// `recovered: false`.
    NotRecovered,
    /// The history could not be read.
    Failed,
}

/// One node's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// WebSocket connections accepted.
    pub accepted: Counter,
    /// Accepted upgrades' handshake time.
    pub handshake: Histogram,
    /// Subscriptions of local connections.
    pub subscriptions: Gauge,
    /// Topics with a local subscriber.
    pub topics: Gauge,
    /// Messages published by `POST /v1/publish`.
    pub published_api: Counter,
    /// Messages published by a client's `pub`.
    pub published_client: Counter,
    /// Messages the bus handed to the hub.
    pub bus_messages: Counter,
    /// Frames queued to subscribers.
    pub deliveries: Counter,
    /// Data frames from clients.
    pub frames_in: Counter,
    /// Bytes read from clients.
    pub bytes_in: Counter,
    /// Socket writes to clients.
    pub writes: Counter,
    /// Bytes written to clients.
    pub bytes_out: Counter,
    /// Publish to the first subscriber's write (sampled).
    pub publish_to_first: Histogram,
    /// Publish to the last subscriber's write (sampled).
    pub publish_to_last: Histogram,
    /// Outbox bytes, sampled by the heartbeat.
    pub outbox_bytes: Histogram,
    /// Connections closed with 4008.
    pub slow_consumers: Counter,
    /// History pages read for replays.
    pub replay_pages: Counter,
    /// Tickets issued.
    pub tickets: Counter,
    /// Lifecycle events waiting.
    pub events_pending: Gauge,
}

/// The Redis bus's metrics (registered only in cluster mode).
pub struct RedisMetrics {
    /// 1 while ready.
    pub connected: Gauge,
    /// Pub/sub connections rebuilt.
    pub reconnects: Counter,
    /// Liveness probe round trip.
    pub probe_rtt: Histogram,
    /// Topics whose gap was filled.
    pub gaps_filled: Counter,
    /// Topics given up.
    pub gaps_lost: Counter,
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));

impl Metrics {
    /// A node's metrics, every unlabelled one registered (rendered from the start, at 0).
    pub fn new() -> Result<Arc<Metrics>, MetricsError> {
        let mut builder = PrometheusBuilder::new();
        for d in CATALOG.iter().filter(|d| d.kind == Kind::Histogram) {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(d.name.to_owned()), d.buckets)
                .map_err(|source| MetricsError::Buckets {
                    name: d.name,
                    source,
                })?;
        }
        let recorder = builder.build_recorder();
        for d in CATALOG.iter().filter(|d| !d.name.starts_with("process_")) {
            let (name, help) = (KeyName::from_const_str(d.name), d.help.into());
            let unit = d.name.ends_with("_seconds").then_some(Unit::Seconds);
            match d.kind {
                Kind::Counter => recorder.describe_counter(name, unit, help),
                Kind::Gauge => recorder.describe_gauge(name, unit, help),
                Kind::Histogram => recorder.describe_histogram(name, unit, help),
            }
        }
        let handle = recorder.handle();
        let counter =
            |name: &'static str| recorder.register_counter(&Key::from_static_name(name), &METADATA);
        let gauge =
            |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &METADATA);
        let histogram = |name: &'static str| {
            recorder.register_histogram(&Key::from_static_name(name), &METADATA)
        };
        let labelled_counter = |name: &'static str, label: &'static str, value: &'static str| {
            let key = Key::from_parts(name, vec![Label::from_static_parts(label, value)]);
            recorder.register_counter(&key, &METADATA)
        };
        let labelled_histogram = |name: &'static str, label: &'static str, value: &'static str| {
            let key = Key::from_parts(name, vec![Label::from_static_parts(label, value)]);
            recorder.register_histogram(&key, &METADATA)
        };
        let m = Metrics {
            connections: gauge(CONNECTIONS),
            accepted: counter(CONNECTIONS_ACCEPTED),
            handshake: histogram(HANDSHAKE),
            subscriptions: gauge(SUBSCRIPTIONS),
            topics: gauge(TOPICS),
            published_api: labelled_counter(PUBLISHED, "via", "api"),
            published_client: labelled_counter(PUBLISHED, "via", "client"),
            bus_messages: counter(BUS_MESSAGES),
            deliveries: counter(DELIVERIES),
            frames_in: counter(FRAMES_IN),
            bytes_in: counter(BYTES_IN),
            writes: counter(WRITES),
            bytes_out: counter(BYTES_OUT),
            publish_to_first: labelled_histogram(PUBLISH_TO_WRITE, "which", "first"),
            publish_to_last: labelled_histogram(PUBLISH_TO_WRITE, "which", "last"),
            outbox_bytes: histogram(OUTBOX_BYTES),
            slow_consumers: counter(SLOW_CONSUMERS),
            replay_pages: counter(REPLAY_PAGES),
            tickets: counter(TICKETS),
            events_pending: gauge(EVENTS_PENDING),
            recorder,
            handle,
        };
        Ok(Arc::new(m))
    }

    fn labelled_counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// Counts a connection or upgrade refused, by the refusal's error code.
    pub fn refused(&self, reason: &'static str) {
        let labels = vec![Label::from_static_parts("reason", reason)];
        self.labelled_counter(CONNECTIONS_REFUSED, labels)
            .increment(1);
    }

    /// Counts a WebSocket connection ended with close code `code`.
    pub fn disconnected(&self, code: u16) {
        let labels = vec![Label::from_static_parts("code", close_label(code))];
        self.labelled_counter(DISCONNECTS, labels).increment(1);
    }

    /// Counts a subscription with `since` by its outcome.
    pub fn recovery(&self, outcome: Recovery) {
        let value = match outcome {
            Recovery::Exact => "exact",
            Recovery::NotRecovered => "not_recovered",
            Recovery::Failed => "failed",
        };
        let labels = vec![Label::from_static_parts("outcome", value)];
        self.labelled_counter(RECOVERIES, labels).increment(1);
    }

    /// Counts a request to configured service `service` (at `endpoint`, `"none"` when none was
    /// tried) and its outcome (`"ok"` or an error code); `took`: its time, when an endpoint was
    /// tried. `service` and `endpoint` must come from the configuration, never from a client.
    pub fn proxy_request(
        &self,
        service: &str,
        endpoint: &str,
        outcome: &'static str,
        took: Option<Duration>,
    ) {
        let labels = vec![
            Label::new("service", service.to_owned()),
            Label::new("endpoint", endpoint.to_owned()),
            Label::from_static_parts("outcome", outcome),
        ];
        self.labelled_counter(PROXY_REQUESTS, labels).increment(1);
        if let Some(took) = took {
            let labels = vec![
                Label::new("service", service.to_owned()),
                Label::new("endpoint", endpoint.to_owned()),
            ];
            self.recorder
                .register_histogram(&Key::from_parts(PROXY_DURATION, labels), &METADATA)
                .record(took.as_secs_f64());
        }
    }

    /// The Redis bus's handles, registered now (cluster mode).
    pub fn redis(&self) -> RedisMetrics {
        let gap = |outcome: &'static str| {
            self.labelled_counter(
                REDIS_GAPS,
                vec![Label::from_static_parts("outcome", outcome)],
            )
        };
        RedisMetrics {
            connected: self
                .recorder
                .register_gauge(&Key::from_static_name(REDIS_CONNECTED), &METADATA),
            reconnects: self
                .recorder
                .register_counter(&Key::from_static_name(REDIS_RECONNECTS), &METADATA),
            probe_rtt: self
                .recorder
                .register_histogram(&Key::from_static_name(REDIS_PROBE), &METADATA),
            gaps_filled: gap("filled"),
            gaps_lost: gap("lost"),
        }
    }

    /// The Prometheus text of every metric, then the process's figures (`fds`: with the open
    /// file descriptors counted). Takes the histograms' buffered observations into their buckets.
    pub fn render(&self, fds: bool) -> String {
        let mut text = self.handle.render();
        process::Process::read(fds).render(&mut text);
        text
    }
}

/// The `code` label of a close code: the code itself when the protocol's table (or RFC 6455)
/// names it, `other` for anything else a peer may send (3000-4999 are free for applications:
/// unbounded as label values).
pub fn close_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1002 => "1002",
        1003 => "1003",
        1005 => "1005",
        1006 => "1006",
        1007 => "1007",
        1008 => "1008",
        1009 => "1009",
        1010 => "1010",
        1011 => "1011",
        1012 => "1012",
        4000 => "4000",
        4001 => "4001",
        4003 => "4003",
        4008 => "4008",
        4029 => "4029",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_nodes_count_apart_and_render_real_histograms() {
        let (a, b) = (Metrics::new().unwrap(), Metrics::new().unwrap());
        a.accepted.increment(2);
        a.refused("invalid_ticket");
        a.disconnected(4008);
        a.slow_consumers.increment(1);
        a.disconnected(3999);
        a.publish_to_last.record(0.0003);
        b.accepted.increment(5);
        let text = a.render(false);
        let s = exposition::parse(&text).unwrap();
        let v = |name, labels: &[(&str, &str)]| exposition::value(&s, name, labels);
        assert_eq!(v(CONNECTIONS_ACCEPTED, &[]), Some(2.0));
        assert_eq!(
            v(CONNECTIONS_REFUSED, &[("reason", "invalid_ticket")]),
            Some(1.0)
        );
        assert_eq!(v(DISCONNECTS, &[("code", "4008")]), Some(1.0));
        assert_eq!(v(DISCONNECTS, &[("code", "other")]), Some(1.0));
        assert_eq!(v(SLOW_CONSUMERS, &[]), Some(1.0));
        assert!(
            text.contains("# TYPE herald_publish_to_write_seconds histogram"),
            "{text}"
        );
        let last = exposition::buckets(&s, PUBLISH_TO_WRITE, &[("which", "last")]);
        assert_eq!(last.last(), Some(&(f64::INFINITY, 1.0)));
        assert!(
            last.iter().any(|&(le, n)| le == 0.0005 && n == 1.0),
            "{last:?}"
        );
        let b = exposition::parse(&b.render(false)).unwrap();
        assert_eq!(exposition::value(&b, CONNECTIONS_ACCEPTED, &[]), Some(5.0));
    }

    #[test]
    fn every_metric_has_help_and_a_row_in_the_readme() {
        let readme = include_str!("../../README.md");
        for d in CATALOG {
            let kind = match d.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let labels: Vec<String> = d.labels.iter().map(|l| format!("`{l}`")).collect();
            let row = format!("| `{}` | {kind} | {} |", d.name, labels.join(", "));
            assert!(
                readme.contains(&row),
                "the README's metrics table has no row starting {row:?}"
            );
            assert!(!d.help.is_empty() && (d.kind == Kind::Histogram) != d.buckets.is_empty());
        }
        let text = Metrics::new().unwrap().render(false);
        assert!(
            text.contains("# HELP herald_connections Open WebSocket connections."),
            "{text}"
        );
    }
}
