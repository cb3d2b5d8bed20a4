//! When a fan-out writes to its subscribers' sockets itself ([`super::Subscriber::send`]) rather
//! than queueing and waking each connection's task.
//!
//! A direct write saves the wake-up and the poll, but it is one system call per delivery: a
//! queue lets a busy connection's writer take many frames in one gathering write. So a fan-out
//! writes directly only when its topic's fan-outs come, on average, at least twice as far apart
//! as such a sweep takes (its share of subscribers times what a direct write has cost lately):
//! at 5 messages a second to 10,000 subscribers every fan-out does, while a saturated topic's
//! fan-outs queue, and batch, as before. An average (of the last eight or so gaps), not the last
//! gap: a saturated publisher sends in bursts, and when the first message of every burst (after
//! a quiet gap while the writers drained the last) went direct, scenario (a) cost 14% more CPU
//! per delivery.
//!
//! A fan-out whose share is under [`MIN_SHARE`] subscribers queues too: its sweep is short
//! either way, and a direct sweep runs inline in the publisher's task, holding up what comes
//! behind it. This keeps scenario (c) (1,000 topics of 10) on the path it was measured on; that
//! small direct sweeps would cost (c) anything is not shown (the run that suggested it also
//! carried a socket design that alone lengthened (c)'s tail).
//!
//! On N worker threads a fan-out writes to the last `1/N` of its subscribers and queues the rest
//! first, so that the other workers' writes run alongside its own.
//!
//! It owns only its clock and its estimate; each topic keeps its own [`Cadence`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// What a direct write is taken to cost before one is measured.
const FIRST_COST_NS: u32 = 5_000;
/// The fewest subscribers a fan-out writes to directly (its share: see the module's note).
pub(crate) const MIN_SHARE: usize = 256;

/// The node's policy (one per hub).
pub struct DirectWrites {
    /// The runtime's worker threads when the hub was made (1 outside a runtime).
    workers: usize,
    /// The clock fan-outs are timed with.
    epoch: Instant,
    /// What one direct write has cost lately (ns, a moving average of timed sweeps). Relaxed:
    /// an estimate, written once per timed sweep.
    cost_ns: AtomicU32,
}

/// When a topic's fan-outs come: kept by the topic, under its lock.
#[derive(Debug, Default)]
pub struct Cadence {
    /// When the last fan-out began (this policy's clock, ns; 0: never).
    last: u64,
    /// The average gap between fan-outs (ns, a moving average; 0 until the second).
    gap: u64,
}

/// One fan-out's plan: which subscribers it writes to directly, and when it began.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Subscribers from this index on are written to directly (when idle); the len: none.
    pub(crate) direct_from: usize,
    len: usize,
    began_ns: u64,
}

impl DirectWrites {
    /// The policy for a runtime of `workers` worker threads.
    pub(crate) fn new(workers: usize) -> DirectWrites {
        DirectWrites {
            workers: workers.max(1),
            epoch: Instant::now(),
            cost_ns: AtomicU32::new(FIRST_COST_NS),
        }
    }

    /// The policy for the runtime this is called in.
    pub(crate) fn for_current_runtime() -> DirectWrites {
        DirectWrites::new(
            tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers()),
        )
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Plans a fan-out to `len` subscribers of a topic whose fan-outs came as `cadence` says,
    /// and counts this one in it.
    pub(crate) fn plan(&self, len: usize, cadence: &mut Cadence) -> Plan {
        self.plan_at(self.now_ns(), len, cadence)
    }

    fn plan_at(&self, now: u64, len: usize, c: &mut Cadence) -> Plan {
        if c.last != 0 {
            let gap = now.saturating_sub(c.last);
            c.gap = if c.gap == 0 {
                gap
            } else {
                (c.gap * 7 + gap) / 8
            };
        }
        let first = c.last == 0;
        c.last = now.max(1);
        let share = len.div_ceil(self.workers);
        let sweep = share as u64 * u64::from(self.cost_ns.load(Ordering::Relaxed));
        let direct_from = if share >= MIN_SHARE && (first || c.gap >= 2 * sweep) {
            len - share
        } else {
            len
        };
        Plan {
            direct_from,
            len,
            began_ns: now,
        }
    }

    /// The fan-out planned as `plan` is done: its direct writes' time teaches the estimate.
    pub(crate) fn done(&self, plan: Plan) {
        // No clock read for a fan-out that wrote to none directly (most of them).
        if plan.len - plan.direct_from >= MIN_SHARE {
            self.done_at(self.now_ns(), plan);
        }
    }

    fn done_at(&self, now: u64, plan: Plan) {
        let direct = plan.len - plan.direct_from;
        if direct < MIN_SHARE {
            return;
        }
        // The whole fan-out's time, queued part included: an upper bound, as it should be.
        let each = (now.saturating_sub(plan.began_ns) / direct as u64)
            .clamp(100, u64::from(u32::MAX)) as u32;
        let old = self.cost_ns.load(Ordering::Relaxed);
        let new = ((u64::from(old) * 7 + u64::from(each)) / 8) as u32;
        self.cost_ns.store(new, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_topic_fanned_out_seldom_is_written_to_directly_and_one_fanned_out_often_is_queued() {
        let d = DirectWrites::new(1);
        let mut c = Cadence::default();
        // The first fan-out of a topic: nothing to go by, so directly.
        assert_eq!(d.plan_at(1_000 * MS, 10_000, &mut c).direct_from, 0);
        // 10,000 direct writes take about 50 ms at 5 µs: every 200 ms (5 a second) is seldom
        // enough...
        let mut t = 1_000 * MS;
        for _ in 0..20 {
            t += 200 * MS;
            assert_eq!(d.plan_at(t, 10_000, &mut c).direct_from, 0);
        }
        // ...every 4 ms is not: once the average has caught up, the fan-outs queue.
        for _ in 0..30 {
            t += 4 * MS;
            d.plan_at(t, 10_000, &mut c);
        }
        assert_eq!(d.plan_at(t + 4 * MS, 10_000, &mut c).direct_from, 10_000);
        // One quiet gap in a busy stream (a burst's writers draining) does not change that.
        t += 4 * MS + 60 * MS;
        assert_eq!(d.plan_at(t, 10_000, &mut c).direct_from, 10_000);
    }

    #[test]
    fn a_small_fan_out_is_queued_however_seldom() {
        let d = DirectWrites::new(1);
        let mut c = Cadence::default();
        assert_eq!(
            d.plan_at(MS, MIN_SHARE - 1, &mut c).direct_from,
            MIN_SHARE - 1
        );
        let mut c = Cadence::default();
        assert_eq!(d.plan_at(MS, MIN_SHARE, &mut c).direct_from, 0);
        assert_eq!(d.plan_at(MS, 0, &mut Cadence::default()).direct_from, 0);
    }

    #[test]
    fn on_several_workers_a_fan_out_writes_to_its_last_share() {
        let p = |workers, len| {
            DirectWrites::new(workers)
                .plan_at(MS, len, &mut Cadence::default())
                .direct_from
        };
        assert_eq!(p(4, 10_000), 7_500);
        assert_eq!(p(3, 1_000), 666);
        // 1,000 subscribers on 8 workers: a share of 125, too few to write directly.
        assert_eq!(p(8, 1_000), 1_000);
        assert_eq!(p(0, 500), 0);
    }

    #[test]
    fn the_cost_estimate_follows_the_sweeps_timed() {
        let d = DirectWrites::new(1);
        let mut c = Cadence::default();
        let p = d.plan_at(MS, 1_000, &mut c);
        // 1,000 writes in 85 ms: 85 µs each; the estimate moves an eighth of the way, to 15 µs.
        d.done_at(86 * MS, p);
        assert_eq!(d.cost_ns.load(Ordering::Relaxed), 15_000);
        // So fan-outs 20 ms apart no longer are seldom enough for 1,000 direct writes (30 ms
        // needed); 30 ms apart are.
        let mut busy = Cadence::default();
        d.plan_at(MS, 1_000, &mut busy);
        assert_eq!(d.plan_at(21 * MS, 1_000, &mut busy).direct_from, 1_000);
        let mut seldom = Cadence::default();
        d.plan_at(MS, 1_000, &mut seldom);
        assert_eq!(d.plan_at(31 * MS, 1_000, &mut seldom).direct_from, 0);
        // A fan-out that wrote to none directly teaches nothing.
        let queued = d.plan_at(32 * MS, 1_000, &mut busy);
        d.done_at(2_000 * MS, queued);
        assert_eq!(d.cost_ns.load(Ordering::Relaxed), 15_000);
    }
}
