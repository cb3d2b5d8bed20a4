//! The in-process bus, the embedded default: offsets, epochs and bounded history kept in memory,
//! messages handed straight to the sink. History is bounded per topic by count and by age, and
//! node-wide by bytes (`history_bytes`): past the budget the globally oldest entries go first,
//! whatever their topic, so that a busy topic cannot keep an idle one's recent history nor the
//! other way round, and a resume from a dropped offset gets `recovered: false`. An epoch is
//! fresh per process (and per topic log), so a client that resumes across a restart gets
//! `recovered: false` rather than a wrong replay.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;

use super::{
    BoxFuture, BusError, ConnCounts, Direct, Directs, Disconnect, Messages, Presence,
    PresenceEvent, REPLAY_PAGE, Replay, Sinks,
};
use crate::protocol::{Message, Position, Topic};

/// A presence topic's members: connection to user.
type Members = std::collections::BTreeMap<Arc<str>, Arc<str>>;

/// One topic's log.
struct Log {
    epoch: Arc<str>,
    /// Offset of the last message (0 before the first).
    last: u64,
    /// Recent messages, oldest first, with the time they were published.
    ring: VecDeque<(Message, Instant)>,
}

/// What one history entry counts for beyond its payload (the message, its topic and epoch
/// handles, its time, its place in the node-wide order).
const ENTRY_OVERHEAD: usize = 128;

fn entry_bytes(m: &Message) -> usize {
    m.data.len() + ENTRY_OVERHEAD
}

/// One entry's place in the node-wide order of history, oldest first.
struct Stamp {
    /// Its topic's log (a log dropped by [`LocalBus::sweep`] has nothing left to drop).
    log: Weak<Mutex<Log>>,
    offset: u64,
}

/// The bytes and entries of every topic's history, and their publish order.
#[derive(Default)]
struct Budget {
    /// Bytes of the entries in every ring ([`entry_bytes`]).
    used: AtomicUsize,
    /// Entries in every ring.
    entries: AtomicUsize,
    /// Every entry in publish order; entries trimmed by count or age leave their stamp behind
    /// until the next compaction. Locked alone, or before a log, never the other way round.
    order: Mutex<VecDeque<Stamp>>,
}

/// The in-process bus.
pub(crate) struct LocalBus {
    /// Topic to its log. References are cloned out before locking the log.
    logs: DashMap<Arc<str>, Arc<Mutex<Log>>>,
    /// Where messages go (the hub); messages are handed over under the topic's log lock, so
    /// delivery follows offsets.
    sinks: Sinks,
    /// Presence per topic: connection to user.
    presence: parking_lot::Mutex<HashMap<Topic, Members>>,
    history_size: usize,
    history_ttl: Duration,
    /// Bytes of history the node keeps, all topics together.
    history_bytes: usize,
    budget: Budget,
    /// Random per process: the prefix of every epoch.
    node_epoch: String,
    generation: AtomicU64,
    /// Open connections per user, for the per-user limit.
    user_conns: parking_lot::Mutex<std::collections::HashMap<Arc<str>, usize>>,
}

impl LocalBus {
    /// A bus keeping `history_size` messages per topic for at most `history_ttl`, and at most
    /// `history_bytes` of history in all.
    pub(crate) fn new(
        sinks: Sinks,
        history_size: usize,
        history_ttl: Duration,
        history_bytes: usize,
    ) -> Result<LocalBus, getrandom::Error> {
        let mut r = [0u8; 4];
        getrandom::fill(&mut r)?;
        Ok(LocalBus {
            logs: DashMap::new(),
            sinks,
            presence: Default::default(),
            history_size,
            history_ttl,
            history_bytes,
            budget: Budget::default(),
            node_epoch: format!("{:08x}", u32::from_le_bytes(r)),
            generation: AtomicU64::new(0),
            user_conns: Default::default(),
        })
    }

    fn log(&self, topic: &Topic) -> Arc<Mutex<Log>> {
        if let Some(l) = self.logs.get(topic.as_arc()) {
            return l.clone();
        }
        self.logs
            .entry(topic.as_arc().clone())
            .or_insert_with(|| {
                let g = self.generation.fetch_add(1, Ordering::Relaxed);
                Arc::new(Mutex::new(Log {
                    epoch: Arc::from(format!("{}{g:x}", self.node_epoch)),
                    last: 0,
                    ring: VecDeque::new(),
                }))
            })
            .clone()
    }

    /// Drops the oldest entry of `log`, counting it off the budget.
    fn pop_front(&self, log: &mut Log) {
        if let Some((m, _)) = log.ring.pop_front() {
            self.budget
                .used
                .fetch_sub(entry_bytes(&m), Ordering::Relaxed);
            self.budget.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn trim(&self, log: &mut Log, now: Instant) {
        while log.ring.len() > self.history_size {
            self.pop_front(log);
        }
        while let Some((_, t)) = log.ring.front() {
            if now.duration_since(*t) > self.history_ttl {
                self.pop_front(log);
            } else {
                break;
            }
        }
    }

    /// Notes a new entry (its log's lock released), then drops the globally oldest entries
    /// while the history is over `history_bytes`.
    fn account(&self, stamp: Stamp) {
        {
            let mut order = self.budget.order.lock();
            order.push_back(stamp);
            let live = self.budget.entries.load(Ordering::Relaxed);
            if order.len() > 2 * live + 1024 {
                self.compact(&mut order);
            }
        }
        while self.budget.used.load(Ordering::Relaxed) > self.history_bytes {
            let Some(oldest) = self.budget.order.lock().pop_front() else {
                break;
            };
            let Some(log) = oldest.log.upgrade() else {
                continue;
            };
            let mut l = log.lock();
            while l
                .ring
                .front()
                .is_some_and(|(m, _)| m.offset <= oldest.offset)
            {
                self.pop_front(&mut l);
            }
        }
    }

    /// Forgets the stamps of entries already gone (trimmed by count or age, or swept).
    fn compact(&self, order: &mut VecDeque<Stamp>) {
        order.retain(|s| {
            s.log.upgrade().is_some_and(|log| {
                let l = log.lock();
                l.ring.front().is_some_and(|(m, _)| m.offset <= s.offset)
            })
        });
    }

    /// Publishes synchronously (the in-process bus never waits).
    pub(crate) fn publish_now(&self, topic: &Topic, data: Bytes) -> Position {
        let log = self.log(topic);
        let mut l = log.lock();
        l.last += 1;
        let m = Message {
            topic: topic.clone(),
            offset: l.last,
            epoch: l.epoch.clone(),
            data,
        };
        (self.sinks.messages)(&m);
        let pos = Position {
            offset: m.offset,
            epoch: m.epoch.clone(),
        };
        let now = Instant::now();
        let kept = self.history_size > 0;
        if kept {
            self.budget
                .used
                .fetch_add(entry_bytes(&m), Ordering::Relaxed);
            self.budget.entries.fetch_add(1, Ordering::Relaxed);
            l.ring.push_back((m, now));
        }
        self.trim(&mut l, now);
        drop(l);
        if kept {
            self.account(Stamp {
                log: Arc::downgrade(&log),
                offset: pos.offset,
            });
        }
        pos
    }

    /// The replay for `since` (its first [`REPLAY_PAGE`]), synchronously.
    pub(crate) fn replay_now(&self, topic: &Topic, since: Option<&Position>) -> Replay {
        let log = self.log(topic);
        let mut l = log.lock();
        self.trim(&mut l, Instant::now());
        let latest = Position {
            offset: l.last,
            epoch: l.epoch.clone(),
        };
        let messages = since.and_then(|s| page_after(&l, s));
        Replay { latest, messages }
    }

    /// Drops the logs whose history has aged out entirely, so topics used once do not
    /// accumulate. A later publish to such a topic starts a new epoch.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        self.logs.retain(|_, log| {
            let mut l = log.lock();
            self.trim(&mut l, now);
            !l.ring.is_empty()
        });
    }
}

/// At most [`REPLAY_PAGE`] messages of `l` after `s`; `None` unless they follow `s` exactly.
fn page_after(l: &Log, s: &Position) -> Option<Vec<Message>> {
    if *s.epoch != *l.epoch || s.offset > l.last {
        return None;
    }
    let first_kept = l.ring.front().map_or(l.last + 1, |(m, _)| m.offset);
    if s.offset + 1 < first_kept {
        return None;
    }
    // Offsets in the ring are consecutive: the first one after `s` is found by subtraction.
    let skip = usize::try_from((s.offset + 1).saturating_sub(first_kept)).ok()?;
    Some(
        l.ring
            .iter()
            .skip(skip)
            .take(REPLAY_PAGE)
            .map(|(m, _)| m.clone())
            .collect(),
    )
}

impl Messages for LocalBus {
    fn publish(&self, topic: &Topic, data: Bytes) -> BoxFuture<'_, Result<Position, BusError>> {
        let p = self.publish_now(topic, data);
        Box::pin(std::future::ready(Ok(p)))
    }

    fn replay(
        &self,
        topic: &Topic,
        since: Option<&Position>,
    ) -> BoxFuture<'_, Result<Replay, BusError>> {
        let r = self.replay_now(topic, since);
        Box::pin(std::future::ready(Ok(r)))
    }

    fn replay_more(
        &self,
        topic: &Topic,
        after: &Position,
    ) -> BoxFuture<'_, Result<Option<Vec<Message>>, BusError>> {
        let log = self.logs.get(topic.as_arc()).map(|l| l.clone());
        let page = log.and_then(|log| {
            let mut l = log.lock();
            self.trim(&mut l, Instant::now());
            page_after(&l, after)
        });
        Box::pin(std::future::ready(Ok(page)))
    }

    fn is_ready(&self) -> bool {
        true
    }
}

impl Directs for LocalBus {
    fn publish_direct(&self, direct: Direct) -> BoxFuture<'_, Result<(), BusError>> {
        (self.sinks.direct)(&direct);
        Box::pin(std::future::ready(Ok(())))
    }

    fn disconnect(&self, order: Disconnect) -> BoxFuture<'_, Result<usize, BusError>> {
        let held = (self.sinks.disconnect)(&order);
        Box::pin(std::future::ready(Ok(usize::from(held))))
    }
}

impl Presence for LocalBus {
    fn presence_join(
        &self,
        topic: &Topic,
        conn: &str,
        user: &str,
    ) -> BoxFuture<'_, Result<(), BusError>> {
        let (conn, user): (Arc<str>, Arc<str>) = (Arc::from(conn), Arc::from(user));
        let mut p = self.presence.lock();
        let members = p.entry(topic.clone()).or_default();
        if members.insert(conn.clone(), user.clone()).is_none() {
            let e = PresenceEvent {
                topic: topic.clone(),
                join: true,
                conn,
                user,
            };
            (self.sinks.presence)(&e);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn presence_leave(
        &self,
        topic: &Topic,
        conn: &str,
        _user: &str,
    ) -> BoxFuture<'_, Result<(), BusError>> {
        let mut p = self.presence.lock();
        if let Some(members) = p.get_mut(topic) {
            if let Some((conn, user)) = members.remove_entry(conn) {
                let e = PresenceEvent {
                    topic: topic.clone(),
                    join: false,
                    conn,
                    user,
                };
                (self.sinks.presence)(&e);
            }
            if members.is_empty() {
                p.remove(topic);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn presence(&self, topic: &Topic) -> BoxFuture<'_, Result<Vec<(String, String)>, BusError>> {
        let list = self
            .presence
            .lock()
            .get(topic)
            .map(|m| {
                m.iter()
                    .map(|(c, u)| (c.to_string(), u.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(list)))
    }
}

impl ConnCounts for LocalBus {
    fn open_conn(
        &self,
        user: &str,
        _conn: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        let mut m = self.user_conns.lock();
        let n = m.entry(Arc::from(user)).or_insert(0);
        let ok = *n < limit;
        if ok {
            *n += 1;
        }
        Box::pin(std::future::ready(Ok(ok)))
    }

    fn close_conn(&self, user: &str, _conn: &str) -> BoxFuture<'_, Result<(), BusError>> {
        let mut m = self.user_conns.lock();
        if let Some(n) = m.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                m.remove(user);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Sink;

    fn bus(size: usize) -> (LocalBus, Arc<Mutex<Vec<u64>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let sink: Sink = Arc::new(move |m: &Message| s.lock().push(m.offset));
        let sinks = Sinks {
            messages: sink,
            direct: Arc::new(|_: &Direct| {}),
            disconnect: Arc::new(|_: &Disconnect| false),
            presence: Arc::new(|_: &PresenceEvent| {}),
            lost: Arc::new(|_: &Topic| {}),
        };
        (
            LocalBus::new(sinks, size, Duration::from_secs(60), usize::MAX).expect("random bytes"),
            seen,
        )
    }

    #[test]
    fn offsets_increase_and_reach_the_sink_in_order() {
        let (b, seen) = bus(10);
        let t = Topic::parse("a").unwrap();
        for _ in 0..3 {
            b.publish_now(&t, Bytes::from_static(b"1"));
        }
        assert_eq!(*seen.lock(), vec![1, 2, 3]);
    }

    #[test]
    fn replay_is_exact_or_refused() {
        let (b, _) = bus(3);
        let t = Topic::parse("a").unwrap();
        let mut epoch = None;
        for _ in 0..5 {
            epoch = Some(b.publish_now(&t, Bytes::from_static(b"1")).epoch);
        }
        let epoch = epoch.unwrap();
        let at = |offset| Position {
            offset,
            epoch: epoch.clone(),
        };
        let offs = |r: Replay| {
            r.messages
                .map(|v| v.iter().map(|m| m.offset).collect::<Vec<_>>())
        };
        assert_eq!(offs(b.replay_now(&t, Some(&at(3)))), Some(vec![4, 5]));
        assert_eq!(offs(b.replay_now(&t, Some(&at(2)))), Some(vec![3, 4, 5]));
        assert_eq!(offs(b.replay_now(&t, Some(&at(5)))), Some(vec![]));
        // History (3 messages) no longer reaches back to offset 2.
        assert_eq!(offs(b.replay_now(&t, Some(&at(1)))), None);
        assert_eq!(offs(b.replay_now(&t, Some(&at(6)))), None);
        let other = Position {
            offset: 4,
            epoch: Arc::from("other"),
        };
        assert_eq!(offs(b.replay_now(&t, Some(&other))), None);
        assert_eq!(b.replay_now(&t, None).latest.offset, 5);
    }

    #[test]
    fn past_history_bytes_the_globally_oldest_entries_go_first() {
        let (sink_bus, _) = bus(100);
        let entry = 100 + ENTRY_OVERHEAD;
        let b = LocalBus::new(
            sink_bus.sinks.clone(),
            100,
            Duration::from_secs(60),
            10 * entry,
        )
        .expect("random bytes");
        let (a, busy) = (Topic::parse("a").unwrap(), Topic::parse("b").unwrap());
        let data = Bytes::from(vec![b'1'; 100]);
        let ea = (0..5).map(|_| b.publish_now(&a, data.clone()).epoch).last();
        let eb = (0..5)
            .map(|_| b.publish_now(&busy, data.clone()).epoch)
            .last();
        let at = |e: &Option<Arc<str>>, offset| Position {
            offset,
            epoch: e.clone().unwrap(),
        };
        let offs = |r: Replay| {
            r.messages
                .map(|v| v.iter().map(|m| m.offset).collect::<Vec<_>>())
        };
        assert_eq!(
            offs(b.replay_now(&a, Some(&at(&ea, 0)))),
            Some(vec![1, 2, 3, 4, 5])
        );
        // One more entry on `b`: `a`'s oldest goes, not `b`'s.
        b.publish_now(&busy, data.clone());
        assert_eq!(offs(b.replay_now(&a, Some(&at(&ea, 0)))), None);
        assert_eq!(
            offs(b.replay_now(&a, Some(&at(&ea, 1)))),
            Some(vec![2, 3, 4, 5])
        );
        assert_eq!(
            offs(b.replay_now(&busy, Some(&at(&eb, 0)))).unwrap().len(),
            6
        );
        // Five more: all of `a` is gone, then `b`'s own oldest.
        for _ in 0..5 {
            b.publish_now(&busy, data.clone());
        }
        assert_eq!(offs(b.replay_now(&a, Some(&at(&ea, 4)))), None);
        assert_eq!(offs(b.replay_now(&a, Some(&at(&ea, 5)))), Some(vec![]));
        assert_eq!(offs(b.replay_now(&busy, Some(&at(&eb, 0)))), None);
        assert_eq!(
            offs(b.replay_now(&busy, Some(&at(&eb, 1)))).unwrap().len(),
            10
        );
        assert_eq!(b.budget.used.load(Ordering::Relaxed), 10 * entry);
    }

    #[test]
    fn stamps_of_entries_trimmed_by_count_do_not_pile_up() {
        let (b, _) = bus(3);
        let t = Topic::parse("a").unwrap();
        for _ in 0..10_000 {
            b.publish_now(&t, Bytes::from_static(b"1"));
        }
        assert!(b.budget.order.lock().len() <= 2 * 3 + 1025);
        assert_eq!(b.budget.entries.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_replay_comes_in_pages_that_follow_each_other_exactly() {
        let (b, _) = bus(2500);
        let t = Topic::parse("a").unwrap();
        let mut epoch = None;
        for _ in 0..2500 {
            epoch = Some(b.publish_now(&t, Bytes::from_static(b"1")).epoch);
        }
        let at = |offset| Position {
            offset,
            epoch: epoch.clone().unwrap(),
        };
        let offs = |v: Vec<Message>| v.iter().map(|m| m.offset).collect::<Vec<_>>();
        let first = b.replay_now(&t, Some(&at(0))).messages.unwrap();
        assert_eq!(offs(first), (1..=1000).collect::<Vec<_>>());
        let page = b.replay_more(&t, &at(1000)).await.unwrap().unwrap();
        assert_eq!(offs(page), (1001..=2000).collect::<Vec<_>>());
        let page = b.replay_more(&t, &at(2000)).await.unwrap().unwrap();
        assert_eq!(offs(page), (2001..=2500).collect::<Vec<_>>());
        assert!(
            b.replay_more(&t, &at(2500))
                .await
                .unwrap()
                .unwrap()
                .is_empty()
        );
        let other = Position {
            offset: 1000,
            epoch: Arc::from("other"),
        };
        assert!(b.replay_more(&t, &other).await.unwrap().is_none());
    }
}
