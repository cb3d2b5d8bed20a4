//! A connection's outbox: the one bounded queue between fan-out and the socket.
//!
//! Publishers push complete, shared WebSocket frames (`Bytes`, encoded once for all
//! subscribers); the connection's task takes everything queued at once (the frames themselves,
//! not copies) and writes it with one gathering write. The bound is in bytes and covers frames
//! queued and frames taken but not yet written to the kernel. Policy when it fills: the
//! connection is closed with 4008 (slow consumer) and its queue dropped at once; the client
//! reconnects with `since` and loses nothing. Other closes are graceful: what is already queued
//! (replies, messages) is still written, then the close frame.
//!
//! A fan-out that finds the connection's writer idle (nothing queued, nothing being written, its
//! task parked on this outbox) writes the frame to a plain TCP connection's socket itself, under
//! this lock ([`Outbox::send`]): no wake-up, no poll, no queue. Whatever the socket does not
//! take at once is queued as usual, so the order of frames is the order of pushes either way.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;

use super::Traffic;
use super::probe::{Mark, Probe};
use crate::protocol::{CloseCode, Codec};

/// The hub's handle to one connection.
pub struct Subscriber {
    /// Connection id, unique on this node.
    pub id: u64,
    /// The codec its frames are encoded with.
    pub codec: Codec,
    /// It negotiated permessage-deflate: broadcasts reach it compressed (once per broadcast).
    pub deflate: bool,
    /// Frames waiting to be written.
    pub outbox: Outbox,
    /// Heartbeat clock reading ([`crate::hub::heartbeat`]) when the peer was last heard from.
    pub last_seen: AtomicU32,
    /// Its place in its user's list of connections ([`crate::hub::Hub::attach_user`]), so that
    /// leaving it costs the same whatever the user's number of connections. Changed only under
    /// that list's lock.
    pub(crate) user_slot: AtomicU32,
    /// When the connection's identity expires, as a close deadline in unix seconds
    /// ([`crate::hub::expiry`]; `u64::MAX`: never). Changed only through the hub's expiry index.
    pub(crate) expires: AtomicU64,
    /// Its writes and bytes, counted by its own task ([`crate::hub::traffic`]).
    pub traffic: super::Traffic,
}

/// The queue itself. Lock held only to push or pop, never across `.await`.
pub struct Outbox {
    /// Queue state; a plain mutex because every critical section is a few pointer moves.
    inner: Mutex<Inner>,
    /// Mirrors `Inner::close.is_some()`, so the connection task can check it without the lock.
    closing: AtomicBool,
    limit: usize,
}

struct Inner {
    queue: VecDeque<Bytes>,
    /// Bytes queued plus bytes taken by the writer and not yet confirmed written.
    bytes: usize,
    /// Set once: why the connection must close. Pushes after that are dropped.
    close: Option<CloseCode>,
    /// The connection task, parked until something is queued.
    waker: Option<Waker>,
    /// The connection task while a write of its is pending: woken only by a close, which must
    /// take effect even when the peer never reads.
    close_waker: Option<Waker>,
    /// A plain TCP connection's socket descriptor, for [`Outbox::send`] to write to while the
    /// writer is idle; -1 for none (TLS, and from the moment the connection withdraws it: before
    /// its close frame, and before its socket can close).
    fd: RawFd,
}

/// What [`Outbox::send`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Not taken: the connection is closing, or this frame overflowed its bound and now it is.
    Dropped,
    /// Queued for the connection's writer, which was woken.
    Queued,
    /// Written to the socket here: whole, or its start with the rest queued.
    Written,
}

/// What the writer got from [`Outbox::poll_take`].
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Frames were moved into the batch; report their size with [`Outbox::written`] once
    /// written, and the mark (when the batch holds the probe's timed frame) to
    /// [`Probe::written`].
    Frames(Option<Mark>),
    /// The connection must close with this code.
    Close(CloseCode),
}

impl Outbox {
    /// An empty outbox holding at most `limit` bytes.
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                bytes: 0,
                close: None,
                waker: None,
                close_waker: None,
                fd: -1,
            }),
            closing: AtomicBool::new(false),
            limit,
        }
    }

    /// Queues one frame. Returns false when the connection is closing (the frame is dropped)
    /// or this push overflowed the bound (the connection is now closing with 4008).
    pub fn push(&self, frame: Bytes) -> bool {
        self.put(frame, None) != Sent::Dropped
    }

    /// Delivers one frame of a fan-out: written to the socket right here when the connection's
    /// writer is idle (nothing queued or being written, its task parked on this outbox) and
    /// the connection is plain TCP, else queued as by [`Outbox::push`]. What the socket takes
    /// is counted in `traffic` (whose counts the connection's task keeps otherwise: the two
    /// never write at once, the task being idle). When the socket takes only part of the frame,
    /// the rest (a slice of the same bytes) is queued; when it takes none, the whole frame is.
    pub fn send(&self, frame: Bytes, traffic: &Traffic) -> Sent {
        self.put(frame, Some(traffic))
    }

    fn put(&self, mut frame: Bytes, direct: Option<&Traffic>) -> Sent {
        let waker;
        let mut sent = Sent::Queued;
        {
            let mut g = self.inner.lock();
            if g.close.is_some() {
                return Sent::Dropped;
            }
            if g.bytes + frame.len() > self.limit {
                g.close = Some(CloseCode::SlowConsumer);
                self.closing.store(true, Ordering::Relaxed);
                g.queue = VecDeque::new();
                waker = g.waker.take();
                let close_waker = g.close_waker.take();
                drop(g);
                if let Some(w) = close_waker {
                    w.wake();
                }
                if let Some(w) = waker {
                    w.wake();
                }
                return Sent::Dropped;
            }
            // The writer is idle exactly when its task registered to be woken: it does so only
            // with nothing queued and its batch written, and any queued push takes the waker.
            if let Some(traffic) = direct
                && g.queue.is_empty()
                && g.waker.is_some()
                && g.fd >= 0
            {
                match send_now(g.fd, &frame) {
                    Ok(n) if n == frame.len() => {
                        traffic.wrote(n);
                        return Sent::Written;
                    }
                    Ok(n) => {
                        traffic.wrote(n);
                        frame = frame.slice(n..);
                        sent = Sent::Written;
                    }
                    // Not writable now, or failing: the writer takes it from the queue (and
                    // learns of the failure itself).
                    Err(_) => {}
                }
            }
            g.bytes += frame.len();
            g.queue.push_back(frame);
            waker = g.waker.take();
        }
        if let Some(w) = waker {
            w.wake();
        }
        sent
    }

    /// Lets [`Outbox::send`] write to the socket `fd` while the connection's writer is idle.
    /// The caller must withdraw it ([`Outbox::stop_writing_directly`]) before the socket can
    /// close (`gateway::connection`'s pump does, as it drops).
    pub fn write_directly_to(&self, fd: RawFd) {
        self.inner.lock().fd = fd;
    }

    /// No more writes to the socket but the connection's own: before its close frame (which
    /// must be the last frame on the wire), and before its socket closes. Once this returns, no
    /// direct write is under way (they are made under the same lock) and none will be.
    pub fn stop_writing_directly(&self) {
        self.inner.lock().fd = -1;
    }

    /// Asks the connection to close with `code` (the first reason wins). Frames queued so far are
    /// still written, unless the peer is not reading (4008, 4000): then they are dropped.
    pub fn close(&self, code: CloseCode) {
        let (waker, close_waker) = {
            let mut g = self.inner.lock();
            if g.close.is_some() {
                return;
            }
            g.close = Some(code);
            self.closing.store(true, Ordering::Relaxed);
            if matches!(code, CloseCode::SlowConsumer | CloseCode::HeartbeatTimeout) {
                g.queue = VecDeque::new();
            }
            (g.waker.take(), g.close_waker.take())
        };
        for w in [waker, close_waker].into_iter().flatten() {
            w.wake();
        }
    }

    /// Ready once the connection has been asked to close; otherwise the task is woken when it
    /// is (and not by pushes). For a writer whose write is pending.
    pub fn poll_closing(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_closing() {
            return Poll::Ready(());
        }
        let mut g = self.inner.lock();
        if g.close.is_some() {
            return Poll::Ready(());
        }
        match &g.close_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => g.close_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// True once the connection has been asked to close.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Why the connection must close, once it was asked to.
    pub fn close_code(&self) -> Option<u16> {
        self.inner.lock().close.map(|c| c.code())
    }

    /// Bytes queued or taken and not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// Hands every queued frame to the writer: `batch` (which must be empty) and the queue are
    /// swapped, so the frames move as they are (shared, never copied) and the queue's memory
    /// goes with them. Once the queue is empty
    /// and the connection is closing, reports the close reason; parks the task when there is
    /// nothing. While `probe` times a fan-out (one relaxed load per batch), the frames taken are
    /// compared with its timed frame.
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        batch: &mut VecDeque<Bytes>,
        probe: &Probe,
    ) -> Poll<Take> {
        debug_assert!(batch.is_empty());
        let mut g = self.inner.lock();
        if g.queue.is_empty() {
            if let Some(code) = g.close {
                return Poll::Ready(Take::Close(code));
            }
            match &g.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => g.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        // Read under the queue's lock: a timed frame queued here was noted before it was pushed.
        let armed = probe.armed();
        std::mem::swap(&mut g.queue, batch);
        drop(g);
        let mut mark = None;
        if armed != 0 {
            let timed = probe.timed_frames();
            if batch.iter().any(|f| timed.contains(&(f.as_ptr() as usize))) {
                mark = Probe::mark(armed);
            }
        }
        Poll::Ready(Take::Frames(mark))
    }

    /// Reports that `n` bytes taken earlier reached the kernel. The writer's emptied batch is
    /// freed rather than kept: an idle connection holds no queue memory at all (a queue exists
    /// only while something is queued or being written), at the price of one small allocation
    /// per batch when frames come one at a time.
    pub fn written(&self, n: usize) {
        let mut g = self.inner.lock();
        g.bytes = g.bytes.saturating_sub(n);
    }

    /// The queue's allocated slots (none when nothing is queued and the writer took the last).
    #[cfg(test)]
    pub(crate) fn queue_capacity(&self) -> usize {
        self.inner.lock().queue.capacity()
    }

    /// The frames queued, oldest first: the queued `Bytes` themselves (not copies), so tests
    /// can tell a shared encoding from an equal one.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> Vec<Bytes> {
        self.inner.lock().queue.iter().cloned().collect()
    }
}

/// One `send` of what the socket takes of `frame` now, without waiting (the socket is
/// non-blocking): past tokio's readiness, so that a delivery touches no more of the connection
/// than its outbox; when it would block, the connection's own write finds out and waits for
/// readiness as usual.
#[allow(unsafe_code)]
fn send_now(fd: RawFd, frame: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `fd` is open for the whole call: the connection gave it to the outbox and
    // withdraws it under the outbox's lock, which the caller holds, before its socket can close
    // (`Outbox::write_directly_to`). So it names that connection's socket, and no other.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).send(frame)
}

impl Subscriber {
    /// Queues a frame (see [`Outbox::push`]).
    pub fn push(&self, frame: Bytes) -> bool {
        self.outbox.push(frame)
    }

    /// Delivers a frame of a fan-out: straight to the socket when the writer is idle, else
    /// queued (see [`Outbox::send`]).
    pub fn send(&self, frame: Bytes) -> Sent {
        self.outbox.send(frame, &self.traffic)
    }

    /// The outbox's bound in bytes.
    pub fn outbox_limit(&self) -> usize {
        self.outbox.limit
    }

    /// Marks the peer as heard from now.
    pub fn seen(&self, now: u32) {
        if self.last_seen.load(Ordering::Relaxed) != now {
            self.last_seen.store(now, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn probe() -> Probe {
        Probe::new(crate::metrics::Metrics::new().unwrap())
    }

    #[tokio::test]
    async fn every_queued_frame_is_taken_at_once_as_the_same_shared_bytes() {
        let o = Outbox::new(1024);
        let (a, b) = (Bytes::from(b"ab".to_vec()), Bytes::from(b"cd".to_vec()));
        assert!(o.push(a.clone()));
        assert!(o.push(b.clone()));
        let mut batch = VecDeque::new();
        let t = poll_fn(|cx| o.poll_take(cx, &mut batch, &probe())).await;
        assert_eq!(t, Take::Frames(None));
        assert_eq!(batch.len(), 2);
        // Not copies: the very buffers that were queued.
        assert_eq!(batch[0].as_ptr(), a.as_ptr());
        assert_eq!(batch[1].as_ptr(), b.as_ptr());
        assert!(o.queued().is_empty());
    }

    #[tokio::test]
    async fn overflow_closes_with_slow_consumer_and_counts_unwritten_bytes() {
        let o = Outbox::new(10);
        assert!(o.push(Bytes::from_static(b"123456")));
        let mut batch = VecDeque::new();
        // Taken but not yet written still counts against the bound.
        poll_fn(|cx| o.poll_take(cx, &mut batch, &probe())).await;
        assert!(!o.push(Bytes::from_static(b"123456")));
        batch.clear();
        let t = poll_fn(|cx| o.poll_take(cx, &mut batch, &probe())).await;
        assert_eq!(t, Take::Close(CloseCode::SlowConsumer));
        assert!(!o.push(Bytes::from_static(b"1")));
    }

    #[tokio::test]
    async fn written_bytes_free_room() {
        let o = Outbox::new(10);
        assert!(o.push(Bytes::from_static(b"123456")));
        let mut batch = VecDeque::new();
        poll_fn(|cx| o.poll_take(cx, &mut batch, &probe())).await;
        batch.clear();
        o.written(6);
        assert!(o.push(Bytes::from_static(b"123456")));
    }
}
