//! Herald: a pub/sub fan-out WebSocket gateway.
//!
//! Clients exchange a JWT for a one-time ticket (`POST /v1/tickets`), open a WebSocket with it,
//! subscribe to topics and receive every message published to them, in order and without gaps,
//! even across reconnects (`since`). Backends publish with `POST /v1/publish`.
//!
//! The module map (dependencies point downward only):
//!
//! | module | owns |
//! |---|---|
//! | [`server`] | composition root: builds everything from [`config::Config`], wires bus to hub, owns shutdown |
//! | [`gateway`] | the only module with sockets: listener, HTTP routes, upgrade checks, one task per connection |
//! | [`hub`] | topics and local subscribers, encode-once fan-out, per-connection bounded outbox |
//! | [`bus`] | where messages get their offsets and history: the in-process bus (default) |
//! | [`auth`] | JWT verification, one-time tickets, grants |
//! | [`proxy`] | backend services: balancing, health checks, forwarding `send` |
//! | [`lifecycle`] | connect, disconnect and subscribe events for the backend, at least once |
//! | [`protocol`] | frames, codecs (JSON, MessagePack), RFC 6455 framing, close codes; pure |
//! | [`config`] | raw (file, env) to validated [`config::Config`]; the only reader of files and env |
//! | [`metrics`], [`shutdown`] | leaves |
//!
//! Where each technique lives: encode once per codec ([`hub::topic`]), the byte-bounded outbox and
//! its slow-consumer policy ([`hub::outbox`]), coalesced writes ([`gateway::connection`]),
//! gapless catch-up on subscribe ([`hub`]), the shared heartbeat timer ([`hub::heartbeat`]).

pub mod auth;
pub mod bus;
pub mod config;
#[doc(hidden)]
pub mod fuzz;
pub mod gateway;
pub mod hub;
pub mod lifecycle;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod shutdown;
