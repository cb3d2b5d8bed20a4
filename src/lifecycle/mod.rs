//! Lifecycle events: connect, disconnect, subscribe and unsubscribe, recorded at least once for
//! the backend (proto/events.md). Two implementations of one narrow trait: the Redis stream of a
//! cluster ([`redis`]), and a journal file plus POSTs to a service on a single node
//! ([`journal`], [`webhook`]).
//!
//! The guarantee comes from the order of things, not from retries alone: a connect is recorded
//! before the 101 and a subscribe or unsubscribe before its `ok` (when it cannot be, the client
//! is refused with `unavailable`), so nothing the backend was not told about ever happens. A
//! disconnect cannot be refused; it is recorded by the node, or retried until it is, or (the node
//! died) recorded for it by another node or by the node's next start.

pub(crate) mod journal;
pub(crate) mod webhook;

use std::sync::Arc;

use crate::config::events::{EventKind, EventsConfig};
use crate::protocol::Topic;
use futures_util::future::BoxFuture;

/// One event to record.
#[derive(Debug, Clone)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The connection's id (as in its `welcome`).
    pub conn: Arc<str>,
    /// Its user.
    pub user: Arc<str>,
    /// The topic, for subscribe and unsubscribe.
    pub topic: Option<Topic>,
    /// The close code, for a disconnect (1006 when the connection just broke).
    pub code: Option<u16>,
}

/// Why an event could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The event log is out of reach (Redis away); trying again later may succeed.
    #[error("lifecycle events cannot be recorded right now")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Too many events wait for the service; new connections and subscriptions wait for it.
    #[error("{0} lifecycle events wait for the events service; try again shortly")]
    Backlog(usize),
    /// The journal file could not be read or written.
    #[error("events journal {path}: {source}")]
    Journal {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl LifecycleError {
    /// The `error` code a client gets for it (its connection or subscription waits: retry).
    pub fn code(&self) -> crate::protocol::ErrorCode {
        crate::protocol::ErrorCode::Unavailable
    }
}

/// Where events are recorded.
pub trait EventLog: Send + Sync + 'static {
    /// Records `event` durably (in Redis, or in the journal) before answering `Ok`. A disconnect
    /// is never refused: when it cannot be recorded now, the log keeps it and tries again.
    fn record(&self, event: Event) -> BoxFuture<'_, Result<(), LifecycleError>>;
    /// Events recorded and not yet taken by their destination (for the metrics).
    fn pending(&self) -> usize {
        0
    }
}

/// What the gateway holds: the enabled kinds and the log (none when events are off).
#[derive(Clone, Default)]
pub struct Lifecycle {
    inner: Option<(EventsConfig, Arc<dyn EventLog>)>,
}

impl Lifecycle {
    /// Events on, recorded in `log`.
    pub fn new(config: EventsConfig, log: Arc<dyn EventLog>) -> Lifecycle {
        Lifecycle {
            inner: Some((config, log)),
        }
    }

    async fn record(
        &self,
        kind: EventKind,
        conn: &Arc<str>,
        user: &Arc<str>,
        topic: Option<&Topic>,
        code: Option<u16>,
    ) -> Result<(), LifecycleError> {
        let Some((config, log)) = &self.inner else {
            return Ok(());
        };
        if !config.records(kind) {
            return Ok(());
        }
        let event = Event {
            kind,
            conn: conn.clone(),
            user: user.clone(),
            topic: topic.cloned(),
            code,
        };
        log.record(event).await
    }

    /// Events recorded and not yet taken by their destination (0 when events are off).
    pub fn pending(&self) -> usize {
        self.inner.as_ref().map_or(0, |(_, log)| log.pending())
    }

    /// Records a connect; the upgrade is refused when this fails.
    pub async fn connected(&self, conn: &Arc<str>, user: &Arc<str>) -> Result<(), LifecycleError> {
        self.record(EventKind::Connect, conn, user, None, None)
            .await
    }

    /// Records a subscribe; the subscription is refused when this fails.
    pub async fn subscribed(
        &self,
        conn: &Arc<str>,
        user: &Arc<str>,
        topic: &Topic,
    ) -> Result<(), LifecycleError> {
        self.record(EventKind::Subscribe, conn, user, Some(topic), None)
            .await
    }

    /// Records an unsubscribe; the unsubscribe is refused when this fails.
    pub async fn unsubscribed(
        &self,
        conn: &Arc<str>,
        user: &Arc<str>,
        topic: &Topic,
    ) -> Result<(), LifecycleError> {
        self.record(EventKind::Unsubscribe, conn, user, Some(topic), None)
            .await
    }

    /// Records a disconnect (kept and retried by the log when it cannot be recorded now).
    /// Boxed, and only when events are on: it is awaited at the end of every connection's task,
    /// and inline it would size every idle connection's task.
    pub fn disconnected(
        &self,
        conn: &Arc<str>,
        user: &Arc<str>,
        code: u16,
    ) -> Option<BoxFuture<'static, ()>> {
        let (config, log) = self.inner.as_ref()?;
        if !config.records(EventKind::Disconnect) {
            return None;
        }
        let event = Event {
            kind: EventKind::Disconnect,
            conn: conn.clone(),
            user: user.clone(),
            topic: None,
            code: Some(code),
        };
        let log = log.clone();
        Some(Box::pin(async move {
            let conn = event.conn.clone();
            if let Err(e) = log.record(event).await {
                tracing::warn!(error = ?e, "disconnect of {conn} not recorded yet");
            }
        }))
    }
}
