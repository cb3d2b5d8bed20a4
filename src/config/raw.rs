//! The raw configuration: what the TOML file and the `HERALD_*` environment variables say, before
//! any validation. Every field is optional; environment variables override the file.
//!
//! This is the only code that reads the config file. It refuses unknown keys in the file and
//! unknown `HERALD_*` variables (typo protection, no exceptions), and every error names the key.
//! Values are checked for type only here; ranges, shapes and defaults are [`super::Config`]'s job.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// Prefix of every environment variable Herald reads.
pub const ENV_PREFIX: &str = "HERALD_";

/// `HERALD_*` variables that belong to the command-line clients (`herald subscribe`) or to
/// Herald's scripts (`HERALD_BIN`: which binary `deploy/local-cluster.sh`, the benches and the
/// JavaScript client's tests run), not to a node's configuration; a node ignores them.
pub const CLIENT_ENV: &[&str] = &["HERALD_TOKEN", "HERALD_BIN"];

/// A configuration key: its TOML name and its environment variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The key in the TOML file, e.g. `listen`.
    pub name: &'static str,
    /// The environment variable, e.g. `HERALD_LISTEN`.
    pub env: &'static str,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.env)
    }
}

/// How an environment variable's text becomes a raw value.
trait FromEnv: Sized {
    fn from_env(key: Key, value: &str) -> Result<Self, ConfigError>;
}

impl FromEnv for String {
    fn from_env(_: Key, value: &str) -> Result<Self, ConfigError> {
        Ok(value.to_owned())
    }
}

impl FromEnv for PathBuf {
    fn from_env(_: Key, value: &str) -> Result<Self, ConfigError> {
        Ok(PathBuf::from(value))
    }
}

impl FromEnv for u64 {
    fn from_env(key: Key, value: &str) -> Result<Self, ConfigError> {
        value.trim().parse().map_err(|_| ConfigError::Invalid {
            key,
            problem: format!("expected a whole number, got {value:?}"),
        })
    }
}

impl FromEnv for bool {
    fn from_env(key: Key, value: &str) -> Result<Self, ConfigError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            _ => Err(ConfigError::Invalid {
                key,
                problem: format!("expected 1, 0, true or false, got {value:?}"),
            }),
        }
    }
}

impl FromEnv for Vec<String> {
    /// Comma-separated; items are trimmed and empty items skipped, so `""` is the empty list.
    fn from_env(_: Key, value: &str) -> Result<Self, ConfigError> {
        Ok(value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

/// Declares [`RawConfig`], one [`Key`] constant per field, [`KEYS`], and the code that fills a
/// field from the environment or overlays one raw config on another, from one list of fields.
macro_rules! raw_config {
    ($($(#[doc = $doc:literal])* $field:ident: $ty:ty => $konst:ident = $env:literal;)*) => {
        /// Configuration as written in the file and the environment, unvalidated.
        ///
        /// `Debug` shows whether the secrets are set, never their values.
        #[derive(Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawConfig {
            $($(#[doc = $doc])* pub $field: Option<$ty>,)*
            /// Backend services, by name: `[services.NAME]` tables (file only).
            #[serde(default)]
            pub services: Option<std::collections::BTreeMap<String, RawService>>,
        }

        $(
            #[doc = concat!("The `", stringify!($field), "` key (`", $env, "`).")]
            pub const $konst: Key = Key { name: stringify!($field), env: $env };
        )*

        /// Every key, in documentation order.
        pub const KEYS: &[Key] = &[$($konst),*];

        impl fmt::Debug for RawConfig {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut d = f.debug_struct("RawConfig");
                $(
                    if $konst == API_KEY || $konst == JWT_SECRET || $konst == ADMIN_KEY {
                        d.field(stringify!($field), &self.$field.as_ref().map(|_| "[redacted]"));
                    } else {
                        d.field(stringify!($field), &self.$field);
                    }
                )*
                d.field("services", &self.services);
                d.finish()
            }
        }

        impl RawConfig {
            /// Sets the field of `key` from an environment variable's text.
            fn set_from_env(&mut self, key: Key, value: &str) -> Result<(), ConfigError> {
                $(
                    if key == $konst {
                        self.$field = Some(<$ty as FromEnv>::from_env(key, value)?);
                        return Ok(());
                    }
                )*
                Ok(())
            }

            /// Every field set in `top` replaces the one in `self`.
            pub fn overlay(mut self, top: RawConfig) -> RawConfig {
                $(
                    if top.$field.is_some() {
                        self.$field = top.$field;
                    }
                )*
                if top.services.is_some() {
                    self.services = top.services;
                }
                self
            }
        }
    };
}

raw_config! {
    /// Socket address to listen on.
    listen: String => LISTEN = "HERALD_LISTEN";
    /// This node's name in `welcome` frames and logs.
    node_id: String => NODE_ID = "HERALD_NODE_ID";
    /// The server API key for `POST /v1/publish`.
    api_key: String => API_KEY = "HERALD_API_KEY";
    /// The HMAC secret for JWTs.
    jwt_secret: String => JWT_SECRET = "HERALD_JWT_SECRET";
    /// Clock skew allowed on `exp` and `nbf`.
    jwt_leeway_secs: u64 => JWT_LEEWAY_SECS = "HERALD_JWT_LEEWAY_SECS";
    /// PEM public keys (RSA, EC P-256/P-384, Ed25519) that JWTs may be signed with
    /// (env: comma-separated).
    jwt_public_key_files: Vec<String> => JWT_PUBLIC_KEY_FILES = "HERALD_JWT_PUBLIC_KEY_FILES";
    /// An identity provider's JWKS: `https://`, or `http://` to a loopback address.
    jwt_jwks_url: String => JWT_JWKS_URL = "HERALD_JWT_JWKS_URL";
    /// How often the JWKS is refreshed in the background.
    jwks_refresh_secs: u64 => JWKS_REFRESH_SECS = "HERALD_JWKS_REFRESH_SECS";
    /// The least time between two JWKS refetches asked for by an unknown `kid`.
    jwks_refresh_min_secs: u64 => JWKS_REFRESH_MIN_SECS = "HERALD_JWKS_REFRESH_MIN_SECS";
    /// A `[services.NAME]` that authenticates upgrades without a ticket (cookie sessions):
    /// `POST {endpoint}/herald/connect`.
    auth_service: String => AUTH_SERVICE = "HERALD_AUTH_SERVICE";
    /// When set, a JWT's `aud` must name it (otherwise `aud` is ignored).
    jwt_audience: String => JWT_AUDIENCE = "HERALD_JWT_AUDIENCE";
    /// When set, a JWT's `iss` must be it.
    jwt_issuer: String => JWT_ISSUER = "HERALD_JWT_ISSUER";
    /// Origins allowed to open WebSockets (env: comma-separated).
    allowed_origins: Vec<String> => ALLOWED_ORIGINS = "HERALD_ALLOWED_ORIGINS";
    /// How long a ticket stays redeemable.
    ticket_ttl_secs: u64 => TICKET_TTL_SECS = "HERALD_TICKET_TTL_SECS";
    /// Largest message a client may send.
    max_message_bytes: u64 => MAX_MESSAGE_BYTES = "HERALD_MAX_MESSAGE_BYTES";
    /// Bytes queued for one connection before it counts as a slow consumer.
    outbox_bytes: u64 => OUTBOX_BYTES = "HERALD_OUTBOX_BYTES";
    /// Connections this node accepts.
    max_connections: u64 => MAX_CONNECTIONS = "HERALD_MAX_CONNECTIONS";
    /// Subscriptions per connection.
    max_subscriptions: u64 => MAX_SUBSCRIPTIONS = "HERALD_MAX_SUBSCRIPTIONS";
    /// Seconds between pings.
    ping_interval_secs: u64 => PING_INTERVAL_SECS = "HERALD_PING_INTERVAL_SECS";
    /// Messages kept per topic for recovery.
    history_size: u64 => HISTORY_SIZE = "HERALD_HISTORY_SIZE";
    /// How long messages are kept for recovery.
    history_ttl_secs: u64 => HISTORY_TTL_SECS = "HERALD_HISTORY_TTL_SECS";
    /// Bytes of in-process history, all topics together.
    history_bytes: u64 => HISTORY_BYTES = "HERALD_HISTORY_BYTES";
    /// Frames per second per connection.
    rate_limit: u64 => RATE_LIMIT = "HERALD_RATE_LIMIT";
    /// Burst of frames above the rate.
    rate_burst: u64 => RATE_BURST = "HERALD_RATE_BURST";
    /// The most a drain may take, from the first SIGTERM to the exit.
    shutdown_timeout_secs: u64 => SHUTDOWN_TIMEOUT_SECS = "HERALD_SHUTDOWN_TIMEOUT_SECS";
    /// After SIGTERM: how long the node keeps serving (`/readyz` 503) before closing clients.
    drain_delay_secs: u64 => DRAIN_DELAY_SECS = "HERALD_DRAIN_DELAY_SECS";
    /// How long the drain spreads its 1012 closes over.
    drain_window_secs: u64 => DRAIN_WINDOW_SECS = "HERALD_DRAIN_WINDOW_SECS";
    /// `text` or `json`: how log lines are written (to stderr).
    log_format: String => LOG_FORMAT = "HERALD_LOG_FORMAT";
    /// PEM certificate chain for TLS.
    tls_cert: PathBuf => TLS_CERT = "HERALD_TLS_CERT";
    /// PEM private key for TLS.
    tls_key: PathBuf => TLS_KEY = "HERALD_TLS_KEY";
    /// Development mode on or off (default: on when no secrets are configured).
    dev: bool => DEV = "HERALD_DEV";
    /// Redis for a cluster of nodes (`redis://` or `rediss://`); unset: the in-process bus.
    redis_url: String => REDIS_URL = "HERALD_REDIS_URL";
    /// Prefix of every Redis key and channel.
    redis_prefix: String => REDIS_PREFIX = "HERALD_REDIS_PREFIX";
    /// Connections one user may hold, across the cluster.
    max_connections_per_user: u64 => MAX_CONNECTIONS_PER_USER = "HERALD_MAX_CONNECTIONS_PER_USER";
    /// How long a killed node's connections keep counting in the cluster.
    node_ttl_secs: u64 => NODE_TTL_SECS = "HERALD_NODE_TTL_SECS";
    /// Topic patterns whose subscribers are tracked for presence (env: comma-separated).
    presence_topics: Vec<String> => PRESENCE_TOPICS = "HERALD_PRESENCE_TOPICS";
    /// Seconds a pending write may make no progress before the connection is dropped.
    write_timeout_secs: u64 => WRITE_TIMEOUT_SECS = "HERALD_WRITE_TIMEOUT_SECS";
    /// TCP connections one client address may hold at once.
    max_connections_per_ip: u64 => MAX_CONNECTIONS_PER_IP = "HERALD_MAX_CONNECTIONS_PER_IP";
    /// New TCP connections per second one client address may open (a token bucket).
    connection_rate_per_ip: u64 => CONNECTION_RATE_PER_IP = "HERALD_CONNECTION_RATE_PER_IP";
    /// Addresses (CIDR) of proxies whose `X-Forwarded-For` or PROXY header names the client
    /// (env: comma-separated); empty: the TCP peer is the client.
    trusted_proxies: Vec<String> => TRUSTED_PROXIES = "HERALD_TRUSTED_PROXIES";
    /// Trusted proxies send a PROXY protocol v2 header first.
    proxy_protocol: bool => PROXY_PROTOCOL = "HERALD_PROXY_PROTOCOL";
    /// `POST /v1/tickets` per second per client address.
    ticket_rate_per_ip: u64 => TICKET_RATE_PER_IP = "HERALD_TICKET_RATE_PER_IP";
    /// `POST /v1/tickets` per second per user (`sub`).
    ticket_rate_per_user: u64 => TICKET_RATE_PER_USER = "HERALD_TICKET_RATE_PER_USER";
    /// Lifecycle events to record: connect, disconnect, subscribe, unsubscribe (env:
    /// comma-separated); unset: none.
    events: Vec<String> => EVENTS = "HERALD_EVENTS";
    /// Single node: the service (a `[services.NAME]`) that lifecycle events are POSTed to.
    events_service: String => EVENTS_SERVICE = "HERALD_EVENTS_SERVICE";
    /// Single node: the file where unsent events and open connections survive a restart.
    events_journal: PathBuf => EVENTS_JOURNAL = "HERALD_EVENTS_JOURNAL";
    /// Cluster: about how many entries the Redis event stream keeps.
    events_stream_max_len: u64 => EVENTS_STREAM_MAX_LEN = "HERALD_EVENTS_STREAM_MAX_LEN";
    /// The key of `/metrics` and the dashboard (`Authorization: Bearer`); unset: the API key.
    admin_key: String => ADMIN_KEY = "HERALD_ADMIN_KEY";
    /// `/metrics` without a key, for scrapers.
    metrics_public: bool => METRICS_PUBLIC = "HERALD_METRICS_PUBLIC";
    /// Upgrades may negotiate permessage-deflate.
    compression: bool => COMPRESSION = "HERALD_COMPRESSION";
    /// The smallest message payload sent compressed.
    compression_min_bytes: u64 => COMPRESSION_MIN_BYTES = "HERALD_COMPRESSION_MIN_BYTES";
}

impl RawConfig {
    /// Reads the TOML file at `path`.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        RawConfig::from_toml(&text, path)
    }

    /// Parses TOML text; `path` is only for messages.
    ///
    /// Each key is deserialised on its own so that a type error always names its key.
    pub fn from_toml(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        let table: toml::Table = text.parse().map_err(|source| ConfigError::FileSyntax {
            path: path.to_owned(),
            source,
        })?;
        let mut raw = RawConfig::default();
        for (name, value) in table {
            if name == "services" {
                raw.services = Some(parse_services(value, path)?);
                continue;
            }
            let Some(&key) = KEYS.iter().find(|k| k.name == name) else {
                return Err(ConfigError::UnknownFileKey {
                    path: path.to_owned(),
                    hint: did_you_mean(&name, KEYS.iter().map(|k| k.name)),
                    key: name,
                });
            };
            let mut one = toml::Table::new();
            one.insert(name, value);
            let parsed = toml::Value::Table(one)
                .try_into::<RawConfig>()
                .map_err(|e| ConfigError::Invalid {
                    key,
                    problem: format!(
                        "wrong type in the config file {}: {}",
                        path.display(),
                        e.message()
                    ),
                })?;
            raw = raw.overlay(parsed);
        }
        Ok(raw)
    }

    /// Reads the `HERALD_*` variables among `env`; any other `HERALD_*` variable is an error,
    /// except the ones the command-line clients read ([`CLIENT_ENV`]).
    pub fn from_env(env: &[(String, String)]) -> Result<RawConfig, ConfigError> {
        let mut raw = RawConfig::default();
        for (name, value) in env {
            if !name.starts_with(ENV_PREFIX) {
                continue;
            }
            if CLIENT_ENV.contains(&name.as_str()) {
                continue;
            }
            let Some(&key) = KEYS.iter().find(|k| k.env == name) else {
                return Err(ConfigError::UnknownEnvVar {
                    hint: did_you_mean(name, KEYS.iter().map(|k| k.env)),
                    name: name.clone(),
                });
            };
            raw.set_from_env(key, value)?;
        }
        Ok(raw)
    }
}

/// One `[services.NAME]` table, unvalidated.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// Base URLs, `http://host:port`.
    pub endpoints: Vec<String>,
    /// Path appended to each endpoint for `send` (default `/herald`).
    pub path: Option<String>,
    /// `round_robin` (default), `least_requests` or `user_hash`.
    pub balance: Option<String>,
    /// Per-request timeout (default 2000).
    pub timeout_ms: Option<u64>,
    /// Requests in flight to the service at once (default 256); over it: `overloaded`.
    pub max_concurrency: Option<u64>,
    /// Whether a request that may have reached a backend can be retried on another.
    pub idempotent: Option<bool>,
    /// Upgrade-request headers passed on to the backend (never `X-Herald-*`).
    pub forward_headers: Option<Vec<String>>,
    /// Active health check.
    pub health: Option<RawHealth>,
    /// PEM file of the CA(s) to trust for `https://` endpoints (default: the public web roots).
    pub tls_ca: Option<std::path::PathBuf>,
}

/// `[services.NAME.health]`, unvalidated.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Path of the check, e.g. `/healthz` (GET, 2xx is healthy).
    pub path: String,
    /// Time between checks (default 1000).
    pub interval_ms: Option<u64>,
    /// Consecutive failures that take an endpoint out (default 2).
    pub fall: Option<u32>,
    /// Consecutive successes that bring it back (default 2).
    pub rise: Option<u32>,
}

fn parse_services(
    value: toml::Value,
    path: &Path,
) -> Result<std::collections::BTreeMap<String, RawService>, ConfigError> {
    let toml::Value::Table(t) = value else {
        return Err(ConfigError::Service {
            name: String::new(),
            problem: format!(
                "`services` in {} must be a table of [services.NAME]",
                path.display()
            ),
        });
    };
    let mut out = std::collections::BTreeMap::new();
    for (name, v) in t {
        let s: RawService = v
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Service {
                name: name.clone(),
                problem: format!("in {}: {}", path.display(), e.message()),
            })?;
        out.insert(name, s);
    }
    Ok(out)
}

/// `" (did you mean `x`?)"` for the closest candidate within a third of the name's length in
/// edits (at least one), else `""`.
fn did_you_mean<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let name = name.to_ascii_lowercase();
    let limit = (name.len() / 3).max(1);
    candidates
        .map(|c| (edit_distance(&name, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// Levenshtein distance over bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let replace = prev[j] + usize::from(ca != cb);
            cur[j + 1] = replace.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_env_name_is_the_prefix_and_the_uppercase_key() {
        for key in KEYS {
            assert_eq!(
                key.env,
                format!("{ENV_PREFIX}{}", key.name.to_ascii_uppercase())
            );
        }
        assert_eq!(KEYS.len(), 51);
    }

    #[test]
    fn toml_keys_fill_their_fields() {
        let raw = RawConfig::from_toml(
            "listen = \"0.0.0.0:9000\"\nallowed_origins = [\"https://a.example\"]\n\
             history_size = 5\ndev = false\ntls_cert = \"/c.pem\"\n",
            Path::new("herald.toml"),
        )
        .unwrap();
        assert_eq!(raw.listen.as_deref(), Some("0.0.0.0:9000"));
        assert_eq!(
            raw.allowed_origins,
            Some(vec!["https://a.example".to_owned()])
        );
        assert_eq!(raw.history_size, Some(5));
        assert_eq!(raw.dev, Some(false));
        assert_eq!(raw.tls_cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(raw.api_key, None);
    }

    #[test]
    fn an_unknown_toml_key_is_an_error_naming_it() {
        let err = RawConfig::from_toml("lisen = \"x\"", Path::new("h.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`lisen`"), "{msg}");
        assert!(msg.contains("did you mean `listen`"), "{msg}");
        let err = RawConfig::from_toml("[tls]\ncert = \"x\"", Path::new("h.toml")).unwrap_err();
        assert!(err.to_string().contains("`tls`"), "{err}");
    }

    #[test]
    fn a_toml_type_error_names_the_key() {
        for (text, key) in [
            ("history_size = \"many\"", HISTORY_SIZE),
            ("ping_interval_secs = -1", PING_INTERVAL_SECS),
            ("allowed_origins = \"https://a.example\"", ALLOWED_ORIGINS),
            ("dev = \"yes\"", DEV),
            ("listen = 8080", LISTEN),
        ] {
            let err = RawConfig::from_toml(text, Path::new("h.toml")).unwrap_err();
            assert_eq!(err.key(), Some(key), "{text}");
            let msg = err.to_string();
            assert!(msg.contains(key.name) && msg.contains(key.env), "{msg}");
        }
    }

    #[test]
    fn invalid_toml_is_a_syntax_error_with_the_path() {
        let err = RawConfig::from_toml("listen = ", Path::new("herald.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::FileSyntax { .. }));
        assert!(err.to_string().contains("herald.toml"));
    }

    #[test]
    fn env_values_are_parsed_by_type() {
        let raw = RawConfig::from_env(&env(&[
            (
                "HERALD_ALLOWED_ORIGINS",
                " https://a.example , http://b:81,,",
            ),
            ("HERALD_DEV", "TRUE"),
            ("HERALD_RATE_LIMIT", " 50 "),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        assert_eq!(
            raw.allowed_origins,
            Some(vec![
                "https://a.example".to_owned(),
                "http://b:81".to_owned()
            ])
        );
        assert_eq!(raw.dev, Some(true));
        assert_eq!(raw.rate_limit, Some(50));
        let raw = RawConfig::from_env(&env(&[("HERALD_ALLOWED_ORIGINS", "")])).unwrap();
        assert_eq!(raw.allowed_origins, Some(vec![]));
    }

    #[test]
    fn an_unknown_herald_variable_is_an_error_naming_it() {
        let err = RawConfig::from_env(&env(&[("HERALD_LISTN", "x")])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("HERALD_LISTN"), "{msg}");
        assert!(msg.contains("did you mean `HERALD_LISTEN`"), "{msg}");
        assert!(RawConfig::from_env(&env(&[("HERALDLISTEN", "x")])).is_ok());
    }

    #[test]
    fn a_bad_env_value_names_the_key() {
        for (name, key) in [("HERALD_HISTORY_SIZE", HISTORY_SIZE), ("HERALD_DEV", DEV)] {
            let err = RawConfig::from_env(&env(&[(name, "lots")])).unwrap_err();
            assert_eq!(err.key(), Some(key));
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn overlay_prefers_the_top_layer_field_by_field() {
        let bottom = RawConfig {
            listen: Some("a".into()),
            node_id: Some("n".into()),
            ..RawConfig::default()
        };
        let top = RawConfig {
            listen: Some("b".into()),
            ..RawConfig::default()
        };
        let merged = bottom.overlay(top);
        assert_eq!(merged.listen.as_deref(), Some("b"));
        assert_eq!(merged.node_id.as_deref(), Some("n"));
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let raw = RawConfig {
            api_key: Some("super-secret-api-key".into()),
            jwt_secret: Some("super-secret-jwt-secret".into()),
            admin_key: Some("super-secret-admin-key".into()),
            listen: Some("127.0.0.1:1".into()),
            ..RawConfig::default()
        };
        let text = format!("{raw:?}");
        assert!(!text.contains("super-secret"), "{text}");
        assert!(text.contains("127.0.0.1:1"), "{text}");
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("listen", "listen"), 0);
        assert_eq!(edit_distance("lisen", "listen"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(did_you_mean("zzzzzzzz", KEYS.iter().map(|k| k.name)), "");
        assert_eq!(did_you_mean("x", KEYS.iter().map(|k| k.name)), "");
    }
}
