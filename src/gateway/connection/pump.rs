//! The socket side of one connection: one poll function over any `AsyncRead + AsyncWrite`
//! (plain TCP or TLS) that reads into a stack buffer, writes what the outbox holds with one
//! gathering write per batch (the shared frames themselves: no copy of a payload per
//! subscriber), and reports a close that is due even while a write is pending. It counts per
//! read and per write (never per frame) into the connection's own counts
//! ([`crate::hub::traffic`]), and reports a written batch that held the hub's timed frame to its
//! probe ([`crate::hub::probe`]).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::READ_CHUNK;
use crate::hub::probe::Mark;
use crate::hub::{Hub, Subscriber, Take};
use crate::protocol::CloseCode;
use crate::protocol::websocket::close_frame;

/// Most frames handed to one gathering write: Linux's `IOV_MAX`. A saturated connection's batch
/// holds hundreds of small frames, and a smaller cap would split it into more system calls.
const MAX_SLICES: usize = 1024;
/// Batches up to this many frames gather on the stack; longer ones in a vector made for the
/// call (its cost spread over that many frames).
const STACK_SLICES: usize = 16;

/// While it lives, the fan-out may write to the connection's plain TCP socket itself (its
/// descriptor, given to the outbox: [`crate::hub::Outbox::send`]). It is the pump's first field,
/// so it drops before the stream: it withdraws the descriptor under the outbox's lock, and no
/// write can then reach a closed socket, or another given the same number.
pub(super) struct DirectGuard(Arc<Subscriber>);

impl DirectGuard {
    /// Gives `fd` to `sub`'s outbox until the guard drops.
    pub(super) fn allow(sub: &Arc<Subscriber>, fd: RawFd) -> DirectGuard {
        sub.outbox.write_directly_to(fd);
        DirectGuard(sub.clone())
    }
}

impl Drop for DirectGuard {
    fn drop(&mut self) {
        self.0.outbox.stop_writing_directly();
    }
}

/// The socket and its buffers.
pub(super) struct Pump<S> {
    /// First: dropped before `stream` (see [`DirectGuard`]); held only for its drop.
    #[allow(dead_code)]
    pub(super) direct: Option<DirectGuard>,
    pub(super) stream: S,
    /// Bytes read and not yet parsed; empty (unallocated) between messages.
    pub(super) rbuf: Vec<u8>,
    /// The batch being written: the frames the outbox held, moved here as they are (shared
    /// with every other subscriber, never copied), oldest first: the outbox's queue itself,
    /// swapped out on every take and freed once written (unallocated between batches).
    pub(super) batch: VecDeque<Bytes>,
    /// How much of the batch's first frame is written (a frame is at most `max_message_bytes`
    /// plus its header: `u32`, as every connection holds these).
    pub(super) at: u32,
    /// Bytes of the batch written and not yet reported to the outbox (once flushed); a batch
    /// is at most the outbox's bound, which the config caps below 4 GiB.
    pub(super) done: u32,
    /// False once the peer's side ended or cannot be trusted (after a protocol error).
    pub(super) reading: bool,
    /// True once a close asked for while a write was pending has been reported
    /// ([`Io::Closing`]), so that it is reported once.
    pub(super) close_seen: bool,
    /// The batch being written holds the probe's timed frame: reported once it is written.
    pub(super) timed: Option<Mark>,
}

/// What [`Pump::poll_io`] reports.
pub(super) enum Io {
    /// New bytes in `rbuf`.
    Input,
    /// A batch was written completely (reported only when asked for: a replay feeds its next
    /// page as the outbox drains).
    Wrote,
    /// The outbox is empty and the connection must close with this code.
    Close(CloseCode),
    /// A close was asked for while a write is pending: the close deadline starts now, even if
    /// the peer never reads again.
    Closing,
    /// The peer ended its side, or the socket failed: nothing more can be done.
    Gone,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Pump<S> {
    /// The socket around `stream`, with `rbuf` already read, nothing to write; `direct` while
    /// the fan-out may write to it too.
    pub(super) fn new(stream: S, rbuf: Vec<u8>, direct: Option<DirectGuard>) -> Pump<S> {
        Pump {
            direct,
            stream,
            rbuf,
            batch: VecDeque::new(),
            at: 0,
            done: 0,
            reading: true,
            close_seen: false,
            timed: None,
        }
    }

    /// One write of what is left of the batch: a gathering write of up to [`MAX_SLICES`]
    /// frames where the stream can gather (TCP, and TLS, which seals them into records
    /// together), else the first frame alone.
    fn poll_write_batch(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let first = &self.batch[0][self.at as usize..];
        if self.batch.len() == 1 || !self.stream.is_write_vectored() {
            return Pin::new(&mut self.stream).poll_write(cx, first);
        }
        let rest = self.batch.iter().skip(1).map(|f| IoSlice::new(f));
        let n = self.batch.len().min(MAX_SLICES);
        let stream = Pin::new(&mut self.stream);
        if n <= STACK_SLICES {
            let mut slices = [IoSlice::new(&[]); STACK_SLICES];
            slices[0] = IoSlice::new(first);
            for (slot, s) in slices[1..n].iter_mut().zip(rest) {
                *slot = s;
            }
            stream.poll_write_vectored(cx, &slices[..n])
        } else {
            let mut slices = Vec::with_capacity(n);
            slices.push(IoSlice::new(first));
            slices.extend(rest.take(n - 1));
            stream.poll_write_vectored(cx, &slices)
        }
    }

    /// Drops from the batch the `n` bytes just written.
    fn advance(&mut self, mut n: usize) {
        // Within u32: a batch is at most the outbox's bound (1 GiB at most).
        self.done += n as u32;
        while let Some(f) = self.batch.front() {
            let left = f.len() - self.at as usize;
            if n < left {
                self.at += n as u32;
                return;
            }
            n -= left;
            self.at = 0;
            self.batch.pop_front();
        }
    }

    /// Moves bytes until something needs the connection's loop (`wrote`: a completed batch
    /// does; otherwise writing goes on to the next batch, or parks, in this same poll).
    pub(super) fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        sub: &Subscriber,
        hub: &Hub,
        wrote: bool,
    ) -> Poll<Io> {
        // Write side: finish the batch in hand, or take the next one.
        loop {
            if !self.batch.is_empty() {
                match self.poll_write_batch(cx) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Io::Gone),
                    Poll::Ready(Ok(n)) => {
                        sub.traffic.wrote(n);
                        self.advance(n);
                    }
                    Poll::Pending => {
                        // The stream's own deadline ends a write that makes no progress; a
                        // close must not wait for it.
                        if !self.close_seen && sub.outbox.poll_closing(cx).is_ready() {
                            self.close_seen = true;
                            return Poll::Ready(Io::Closing);
                        }
                        break;
                    }
                }
            } else if self.done > 0 {
                match Pin::new(&mut self.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        sub.outbox.written(self.done as usize);
                        // Freed: an idle connection holds no queue (see `Outbox::written`).
                        self.batch = VecDeque::new();
                        self.done = 0;
                        if let Some(mark) = self.timed.take() {
                            hub.probe().written(mark);
                        }
                        if wrote {
                            return Poll::Ready(Io::Wrote);
                        }
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Io::Gone),
                    Poll::Pending => {
                        if !self.close_seen && sub.outbox.poll_closing(cx).is_ready() {
                            self.close_seen = true;
                            return Poll::Ready(Io::Closing);
                        }
                        break;
                    }
                }
            } else {
                match sub.outbox.poll_take(cx, &mut self.batch, hub.probe()) {
                    Poll::Ready(Take::Frames(timed)) => self.timed = timed,
                    Poll::Ready(Take::Close(code)) => return Poll::Ready(Io::Close(code)),
                    Poll::Pending => break,
                }
            }
        }
        // Read side, through a stack buffer so that an idle connection holds none.
        if self.reading {
            // Uninitialised: zeroing 4 KiB on every poll would cost more than the read.
            let mut chunk = [const { MaybeUninit::<u8>::uninit() }; READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut self.stream).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Io::Gone),
                Poll::Ready(Ok(())) => {
                    sub.traffic.read(rb.filled().len());
                    self.rbuf.extend_from_slice(rb.filled());
                    return Poll::Ready(Io::Input);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Io::Gone),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Sends the close frame after what is left of the batch, then waits for the peer to close.
    /// From here on only this task writes to the socket: the close frame must be the last.
    pub(super) async fn close(&mut self, sub: &Subscriber, code: u16, reason: &str) {
        sub.outbox.stop_writing_directly();
        let mut out = Vec::new();
        for (i, f) in self.batch.drain(..).enumerate() {
            out.extend_from_slice(if i == 0 { &f[self.at as usize..] } else { &f });
        }
        self.at = 0;
        out.extend_from_slice(&close_frame(code, reason));
        if self.stream.write_all(&out).await.is_err() || self.stream.flush().await.is_err() {
            return;
        }
        let _ = self.stream.shutdown().await;
        // Drain until the peer closes too, so the close frame is not lost to a reset.
        let mut sink = vec![0u8; 512];
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut self.stream, &mut sink).await {
            if n == 0 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::protocol::Codec;
    use std::future::poll_fn;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair of real loopback sockets, the writer's send buffer made small so that
    /// gathering writes end part-way through a frame.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_send_buffer_size(4096).unwrap();
        let (w, r) = tokio::join!(sock.connect(l.local_addr().unwrap()), l.accept());
        (w.unwrap(), r.unwrap().0)
    }

    /// Polls the pump until everything queued is written (it parks on the outbox then: nothing
    /// else may come out of it).
    async fn write_out<S: AsyncRead + AsyncWrite + Unpin>(
        pump: &mut Pump<S>,
        sub: &Subscriber,
        hub: &Hub,
    ) {
        poll_fn(|cx| {
            let io = pump.poll_io(cx, sub, hub, false);
            if sub.outbox.pending_bytes() == 0 {
                return Poll::Ready(());
            }
            assert!(io.is_pending(), "only writes were expected");
            Poll::Pending
        })
        .await
    }

    #[tokio::test]
    async fn queued_frames_reach_the_socket_whole_and_in_order_through_partial_gathering_writes() {
        let hub = Hub::new(1 << 22);
        let sub = hub.connect(Codec::Json);
        let (w, mut r) = pair().await;
        // Frames of many sizes, each with its own bytes, more than one send buffer's worth.
        let mut expected = Vec::new();
        for i in 0..300usize {
            let f: Vec<u8> = (0..(1 + i * 37 % 2900)).map(|j| (i + j) as u8).collect();
            expected.extend_from_slice(&f);
            assert!(sub.push(Bytes::from(f)));
        }
        let total = expected.len();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; total];
            r.read_exact(&mut got).await.unwrap();
            got
        });
        let mut pump = Pump::new(w, Vec::new(), None);
        pump.reading = false;
        write_out(&mut pump, &sub, &hub).await;
        assert_eq!(reader.await.unwrap(), expected);
        let c = sub.traffic.counts();
        assert_eq!(c.bytes_out, total as u64);
        // Gathered: far fewer writes than frames (the small send buffer forces several).
        assert!(c.writes > 1 && c.writes < 300, "{c:?}");
        // Written out, neither the writer nor the outbox keeps queue memory.
        assert!(pump.batch.is_empty() && pump.batch.capacity() == 0);
        assert_eq!(sub.outbox.queue_capacity(), 0);
        assert_eq!(hub.traffic().bytes_out, total as u64);
    }

    /// A real stream seen through a writer that cannot gather: the trait's default
    /// `poll_write_vectored` writes the first slice only, as a stream without it would.
    struct NoGather<S>(S);

    impl<S: AsyncRead + Unpin> AsyncRead for NoGather<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for NoGather<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_stream_that_cannot_gather_gets_the_frames_one_write_each() {
        let hub = Hub::new(1 << 20);
        let sub = hub.connect(Codec::Json);
        // An in-memory pipe with room for 5 bytes at a time: writes end inside frames too.
        let (w, mut r) = tokio::io::duplex(5);
        for f in [&b"abc"[..], b"defgh", b"ij"] {
            assert!(sub.push(Bytes::copy_from_slice(f)));
        }
        let reader = tokio::spawn(async move {
            let mut got = [0u8; 10];
            r.read_exact(&mut got).await.unwrap();
            got
        });
        let mut pump = Pump::new(NoGather(w), Vec::new(), None);
        pump.reading = false;
        write_out(&mut pump, &sub, &hub).await;
        assert_eq!(&reader.await.unwrap(), b"abcdefghij");
        let c = sub.traffic.counts();
        assert_eq!(c.bytes_out, 10);
        assert!(c.writes >= 3, "one write per frame at least: {c:?}");
    }

    /// The descriptor the fan-out writes to is withdrawn as the pump drops, before its stream
    /// closes: a frame sent after that is queued, never written to a closed socket (or to
    /// another that the kernel gave the same number).
    #[tokio::test]
    async fn dropping_the_pump_withdraws_the_socket_from_the_fan_out_before_it_closes() {
        use std::os::fd::AsRawFd;
        let hub = Hub::new(1 << 20);
        let sub = hub.connect(Codec::Json);
        let (server, mut peer) = pair().await;
        server.writable().await.unwrap();
        let fd = server.as_raw_fd();
        let pump = Pump::new(server, Vec::new(), Some(DirectGuard::allow(&sub, fd)));
        // The writer parked, as after its first take: the fan-out writes directly.
        let mut batch = VecDeque::new();
        let parked = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(sub.outbox.poll_take(cx, &mut batch, hub.probe()))
        })
        .await;
        assert!(parked.is_pending());
        assert_eq!(
            sub.send(Bytes::from_static(b"one")),
            crate::hub::Sent::Written
        );
        drop(pump);
        assert_eq!(
            sub.send(Bytes::from_static(b"two")),
            crate::hub::Sent::Queued
        );
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut peer, &mut got)
            .await
            .unwrap();
        assert_eq!(
            got, b"one",
            "closed after the direct write, and nothing after"
        );
    }
}
