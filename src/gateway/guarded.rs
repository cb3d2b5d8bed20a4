//! The stream every accepted connection is served through, HTTP and WebSocket alike: it holds the
//! connection's place in the counts ([`Permit`]), and it fails a write that makes no progress for
//! `write_timeout_secs`, so that a peer that stops reading cannot hold a socket, a task and a
//! connection slot for ever.
//!
//! The deadline costs nothing while writes go through: a timer exists only from the moment a
//! write is pending until it makes progress again.
//!
//! A connection dropped while a write is pending (the deadline passed, or a due close's grace
//! ran out) is reset, not closed: otherwise the kernel would keep its unsent bytes, up to a whole
//! send buffer, in a socket that lingers for minutes after the node let go of it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::limits::Permit;

/// A stream that can be told to reset when it is dropped, rather than linger with unsent bytes.
pub trait Resettable {
    /// Makes the coming drop reset the connection (best effort).
    fn reset_on_drop(&self);
}

impl Resettable for TcpStream {
    fn reset_on_drop(&self) {
        // SO_LINGER 0: close sends RST and frees the socket's buffers at once (never blocks).
        let _ = self.set_zero_linger();
    }
}

/// A stream with a write-progress deadline and a connection permit.
pub struct Guarded<S: Resettable> {
    io: S,
    /// Armed while a write is pending; dropped as soon as one makes progress.
    stall: Option<Pin<Box<Sleep>>>,
    /// The connection's place in the node's and its address's counts.
    permit: Permit,
}

impl<S: Resettable> Drop for Guarded<S> {
    fn drop(&mut self) {
        // A write still pending: the peer is not taking what the node has for it.
        if self.stall.is_some() {
            self.io.reset_on_drop();
        }
    }
}

impl<S: Resettable> Guarded<S> {
    /// Wraps `io`, counted by `permit`.
    pub fn new(io: S, permit: Permit) -> Guarded<S> {
        Guarded {
            io,
            stall: None,
            permit,
        }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// On a pending write: the error once the deadline has passed, else still pending.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.permit.limits().write_timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stall.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "write made no progress within write_timeout_secs",
        )))
    }

    /// Passes a write's outcome on, disarming the deadline on progress.
    fn progress<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.stalled(cx),
            done => {
                self.stall = None;
                done
            }
        }
    }
}

impl<S: AsyncRead + Resettable + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Resettable + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.progress(cx, r)
    }
}
