//! Herald's integration tests: real nodes on 127.0.0.1 port 0, real sockets, real clients.
//!
//! Each module covers one part of the wire contract (`proto/README.md`); `support` is the harness.

mod support;

mod auth_hook;
mod bad_input;
mod browser;
mod cli;
mod close_codes;
mod cluster;
mod cluster_faults;
mod compression;
mod dashboard;
mod direct;
mod disconnect;
mod events;
mod fanout;
mod frames;
mod fuzz_regressions;
mod heartbeat;
mod hostile;
mod http_api;
mod jwt_keys;
mod local_cluster;
mod logs;
mod metrics;
mod presence;
mod proxy;
mod recovery;
mod redis_keys;
mod redis_recovery;
mod rolling;
mod sessions;
mod shutdown;
mod slow_consumer;
mod tickets;
mod tls;
mod upgrade;
