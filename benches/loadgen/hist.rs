//! A compact HDR-style latency histogram: log-linear buckets with 128 sub-buckets per power of
//! two (relative error below 0.8%), values in nanoseconds, exact below 256 ns, clamped at
//! 2^36 ns (about 68.7 s), so it covers 1 µs to 60 s. Recording goes to one of a few shards
//! chosen per thread, in batches, so receiver threads rarely meet on a lock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
const TOP_BITS: u32 = 36;
const MAX_VALUE: u64 = (1 << TOP_BITS) - 1;
const BUCKETS: usize = ((TOP_BITS - SUB_BITS + 1) as u64 * SUB) as usize;

#[inline]
fn index(v: u64) -> usize {
    let v = v.min(MAX_VALUE);
    if v < 2 * SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    (shift as u64 * SUB + (v >> shift)) as usize
}

/// [low, high) of a bucket.
fn bounds(idx: usize) -> (u64, u64) {
    let idx = idx as u64;
    if idx < 2 * SUB {
        return (idx, idx + 1);
    }
    let shift = idx / SUB - 1;
    let mantissa = idx - shift * SUB;
    (mantissa << shift, (mantissa + 1) << shift)
}

/// A plain histogram (for merging and reporting).
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    sum: u128,
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
            sum: 0,
        }
    }

    #[inline]
    pub(crate) fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
        self.sum += v as u128;
    }

    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    pub(crate) fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// Value at quantile `q` in [0, 1]: the middle of the bucket holding that rank, capped at
    /// the recorded maximum.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bounds(i);
                return ((lo + hi - 1) / 2).min(self.max);
            }
        }
        self.max
    }
}

/// Concurrent recorder: a few shards, one picked per thread, each a plain histogram behind a
/// mutex that is taken once per batch (a receiver records one batch per socket read).
pub(crate) struct Recorder {
    shards: Vec<Mutex<Histogram>>,
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static MY_SHARD: usize = NEXT_SHARD.fetch_add(1, Relaxed);
}

impl Recorder {
    pub(crate) fn new(shards: usize) -> Self {
        Recorder {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Histogram::new()))
                .collect(),
        }
    }

    pub(crate) fn record_batch(&self, values: &[u64]) {
        if values.is_empty() {
            return;
        }
        let i = MY_SHARD.with(|s| *s) % self.shards.len();
        let mut h = self.shards[i].lock().unwrap_or_else(|p| p.into_inner());
        for &v in values {
            h.record(v);
        }
    }

    pub(crate) fn snapshot(&self) -> Histogram {
        let mut out = Histogram::new();
        for s in &self.shards {
            let h = s.lock().unwrap_or_else(|p| p.into_inner());
            for (o, c) in out.counts.iter_mut().zip(&h.counts) {
                *o += c;
            }
            out.total += h.total;
            out.max = out.max.max(h.max);
            out.sum += h.sum;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_monotonic_and_bounds_contain_value() {
        let mut last = 0;
        let mut v = 0u64;
        while v < MAX_VALUE {
            let i = index(v);
            assert!(i >= last);
            last = i;
            let (lo, hi) = bounds(i);
            assert!(lo <= v && v < hi, "v={v} i={i} lo={lo} hi={hi}");
            assert!((hi - lo) as f64 / lo.max(1) as f64 <= 1.0 / 128.0 + 1e-9 || hi - lo == 1);
            v = v + 1 + v / 97;
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, want) in [
            (0.5, 50_000_000f64),
            (0.99, 99_000_000.0),
            (0.999, 99_900_000.0),
        ] {
            let got = h.quantile(q) as f64;
            assert!(
                (got - want).abs() / want < 0.01,
                "q={q} got={got} want={want}"
            );
        }
        assert_eq!(h.max(), 100_000_000);
    }
}
