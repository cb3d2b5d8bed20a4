//! Lifecycle events of a single node: journaled ([`super::journal`]), then POSTed in order, in
//! batches, to the configured service through the proxy (its balancing, health checks and
//! timeouts): `POST {endpoint}{path}` with `{"node": .., "events": [..]}`. A batch is dropped
//! from the journal only after a 2xx; until then it is sent again (with backoff), so the service
//! sees every event at least once and dedupes by `seq`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::journal::Journal;
use super::{Event, EventLog, LifecycleError};
use crate::config::events::EventKind;
use crate::proxy::Proxy;
use futures_util::future::BoxFuture;

/// Events per POST.
const BATCH: usize = 256;
/// Unsent events past which new connections and subscriptions are refused (`unavailable`)
/// until the service catches up. Disconnects are always taken: there is one per connection.
pub(crate) const MAX_UNSENT: usize = 100_000;

/// The event log of a single node.
pub(crate) struct WebhookEvents {
    /// The journal. Plain mutex: every use is a short, synchronous file append or read, never
    /// held across `.await`.
    journal: parking_lot::Mutex<Journal>,
    /// Wakes the sender when an event was journaled.
    wake: Notify,
    /// Wakes [`WebhookEvents::flush`] when a batch was acknowledged.
    acked: Notify,
    node: String,
    service: String,
    proxy: Arc<Proxy>,
    /// Stops the sender once [`WebhookEvents::flush`] has had its chance (at shutdown).
    done: CancellationToken,
}

impl WebhookEvents {
    /// Opens the journal (recording a previous run's leftovers) and starts the sender. The
    /// sender runs until [`WebhookEvents::flush`] (after the drain), so that the disconnects of
    /// the drain still go out.
    pub(crate) fn start(
        journal: &std::path::Path,
        node: &str,
        service: &str,
        proxy: Arc<Proxy>,
    ) -> Result<Arc<WebhookEvents>, LifecycleError> {
        let (j, left) = Journal::open(journal, node)?;
        if left > 0 {
            tracing::info!("recorded {left} disconnects left open by this node's previous run");
        }
        let ev = Arc::new(WebhookEvents {
            journal: parking_lot::Mutex::new(j),
            wake: Notify::new(),
            acked: Notify::new(),
            node: node.to_owned(),
            service: service.to_owned(),
            proxy,
            done: CancellationToken::new(),
        });
        tokio::spawn(ev.clone().send_forever());
        Ok(ev)
    }

    /// Events not yet acknowledged by the service.
    pub(crate) fn unsent(&self) -> usize {
        self.journal.lock().unsent()
    }

    /// Waits until every event was acknowledged, or `bound` passed (what is left stays in the
    /// journal for the next start), then stops the sender.
    pub(crate) async fn flush(&self, bound: Duration) {
        self.flush_inner(bound).await;
        self.done.cancel();
    }

    async fn flush_inner(&self, bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let acked = self.acked.notified();
            let left = self.unsent();
            if left == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, acked).await.is_err() {
                tracing::warn!("{left} lifecycle events left unsent in the journal for next start");
                return;
            }
        }
    }

    async fn send_forever(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let wake = self.wake.notified();
            let batch = self.journal.lock().batch(BATCH);
            let Some((last, events)) = batch else {
                tokio::select! {
                    _ = wake => continue,
                    _ = self.done.cancelled() => return,
                }
            };
            let mut body =
                Vec::with_capacity(64 + events.iter().map(|e| e.len() + 1).sum::<usize>());
            body.extend_from_slice(b"{\"node\":");
            serde_json::to_writer(&mut body, &self.node).expect("a string serialises");
            body.extend_from_slice(b",\"events\":[");
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(e);
            }
            body.extend_from_slice(b"]}");
            let id = format!("{}-events-{last}", self.node);
            match self
                .proxy
                .post(&self.service, &self.node, &id, Bytes::from(body))
                .await
            {
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    if let Err(e) = self.journal.lock().ack(last) {
                        tracing::error!("{e}");
                    }
                    self.acked.notify_waiters();
                }
                Err(e) => {
                    tracing::warn!(
                        "lifecycle events to {:?} not taken ({e}); again in {backoff:?}",
                        self.service
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.done.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

impl EventLog for WebhookEvents {
    fn record(&self, event: Event) -> BoxFuture<'_, Result<(), LifecycleError>> {
        let r = {
            let mut j = self.journal.lock();
            let unsent = j.unsent();
            if event.kind == EventKind::Disconnect {
                if j.is_open(&event.conn) {
                    j.append(&event, &self.node, None)
                } else {
                    Ok(())
                }
            } else if unsent >= MAX_UNSENT {
                Err(LifecycleError::Backlog(unsent))
            } else {
                j.append(&event, &self.node, None)
            }
        };
        if r.is_ok() {
            self.wake.notify_one();
        }
        Box::pin(std::future::ready(r))
    }

    fn pending(&self) -> usize {
        self.unsent()
    }
}
