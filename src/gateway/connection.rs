//! One task per WebSocket connection: it reads the client's frames, answers its requests, and
//! writes whatever the outbox holds with one write per batch.
//!
//! The socket side is one poll function ([`Pump::poll_io`]) over any `AsyncRead + AsyncWrite`
//! (plain TCP or TLS), so the task holds no per-event futures and an idle connection holds no
//! read or write buffer: reads go through a stack buffer, and the write buffer exists only
//! while a batch is being written. Replays are read a page at a time and streamed into the
//! outbox as it drains, so a client can recover a backlog larger than its outbox, and the
//! connection holds one page of it, not the history. Every way a connection ends maps to a
//! close code ([`close_for`], the outbox's close reason, or the peer's own).

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::Gateway;
use super::rate::RateLimiter;
use crate::auth::Identity;
use crate::hub::{Subscribed, Subscriber, Take};
use crate::protocol::codec::OkFields;
use crate::protocol::frame::Member;
use crate::protocol::websocket::{
    Assembler, Incoming, OpCode, Step, WsError, close_frame, server_frame,
};
use crate::protocol::{CloseCode, Codec, ErrorCode, Message, Position, Request, Topic};

/// Most bytes gathered into one write.
const MAX_BATCH: usize = 64 * 1024;
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

/// A subscription whose missed messages are still being queued, a page at a time.
struct Replaying {
    topic: Topic,
    /// The page being queued.
    rest: std::collections::VecDeque<Message>,
    /// The last position queued so far.
    floor: Option<Position>,
    /// The topic's latest offset when the replay started: pages are read until `floor` is
    /// there (live messages from then on are held by the hub).
    until: u64,
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

/// Who a connection is: its identity, the headers forwarded to services, its number and its id.
pub(crate) type Who = (Identity, Vec<(String, String)>, u64, Arc<str>);

/// The connection's task: runs the connection until it closes; always unsubscribes. Its output
/// is the close code that ended it (sent or received; 1006 when the socket just broke).
///
/// A plain function returning the task: its state (the session and the pump, which owns the
/// stream) is built here and moved into the future once. An `async fn` would keep its arguments,
/// the stream among them, in the future beside the locals they are moved into, and an idle
/// connection is mostly this future.
pub fn run<S>(
    gw: Arc<Gateway>,
    stream: S,
    leftover: Bytes,
    (identity, forwarded, id, conn): Who,
    codec: Codec,
    endpoint: Endpoint,
) -> impl Future<Output = u16> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let sub = gw.hub.connect_as(codec, id);
    crate::metrics::connection_opened();
    let cfg = &gw.config;
    let mut s = Session {
        forwarded: forwarded.into(),
        conn: conn.clone(),
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
    let mut pump = Pump {
        stream,
        rbuf,
        wbuf: Vec::new(),
        wpos: 0,
        reading: true,
        close_seen: false,
    };
    // Captured as they are (no `let` rebinding them inside): each is stored in the future once.
    async move {
        // Directed messages to this user reach this connection from here on.
        gw.hub.attach_user(&s.identity.user, &sub);
        let user_watched = gw.bus.watch_user(&s.identity.user).await;
        sub.push(codec.welcome(
            &conn,
            &gw.config.node_id,
            &s.identity.user,
            gw.config.ping_interval.as_secs(),
        ));
        if let Err(e) = &user_watched {
            let msg = format!("directed messages to you may not arrive: {e}");
            s.error(None, ErrorCode::Unavailable, &msg);
        }
        if let Endpoint::Topic(topic, since) = endpoint {
            Box::pin(s.subscribe(None, topic, since)).await;
        }
        let code = s.serve(&mut pump).await;
        for t in std::mem::take(&mut s.topics) {
            if gw.hub.unsubscribe(&t, sub.id).is_some() {
                let _ = gw.bus.unwatch(&t).await;
            }
            if gw.config.presence_enabled(t.as_str()) {
                let _ = gw.bus.presence_leave(&t, &conn, &s.identity.user).await;
            }
        }
        gw.hub.detach_user(&s.identity.user, sub.id);
        if user_watched.is_ok() {
            let _ = gw.bus.unwatch_user(&s.identity.user).await;
        }
        gw.hub.disconnect(sub.id);
        code
    }
}

/// The socket and its buffers.
struct Pump<S> {
    stream: S,
    /// Bytes read and not yet parsed; empty (unallocated) between messages.
    rbuf: Vec<u8>,
    /// The batch being written; empty (unallocated) when idle.
    wbuf: Vec<u8>,
    /// How much of `wbuf` is written.
    wpos: usize,
    /// False once the peer's side ended or cannot be trusted (after a protocol error).
    reading: bool,
    /// True once a close asked for while a write was pending has been reported
    /// ([`Io::Closing`]), so that it is reported once.
    close_seen: bool,
}

/// What [`Pump::poll_io`] reports.
enum Io {
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
    fn poll_io(&mut self, cx: &mut Context<'_>, sub: &Subscriber) -> Poll<Io> {
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
                        crate::metrics::write(self.wbuf.len());
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
                match sub.outbox.poll_take(cx, &mut self.wbuf, MAX_BATCH) {
                    Poll::Ready(Take::Frames(_)) => {}
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
    async fn close(&mut self, code: u16, reason: &str) {
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
        let mut asm = Assembler::server(self.gw.config.max_message_bytes);
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
                        let code = code.unwrap_or(1005);
                        let close = pump.close(if code == 1005 { 1000 } else { code }, "");
                        let _ = tokio::time::timeout(CLOSE_GRACE, Box::pin(close)).await;
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
            }
            let io = poll_fn(|cx| pump.poll_io(cx, &sub));
            let io = match deadline {
                None => io.await,
                Some(d) => match tokio::time::timeout_at(d, io).await {
                    Ok(io) => io,
                    Err(_) => return sub.outbox.close_code().unwrap_or(1006),
                },
            };
            match io {
                Io::Input => sub.seen(self.gw.hub.now_secs()),
                Io::Wrote | Io::Closing => {}
                Io::Gone => return 1006,
                Io::Close(code) => {
                    let close = pump.close(code.code(), code.reason());
                    let left = deadline.map_or(CLOSE_GRACE, |d| {
                        d.saturating_duration_since(tokio::time::Instant::now())
                    });
                    let _ = tokio::time::timeout(left, Box::pin(close)).await;
                    return code.code();
                }
            }
        }
    }

    /// Queues more of the replays in progress while the outbox has room, reading their next
    /// page when one is queued; a replay that is done goes live (its held messages follow,
    /// without gap or duplicate). A replay whose next page cannot be read exactly (the history
    /// moved on, or the bus is down) closes the connection with 1012: the client resumes with
    /// `since` from what it got, and learns the truth then, never a gap.
    async fn feed_replays(&mut self) {
        let room = self.sub.outbox_limit() / 2;
        while let Some(r) = self.replays.first_mut() {
            while self.sub.outbox.pending_bytes() < room {
                let Some(m) = r.rest.pop_front() else { break };
                self.sub.push(self.codec.msg(&m));
                r.floor = Some(Position {
                    offset: m.offset,
                    epoch: m.epoch.clone(),
                });
            }
            if !r.rest.is_empty() {
                return;
            }
            let more = match &r.floor {
                Some(floor) if floor.offset < r.until => Some(floor.clone()),
                _ => None,
            };
            if let Some(after) = more {
                if self.sub.outbox.pending_bytes() >= room {
                    return;
                }
                let topic = r.topic.clone();
                match self.gw.bus.replay_more(&topic, &after).await {
                    Ok(Some(page)) if !page.is_empty() => {
                        crate::metrics::replay_page();
                        if let Some(r) = self.replays.first_mut() {
                            r.rest = page.into();
                        }
                        continue;
                    }
                    Ok(_) | Err(_) => {
                        tracing::debug!("{topic:?}: the replay's next page cannot be read");
                        self.replays.clear();
                        self.sub.outbox.close(CloseCode::Restarting);
                        return;
                    }
                }
            }
            let r = self.replays.remove(0);
            self.gw
                .hub
                .go_live(&r.topic, self.sub.id, None, Vec::new(), r.floor);
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

    async fn request(&mut self, req: Request) {
        let grants = self.identity.grants.clone();
        match req {
            Request::Sub { id, topic, since } => {
                if !grants.can_subscribe(topic.as_str()) {
                    let msg = format!("your grants do not allow subscribing to {topic:?}");
                    return self.error(Some(id), ErrorCode::Forbidden, &msg);
                }
                if self.topics.contains(&topic) {
                    let msg = "already subscribed to this topic";
                    return self.error(Some(id), ErrorCode::AlreadySubscribed, msg);
                }
                let max = self.gw.config.max_subscriptions;
                if self.topics.len() >= max {
                    let msg = format!("subscription limit ({max}) reached on this connection");
                    return self.error(Some(id), ErrorCode::Forbidden, &msg);
                }
                self.subscribe(Some(id), topic, since).await;
            }
            Request::Unsub { id, topic } => {
                if self.topics.contains(&topic) {
                    let user = &self.identity.user;
                    let recorded = self.gw.events.unsubscribed(&self.conn, user, &topic).await;
                    if let Err(e) = recorded {
                        // Still subscribed: the backend must never miss an unsubscribe.
                        return self.error(Some(id), ErrorCode::Unavailable, &e.to_string());
                    }
                }
                self.unsubscribe(id, topic).await
            }
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
            Request::Presence { id, topic } => {
                if !grants.can_subscribe(topic.as_str()) {
                    let msg = format!("your grants do not allow subscribing to {topic:?}");
                    return self.error(Some(id), ErrorCode::Forbidden, &msg);
                }
                if !self.gw.config.presence_enabled(topic.as_str()) {
                    let msg = format!("presence is not enabled for {topic:?} (presence_topics)");
                    return self.error(Some(id), ErrorCode::BadRequest, &msg);
                }
                match self.gw.bus.presence(&topic).await {
                    Ok(list) => {
                        let members: Vec<Member> = list
                            .into_iter()
                            .map(|(conn, user)| Member { user, conn })
                            .collect();
                        self.reply(self.codec.ok_presence(id, &members));
                    }
                    Err(e) => self.error(Some(id), ErrorCode::Unavailable, &e.to_string()),
                }
            }
            Request::Send { id, to, data } => {
                if !grants.can_send(&to) {
                    let msg = format!("your grants do not allow sending to {to:?}");
                    return self.error(Some(id), ErrorCode::Forbidden, &msg);
                }
                // In its own task: a slow backend must not stall this connection's other traffic.
                // Bounded by the service's max_concurrency (overloaded at once beyond it).
                let (gw, sub, codec) = (self.gw.clone(), self.sub.clone(), self.codec);
                let (user, conn, headers) = (
                    self.identity.user.clone(),
                    self.conn.clone(),
                    self.forwarded.clone(),
                );
                tokio::spawn(async move {
                    let out = crate::proxy::Outgoing {
                        id,
                        user: &user,
                        conn: &conn,
                        data: &data,
                        headers: &headers,
                    };
                    let frame = match gw.proxy.send(&to, out).await {
                        Ok(reply) => codec.reply(id, &reply),
                        Err(e) => codec.error(Some(id), e.code(), &e.to_string(), e.status()),
                    };
                    sub.push(frame);
                });
            }
        }
    }

    async fn unsubscribe(&mut self, id: u64, topic: Topic) {
        match self.gw.hub.unsubscribe(&topic, self.sub.id) {
            None => {
                let msg = "not subscribed to this topic";
                self.error(Some(id), ErrorCode::NotSubscribed, msg)
            }
            Some(_) => {
                let _ = self.gw.bus.unwatch(&topic).await;
                if self.gw.config.presence_enabled(topic.as_str()) {
                    let user = &self.identity.user;
                    let _ = self.gw.bus.presence_leave(&topic, &self.conn, user).await;
                }
                self.topics.retain(|t| *t != topic);
                self.replays.retain(|r| r.topic != topic);
                self.reply(self.codec.ok(id, OkFields::default()));
            }
        }
    }

    /// Subscribes with gapless catch-up: registered first (live messages are held), then the
    /// replay is read, then `ok`, the replay (streamed as the outbox drains) and the held
    /// messages are queued in order.
    async fn subscribe(&mut self, id: Option<u64>, topic: Topic, since: Option<Position>) {
        match self.gw.hub.subscribe(&topic, &self.sub) {
            Subscribed::Already => {
                let msg = "already subscribed to this topic";
                self.error(id, ErrorCode::AlreadySubscribed, msg);
                return;
            }
            Subscribed::Added { .. } => {}
        }
        // Live first (held by the hub until catch-up ends), then the replay: no gap between them.
        if let Err(e) = self.gw.bus.watch(&topic).await {
            self.gw.hub.unsubscribe(&topic, self.sub.id);
            self.error(id, ErrorCode::Unavailable, &e.to_string());
            return;
        }
        match self.gw.bus.replay(&topic, since.as_ref()).await {
            Ok(r) => {
                let user = &self.identity.user;
                if let Err(e) = self.gw.events.subscribed(&self.conn, user, &topic).await {
                    // Not subscribed after all: the backend must never miss a subscribe.
                    if self.gw.hub.unsubscribe(&topic, self.sub.id).is_some() {
                        let _ = self.gw.bus.unwatch(&topic).await;
                    }
                    self.error(id, ErrorCode::Unavailable, &e.to_string());
                    return;
                }
                if let Some(id) = id {
                    let ok = OkFields {
                        offset: Some(r.latest.offset),
                        epoch: Some(&r.latest.epoch),
                        recovered: since.as_ref().map(|_| r.messages.is_some()),
                    };
                    self.reply(self.codec.ok(id, ok));
                }
                match r.messages {
                    Some(m) if !m.is_empty() => {
                        crate::metrics::replay_page();
                        self.replays.push(Replaying {
                            topic: topic.clone(),
                            rest: m.into(),
                            floor: since,
                            until: r.latest.offset,
                        })
                    }
                    Some(_) => {
                        self.gw
                            .hub
                            .go_live(&topic, self.sub.id, None, Vec::new(), since);
                    }
                    None => {
                        let start = Some(r.latest);
                        self.gw
                            .hub
                            .go_live(&topic, self.sub.id, None, Vec::new(), start);
                    }
                }
                if self.gw.config.presence_enabled(topic.as_str()) {
                    let user = &self.identity.user;
                    if let Err(e) = self.gw.bus.presence_join(&topic, &self.conn, user).await {
                        // Subscribed, but others will not see this connection in presence.
                        let msg =
                            format!("subscribed to {topic:?}, but presence is not updated: {e}");
                        self.error(None, ErrorCode::Unavailable, &msg);
                    }
                }
                self.topics.push(topic);
                self.feed_replays().await;
            }
            Err(e) => {
                if self.gw.hub.unsubscribe(&topic, self.sub.id).is_some() {
                    let _ = self.gw.bus.unwatch(&topic).await;
                }
                self.error(id, ErrorCode::Unavailable, &e.to_string());
            }
        }
    }
}

/// The close code for a framing error.
pub(super) fn close_for(e: &WsError) -> CloseCode {
    match e {
        WsError::Protocol(_) => CloseCode::ProtocolError,
        WsError::TooBig { .. } => CloseCode::TooBig,
        WsError::InvalidUtf8 => CloseCode::InvalidPayload,
    }
}
