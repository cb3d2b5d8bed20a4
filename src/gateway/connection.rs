//! One task per WebSocket connection: it reads the client's frames, answers its requests, and
//! writes whatever the outbox holds with one syscall per batch.
//!
//! Memory: an idle connection holds no read or write buffer. The read buffer exists only while a
//! frame is incomplete; the write buffer only while a batch is being written. Every way a
//! connection ends maps to a close code in [`Session::close_for`] and is sent by [`close`].

use std::future::poll_fn;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Gateway;
use super::upgrade::Slot;
use crate::auth::Identity;
use crate::hub::{Subscribed, Subscriber, Take};
use crate::protocol::codec::OkFields;
use crate::protocol::websocket::{
    Assembler, Incoming, OpCode, Step, WsError, close_frame, server_frame,
};
use crate::protocol::{CloseCode, Codec, ErrorCode, Position, Request, Topic};

/// Most bytes gathered into one write.
const MAX_BATCH: usize = 64 * 1024;
/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 4096;
/// How long closing may take (finishing a write, the close frame, the peer's answer).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Which route the client connected to.
#[derive(Debug)]
pub enum Endpoint {
    /// `/ws`: requests over the socket.
    Multiplexed,
    /// `/topics/{topic}`: subscribed at once, read-only.
    Topic(Topic, Option<Position>),
}

/// A token bucket over the client's frames.
struct RateLimiter {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
    /// Frames refused in a row; past `burst` the client is cut off (4029).
    strikes: u32,
}

impl RateLimiter {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

/// What processing input decided.
enum Flow {
    Continue,
    /// Close with this code.
    Close(CloseCode),
    /// The client sent a close frame: echo it and end.
    PeerClosed(Option<u16>),
}

struct Session {
    gw: Arc<Gateway>,
    sub: Arc<Subscriber>,
    identity: Identity,
    codec: Codec,
    topics: Vec<Topic>,
    read_only: bool,
    limiter: RateLimiter,
}

/// Runs the connection until it closes; always unsubscribes and releases its slot.
pub async fn run(
    gw: Arc<Gateway>,
    stream: TcpStream,
    leftover: Bytes,
    identity: Identity,
    codec: Codec,
    endpoint: Endpoint,
    slot: Slot,
) {
    let sub = gw.hub.connect(codec);
    crate::metrics::connection_opened();
    let cfg = &gw.config;
    let mut s = Session {
        limiter: RateLimiter {
            tokens: cfg.rate_burst as f64,
            rate: cfg.rate_limit as f64,
            burst: cfg.rate_burst as f64,
            last: Instant::now(),
            strikes: 0,
        },
        read_only: matches!(endpoint, Endpoint::Topic(..)),
        gw: gw.clone(),
        sub: sub.clone(),
        identity,
        codec,
        topics: Vec::new(),
    };
    let conn = format!("{}-{:x}", gw.config.node_id, sub.id);
    sub.push(codec.welcome(
        &conn,
        &gw.config.node_id,
        &s.identity.user,
        gw.config.ping_interval.as_secs(),
    ));
    if let Endpoint::Topic(topic, since) = endpoint {
        Box::pin(s.subscribe(None, topic, since)).await;
    }
    s.pump(stream, leftover).await;
    for t in std::mem::take(&mut s.topics) {
        if gw.hub.unsubscribe(&t, sub.id) == Some(true) {
            gw.bus.unwatch(&t);
        }
    }
    gw.hub.disconnect(sub.id);
    drop(slot);
}

impl Session {
    fn reply(&self, frame: Bytes) {
        self.sub.push(frame);
    }

    fn error(&self, id: Option<u64>, code: ErrorCode, message: &str) {
        self.reply(self.codec.error(id, code, message, None));
    }

    /// Moves bytes between the socket and the outbox until the connection ends.
    async fn pump(&mut self, stream: TcpStream, leftover: Bytes) {
        let mut asm = Assembler::server(self.gw.config.max_message_bytes);
        // Copy, then let go of hyper's read buffer: a slice of it would keep all of it alive.
        let mut rbuf: Vec<u8> = leftover.to_vec();
        drop(leftover);
        let mut wbuf: Vec<u8> = Vec::new();
        let mut wpos = 0usize;
        let mut reading = true;
        let sub = self.sub.clone();
        let ending: Flow = 'outer: loop {
            if !rbuf.is_empty() {
                // Boxed: requests are rare next to deliveries, and an unboxed request future would
                // sit inside every idle connection's task.
                match Box::pin(self.process(&mut asm, &mut rbuf)).await {
                    Flow::Continue => {}
                    other => break 'outer other,
                }
                if rbuf.is_empty() && !asm.in_message() {
                    rbuf = Vec::new();
                }
            }
            tokio::select! {
                t = poll_fn(|cx| sub.outbox.poll_take(cx, &mut wbuf, MAX_BATCH)), if wbuf.is_empty() => {
                    match t {
                        Take::Frames(_) => {
                            if let Err(e) = write_some(&stream, &sub, &mut wbuf, &mut wpos) {
                                tracing::debug!("write failed: {e}");
                                return;
                            }
                        }
                        Take::Close(code) => break 'outer Flow::Close(code),
                    }
                }
                r = stream.writable(), if !wbuf.is_empty() => {
                    if r.is_err() || write_some(&stream, &sub, &mut wbuf, &mut wpos).is_err() {
                        return;
                    }
                }
                r = stream.readable(), if reading => {
                    if r.is_err() {
                        return;
                    }
                    rbuf.reserve(READ_CHUNK);
                    match stream.try_read_buf(&mut rbuf) {
                        Ok(0) => {
                            reading = false;
                            if wbuf.is_empty() {
                                return;
                            }
                        }
                        Ok(_) => sub.seen(self.gw.hub.now_secs()),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if rbuf.is_empty() {
                                rbuf = Vec::new();
                            }
                        }
                        Err(_) => return,
                    }
                }
                else => return,
            }
        };
        let (code, echo) = match ending {
            Flow::Close(c) => (c.code(), c.reason()),
            Flow::PeerClosed(c) => (c.unwrap_or(1000), ""),
            Flow::Continue => return,
        };
        let closing = tokio::time::timeout(CLOSE_GRACE, close(stream, &mut wbuf, wpos, code, echo));
        if let Err(e) = Box::pin(closing).await {
            tracing::debug!("close did not finish in time: {e}");
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
                Err(e) => break Flow::Close(close_for(&e)),
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
        crate::metrics::frame_in();
        // Over the rate, a frame is not even decoded: the error has no id.
        if !self.limiter.allow() {
            return self.limited();
        }
        let req = match self.codec.decode(&payload, binary) {
            Ok(r) => r,
            Err(e) => {
                self.error(e.id, e.code, &e.message);
                return Flow::Continue;
            }
        };
        if self.read_only {
            self.error(
                Some(req.id()),
                ErrorCode::BadRequest,
                "this endpoint (/topics/{topic}) is read-only; use /ws to send requests",
            );
            return Flow::Continue;
        }
        self.request(req).await;
        Flow::Continue
    }

    fn limited(&self) -> Flow {
        if self.limiter.strikes > self.gw.config.rate_burst {
            return Flow::Close(CloseCode::RateLimited);
        }
        self.error(
            None,
            ErrorCode::RateLimited,
            "over the frame rate limit; this frame was not processed",
        );
        Flow::Continue
    }

    async fn request(&mut self, req: Request) {
        let grants = self.identity.grants.clone();
        match req {
            Request::Sub { id, topic, since } => {
                if !grants.can_subscribe(topic.as_str()) {
                    let msg = format!("your grants do not allow subscribing to {topic:?}");
                    return self.error(Some(id), ErrorCode::Forbidden, &msg);
                }
                if self.topics.contains(&topic) {
                    return self.error(
                        Some(id),
                        ErrorCode::AlreadySubscribed,
                        "already subscribed to this topic",
                    );
                }
                let max = self.gw.config.max_subscriptions;
                if self.topics.len() >= max {
                    let msg = format!("subscription limit ({max}) reached on this connection");
                    return self.error(Some(id), ErrorCode::Forbidden, &msg);
                }
                self.subscribe(Some(id), topic, since).await;
            }
            Request::Unsub { id, topic } => match self.gw.hub.unsubscribe(&topic, self.sub.id) {
                None => self.error(
                    Some(id),
                    ErrorCode::NotSubscribed,
                    "not subscribed to this topic",
                ),
                Some(last) => {
                    if last {
                        self.gw.bus.unwatch(&topic);
                    }
                    self.topics.retain(|t| *t != topic);
                    self.reply(self.codec.ok(id, OkFields::default()));
                }
            },
            Request::Pub { id, topic, data } => {
                if !grants.can_publish(topic.as_str()) {
                    let msg = format!("your grants do not allow publishing to {topic:?}");
                    return self.error(Some(id), ErrorCode::Forbidden, &msg);
                }
                match self.gw.bus.publish(&topic, data).await {
                    Ok(p) => {
                        crate::metrics::published();
                        let f = OkFields {
                            offset: Some(p.offset),
                            epoch: Some(&p.epoch),
                            recovered: None,
                        };
                        self.reply(self.codec.ok(id, f));
                    }
                    Err(e) => self.error(Some(id), ErrorCode::Unavailable, &e.to_string()),
                }
            }
            Request::Send { id, to, .. } => {
                if !grants.can_send(&to) {
                    let msg = format!("your grants do not allow sending to {to:?}");
                    return self.error(Some(id), ErrorCode::Forbidden, &msg);
                }
                let msg = format!("no service named {to:?} is configured on this node");
                self.error(Some(id), ErrorCode::UnknownService, &msg);
            }
        }
    }

    /// Subscribes with gapless catch-up: registered first (live messages are held), then the
    /// replay is read, then `ok`, replay and held messages are queued in order.
    async fn subscribe(&mut self, id: Option<u64>, topic: Topic, since: Option<Position>) {
        match self.gw.hub.subscribe(&topic, &self.sub) {
            Subscribed::Already => {
                if let Some(id) = id {
                    self.error(
                        Some(id),
                        ErrorCode::AlreadySubscribed,
                        "already subscribed to this topic",
                    );
                }
                return;
            }
            Subscribed::Added { first } => {
                if first {
                    self.gw.bus.watch(&topic);
                }
            }
        }
        match self.gw.bus.replay(&topic, since.as_ref()).await {
            Ok(r) => {
                let recovered = since.as_ref().map(|_| r.messages.is_some());
                let ok = id.map(|id| {
                    self.codec.ok(
                        id,
                        OkFields {
                            offset: Some(r.latest.offset),
                            epoch: Some(&r.latest.epoch),
                            recovered,
                        },
                    )
                });
                let (replay, start) = match r.messages {
                    Some(m) => (m, since),
                    None => (Vec::new(), Some(r.latest)),
                };
                self.gw.hub.go_live(&topic, self.sub.id, ok, replay, start);
                self.topics.push(topic);
            }
            Err(e) => {
                if self.gw.hub.unsubscribe(&topic, self.sub.id) == Some(true) {
                    self.gw.bus.unwatch(&topic);
                }
                self.error(id, ErrorCode::Unavailable, &e.to_string());
            }
        }
    }
}

/// The close code for a framing error.
fn close_for(e: &WsError) -> CloseCode {
    match e {
        WsError::Protocol(_) => CloseCode::ProtocolError,
        WsError::TooBig { .. } => CloseCode::TooBig,
        WsError::InvalidUtf8 => CloseCode::InvalidPayload,
    }
}

/// Writes as much of `wbuf` as the socket takes now; frees the buffer once it is all written.
fn write_some(
    stream: &TcpStream,
    sub: &Subscriber,
    wbuf: &mut Vec<u8>,
    wpos: &mut usize,
) -> std::io::Result<()> {
    while *wpos < wbuf.len() {
        match stream.try_write(&wbuf[*wpos..]) {
            Ok(n) => *wpos += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    sub.outbox.written(wbuf.len());
    crate::metrics::write(wbuf.len());
    *wbuf = Vec::new();
    *wpos = 0;
    Ok(())
}

/// Finishes the frame being written, sends a close frame, then waits briefly for the peer.
async fn close(mut stream: TcpStream, wbuf: &mut Vec<u8>, wpos: usize, code: u16, reason: &str) {
    let pending = std::mem::take(wbuf);
    let mut out = pending[wpos.min(pending.len())..].to_vec();
    out.extend_from_slice(&close_frame(code, reason));
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    // Drain until the peer closes too, so the close frame is not lost to a reset.
    let mut sink = vec![0u8; 512];
    loop {
        match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

