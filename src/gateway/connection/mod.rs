//! One task per WebSocket connection: it reads the client's frames, answers its requests, and
//! writes whatever the outbox holds with one gathering write per batch.
//!
//! The socket side is one poll function ([`Pump::poll_io`]) over any `AsyncRead + AsyncWrite`
//! (plain TCP or TLS), so the task holds no per-event futures and an idle connection holds no
//! read or write buffer: reads go through a stack buffer, and writes gather the queued frames
//! themselves (the queue's few slots are all a written-out connection keeps). Replays are read a page at a time and streamed into the
//! outbox as it drains, so a client can recover a backlog larger than its outbox, and the
//! connection holds one page of it, not the history. Every way a connection ends maps to a
//! close code (`WsError::close_code`, the outbox's close reason, or the peer's own).
//!
//! Here: the connection's task and its loop (frames in, the outbox out). The socket itself is
//! `pump`; a connection's subscriptions (subscribe, unsubscribe, replay then live, close all)
//! are `subscriptions`; what each request does is `dispatch`; the connection's identity over
//! time (its expiry, its in-band refresh) is `identity`.

mod dispatch;
mod identity;
mod pump;
mod subscriptions;

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use pump::{DirectGuard, Io, Pump};
use subscriptions::Replaying;

use super::Gateway;
use super::rate::RateLimiter;
use crate::auth::Identity;
use crate::hub::Subscriber;
use crate::protocol::websocket::{Assembler, Incoming, OpCode, Step, server_frame};
use crate::protocol::{CloseCode, Codec, ErrorCode, Position, Topic, close};

/// Bytes read from the socket per read (into a stack buffer).
const READ_CHUNK: usize = 4096;
/// How long closing may take (flushing what is queued, the close frame, the peer's answer).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Which route the client connected to.
#[derive(Debug)]
pub enum Endpoint {
    /// `/ws`: requests over the socket.
    Multiplexed,
    /// `/topics/{topic}`: subscribed at once, read-only.
    Topic(Topic, Option<Position>),
}

/// What processing input decided.
enum Flow {
    Continue,
    /// Close with this code once what is queued has been written.
    Close(CloseCode),
    /// The client sent a close frame: echo its code and end.
    PeerClosed(Option<u16>),
}

struct Session {
    gw: Arc<Gateway>,
    /// The upgrade request's headers that some service forwards (shared with `send` tasks).
    forwarded: Arc<[(String, String)]>,
    /// The connection's id, as in its `welcome` (and in presence).
    conn: Arc<str>,
    sub: Arc<Subscriber>,
    identity: Identity,
    codec: Codec,
    topics: Vec<Topic>,
    /// Replays in progress, oldest first; empty almost always.
    replays: Vec<Replaying>,
    read_only: bool,
    limiter: RateLimiter,
}

/// A connection the upgrade accepted: who it is and how it speaks.
pub(crate) struct Accepted {
    pub(crate) gw: Arc<Gateway>,
    /// Its record in the hub, made by [`register`] before the 101 (its `welcome` queued first).
    pub(crate) sub: Arc<Subscriber>,
    /// The bus watches its user's channel for it (a successful [`Gateway::watch_user`]).
    pub(crate) user_watched: bool,
    /// The user and grants its ticket carried.
    pub(crate) identity: Identity,
    /// The upgrade request's headers that some service forwards.
    pub(crate) forwarded: Vec<(String, String)>,
    /// Its id (as in `welcome`).
    pub(crate) conn: Arc<str>,
    pub(crate) codec: Codec,
    pub(crate) endpoint: Endpoint,
}

/// Records an accepted connection in the hub before its 101, as number `id` on this node: its
/// `welcome` queued first in its outbox (then, when the bus could not watch its user's channel,
/// an error saying so), and reachable by directed messages to its user. The upgrade records its
/// connect only after this, so that a backend answering the event with a directed message
/// reaches it. A connection that goes no further is taken out with [`unregister`].
pub(crate) fn register(
    gw: &Gateway,
    identity: &Identity,
    conn: &str,
    id: u64,
    codec: Codec,
    deflate: bool,
    user_watched: &Result<(), crate::bus::BusError>,
) -> Arc<Subscriber> {
    let sub = gw.hub.connect_as(codec, deflate, id);
    sub.push(codec.welcome(
        conn,
        &gw.config.node_id,
        &identity.user,
        gw.config.ping_interval.as_secs(),
        identity::expires_at(identity),
    ));
    if let Err(e) = user_watched {
        let msg = format!("directed messages to you may not arrive: {e}");
        sub.push(codec.error(None, e.code(), &msg, None));
    }
    gw.hub.attach_user(&identity.user, &sub);
    sub
}

/// Undoes [`register`] for a connection that never ran (its upgrade failed after it).
pub(crate) async fn unregister(
    gw: &Gateway,
    user: &Arc<str>,
    sub: &Subscriber,
    user_watched: bool,
) {
    gw.hub.detach_user(user, sub);
    gw.hub.disconnect(sub.id);
    if user_watched {
        gw.unwatch_user(user).await;
    }
}

/// The connection's task: runs the connection until it closes; always unsubscribes. Its output
/// says how it ended ([`Ended`]).
///
/// A plain function returning the task: its state (the session and the pump, which owns the
/// stream) is built here and moved into the future once. An `async fn` would keep its arguments,
/// the stream among them, in the future beside the locals they are moved into, and an idle
/// connection is mostly this future.
///
/// `direct`: the descriptor of a plain TCP stream, which the fan-out may then write to while
/// the connection's writer is idle ([`crate::hub::Outbox::send`]); the pump withdraws it before
/// the stream can close.
pub(crate) fn run<S>(
    a: Accepted,
    stream: S,
    leftover: Bytes,
    direct: Option<std::os::fd::RawFd>,
) -> impl Future<Output = Ended> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Accepted {
        gw,
        sub,
        user_watched,
        identity,
        forwarded,
        conn,
        codec,
        endpoint,
    } = a;
    gw.metrics.accepted.increment(1);
    // Upgraded just before the drain began closing, registered just after it listed the
    // connections: closed at once, as the drain would have.
    if gw.closing.load(std::sync::atomic::Ordering::SeqCst) {
        sub.outbox.close(CloseCode::Restarting);
    }
    let cfg = &gw.config;
    let mut s = Session {
        forwarded: if forwarded.is_empty() {
            no_headers()
        } else {
            forwarded.into()
        },
        conn,
        limiter: RateLimiter::new(cfg.rate_limit, cfg.rate_burst),
        read_only: matches!(endpoint, Endpoint::Topic(..)),
        gw: gw.clone(),
        sub: sub.clone(),
        identity,
        codec,
        topics: Vec::new(),
        replays: Vec::new(),
    };
    // Copy, then let go of hyper's read buffer: a slice of it would keep all of it alive.
    let rbuf = leftover.to_vec();
    drop(leftover);
    let mut pump = Pump::new(stream, rbuf, direct.map(|fd| DirectGuard::allow(&sub, fd)));
    // `/topics/{topic}`'s subscription, boxed: the task keeps room for what it captures all
    // its life, and most connections have none.
    let first = match endpoint {
        Endpoint::Topic(topic, since) => Some(Box::new((topic, since))),
        Endpoint::Multiplexed => None,
    };
    // Captured as they are (no `let` rebinding them inside): each is stored in the future once,
    // and nothing twice (the session holds the gateway and the subscriber).
    async move {
        // Closed with 4001 once its identity expires (plus the leeway), unless refreshed.
        s.arm_expiry(&s.identity);
        if let Some(first) = first {
            let (topic, since) = *first;
            Box::pin(s.subscribe(None, topic, since)).await;
        }
        let code = s.serve(&mut pump).await;
        if s.sub.outbox.close_code() == Some(CloseCode::SlowConsumer.code()) {
            // The connection's span exists only at debug level (it costs memory per open
            // connection): the line names the connection itself.
            tracing::info!(
                conn = &*s.conn,
                user = &*s.identity.user,
                node = s.gw.config.node_id.as_str(),
                limit = s.gw.config.outbox_bytes,
                "slow consumer: its outbox went over its bound; closed with 4008"
            );
        }
        Box::pin(s.close_all(user_watched)).await;
        Ended {
            code,
            conn: s.conn,
            user: s.identity.user,
        }
    }
}

/// No forwarded headers, shared: an empty `Arc<[T]>` is still an allocation, and most
/// connections have none.
fn no_headers() -> Arc<[(String, String)]> {
    static EMPTY: std::sync::OnceLock<Arc<[(String, String)]>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::from(Vec::new())).clone()
}

/// How a connection ended: the close code that ended it (sent or received; 1006 when the socket
/// just broke), and its id and user for whoever records the end.
pub(crate) struct Ended {
    pub(crate) code: u16,
    pub(crate) conn: Arc<str>,
    pub(crate) user: Arc<str>,
}

impl Session {
    fn reply(&self, frame: Bytes) {
        self.sub.push(frame);
    }

    fn error(&self, id: Option<u64>, code: ErrorCode, message: &str) {
        self.reply(self.codec.error(id, code, message, None));
    }

    /// Moves bytes between the socket and the outbox until the connection ends; returns the
    /// close code sent or received (1006: none, the socket broke or timed out).
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&mut self, pump: &mut Pump<S>) -> u16 {
        let mut asm =
            Assembler::server(self.gw.config.max_message_bytes).with_deflate(self.sub.deflate);
        let mut deadline: Option<tokio::time::Instant> = None;
        let sub = self.sub.clone();
        loop {
            if !pump.rbuf.is_empty() && pump.reading {
                // Boxed: requests are rare next to deliveries, and an unboxed request future
                // would sit inside every idle connection's task.
                match Box::pin(self.process(&mut asm, &mut pump.rbuf)).await {
                    Flow::Continue => {}
                    Flow::Close(code) => {
                        // Stop reading (the stream cannot be trusted); flush, then close.
                        pump.reading = false;
                        sub.outbox.close(code);
                    }
                    Flow::PeerClosed(code) => {
                        let code = code.unwrap_or(close::NO_STATUS);
                        let echo = if code == close::NO_STATUS {
                            CloseCode::Normal.code()
                        } else {
                            code
                        };
                        // Boxed, as every wait of a closing connection: an idle connection's
                        // task would otherwise hold room for a timer it never uses.
                        let close = pump.close(&sub, echo, "");
                        let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, close)).await;
                        return code;
                    }
                }
                if pump.rbuf.is_empty() && !asm.in_message() {
                    pump.rbuf = Vec::new();
                }
            }
            if !self.replays.is_empty() {
                // Boxed, like requests: a page read is rare next to deliveries.
                Box::pin(self.feed_replays()).await;
            }
            if deadline.is_none() && sub.outbox.is_closing() {
                deadline = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                self.closing_noticed(sub.outbox.close_code());
            }
            let hub = &self.gw.hub;
            let wrote = !self.replays.is_empty();
            let io = poll_fn(|cx| pump.poll_io(cx, &sub, hub, wrote));
            let io = match deadline {
                None => io.await,
                Some(d) => match Box::pin(tokio::time::timeout_at(d, io)).await {
                    Ok(io) => io,
                    Err(_) => return sub.outbox.close_code().unwrap_or(close::ABNORMAL),
                },
            };
            match io {
                Io::Input => sub.seen(self.gw.hub.now_secs()),
                Io::Wrote | Io::Closing => {}
                Io::Gone => return close::ABNORMAL,
                Io::Close(code) => {
                    if deadline.is_none() {
                        self.closing_noticed(Some(code.code()));
                    }
                    let close = pump.close(&sub, code.code(), code.reason());
                    let left = deadline.map_or(CLOSE_GRACE, |d| {
                        d.saturating_duration_since(tokio::time::Instant::now())
                    });
                    let _ = Box::pin(tokio::time::timeout(left, close)).await;
                    return code.code();
                }
            }
        }
    }

    /// The connection was asked to close with `code`: a slow consumer is counted now, as soon
    /// as its outbox overflowed (its close may take the close grace, the peer not reading).
    fn closing_noticed(&self, code: Option<u16>) {
        if code == Some(CloseCode::SlowConsumer.code()) {
            self.gw.metrics.slow_consumers.increment(1);
        }
    }

    /// Handles every complete frame in `rbuf`, removing what it consumed.
    async fn process(&mut self, asm: &mut Assembler, rbuf: &mut Vec<u8>) -> Flow {
        let mut at = 0;
        let flow = loop {
            match asm.step(&rbuf[at..]) {
                Ok(Step::NeedMore) => break Flow::Continue,
                Ok(Step::Consumed(n)) => at += n,
                Ok(Step::Message(n, m)) => {
                    at += n;
                    match self.incoming(m).await {
                        Flow::Continue => {}
                        other => break other,
                    }
                }
                Err(e) => break Flow::Close(e.close_code()),
            }
        };
        rbuf.drain(..at);
        flow
    }

    async fn incoming(&mut self, m: Incoming) -> Flow {
        let (payload, binary) = match m {
            Incoming::Pong => return Flow::Continue,
            Incoming::Close(code) => return Flow::PeerClosed(code),
            Incoming::Ping(p) => {
                if !self.limiter.allow() {
                    return self.limited();
                }
                self.reply(server_frame(OpCode::Pong, &p));
                return Flow::Continue;
            }
            Incoming::Text(p) => (p, false),
            Incoming::Binary(p) => (p, true),
        };
        self.gw.metrics.frames_in.increment(1);
        // Over the rate, a frame is not even decoded: the error has no id.
        if !self.limiter.allow() {
            return self.limited();
        }
        if self.read_only {
            self.error(
                None,
                ErrorCode::BadRequest,
                "this endpoint (/topics/{topic}) is read-only; use /ws to send requests",
            );
            return Flow::Continue;
        }
        match self.codec.decode(&payload, binary) {
            Ok(req) => self.request(req).await,
            Err(e) => self.error(e.id, e.code, &e.message),
        }
        Flow::Continue
    }

    fn limited(&self) -> Flow {
        if self.limiter.cut_off() {
            return Flow::Close(CloseCode::RateLimited);
        }
        self.error(
            None,
            ErrorCode::RateLimited,
            "over the frame rate limit; this frame was not processed",
        );
        Flow::Continue
    }
}
