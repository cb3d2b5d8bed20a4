//! The socket side of one connection: one poll function over any `AsyncRead + AsyncWrite`
//! (plain TCP or TLS) that reads into a stack buffer, gathers what the outbox holds into one
//! write per batch, and reports a close that is due even while a write is pending. It counts
//! per read and per write batch (never per frame), and reports a written batch that held the
//! hub's timed frame to its probe ([`crate::hub::probe`]).

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{MAX_BATCH, READ_CHUNK};
use crate::hub::probe::Mark;
use crate::hub::{Hub, Subscriber, Take};
use crate::protocol::CloseCode;
use crate::protocol::websocket::close_frame;

/// The socket and its buffers.
pub(super) struct Pump<S> {
    pub(super) stream: S,
    /// Bytes read and not yet parsed; empty (unallocated) between messages.
    pub(super) rbuf: Vec<u8>,
    /// The batch being written; empty (unallocated) when idle.
    pub(super) wbuf: Vec<u8>,
    /// How much of `wbuf` is written.
    pub(super) wpos: usize,
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
    /// A batch was written completely.
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
    pub(super) fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        sub: &Subscriber,
        hub: &Hub,
    ) -> Poll<Io> {
        // Write side: finish the batch in hand, or take the next one.
        loop {
            if self.wpos < self.wbuf.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf[self.wpos..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Io::Gone),
                    Poll::Ready(Ok(n)) => self.wpos += n,
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
            } else if !self.wbuf.is_empty() {
                match Pin::new(&mut self.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        sub.outbox.written(self.wbuf.len());
                        let m = hub.metrics();
                        m.writes.increment(1);
                        m.bytes_out.increment(self.wbuf.len() as u64);
                        if let Some(mark) = self.timed.take() {
                            hub.probe().written(mark);
                        }
                        self.wbuf = Vec::new();
                        self.wpos = 0;
                        return Poll::Ready(Io::Wrote);
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
                match sub
                    .outbox
                    .poll_take(cx, &mut self.wbuf, MAX_BATCH, hub.probe())
                {
                    Poll::Ready(Take::Frames(_, timed)) => self.timed = timed,
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
                    hub.metrics().bytes_in.increment(rb.filled().len() as u64);
                    self.rbuf.extend_from_slice(rb.filled());
                    return Poll::Ready(Io::Input);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Io::Gone),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Sends the close frame after what is half written, then waits for the peer to close.
    pub(super) async fn close(&mut self, code: u16, reason: &str) {
        let mut out = self.wbuf.split_off(self.wpos.min(self.wbuf.len()));
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
