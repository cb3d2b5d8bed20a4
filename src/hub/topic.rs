//! One topic's local subscribers, and the fan-out of its messages.
//!
//! A message is encoded at most once per codec, lazily (only codecs that have a subscriber), and
//! every subscriber's outbox gets a reference to the same bytes; subscribers that negotiated
//! permessage-deflate share its compressed form, made once per codec ([`super::frames`]). A new subscriber starts in
//! catch-up mode: live messages are held for it while its replay is read, then
//! [`TopicSubs::go_live`] queues the reply, the replay and the held messages in offset order, with
//! no gap and no duplicate, under the same lock that fan-out takes.
//!
//! A fan-out may write straight to the sockets of idle plain-TCP subscribers
//! ([`Subscriber::send`]) rather than wake each one's task: [`super::direct`] decides when, and
//! to which of them.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::direct::{Cadence, DirectWrites};
use super::frames::Frames;
use super::outbox::{Sent, Subscriber};
use super::probe::{Armed, Probe};
use crate::protocol::{Codec, Message, Position};

/// The subscribers of one topic on this node.
#[derive(Default)]
pub struct TopicSubs {
    /// Subscriber list and index. Held while fanning out one message; never across `.await`.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
    /// Connection id to its place in `entries`.
    index: HashMap<u64, usize>,
    /// When its fan-outs come, for [`DirectWrites`].
    cadence: Cadence,
}

struct Entry {
    sub: Arc<Subscriber>,
    mode: Mode,
}

enum Mode {
    /// Messages at or before `floor` (in its epoch) were already queued; later ones go out.
    Live { floor: Option<Position> },
    /// Waiting for its replay; live messages are held here, bounded by the outbox limit.
    CatchingUp { held: Vec<Message>, bytes: usize },
}

/// Whether a message lies after a position.
fn after(m: &Message, p: &Option<Position>) -> bool {
    match p {
        None => true,
        Some(p) => m.offset > p.offset || *m.epoch != *p.epoch,
    }
}

impl TopicSubs {
    /// Number of local subscribers.
    pub fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// True when nobody here subscribes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `sub` in catch-up mode. Returns false if it was already subscribed.
    pub fn add(&self, sub: &Arc<Subscriber>) -> bool {
        let mut s = self.state.lock();
        if s.index.contains_key(&sub.id) {
            return false;
        }
        let at = s.entries.len();
        s.index.insert(sub.id, at);
        s.entries.push(Entry {
            sub: sub.clone(),
            mode: Mode::CatchingUp {
                held: Vec::new(),
                bytes: 0,
            },
        });
        true
    }

    /// Removes the subscriber `id`. Returns false if it was not subscribed.
    pub fn remove(&self, id: u64) -> bool {
        let mut s = self.state.lock();
        let Some(at) = s.index.remove(&id) else {
            return false;
        };
        s.entries.swap_remove(at);
        if at < s.entries.len() {
            let moved = s.entries[at].sub.id;
            s.index.insert(moved, at);
        }
        true
    }

    /// Ends catch-up for subscriber `id`: queues `first` (the `ok`, if any), then `replay`, then
    /// the held messages that come after it, and from then on delivers messages after the last
    /// one queued (or after `start` when nothing was). Returns false if `id` is not here.
    pub fn go_live(&self, id: u64, start: Option<Position>) -> bool {
        let mut s = self.state.lock();
        let Some(&at) = s.index.get(&id) else {
            return false;
        };
        let entry = &mut s.entries[at];
        let held = match &mut entry.mode {
            Mode::CatchingUp { held, .. } => std::mem::take(held),
            Mode::Live { .. } => return true,
        };
        let sub = &entry.sub;
        let mut floor = start;
        for m in held.iter() {
            if after(m, &floor) {
                sub.push(sub.codec.msg(m));
                floor = Some(Position {
                    offset: m.offset,
                    epoch: m.epoch.clone(),
                });
            }
        }
        entry.mode = Mode::Live { floor };
        true
    }

    /// Queues a frame made by `make` (once per codec in use) to every subscriber; compressed
    /// (once per codec) for those that negotiated permessage-deflate when its payload has
    /// `min_deflate` bytes or more.
    /// Some subscribers may be written to directly (see the module's note).
    pub fn broadcast(
        &self,
        make: impl Fn(Codec) -> Bytes,
        min_deflate: usize,
        direct: &DirectWrites,
    ) -> usize {
        let mut frames = Frames::new(make, min_deflate, None);
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let plan = direct.plan(s.entries.len(), &mut s.cadence);
        let direct_from = plan.direct_from;
        let mut n = 0;
        for (i, e) in s.entries.iter().enumerate() {
            let frame = frames.get(&e.sub).clone();
            let sent = if i >= direct_from {
                e.sub.send(frame)
            } else if e.sub.push(frame) {
                Sent::Queued
            } else {
                Sent::Dropped
            };
            if sent != Sent::Dropped {
                n += 1;
            }
        }
        direct.done(plan);
        n
    }

    /// Asks every subscriber to close with `code`; returns how many were asked.
    pub fn close_all(&self, code: crate::protocol::CloseCode) -> usize {
        let s = self.state.lock();
        for e in &s.entries {
            e.sub.outbox.close(code);
        }
        s.entries.len()
    }

    /// Fans `m` out to every subscriber: encoded once per codec in use, and compressed once per
    /// codec for the subscribers that negotiated permessage-deflate when its payload has
    /// `min_deflate` bytes or more. Returns deliveries made (queued or written). When the
    /// fan-out is `timed`, the probe learns each encoding before it is queued anywhere, and of
    /// each direct write as it is made. Some subscribers may be written to directly (see the
    /// module's note).
    pub fn deliver(
        &self,
        m: &Message,
        timed: Option<(&Probe, Armed)>,
        min_deflate: usize,
        direct: &DirectWrites,
    ) -> usize {
        let mut frames = Frames::new(|codec: Codec| codec.msg(m), min_deflate, timed);
        let mut n = 0;
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let plan = direct.plan(s.entries.len(), &mut s.cadence);
        let direct_from = plan.direct_from;
        for (i, e) in s.entries.iter_mut().enumerate() {
            match &mut e.mode {
                Mode::Live { floor } => {
                    if floor.is_some() {
                        if !after(m, floor) {
                            continue;
                        }
                        // Past the catch-up boundary: no more comparisons needed.
                        *floor = None;
                    }
                    let frame = frames.get(&e.sub).clone();
                    if i < direct_from {
                        if e.sub.push(frame) {
                            n += 1;
                        }
                        continue;
                    }
                    match e.sub.send(frame) {
                        Sent::Dropped => {}
                        Sent::Queued => n += 1,
                        Sent::Written => {
                            n += 1;
                            if let Some((probe, armed)) = timed
                                && let Some(mark) = armed.mark()
                            {
                                probe.written(mark);
                            }
                        }
                    }
                }
                Mode::CatchingUp { held, bytes } => {
                    *bytes += m.data.len() + 64;
                    if *bytes > e.sub.outbox_limit() {
                        e.sub.outbox.close(crate::protocol::CloseCode::SlowConsumer);
                        held.clear();
                    } else {
                        held.push(m.clone());
                    }
                }
            }
        }
        direct.done(plan);
        n
    }
}
