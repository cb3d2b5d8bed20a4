//! Heartbeats from one shared timer: every ping interval, one task queues the same shared ping
//! frame into every connection's outbox and closes (4000) the ones not heard from for two
//! intervals. No connection owns a timer.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::protocol::CloseCode;
use crate::protocol::websocket::{OpCode, server_frame};

/// Runs until `stop` is cancelled.
pub async fn run(hub: Arc<Hub>, interval: Duration, stop: CancellationToken) {
    let ping = server_frame(OpCode::Ping, b"");
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let grace = (interval.as_secs() as u32).max(1) * 2;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = hub.now_secs();
        for s in hub.snapshot() {
            let seen = s.last_seen.load(std::sync::atomic::Ordering::Relaxed);
            if now.saturating_sub(seen) > grace {
                s.outbox.close(CloseCode::HeartbeatTimeout);
            } else {
                s.push(ping.clone());
            }
        }
    }
}
