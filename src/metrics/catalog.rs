//! The catalog: every metric a node renders, with its kind, its labels, its meaning (its
//! Prometheus `HELP`, and the README's table) and, for histograms, its buckets. One list, so that
//! what is registered, what is described and what the README documents cannot drift apart (a
//! test checks the README against it).

/// What kind of metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric of the catalog.
pub(crate) struct Described {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    /// Its labels (each with a bounded set of values), as the README's table lists them.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the README's test"))]
    pub(crate) labels: &'static [&'static str],
    pub(crate) help: &'static str,
    /// Upper bounds of its buckets (histograms only).
    pub(crate) buckets: &'static [f64],
}

/// Latency buckets of what happens inside the node (seconds): 50 µs to 5 s.
const FAST: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];
/// Latency buckets of what crosses the network (seconds): 250 µs to 10 s.
const NETWORK: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];
/// Byte buckets of an outbox: empty, then 1 KiB to 16 MiB.
const OUTBOX: &[f64] = &[
    0.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
];

const fn metric(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Described {
    Described {
        name,
        kind,
        labels,
        help,
        buckets: &[],
    }
}

const fn histogram(
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
    buckets: &'static [f64],
) -> Described {
    Described {
        name,
        kind: Kind::Histogram,
        labels,
        help,
        buckets,
    }
}

use Kind::{Counter, Gauge};

pub(crate) const CONNECTIONS: &str = "herald_connections";
pub(crate) const CONNECTIONS_ACCEPTED: &str = "herald_connections_accepted_total";
pub(crate) const CONNECTIONS_REFUSED: &str = "herald_connections_refused_total";
pub(crate) const DISCONNECTS: &str = "herald_disconnects_total";
pub(crate) const HANDSHAKE: &str = "herald_handshake_duration_seconds";
pub(crate) const SUBSCRIPTIONS: &str = "herald_subscriptions";
pub(crate) const TOPICS: &str = "herald_topics";
pub(crate) const PUBLISHED: &str = "herald_messages_published_total";
pub(crate) const BUS_MESSAGES: &str = "herald_bus_messages_total";
pub(crate) const DELIVERIES: &str = "herald_deliveries_total";
pub(crate) const FRAMES_IN: &str = "herald_frames_received_total";
pub(crate) const BYTES_IN: &str = "herald_bytes_received_total";
pub(crate) const WRITES: &str = "herald_socket_writes_total";
pub(crate) const BYTES_OUT: &str = "herald_bytes_written_total";
pub(crate) const PUBLISH_TO_WRITE: &str = "herald_publish_to_write_seconds";
pub(crate) const OUTBOX_BYTES: &str = "herald_outbox_bytes";
pub(crate) const SLOW_CONSUMERS: &str = "herald_slow_consumers_total";
pub(crate) const RECOVERIES: &str = "herald_recoveries_total";
pub(crate) const REPLAY_PAGES: &str = "herald_replay_pages_total";
pub(crate) const TICKETS: &str = "herald_tickets_issued_total";
pub(crate) const REDIS_CONNECTED: &str = "herald_redis_connected";
pub(crate) const REDIS_RECONNECTS: &str = "herald_redis_reconnects_total";
pub(crate) const REDIS_PROBE: &str = "herald_redis_probe_rtt_seconds";
pub(crate) const REDIS_GAPS: &str = "herald_redis_gap_fills_total";
pub(crate) const PROXY_REQUESTS: &str = "herald_proxy_requests_total";
pub(crate) const PROXY_DURATION: &str = "herald_proxy_request_duration_seconds";
pub(crate) const EVENTS_PENDING: &str = "herald_lifecycle_events_pending";
pub(crate) const CPU: &str = "process_cpu_seconds_total";
pub(crate) const RSS: &str = "process_resident_memory_bytes";
pub(crate) const OPEN_FDS: &str = "process_open_fds";
pub(crate) const MAX_FDS: &str = "process_max_fds";

/// Every metric, in the README's order.
pub(crate) const CATALOG: &[Described] = &[
    metric(CONNECTIONS, Gauge, &[], "Open WebSocket connections."),
    metric(
        CONNECTIONS_ACCEPTED,
        Counter,
        &[],
        "WebSocket connections accepted (upgraded).",
    ),
    metric(
        CONNECTIONS_REFUSED,
        Counter,
        &["reason"],
        "Connections and upgrades refused, by reason: the refusal's error code (too_many_connections, rate_limited, invalid_ticket, origin_not_allowed, draining, ...).",
    ),
    metric(
        DISCONNECTS,
        Counter,
        &["code"],
        "WebSocket connections ended, by close code (sent or received; 1006 when the socket just broke; other for a code outside the protocol's table).",
    ),
    histogram(
        HANDSHAKE,
        &[],
        "Accepted upgrades: from the upgrade request read to its 101 answer (every check, the ticket's redemption, the per-user count and the connect event).",
        FAST,
    ),
    metric(
        SUBSCRIPTIONS,
        Gauge,
        &[],
        "Subscriptions of this node's connections.",
    ),
    metric(
        TOPICS,
        Gauge,
        &[],
        "Topics with at least one subscriber on this node.",
    ),
    metric(
        PUBLISHED,
        Counter,
        &["via"],
        "Messages published through this node: via api (POST /v1/publish) or client (a pub frame).",
    ),
    metric(
        BUS_MESSAGES,
        Counter,
        &[],
        "Messages the bus handed to this node's hub (each fanned out once to its local subscribers).",
    ),
    metric(
        DELIVERIES,
        Counter,
        &[],
        "Frames queued to subscribers: messages, directed messages and presence changes.",
    ),
    metric(
        FRAMES_IN,
        Counter,
        &[],
        "WebSocket data frames received from clients.",
    ),
    metric(BYTES_IN, Counter, &[], "Bytes read from WebSocket clients."),
    metric(
        WRITES,
        Counter,
        &[],
        "Socket writes to WebSocket clients (each may carry many frames).",
    ),
    metric(
        BYTES_OUT,
        Counter,
        &[],
        "Bytes written to WebSocket clients.",
    ),
    histogram(
        PUBLISH_TO_WRITE,
        &["which"],
        "Sampled fan-outs: from the bus handing a message to the hub until its frame is written to the first (which=first) and to the last (which=last) local subscriber.",
        FAST,
    ),
    histogram(
        OUTBOX_BYTES,
        &[],
        "Bytes queued for a connection, sampled once per connection per ping interval by the heartbeat timer.",
        OUTBOX,
    ),
    metric(
        SLOW_CONSUMERS,
        Counter,
        &[],
        "Connections closed with 4008 (slow consumer: their outbox filled), counted when the outbox overflows (the close itself may take the close grace).",
    ),
    metric(
        RECOVERIES,
        Counter,
        &["outcome"],
        "Subscriptions with since, by outcome: exact (every missed message replayed), not_recovered (recovered: false), failed (the history could not be read).",
    ),
    metric(
        REPLAY_PAGES,
        Counter,
        &[],
        "Pages of history read for replays (each at most 1000 messages).",
    ),
    metric(TICKETS, Counter, &[], "Tickets issued."),
    metric(
        REDIS_CONNECTED,
        Gauge,
        &[],
        "1 while Redis pub/sub is live and every gap is filled (the node is ready), 0 otherwise. Cluster mode only.",
    ),
    metric(
        REDIS_RECONNECTS,
        Counter,
        &[],
        "Redis pub/sub connections rebuilt after a fault. Cluster mode only.",
    ),
    histogram(
        REDIS_PROBE,
        &[],
        "Round trip of the liveness probe: a message the node publishes to itself through Redis every half second. Cluster mode only.",
        NETWORK,
    ),
    metric(
        REDIS_GAPS,
        Counter,
        &["outcome"],
        "Topics whose missed messages were read back from Redis after a fault (filled), or could not be and whose subscribers were closed with 1012 (lost). Cluster mode only.",
    ),
    metric(
        PROXY_REQUESTS,
        Counter,
        &["service", "endpoint", "outcome"],
        "Requests to backend services (send, the auth hook, lifecycle events), by configured service, endpoint (none when none was tried) and outcome (ok, or the error code: upstream_timeout, upstream_error, upstream_unavailable, overloaded, unknown_service).",
    ),
    histogram(
        PROXY_DURATION,
        &["service", "endpoint"],
        "Time of each request to a backend endpoint, until its answer was read.",
        NETWORK,
    ),
    metric(
        EVENTS_PENDING,
        Gauge,
        &[],
        "Lifecycle events recorded and not yet taken by the events service (or, in a cluster, disconnects waiting for Redis).",
    ),
    metric(
        CPU,
        Counter,
        &[],
        "CPU time of the process, user and system (from /proc/self/stat at render time).",
    ),
    metric(
        RSS,
        Gauge,
        &[],
        "Resident memory of the process (VmRSS of /proc/self/status at render time).",
    ),
    metric(
        OPEN_FDS,
        Gauge,
        &[],
        "Open file descriptors, sockets included (entries of /proc/self/fd, counted on GET /metrics only).",
    ),
    metric(
        MAX_FDS,
        Gauge,
        &[],
        "The process's limit of open file descriptors (RLIMIT_NOFILE).",
    ),
];
