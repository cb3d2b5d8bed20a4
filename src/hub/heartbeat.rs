//! Heartbeats from one shared timer: no connection owns a timer. Once per ping interval the
//! timer takes a snapshot of the open connections and works through it in [`SLICES`] ticks, so
//! the pings to 10,000 sockets are spread over the interval rather than sent as one burst of
//! writes that would delay every message published during it. A visited connection gets the
//! same shared ping frame, or is closed with 4000 when not heard from for two intervals.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Hub, Subscriber};
use crate::protocol::CloseCode;
use crate::protocol::websocket::{OpCode, server_frame};

/// Ticks per ping interval (a tick every 50 ms with the default 25 s interval).
pub const SLICES: usize = 500;

/// Runs until `stop` is cancelled.
pub async fn run(hub: Arc<Hub>, interval: Duration, stop: CancellationToken) {
    let ping = server_frame(OpCode::Ping, b"");
    let mut tick = tokio::time::interval(interval / SLICES as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let grace = (interval.as_secs() as u32).max(1) * 2;
    // This interval's connections, and how far through them the ticks have got.
    let mut round: Vec<Arc<Subscriber>> = Vec::new();
    let mut at = 0;
    let mut per_tick = 1;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if at >= round.len() {
            round = hub.snapshot();
            at = 0;
            per_tick = round.len().div_ceil(SLICES).max(1);
        }
        let now = hub.now_secs();
        let end = (at + per_tick).min(round.len());
        for s in &round[at..end] {
            let seen = s.last_seen.load(std::sync::atomic::Ordering::Relaxed);
            if now.saturating_sub(seen) > grace {
                s.outbox.close(CloseCode::HeartbeatTimeout);
            } else {
                s.push(ping.clone());
            }
        }
        at = end;
    }
}
