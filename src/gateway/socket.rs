//! A plain TCP connection's socket, shared: the connection's task reads and writes it through
//! [`Socket`] (an `AsyncRead + AsyncWrite` like `TcpStream` itself), and the fan-out may write a
//! frame straight to it through a [`Weak`] reference while the connection's writer is idle
//! ([`crate::hub::Outbox`]), which saves a task wake-up and a poll per delivery.
//!
//! The task's handle is the only strong one: the socket closes when the connection drops it,
//! as before. The fan-out's weak handle only lends the socket for the one write it makes
//! (it cannot keep a closed connection's socket open). Reads and writes go through tokio's
//! readiness (`poll_*_ready`, then `try_*`), exactly as `TcpStream`'s own poll functions do.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::guarded::Resettable;
use crate::hub::outbox::Wire;

/// The most one read takes (and zeroes first).
const MAX_READ: usize = 64 << 10;

/// An accepted TCP connection, shareable with the fan-out (see the module's note).
pub struct Socket {
    /// The socket. Strong only here: dropping the `Socket` closes it.
    io: Arc<TcpStream>,
}

impl Socket {
    /// Takes over `stream`.
    pub fn new(stream: TcpStream) -> Socket {
        Socket {
            io: Arc::new(stream),
        }
    }

    /// A handle that writes to this socket while it is open ([`Wire::send_now`]), and does
    /// not keep it open.
    pub fn downgrade(&self) -> Weak<dyn Wire> {
        let weak: Weak<TcpStream> = Arc::downgrade(&self.io);
        weak
    }

    /// The stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.io
    }
}

impl Wire for TcpStream {
    /// A plain `send` on the non-blocking socket, past tokio's readiness (one cache line less
    /// per delivery): when it would block, the connection's own write finds out and waits for
    /// readiness as usual.
    fn send_now(&self, frame: &[u8]) -> io::Result<usize> {
        socket2::SockRef::from(self).send(frame)
    }
}

impl Resettable for Socket {
    fn reset_on_drop(&self) {
        self.io.reset_on_drop();
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            // `try_read` wants initialised memory: what it reads into is zeroed first, at most
            // `MAX_READ` of it (a WebSocket connection reads a 4 KiB chunk; hyper may offer a
            // buffer of hundreds of KiB, and zeroing all of it on every read would cost more
            // than the read).
            let n = buf.remaining().min(MAX_READ);
            match self.io.try_read(buf.initialize_unfilled_to(n)) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale and is now cleared: wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // The write first: a socket known not to be writable answers WouldBlock without a
        // system call, and only then is the task registered for readiness.
        loop {
            match self.io.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_write_ready(cx))?;
                }
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // The write first: a socket known not to be writable answers WouldBlock without a
        // system call, and only then is the task registered for readiness.
        loop {
            match self.io.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_write_ready(cx))?;
                }
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What `TcpStream::poll_shutdown` does: end the write side now (never blocks).
        Poll::Ready(socket2::SockRef::from(&*self.io).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (Socket, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (Socket::new(server), client)
    }

    #[tokio::test]
    async fn reads_writes_and_shuts_down_like_the_stream_it_wraps() {
        let (mut s, mut c) = pair().await;
        c.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        s.write_all(b"world").await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world");
    }

    #[tokio::test]
    async fn the_weak_handle_writes_while_the_socket_is_open_and_does_not_keep_it_open() {
        let (s, mut c) = pair().await;
        let weak = s.downgrade();
        s.get_ref().writable().await.unwrap();
        let n = weak.upgrade().unwrap().send_now(b"direct").unwrap();
        assert_eq!(n, 6);
        drop(s);
        assert!(weak.upgrade().is_none());
        // The peer sees the bytes, then the close: the weak handle held nothing open.
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"direct");
    }
}
