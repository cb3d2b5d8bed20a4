//! What the Redis bus has delivered of each watched topic, and the live messages it holds while
//! a gap is filled: every message Redis accepted reaches the hub once, in order, or its topic is
//! given up (the `lost` sink closes its local subscribers with 1012). Pure state, no I/O: the
//! push callback and the monitor drive it under one plain mutex, never held across `.await`.

use std::collections::HashMap;
use std::sync::Arc;

use super::Sinks;
use crate::protocol::{Message, Position, Topic};

/// Bytes of live messages held, all topics of the node together, while gaps are filled: a topic
/// whose next held message would pass it is given up (its subscribers closed with 1012).
pub(crate) const HOLD_BYTES: usize = 16 << 20;

/// What a held message counts for beyond its payload.
const HELD_OVERHEAD: usize = 64;

/// What the bus has delivered of one watched topic.
#[derive(Default)]
pub(super) struct Delivered {
    /// The last position handed to the sink.
    pub(super) last: Option<Position>,
    /// Before anything was handed to the sink: the lowest latest position read for a local
    /// subscriber's replay, where filling a gap starts (every local subscriber has what precedes).
    pub(super) base: Option<Position>,
    /// While a gap is being filled: live messages held until the fill is done.
    pub(super) held: Option<Vec<Message>>,
    /// The bytes of `held`, as counted against [`HOLD_BYTES`].
    pub(super) held_bytes: usize,
}

/// Per-topic delivery state, and the bytes held across topics.
#[derive(Default)]
pub(super) struct Deliveries {
    pub(super) topics: HashMap<Topic, Delivered>,
    pub(super) held_bytes: usize,
}

impl Deliveries {
    /// Starts holding live messages of every watched topic (a gap may be opening).
    pub(super) fn hold_all(&mut self) {
        for d in self.topics.values_mut() {
            d.held.get_or_insert_with(Vec::new);
        }
    }

    /// Forgets what was delivered of `topic` and what is held for it, and has the sink close its
    /// local subscribers: they resume elsewhere with `since`. Delivery starts afresh.
    pub(super) fn lose(&mut self, sinks: &Sinks, topic: &Topic) {
        if let Some(d) = self.topics.get_mut(topic) {
            self.held_bytes -= d.held_bytes;
            *d = Delivered::default();
            (sinks.lost)(topic);
        }
    }

    /// Ends the hold of `topic`: hands `missed` (read from its history) and then the held
    /// messages to the sink, without duplicates.
    pub(super) fn release(&mut self, sinks: &Sinks, topic: &Topic, missed: Vec<Message>) {
        let Some(d) = self.topics.get_mut(topic) else {
            return;
        };
        let held = d.held.take().unwrap_or_default();
        self.held_bytes -= std::mem::take(&mut d.held_bytes);
        for m in missed.into_iter().chain(held) {
            self.deliver(sinks, m);
        }
    }

    /// Hands `m` to the sink unless it was delivered already; holds it while its topic is
    /// filling (giving the topic up when the hold would pass [`HOLD_BYTES`]).
    pub(super) fn deliver(&mut self, sinks: &Sinks, m: Message) {
        let Some(d) = self.topics.get_mut(&m.topic) else {
            return; // no longer watched
        };
        if let Some(held) = &mut d.held {
            let size = m.data.len() + HELD_OVERHEAD;
            if self.held_bytes + size > HOLD_BYTES {
                tracing::warn!(
                    "more than {HOLD_BYTES} bytes held while filling gaps: giving {:?} up",
                    m.topic
                );
                let topic = m.topic.clone();
                self.lose(sinks, &topic);
                return;
            }
            held.push(m);
            d.held_bytes += size;
            self.held_bytes += size;
            return;
        }
        let fresh = match &d.last {
            None => true,
            Some(p) => *p.epoch != *m.epoch || m.offset > p.offset,
        };
        if fresh {
            (sinks.messages)(&m);
            d.last = Some(Position {
                offset: m.offset,
                epoch: m.epoch.clone(),
            });
        }
    }
}

/// Per-topic delivery state, shared with the push callback. A plain mutex: held only while
/// handing messages to the sinks, never across `.await`.
pub(super) type DeliveryState = Arc<parking_lot::Mutex<Deliveries>>;
