//! The frame rate limit of one WebSocket connection: a token bucket over the client's data
//! frames, and the rule that cuts off a client that keeps sending past it.
//!
//! A refused frame costs the node an `error` frame, so refusals are bounded too: a client refused
//! more than `burst` times within one second is closed with 4029. Counting refusals per second,
//! not in a row, matters: a client flooding at ten times the rate gets a token now and then, and
//! a count in a row would start again at each one, so it would be answered for ever. A client a
//! little over the rate (refused less than `burst` times a second) is answered, never closed.
//!
//! Pure: no I/O, time passed in.

use std::time::{Duration, Instant};

/// How long the refusals are counted over.
const WINDOW: Duration = Duration::from_secs(1);

/// A token bucket over one connection's frames.
///
/// Every connection holds one, inside its task: kept small (rate and burst as `f32`, exact for
/// any whole number of frames up to 2^24).
pub(crate) struct RateLimiter {
    tokens: f64,
    rate: f32,
    burst: f32,
    last: Instant,
    /// Frames refused since `window` began; past `burst` the client is cut off.
    refused: u32,
    window: Instant,
}

impl RateLimiter {
    /// `rate` frames a second, bursts of `burst`, starting full.
    pub(crate) fn new(rate: u32, burst: u32) -> RateLimiter {
        let now = Instant::now();
        RateLimiter {
            tokens: f64::from(burst),
            rate: rate as f32,
            burst: burst as f32,
            last: now,
            refused: 0,
            window: now,
        }
    }

    /// Whether a frame arriving now may be processed.
    pub(crate) fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * f64::from(self.rate)).min(f64::from(self.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        if now.saturating_duration_since(self.window) >= WINDOW {
            self.window = now;
            self.refused = 0;
        }
        self.refused += 1;
        false
    }

    /// True once more than `burst` frames were refused within a second: close with 4029.
    pub(crate) fn cut_off(&self) -> bool {
        self.refused as f32 > self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `n` frames `every` apart from `start`; returns how many were allowed and whether the
    /// client was cut off at some point.
    fn send(l: &mut RateLimiter, start: Instant, every: Duration, n: u32) -> (u32, bool) {
        let (mut allowed, mut cut) = (0, false);
        for i in 0..n {
            if l.allow_at(start + every * i) {
                allowed += 1;
            }
            cut |= l.cut_off();
        }
        (allowed, cut)
    }

    #[test]
    fn a_burst_passes_whole_then_the_rate_holds() {
        let mut l = RateLimiter::new(100, 200);
        let t0 = l.last;
        let (allowed, cut) = send(&mut l, t0, Duration::ZERO, 200);
        assert_eq!((allowed, cut), (200, false));
        assert!(!l.allow_at(t0));
        assert!(
            l.allow_at(t0 + Duration::from_millis(10)),
            "one token per 10 ms"
        );
    }

    #[test]
    fn a_flood_at_ten_times_the_rate_is_cut_off_within_seconds_though_it_gets_tokens() {
        let mut l = RateLimiter::new(100, 200);
        let t0 = l.last;
        // 1,000 frames a second for 3 s: a token every 10 ms lets one in now and then.
        let (allowed, cut) = send(&mut l, t0, Duration::from_millis(1), 3000);
        assert!(allowed > 200, "tokens keep coming: {allowed}");
        assert!(cut, "refused about 900 times a second: cut off");
    }

    #[test]
    fn a_client_a_little_over_the_rate_is_answered_and_never_cut_off() {
        let mut l = RateLimiter::new(100, 200);
        let t0 = l.last;
        // 150 frames a second for 20 s: about 50 refusals a second.
        let (allowed, cut) = send(&mut l, t0, Duration::from_micros(6667), 3000);
        assert!(allowed < 3000, "some were refused");
        assert!(!cut);
    }
}
