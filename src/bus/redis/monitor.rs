//! The Redis bus's background work: the liveness probe and recovery after a fault (a new
//! pub/sub connection, library reload, gap filling, and giving up gaps that cannot be filled),
//! and the periodic refresh of this node's connections and presence members, so that a killed
//! node's expire.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use bytes::Bytes;
use redis::Value;

use super::parse::{as_str, as_u64};
use super::{NO_EPOCH, RedisBus};
use crate::bus::{BusError, REPLAY_PAGE, Replay};
use crate::metrics::RedisMetrics;
use crate::protocol::{Message, Position, Topic};

/// How often the monitor probes (and, while not ready, tries to recover).
const TICK: Duration = Duration::from_millis(500);

/// A probe not back within this turns the node not-ready: `/readyz` follows a stalled Redis
/// within about this plus [`TICK`].
pub(super) const PROBE_DEADLINE: Duration = Duration::from_millis(1500);

/// How long subscribers may wait while the node cannot deliver (pub/sub down, or a gap that
/// cannot be read yet): then every topic still waiting is given up, and its local subscribers
/// are closed with 1012 to resume with `since` on a node that can.
pub(super) const SUBSCRIBERS_WAIT: Duration = Duration::from_secs(10);

/// The bound of one attempt at filling every held topic's gap.
const FILL_DEADLINE: Duration = Duration::from_secs(5);

/// The bound of one command the monitor sends while probing, so that its rhythm holds when
/// Redis stalls.
const COMMAND_DEADLINE: Duration = Duration::from_millis(500);

/// Every [`TICK`] (or at once when the pub/sub connection drops): checks that the probes come
/// back, and sends the next; while the bus is not ready, rebuilds the pub/sub connection when it
/// is broken, reloads the library if Redis lost it, fills the gaps of every watched topic, then
/// marks the bus ready again; past [`SUBSCRIBERS_WAIT`] it gives up the topics still waiting.
pub(super) async fn monitor(bus: Arc<RedisBus>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Probes sent and not back yet, oldest first, with when they were sent.
    let mut outstanding: VecDeque<(u64, Instant)> = VecDeque::new();
    // Since when the bus has not been ready.
    let mut down_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = bus.wake.notified() => {}
        }
        if bus.ready.load(Ordering::Relaxed) {
            let seen = bus.probe_seen.load(Ordering::Relaxed);
            while outstanding.front().is_some_and(|(n, _)| *n <= seen) {
                outstanding.pop_front();
            }
            if outstanding
                .front()
                .is_some_and(|(_, at)| at.elapsed() > PROBE_DEADLINE)
            {
                bus.broke("Redis pub/sub is silent (liveness probe lost)");
            }
        }
        if !bus.reachable.load(Ordering::Relaxed) {
            check_commands(&bus).await;
        }
        if !bus.ready.load(Ordering::Relaxed) {
            let since = *down_since.get_or_insert_with(Instant::now);
            if recover(&bus, since).await {
                down_since = None;
                outstanding.clear();
                bus.set_ready(true);
            }
            continue;
        }
        let n = bus.probe_sent.fetch_add(1, Ordering::Relaxed) + 1;
        bus.probe_sent_at.store(bus.now_ns(), Ordering::Relaxed);
        outstanding.push_back((n, Instant::now()));
        let mut c = bus.cmd.get();
        let sent = tokio::time::timeout(COMMAND_DEADLINE, async {
            redis::cmd("PUBLISH")
                .arg(&bus.probe_channel)
                .arg(n)
                .query_async::<i64>(&mut c)
                .await
        })
        .await;
        if let Ok(Err(e)) = sent {
            // The command connection itself may be what failed: checked on the next tick.
            let _ = bus.failed(e);
        }
    }
}

/// While Redis seems away: a PING on the command connection; when it fails, the connection is
/// rebuilt from scratch (its own reconnect may have met an error it never recovers from, such as
/// a refused login), and Redis counts as reachable again once a PING answers.
async fn check_commands(bus: &RedisBus) {
    let ping = |mut c: redis::aio::ConnectionManager| async move {
        let cmd = redis::cmd("PING");
        let answer = tokio::time::timeout(COMMAND_DEADLINE, cmd.query_async::<String>(&mut c));
        matches!(answer.await, Ok(Ok(_)))
    };
    if ping(bus.cmd.get()).await {
        bus.reachable.store(true, Ordering::Relaxed);
        tracing::info!(redis = "reachable", "Redis answers commands again");
        return;
    }
    match bus.cmd.rebuild().await {
        Ok(()) if ping(bus.cmd.get()).await => {
            tracing::info!(
                redis = "reachable",
                "Redis command connection rebuilt; it answers commands again"
            );
            bus.reachable.store(true, Ordering::Relaxed);
        }
        Ok(()) => {}
        Err(e) => tracing::debug!("Redis command connection: rebuilding failed: {e}"),
    }
}

/// One attempt at recovery, the bus not ready since `since`: true when it may be ready again.
async fn recover(bus: &Arc<RedisBus>, since: Instant) -> bool {
    if since.elapsed() >= SUBSCRIBERS_WAIT {
        bus.give_up_waiting();
    }
    if bus.pubsub_broken.load(Ordering::Acquire) {
        if let Err(e) = bus.open_pubsub().await {
            tracing::debug!("Redis pub/sub: reconnecting failed: {e}");
            return false;
        }
        bus.metrics.reconnects.increment(1);
    }
    let library = tokio::time::timeout(Duration::from_secs(2), bus.ensure_library()).await;
    match library {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            // Not reachable when the command connection failed: checked (and rebuilt) next tick.
            let _ = bus.failed(e);
            return false;
        }
        Err(_) => return false,
    }
    // Bounded, so that subscribers are given up on time however many topics wait (an attempt
    // cut short leaves the topics it did not reach held for the next).
    match tokio::time::timeout(FILL_DEADLINE, bus.fill_gaps()).await {
        Ok(Ok(n)) => {
            tracing::info!(
                redis = "ready",
                "Redis is back: pub/sub live again, gaps of {n} topics filled"
            );
            bus.metrics.gaps_filled.increment(n as u64);
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(error = ?e, "filling gaps failed, trying again");
            false
        }
        Err(_) => false,
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
            .map(|(u, c)| (u.clone(), c.iter().cloned().collect()))
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
        let mut c = bus.cmd.get();
        let r: redis::RedisResult<()> = pipe.query_async(&mut c).await;
        if let Err(e) = r {
            tracing::warn!("refreshing this node's connections in Redis failed: {e}");
            let _ = bus.failed(e);
        }
    }
}

/// `sinks` whose `lost` also counts each topic given up (`herald_redis_gap_fills_total`, lost).
pub(super) fn counting_losses(
    mut sinks: crate::bus::Sinks,
    metrics: &RedisMetrics,
) -> crate::bus::Sinks {
    let (lost, gaps_lost) = (sinks.lost.clone(), metrics.gaps_lost.clone());
    sinks.lost = Arc::new(move |t: &Topic| {
        gaps_lost.increment(1);
        lost(t)
    });
    sinks
}

/// A random id for this process's probe channel.
pub(super) fn node_probe_id() -> Result<String, getrandom::Error> {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r)?;
    Ok(format!("{:016x}", u64::from_le_bytes(r)))
}

impl RedisBus {
    /// Turns the node ready (or not), and its `herald_redis_connected` with it.
    pub(super) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.metrics.connected.set(if ready { 1.0 } else { 0.0 });
    }

    /// Nanoseconds since the bus started: the probe's clock.
    pub(super) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The replay for `since` (its first [`REPLAY_PAGE`]), read atomically with the topic's
    /// epoch and latest offset.
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
            if *s.epoch != *latest.epoch || s.offset > latest.offset || *s.epoch == *NO_EPOCH {
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

    /// Gives up every topic still waiting for its gap to be filled: their subscribers have
    /// waited [`SUBSCRIBERS_WAIT`] (they are closed with 1012, to resume with `since`).
    pub(super) fn give_up_waiting(&self) {
        let mut st = self.state.lock();
        let waiting: Vec<Topic> = st
            .topics
            .iter()
            // Held with something to fill from: a topic given up already, or never delivered
            // nor replayed, has nobody here waiting for a gap.
            .filter(|(_, d)| d.held.is_some() && (d.last.is_some() || d.base.is_some()))
            .map(|(t, _)| t.clone())
            .collect();
        if !waiting.is_empty() {
            tracing::warn!(
                redis = "given_up",
                "Redis has not delivered for {SUBSCRIBERS_WAIT:?}: giving up {} topics",
                waiting.len()
            );
        }
        for t in &waiting {
            st.lose(&self.sinks, t);
        }
    }

    /// Delivers what every held topic missed while pub/sub was down, then the live messages held
    /// meanwhile, without duplicates; the pub/sub connection must be subscribed again first.
    /// A topic whose gap cannot be read (its history no longer reaches back, or its epoch
    /// changed with an incomplete new history) is given up; a read that fails leaves the topic
    /// held for the next attempt (an error). Returns how many topics were filled.
    pub(super) async fn fill_gaps(&self) -> Result<usize, BusError> {
        let topics: Vec<(Topic, Option<Position>)> = self
            .state
            .lock()
            .topics
            .iter()
            .filter(|(_, d)| d.held.is_some())
            .map(|(t, d)| (t.clone(), d.last.clone().or_else(|| d.base.clone())))
            .collect();
        let mut result = Ok(topics.len());
        for (t, start) in topics {
            let missed = match &start {
                // Nothing delivered and no subscriber's start known: nothing can be missing.
                None => Some(Vec::new()),
                Some(s) => match self.missed_since(&t, s).await {
                    Ok(m) => m,
                    Err(e) => {
                        result = Err(e);
                        continue;
                    }
                },
            };
            let mut st = self.state.lock();
            let Some(d) = st.topics.get(&t) else {
                continue; // no longer watched
            };
            if d.held.is_none() {
                continue; // given up meanwhile
            }
            if d.last.clone().or_else(|| d.base.clone()) != start {
                // A subscriber's replay moved the start meanwhile: read again.
                result = Err(BusError::Unavailable(
                    format!("{t:?} changed while filling").into(),
                ));
                continue;
            }
            match missed {
                Some(missed) => st.release(&self.sinks, &t, missed),
                None => st.lose(&self.sinks, &t),
            }
        }
        result
    }

    /// The messages of `topic` after `start`, read from its history; `None` when they cannot be
    /// read exactly. When the topic's epoch changed (Redis lost it, or it expired), the new
    /// epoch's messages from its first offset, if its history still holds them all; nothing when
    /// the topic has no history now.
    async fn missed_since(
        &self,
        topic: &Topic,
        start: &Position,
    ) -> Result<Option<Vec<Message>>, BusError> {
        let r = self.replay_unchecked(topic, Some(start)).await?;
        if *r.latest.epoch == *NO_EPOCH {
            return Ok(Some(Vec::new()));
        }
        if r.messages.is_some() || *r.latest.epoch == *start.epoch {
            return self.every_page(topic, r.messages).await;
        }
        let from_first = Position {
            offset: 0,
            epoch: r.latest.epoch.clone(),
        };
        let r = self.replay_unchecked(topic, Some(&from_first)).await?;
        if *r.latest.epoch != *from_first.epoch {
            return Ok(None);
        }
        self.every_page(topic, r.messages).await
    }

    /// `first` (a replay's first page) and the pages after it, to the end of the history;
    /// `None` when it no longer continues exactly. (A gap is filled whole: it spans the few
    /// seconds a node may wait, not a subscriber's whole absence.)
    async fn every_page(
        &self,
        topic: &Topic,
        first: Option<Vec<Message>>,
    ) -> Result<Option<Vec<Message>>, BusError> {
        let Some(mut all) = first else {
            return Ok(None);
        };
        let mut full = all.len() == REPLAY_PAGE;
        while full && let Some(last) = all.last() {
            let after = Position {
                offset: last.offset,
                epoch: last.epoch.clone(),
            };
            let Some(more) = self.replay_unchecked(topic, Some(&after)).await?.messages else {
                return Ok(None);
            };
            full = more.len() == REPLAY_PAGE;
            all.extend(more);
        }
        Ok(Some(all))
    }
}
