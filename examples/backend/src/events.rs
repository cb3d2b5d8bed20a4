//! Reading Herald's lifecycle events from the Redis stream with a consumer group (`XREADGROUP`),
//! as proto/events.md describes: each event handled once per group, acknowledged after it is
//! counted. Here "handled" is counting by kind; an app would update its own state.

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamReadOptions, StreamReadReply};
use serde_json::{Value, json};
use tokio::sync::watch;

/// How long one `XREADGROUP` blocks.
const BLOCK_MS: usize = 2000;
/// Entries per read.
const COUNT: usize = 100;

/// Events seen, by kind. Locked only to count or copy.
#[derive(Default)]
pub(crate) struct Counts {
    by_kind: Mutex<BTreeMap<String, u64>>,
}

impl Counts {
    pub(crate) fn snapshot(&self) -> Value {
        json!(*self.by_kind.lock())
    }
}

/// Reads `stream` as `group` until `stop`; reconnects (every second) when Redis is away.
pub(crate) async fn read(
    client: redis::Client,
    stream: String,
    group: String,
    counts: std::sync::Arc<Counts>,
    mut stop: watch::Receiver<bool>,
) {
    // Answers may take the whole block: the timeout is longer.
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS as u64 + 2000)));
    loop {
        let run = async {
            let mut conn =
                ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(&group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            if let Err(e) = created
                && e.code() != Some("BUSYGROUP")
            {
                return Err(e);
            }
            let opts = StreamReadOptions::default()
                .group(&group, "worker-1")
                .count(COUNT)
                .block(BLOCK_MS);
            loop {
                let reply: StreamReadReply =
                    redis::AsyncCommands::xread_options(&mut conn, &[&stream], &[">"], &opts)
                        .await?;
                for key in reply.keys {
                    let mut ids = Vec::with_capacity(key.ids.len());
                    for entry in key.ids {
                        let kind: Option<String> = entry.get("event");
                        let kind = kind.unwrap_or_else(|| "unknown".into());
                        tracing::debug!(id = %entry.id, %kind, "lifecycle event");
                        *counts.by_kind.lock().entry(kind).or_default() += 1;
                        ids.push(entry.id);
                    }
                    if !ids.is_empty() {
                        let _: u64 =
                            redis::AsyncCommands::xack(&mut conn, &stream, &group, &ids).await?;
                    }
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            _ = stop.changed() => return,
            r = run => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "lifecycle events: reading failed; again in 1 s");
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
