//! When each message is due, and waiting for it. Message `j` of a publisher is due at
//! `start + offset + j / rate`; publisher `k` of `P` is offset by `k / total_rate`, so that all
//! publishers together send one message every `1 / total_rate`.
//!
//! `exact` (the default) waits on a timerfd armed at the due instant (absolute
//! `CLOCK_MONOTONIC`, which is the clock behind `Instant`, and no timer slack) through tokio's
//! reactor, on the runtime's own thread. `tick` waits with `tokio::time::sleep_until`, whose
//! wheel has millisecond granularity: at 5,000 msg/s it sends 5 messages at each millisecond, in
//! bursts that queue behind each other in the server and in the receivers. It is kept to compare
//! with figures measured before `exact` existed.

use rustix::time::{
    ClockId, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec,
};
use std::os::fd::OwnedFd;
use tokio::io::unix::AsyncFd;
use tokio::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pacing {
    /// A timerfd per publisher: each message at its instant.
    Exact,
    /// tokio's millisecond timer: messages in bursts at each tick.
    Tick,
}

/// One publisher's schedule.
pub(crate) struct Pacer {
    start: Instant,
    offset: Duration,
    /// Messages per second for this publisher; None = unpaced.
    rate: Option<f64>,
    /// `exact` only: the timer, and `CLOCK_MONOTONIC` at `start`.
    timer: Option<(AsyncFd<OwnedFd>, Duration)>,
}

impl Pacer {
    /// A schedule that starts when [`Pacer::start`] is called. Must run inside the runtime
    /// (`exact` registers a timerfd with its reactor).
    pub(crate) fn new(
        pacing: Pacing,
        rate: Option<f64>,
        offset: Duration,
    ) -> std::io::Result<Pacer> {
        let rate = rate.filter(|r| *r > 0.0);
        let timer = match (pacing, rate) {
            (Pacing::Exact, Some(_)) => {
                let fd = rustix::time::timerfd_create(
                    TimerfdClockId::Monotonic,
                    TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
                )?;
                // `new` is deprecated because an `AsRawFd` type could close its descriptor behind
                // the registration; an `OwnedFd` moved into the `AsyncFd` cannot, and `register`
                // (the replacement) is `unsafe`, which this crate forbids.
                #[allow(deprecated)]
                let fd = AsyncFd::new(fd)?;
                Some((fd, Duration::ZERO))
            }
            _ => None,
        };
        let mut p = Pacer {
            start: Instant::now(),
            offset,
            rate,
            timer,
        };
        p.start();
        Ok(p)
    }

    /// (Re)starts the schedule now: message 0 is due at `now + offset`.
    pub(crate) fn start(&mut self) {
        // `start` first: the timer's origin is then no earlier than it, so a timer never fires
        // before the instant `due_now` computes.
        self.start = Instant::now();
        if let Some((_, mono_start)) = &mut self.timer {
            *mono_start = mono_now();
        }
    }

    fn due_after_start(&self, j: u64) -> Option<Duration> {
        self.rate
            .map(|r| self.offset + Duration::from_secs_f64(j as f64 / r))
    }

    /// Message `j` is due (always, when unpaced).
    pub(crate) fn due_now(&self, j: u64) -> bool {
        self.due_after_start(j)
            .is_none_or(|d| self.start + d <= Instant::now())
    }

    /// Wait until message `j` is due (no wait when unpaced or late).
    pub(crate) async fn wait(&self, j: u64) -> std::io::Result<()> {
        let Some(after) = self.due_after_start(j) else {
            return Ok(());
        };
        if self.start + after <= Instant::now() {
            return Ok(());
        }
        let Some((fd, mono_start)) = &self.timer else {
            tokio::time::sleep_until(self.start + after).await;
            return Ok(());
        };
        let at = *mono_start + after;
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: at.as_secs() as i64,
                tv_nsec: i64::from(at.subsec_nanos()),
            },
        };
        rustix::time::timerfd_settime(fd.get_ref(), TimerfdTimerFlags::ABSTIME, &spec)?;
        loop {
            let mut guard = fd.readable().await?;
            let mut expirations = [0u8; 8];
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

fn mono_now() -> Duration {
    let t = rustix::time::clock_gettime(ClockId::Monotonic);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exact_pacing_never_sends_early() {
        // 20 messages at 2,000/s from a publisher offset by 1 ms: each wait returns at or after
        // its due instant (a timerfd never fires early), and the schedule ends where it should.
        let p = Pacer::new(Pacing::Exact, Some(2000.0), Duration::from_millis(1)).unwrap();
        for j in 0..20u64 {
            p.wait(j).await.unwrap();
            let due = p.start + Duration::from_millis(1) + Duration::from_micros(500 * j);
            assert!(Instant::now() >= due, "message {j} released early");
            assert!(p.due_now(j));
        }
        assert!(!p.due_now(10_000));
    }

    #[tokio::test]
    async fn unpaced_never_waits() {
        let p = Pacer::new(Pacing::Exact, None, Duration::ZERO).unwrap();
        assert!(p.due_now(u64::MAX));
        p.wait(1_000_000).await.unwrap();
    }
}
