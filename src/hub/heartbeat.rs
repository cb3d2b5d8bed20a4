//! Heartbeats from one shared timer: no connection owns a timer. Once per ping interval the
//! timer takes a snapshot of the open connections and works through it in [`SLICES`] ticks, so
//! the pings to 10,000 sockets are spread over the interval rather than sent as one burst of
//! writes that would delay every message published during it. A visited connection gets the
//! same shared ping frame, or is closed with 4000 when not heard from for two intervals. A
//! round lasts its [`SLICES`] ticks however few connections it holds: each connection is
//! visited once per interval, never once per tick.
//!
//! The visit also samples the connection's outbox for the `herald_outbox_bytes` histogram: one
//! observation per connection per interval, at no cost to the paths that queue and write.
//!
//! The same timer ends sessions: on every tick it closes with 4001 the connections whose
//! identity's deadline has passed ([`super::expiry`]; a look at the first entry of an index when
//! none is due), so an expiry takes effect within a tick or a second of its deadline.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::{Hub, Subscriber};
use crate::protocol::CloseCode;
use crate::protocol::websocket::{OpCode, server_frame};

/// Ticks per ping interval (a tick every 50 ms with the default 25 s interval).
pub const SLICES: usize = 500;

/// One interval's snapshot of the connections, and how far through it the ticks have got.
struct Round {
    conns: Vec<Arc<Subscriber>>,
    /// Connections visited so far.
    at: usize,
    /// Connections visited per tick.
    per_tick: usize,
    /// Ticks of this round so far; a new round starts after [`SLICES`].
    ticks: usize,
}

impl Round {
    /// A round that is over: the first tick takes a snapshot.
    fn new() -> Round {
        Round {
            conns: Vec::new(),
            at: 0,
            per_tick: 1,
            ticks: SLICES,
        }
    }

    /// The connections to visit on this tick: a new snapshot every [`SLICES`] ticks, worked
    /// through a slice per tick (nothing on the ticks left once it is done).
    fn tick(&mut self, hub: &Hub) -> &[Arc<Subscriber>] {
        if self.ticks >= SLICES {
            self.conns = hub.snapshot();
            self.at = 0;
            self.per_tick = self.conns.len().div_ceil(SLICES).max(1);
            self.ticks = 0;
        }
        self.ticks += 1;
        let start = self.at;
        self.at = (start + self.per_tick).min(self.conns.len());
        &self.conns[start..self.at]
    }
}

/// Runs until `stop` is cancelled.
pub async fn run(hub: Arc<Hub>, interval: Duration, stop: CancellationToken) {
    let ping = server_frame(OpCode::Ping, b"");
    let mut tick = tokio::time::interval(interval / SLICES as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let grace = (interval.as_secs() as u32).max(1) * 2;
    let mut round = Round::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        hub.expire_due(unix_now());
        let now = hub.now_secs();
        for s in round.tick(&hub) {
            hub.metrics()
                .outbox_bytes
                .record(s.outbox.pending_bytes() as f64);
            let seen = s.last_seen.load(std::sync::atomic::Ordering::Relaxed);
            if now.saturating_sub(seen) > grace {
                s.outbox.close(CloseCode::HeartbeatTimeout);
            } else {
                s.push(ping.clone());
            }
        }
    }
}

/// Seconds since the Unix epoch: the clock of identities' expiry (a JWT's `exp`).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Codec;

    /// How many times each of `conns` is visited in `ticks` ticks.
    fn visits(hub: &Hub, conns: &[Arc<Subscriber>], ticks: usize) -> Vec<usize> {
        let mut round = Round::new();
        let mut seen = vec![0; conns.len()];
        for _ in 0..ticks {
            for s in round.tick(hub) {
                let i = conns.iter().position(|c| c.id == s.id).unwrap();
                seen[i] += 1;
            }
        }
        seen
    }

    #[test]
    fn a_lone_connection_is_pinged_once_per_interval_not_once_per_tick() {
        let hub = Hub::new(1 << 20);
        let conns = vec![hub.connect(Codec::Json)];
        assert_eq!(visits(&hub, &conns, SLICES), [1]);
        assert_eq!(visits(&hub, &conns, 3 * SLICES), [3]);
    }

    #[test]
    fn every_connection_is_pinged_once_per_interval_whatever_their_number() {
        for n in [2, SLICES - 1, SLICES + 1, 3 * SLICES] {
            let hub = Hub::new(1 << 20);
            let conns: Vec<_> = (0..n).map(|_| hub.connect(Codec::Json)).collect();
            let counts = visits(&hub, &conns, 2 * SLICES);
            assert!(
                counts.iter().all(|&c| c == 2),
                "{n} connections: {counts:?}"
            );
        }
    }
}
