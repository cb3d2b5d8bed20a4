//! The hub: which local connection subscribes to which topic, and the fan-out of messages to
//! them. It never imports the bus: `server.rs` pipes the bus's messages into [`Hub::deliver`], and
//! the gateway tells the bus when a topic gains its first or loses its last local subscriber.
//!
//! Locking: the topic map is a `DashMap` whose references are never held across `.await` (none of
//! these methods is async). Subscribing and unsubscribing decide "first" and "last" under the
//! map's shard lock, so the answers pair up even when they race.

pub mod direct;
pub(crate) mod expiry;
mod frames;
pub mod heartbeat;
pub mod outbox;
pub mod probe;
pub mod topic;
pub mod traffic;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

pub use outbox::{Outbox, Sent, Subscriber, Take};
pub use probe::Probe;
pub use topic::TopicSubs;
pub use traffic::{Counts, Traffic};

use crate::metrics::Metrics;
use crate::protocol::{CloseCode, Codec, Message, Position, Topic};

/// What [`Hub::subscribe`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Subscribed {
    /// Added, in catch-up mode (live messages held until [`Hub::go_live`]).
    Added,
    /// It was subscribed already.
    Already,
}

/// Topics, local subscribers and the fan-out between them.
pub struct Hub {
    /// Topic name to its subscribers; an entry exists only while it has subscribers.
    topics: DashMap<Arc<str>, Arc<TopicSubs>>,
    /// Every open connection, for heartbeats and for closing all at shutdown.
    conns: DashMap<u64, Arc<Subscriber>>,
    /// The connections of each user on this node, for directed messages.
    users: DashMap<Arc<str>, Vec<Arc<Subscriber>>>,
    /// The close deadlines of the connections whose identity expires.
    expiries: expiry::Expiries,
    outbox_limit: usize,
    /// Messages whose payload is smaller go plain to permessage-deflate subscribers too.
    min_deflate: usize,
    started: Instant,
    /// The node's metrics: counted per fan-out, never per delivery.
    metrics: Arc<Metrics>,
    /// Times a sample of fan-outs, publish to write ([`probe`]).
    probe: Probe,
    /// The traffic of the connections already closed (open ones count their own).
    retired: Traffic,
    /// When a fan-out writes to its subscribers' sockets itself ([`direct`]).
    direct: direct::DirectWrites,
}

impl Hub {
    /// A hub whose connections each get an outbox of `outbox_limit` bytes, with metrics of its
    /// own (tests and benches; a node's hub counts into the node's, [`Hub::with_metrics`]).
    pub fn new(outbox_limit: usize) -> Hub {
        let metrics = Metrics::new().expect("the metrics catalog's buckets are valid");
        Hub::with_metrics(outbox_limit, metrics)
    }

    /// A hub whose connections each get an outbox of `outbox_limit` bytes, counting into `metrics`.
    pub fn with_metrics(outbox_limit: usize, metrics: Arc<Metrics>) -> Hub {
        Hub {
            topics: DashMap::new(),
            conns: DashMap::new(),
            users: DashMap::new(),
            expiries: expiry::Expiries::default(),
            outbox_limit,
            min_deflate: crate::protocol::deflate::DEFAULT_MIN_BYTES,
            started: Instant::now(),
            probe: Probe::new(metrics.clone()),
            metrics,
            retired: Traffic::default(),
            direct: direct::DirectWrites::for_current_runtime(),
        }
    }

    /// The same hub, compressing for permessage-deflate subscribers the messages whose payload
    /// has at least `min_bytes` (`compression_min_bytes`).
    pub fn compressing_from(mut self, min_bytes: usize) -> Hub {
        self.min_deflate = min_bytes;
        self
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The publish-to-write probe, which connections' writers report to.
    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// Seconds since the hub started: the heartbeat clock.
    pub fn now_secs(&self) -> u32 {
        self.started.elapsed().as_secs() as u32
    }

    /// Registers a new connection under an id the caller chose (unique among open ones), reading
    /// `codec`, and compressed broadcasts when it negotiated permessage-deflate (`deflate`).
    pub fn connect_as(&self, codec: Codec, deflate: bool, id: u64) -> Arc<Subscriber> {
        let sub = Arc::new(Subscriber {
            id,
            codec,
            deflate,
            outbox: Outbox::new(self.outbox_limit),
            last_seen: AtomicU32::new(self.now_secs()),
            user_slot: AtomicU32::new(0),
            expires: AtomicU64::new(expiry::NEVER),
            traffic: Traffic::default(),
        });
        self.conns.insert(id, sub.clone());
        self.metrics.connections.set(self.conns.len() as f64);
        sub
    }

    /// Makes `sub` reachable by directed messages to `user`. Returns true for the user's first
    /// connection on this node.
    pub fn attach_user(&self, user: &Arc<str>, sub: &Arc<Subscriber>) -> bool {
        let mut e = self.users.entry(user.clone()).or_default();
        sub.user_slot.store(e.len() as u32, Ordering::Relaxed);
        e.push(sub.clone());
        e.len() == 1
    }

    /// Undoes [`Hub::attach_user`]. Returns true when it was the user's last connection here.
    /// Constant time, whatever the user's number of connections: `sub` knows its place in the
    /// list, and the list's last connection moves into it.
    pub fn detach_user(&self, user: &Arc<str>, sub: &Subscriber) -> bool {
        match self.users.entry(user.clone()) {
            Entry::Vacant(_) => false,
            Entry::Occupied(mut e) => {
                let v = e.get_mut();
                let slot = sub.user_slot.load(Ordering::Relaxed) as usize;
                let at = if v.get(slot).is_some_and(|s| s.id == sub.id) {
                    slot
                } else {
                    // Not attached to this user (a caller's mistake): look, and leave it be.
                    match v.iter().position(|s| s.id == sub.id) {
                        Some(at) => at,
                        None => return false,
                    }
                };
                v.swap_remove(at);
                if let Some(moved) = v.get(at) {
                    moved.user_slot.store(at as u32, Ordering::Relaxed);
                }
                let last = v.is_empty();
                if last {
                    e.remove();
                }
                last
            }
        }
    }

    /// Queues a `direct` frame (encoded once per codec, and compressed once per codec for the
    /// connections that negotiated permessage-deflate) to every connection of `user` here.
    /// Returns the number of connections it was queued to.
    pub fn deliver_direct(&self, user: &str, from: Option<&str>, data: &[u8]) -> usize {
        let Some(conns) = self.users.get(user).map(|r| r.clone()) else {
            return 0;
        };
        let make = |c: Codec| c.direct(from, data);
        let mut frames = frames::Frames::new(make, self.min_deflate, None);
        let mut n = 0;
        // Queued: a user's connections are few (see `direct`).
        for s in &conns {
            if s.push(frames.get(s).clone()) {
                n += 1;
            }
        }
        self.metrics.deliveries.increment(n as u64);
        n
    }

    /// Asks the connections of `user` here that `which` selects (by id) to close with `code`
    /// (what was queued for them is still written first). Returns how many were asked, or
    /// `None` when the user has no connection here.
    pub fn close_user(
        &self,
        user: &str,
        code: CloseCode,
        which: impl Fn(u64) -> bool,
    ) -> Option<usize> {
        let conns = self.users.get(user).map(|r| r.clone())?;
        let mut n = 0;
        for s in conns.iter().filter(|s| which(s.id)) {
            s.outbox.close(code);
            n += 1;
        }
        Some(n)
    }

    /// Forgets a connection; the caller unsubscribes its topics first.
    pub fn disconnect(&self, id: u64) {
        if let Some((_, s)) = self.conns.remove(&id) {
            self.expiries.remove(&s);
            // Out of the map first: a render meanwhile misses these counts rather than
            // counting them twice (the node's counters keep their maximum).
            self.retired.retire(s.traffic.counts());
        }
        self.metrics.connections.set(self.conns.len() as f64);
    }

    /// Sets when `sub` must close with 4001 (session expired): a deadline in unix seconds
    /// (`u64::MAX`: never), replacing the one it had. See [`expiry`].
    pub(crate) fn set_expiry(&self, sub: &Subscriber, deadline: u64) {
        self.expiries.set(sub, deadline);
    }

    /// Asks every connection past its deadline at unix second `now` to close with 4001 (what
    /// was queued for it is still written first); returns how many were asked. Called by the
    /// heartbeat timer on every tick.
    pub(crate) fn expire_due(&self, now: u64) -> usize {
        let mut n = 0;
        for id in self.expiries.take_due(now) {
            let s = self.conns.get(&id).map(|r| r.value().clone());
            if let Some(s) = s.filter(|s| expiry::still_due(s, now)) {
                s.outbox.close(CloseCode::SessionExpired);
                n += 1;
            }
        }
        n
    }

    /// Number of open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Writes and bytes of every connection this hub has had, open or closed: each open one's
    /// own counts (read without locking it) plus the closed ones' sum. For the metrics render.
    pub fn traffic(&self) -> Counts {
        let mut c = self.retired.counts();
        for r in self.conns.iter() {
            c += r.value().traffic.counts();
        }
        c
    }

    /// Subscribes `sub` to `topic` in catch-up mode; finish with [`Hub::go_live`].
    pub fn subscribe(&self, topic: &Topic, sub: &Arc<Subscriber>) -> Subscribed {
        let entry = match self.topics.entry(topic.as_arc().clone()) {
            Entry::Occupied(e) => e.into_ref(),
            Entry::Vacant(e) => {
                self.metrics.topics.increment(1.0);
                e.insert(Arc::default())
            }
        };
        if !entry.add(sub) {
            return Subscribed::Already;
        }
        self.metrics.subscriptions.increment(1.0);
        Subscribed::Added
    }

    /// `topic` with the very name this hub keys it by, while it has local subscribers: a
    /// connection that keeps its topics shares that one string instead of holding its own.
    pub fn shared_name(&self, topic: &Topic) -> Topic {
        let shared = self.topics.get(topic.as_arc()).map(|r| r.key().clone());
        shared.map_or_else(|| topic.clone(), Topic::from_shared)
    }

    /// Ends catch-up (see [`TopicSubs::go_live`]).
    pub fn go_live(&self, topic: &Topic, id: u64, start: Option<Position>) -> bool {
        let t = self.topics.get(topic.as_arc()).map(|r| r.clone());
        t.is_some_and(|t| t.go_live(id, start))
    }

    /// Unsubscribes; true when it was subscribed. (The bus keeps its own count of local
    /// subscribers: nothing here needs to know which was the last.)
    pub fn unsubscribe(&self, topic: &Topic, id: u64) -> bool {
        match self.topics.entry(topic.as_arc().clone()) {
            Entry::Vacant(_) => false,
            Entry::Occupied(e) => {
                if !e.get().remove(id) {
                    return false;
                }
                self.metrics.subscriptions.decrement(1.0);
                if e.get().is_empty() {
                    e.remove();
                    self.metrics.topics.decrement(1.0);
                }
                true
            }
        }
    }

    /// Fans a message out to this node's subscribers of its topic (a sample of fan-outs is
    /// timed until written, [`probe`]).
    pub fn deliver(&self, m: &Message) {
        self.metrics.bus_messages.increment(1);
        let t = self.topics.get(m.topic.as_arc()).map(|r| r.clone());
        if let Some(t) = t {
            let timed = self.probe.arm();
            let n = t.deliver(
                m,
                timed.map(|a| (&self.probe, a)),
                self.min_deflate,
                &self.direct,
            );
            if let Some(a) = timed {
                self.probe.fanned_out(a, n);
            }
            self.metrics.deliveries.increment(n as u64);
        }
    }

    /// Tells this node's subscribers of `topic` that `user` (connection `conn`) joined or left.
    pub fn deliver_presence(&self, topic: &Topic, join: bool, conn: &str, user: &str) {
        let t = self.topics.get(topic.as_arc()).map(|r| r.clone());
        if let Some(t) = t {
            let make = |c: Codec| c.presence_event(join, topic.as_str(), user, conn);
            let n = t.broadcast(make, self.min_deflate, &self.direct);
            self.metrics.deliveries.increment(n as u64);
        }
    }

    /// Asks every local subscriber of `topic` to close with `code` (what was queued for it is
    /// still written first); returns how many were asked.
    pub fn close_topic(&self, topic: &Topic, code: CloseCode) -> usize {
        let t = self.topics.get(topic.as_arc()).map(|r| r.clone());
        t.map_or(0, |t| t.close_all(code))
    }

    /// Asks every connection to close with `code` (shutdown).
    pub fn close_all(&self, code: CloseCode) {
        for s in self.snapshot() {
            s.outbox.close(code);
        }
    }

    /// The ids of the open connections, in the map's order (a hash order: no relation to when
    /// or by whom they were opened). A drain closes them in batches ([`Hub::close_ids`]).
    pub fn ids(&self) -> Vec<u64> {
        self.conns.iter().map(|r| *r.key()).collect()
    }

    /// Asks the connections among `ids` that are still open to close with `code`; returns how
    /// many were asked.
    pub fn close_ids(&self, ids: &[u64], code: CloseCode) -> usize {
        let mut n = 0;
        for id in ids {
            let s = self.conns.get(id).map(|r| r.value().clone());
            if let Some(s) = s {
                s.outbox.close(code);
                n += 1;
            }
        }
        n
    }

    /// The open connections, cloned out of the map so no shard lock is held while using them.
    pub fn snapshot(&self) -> Vec<Arc<Subscriber>> {
        self.conns.iter().map(|r| r.value().clone()).collect()
    }
}

/// Ids for connections made by tests (production connections get theirs from the gateway).
#[cfg(test)]
static TEST_IDS: AtomicU64 = AtomicU64::new(1);

#[cfg(test)]
impl Hub {
    /// Registers a new connection under a fresh id.
    pub(crate) fn connect(&self, codec: Codec) -> Arc<Subscriber> {
        self.connect_as(codec, false, TEST_IDS.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers a new connection that negotiated permessage-deflate, under a fresh id.
    pub(crate) fn connect_deflate(&self, codec: Codec) -> Arc<Subscriber> {
        self.connect_as(codec, true, TEST_IDS.fetch_add(1, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod direct_tests;
#[cfg(test)]
mod tests;
