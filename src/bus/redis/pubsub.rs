//! The Redis bus's own pub/sub connection (RESP3): built and rebuilt here whatever error a
//! reconnect meets, subscribed to exactly the channels watched, and what it does with each push
//! (messages to the hub through [`super::deliveries`], presence changes, directed messages and
//! disconnect orders to their sinks, the liveness probe to its counter, a drop to the monitor).

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
        let mut w = self.watched.lock().await;
        let n = w.entry(ch.clone()).or_insert(0);
        if *n == 0 {
            let subscribed = match self.pubsub_conn() {
                Ok(mut s) => s.subscribe(&ch).await.map_err(|e| self.pubsub_failed(e)),
                Err(e) => Err(e),
            };
            if let Err(e) = subscribed {
                w.remove(&ch);
                return Err(e);
            }
        }
        *n += 1;
        Ok(())
    }

    /// One local watcher of `ch` fewer: UNSUBSCRIBE after the last. True when it was the last
    /// (even if UNSUBSCRIBE failed: a rebuilt connection leaves the channel out, and messages
    /// of unwatched channels are dropped).
    pub(super) async fn unsubscribe_counted(&self, ch: String) -> bool {
        let mut w = self.watched.lock().await;
        let Some(n) = w.get_mut(&ch) else {
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        w.remove(&ch);
        if let Ok(mut s) = self.pubsub_conn()
            && let Err(e) = s.unsubscribe(&ch).await
        {
            let e = self.pubsub_failed(e);
            tracing::debug!(error = ?e, "UNSUBSCRIBE {ch} failed");
        }
        true
    }
}
