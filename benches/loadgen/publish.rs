//! Publishers. Topics are split among publisher tasks so that each topic has exactly one
//! publisher and one connection: a topic's messages are then sent in seq order, and any
//! reordering a subscriber sees is the server's. Pacing is open-loop (see `pace`) with a
//! bounded number of requests in flight; `max` drops the pacing and keeps the bound. `t` is stamped when the request is written.

use crate::codec::{self, Codec};
use crate::conn::{self, Ws};
use crate::http::{self, Target, Tickets};
use crate::pace::{Pacer, Pacing};
use crate::rx::Shared;
use crate::wire::{self, OP_PING, OP_PONG};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Ws,
    Http,
    Redis,
}

pub(crate) struct Plan {
    pub total: u64,
    pub topics: Arc<Vec<String>>,
    pub publishers: usize,
    /// Messages per second over all publishers; None = as fast as accepted.
    pub rate: Option<f64>,
    pub pacing: Pacing,
    pub inflight: usize,
    pub pad: usize,
    /// What the padding is made of.
    pub payload: codec::Payload,
    pub codec: Codec,
    pub via: Via,
    pub deadline: Instant,
    pub target: Target,
    /// None with `--baseline` (no tickets).
    pub tickets: Option<Tickets>,
    pub api_key: Option<String>,
    /// For [`Via::Redis`].
    pub redis_url: Option<String>,
    /// With `max`: most deliveries owed (published, not yet received) before publishing waits.
    pub backlog: Option<u64>,
    pub shared: Arc<Shared>,
}

impl Plan {
    fn over_backlog(&self, stats: &PubStats) -> bool {
        match self.backlog {
            Some(max) if self.rate.is_none() => {
                let owed = stats.owed.load(Relaxed);
                owed.saturating_sub(self.shared.delivered.load(Relaxed)) > max
            }
            _ => false,
        }
    }

    /// Wait (polling each millisecond) until the backlog is under the bound; false at the
    /// deadline.
    async fn backlog_room(&self, stats: &PubStats) -> bool {
        while self.over_backlog(stats) {
            if Instant::now() >= self.deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}

#[derive(Default)]
pub(crate) struct PubStats {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub ok_per_topic: Vec<AtomicU64>,
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub first_send_ns: AtomicU64,
    pub last_send_ns: AtomicU64,
    /// Deliveries owed for the messages sent so far (minus refused ones).
    pub owed: AtomicU64,
    /// Subscribers per topic.
    subs: Vec<u64>,
}

impl PubStats {
    pub(crate) fn new(subs_per_topic: &[u64]) -> Self {
        PubStats {
            ok_per_topic: subs_per_topic.iter().map(|_| AtomicU64::new(0)).collect(),
            subs: subs_per_topic.to_vec(),
            first_send_ns: AtomicU64::new(u64::MAX),
            ..Default::default()
        }
    }
    /// A refusal of message `global_index` (None when the reply does not say which).
    fn refused(&self, global_index: Option<u64>, code: String) {
        if let Some(i) = global_index {
            let subs = self.subs[(i % self.subs.len() as u64) as usize];
            self.owed.fetch_sub(subs, Relaxed);
        }
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code)
            .or_default() += 1;
    }
    fn ok_for(&self, global_index: u64) {
        let n = self.ok_per_topic.len() as u64;
        self.ok.fetch_add(1, Relaxed);
        self.ok_per_topic[(global_index % n) as usize].fetch_add(1, Relaxed);
    }
    fn stamp(&self, t: u64, global_index: u64) {
        let subs = self.subs[(global_index % self.subs.len() as u64) as usize];
        self.owed.fetch_add(subs, Relaxed);
        self.first_send_ns.fetch_min(t, Relaxed);
        self.last_send_ns.fetch_max(t, Relaxed);
        self.sent.fetch_add(1, Relaxed);
    }
}

/// How many messages go to topic `tp` out of `total` spread round-robin over `topics`.
pub(crate) fn per_topic(total: u64, topics: usize, tp: usize) -> u64 {
    let t = topics as u64;
    total / t + u64::from((tp as u64) < total % t)
}

/// Global message indices owned by publisher `k`: its topics are k, k+P, ...; message i goes to
/// topic i % T with seq i / T.
fn schedule(total: u64, topics: usize, k: usize, p: usize) -> impl Iterator<Item = u64> {
    let t = topics as u64;
    let mine: Vec<u64> = (k..topics).step_by(p).map(|x| x as u64).collect();
    (0..total.div_ceil(t))
        .flat_map(move |r| mine.clone().into_iter().map(move |tp| r * t + tp))
        .filter(move |&i| i < total)
}

/// Run all publishers to completion (or the deadline). Returns a per-publisher failure list.
pub(crate) async fn run(plan: Arc<Plan>, stats: Arc<PubStats>) -> Vec<String> {
    let p = plan.publishers.clamp(1, plan.topics.len());
    let mut handles = Vec::with_capacity(p);
    for k in 0..p {
        let (plan, stats) = (plan.clone(), stats.clone());
        handles.push(tokio::spawn(async move {
            let mine: u64 = (k..plan.topics.len())
                .step_by(p)
                .map(|tp| per_topic(plan.total, plan.topics.len(), tp))
                .sum();
            let rate = plan
                .rate
                .map(|r| r * mine as f64 / plan.total.max(1) as f64);
            let sched = schedule(plan.total, plan.topics.len(), k, p);
            // Publishers take turns: together they send one message every 1 / rate.
            let offset = plan
                .rate
                .filter(|r| *r > 0.0)
                .map_or(Duration::ZERO, |r| Duration::from_secs_f64(k as f64 / r));
            let pacer = Pacer::new(plan.pacing, rate, offset).map_err(|e| format!("timer: {e}"))?;
            match plan.via {
                Via::Ws => ws_publisher(&plan, &stats, sched, pacer).await,
                Via::Http => http_publisher(&plan, &stats, sched, pacer).await,
                Via::Redis => redis_publisher(&plan, &stats, sched, pacer).await,
            }
        }));
    }
    let mut failures = Vec::new();
    for (k, h) in handles.into_iter().enumerate() {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("publisher {k}: {e}")),
            Err(e) => failures.push(format!("publisher {k}: task failed: {e}")),
        }
    }
    failures
}

async fn ws_publisher(
    plan: &Plan,
    stats: &Arc<PubStats>,
    sched: impl Iterator<Item = u64>,
    mut pacer: Pacer,
) -> Result<(), String> {
    let ws = tokio::time::timeout_at(
        plan.deadline,
        conn::open(&plan.target, plan.tickets.as_ref(), plan.codec, false),
    )
    .await
    .map_err(|_| "timed out opening the publisher connection".to_string())??;
    let Ws {
        stream,
        mut reader,
        mut rng,
        codec,
        ..
    } = ws;
    let (mut rd, wr) = stream.into_split();
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let sem = Arc::new(Semaphore::new(plan.inflight.max(1)));
    let (done_tx, mut done_rx) = watch::channel(None::<u64>);
    let deadline = plan.deadline;

    // Replies: release a permit each, attribute ok to the message's topic.
    let reader_task = {
        let (stats, sem, wr) = (stats.clone(), sem.clone(), wr.clone());
        let mut prng = wire::MaskRng::new();
        tokio::spawn(async move {
            let mut replies = 0u64;
            let outcome = async {
                loop {
                    if let Some(sent) = *done_rx.borrow()
                        && replies >= sent
                    {
                        return Ok(());
                    }
                    let f = tokio::select! {
                        f = reader.next(&mut rd) => f,
                        r = done_rx.changed() => match r {
                            Ok(()) => continue,
                            Err(_) => return Ok(()),
                        },
                        _ = tokio::time::sleep_until(deadline) => return Ok(()),
                    };
                    let f = f.map_err(|e| format!("publisher connection: {e}"))?;
                    if f.opcode == OP_PING {
                        let mut out = Vec::new();
                        wire::push_frame(&mut out, OP_PONG, f.payload, &mut prng);
                        let _ = wr.lock().await.write_all(&out).await;
                        continue;
                    }
                    match codec::scan_reply(codec, f.payload) {
                        Some((true, id)) => stats.ok_for(id.saturating_sub(1)),
                        Some((false, id)) => {
                            let code = codec::decode(codec, f.payload)
                                .and_then(|v| {
                                    v.get("code").and_then(|c| c.as_str()).map(str::to_string)
                                })
                                .unwrap_or_else(|| "error".into());
                            stats.refused(id.checked_sub(1), code);
                        }
                        None => continue,
                    }
                    replies += 1;
                    sem.add_permits(1);
                }
            }
            .await;
            // Wake a writer waiting for a permit that will never come back.
            sem.close();
            outcome
        })
    };

    // The schedule starts once connected, so connecting does not make the first messages late.
    pacer.start();
    let mut batch: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut payload: Vec<u8> = Vec::with_capacity(plan.pad + 128);
    let mut sent = 0u64;
    let flush = async |batch: &mut Vec<u8>| -> Result<(), String> {
        if !batch.is_empty() {
            let r = wr.lock().await.write_all(batch).await;
            batch.clear();
            r.map_err(|e| format!("write: {}", e.kind()))?;
        }
        Ok(())
    };
    let mut outcome = Ok(());
    for (j, i) in sched.enumerate() {
        if Instant::now() >= deadline || reader_task.is_finished() {
            break;
        }
        // Write what is batched before any wait.
        let must_wait =
            !pacer.due_now(j as u64) || plan.over_backlog(stats) || sem.available_permits() == 0;
        if must_wait && let Err(e) = flush(&mut batch).await {
            outcome = Err(e);
            break;
        }
        if let Err(e) = pacer.wait(j as u64).await {
            outcome = Err(format!("timer: {e}"));
            break;
        }
        if !plan.backlog_room(stats).await {
            break;
        }
        match tokio::time::timeout_at(deadline, sem.acquire()).await {
            Ok(Ok(p)) => p.forget(),
            _ => break,
        }
        let topics = &plan.topics;
        let t = crate::now_ns();
        payload.clear();
        let (tp, seq) = ((i % topics.len() as u64) as usize, i / topics.len() as u64);
        let fill = (plan.pad, plan.payload);
        codec::pub_request(codec, &mut payload, i + 1, &topics[tp], t, seq, fill);
        wire::push_frame(&mut batch, codec.opcode(), &payload, &mut rng);
        stats.stamp(t, i);
        sent += 1;
        if batch.len() >= 32 << 10
            && let Err(e) = flush(&mut batch).await
        {
            outcome = Err(e);
            break;
        }
    }
    if outcome.is_ok() {
        outcome = flush(&mut batch).await;
    }
    let _ = done_tx.send(Some(sent));
    let replies = reader_task.await.map_err(|e| format!("reader task: {e}"))?;
    outcome.and(replies)
}

async fn http_publisher(
    plan: &Plan,
    stats: &Arc<PubStats>,
    sched: impl Iterator<Item = u64>,
    mut pacer: Pacer,
) -> Result<(), String> {
    let key = plan
        .api_key
        .as_deref()
        .ok_or("--publish-via http needs --api-key or HERALD_API_KEY")?;
    let mut p = tokio::time::timeout_at(plan.deadline, http::Publisher::connect(&plan.target, key))
        .await
        .map_err(|_| "timed out connecting".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    // The schedule starts once connected, so connecting does not make the first messages late.
    pacer.start();
    let topics = &plan.topics;
    for (j, i) in sched.enumerate() {
        if Instant::now() >= plan.deadline {
            break;
        }
        pacer
            .wait(j as u64)
            .await
            .map_err(|e| format!("timer: {e}"))?;
        if !plan.backlog_room(stats).await {
            break;
        }
        let (tp, seq) = ((i % topics.len() as u64) as usize, i / topics.len() as u64);
        let t = crate::now_ns();
        let mut body = Vec::with_capacity(plan.pad + 96);
        body.extend_from_slice(format!(r#"{{"topic":"{}","data":"#, topics[tp]).as_bytes());
        codec::json_data(&mut body, t, seq, plan.pad, plan.payload);
        body.push(b'}');
        stats.stamp(t, i);
        match tokio::time::timeout_at(plan.deadline, p.publish(body)).await {
            Err(_) => break,
            Ok(Ok(())) => stats.ok_for(i),
            Ok(Err(code)) => {
                let broken = code.starts_with("http");
                stats.refused(Some(i), code.clone());
                if broken {
                    return Err(code);
                }
            }
        }
    }
    Ok(())
}

/// Publishes with `FCALL herald_publish 1 <topic> <json>`, in order: the messages due are sent
/// as one pipeline (at most `inflight` calls) and the next batch waits for its answers, so a
/// topic's messages reach Redis in the order they were stamped.
async fn redis_publisher(
    plan: &Plan,
    stats: &Arc<PubStats>,
    sched: impl Iterator<Item = u64>,
    mut pacer: Pacer,
) -> Result<(), String> {
    let url = plan
        .redis_url
        .as_deref()
        .ok_or("--publish-via redis needs --redis-url")?;
    let client = redis::Client::open(url).map_err(|e| format!("--redis-url: {e}"))?;
    let mut conn =
        tokio::time::timeout_at(plan.deadline, redis::aio::ConnectionManager::new(client))
            .await
            .map_err(|_| "timed out connecting to Redis".to_string())?
            .map_err(|e| format!("connect to Redis: {e}"))?;
    // The schedule starts once connected, so connecting does not make the first messages late.
    pacer.start();
    let topics = &plan.topics;
    let max_batch = plan.inflight.max(1);
    let mut pipe = redis::pipe();
    let mut batch: Vec<u64> = Vec::with_capacity(max_batch);
    let flush = async |pipe: &mut redis::Pipeline,
                       batch: &mut Vec<u64>,
                       conn: &mut redis::aio::ConnectionManager| {
        if batch.is_empty() {
            return;
        }
        let r: redis::RedisResult<Vec<redis::Value>> = pipe.query_async(conn).await;
        for &i in batch.iter() {
            match &r {
                Ok(_) => stats.ok_for(i),
                Err(e) => stats.refused(Some(i), format!("redis: {e}")),
            }
        }
        pipe.clear();
        batch.clear();
    };
    for (j, i) in sched.enumerate() {
        if Instant::now() >= plan.deadline {
            break;
        }
        if !pacer.due_now(j as u64) || batch.len() >= max_batch || plan.over_backlog(stats) {
            flush(&mut pipe, &mut batch, &mut conn).await;
        }
        pacer
            .wait(j as u64)
            .await
            .map_err(|e| format!("timer: {e}"))?;
        if !plan.backlog_room(stats).await {
            break;
        }
        let (tp, seq) = ((i % topics.len() as u64) as usize, i / topics.len() as u64);
        let t = crate::now_ns();
        let mut data = Vec::with_capacity(plan.pad + 64);
        codec::json_data(&mut data, t, seq, plan.pad, plan.payload);
        stats.stamp(t, i);
        pipe.cmd("FCALL")
            .arg("herald_publish")
            .arg(1)
            .arg(&topics[tp])
            .arg(data);
        batch.push(i);
    }
    flush(&mut pipe, &mut batch, &mut conn).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_covers_every_message_once() {
        for (total, topics, p) in [
            (10u64, 3usize, 2usize),
            (7, 10, 3),
            (100, 1, 1),
            (1000, 7, 4),
        ] {
            let mut all: Vec<u64> = (0..p).flat_map(|k| schedule(total, topics, k, p)).collect();
            all.sort();
            assert_eq!(all, (0..total).collect::<Vec<_>>());
            let sum: u64 = (0..topics).map(|tp| per_topic(total, topics, tp)).sum();
            assert_eq!(sum, total);
        }
    }
}
