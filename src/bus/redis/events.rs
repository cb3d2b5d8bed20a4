//! Lifecycle events of a cluster: entries of the Redis stream `<prefix>{events}:stream`, written
//! by the `herald_event*` functions of the library (`src/bus/redis/herald.lua`).
//!
//! Each node registers itself with a deadline and keeps it fresh (every third of `node_ttl`); its
//! recorded connections sit in a registry hash next to the stream. A node past its deadline is
//! declared dead by the next node to beat, and its connections' disconnects are recorded from the
//! registry, each exactly once (an atomic call removes the entry and appends the event). A node
//! that finds itself declared dead (a long pause, or Redis lost its data) records its own
//! leftovers and joins again with a connect (and subscribes) for every live connection, so the
//! stream's story always ends in the true state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Commands, fcall};
use tokio_util::sync::CancellationToken;

use crate::config::events::{EventKind, EventsConfig};
use crate::lifecycle::{Event, EventLog, LifecycleError};
use crate::protocol::Topic;
use futures_util::future::BoxFuture;

/// Connections per `herald_events_join` call and disconnects per reaping call: bounds how long
/// one call holds Redis.
const BATCH: usize = 500;
/// The code Lua answers when this node is not registered.
const LOST: &str = "HERALDLOST";

/// A connection to register: its id, its user, its topics (space-separated).
type Joining = (Arc<str>, Arc<str>, String);

/// A connection this node recorded, to register again after a rejoin.
struct Live {
    user: Arc<str>,
    topics: Vec<Topic>,
}

/// The event log over Redis.
pub(crate) struct RedisEvents {
    /// The bus's multiplexed command connection (pipelined with everything else).
    cmd: Commands,
    node: String,
    config: EventsConfig,
    max_len: u64,
    ttl: Duration,
    /// This node's recorded connections and their recorded topics. Plain mutex, never held
    /// across `.await`.
    live: parking_lot::Mutex<HashMap<Arc<str>, Live>>,
    /// Disconnects that could not be recorded yet (Redis away), retried on every beat. Bounded:
    /// one per connection this node had recorded.
    pending: parking_lot::Mutex<Vec<Event>>,
    /// Shared by recordings, exclusive for a rejoin, so that the connections a rejoin registers
    /// are exactly the live ones (no event interleaves with it). Holds the number of rejoins so
    /// far: many recordings that find the node lost at once cause one rejoin, not one each.
    gate: tokio::sync::RwLock<u64>,
}

fn unavailable(e: redis::RedisError) -> LifecycleError {
    LifecycleError::Unavailable(Box::new(e))
}

impl RedisEvents {
    /// Records the disconnects a previous run of this node left (`node_restart`), registers the
    /// node, and keeps it registered until `stop`.
    pub(crate) async fn start(
        cmd: Commands,
        node: &str,
        config: EventsConfig,
        max_len: u64,
        ttl: Duration,
        stop: CancellationToken,
    ) -> Result<Arc<RedisEvents>, LifecycleError> {
        let ev = Arc::new(RedisEvents {
            cmd,
            node: node.to_owned(),
            config,
            max_len,
            ttl,
            live: parking_lot::Mutex::default(),
            pending: parking_lot::Mutex::default(),
            gate: tokio::sync::RwLock::new(0),
        });
        let n = ev.reap_own("node_restart").await?;
        if n > 0 {
            tracing::info!("recorded {n} disconnects left by this node's previous run");
        }
        ev.join(Vec::new(), "start").await?;
        tokio::spawn(ev.clone().beat_until(stop));
        Ok(ev)
    }

    /// Records a disconnect for every connection still registered to this node.
    async fn reap_own(&self, reason: &str) -> Result<u64, LifecycleError> {
        let mut c = self.cmd.get();
        let mut total = 0;
        loop {
            let (n, more): (u64, u64) = fcall("herald_events_reap", "events")
                .arg(self.max_len)
                .arg(&self.node)
                .arg(reason)
                .arg(BATCH)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            total += n;
            if more == 0 {
                return Ok(total);
            }
        }
    }

    /// Registers the node and `conns` (conn, user, topics), a batch per call.
    async fn join(&self, conns: Vec<Joining>, reason: &str) -> Result<(), LifecycleError> {
        let mut c = self.cmd.get();
        let mut chunks: Vec<&[Joining]> = conns.chunks(BATCH).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for chunk in chunks {
            let mut cmd = fcall("herald_events_join", "events");
            cmd.arg(self.max_len)
                .arg(&self.node)
                .arg(self.ttl.as_millis() as u64)
                .arg(reason);
            for (conn, user, topics) in chunk {
                cmd.arg(&**conn).arg(&**user).arg(topics);
            }
            let _: u64 = cmd.query_async(&mut c).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// After this node was declared dead: records its leftovers, then registers every live
    /// connection again. Exclusive: no event is recorded meanwhile.
    /// `seen`: the rejoin count when the caller found the node lost; when another rejoin has
    /// happened since, there is nothing to do.
    async fn rejoin(&self, seen: u64) -> Result<(), LifecycleError> {
        let mut exclusive = self.gate.write().await;
        if *exclusive != seen {
            return Ok(());
        }
        self.reap_own("node_lost").await?;
        let subscribe = self.config.records(EventKind::Subscribe);
        let conns: Vec<Joining> = if self.config.records(EventKind::Connect) {
            let live = self.live.lock();
            live.iter()
                .map(|(conn, l)| {
                    let topics = if subscribe {
                        l.topics
                            .iter()
                            .map(Topic::as_str)
                            .collect::<Vec<_>>()
                            .join(" ")
                    } else {
                        String::new()
                    };
                    (conn.clone(), l.user.clone(), topics)
                })
                .collect()
        } else {
            Vec::new()
        };
        tracing::warn!(
            "this node had been declared dead in Redis; joined again with {} connections",
            conns.len()
        );
        self.join(conns, "rejoin").await?;
        *exclusive += 1;
        Ok(())
    }

    async fn call(&self, e: &Event) -> Result<(), redis::RedisError> {
        let mut c = self.cmd.get();
        let extra = match e.kind {
            EventKind::Disconnect => e
                .code
                .unwrap_or(crate::protocol::close::ABNORMAL)
                .to_string(),
            _ => e
                .topic
                .as_ref()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
        };
        let _: Option<String> = fcall("herald_event", "events")
            .arg(self.max_len)
            .arg(&self.node)
            .arg(e.kind.name())
            .arg(&*e.conn)
            .arg(&*e.user)
            .arg(extra)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Keeps the local registry in step with what was recorded.
    fn recorded(&self, e: &Event) {
        let mut live = self.live.lock();
        match e.kind {
            EventKind::Connect => {
                live.insert(
                    e.conn.clone(),
                    Live {
                        user: e.user.clone(),
                        topics: Vec::new(),
                    },
                );
            }
            EventKind::Subscribe => {
                if let (Some(l), Some(t)) = (live.get_mut(&e.conn), &e.topic) {
                    l.topics.push(t.clone());
                }
            }
            EventKind::Unsubscribe => {
                if let (Some(l), Some(t)) = (live.get_mut(&e.conn), &e.topic) {
                    l.topics.retain(|x| x != t);
                }
            }
            EventKind::Disconnect => {}
        }
    }

    async fn record_event(&self, e: Event) -> Result<(), LifecycleError> {
        if e.kind == EventKind::Disconnect {
            // Out of the registry first: a rejoin from now on does not bring it back.
            self.live.lock().remove(&e.conn);
            let shared = self.gate.read().await;
            let r = self.call(&e).await;
            drop(shared);
            if let Err(err) = r {
                self.pending.lock().push(e);
                return Err(unavailable(err));
            }
            return Ok(());
        }
        for attempt in 0..2 {
            let shared = self.gate.read().await;
            let seen = *shared;
            match self.call(&e).await {
                Ok(()) => {
                    self.recorded(&e);
                    return Ok(());
                }
                Err(err) if err.code() == Some(LOST) && attempt == 0 => {
                    drop(shared);
                    self.rejoin(seen).await?;
                }
                Err(err) => return Err(unavailable(err)),
            }
        }
        Err(LifecycleError::Unavailable(
            "this node could not rejoin".into(),
        ))
    }

    /// One beat: retries pending disconnects, keeps the node registered (rejoining when it was
    /// declared dead), and records dead nodes' disconnects, a batch per call.
    async fn beat(&self) -> Result<(), LifecycleError> {
        let pending = std::mem::take(&mut *self.pending.lock());
        for (i, e) in pending.iter().enumerate() {
            if let Err(err) = self.call(e).await {
                self.pending.lock().extend(pending[i..].iter().cloned());
                return Err(unavailable(err));
            }
        }
        let mut c = self.cmd.get();
        // Bounded: at most this many batches of a dead node's connections per beat.
        for _ in 0..100 {
            let seen = *self.gate.read().await;
            let (alive, recorded, more): (u64, u64, u64) = fcall("herald_events_beat", "events")
                .arg(self.max_len)
                .arg(&self.node)
                .arg(self.ttl.as_millis() as u64)
                .arg(BATCH)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            if alive == 0 {
                self.rejoin(seen).await?;
                continue;
            }
            if recorded > 0 {
                tracing::info!("recorded {recorded} disconnects of dead nodes");
            }
            if more == 0 {
                break;
            }
        }
        Ok(())
    }

    async fn beat_until(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.beat().await {
                        tracing::warn!(error = ?e, "lifecycle heartbeat failed");
                    }
                }
            }
        }
    }
}

impl EventLog for RedisEvents {
    fn record(&self, event: Event) -> BoxFuture<'_, Result<(), LifecycleError>> {
        Box::pin(self.record_event(event))
    }

    fn pending(&self) -> usize {
        self.pending.lock().len()
    }
}
