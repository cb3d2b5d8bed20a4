//! Heartbeats from one shared timer: no connection owns a timer. The timer ticks [`SLICES`]
//! times per ping interval and visits one slice of the connections each tick, so pings to
//! 10,000 sockets are spread over the interval instead of arriving as one burst of writes
//! that would delay every message published during it. A visited connection gets the same
//! shared ping frame, or is closed with 4000 when not heard from for two intervals.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::protocol::CloseCode;
use crate::protocol::websocket::{OpCode, server_frame};

/// Ticks per ping interval; each tick visits the connections whose id falls in its slice.
pub const SLICES: u64 = 50;

/// Runs until `stop` is cancelled.
pub async fn run(hub: Arc<Hub>, interval: Duration, stop: CancellationToken) {
    let ping = server_frame(OpCode::Ping, b"");
    let mut tick = tokio::time::interval(interval / SLICES as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let grace = (interval.as_secs() as u32).max(1) * 2;
    let mut slice = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        slice = (slice + 1) % SLICES;
        let now = hub.now_secs();
        for s in hub.snapshot_slice(slice, SLICES) {
            let seen = s.last_seen.load(std::sync::atomic::Ordering::Relaxed);
            if now.saturating_sub(seen) > grace {
                s.outbox.close(CloseCode::HeartbeatTimeout);
            } else {
                s.push(ping.clone());
            }
        }
    }
}
