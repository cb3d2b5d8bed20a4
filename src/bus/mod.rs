//! The bus: where a published message gets its offset and epoch, where history is kept for
//! recovery, and where messages come from for the hub. A narrow trait with two implementations:
//! the in-process bus (the embedded default) and Redis (a cluster of nodes). `server.rs` hands
//! the bus its sinks, which feed the hub, so the two never import each other. Besides messages,
//! the bus carries what goes to one user wherever connected ([`Directs`]): directed messages and
//! disconnect orders (why those share the user's channel in Redis: `redis/users.rs`). The
//! nodes' dashboard summaries have their narrow trait too ([`summaries::Summaries`]).

pub(crate) mod local;
pub(crate) mod redis;
pub(crate) mod summaries;

use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::{ErrorCode, Message, Position, Topic};

/// A boxed future (futures_util's), so the traits stay object safe.
pub(crate) use futures_util::future::BoxFuture;

/// Where the bus hands every message, in offset order per topic.
pub(crate) type Sink = Arc<dyn Fn(&Message) + Send + Sync>;

/// A message for one user, wherever the user is connected: not stored, at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Direct {
    /// The user (a JWT's `sub`).
    pub user: Arc<str>,
    /// The backend that sent it, when it named itself.
    pub from: Option<Arc<str>>,
    /// The payload, JSON text.
    pub data: Bytes,
}

/// Where the bus hands every directed message.
pub(crate) type DirectSink = Arc<dyn Fn(&Direct) + Send + Sync>;

/// An order to close connections of one user with 4003 (`disconnected`), wherever they are:
/// every connection of the user, or only the one named. Not stored: a connection opened after
/// the order is not affected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// The user (a JWT's `sub`).
    pub user: Arc<str>,
    /// Only this connection (its id, as in its `welcome`); every one of the user's when `None`.
    pub conn: Option<Arc<str>>,
}

/// True when `c` can be a connection id, as a disconnect order names it: 1 to 128 bytes of
/// `A-Z a-z 0-9 _ -` (what `herald_disconnect` accepts too; ids are `<node id>-<hex>`).
pub(crate) fn is_conn_id(c: &[u8]) -> bool {
    (1..=128).contains(&c.len())
        && c.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Where the bus hands every disconnect order; answers whether this node holds a connection of
/// the user (whether or not it was the one named).
pub(crate) type DisconnectSink = Arc<dyn Fn(&Disconnect) -> bool + Send + Sync>;

/// Someone joined or left a presence topic.
#[derive(Debug, Clone)]
pub(crate) struct PresenceEvent {
    /// The topic.
    pub topic: Topic,
    /// True for a join, false for a leave.
    pub join: bool,
    /// The connection.
    pub conn: Arc<str>,
    /// Its user.
    pub user: Arc<str>,
}

/// Where the bus hands every presence change.
pub(crate) type PresenceSink = Arc<dyn Fn(&PresenceEvent) + Send + Sync>;

/// Where the bus says that it cannot deliver a topic's messages without a gap (its live path
/// broke and the missed messages could not be read back): every local subscriber of the topic
/// must be told to resume elsewhere with `since` (closed with 1012), never left with a gap.
pub(crate) type LostSink = Arc<dyn Fn(&Topic) + Send + Sync>;

/// Everything the bus delivers to, in one place (the hub, wired by `server.rs`).
#[derive(Clone)]
pub(crate) struct Sinks {
    /// Published messages.
    pub messages: Sink,
    /// Directed messages.
    pub direct: DirectSink,
    /// Disconnect orders.
    pub disconnect: DisconnectSink,
    /// Presence changes.
    pub presence: PresenceSink,
    /// Topics whose delivery has a gap that cannot be filled (the in-process bus never has one).
    pub lost: LostSink,
}

/// Most messages one read of history returns ([`Bus::replay`], [`Bus::replay_more`]): a replay
/// is read and queued page by page, so that what it holds is one page, not the history.
pub(crate) const REPLAY_PAGE: usize = 1000;

/// What a subscriber gets when it joins a topic.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The topic's latest position (offset 0 if nothing was ever published in this epoch).
    pub latest: Position,
    /// The messages after the requested position, oldest first, at most [`REPLAY_PAGE`] of them:
    /// when the last is before `latest`, the rest follows with [`Bus::replay_more`]. `None` when
    /// they cannot be replayed exactly (another epoch, beyond the latest, or history no longer
    /// reaches back).
    pub messages: Option<Vec<Message>>,
}

/// Why the bus could not do something.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus is not reachable, or refused (retryable). What clients are told is only this;
    /// the cause (Redis's own words) is kept for the logs.
    #[error("the message bus is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl BusError {
    /// The `error` code a client gets for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            BusError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

/// Messages: where they get their offsets and history, and whether delivery works. Both buses.
pub trait Messages: Send + Sync + 'static {
    /// Appends `data` (JSON text) to `topic` and delivers it; returns its position.
    fn publish(&self, topic: &Topic, data: Bytes) -> BoxFuture<'_, Result<Position, BusError>>;
    /// The latest position, and the messages after `since` when given.
    fn replay(
        &self,
        topic: &Topic,
        since: Option<&Position>,
    ) -> BoxFuture<'_, Result<Replay, BusError>>;
    /// The next page of a replay: at most [`REPLAY_PAGE`] messages after `after`, oldest first,
    /// starting right after it; `None` when the history no longer continues exactly from there
    /// (its epoch changed, or it was trimmed past `after`).
    fn replay_more(
        &self,
        topic: &Topic,
        after: &Position,
    ) -> BoxFuture<'_, Result<Option<Vec<Message>>, BusError>>;
    /// True while publishing and delivery work.
    fn is_ready(&self) -> bool;
}

/// Which topics and users this node listens for, so that what is published elsewhere reaches
/// it. Only a bus shared by several nodes has it (Redis); in one process everything published
/// reaches the sinks anyway, so the in-process bus does not implement it.
pub trait Interest: Send + Sync + 'static {
    /// One more local subscriber of `topic`; when this completes, every message published from
    /// then on reaches the sink. Call once per subscription, before [`Messages::replay`].
    fn watch(&self, topic: &Topic) -> BoxFuture<'_, Result<(), BusError>>;
    /// One local subscriber of `topic` fewer (one call per successful [`Interest::watch`]).
    fn unwatch(&self, topic: &Topic) -> BoxFuture<'_, Result<(), BusError>>;
    /// One more local connection of `user` (call once per connection, before it can miss a
    /// directed message).
    fn watch_user(&self, user: &str) -> BoxFuture<'_, Result<(), BusError>>;
    /// One local connection of `user` fewer (one call per successful [`Interest::watch_user`]).
    fn unwatch_user(&self, user: &str) -> BoxFuture<'_, Result<(), BusError>>;
}

/// Directed messages and disconnect orders: to every connection of a user (or one of them), on
/// every node. Both buses.
pub trait Directs: Send + Sync + 'static {
    /// Sends a directed message to every connection of its user, on every node.
    fn publish_direct(&self, direct: Direct) -> BoxFuture<'_, Result<(), BusError>>;
    /// Sends a disconnect order to every node that holds a connection of its user (this one
    /// included); each closes the matching connections with 4003 as it receives it, which on a
    /// shared bus may be after this returns. Returns how many nodes received it.
    fn disconnect(&self, order: Disconnect) -> BoxFuture<'_, Result<usize, BusError>>;
}

/// Who is subscribed to a topic, across the cluster. Both buses.
pub trait Presence: Send + Sync + 'static {
    /// Adds connection `conn` of `user` to `topic`'s presence; every subscriber gets a `join`.
    fn presence_join(
        &self,
        topic: &Topic,
        conn: &str,
        user: &str,
    ) -> BoxFuture<'_, Result<(), BusError>>;
    /// Removes it; every subscriber gets a `leave`.
    fn presence_leave(
        &self,
        topic: &Topic,
        conn: &str,
        user: &str,
    ) -> BoxFuture<'_, Result<(), BusError>>;
    /// Who is in `topic`'s presence, across the cluster: `(conn, user)` pairs.
    fn presence(&self, topic: &Topic) -> BoxFuture<'_, Result<Vec<(String, String)>, BusError>>;
}

/// Connections per user, counted across the cluster (for `max_connections_per_user`). Both buses.
pub trait ConnCounts: Send + Sync + 'static {
    /// Counts a new connection `conn` of `user`; false (and not counted) when the user already
    /// has `limit`.
    fn open_conn(
        &self,
        user: &str,
        conn: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<bool, BusError>>;
    /// Stops counting connection `conn` of `user`.
    fn close_conn(&self, user: &str, conn: &str) -> BoxFuture<'_, Result<(), BusError>>;
}

/// What every bus does: messages, directed messages, presence and connection counts. (What
/// only a shared bus does is [`Interest`].)
pub trait Bus: Messages + Directs + Presence + ConnCounts {}

impl<T: Messages + Directs + Presence + ConnCounts> Bus for T {}
