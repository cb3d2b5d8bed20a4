//! The Redis bus: nodes share topics through one Redis. No Redis type leaves this file (and the
//! Redis ticket store).
//!
//! - Writes go through the function library in `herald.lua` (loaded at start when missing or
//!   older): `herald_publish` appends to the topic's stream and publishes the envelope in one
//!   atomic step, so offsets, history and live delivery never disagree. Backends call the same
//!   functions (`proto/redis.md`).
//! - Publishing uses a multiplexed connection: concurrent publishes are pipelined, with no round
//!   trip per message on the delivery path.
//! - Live messages come from one RESP3 pub/sub connection. The node subscribes to a topic's
//!   channel while it has local subscribers (one Redis subscription per topic per node), and
//!   every message goes from the push callback straight into the sink (the hub).
//! - A subscriber's replay is read atomically (`herald_history`) after its subscription is live,
//!   so the hub's catch-up merges the two without a gap.
//! - Faults: pub/sub delivers at most once, so the bus remembers the last offset it delivered per
//!   topic. When the pub/sub connection drops (or the liveness probe, a message the node sends
//!   itself through Redis every second, stops coming back), the node turns not-ready; once Redis
//!   answers again it reloads the library if Redis lost it, and for every watched topic reads what
//!   it missed from the stream and delivers it before the live messages held meanwhile: every
//!   message Redis accepted reaches the hub once, in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, Value};
use tokio_util::sync::CancellationToken;

mod monitor;
mod parse;

use super::{BoxFuture, Bus, BusError, Direct, Replay, Sink, Sinks};
use crate::protocol::{Message, Position, Topic};
use monitor::{monitor, node_probe_id, refresh_conns};
use parse::{channel, parse_direct, parse_presence, parse_push, user_channel};

/// The library's version: bump it whenever `herald.lua` changes, so that nodes replace an older
/// library in Redis.
pub const LIBRARY_VERSION: i64 = 5;

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
}

/// What the bus has delivered of one watched topic.
#[derive(Default)]
struct Delivered {
    /// The last position handed to the sink.
    last: Option<Position>,
    /// While a gap is being filled: live messages held until the fill is done.
    held: Option<Vec<Message>>,
}

/// Per-topic delivery state, shared with the push callback. A plain mutex: held only while
/// handing messages to the sink, never across `.await`.
type DeliveryState = Arc<parking_lot::Mutex<HashMap<Topic, Delivered>>>;

/// Hands `m` to the sink unless it was delivered already; holds it while its topic is filling.
fn deliver(state: &mut HashMap<Topic, Delivered>, sink: &Sink, m: Message) {
    let Some(d) = state.get_mut(&m.topic) else {
        return; // no longer watched
    };
    if let Some(held) = &mut d.held {
        held.push(m);
        return;
    }
    let fresh = match &d.last {
        None => true,
        Some(p) => *p.epoch != *m.epoch || m.offset > p.offset,
    };
    if fresh {
        sink(&m);
        d.last = Some(Position {
            offset: m.offset,
            epoch: m.epoch.clone(),
        });
    }
}

/// What the Redis bus is configured with.
pub struct Settings<'a> {
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
}

/// The bus over Redis.
pub struct RedisBus {
    /// Publishes and history reads; multiplexed, so concurrent requests are pipelined.
    cmd: ConnectionManager,
    /// The pub/sub connection (RESP3, resubscribes by itself after a reconnect).
    sub: ConnectionManager,
    /// Local watchers per channel (a topic's, or a user's): SUBSCRIBE on the first, UNSUBSCRIBE
    /// after the last. An async mutex, held across the round trip, so that subscription changes
    /// never reorder.
    watched: tokio::sync::Mutex<HashMap<String, usize>>,
    prefix: String,
    /// The library source with this node's settings, for (re)loading.
    library: String,
    /// False after the pub/sub connection dropped, until Redis answers again with the library.
    ready: Arc<AtomicBool>,
    /// False after a command failed to reach Redis, until the monitor's ping answers: publishes
    /// and replays then fail at once instead of waiting on reconnection attempts.
    reachable: AtomicBool,
    /// What was delivered per watched topic (for deduplication and filling gaps).
    state: DeliveryState,
    /// Where messages go (the hub).
    sink: Sink,
    /// This node's probe channel, and the probe counter last sent and last received back.
    probe_channel: String,
    probe_sent: std::sync::atomic::AtomicU64,
    probe_seen: Arc<std::sync::atomic::AtomicU64>,
    /// This node's open connections per user: refreshed in Redis every third of `node_ttl`, so
    /// that they keep counting towards the per-user limit while this node lives. Plain mutex,
    /// never held across `.await` (the refresh copies it out).
    user_conns: parking_lot::Mutex<HashMap<String, Vec<String>>>,
    /// This node's presence members ("<conn> <user>") per topic, refreshed with the connections.
    /// Plain mutex, never held across `.await`.
    presence_members: parking_lot::Mutex<HashMap<Topic, Vec<String>>>,
    /// How long a connection counts without a refresh (a killed node's, then, stop counting).
    node_ttl: Duration,
}

fn unavailable(e: redis::RedisError) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl RedisBus {
    /// Connects, loads the function library when missing or older, and starts the readiness
    /// monitor (stopped by `stop`).
    pub async fn connect(
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
        } = settings;
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
        let cmd = ConnectionManager::new_with_config(client.clone(), base.clone())
            .await
            .map_err(err)?;
        let ready = Arc::new(AtomicBool::new(false));
        let state: DeliveryState = Arc::default();
        let probe_channel = format!("{prefix}{{node:{}}}:probe", node_probe_id());
        let probe_seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let push_prefix = prefix.to_owned();
        let push_ready = ready.clone();
        let push_state = state.clone();
        let push_sinks = sinks.clone();
        let push_probe = (probe_channel.clone(), probe_seen.clone());
        let on_push = move |p: PushInfo| -> Result<(), ()> {
            match p.kind {
                PushKind::Message => {
                    if let Some(e) = parse_presence(&push_prefix, &p.data) {
                        (push_sinks.presence)(&e);
                    } else if let Some(m) = parse_push(&push_prefix, &p.data) {
                        deliver(&mut push_state.lock(), &push_sinks.messages, m);
                    } else if let Some(d) = parse_direct(&push_prefix, &p.data) {
                        (push_sinks.direct)(&d);
                    } else if let (Some(Value::BulkString(ch)), Some(Value::BulkString(n))) =
                        (p.data.first(), p.data.get(1))
                        && ch == push_probe.0.as_bytes()
                        && let Some(n) = std::str::from_utf8(n).ok().and_then(|n| n.parse().ok())
                    {
                        push_probe.1.store(n, Ordering::Relaxed);
                    }
                }
                PushKind::Disconnection => {
                    tracing::warn!("Redis pub/sub connection lost; reconnecting");
                    push_ready.store(false, Ordering::Relaxed);
                    // Hold live messages from now on: the manager may resubscribe before the gap
                    // is filled, and a newer message must not overtake the missing ones.
                    for d in push_state.lock().values_mut() {
                        d.held.get_or_insert_with(Vec::new);
                    }
                }
                _ => {}
            }
            Ok(())
        };
        let sub_config = base.set_push_sender(on_push).set_automatic_resubscription();
        let sub = ConnectionManager::new_with_config(client, sub_config)
            .await
            .map_err(err)?;
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
            sub,
            watched: tokio::sync::Mutex::new(HashMap::new()),
            prefix: prefix.to_owned(),
            library,
            ready,
            reachable: AtomicBool::new(true),
            state,
            sink: sinks.messages.clone(),
            probe_channel,
            probe_sent: std::sync::atomic::AtomicU64::new(0),
            probe_seen,
            user_conns: Default::default(),
            presence_members: Default::default(),
            node_ttl,
        });
        tokio::spawn(refresh_conns(bus.clone(), stop.clone()));
        bus.ensure_library().await.map_err(err)?;
        let mut s = bus.sub.clone();
        s.subscribe(&bus.probe_channel).await.map_err(err)?;
        bus.ready.store(true, Ordering::Relaxed);
        tokio::spawn(monitor(bus.clone(), stop));
        Ok(bus)
    }

    /// One more local watcher of `ch`: SUBSCRIBE for the first.
    async fn subscribe_counted(&self, ch: String) -> Result<(), BusError> {
        let mut w = self.watched.lock().await;
        let n = w.entry(ch.clone()).or_insert(0);
        if *n == 0 {
            let mut s = self.sub.clone();
            if let Err(e) = s.subscribe(&ch).await {
                w.remove(&ch);
                return Err(self.failed(e));
            }
        }
        *n += 1;
        Ok(())
    }

    /// One local watcher of `ch` fewer: UNSUBSCRIBE after the last. True when it was the last.
    async fn unsubscribe_counted(&self, ch: String) -> Result<bool, BusError> {
        let mut w = self.watched.lock().await;
        let Some(n) = w.get_mut(&ch) else {
            return Ok(false);
        };
        *n -= 1;
        if *n > 0 {
            return Ok(false);
        }
        w.remove(&ch);
        let mut s = self.sub.clone();
        s.unsubscribe(&ch).await.map_err(|e| self.failed(e))?;
        Ok(true)
    }

    /// The command connection, shared with the Redis ticket store: the monitor keeps it checked.
    pub fn command_connection(&self) -> ConnectionManager {
        self.cmd.clone()
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
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_timeout()
            || e.is_connection_refusal()
        {
            self.reachable.store(false, Ordering::Relaxed);
        }
        unavailable(e)
    }

    /// Loads the library unless Redis already has this version or a newer one.
    async fn ensure_library(&self) -> redis::RedisResult<()> {
        let mut c = self.cmd.clone();
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
    async fn history(&self, topic: &Topic, after: Option<u64>) -> Result<Vec<Value>, BusError> {
        let mut c = self.cmd.clone();
        redis::cmd("FCALL")
            .arg("herald_history")
            .arg(1)
            .arg(topic.as_str())
            .arg(after.map(|a| a.to_string()).unwrap_or_default())
            .query_async(&mut c)
            .await
            .map_err(|e| self.failed(e))
    }
}

impl Bus for RedisBus {
    fn publish(&self, topic: &Topic, data: Bytes) -> BoxFuture<'_, Result<Position, BusError>> {
        let mut c = self.cmd.clone();
        let topic = topic.as_str().to_owned();
        Box::pin(async move {
            self.check_reachable()?;
            let (offset, epoch): (u64, String) = redis::cmd("FCALL")
                .arg("herald_publish")
                .arg(1)
                .arg(topic)
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
            self.replay_unchecked(&topic, since.as_ref()).await
        })
    }

    fn watch(&self, topic: &Topic) -> BoxFuture<'_, Result<(), BusError>> {
        // Before SUBSCRIBE: a message may arrive as soon as it is confirmed.
        self.state.lock().entry(topic.clone()).or_default();
        let (topic, ch) = (topic.clone(), channel(&self.prefix, topic.as_str()));
        Box::pin(async move {
            let r = self.subscribe_counted(ch.clone()).await;
            if r.is_err() && !self.watched.lock().await.contains_key(&ch) {
                self.state.lock().remove(&topic);
            }
            r
        })
    }

    fn unwatch(&self, topic: &Topic) -> BoxFuture<'_, Result<(), BusError>> {
        let topic = topic.clone();
        let ch = channel(&self.prefix, topic.as_str());
        Box::pin(async move {
            if self.unsubscribe_counted(ch).await? {
                self.state.lock().remove(&topic);
            }
            Ok(())
        })
    }

    fn publish_direct(&self, d: Direct) -> BoxFuture<'_, Result<(), BusError>> {
        let mut c = self.cmd.clone();
        Box::pin(async move {
            self.check_reachable()?;
            let mut cmd = redis::cmd("FCALL");
            cmd.arg("herald_publish_user")
                .arg(1)
                .arg(&*d.user)
                .arg(&d.data[..]);
            if let Some(from) = &d.from {
                cmd.arg(&**from);
            }
            let _: i64 = cmd.query_async(&mut c).await.map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    fn presence_join(
        &self,
        topic: &Topic,
        conn: &str,
        user: &str,
    ) -> BoxFuture<'_, Result<(), BusError>> {
        let (topic, conn, user) = (topic.clone(), conn.to_owned(), user.to_owned());
        let mut c = self.cmd.clone();
        Box::pin(async move {
            self.check_reachable()?;
            let _: i64 = redis::cmd("FCALL")
                .arg("herald_presence_join")
                .arg(1)
                .arg(topic.as_str())
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
        let mut c = self.cmd.clone();
        Box::pin(async move {
            let _: i64 = redis::cmd("FCALL")
                .arg("herald_presence_leave")
                .arg(1)
                .arg(topic.as_str())
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
        let mut c = self.cmd.clone();
        Box::pin(async move {
            self.check_reachable()?;
            let members: Vec<String> = redis::cmd("FCALL")
                .arg("herald_presence")
                .arg(1)
                .arg(topic.as_str())
                .query_async(&mut c)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(members
                .into_iter()
                .filter_map(|m| m.split_once(' ').map(|(c, u)| (c.to_owned(), u.to_owned())))
                .collect())
        })
    }

    fn open_conn(
        &self,
        user: &str,
        conn: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<bool, BusError>> {
        let (user, conn) = (user.to_owned(), conn.to_owned());
        let mut c = self.cmd.clone();
        Box::pin(async move {
            self.check_reachable()?;
            let ok: i64 = redis::cmd("FCALL")
                .arg("herald_conn_open")
                .arg(1)
                .arg(&user)
                .arg(&conn)
                .arg(limit)
                .arg(self.node_ttl.as_millis() as u64)
                .query_async(&mut c)
                .await
                .map_err(|e| self.failed(e))?;
            if ok == 1 {
                self.user_conns.lock().entry(user).or_default().push(conn);
            }
            Ok(ok == 1)
        })
    }

    fn close_conn(&self, user: &str, conn: &str) -> BoxFuture<'_, Result<(), BusError>> {
        {
            let mut m = self.user_conns.lock();
            if let Some(v) = m.get_mut(user) {
                v.retain(|c| c != conn);
                if v.is_empty() {
                    m.remove(user);
                }
            }
        }
        let (user, conn) = (user.to_owned(), conn.to_owned());
        let mut c = self.cmd.clone();
        Box::pin(async move {
            let _: i64 = redis::cmd("FCALL")
                .arg("herald_conn_close")
                .arg(1)
                .arg(&user)
                .arg(&conn)
                .query_async(&mut c)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    fn watch_user(&self, user: &str) -> BoxFuture<'_, Result<(), BusError>> {
        let ch = user_channel(&self.prefix, user);
        Box::pin(async move { self.subscribe_counted(ch).await })
    }

    fn unwatch_user(&self, user: &str) -> BoxFuture<'_, Result<(), BusError>> {
        let ch = user_channel(&self.prefix, user);
        Box::pin(async move { self.unsubscribe_counted(ch).await.map(|_| ()) })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
