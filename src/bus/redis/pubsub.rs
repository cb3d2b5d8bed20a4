//! The Redis bus's own pub/sub connection (RESP3): built and rebuilt here whatever error a
//! reconnect meets, subscribed to exactly the channels watched, and what it does with each push
//! (messages to the hub through [`super::deliveries`], presence changes, directed messages and
//! disconnect orders to their sinks, the liveness probe to its counter, a drop to the monitor).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};

use super::parse::{UserPush, parse_presence, parse_push, parse_user};
use super::{RedisBus, unavailable};
use crate::bus::BusError;

/// How long building a pub/sub connection (connect, handshake, SUBSCRIBE) may take in all.
const PUBSUB_SETUP: Duration = Duration::from_secs(3);

impl RedisBus {
    /// What the pub/sub connection of generation `generation` does with each push: messages to
    /// the sinks, the probe to its counter, its drop to [`RedisBus::broke`].
    pub(super) fn on_push(bus: &Weak<RedisBus>, generation: u64, p: PushInfo) {
        let Some(bus) = bus.upgrade() else {
            return;
        };
        if bus.pubsub_gen.load(Ordering::Acquire) != generation {
            return; // a replaced connection's
        }
        match p.kind {
            PushKind::Message => {
                if let Some(e) = parse_presence(&bus.prefix, &p.data) {
                    (bus.sinks.presence)(&e);
                } else if let Some(m) = parse_push(&bus.prefix, &p.data) {
                    bus.state.lock().deliver(&bus.sinks, m);
                } else if let Some(u) = parse_user(&bus.prefix, &p.data) {
                    match u {
                        UserPush::Direct(d) => (bus.sinks.direct)(&d),
                        UserPush::Disconnect(o) => {
                            (bus.sinks.disconnect)(&o);
                        }
                    }
                } else if let (Some(Value::BulkString(ch)), Some(Value::BulkString(n))) =
                    (p.data.first(), p.data.get(1))
                    && ch == bus.probe_channel.as_bytes()
                    && let Some(n) = std::str::from_utf8(n).ok().and_then(|n| n.parse().ok())
                {
                    // The round trip of the latest probe (an older one's send time is gone).
                    if n == bus.probe_sent.load(Ordering::Relaxed) {
                        let sent = bus.probe_sent_at.load(Ordering::Relaxed);
                        let rtt = bus.now_ns().saturating_sub(sent);
                        bus.metrics.probe_rtt.record(rtt as f64 / 1e9);
                    }
                    bus.probe_seen.fetch_max(n, Ordering::Relaxed);
                }
            }
            PushKind::Disconnection => {
                bus.broke("Redis pub/sub connection lost");
                bus.wake.notify_one();
            }
            _ => {}
        }
    }

    /// The pub/sub path is broken: not ready, hold live messages (a gap is opening, and a newer
    /// message must not overtake the missing ones), and have the monitor rebuild it.
    pub(super) fn broke(&self, why: &str) {
        if !self.pubsub_broken.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                redis = "not_ready",
                "{why}; reconnecting (/readyz answers 503)"
            );
        }
        self.set_ready(false);
        self.state.lock().hold_all();
    }

    /// Builds a new pub/sub connection subscribed to the probe and every watched channel, and
    /// makes it the current one (live messages of watched topics are held from now on: the
    /// monitor fills their gaps next). Bounded by [`PUBSUB_SETUP`].
    pub(super) async fn open_pubsub(self: &Arc<Self>) -> redis::RedisResult<()> {
        let watched = self.watched.lock().await;
        // From here, pushes of the previous connection are ignored, and this one's are held.
        let generation = self.pubsub_gen.fetch_add(1, Ordering::AcqRel) + 1;
        self.state.lock().hold_all();
        let weak = Arc::downgrade(self);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_push_sender(move |p: PushInfo| -> Result<(), ()> {
                RedisBus::on_push(&weak, generation, p);
                Ok(())
            });
        let mut channels: Vec<&str> = watched.keys().map(String::as_str).collect();
        channels.push(&self.probe_channel);
        let setup = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            // From here a drop is this connection's: its push sets the flag again.
            self.pubsub_broken.store(false, Ordering::Release);
            conn.subscribe(&channels).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let built = tokio::time::timeout(PUBSUB_SETUP, setup)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "building the pub/sub connection timed out",
                )))
            });
        match built {
            Ok(conn) => {
                *self.pubsub.lock() = Some(conn);
                Ok(())
            }
            Err(e) => {
                self.pubsub_broken.store(true, Ordering::Release);
                Err(e)
            }
        }
    }

    /// The current pub/sub connection, unless it is broken.
    pub(super) fn pubsub_conn(&self) -> Result<MultiplexedConnection, BusError> {
        let conn = if self.pubsub_broken.load(Ordering::Acquire) {
            None
        } else {
            self.pubsub.lock().clone()
        };
        conn.ok_or_else(|| BusError::Unavailable("Redis pub/sub is reconnecting".into()))
    }

    /// A subscription change failed: when it was the connection's fault, rebuild it.
    pub(super) fn pubsub_failed(&self, e: redis::RedisError) -> BusError {
        if !matches!(e.kind(), redis::ErrorKind::Server(_)) {
            self.broke(&format!("Redis pub/sub command failed ({e})"));
            self.wake.notify_one();
        }
        unavailable(e)
    }

    /// One more local watcher of `ch`: SUBSCRIBE for the first.
    pub(super) async fn subscribe_counted(&self, ch: String) -> Result<(), BusError> {
        self.change(ch, true).await.map(|_| ())
    }

    /// One local watcher of `ch` fewer: UNSUBSCRIBE after the last. True when it was the last
    /// (even if UNSUBSCRIBE failed: a rebuilt connection leaves the channel out, and messages
    /// of unwatched channels are dropped).
    pub(super) async fn unsubscribe_counted(&self, ch: String) -> bool {
        self.change(ch, false).await.unwrap_or(false)
    }

    /// Queues one change of the watched channels and waits until it is applied, by this task
    /// or by whichever holds `watched` first: the holder applies every change queued so far
    /// together, with one SUBSCRIBE and one UNSUBSCRIBE for all of them (a group commit). A storm
    /// of new users therefore costs one round trip per batch, not one per user in a queue.
    async fn change(&self, ch: String, subscribe: bool) -> Result<bool, BusError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.changes.lock().push(Change {
            ch,
            subscribe,
            done,
        });
        {
            let mut watched = self.watched.lock().await;
            // Empty when another holder took ours with its batch (and has answered it).
            let batch = std::mem::take(&mut *self.changes.lock());
            if !batch.is_empty() {
                self.apply(&mut watched, batch).await;
            }
        }
        answer
            .await
            .unwrap_or_else(|_| Err(BusError::Unavailable("subscription change dropped".into())))
    }

    /// Applies `batch` in order to the watch counts, sends what changed on the pub/sub
    /// connection (one SUBSCRIBE, one UNSUBSCRIBE, pipelined) and answers every change. A
    /// channel watched and unwatched within one batch costs no command. When SUBSCRIBE fails,
    /// each channel it named is forgotten and its new watchers get the error.
    async fn apply(&self, watched: &mut HashMap<String, usize>, batch: Vec<Change>) {
        // Sets: a batch may hold thousands of changes (a node's users all leaving at once).
        let mut subscribe: HashSet<&str> = HashSet::new();
        let mut unsubscribe: HashSet<&str> = HashSet::new();
        let mut last = vec![false; batch.len()];
        for (i, c) in batch.iter().enumerate() {
            let ch = c.ch.as_str();
            if c.subscribe {
                let n = watched.entry(c.ch.clone()).or_insert(0);
                if *n == 0 && !unsubscribe.remove(ch) {
                    subscribe.insert(ch);
                }
                *n += 1;
            } else if let Some(n) = watched.get_mut(ch) {
                *n -= 1;
                if *n == 0 {
                    watched.remove(ch);
                    last[i] = true;
                    if !subscribe.remove(ch) {
                        unsubscribe.insert(ch);
                    }
                }
            }
        }
        let (subscribing, unsubscribing): (Vec<&str>, Vec<&str>) = (
            subscribe.iter().copied().collect(),
            unsubscribe.iter().copied().collect(),
        );
        let conn = self.pubsub_conn();
        // Why SUBSCRIBE failed (the cause's words, for each watcher's error).
        let mut failed: Option<String> = None;
        match conn {
            Ok(conn) => {
                let (mut a, mut b) = (conn.clone(), conn);
                let (s, u) = tokio::join!(
                    async {
                        if subscribing.is_empty() {
                            return Ok(());
                        }
                        a.subscribe(&subscribing).await
                    },
                    async {
                        if unsubscribing.is_empty() {
                            return Ok(());
                        }
                        b.unsubscribe(&unsubscribing).await
                    }
                );
                if let Err(e) = s {
                    failed = Some(e.to_string());
                    self.pubsub_failed(e);
                }
                if let Err(e) = u {
                    let e = self.pubsub_failed(e);
                    tracing::debug!(error = ?e, "UNSUBSCRIBE of {} channels failed", unsubscribe.len());
                }
            }
            Err(e) if !subscribe.is_empty() => {
                let cause = std::error::Error::source(&e).map(|c| c.to_string());
                failed = Some(cause.unwrap_or_else(|| e.to_string()));
            }
            Err(_) => {}
        }
        if failed.is_some() {
            for ch in &subscribe {
                watched.remove(*ch);
            }
        }
        let failed_subscribe = |ch: &str| failed.is_some() && subscribe.contains(ch);
        let answers: Vec<_> = batch
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if c.subscribe && failed_subscribe(&c.ch) {
                    let why = failed.clone().unwrap_or_default();
                    Err(BusError::Unavailable(why.into()))
                } else {
                    Ok(last[i])
                }
            })
            .collect();
        for (c, a) in batch.into_iter().zip(answers) {
            let _ = c.done.send(a);
        }
    }
}

/// A change of the watched channels waiting to be applied ([`RedisBus::change`]).
pub(super) struct Change {
    ch: String,
    /// One watcher more (true) or fewer.
    subscribe: bool,
    /// The outcome: for an unsubscribe, whether it was the channel's last watcher.
    done: tokio::sync::oneshot::Sender<Result<bool, BusError>>,
}
