//! The publish-to-write probe: how long a message takes inside the node, from the moment the
//! bus hands it to the hub until its frame is written to the first and to the last local
//! subscriber, measured on a sample of fan-outs so that no delivery is timestamped.
//!
//! How: at most one fan-out is timed at a time, and a new one at most every [`INTERVAL`] (so at
//! most ten a second, whatever the publish rate and however many topics). The hub arms the probe
//! for the fan-out ([`Probe::arm`]), notes the address of each encoding of its frame (one per
//! codec, plain and permessage-deflated: [`SLOTS`]) as it makes it ([`Probe::frame`]) and, once every subscriber has it queued, how many do
//! ([`Probe::fanned_out`]). A connection's writer checks [`Probe::armed`] once per write batch
//! (one relaxed atomic load) and only then compares the frames it takes with the timed ones; a
//! batch that holds one is reported when it is written ([`Probe::written`]). The first report
//! records `which="first"`, the one that completes the count records `which="last"`.
//!
//! Bounds: the probe keeps the timed encodings alive (a clone of each `Bytes`) while it is armed,
//! so no other frame can take their address; a fan-out that some subscriber never writes (it
//! closed, or was cut off as a slow consumer) is given up after [`GIVE_UP`] with only its first
//! recorded, and timing resumes. Every report carries the fan-out's generation, so a late report
//! of an older fan-out is ignored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::metrics::Metrics;

/// The least time between the starts of two timed fan-outs.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// A timed fan-out not written to every subscriber by then is given up (only its first counts).
pub const GIVE_UP: Duration = Duration::from_secs(5);

/// The encodings of one fan-out: JSON and MessagePack, each plain and deflated
/// ([`super::frames::slot`]).
pub const SLOTS: usize = 4;

/// A fan-out being timed: what [`Probe::arm`] gives the hub.
#[derive(Debug, Clone, Copy)]
pub struct Armed {
    generation: u32,
}

impl Armed {
    /// The mark a write of this fan-out's frame reports ([`Probe::written`]).
    pub(crate) fn mark(self) -> Option<Mark> {
        Probe::mark(self.generation)
    }
}

/// What a writer keeps from a batch that holds the timed frame, until the batch is written.
/// Non-zero (generations start at 1), so that `Option<Mark>` takes 4 bytes of the writer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    generation: std::num::NonZeroU32,
}

/// The probe of one hub.
pub struct Probe {
    /// The generation of the fan-out being timed, 0 when none is: read once per write batch.
    armed: AtomicU32,
    /// The addresses of the timed frame's encodings, by slot (0: not made).
    frames: [AtomicUsize; SLOTS],
    /// Those encodings, kept alive while timed.
    held: Mutex<[Option<Bytes>; SLOTS]>,
    /// `generation << 32 | subscribers that wrote the frame`.
    writes: AtomicU64,
    /// `generation << 32 | subscribers it was queued to`, once the fan-out is done.
    queued: AtomicU64,
    /// When the timed fan-out started, nanoseconds since `base`.
    started: AtomicU64,
    /// When the next fan-out may be timed, nanoseconds since `base`.
    next: AtomicU64,
    generation: AtomicU32,
    base: Instant,
    metrics: Arc<Metrics>,
}

const LOW: u64 = 0xffff_ffff;

impl Probe {
    /// A probe recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Probe {
        Probe {
            armed: AtomicU32::new(0),
            frames: [const { AtomicUsize::new(0) }; SLOTS],
            held: Mutex::new([const { None }; SLOTS]),
            writes: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            started: AtomicU64::new(0),
            next: AtomicU64::new(0),
            generation: AtomicU32::new(0),
            base: Instant::now(),
            metrics,
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Times this fan-out, if it is time to time one: none is timed, or the one timed is past
    /// [`GIVE_UP`], and [`INTERVAL`] has passed since the last started. One clock read.
    pub fn arm(&self) -> Option<Armed> {
        let now = self.now();
        let next = self.next.load(Ordering::Relaxed);
        if now < next {
            return None;
        }
        if self.armed.load(Ordering::Acquire) != 0
            && now < self.started.load(Ordering::Relaxed) + GIVE_UP.as_nanos() as u64
        {
            return None;
        }
        let next_after = now + INTERVAL.as_nanos() as u64;
        // One fan-out wins the turn, even when several topics fan out at once.
        if self
            .next
            .compare_exchange(next, next_after, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let mut generation = self
            .generation
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        if generation == 0 {
            generation = self
                .generation
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
        }
        self.armed.store(0, Ordering::Release);
        *self.held.lock() = [const { None }; SLOTS];
        for f in &self.frames {
            f.store(0, Ordering::Relaxed);
        }
        self.started.store(now, Ordering::Relaxed);
        self.writes
            .store(u64::from(generation) << 32, Ordering::SeqCst);
        self.queued.store(0, Ordering::SeqCst);
        self.armed.store(generation, Ordering::Release);
        Some(Armed { generation })
    }

    /// The timed fan-out made its frame for `slot` ([`super::frames::slot`]): `frame`, before
    /// queueing it anywhere.
    pub fn frame(&self, armed: Armed, slot: usize, frame: &Bytes) {
        let mut held = self.held.lock();
        if self.armed.load(Ordering::Acquire) != armed.generation {
            return;
        }
        self.frames[slot].store(frame.as_ptr() as usize, Ordering::Release);
        held[slot] = Some(frame.clone());
    }

    /// The timed fan-out queued its frame to `n` subscribers. When they all wrote it already,
    /// the last is recorded now (an upper bound: the fan-out's end).
    pub fn fanned_out(&self, armed: Armed, n: usize) {
        let generation = u64::from(armed.generation);
        if n == 0 {
            self.disarm(armed.generation);
            return;
        }
        let n = (n as u64).min(LOW);
        self.queued.store(generation << 32 | n, Ordering::SeqCst);
        if self.writes.load(Ordering::SeqCst) == generation << 32 | n
            && self.disarm(armed.generation)
        {
            let took = self
                .now()
                .saturating_sub(self.started.load(Ordering::Relaxed));
            self.metrics
                .publish_to_last
                .record(Duration::from_nanos(took).as_secs_f64());
        }
    }

    /// The generation of the fan-out being timed, 0 when none is: a writer reads it once per
    /// batch, and compares frames only when it is not 0.
    #[inline]
    pub fn armed(&self) -> u32 {
        self.armed.load(Ordering::Relaxed)
    }

    /// The addresses of the timed frame's encodings (0: not made).
    #[inline]
    pub(crate) fn timed_frames(&self) -> [usize; SLOTS] {
        std::array::from_fn(|i| self.frames[i].load(Ordering::Acquire))
    }

    /// A writer took the timed frame of generation `armed` into its batch (`None` for 0: no
    /// fan-out is timed).
    pub(crate) fn mark(armed: u32) -> Option<Mark> {
        std::num::NonZeroU32::new(armed).map(|generation| Mark { generation })
    }

    /// A batch holding the timed frame was written: the first report records `first`, the one
    /// that completes the count records `last`. A report of an older fan-out changes nothing.
    pub fn written(&self, mark: Mark) {
        let generation = u64::from(mark.generation.get());
        let mut w = self.writes.load(Ordering::Acquire);
        let count = loop {
            if w >> 32 != generation {
                return;
            }
            match self
                .writes
                .compare_exchange_weak(w, w + 1, Ordering::SeqCst, Ordering::Acquire)
            {
                Ok(_) => break (w & LOW) + 1,
                Err(now) => w = now,
            }
        };
        let took = Duration::from_nanos(
            self.now()
                .saturating_sub(self.started.load(Ordering::Relaxed)),
        )
        .as_secs_f64();
        if count == 1 {
            self.metrics.publish_to_first.record(took);
        }
        if self.queued.load(Ordering::SeqCst) == generation << 32 | count
            && self.disarm(mark.generation.get())
        {
            self.metrics.publish_to_last.record(took);
        }
    }

    /// Ends the timing of `generation` (true for the one caller that ends it).
    fn disarm(&self, generation: u32) -> bool {
        let ended = self
            .armed
            .compare_exchange(generation, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if ended {
            *self.held.lock() = [const { None }; SLOTS];
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::exposition;

    fn observations(m: &Metrics, which: &str) -> f64 {
        let s = exposition::parse(&m.render(false)).unwrap();
        let b = exposition::buckets(&s, "herald_publish_to_write_seconds", &[("which", which)]);
        b.last().map_or(0.0, |b| b.1)
    }

    #[test]
    fn the_first_and_the_last_writer_record_once_each() {
        let m = Metrics::new().unwrap();
        let p = Probe::new(m.clone());
        let armed = p.arm().expect("the first fan-out is timed");
        assert!(
            p.arm().is_none(),
            "one at a time, and not within the interval"
        );
        let frame = Bytes::from(vec![1u8; 8]);
        p.frame(armed, 0, &frame);
        assert_eq!(p.timed_frames()[0], frame.as_ptr() as usize);
        let mark = Probe::mark(p.armed()).unwrap();
        p.written(mark);
        p.fanned_out(armed, 3);
        assert_eq!(
            (observations(&m, "first"), observations(&m, "last")),
            (1.0, 0.0)
        );
        p.written(mark);
        assert_ne!(p.armed(), 0);
        p.written(mark);
        assert_eq!(p.armed(), 0, "the last writer ends the timing");
        assert_eq!(
            (observations(&m, "first"), observations(&m, "last")),
            (1.0, 1.0)
        );
        // A late report of an ended fan-out changes nothing.
        p.written(mark);
        assert_eq!(observations(&m, "last"), 1.0);
    }

    #[test]
    fn writers_done_before_the_count_is_known_leave_the_last_to_the_hub() {
        let m = Metrics::new().unwrap();
        let p = Probe::new(m.clone());
        let armed = p.arm().unwrap();
        let mark = Probe::mark(p.armed()).unwrap();
        p.written(mark);
        p.written(mark);
        p.fanned_out(armed, 2);
        assert_eq!(p.armed(), 0);
        assert_eq!(
            (observations(&m, "first"), observations(&m, "last")),
            (1.0, 1.0)
        );
    }

    #[test]
    fn a_writers_mark_takes_no_more_room_than_its_generation() {
        assert_eq!(std::mem::size_of::<Option<Mark>>(), 4);
        assert_eq!(Probe::mark(0), None);
    }

    #[test]
    fn a_fan_out_to_nobody_is_not_timed_and_frees_the_probe() {
        let m = Metrics::new().unwrap();
        let p = Probe::new(m.clone());
        let armed = p.arm().unwrap();
        p.fanned_out(armed, 0);
        assert_eq!(p.armed(), 0);
        assert_eq!(observations(&m, "first") + observations(&m, "last"), 0.0);
    }
}
