//! The Redis bus's background work: the liveness probe and recovery after Redis comes back
//! (library reload, gap filling), and the periodic refresh of this node's connections and
//! presence members, so that a killed node's expire.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use bytes::Bytes;
use redis::Value;

use super::parse::{as_str, as_u64};
use super::{RedisBus, deliver};
use crate::bus::{BusError, Replay};
use crate::protocol::{Message, Position, Topic};

/// Once a second: sends the liveness probe and checks the previous one came back; while the
/// bus is not ready, waits for Redis to answer, reloads the library if Redis lost it, fills the
/// gaps of every watched topic, then marks the bus ready again.
pub(super) async fn monitor(bus: Arc<RedisBus>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Probes sent without coming back before the pub/sub path counts as broken.
    const PROBES_MISSED: u64 = 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sent = bus.probe_sent.load(Ordering::Relaxed);
        let seen = bus.probe_seen.load(Ordering::Relaxed);
        if bus.ready.load(Ordering::Relaxed) && sent > seen + PROBES_MISSED {
            tracing::warn!("Redis pub/sub is silent (liveness probe lost); not ready");
            bus.ready.store(false, Ordering::Relaxed);
        }
        if !bus.reachable.load(Ordering::Relaxed) {
            let mut c = bus.cmd.clone();
            let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
            if ping.is_ok() {
                bus.reachable.store(true, Ordering::Relaxed);
            }
        }
        if !bus.ready.load(Ordering::Relaxed) {
            let mut s = bus.sub.clone();
            let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut s).await;
            if ping.is_err() || bus.ensure_library().await.is_err() {
                continue;
            }
            // Resubscribe explicitly too: harmless when the manager already did.
            let channels: Vec<String> = bus.watched.lock().await.keys().cloned().collect();
            for ch in &channels {
                let _ = s.subscribe(ch).await;
            }
            let _ = s.subscribe(&bus.probe_channel).await;
            let topics: Vec<Topic> = bus.state.lock().keys().cloned().collect();
            if bus.fill_gaps(&topics).await.is_ok() {
                tracing::info!("Redis is back; gaps of {} topics filled", topics.len());
                bus.probe_seen
                    .store(bus.probe_sent.load(Ordering::Relaxed), Ordering::Relaxed);
                bus.ready.store(true, Ordering::Relaxed);
            }
            continue;
        }
        let n = bus.probe_sent.fetch_add(1, Ordering::Relaxed) + 1;
        let mut c = bus.cmd.clone();
        let _: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(&bus.probe_channel)
            .arg(n)
            .query_async(&mut c)
            .await;
    }
}

/// Every third of `node_ttl`: pushes back the expiry of this node's connections in Redis.
pub(super) async fn refresh_conns(bus: Arc<RedisBus>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(bus.node_ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let users: Vec<(String, Vec<String>)> = bus
            .user_conns
            .lock()
            .iter()
            .map(|(u, c)| (u.clone(), c.clone()))
            .collect();
        let presence: Vec<(Topic, Vec<String>)> = bus
            .presence_members
            .lock()
            .iter()
            .map(|(t, m)| (t.clone(), m.clone()))
            .collect();
        if users.is_empty() && presence.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for (topic, members) in &presence {
            // Refreshes this node's members and sweeps expired ones (a killed node's) with leaves.
            pipe.cmd("FCALL")
                .arg("herald_presence")
                .arg(1)
                .arg(topic.as_str())
                .arg(bus.node_ttl.as_millis() as u64)
                .arg(members)
                .ignore();
        }
        for (user, conns) in &users {
            pipe.cmd("FCALL")
                .arg("herald_conn_refresh")
                .arg(1)
                .arg(user)
                .arg(bus.node_ttl.as_millis() as u64)
                .arg(conns)
                .ignore();
        }
        let mut c = bus.cmd.clone();
        let r: redis::RedisResult<()> = pipe.query_async(&mut c).await;
        if let Err(e) = r {
            tracing::warn!("refreshing this node's connections in Redis failed: {e}");
        }
    }
}

/// A random id for this process's probe channel.
pub(super) fn node_probe_id() -> String {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).expect("the OS gives random bytes");
    format!("{:016x}", u64::from_le_bytes(r))
}

impl RedisBus {
    /// The replay for `since`, read atomically with the topic's epoch and latest offset.
    pub(super) async fn replay_unchecked(
        &self,
        topic: &Topic,
        since: Option<&Position>,
    ) -> Result<Replay, BusError> {
        let since = since.cloned();
        let out = self
            .history(topic, since.as_ref().map(|s| s.offset))
            .await?;
        let bad = || BusError::Unavailable("malformed answer from herald_history".into());
        let epoch: Arc<str> = Arc::from(as_str(out.first().ok_or_else(bad)?).ok_or_else(bad)?);
        let latest = as_u64(out.get(1).ok_or_else(bad)?).ok_or_else(bad)?;
        let first_kept = as_u64(out.get(2).ok_or_else(bad)?).ok_or_else(bad)?;
        let latest = Position {
            offset: latest,
            epoch: epoch.clone(),
        };
        let messages = since.and_then(|s| {
            if *s.epoch != *latest.epoch || s.offset > latest.offset {
                return None;
            }
            let oldest = if first_kept == 0 {
                latest.offset + 1
            } else {
                first_kept
            };
            if s.offset + 1 < oldest {
                return None;
            }
            let mut msgs = Vec::with_capacity((out.len() - 3) / 2);
            for pair in out[3..].chunks(2) {
                let (Some(o), Some(Value::BulkString(d))) =
                    (pair.first().and_then(as_u64), pair.get(1))
                else {
                    return None;
                };
                msgs.push(Message {
                    topic: topic.clone(),
                    offset: o,
                    epoch: epoch.clone(),
                    data: Bytes::copy_from_slice(d),
                });
            }
            Some(msgs)
        });
        Ok(Replay { latest, messages })
    }

    /// Delivers what `topics` missed while pub/sub was down: live messages are held meanwhile,
    /// then follow the filled ones, without duplicates.
    pub(super) async fn fill_gaps(&self, topics: &[Topic]) -> Result<(), BusError> {
        {
            let mut st = self.state.lock();
            for t in topics {
                if let Some(d) = st.get_mut(t) {
                    d.held.get_or_insert_with(Vec::new);
                }
            }
        }
        let mut result = Ok(());
        for t in topics {
            let last = self.state.lock().get(t).and_then(|d| d.last.clone());
            let missed = match self.replay_unchecked(t, last.as_ref()).await {
                Ok(r) => r.messages.unwrap_or_else(|| {
                    // Another epoch (Redis lost the topic) or history gone: deliver what is kept.
                    Vec::new()
                }),
                Err(e) => {
                    result = Err(e);
                    Vec::new()
                }
            };
            let mut st = self.state.lock();
            let held = st
                .get_mut(t)
                .and_then(|d| d.held.take())
                .unwrap_or_default();
            for m in missed.into_iter().chain(held) {
                deliver(&mut st, &self.sink, m);
            }
        }
        result
    }
}
