//! The Redis bus: nodes share topics through one Redis. No Redis type leaves `bus/redis/`: the
//! Redis ticket store (`tickets.rs`) and event log (`events.rs`) live here too, built by the bus
//! ([`RedisBus::ticket_store`], [`RedisBus::event_log`]) on its command connection.
//!
//! - Writes go through the function library in `herald.lua` (loaded at start when missing or
//!   older): `herald_publish` appends to the topic's stream and publishes the envelope in one
//!   atomic step, so offsets, history and live delivery never disagree. Backends call the same
//!   functions (`proto/redis.md`).
//! - Publishing uses a multiplexed connection: concurrent publishes are pipelined, with no round
//!   trip per message on the delivery path. It is shared with the Redis ticket store and the
//!   event log ([`Commands`]); when a command finds it unusable, the monitor checks it every half
//!   second and rebuilds it from scratch when the check fails, whatever error its own reconnect
//!   met.
//! - Live messages come from one RESP3 pub/sub connection that this module builds and rebuilds
//!   itself (not a `ConnectionManager`: when its reconnect meets an error other than I/O, such as
//!   a refused authentication, the manager keeps that failed connection for good, so it neither
//!   reconnects nor resubscribes again). The node subscribes to a topic's channel while it has local
//!   subscribers (one Redis subscription per topic per node), and every message goes from the
//!   push callback straight into the sink (the hub).
//! - What goes to one user, directed messages and disconnect orders, travels on the user's
//!   channel, which a node subscribes to while it holds a connection of the user (`users.rs`).
//! - A subscriber's replay is read (`herald_history`) after its subscription is live, so the
//!   hub's catch-up merges the two without a gap; a page of [`REPLAY_PAGE`] entries at a time,
//!   each read atomically with the epoch and latest offset and checked to follow the last.
//! - Reading creates nothing in Redis: a topic's keys exist only from its first publish and
//!   expire `history_ttl` after its last (until then it answers epoch `0`).
//! - Faults: pub/sub delivers at most once, so the bus remembers per topic the last offset it
//!   delivered (or, before the first, where its subscribers' replays started). When the pub/sub
//!   connection drops, a subscription change fails on it, or the liveness probe (a message the
//!   node sends itself through Redis every half second) is not back within
//!   [`monitor::PROBE_DEADLINE`], the node turns not-ready and holds live messages. The monitor
//!   then builds a new pub/sub connection (whatever error the previous attempt met), subscribes it
//!   to every watched channel, reloads the library if Redis lost it, and for every watched topic
//!   reads what it missed from the stream and delivers it before the held messages: every message
//!   Redis accepted reaches the hub once, in order.
//! - Metrics (`herald_redis_*`): whether the node is ready (connected), pub/sub rebuilds, the
//!   liveness probe's round trip (timed from its PUBLISH to its push back), and topics filled or
//!   given up after a fault.
//! - A gap that cannot be filled is never skipped: when the history no longer reaches back, the
//!   topic's epoch changed with its new history incomplete, the held messages pass
//!   `deliveries::HOLD_BYTES` (a constant, 16 MiB for all topics of the node together), or the node has
//!   not delivered for [`monitor::SUBSCRIBERS_WAIT`] (a constant, 10 s: Redis away, or its
//!   history unreadable), the topic's delivery state is reset and the `lost` sink closes its local
//!   subscribers with 1012, so that they resume with `since` (an exact replay, or an honest
//!   `recovered: false`). A topic whose epoch changed and whose new history is complete (Redis
//!   restarted empty) is delivered from the new epoch's first offset: its subscribers stay.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use redis::aio::{ConnectionManagerConfig, MultiplexedConnection};
use tokio_util::sync::CancellationToken;

mod commands;
mod deliveries;
mod events;
mod monitor;
pub(crate) mod parse;
mod pubsub;
mod summaries;
mod tickets;
mod users;

use super::{
    BoxFuture, BusError, ConnCounts, Interest, Messages, Presence, REPLAY_PAGE, Replay, Sinks,
};
use crate::metrics::{Metrics, RedisMetrics};
use crate::protocol::{Message, Position, Topic};
pub(crate) use commands::{Commands, fcall};
use deliveries::DeliveryState;
pub(crate) use events::RedisEvents;
use monitor::{monitor, node_probe_id, refresh_conns};
use parse::{channel, user_channel};
pub(crate) use tickets::RedisTicketStore;

/// The library's version: bump it whenever `herald.lua` changes, so that nodes replace an older
/// library in Redis.
pub(crate) const LIBRARY_VERSION: i64 = 7;

/// The epoch `herald_history` answers for a topic without history (never published, or idle
/// past `history_ttl`): reading creates nothing in Redis. Never a real epoch, so a `since` in it
/// is never replayed (`recovered: false`): the history may have come and gone since.
pub(super) const NO_EPOCH: &str = "0";

/// The highest offset a topic can reach in Redis: `herald.lua` counts in Lua numbers (doubles),
/// exact up to 2^53.
pub(crate) const MAX_OFFSET: u64 = 1 << 53;

/// Why the Redis bus could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL is not a Redis URL.
    #[error("bad Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    /// Redis did not answer, or refused a command.
    #[error("Redis at {url}: {source}")]
    Command {
        /// The URL, without credentials.
        url: String,
        /// The cause.
        #[source]
        source: redis::RedisError,
    },
    /// The operating system gave no random bytes (for the node's probe channel).
    #[error("no random bytes from the operating system: {0}")]
    Random(#[from] getrandom::Error),
}

/// What the Redis bus is configured with.
pub(crate) struct Settings<'a> {
    /// `redis://...` or `rediss://...`.
    pub url: &'a str,
    /// Prefix of every key and channel.
    pub prefix: &'a str,
    /// Messages kept per topic (approximately, at least this many).
    pub history_size: usize,
    /// How long a topic's log lives without a publish.
    pub history_ttl: Duration,
    /// How long a killed node's connections keep counting towards the per-user limit.
    pub node_ttl: Duration,
    /// The node's metrics, where the bus registers its own.
    pub metrics: &'a Metrics,
}

/// The bus over Redis.
pub(crate) struct RedisBus {
    /// Publishes and history reads; multiplexed, so concurrent requests are pipelined. Shared
    /// with the ticket store and the event log; the monitor rebuilds it when it stays failed.
    cmd: Commands,
    /// Opens the pub/sub connections.
    client: redis::Client,
    /// The pub/sub connection (RESP3). `None` until the first is built; replaced by the monitor
    /// after a fault. Plain mutex, never held across `.await` (users clone the handle out).
    pubsub: parking_lot::Mutex<Option<MultiplexedConnection>>,
    /// The generation of the current pub/sub connection: pushes of older ones are ignored.
    pubsub_gen: AtomicU64,
    /// True when the pub/sub connection must be rebuilt (it dropped, failed a command, or the
    /// liveness probe was lost); subscription changes fail at once meanwhile.
    pubsub_broken: AtomicBool,
    /// Wakes the monitor when the pub/sub connection drops, so that recovery starts at once.
    wake: tokio::sync::Notify,
    /// Local watchers per channel (a topic's, or a user's): SUBSCRIBE on the first, UNSUBSCRIBE
    /// after the last. An async mutex, held across the round trip, so that subscription changes
    /// never reorder, and a rebuilt connection subscribes to exactly the channels watched. Its
    /// holder applies every change queued in `changes` at once (one round trip per batch).
    watched: tokio::sync::Mutex<HashMap<String, usize>>,
    /// Changes of `watched` waiting for its holder ([`pubsub::Change`]); a plain mutex, held only
    /// to push or to take them all. As many as there are tasks waiting to watch or unwatch.
    changes: parking_lot::Mutex<Vec<pubsub::Change>>,
    prefix: String,
    /// The library source with this node's settings, for (re)loading.
    library: String,
    /// False after the pub/sub connection broke, until it is rebuilt, Redis has the library and
    /// every gap is filled (or given up).
    ready: AtomicBool,
    /// False after a command failed to reach Redis, until the monitor's ping answers: publishes
    /// and replays then fail at once instead of waiting on reconnection attempts.
    reachable: AtomicBool,
    /// What was delivered per watched topic (for deduplication and filling gaps).
    state: DeliveryState,
    /// Where messages go (the hub), and where lost topics are reported.
    sinks: Sinks,
    /// This node's probe channel, and the probe counter last sent and last received back.
    probe_channel: String,
    probe_sent: AtomicU64,
    probe_seen: AtomicU64,
    /// When the last probe was sent, nanoseconds since `epoch`.
    probe_sent_at: AtomicU64,
    epoch: std::time::Instant,
    metrics: RedisMetrics,
    /// This node's open connections per user: refreshed in Redis every third of `node_ttl`, so
    /// that they keep counting towards the per-user limit while this node lives. Plain mutex,
    /// never held across `.await` (the refresh copies it out).
    user_conns: parking_lot::Mutex<HashMap<String, std::collections::HashSet<String>>>,
    /// This node's presence members ("<conn> <user>") per topic, refreshed with the connections.
    /// Plain mutex, never held across `.await`.
    presence_members: parking_lot::Mutex<HashMap<Topic, Vec<String>>>,
    /// How long a connection counts without a refresh (a killed node's, then, stop counting).
    node_ttl: Duration,
}

/// True when `e` says the command connection is unusable, rather than that Redis refused one
/// command: I/O, a timeout, a refused connection, or a login refused when it reconnected.
fn connection_failed(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
}

pub(super) fn unavailable(e: redis::RedisError) -> BusError {
    BusError::Unavailable(Box::new(e))
}

impl RedisBus {
    /// Connects, loads the function library when missing or older, and starts the readiness
    /// monitor (stopped by `stop`).
    pub(crate) async fn connect(
        settings: Settings<'_>,
        sinks: Sinks,
        stop: CancellationToken,
    ) -> Result<Arc<RedisBus>, RedisError> {
        let Settings {
            url,
            prefix,
            history_size,
            history_ttl,
            node_ttl,
            metrics,
        } = settings;
        let metrics = metrics.redis();
        let sinks = monitor::counting_losses(sinks, &metrics);
        let shown = crate::config::redact_url(url);
        let with_resp3 = if url.contains("protocol=") {
            url.to_owned()
        } else if url.contains('?') {
            format!("{url}&protocol=resp3")
        } else {
            format!("{url}?protocol=resp3")
        };
        let client = redis::Client::open(with_resp3).map_err(RedisError::Url)?;
        let err = |source| RedisError::Command {
            url: shown.clone(),
            source,
        };
        // Fail fast while Redis is away (the monitor notices its return); a command never waits
        // long behind reconnection attempts.
        let base = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let cmd = Commands::connect(client.clone(), base).await.map_err(err)?;
        let library = include_str!("herald.lua")
            .replace("__PREFIX__", prefix)
            .replace("__VERSION__", &LIBRARY_VERSION.to_string())
            .replace("__HISTORY_SIZE__", &history_size.to_string())
            .replace(
                "__HISTORY_TTL_MS__",
                &(history_ttl.as_millis().max(1)).to_string(),
            );
        let bus = Arc::new(RedisBus {
            cmd,
            client,
            pubsub: parking_lot::Mutex::new(None),
            pubsub_gen: AtomicU64::new(0),
            pubsub_broken: AtomicBool::new(true),
            wake: tokio::sync::Notify::new(),
            watched: tokio::sync::Mutex::new(HashMap::new()),
            changes: parking_lot::Mutex::new(Vec::new()),
            prefix: prefix.to_owned(),
            library,
            ready: AtomicBool::new(false),
            reachable: AtomicBool::new(true),
            state: DeliveryState::default(),
            sinks,
            probe_channel: format!("{prefix}{{node:{}}}:probe", node_probe_id()?),
            probe_sent: AtomicU64::new(0),
            probe_seen: AtomicU64::new(0),
            probe_sent_at: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            metrics,
            user_conns: Default::default(),
            presence_members: Default::default(),
            node_ttl,
        });
        bus.ensure_library().await.map_err(err)?;
        bus.open_pubsub().await.map_err(err)?;
        bus.set_ready(true);
        tracing::info!(redis = "ready", url = %shown, "connected to Redis");
        tokio::spawn(refresh_conns(bus.clone(), stop.clone()));
        tokio::spawn(monitor(bus.clone(), stop));
        Ok(bus)
    }

    /// The ticket store over this bus's Redis, sharing its command connection (which the
    /// monitor keeps usable), with keys under `prefix`.
    pub(crate) fn ticket_store(&self, prefix: &str) -> RedisTicketStore {
        RedisTicketStore::new(self.cmd.clone(), prefix)
    }

    /// The lifecycle event log over this bus's Redis (the `herald_event*` functions), sharing its
    /// command connection; registered as `node` until `stop`.
    pub(crate) async fn event_log(
        &self,
        node: &str,
        config: crate::config::events::EventsConfig,
        max_len: u64,
        ttl: Duration,
        stop: CancellationToken,
    ) -> Result<Arc<RedisEvents>, crate::lifecycle::LifecycleError> {
        RedisEvents::start(self.cmd.clone(), node, config, max_len, ttl, stop).await
    }

    /// Drops the delivery state of a topic nobody here watches any more.
    fn forget(&self, topic: &Topic) {
        let mut st = self.state.lock();
        if let Some(d) = st.topics.remove(topic) {
            st.held_bytes -= d.held_bytes;
        }
    }

    /// A local subscriber's replay of `topic` ended at `latest` (it gets later messages from the
    /// bus). Until the bus delivers one, a gap is filled from the lowest such position: every
    /// local subscriber has what precedes it.
    fn note_start(&self, topic: &Topic, latest: &Position) {
        let mut st = self.state.lock();
        let Some(d) = st.topics.get_mut(topic) else {
            return;
        };
        if d.last.is_some() {
            return;
        }
        // A start in no epoch (the topic had no history) is the lowest: its subscribers saw nothing.
        let lower = match &d.base {
            Some(b) if *b.epoch == *NO_EPOCH => false,
            Some(b) => {
                *latest.epoch == *NO_EPOCH || *b.epoch != *latest.epoch || latest.offset < b.offset
            }
            None => true,
        };
        if lower {
            d.base = Some(latest.clone());
        }
    }

    /// An error at once while Redis is known to be away, rather than a wait on reconnects.
    fn check_reachable(&self) -> Result<(), BusError> {
        if self.reachable.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(BusError::Unavailable(
                "Redis is unreachable; the node is reconnecting".into(),
            ))
        }
    }

    /// Turns a command's error into a bus error, noting when Redis could not be reached.
    fn failed(&self, e: redis::RedisError) -> BusError {
        if connection_failed(&e) && self.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                redis = "unreachable",
                error = %e,
                "Redis commands fail: unreachable; commands answer `unavailable` at once until it \
                 answers a PING again"
            );
        }
        unavailable(e)
    }

    /// Loads the library unless Redis already has this version or a newer one.
    async fn ensure_library(&self) -> redis::RedisResult<()> {
        let mut c = self.cmd.get();
        let have: redis::RedisResult<i64> = redis::cmd("FCALL_RO")
            .arg("herald_version")
            .arg(0)
            .query_async(&mut c)
            .await;
        if matches!(have, Ok(v) if v >= LIBRARY_VERSION) {
            return Ok(());
        }
        let _: String = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(&self.library)
            .query_async(&mut c)
            .await?;
        tracing::info!("loaded the herald function library, version {LIBRARY_VERSION}");
        Ok(())
    }

    /// The topic's epoch, latest offset, first offset kept, and the entries after `after`.
    /// An `after` past [`MAX_OFFSET`] reads no entries: no topic reaches it, so the caller finds
    /// it beyond the latest (`recovered: false`).
    /// At most [`REPLAY_PAGE`] entries.
    async fn history(&self, topic: &Topic, after: Option<u64>) -> Result<Vec<Value>, BusError> {
        let mut c = self.cmd.get();
        let after = after.filter(|a| *a <= MAX_OFFSET);
        fcall("herald_history", topic.as_str())
            .arg(after.map(|a| a.to_string()).unwrap_or_default())
            .arg(REPLAY_PAGE)
            .query_async(&mut c)
            .await
            .map_err(|e| self.failed(e))
    }
}

impl Messages for RedisBus {
    fn publish(&self, topic: &Topic, data: Bytes) -> BoxFuture<'_, Result<Position, BusError>> {
        let mut c = self.cmd.get();
        let topic = topic.as_str().to_owned();
        Box::pin(async move {
            self.check_reachable()?;
            let (offset, epoch): (u64, String) = fcall("herald_publish", topic)
                .arg(&data[..])
                .query_async(&mut c)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(Position {
                offset,
                epoch: Arc::from(epoch),
            })
        })
    }

    fn replay(
        &self,
        topic: &Topic,
        since: Option<&Position>,
    ) -> BoxFuture<'_, Result<Replay, BusError>> {
        let topic = topic.clone();
        let since = since.cloned();
        Box::pin(async move {
            self.check_reachable()?;
            let r = self.replay_unchecked(&topic, since.as_ref()).await?;
            self.note_start(&topic, &r.latest);
            Ok(r)
        })
    }

    fn replay_more(
        &self,
        topic: &Topic,
        after: &Position,
    ) -> BoxFuture<'_, Result<Option<Vec<Message>>, BusError>> {
        let (topic, after) = (topic.clone(), after.clone());
        Box::pin(async move {
            self.check_reachable()?;
            Ok(self.replay_unchecked(&topic, Some(&after)).await?.messages)
        })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

impl Interest for RedisBus {
    fn watch(&self, topic: &Topic) -> BoxFuture<'_, Result<(), BusError>> {
        // Before SUBSCRIBE: a message may arrive as soon as it is confirmed.
        self.state.lock().topics.entry(topic.clone()).or_default();
        let (topic, ch) = (topic.clone(), channel(&self.prefix, topic.as_str()));
        Box::pin(async move {
            let r = self.subscribe_counted(ch.clone()).await;
            if r.is_err() && !self.watched.lock().await.contains_key(&ch) {
                self.forget(&topic);
            }
            r
        })
    }

    fn unwatch(&self, topic: &Topic) -> BoxFuture<'_, Result<(), BusError>> {
        let topic = topic.clone();
        let ch = channel(&self.prefix, topic.as_str());
        Box::pin(async move {
            if self.unsubscribe_counted(ch).await {
                self.forget(&topic);
            }
            Ok(())
        })
    }

    fn watch_user(&self, user: &str) -> BoxFuture<'_, Result<(), BusError>> {
        let ch = user_channel(&self.prefix, user);
        Box::pin(async move { self.subscribe_counted(ch).await })
    }

    fn unwatch_user(&self, user: &str) -> BoxFuture<'_, Result<(), BusError>> {
        let ch = user_channel(&self.prefix, user);
        Box::pin(async move {
            self.unsubscribe_counted(ch).await;
            Ok(())
        })
    }
}

impl Presence for RedisBus {
    fn presence_join(
        &self,
        topic: &Topic,
        conn: &str,
        user: &str,
    ) -> BoxFuture<'_, Result<(), BusError>> {
        let (topic, conn, user) = (topic.clone(), conn.to_owned(), user.to_owned());
        let mut c = self.cmd.get();
        Box::pin(async move {
            self.check_reachable()?;
            let _: i64 = fcall("herald_presence_join", topic.as_str())
                .arg(&conn)
                .arg(&user)
                .arg(self.node_ttl.as_millis() as u64)
                .query_async(&mut c)
                .await
                .map_err(|e| self.failed(e))?;
            self.presence_members
                .lock()
                .entry(topic)
                .or_default()
                .push(format!("{conn} {user}"));
            Ok(())
        })
    }

    fn presence_leave(
        &self,
        topic: &Topic,
        conn: &str,
        user: &str,
    ) -> BoxFuture<'_, Result<(), BusError>> {
        let member = format!("{conn} {user}");
        {
            let mut m = self.presence_members.lock();
            if let Some(v) = m.get_mut(topic) {
                v.retain(|x| *x != member);
                if v.is_empty() {
                    m.remove(topic);
                }
            }
        }
        let (topic, conn, user) = (topic.clone(), conn.to_owned(), user.to_owned());
        let mut c = self.cmd.get();
        Box::pin(async move {
            let _: i64 = fcall("herald_presence_leave", topic.as_str())
                .arg(&conn)
                .arg(&user)
                .query_async(&mut c)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    fn presence(&self, topic: &Topic) -> BoxFuture<'_, Result<Vec<(String, String)>, BusError>> {
        let topic = topic.clone();
        let mut c = self.cmd.get();
        Box::pin(async move {
            self.check_reachable()?;
            let members: Vec<String> = fcall("herald_presence", topic.as_str())
                .query_async(&mut c)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(members
                .into_iter()
                .filter_map(|m| m.split_once(' ').map(|(c, u)| (c.to_owned(), u.to_owned())))
                .collect())
        })
    }
}

impl ConnCounts for RedisBus {
    fn open_conn(
        &self,
        user: &str,
        conn: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        let (user, conn) = (user.to_owned(), conn.to_owned());
        let mut c = self.cmd.get();
        Box::pin(async move {
            self.check_reachable()?;
            let ok: i64 = fcall("herald_conn_open", &user)
                .arg(&conn)
                .arg(limit)
                .arg(self.node_ttl.as_millis() as u64)
                .query_async(&mut c)
                .await
                .map_err(|e| self.failed(e))?;
            if ok == 1 {
                self.user_conns.lock().entry(user).or_default().insert(conn);
            }
            Ok(ok == 1)
        })
    }

    fn close_conn(&self, user: &str, conn: &str) -> BoxFuture<'_, Result<(), BusError>> {
        {
            let mut m = self.user_conns.lock();
            if let Some(v) = m.get_mut(user) {
                // A set: a user's thousandth connection leaves as fast as its first.
                v.remove(conn);
                if v.is_empty() {
                    m.remove(user);
                }
            }
        }
        let (user, conn) = (user.to_owned(), conn.to_owned());
        let mut c = self.cmd.get();
        Box::pin(async move {
            let _: i64 = fcall("herald_conn_close", &user)
                .arg(&conn)
                .query_async(&mut c)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }
}
