//! The drain on SIGTERM, in three steps bounded together by `shutdown_timeout_secs`:
//!
//! 1. **Delay** (`drain_delay_secs`): `/readyz` answers 503 (set by whoever started the drain)
//!    while the node keeps serving everything, new upgrades and tickets included: a load
//!    balancer still routing here during its probe interval must not see refusals.
//! 2. **Window** (`drain_window_secs`): new work is refused (503 `draining`), and the
//!    connections open when the window begins are closed with 1012 in batches spread evenly
//!    over the window, each batch at a jittered instant of its slot, so that their clients
//!    reconnect elsewhere as a trickle rather than a stampede. One task does it all: a list of
//!    ids (8 bytes per connection) and one timer, never a task or a timer per connection.
//! 3. **The rest**: anything still open (a connection that raced the window's start) is closed,
//!    and the drain waits for the connection tasks to finish closing, until the deadline.
//!
//! A second signal ([`Hurry`]) cuts any step short: every connection left is closed at once and
//! they get [`CUT_GRACE`] to finish closing.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use crate::protocol::CloseCode;

/// The slot of one batch: with a window of `w`, about `w / TICK` batches (fewer when there are
/// fewer connections than that). A batch closes its connections in one pass over the hub.
const TICK: Duration = Duration::from_millis(100);

/// After a second signal, how long the connections get to finish closing before the node stops.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// Cancelled by a second signal: the drain closes everything left at once.
pub(super) type Hurry = CancellationToken;

/// One batch of a drain's closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    /// When, from the start of the window.
    pub(crate) at: Duration,
    /// Which connections, as positions in the list taken at the window's start.
    pub(crate) range: Range<usize>,
}

/// The batches that close `n` connections over `window`: `min(n, window / TICK)` batches (one
/// when the window is shorter than a tick) whose sizes differ by at most one, batch `i` at a
/// random instant of its slot `[i, i + 1) * window / batches`. So they are in order, the first
/// comes within the first slot and the last within the last, and every position is in exactly
/// one. `jitter` gives a number in `0..1000` per batch.
pub(crate) fn schedule(n: usize, window: Duration, mut jitter: impl FnMut() -> u32) -> Vec<Batch> {
    if n == 0 {
        return Vec::new();
    }
    let slots = (window.as_millis() / TICK.as_millis()).max(1);
    let batches = usize::try_from(slots).unwrap_or(usize::MAX).min(n);
    let slot = window / u32::try_from(batches).unwrap_or(u32::MAX);
    (0..batches)
        .map(|i| {
            let j = jitter() % 1000;
            Batch {
                at: slot * i as u32 + slot * j / 1000,
                range: i * n / batches..(i + 1) * n / batches,
            }
        })
        .collect()
}

/// Runs the drain on `gw` (whose `/readyz` already answers 503) until its connections are closed
/// or the deadline, `shutdown_timeout_secs` after `began`.
pub(super) async fn run(gw: &Gateway, hurry: &Hurry, began: Instant) {
    let plan = gw.config.drain;
    let deadline = began + plan.timeout;
    tracing::info!(
        connections = gw.hub.connections(),
        delay_secs = plan.delay.as_secs(),
        window_secs = plan.window.as_secs(),
        "draining: /readyz answers 503; serving for the delay, then closing connections with \
         1012 over the window"
    );
    let delayed = tokio::select! {
        _ = tokio::time::sleep(plan.delay) => true,
        _ = hurry.cancelled() => false,
    };
    // From here upgrades are refused; a connection upgraded just before is closed by its own
    // task when it starts (it reads this flag), or by the sweep below.
    gw.closing.store(true, Ordering::SeqCst);
    if delayed {
        spread(gw, plan.window, hurry).await;
    }
    gw.hub.close_all(CloseCode::Restarting);
    gw.tracker.close();
    let done = tokio::select! {
        _ = gw.tracker.wait() => true,
        _ = tokio::time::sleep_until(deadline) => false,
        _ = hurry.cancelled() => {
            // Cut short (now or before): everything left was asked to close just now.
            gw.hub.close_all(CloseCode::Restarting);
            let until = deadline.min(Instant::now() + CUT_GRACE);
            tokio::time::timeout_at(until, gw.tracker.wait()).await.is_ok()
        }
    };
    if done {
        tracing::info!("drained: every connection closed");
    } else {
        tracing::warn!(
            connections = gw.hub.connections(),
            "drain cut short with connections still closing"
        );
    }
}

/// Closes the connections open now in batches over `window` ([`schedule`]), unless a second
/// signal cuts it short.
async fn spread(gw: &Gateway, window: Duration, hurry: &Hurry) {
    let ids = gw.hub.ids();
    let mut rng = Rng::new();
    let batches = schedule(ids.len(), window, || rng.draw());
    tracing::info!(
        connections = ids.len(),
        batches = batches.len(),
        "draining: closing connections with 1012"
    );
    let start = Instant::now();
    for b in batches {
        tokio::select! {
            _ = tokio::time::sleep_until(start + b.at) => {}
            _ = hurry.cancelled() => return,
        }
        gw.hub.close_ids(&ids[b.range], CloseCode::Restarting);
    }
}

/// A small generator for the jitter (xorshift64*), seeded from the operating system (or, failing
/// that, the clock): nothing here needs to be unpredictable, only different between nodes.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let mut seed = [0u8; 8];
        let seed = match getrandom::fill(&mut seed) {
            Ok(()) => u64::from_le_bytes(seed),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        };
        Rng(seed | 1)
    }

    fn draw(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every position in exactly one batch, in order; sizes within one of each other.
    fn check_cover(batches: &[Batch], n: usize) {
        let mut next = 0;
        for b in batches {
            assert_eq!(b.range.start, next, "{batches:?}");
            next = b.range.end;
        }
        assert_eq!(next, n);
        let sizes: Vec<usize> = batches.iter().map(|b| b.range.len()).collect();
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(max - min <= 1, "{sizes:?}");
    }

    #[test]
    fn closes_are_spread_evenly_over_the_window_in_order() {
        let mut rng = Rng::new();
        for (n, window_ms) in [(20, 2000), (1000, 10_000), (100_000, 10_000), (7, 10_000)] {
            let window = Duration::from_millis(window_ms);
            let batches = schedule(n, window, || rng.draw());
            check_cover(&batches, n);
            let want = n.min(window_ms as usize / 100);
            assert_eq!(batches.len(), want, "n {n}, window {window:?}");
            let slot = window / want as u32;
            for (i, b) in batches.iter().enumerate() {
                let from = slot * i as u32;
                assert!(
                    b.at >= from && b.at < from + slot,
                    "batch {i} at {:?}",
                    b.at
                );
            }
            // They cover the window: the first in its first slot, the last in its last one.
            assert!(batches[0].at < slot);
            assert!(batches[want - 1].at >= window - slot);
            assert!(batches.windows(2).all(|w| w[0].at <= w[1].at));
        }
    }

    #[test]
    fn the_jitter_moves_a_batch_within_its_slot_only() {
        let window = Duration::from_secs(2);
        let early = schedule(20, window, || 0);
        let late = schedule(20, window, || 999);
        for (i, (e, l)) in early.iter().zip(&late).enumerate() {
            assert_eq!(e.at, Duration::from_millis(100) * i as u32);
            assert!(l.at > e.at && l.at < e.at + Duration::from_millis(100));
            assert_eq!(e.range, l.range);
        }
    }

    #[test]
    fn no_window_closes_everything_in_one_batch_at_once() {
        let batches = schedule(5, Duration::ZERO, || 500);
        assert_eq!(
            batches,
            [Batch {
                at: Duration::ZERO,
                range: 0..5
            }]
        );
        assert!(schedule(0, Duration::from_secs(10), || 0).is_empty());
        // A window shorter than a tick: one batch too.
        assert_eq!(schedule(3, Duration::from_millis(50), || 0).len(), 1);
    }

    #[test]
    fn the_generator_is_not_stuck() {
        let mut rng = Rng(1);
        let draws: std::collections::HashSet<u32> = (0..100).map(|_| rng.draw() % 1000).collect();
        assert!(draws.len() > 50, "{draws:?}");
    }
}
