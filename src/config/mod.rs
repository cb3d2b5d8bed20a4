//! Configuration: the only reader of the config file and of the environment.
//!
//! Two stages: [`raw`] reads an optional TOML file and overlays the `HERALD_*` environment
//! variables on it, refusing unknown keys; [`Config::load`] then validates every value, applies
//! the defaults, decides development mode and generates its secrets. It fails loudly: every
//! problem is a [`ConfigError`] naming the key, as written in the file and as its environment
//! variable, and saying what is wrong and what is expected. Secrets are never echoed, nor shown
//! by `Debug`.

pub mod raw;

use std::fmt;
use std::fs::File;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use raw::{
    ALLOWED_ORIGINS, API_KEY, HISTORY_SIZE, HISTORY_TTL_SECS, JWT_LEEWAY_SECS, JWT_SECRET, LISTEN,
    MAX_CONNECTIONS, MAX_CONNECTIONS_PER_USER, MAX_MESSAGE_BYTES, MAX_SUBSCRIPTIONS, NODE_ID,
    NODE_TTL_SECS, OUTBOX_BYTES, PING_INTERVAL_SECS, PRESENCE_TOPICS, RATE_BURST, RATE_LIMIT,
    REDIS_PREFIX, REDIS_URL, SHUTDOWN_TIMEOUT_SECS, TICKET_TTL_SECS, TLS_CERT, TLS_KEY,
};
pub use raw::{KEYS, Key, RawConfig};

/// Where a cluster's Redis is, and the prefix of Herald's keys and channels in it.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...`.
    pub url: String,
    /// Prefix of every key and channel (default `herald:`).
    pub prefix: String,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match (self.url.find("://"), self.url.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                format!("{}://***@{}", &self.url[..s], &self.url[at + 1..])
            }
            _ => self.url.clone(),
        };
        f.debug_struct("RedisSettings")
            .field("url", &url)
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

/// Which browser origins may open WebSockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origins {
    /// Any origin (`*`).
    Any,
    /// `http(s)://localhost`, `http(s)://127.0.0.1` and `http(s)://[::1]`, any port: the
    /// development-mode default.
    Loopback,
    /// Exactly these normalised origins (lowercase, no default port). Empty: none.
    List(Vec<String>),
}

impl Origins {
    /// True when a request with this `Origin` header value may proceed.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Origins::Any => true,
            Origins::Loopback => Origin::parse(origin).is_ok_and(|o| o.is_loopback()),
            Origins::List(list) => {
                Origin::parse(origin).is_ok_and(|o| list.iter().any(|a| *a == o.to_string()))
            }
        }
    }
}

/// A parsed `scheme://host[:port]`, normalised: lowercase scheme and host, IPv6 in canonical
/// form, default port (80 for http/ws, 443 for https/wss) dropped.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn parse(s: &str) -> Result<Origin, &'static str> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or("it has no `://` between scheme and host")?;
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok {
            return Err("its scheme is not a URL scheme such as https");
        }
        let scheme = scheme.to_ascii_lowercase();
        if rest.is_empty() {
            return Err("it has no host");
        }
        if rest.contains(['/', '?', '#']) {
            return Err("an origin has no path, query or fragment, not even a trailing `/`");
        }
        if rest.contains('@') {
            return Err("an origin has no user name or password");
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (inner, after) = bracketed
                .split_once(']')
                .ok_or("its IPv6 address has no closing `]`")?;
            let addr: Ipv6Addr = inner
                .parse()
                .map_err(|_| "its IPv6 address does not parse")?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or("it has text after the IPv6 address")?,
                ),
            };
            (format!("[{addr}]"), port)
        } else {
            let (host, port) = match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            };
            let host_ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            if !host_ok {
                return Err(
                    "its host has characters other than letters, digits, `-`, `.` and `_` \
                     (write international names in their xn-- form)",
                );
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port {
            None => None,
            Some(p) => {
                let n = p
                    .parse::<u16>()
                    .ok()
                    .filter(|n| *n != 0 && p.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or("its port is not a number from 1 to 65535")?;
                let default = match scheme.as_str() {
                    "http" | "ws" => Some(80),
                    "https" | "wss" => Some(443),
                    _ => None,
                };
                (default != Some(n)).then_some(n)
            }
        };
        Ok(Origin { scheme, host, port })
    }

    fn is_loopback(&self) -> bool {
        matches!(self.scheme.as_str(), "http" | "https")
            && matches!(self.host.as_str(), "localhost" | "127.0.0.1" | "[::1]")
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
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

/// The validated configuration. `Debug` redacts the secrets.
#[derive(Clone)]
pub struct Config {
    /// Address to listen on (loopback only in development mode).
    pub listen: SocketAddr,
    /// This node's name: 1 to 64 of `[A-Za-z0-9_-]`.
    pub node_id: String,
    /// The server API key for `POST /v1/publish`.
    pub api_key: String,
    /// The HMAC secret for JWTs.
    pub jwt_secret: Vec<u8>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub jwt_leeway: Duration,
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
    /// Frames per second per connection.
    pub rate_limit: u32,
    /// Frames allowed in a burst above the rate.
    pub rate_burst: u32,
    /// How long shutdown waits for connections to drain.
    pub shutdown_timeout: Duration,
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
    /// The secrets generated for development mode.
    pub generated: GeneratedSecrets,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("node_id", &self.node_id)
            .field("api_key", &"[redacted]")
            .field("jwt_secret", &"[redacted]")
            .field("jwt_leeway", &self.jwt_leeway)
            .field("allowed_origins", &self.allowed_origins)
            .field("ticket_ttl", &self.ticket_ttl)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("outbox_bytes", &self.outbox_bytes)
            .field("max_connections", &self.max_connections)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("ping_interval", &self.ping_interval)
            .field("history_size", &self.history_size)
            .field("history_ttl", &self.history_ttl)
            .field("rate_limit", &self.rate_limit)
            .field("rate_burst", &self.rate_burst)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("tls", &self.tls)
            .field("dev_mode", &self.dev_mode)
            .field("generated", &self.generated)
            .finish()
    }
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
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let explicit_dev = raw.dev;
        let dev_mode = explicit_dev.unwrap_or(raw.api_key.is_none() && raw.jwt_secret.is_none());

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
                return Err(missing_secret(
                    API_KEY,
                    JWT_SECRET,
                    raw.jwt_secret.is_some(),
                ));
            }
        };
        let jwt_secret = match (raw.jwt_secret, dev_mode) {
            (Some(s), _) => check_jwt_secret(s)?,
            (None, true) => {
                let s = random_base64url::<32>("a development JWT secret")?;
                generated.jwt_secret = Some(s.clone());
                s.into_bytes()
            }
            (None, false) => return Err(missing_secret(JWT_SECRET, API_KEY, true)),
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
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(ConfigError::Invalid {
                        key: REDIS_URL,
                        problem: "expected redis://host:port[/db] or rediss://host:port[/db]"
                            .into(),
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

        let config = Config {
            listen,
            node_id,
            api_key,
            jwt_secret,
            jwt_leeway: secs(JWT_LEEWAY_SECS, raw.jwt_leeway_secs, 30, 0, 300)?,
            allowed_origins,
            ticket_ttl: secs(TICKET_TTL_SECS, raw.ticket_ttl_secs, 30, 1, 300)?,
            max_message_bytes: size(
                MAX_MESSAGE_BYTES,
                raw.max_message_bytes,
                64 * KIB,
                128,
                16 * MIB,
            )?,
            outbox_bytes: size(OUTBOX_BYTES, raw.outbox_bytes, MIB, 64 * KIB, u64::MAX)?,
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
            rate_limit: per_sec(
                RATE_LIMIT,
                raw.rate_limit,
                100,
                "a number of frames per second",
            )?,
            rate_burst: per_sec(RATE_BURST, raw.rate_burst, 200, "a number of frames")?,
            shutdown_timeout: secs(SHUTDOWN_TIMEOUT_SECS, raw.shutdown_timeout_secs, 10, 1, 600)?,
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
            generated,
        };
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

/// Checks `value` (or `default`) against `min..=max`; `what` describes the value for messages,
/// e.g. "a number of seconds".
fn ranged(
    key: Key,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
    what: &str,
) -> Result<u64, ConfigError> {
    let v = value.unwrap_or(default);
    if (min..=max).contains(&v) {
        return Ok(v);
    }
    let expected = if max == u64::MAX {
        format!("{what} of at least {min}")
    } else {
        format!("{what} from {min} to {max}")
    };
    Err(invalid(key, format!("expected {expected}, got {v}")))
}

fn secs(
    key: Key,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    ranged(key, value, default, min, max, "a number of seconds").map(Duration::from_secs)
}

fn to_usize(key: Key, v: u64) -> Result<usize, ConfigError> {
    usize::try_from(v).map_err(|_| invalid(key, format!("{v} is too large for this platform")))
}

fn size(
    key: Key,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<usize, ConfigError> {
    to_usize(
        key,
        ranged(key, value, default, min, max, "a size in bytes")?,
    )
}

fn count(
    key: Key,
    value: Option<u64>,
    default: u64,
    (min, max): (u64, u64),
    what: &str,
) -> Result<usize, ConfigError> {
    to_usize(key, ranged(key, value, default, min, max, what)?)
}

fn per_sec(key: Key, value: Option<u64>, default: u64, what: &str) -> Result<u32, ConfigError> {
    let v = ranged(key, value, default, 1, u64::from(u32::MAX), what)?;
    u32::try_from(v).map_err(|_| invalid(key, "out of range"))
}

fn parse_listen(value: Option<&str>) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or(DEFAULT_LISTEN);
    text.trim().parse().map_err(|_| {
        invalid(
            LISTEN,
            format!(
                "expected an IP address and port such as 127.0.0.1:8080 or [::]:8080 \
                 (not a host name), got {text:?}"
            ),
        )
    })
}

fn check_node_id(id: String) -> Result<String, ConfigError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(id)
    } else {
        Err(invalid(
            NODE_ID,
            format!("expected 1 to 64 characters of A-Z, a-z, 0-9, `_` and `-`, got {id:?}"),
        ))
    }
}

fn check_api_key(key: String) -> Result<String, ConfigError> {
    // Never echo the value: only its length.
    let n = key.chars().count();
    if n < MIN_API_KEY_CHARS {
        return Err(invalid(
            API_KEY,
            format!(
                "too short: expected at least {MIN_API_KEY_CHARS} characters, got {n}; use a \
                 long random string such as the output of `openssl rand -base64 24`"
            ),
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            API_KEY,
            "expected visible ASCII characters only, without spaces: clients send it in an \
             `Authorization: Bearer` header",
        ));
    }
    Ok(key)
}

fn check_jwt_secret(secret: String) -> Result<Vec<u8>, ConfigError> {
    let n = secret.len();
    if n < MIN_JWT_SECRET_BYTES {
        return Err(invalid(
            JWT_SECRET,
            format!(
                "too short: expected at least {MIN_JWT_SECRET_BYTES} bytes, got {n}; use a \
                 long random string such as the output of `openssl rand -base64 48`"
            ),
        ));
    }
    Ok(secret.into_bytes())
}

fn missing_secret(missing: Key, other: Key, other_is_set: bool) -> ConfigError {
    let why = if other_is_set {
        format!(
            "missing: {} is set, so Herald runs in production mode, which needs both; set {} \
             too, or neither (and leave dev unset) for development mode with generated secrets",
            other.name, missing.name
        )
    } else {
        format!(
            "missing: dev is false, so Herald runs in production mode, which needs both {} and \
             {}; set them, or leave dev unset for development mode with generated secrets",
            missing.name, other.name
        )
    };
    invalid(missing, why)
}

fn missing_pair(missing: Key, other: Key) -> ConfigError {
    invalid(
        missing,
        format!(
            "missing: {} is set; set both tls_cert and tls_key to serve TLS, or neither for \
             plain HTTP",
            other.name
        ),
    )
}

fn check_readable(key: Key, path: &Path) -> Result<(), ConfigError> {
    let io_err = |source| ConfigError::TlsFile {
        key,
        path: path.to_owned(),
        source,
    };
    let meta = File::open(path)
        .and_then(|f| f.metadata())
        .map_err(io_err)?;
    if !meta.is_file() {
        return Err(invalid(
            key,
            format!(
                "{} is not a regular file; expected a PEM file",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn parse_origins(list: Option<Vec<String>>, dev_mode: bool) -> Result<Origins, ConfigError> {
    let Some(list) = list else {
        return Ok(if dev_mode {
            Origins::Loopback
        } else {
            Origins::List(Vec::new())
        });
    };
    if list.iter().any(|o| o == "*") {
        if list.len() == 1 {
            return Ok(Origins::Any);
        }
        return Err(invalid(
            ALLOWED_ORIGINS,
            "`*` allows every origin, so it must be the only value",
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for o in &list {
        let parsed = Origin::parse(o).map_err(|why| {
            invalid(
                ALLOWED_ORIGINS,
                format!(
                    "{o:?} is not an origin: {why}; expected scheme://host[:port] such as \
                     https://app.example.com, or the single value `*`"
                ),
            )
        })?;
        let normalised = parsed.to_string();
        if !out.contains(&normalised) {
            out.push(normalised);
        }
    }
    Ok(Origins::List(out))
}

fn random_bytes<const N: usize>(what: &'static str) -> Result<[u8; N], ConfigError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|source| ConfigError::Random { what, source })?;
    Ok(buf)
}

/// `N` random bytes as base64url without padding (24 bytes: 32 chars; 32 bytes: 43 chars).
fn random_base64url<const N: usize>(what: &'static str) -> Result<String, ConfigError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<N>(what)?))
}

/// 8 random lowercase hex characters.
fn random_node_id() -> Result<String, ConfigError> {
    let bytes = random_bytes::<4>("a node id")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raw::DEV;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const API: &str = "an-api-key-of-24-chars!!";
    const SECRET: &str = "a-jwt-secret-of-at-least-32-bytes!!";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Production-mode environment plus `extra`.
    fn prod(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut e = env(&[("HERALD_API_KEY", API), ("HERALD_JWT_SECRET", SECRET)]);
        e.extend(env(extra));
        e
    }

    /// A file in a fresh directory under the temp dir; the directory goes when this drops.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &str) -> TempFile {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "herald-config-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(name);
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }

        fn text(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn err_key(file: Option<&Path>, e: &[(String, String)]) -> Option<Key> {
        Config::load(file, e).unwrap_err().key()
    }

    #[test]
    fn no_configuration_means_development_mode_with_defaults() {
        let c = Config::load(None, &[]).unwrap();
        assert!(c.dev_mode);
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.node_id.len(), 8);
        assert!(
            c.node_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(c.api_key.len(), 32);
        assert_eq!(c.generated.api_key.as_deref(), Some(c.api_key.as_str()));
        let shown = c.generated.jwt_secret.as_deref().unwrap();
        assert_eq!(shown.len(), 43);
        assert_eq!(shown.as_bytes(), &c.jwt_secret[..]);
        assert_eq!(c.allowed_origins, Origins::Loopback);
        assert_eq!(c.jwt_leeway, Duration::from_secs(30));
        assert_eq!(c.ticket_ttl, Duration::from_secs(30));
        assert_eq!(c.max_message_bytes, 65536);
        assert_eq!(c.outbox_bytes, 1_048_576);
        assert_eq!(c.max_connections, 100_000);
        assert_eq!(c.max_subscriptions, 128);
        assert_eq!(c.ping_interval, Duration::from_secs(25));
        assert_eq!(c.history_size, 1000);
        assert_eq!(c.history_ttl, Duration::from_secs(300));
        assert_eq!((c.rate_limit, c.rate_burst), (100, 200));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.tls, None);
    }

    #[test]
    fn generated_secrets_differ_between_loads() {
        let a = Config::load(None, &[]).unwrap();
        let b = Config::load(None, &[]).unwrap();
        assert_ne!(a.api_key, b.api_key);
        assert_ne!(a.jwt_secret, b.jwt_secret);
        assert_ne!(a.node_id, b.node_id);
    }

    #[test]
    fn both_secrets_mean_production_mode_without_generated_secrets() {
        let c = Config::load(None, &prod(&[("HERALD_LISTEN", "0.0.0.0:9000")])).unwrap();
        assert!(!c.dev_mode);
        assert_eq!(c.api_key, API);
        assert_eq!(c.jwt_secret, SECRET.as_bytes());
        assert!(c.generated.api_key.is_none() && c.generated.jwt_secret.is_none());
        assert_eq!(c.allowed_origins, Origins::List(vec![]));
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
    }

    #[test]
    fn every_bad_value_is_an_error_naming_its_key() {
        let cases: &[(Key, &str)] = &[
            (LISTEN, "localhost:8080"),
            (LISTEN, "127.0.0.1"),
            (NODE_ID, ""),
            (NODE_ID, "has space"),
            (NODE_ID, &"n".repeat(65)),
            (API_KEY, "short"),
            (API_KEY, "sixteen chars with spaces"),
            (JWT_SECRET, "too short"),
            (JWT_LEEWAY_SECS, "301"),
            (JWT_LEEWAY_SECS, "-1"),
            (ALLOWED_ORIGINS, "example.com"),
            (ALLOWED_ORIGINS, "https://example.com/"),
            (ALLOWED_ORIGINS, "https://example.com:0"),
            (ALLOWED_ORIGINS, "https://example.com:99999"),
            (ALLOWED_ORIGINS, "https://user@example.com"),
            (ALLOWED_ORIGINS, "*,https://example.com"),
            (ALLOWED_ORIGINS, "https://[::1"),
            (TICKET_TTL_SECS, "0"),
            (TICKET_TTL_SECS, "301"),
            (MAX_MESSAGE_BYTES, "127"),
            (MAX_MESSAGE_BYTES, "16777217"),
            (OUTBOX_BYTES, "65535"),
            (MAX_CONNECTIONS, "0"),
            (MAX_SUBSCRIPTIONS, "0"),
            (PING_INTERVAL_SECS, "0"),
            (PING_INTERVAL_SECS, "601"),
            (HISTORY_SIZE, "1000001"),
            (HISTORY_TTL_SECS, "0"),
            (RATE_LIMIT, "0"),
            (RATE_LIMIT, "fast"),
            (RATE_BURST, "0"),
            (SHUTDOWN_TIMEOUT_SECS, "0"),
            (SHUTDOWN_TIMEOUT_SECS, "601"),
            (TLS_CERT, "/nonexistent/herald/cert.pem"),
            (DEV, "maybe"),
        ];
        for (key, bad) in cases {
            let mut e = prod(&[(key.env, bad)]);
            if *key == TLS_CERT {
                e.extend(env(&[("HERALD_TLS_KEY", "/nonexistent/herald/key.pem")]));
            }
            let err = Config::load(None, &e).unwrap_err();
            assert_eq!(err.key(), Some(*key), "{key} = {bad:?}: {err}");
            let msg = err.to_string();
            assert!(msg.starts_with(&key.to_string()), "{msg}");
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let c = Config::load(
            None,
            &prod(&[
                ("HERALD_JWT_LEEWAY_SECS", "0"),
                ("HERALD_TICKET_TTL_SECS", "300"),
                ("HERALD_MAX_MESSAGE_BYTES", "16777216"),
                ("HERALD_OUTBOX_BYTES", "16778240"),
                ("HERALD_HISTORY_SIZE", "0"),
                ("HERALD_PING_INTERVAL_SECS", "600"),
                ("HERALD_NODE_ID", "node_A-1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.max_message_bytes, 16 * 1024 * 1024);
        assert_eq!(c.history_size, 0);
        assert_eq!(c.node_id, "node_A-1");
    }

    #[test]
    fn the_message_says_what_is_expected() {
        let err = Config::load(None, &prod(&[("HERALD_PING_INTERVAL_SECS", "0")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ping_interval_secs (HERALD_PING_INTERVAL_SECS): expected a number of seconds from 1 \
             to 600, got 0"
        );
    }

    #[test]
    fn secret_values_are_never_echoed() {
        for (name, value) in [
            ("HERALD_API_KEY", "hunter2-secret"),
            ("HERALD_API_KEY", "hunter2 secret with spaces"),
            ("HERALD_JWT_SECRET", "hunter2-secret"),
        ] {
            let mut e = prod(&[]);
            e.retain(|(k, _)| k != name);
            e.extend(env(&[(name, value)]));
            let err = Config::load(None, &e).unwrap_err();
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        let c = Config::load(None, &prod(&[])).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains(API) && !debug.contains(SECRET), "{debug}");
        let dev = Config::load(None, &[]).unwrap();
        assert!(!format!("{dev:?}").contains(&dev.api_key));
    }

    #[test]
    fn a_bad_file_value_names_its_key() {
        let file = TempFile::new("h.toml", "max_connections = \"lots\"\n");
        assert_eq!(
            err_key(Some(file.path()), &prod(&[])),
            Some(MAX_CONNECTIONS)
        );
        let file = TempFile::new("h.toml", "history_ttl_secs = 0\n");
        assert_eq!(
            err_key(Some(file.path()), &prod(&[])),
            Some(HISTORY_TTL_SECS)
        );
    }

    #[test]
    fn env_overrides_file() {
        let file = TempFile::new(
            "h.toml",
            &format!(
                "listen = \"127.0.0.1:7000\"\nrate_limit = 5\napi_key = \"{API}\"\n\
                 jwt_secret = \"{SECRET}\"\nallowed_origins = [\"https://a.example\"]\n"
            ),
        );
        let c = Config::load(
            Some(file.path()),
            &env(&[
                ("HERALD_RATE_LIMIT", "7"),
                ("HERALD_ALLOWED_ORIGINS", "https://b.example"),
            ]),
        )
        .unwrap();
        assert_eq!(c.rate_limit, 7);
        assert_eq!(c.listen, "127.0.0.1:7000".parse().unwrap());
        assert!(c.origin_allowed("https://b.example"));
        assert!(!c.origin_allowed("https://a.example"));
        assert!(!c.dev_mode);
    }

    #[test]
    fn unknown_file_keys_and_unknown_herald_variables_are_errors() {
        let file = TempFile::new("h.toml", "max_conections = 5\n");
        let err = Config::load(Some(file.path()), &prod(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownFileKey { .. }), "{err}");
        assert!(err.to_string().contains("max_conections"), "{err}");
        assert!(err.to_string().contains("max_connections"), "{err}");

        let err = Config::load(None, &prod(&[("HERALD_API_KYE", "x")])).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownEnvVar { .. }), "{err}");
        assert!(err.to_string().contains("HERALD_API_KYE"), "{err}");
        assert!(!err.to_string().contains("=x"), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let path = std::env::temp_dir().join("herald-config-test-does-not-exist.toml");
        let err = Config::load(Some(&path), &[]).unwrap_err();
        assert!(matches!(err, ConfigError::ReadFile { .. }));
        assert!(err.to_string().contains("does-not-exist"), "{err}");
    }

    #[test]
    fn development_mode_refuses_a_non_loopback_listen() {
        let err = Config::load(None, &env(&[("HERALD_LISTEN", "0.0.0.0:8080")])).unwrap_err();
        assert_eq!(err.key(), Some(LISTEN));
        assert!(err.to_string().contains("loopback"), "{err}");
        let err = Config::load(
            None,
            &prod(&[("HERALD_DEV", "true"), ("HERALD_LISTEN", "[::]:8080")]),
        )
        .unwrap_err();
        assert_eq!(err.key(), Some(LISTEN));
        assert!(err.to_string().contains("dev is true"), "{err}");
        let ok = Config::load(None, &env(&[("HERALD_LISTEN", "[::1]:9000")])).unwrap();
        assert!(ok.dev_mode);
    }

    #[test]
    fn dev_true_keeps_configured_secrets() {
        let c = Config::load(None, &prod(&[("HERALD_DEV", "1")])).unwrap();
        assert!(c.dev_mode);
        assert_eq!(c.api_key, API);
        assert!(c.generated.api_key.is_none() && c.generated.jwt_secret.is_none());
        let c = Config::load(None, &env(&[("HERALD_DEV", "1"), ("HERALD_API_KEY", API)])).unwrap();
        assert_eq!(c.api_key, API);
        assert!(c.generated.api_key.is_none() && c.generated.jwt_secret.is_some());
    }

    #[test]
    fn one_secret_without_the_other_is_an_error_naming_the_missing_one() {
        let err = Config::load(None, &env(&[("HERALD_API_KEY", API)])).unwrap_err();
        assert_eq!(err.key(), Some(JWT_SECRET));
        assert!(err.to_string().contains("api_key is set"), "{err}");
        let err = Config::load(None, &env(&[("HERALD_JWT_SECRET", SECRET)])).unwrap_err();
        assert_eq!(err.key(), Some(API_KEY));
        assert!(err.to_string().contains("jwt_secret is set"), "{err}");
    }

    #[test]
    fn dev_false_without_secrets_is_an_error() {
        assert_eq!(
            err_key(None, &env(&[("HERALD_DEV", "false")])),
            Some(API_KEY)
        );
    }

    #[test]
    fn tls_needs_both_files_and_they_must_exist() {
        let cert = TempFile::new("cert.pem", "cert");
        let key = TempFile::new("key.pem", "key");
        let (cert_s, key_s) = (cert.text(), key.text());
        assert_eq!(
            err_key(None, &prod(&[("HERALD_TLS_CERT", cert_s)])),
            Some(TLS_KEY)
        );
        assert_eq!(
            err_key(None, &prod(&[("HERALD_TLS_KEY", key_s)])),
            Some(TLS_CERT)
        );
        let dir = cert.path().parent().unwrap().to_str().unwrap();
        assert_eq!(
            err_key(
                None,
                &prod(&[("HERALD_TLS_CERT", cert_s), ("HERALD_TLS_KEY", dir)])
            ),
            Some(TLS_KEY)
        );
        let c = Config::load(
            None,
            &prod(&[("HERALD_TLS_CERT", cert_s), ("HERALD_TLS_KEY", key_s)]),
        )
        .unwrap();
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: cert.0.clone(),
                key: key.0.clone()
            })
        );
    }

    #[test]
    fn origins_match_exactly_after_normalisation() {
        let c = Config::load(
            None,
            &prod(&[(
                "HERALD_ALLOWED_ORIGINS",
                "HTTPS://App.Example.com:443, http://localhost:3000, https://[0:0::1]:8443",
            )]),
        )
        .unwrap();
        assert!(c.origin_allowed("https://app.example.com"));
        assert!(c.origin_allowed("https://APP.example.com:443"));
        assert!(c.origin_allowed("http://localhost:3000"));
        assert!(c.origin_allowed("https://[::1]:8443"));
        assert!(!c.origin_allowed("http://app.example.com"));
        assert!(!c.origin_allowed("https://app.example.com:8443"));
        assert!(!c.origin_allowed("https://evil.app.example.com"));
        assert!(!c.origin_allowed("https://app.example.com.evil.com"));
        assert!(!c.origin_allowed("http://localhost:3001"));
        assert!(!c.origin_allowed("null"));
        assert!(!c.origin_allowed(""));
    }

    #[test]
    fn no_origins_allow_nothing_outside_development_mode() {
        let c = Config::load(None, &prod(&[])).unwrap();
        assert!(!c.origin_allowed("http://localhost:3000"));
        assert!(!c.origin_allowed("https://example.com"));
    }

    #[test]
    fn star_allows_any_origin() {
        let c = Config::load(None, &prod(&[("HERALD_ALLOWED_ORIGINS", "*")])).unwrap();
        assert_eq!(c.allowed_origins, Origins::Any);
        assert!(c.origin_allowed("https://anything.example"));
        assert!(c.origin_allowed("null"));
    }

    #[test]
    fn development_mode_allows_loopback_origins_only() {
        let c = Config::load(None, &[]).unwrap();
        for ok in [
            "http://localhost",
            "http://localhost:3000",
            "https://localhost:8443",
            "http://127.0.0.1:5173",
            "http://[::1]:8080",
            "https://[::1]",
        ] {
            assert!(c.origin_allowed(ok), "{ok}");
        }
        for bad in [
            "http://localhost.evil.com",
            "http://127.0.0.2",
            "http://example.com",
            "ftp://localhost",
            "http://localhost/",
            "null",
        ] {
            assert!(!c.origin_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn configured_origins_replace_the_loopback_default_in_development_mode() {
        let c = Config::load(
            None,
            &env(&[("HERALD_ALLOWED_ORIGINS", "https://app.example.com")]),
        )
        .unwrap();
        assert!(c.dev_mode);
        assert!(c.origin_allowed("https://app.example.com"));
        assert!(!c.origin_allowed("http://localhost:3000"));
    }

    #[test]
    fn origins_accept_app_schemes() {
        let c = Config::load(
            None,
            &prod(&[(
                "HERALD_ALLOWED_ORIGINS",
                "capacitor://localhost,chrome-extension://abcdef",
            )]),
        )
        .unwrap();
        assert!(c.origin_allowed("capacitor://localhost"));
        assert!(c.origin_allowed("chrome-extension://abcdef"));
    }
}
