//! Herald: a pub/sub fan-out WebSocket gateway.
//!
//! Clients exchange a JWT for a one-time ticket (`POST /v1/tickets`), open a WebSocket with it,
//! subscribe to topics and receive every message published to them, in order and without gaps,
//! even across reconnects (`since`). Backends publish with `POST /v1/publish`.
//!
//! How a message travels: a publish (`POST /v1/publish`, a client's `pub`, or a backend's
//! `FCALL herald_publish` straight to Redis) reaches the [`bus`], which gives it its offset and
//! keeps it in history ([`bus::local`] in process, [`bus::redis`] through Redis and its pub/sub);
//! the bus hands every message to the sink that [`server`] wired to the [`hub`]; the hub encodes
//! it once per codec and pushes the same bytes into the bounded outbox of each local subscriber;
//! each connection's task ([`gateway::connection`]) drains its outbox into coalesced writes on its
//! socket.
//!
//! The module map:
//!
//! | module | owns | may import (besides leaves) |
//! |---|---|---|
//! | [`server`] | composition root: builds everything from [`config::Config`], wires bus to hub, owns shutdown | everything |
//! | [`gateway`] | the only module with sockets: listener, HTTP routes, upgrade checks, one task per connection | `auth`, `bus`, `config`, `hub`, `lifecycle`, `proxy` |
//! | [`lifecycle`] | connect, disconnect and subscribe events for the backend, at least once | `config`, `proxy` |
//! | [`hub`] | topics and local subscribers, encode-once fan-out, per-connection bounded outbox | none |
//! | [`bus`] | where messages get their offsets and history, as narrow traits (`Messages`, `Directs`, `Presence`, `ConnCounts`; `Interest` only for a bus shared by nodes): the in-process bus (default) or Redis | `auth`, `config`, `lifecycle` (the Redis ticket store and event log live in `bus::redis`, on its command connection) |
//! | [`auth`] | JWT verification, one-time tickets, grants | none |
//! | [`proxy`] | backend services: balancing, health checks, forwarding `send` | `config` |
//! | [`config`] | raw (file, env) to validated [`config::Config`]; the only reader of files and env | none |
//! | [`protocol`] | frames, codecs (JSON, MessagePack), RFC 6455 framing, close codes; pure | nothing |
//! | [`metrics`], [`shutdown`], [`fdlimit`] | leaves: anyone may import them (and `protocol`) | nothing |
//!
//! Nothing imports `server`, and only `server` imports `gateway` (besides [`fuzz`], the fuzz
//! targets' entry points). No module reaches into another's
//! private parts: every Redis type stays inside `bus::redis` (besides the fuzz entry points).
//!
//! Where each technique lives: encode once per codec ([`hub::topic`]), the byte-bounded outbox and
//! its slow-consumer policy ([`hub::outbox`]), coalesced writes ([`gateway::connection`]),
//! gapless catch-up on subscribe ([`hub`]), the shared heartbeat timer ([`hub::heartbeat`]), the
//! sampled publish-to-write probe ([`hub::probe`]). Each node owns its [`metrics`] (no process
//! globals): the hub counts per fan-out, the connections per write batch.

// Public: what the binary, the integration tests, the fuzz targets and the codec bench use.
// Everything else is `pub(crate)`, and `unreachable_pub` (workspace lints) keeps it so.
pub mod auth;
pub(crate) mod bus;
pub mod config;
pub(crate) mod fdlimit;
#[doc(hidden)]
pub mod fuzz;
pub mod gateway;
pub mod hub;
pub(crate) mod lifecycle;
pub mod metrics;
pub mod protocol;
pub(crate) mod proxy;
pub mod server;
pub(crate) mod shutdown;
