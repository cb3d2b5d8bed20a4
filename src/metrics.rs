//! Process-wide counters and gauges, rendered in the Prometheus text format for `GET /metrics`.
//!
//! Plain relaxed atomics: the hot path adds once per fan-out (not per delivery), and rendering is
//! a handful of `format!`s. A leaf: imports nothing from the crate.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
static CONNECTIONS_TOTAL: AtomicU64 = AtomicU64::new(0);
static DELIVERIES: AtomicU64 = AtomicU64::new(0);
static PUBLISHES: AtomicU64 = AtomicU64::new(0);
static SLOW_CONSUMERS: AtomicU64 = AtomicU64::new(0);
static FRAMES_IN: AtomicU64 = AtomicU64::new(0);
static BYTES_OUT: AtomicU64 = AtomicU64::new(0);
static WRITES: AtomicU64 = AtomicU64::new(0);
static REJECTED: AtomicU64 = AtomicU64::new(0);
static TICKETS: AtomicU64 = AtomicU64::new(0);
static REPLAY_PAGES: AtomicU64 = AtomicU64::new(0);

/// Sets the number of open WebSocket connections.
pub(crate) fn connections(n: usize) {
    CONNECTIONS.store(n as u64, Relaxed);
}

/// Counts an accepted WebSocket connection.
pub(crate) fn connection_opened() {
    CONNECTIONS_TOTAL.fetch_add(1, Relaxed);
}

/// Counts `n` messages queued to subscribers.
pub(crate) fn deliveries(n: usize) {
    DELIVERIES.fetch_add(n as u64, Relaxed);
}

/// Counts a published message.
pub(crate) fn published() {
    PUBLISHES.fetch_add(1, Relaxed);
}

/// Counts a connection closed for reading too slowly.
pub(crate) fn slow_consumer() {
    SLOW_CONSUMERS.fetch_add(1, Relaxed);
}

/// Counts a frame received from a client.
pub(crate) fn frame_in() {
    FRAMES_IN.fetch_add(1, Relaxed);
}

/// Counts one socket write of `bytes`.
pub(crate) fn write(bytes: usize) {
    WRITES.fetch_add(1, Relaxed);
    BYTES_OUT.fetch_add(bytes as u64, Relaxed);
}

/// Counts an upgrade or API request refused.
pub(crate) fn rejected() {
    REJECTED.fetch_add(1, Relaxed);
}

/// Counts a ticket issued.
pub(crate) fn ticket_issued() {
    TICKETS.fetch_add(1, Relaxed);
}

/// Counts a page of history read for a subscriber's replay.
pub(crate) fn replay_page() {
    REPLAY_PAGES.fetch_add(1, Relaxed);
}

/// The Prometheus text exposition of every metric.
pub(crate) fn render() -> String {
    let mut s = String::with_capacity(1024);
    let rows: [(&str, &str, &str, &AtomicU64); 11] = [
        (
            "herald_connections",
            "gauge",
            "Open WebSocket connections.",
            &CONNECTIONS,
        ),
        (
            "herald_connections_total",
            "counter",
            "WebSocket connections accepted.",
            &CONNECTIONS_TOTAL,
        ),
        (
            "herald_deliveries_total",
            "counter",
            "Messages queued to subscribers.",
            &DELIVERIES,
        ),
        (
            "herald_publishes_total",
            "counter",
            "Messages published.",
            &PUBLISHES,
        ),
        (
            "herald_slow_consumers_total",
            "counter",
            "Connections closed with 4008 (slow consumer).",
            &SLOW_CONSUMERS,
        ),
        (
            "herald_frames_received_total",
            "counter",
            "WebSocket data frames received from clients.",
            &FRAMES_IN,
        ),
        (
            "herald_socket_writes_total",
            "counter",
            "Socket writes (each may carry many frames).",
            &WRITES,
        ),
        (
            "herald_bytes_written_total",
            "counter",
            "Bytes written to WebSocket clients.",
            &BYTES_OUT,
        ),
        (
            "herald_rejections_total",
            "counter",
            "Upgrades and API requests refused.",
            &REJECTED,
        ),
        (
            "herald_tickets_issued_total",
            "counter",
            "Tickets issued.",
            &TICKETS,
        ),
        (
            "herald_replay_pages_total",
            "counter",
            "Pages of history read for replays (each at most 1000 messages).",
            &REPLAY_PAGES,
        ),
    ];
    for (name, kind, help, v) in rows {
        let _ = writeln!(
            s,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
            v.load(Relaxed)
        );
    }
    s
}
