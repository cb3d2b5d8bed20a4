//! Node summaries through Redis: each node writes its own as `P{nodes}:summary:<node>` with a
//! time to live, and notes itself in the sorted set `P{nodes}:summaries` (scored by when it last
//! wrote, unix ms), so that a reader finds the live ones without scanning keys. Every key shares
//! the `{nodes}` hash tag (one slot). Bounded: the set drops members silent for a minute, a read
//! takes the [`MAX_NODES`] most recent and skips a summary over [`MAX_SUMMARY_BYTES`] (an expired
//! one reads as nil and is skipped too).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::Value;

use super::RedisBus;
use crate::bus::summaries::{MAX_NODES, MAX_SUMMARY_BYTES, Summaries};
use crate::bus::{BoxFuture, BusError};

/// How long a node that stopped writing stays in the set (its summary expires long before).
const FORGET_MS: u64 = 60_000;
/// The bound of one write or read.
const DEADLINE: Duration = Duration::from_secs(1);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedisBus {
    fn summary_key(&self, node: &str) -> String {
        format!("{}{{nodes}}:summary:{node}", self.prefix)
    }

    fn summaries_key(&self) -> String {
        format!("{}{{nodes}}:summaries", self.prefix)
    }
}

fn timed_out() -> BusError {
    BusError::Unavailable("Redis did not answer in time".into())
}

impl Summaries for RedisBus {
    fn share_summary(
        &self,
        node: &str,
        summary: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), BusError>> {
        let (key, set, node) = (
            self.summary_key(node),
            self.summaries_key(),
            node.to_owned(),
        );
        Box::pin(async move {
            if summary.len() > MAX_SUMMARY_BYTES {
                return Err(BusError::Unavailable("the summary is over its size".into()));
            }
            self.check_reachable()?;
            let now = unix_ms();
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(&key)
                .arg(&summary[..])
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .ignore()
                .cmd("ZADD")
                .arg(&set)
                .arg(now)
                .arg(&node)
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&set)
                .arg("-inf")
                .arg(format!("({}", now.saturating_sub(FORGET_MS)))
                .ignore()
                .cmd("PEXPIRE")
                .arg(&set)
                .arg(FORGET_MS)
                .ignore();
            let mut c = self.cmd.get();
            let r: redis::RedisResult<()> =
                tokio::time::timeout(DEADLINE, pipe.query_async(&mut c))
                    .await
                    .map_err(|_| timed_out())?;
            r.map_err(|e| self.failed(e))
        })
    }

    fn summaries(&self) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, BusError>> {
        let set = self.summaries_key();
        Box::pin(async move {
            self.check_reachable()?;
            let mut c = self.cmd.get();
            let read = async {
                let since = unix_ms().saturating_sub(FORGET_MS);
                let nodes: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&set)
                    .arg("+inf")
                    .arg(since)
                    .arg("BYSCORE")
                    .arg("REV")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(MAX_NODES)
                    .query_async(&mut c)
                    .await?;
                if nodes.is_empty() {
                    return Ok(Vec::new());
                }
                let keys: Vec<String> = nodes.iter().map(|n| self.summary_key(n)).collect();
                let values: Vec<Value> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
                Ok::<_, redis::RedisError>(
                    nodes
                        .into_iter()
                        .zip(values)
                        .filter_map(|(node, v)| match v {
                            Value::BulkString(b) if b.len() <= MAX_SUMMARY_BYTES => {
                                Some((node, Bytes::from(b)))
                            }
                            _ => None,
                        })
                        .collect(),
                )
            };
            let r = tokio::time::timeout(DEADLINE, read)
                .await
                .map_err(|_| timed_out())?;
            r.map_err(|e| self.failed(e))
        })
    }
}
