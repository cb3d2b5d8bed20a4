//! Configuration: the only reader of the config file and of the environment.
//!
//! Two stages: [`raw`] reads an optional TOML file and overlays the `HERALD_*` environment
//! variables on it, refusing unknown keys; [`Config::load`] then validates every value, applies
//! the defaults, decides development mode and generates its secrets. It fails loudly: every
//! problem is a [`ConfigError`] naming the key, as written in the file and as its environment
//! variable, and saying what is wrong and what is expected. Secrets are never echoed, nor shown
//! by `Debug`.

pub mod admin;
mod checks;
pub mod compression;
pub mod events;
pub mod identity;
pub mod limits;
pub mod operations;
mod origins;
pub mod raw;
pub mod services;

use checks::*;

use std::fmt;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use origins::parse_origins;
pub use origins::{Allowed, Origins};
use raw::{
    API_KEY, HISTORY_BYTES, HISTORY_SIZE, HISTORY_TTL_SECS, JWT_AUDIENCE, JWT_ISSUER,
    JWT_LEEWAY_SECS, JWT_SECRET, LISTEN, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_USER,
    MAX_MESSAGE_BYTES, MAX_SUBSCRIPTIONS, NODE_ID, NODE_TTL_SECS, OUTBOX_BYTES, PING_INTERVAL_SECS,
    PRESENCE_TOPICS, RATE_BURST, RATE_LIMIT, REDIS_PREFIX, REDIS_URL, TICKET_TTL_SECS, TLS_CERT,
    TLS_KEY,
};
pub use raw::{KEYS, Key, RawConfig};

/// Where a cluster's Redis is, and the prefix of Herald's keys and channels in it.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` (`rediss://` is refused: no TLS in this build).
    pub url: String,
    /// Prefix of every key and channel (default `herald:`).
    pub prefix: String,
}

/// `url` without its credentials (`scheme://***@host...`), for logs and messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The default prefix of Redis keys and channels.
pub const DEFAULT_REDIS_PREFIX: &str = "herald:";

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Shortest accepted API key, in characters.
pub const MIN_API_KEY_CHARS: usize = 16;
/// Shortest accepted JWT secret, in bytes.
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// Upper bound of durations the table gives no maximum for (a year), so that adding them to an
/// `Instant` can never overflow.
const MAX_SECS: u64 = 365 * 24 * 3600;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read the config file {}", .path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not TOML.
    #[error("the config file {} is not valid TOML", .path.display())]
    FileSyntax {
        /// The file.
        path: PathBuf,
        /// Where and why (with the offending line).
        #[source]
        source: toml::de::Error,
    },
    /// A key in the config file that Herald does not know.
    #[error(
        "unknown key `{key}` in the config file {}{hint}; the known keys are: {}",
        .path.display(),
        known_names()
    )]
    UnknownFileKey {
        /// The file.
        path: PathBuf,
        /// The unknown key.
        key: String,
        /// A suggestion, or empty.
        hint: String,
    },
    /// A `HERALD_*` environment variable that Herald does not know.
    #[error(
        "unknown environment variable {name}{hint}; Herald reads only these HERALD_ variables: {}",
        known_envs()
    )]
    UnknownEnvVar {
        /// The variable's name (never its value).
        name: String,
        /// A suggestion, or empty.
        hint: String,
    },
    /// A `[services.NAME]` table that is wrong.
    #[error("services.{name}: {problem}")]
    Service {
        /// The service's name.
        name: String,
        /// What is wrong and what is expected.
        problem: String,
    },
    /// A value that is missing, of the wrong type, or out of range.
    #[error("{key}: {problem}")]
    Invalid {
        /// The key.
        key: Key,
        /// What is wrong and what is expected.
        problem: String,
    },
    /// A TLS file that cannot be opened.
    #[error("{key}: cannot open {}; expected a readable PEM file", .path.display())]
    TlsFile {
        /// `tls_cert` or `tls_key`.
        key: Key,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The operating system's random number generator failed.
    #[error("could not get random bytes from the operating system to generate {what}")]
    Random {
        /// What was being generated.
        what: &'static str,
        /// Why.
        #[source]
        source: getrandom::Error,
    },
}

impl ConfigError {
    /// The key the error is about, when it is about a known key.
    pub fn key(&self) -> Option<Key> {
        match self {
            ConfigError::Invalid { key, .. } | ConfigError::TlsFile { key, .. } => Some(*key),
            _ => None,
        }
    }
}

fn known_names() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

fn known_envs() -> String {
    KEYS.iter().map(|k| k.env).collect::<Vec<_>>().join(", ")
}

fn invalid(key: Key, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// The TLS certificate chain and private key, both PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Secrets Herald generated because none were configured (development mode), for `main` to
/// print once. Outside development mode both are `None`.
#[derive(Clone, Default)]
pub struct GeneratedSecrets {
    /// The generated API key (also in [`Config::api_key`]).
    pub api_key: Option<String>,
    /// The generated JWT secret: 32 random bytes as base64url. The secret is this text's
    /// bytes (also in [`Config::jwt_secret`]), so it works as `HERALD_JWT_SECRET` as printed.
    pub jwt_secret: Option<String>,
}

impl fmt::Debug for GeneratedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedSecrets")
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// A secret: used as the value inside (it dereferences to it), printed as `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted<T>(pub T);

impl<T> std::ops::Deref for Redacted<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The validated configuration. `Debug` (derived: every field shows) redacts the secrets.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on (loopback only in development mode).
    pub listen: SocketAddr,
    /// This node's name: 1 to 64 of `[A-Za-z0-9_-]`.
    pub node_id: String,
    /// The server API key for `POST /v1/publish`.
    pub api_key: Redacted<String>,
    /// The HMAC secret for JWTs (always set in development mode).
    pub jwt_secret: Option<Redacted<Vec<u8>>>,
    /// PEM public keys and the JWKS URL that JWTs may also be signed with.
    pub jwt_keys: identity::JwtKeySources,
    /// The service that authenticates upgrades without a ticket (cookie sessions), by name.
    pub auth_service: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub jwt_leeway: Duration,
    /// When set, a JWT's `aud` must name it; when unset, `aud` is ignored.
    pub jwt_audience: Option<String>,
    /// When set, a JWT's `iss` must be it.
    pub jwt_issuer: Option<String>,
    /// Origins allowed to open WebSockets.
    pub allowed_origins: Origins,
    /// How long a ticket stays redeemable.
    pub ticket_ttl: Duration,
    /// Largest message a client may send, in bytes.
    pub max_message_bytes: usize,
    /// Bytes queued for one connection before it counts as a slow consumer.
    pub outbox_bytes: usize,
    /// Connections this node accepts.
    pub max_connections: usize,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Time between pings.
    pub ping_interval: Duration,
    /// Messages kept per topic for recovery (0: none).
    pub history_size: usize,
    /// How long messages are kept for recovery.
    pub history_ttl: Duration,
    /// Bytes of history the in-process bus keeps, all topics together (past it, the oldest
    /// entries go).
    pub history_bytes: usize,
    /// Frames per second per connection.
    pub rate_limit: u32,
    /// Frames allowed in a burst above the rate.
    pub rate_burst: u32,
    /// The drain on SIGTERM: how long the node keeps serving, how long it spreads its closes
    /// over, and the deadline of the whole.
    pub drain: operations::Drain,
    /// How log lines are written (`main` sets up the subscriber with it).
    pub log_format: operations::LogFormat,
    /// TLS files, when serving TLS.
    pub tls: Option<TlsFiles>,
    /// Development mode: generated secrets, loopback origins, loopback listen only.
    pub dev_mode: bool,
    /// Redis, when nodes form a cluster; `None`: the in-process bus.
    pub redis: Option<RedisSettings>,
    /// Connections one user may hold (across the cluster with Redis).
    pub max_connections_per_user: usize,
    /// How long a killed node's connections keep counting towards that limit (and its presence
    /// entries, towards presence).
    pub node_ttl: Duration,
    /// Topics whose subscribers are tracked for presence.
    pub presence_topics: Vec<crate::protocol::Pattern>,
    /// Backend services that clients `send` to, by name.
    pub services: Vec<services::ServiceConfig>,
    /// Lifecycle events, when enabled.
    pub events: Option<events::EventsConfig>,
    /// Limits against hostile clients: stalled writes, connections and tickets per address.
    pub limits: limits::Limits,
    /// The key of `/metrics` and the dashboard, and whether `/metrics` is public.
    pub admin: admin::Admin,
    /// permessage-deflate: whether it is negotiated, and from which message size it is used.
    pub compression: compression::Compression,
    /// The secrets generated for development mode.
    pub generated: GeneratedSecrets,
}

impl Config {
    /// Reads `file` (if any), overlays the `HERALD_*` variables of `env`, and validates.
    ///
    /// `main` passes `std::env::vars().collect()`; tests pass a literal list.
    pub fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let from_file = match file {
            Some(path) => RawConfig::from_file(path)?,
            None => RawConfig::default(),
        };
        Config::from_raw(from_file.overlay(RawConfig::from_env(env)?))
    }

    /// The configured JWT secret alone, validated, for `herald token` (which needs nothing else
    /// and must work where only `HERALD_JWT_SECRET` is set). `None` when none is configured.
    pub fn load_jwt_secret(
        file: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Option<Vec<u8>>, ConfigError> {
        let from_file = match file {
            Some(path) => RawConfig::from_file(path)?,
            None => RawConfig::default(),
        };
        let raw = from_file.overlay(RawConfig::from_env(env)?);
        raw.jwt_secret.map(check_jwt_secret).transpose()
    }

    /// Validates a raw configuration and applies the defaults.
    pub fn from_raw(mut raw: RawConfig) -> Result<Config, ConfigError> {
        let limits = limits::validate(&mut raw)?;
        let admin = admin::validate(&mut raw)?;
        let compression = compression::validate(&mut raw)?;
        let (log_format, drain) = operations::validate(&mut raw)?;
        let jwt_keys = identity::validate(&mut raw)?;
        let explicit_dev = raw.dev;
        let any_jwt_key = raw.jwt_secret.is_some() || jwt_keys.any();
        let auth_service = raw.auth_service.take();
        let dev_mode = explicit_dev.unwrap_or(raw.api_key.is_none() && !any_jwt_key);

        let listen = parse_listen(raw.listen.as_deref())?;
        if dev_mode && !listen.ip().is_loopback() {
            let why = if explicit_dev == Some(true) {
                "dev is true"
            } else {
                "neither api_key nor jwt_secret is configured"
            };
            return Err(invalid(
                LISTEN,
                format!(
                    "development mode ({why}) listens only on loopback addresses such as \
                     127.0.0.1:8080 or [::1]:8080, got {listen}; configure api_key and \
                     jwt_secret (and leave dev unset or false) to listen elsewhere"
                ),
            ));
        }

        let node_id = match raw.node_id {
            Some(id) => check_node_id(id)?,
            None => random_node_id()?,
        };

        let mut generated = GeneratedSecrets::default();
        let api_key = match (raw.api_key, dev_mode) {
            (Some(k), _) => check_api_key(k)?,
            (None, true) => {
                let k = random_base64url::<24>("a development API key")?;
                generated.api_key = Some(k.clone());
                k
            }
            (None, false) => {
                return Err(missing_api_key(any_jwt_key));
            }
        };
        let jwt_secret = match (raw.jwt_secret, dev_mode) {
            (Some(s), _) => Some(check_jwt_secret(s)?),
            (None, true) => {
                let s = random_base64url::<32>("a development JWT secret")?;
                generated.jwt_secret = Some(s.clone());
                Some(s.into_bytes())
            }
            (None, false) if jwt_keys.any() || auth_service.is_some() => None,
            (None, false) => return Err(missing_identity()),
        };

        let allowed_origins = parse_origins(raw.allowed_origins, dev_mode)?;

        let redis = match raw.redis_url {
            None => {
                if raw.redis_prefix.is_some() {
                    return Err(ConfigError::Invalid {
                        key: REDIS_PREFIX,
                        problem: "set without redis_url (HERALD_REDIS_URL)".into(),
                    });
                }
                None
            }
            Some(url) => {
                if url.starts_with("rediss://") {
                    // Refused here rather than failing at start: this build has no TLS to Redis.
                    return Err(ConfigError::Invalid {
                        key: REDIS_URL,
                        problem: "rediss:// (TLS to Redis) is not supported by this build; \
                                  use redis:// on a private network, or a TLS tunnel \
                                  (stunnel, a sidecar) that Herald reaches with redis://"
                            .into(),
                    });
                }
                if !url.starts_with("redis://") {
                    return Err(ConfigError::Invalid {
                        key: REDIS_URL,
                        problem: "expected redis://[user:password@]host:port[/db]".into(),
                    });
                }
                let prefix = raw
                    .redis_prefix
                    .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_owned());
                let ok = !prefix.is_empty()
                    && prefix.len() <= 64
                    && prefix
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b));
                if !ok {
                    return Err(ConfigError::Invalid {
                        key: REDIS_PREFIX,
                        problem: format!(
                            "{prefix:?}: expected 1 to 64 of [A-Za-z0-9_:.-] (no braces or spaces)"
                        ),
                    });
                }
                Some(RedisSettings { url, prefix })
            }
        };

        let tls = match (raw.tls_cert, raw.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                check_readable(TLS_CERT, &cert)?;
                check_readable(TLS_KEY, &key)?;
                Some(TlsFiles { cert, key })
            }
            (Some(_), None) => return Err(missing_pair(TLS_KEY, TLS_CERT)),
            (None, Some(_)) => return Err(missing_pair(TLS_CERT, TLS_KEY)),
        };

        let mut config = Config {
            listen,
            node_id,
            api_key: Redacted(api_key),
            jwt_secret: jwt_secret.map(Redacted),
            jwt_keys,
            auth_service: None,
            jwt_leeway: secs(JWT_LEEWAY_SECS, raw.jwt_leeway_secs, 30, 0, 300)?,
            jwt_audience: non_empty(JWT_AUDIENCE, raw.jwt_audience)?,
            jwt_issuer: non_empty(JWT_ISSUER, raw.jwt_issuer)?,
            allowed_origins,
            ticket_ttl: secs(TICKET_TTL_SECS, raw.ticket_ttl_secs, 30, 1, 300)?,
            max_message_bytes: size(
                MAX_MESSAGE_BYTES,
                raw.max_message_bytes,
                64 * KIB,
                128,
                16 * MIB,
            )?,
            // At most 1 GiB: a connection's writer counts a batch's bytes in 32 bits.
            outbox_bytes: size(OUTBOX_BYTES, raw.outbox_bytes, MIB, 64 * KIB, 1024 * MIB)?,
            max_connections: count(
                MAX_CONNECTIONS,
                raw.max_connections,
                100_000,
                (1, u64::MAX),
                "a number of connections",
            )?,
            max_subscriptions: count(
                MAX_SUBSCRIPTIONS,
                raw.max_subscriptions,
                128,
                (1, u64::MAX),
                "a number of subscriptions per connection",
            )?,
            ping_interval: secs(PING_INTERVAL_SECS, raw.ping_interval_secs, 25, 1, 600)?,
            history_size: count(
                HISTORY_SIZE,
                raw.history_size,
                1000,
                (0, 1_000_000),
                "a number of messages per topic",
            )?,
            history_ttl: secs(HISTORY_TTL_SECS, raw.history_ttl_secs, 300, 1, MAX_SECS)?,
            history_bytes: size(
                HISTORY_BYTES,
                raw.history_bytes,
                256 * MIB,
                64 * KIB,
                u64::MAX,
            )?,
            rate_limit: per_sec(
                RATE_LIMIT,
                raw.rate_limit,
                100,
                "a number of frames per second",
            )?,
            rate_burst: per_sec(RATE_BURST, raw.rate_burst, 200, "a number of frames")?,
            drain,
            log_format,
            tls,
            dev_mode,
            redis,
            max_connections_per_user: count(
                MAX_CONNECTIONS_PER_USER,
                raw.max_connections_per_user,
                100,
                (1, 1_000_000),
                "a number of connections",
            )?,
            node_ttl: secs(NODE_TTL_SECS, raw.node_ttl_secs, 30, 3, 3600)?,
            services: services::validate(raw.services.unwrap_or_default())?,
            events: None,
            presence_topics: raw
                .presence_topics
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    crate::protocol::Pattern::parse(p).map_err(|e| ConfigError::Invalid {
                        key: PRESENCE_TOPICS,
                        problem: format!("{p:?} is not a topic pattern: {e}"),
                    })
                })
                .collect::<Result<_, _>>()?,
            limits,
            admin,
            compression,
            generated,
        };
        config.auth_service = identity::auth_service(auth_service, &config.services)?;
        config.events = events::validate(
            events::RawEvents {
                kinds: raw.events,
                service: raw.events_service,
                journal: raw.events_journal,
                stream_max_len: raw.events_stream_max_len,
            },
            config.redis.is_some(),
            &config.services,
        )?;
        // A message must fit in an outbox (with its frame header and envelope), or it could
        // never be delivered.
        if config.outbox_bytes < config.max_message_bytes + 1024 {
            return Err(ConfigError::Invalid {
                key: OUTBOX_BYTES,
                problem: format!(
                    "{} is smaller than max_message_bytes ({}) plus 1024 bytes of framing; \
                     raise outbox_bytes or lower max_message_bytes",
                    config.outbox_bytes, config.max_message_bytes
                ),
            });
        }
        Ok(config)
    }

    /// True when subscribers of `topic` are tracked for presence.
    pub fn presence_enabled(&self, topic: &str) -> bool {
        self.presence_topics.iter().any(|p| p.matches(topic))
    }

    /// True when a WebSocket upgrade with this `Origin` header value may proceed: an exact match
    /// on the normalised origin, anything under `*`, and the loopback origins by default in
    /// development mode. (Whether a request without `Origin` may proceed is the gateway's call.)
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allowed_origins.allows(origin)
    }
}

#[cfg(test)]
mod tests;
