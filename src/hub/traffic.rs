//! A connection's traffic counts: socket writes, bytes written and bytes read, kept by the
//! connection itself rather than in node-wide atomics that every connection's task would hit on
//! every write (one cache line bouncing between the worker threads on every delivery).
//!
//! Each count has one writer at a time, so counting is a relaxed load and store (no locked
//! instruction): the connection's task, or, while that task's writer is idle, a fan-out writing
//! to the socket directly under the outbox's lock ([`super::Outbox::send`]); the lock orders the
//! two. A reader (the metrics render) sums the open connections' counts with
//! the counts of those already closed, which [`Traffic::retire`] folds in when a connection ends.
//! A render that runs while a connection is being retired may miss its counts for that one
//! render; the node's counters only move forward (`absolute` keeps the maximum), so it shows
//! them at the next.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counts of one connection, or the sum over closed ones.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Write calls that moved bytes to the socket (each may carry many frames).
    writes: AtomicU64,
    /// Bytes written to the socket.
    bytes_out: AtomicU64,
    /// Bytes read from the socket.
    bytes_in: AtomicU64,
}

/// A reading of [`Traffic`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Write calls.
    pub writes: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
}

/// Adds `n` to a count only its owner writes: a plain load and store, no locked instruction.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl Traffic {
    /// One write of `n` bytes: by the connection's task, or by a fan-out while that task's
    /// writer is idle (never both at once).
    pub(crate) fn wrote(&self, n: usize) {
        bump(&self.writes, 1);
        bump(&self.bytes_out, n as u64);
    }

    /// A read of `n` bytes. Only the connection's own task calls it.
    pub(crate) fn read(&self, n: usize) {
        bump(&self.bytes_in, n as u64);
    }

    /// The counts now.
    pub fn counts(&self) -> Counts {
        Counts {
            writes: self.writes.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
        }
    }

    /// Folds a closed connection's counts into this sum (which several threads may update).
    pub(crate) fn retire(&self, c: Counts) {
        self.writes.fetch_add(c.writes, Relaxed);
        self.bytes_out.fetch_add(c.bytes_out, Relaxed);
        self.bytes_in.fetch_add(c.bytes_in, Relaxed);
    }
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.writes += o.writes;
        self.bytes_out += o.bytes_out;
        self.bytes_in += o.bytes_in;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_counts_its_writes_and_reads_and_a_sum_takes_them_when_it_closes() {
        let t = Traffic::default();
        t.wrote(100);
        t.wrote(20);
        t.read(7);
        let c = t.counts();
        assert_eq!(
            c,
            Counts {
                writes: 2,
                bytes_out: 120,
                bytes_in: 7
            }
        );
        let closed = Traffic::default();
        closed.retire(c);
        closed.retire(c);
        let mut total = closed.counts();
        total += Counts {
            writes: 1,
            bytes_out: 1,
            bytes_in: 1,
        };
        assert_eq!(
            total,
            Counts {
                writes: 5,
                bytes_out: 241,
                bytes_in: 15
            }
        );
    }
}
