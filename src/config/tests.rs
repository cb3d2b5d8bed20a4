//! Config tests: every key's bad value is named; development mode; origins.
use super::*;
use operations::{Drain, LogFormat};
use raw::{
    ADMIN_KEY, ALLOWED_ORIGINS, CONNECTION_RATE_PER_IP, DEV, DRAIN_DELAY_SECS, DRAIN_WINDOW_SECS,
    LOG_FORMAT, MAX_CONNECTIONS_PER_IP, METRICS_PUBLIC, PROXY_PROTOCOL, SHUTDOWN_TIMEOUT_SECS,
    TICKET_RATE_PER_IP, TICKET_RATE_PER_USER, TRUSTED_PROXIES, WRITE_TIMEOUT_SECS,
};
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
    assert_eq!(shown.as_bytes(), &c.jwt_secret.as_deref().unwrap()[..]);
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
    assert_eq!(c.history_bytes, 256 << 20);
    assert_eq!((c.rate_limit, c.rate_burst), (100, 200));
    let drain = Drain {
        delay: Duration::from_secs(5),
        window: Duration::from_secs(10),
        timeout: Duration::from_secs(25),
    };
    assert_eq!(c.drain, drain);
    assert_eq!(c.log_format, LogFormat::Text);
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
    assert_eq!(*c.api_key, API);
    assert_eq!(**c.jwt_secret.as_ref().unwrap(), SECRET.as_bytes());
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
        (SHUTDOWN_TIMEOUT_SECS, "7201"),
        (SHUTDOWN_TIMEOUT_SECS, "15"),
        (DRAIN_DELAY_SECS, "601"),
        (DRAIN_DELAY_SECS, "20"),
        (DRAIN_WINDOW_SECS, "3601"),
        (DRAIN_WINDOW_SECS, "20"),
        (LOG_FORMAT, "yaml"),
        (TLS_CERT, "/nonexistent/herald/cert.pem"),
        (DEV, "maybe"),
        (raw::REDIS_URL, "rediss://127.0.0.1:6380"),
        (raw::REDIS_URL, "http://127.0.0.1:6379"),
        (WRITE_TIMEOUT_SECS, "0"),
        (WRITE_TIMEOUT_SECS, "601"),
        (MAX_CONNECTIONS_PER_IP, "0"),
        (CONNECTION_RATE_PER_IP, "0"),
        (TRUSTED_PROXIES, "10.0.0.0/33"),
        (TRUSTED_PROXIES, "10.0.0.1,proxy.internal"),
        (PROXY_PROTOCOL, "true"),
        (TICKET_RATE_PER_IP, "0"),
        (TICKET_RATE_PER_USER, "none"),
        (ADMIN_KEY, "short"),
        (ADMIN_KEY, "sixteen chars with spaces"),
        (METRICS_PUBLIC, "yes"),
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
        ("HERALD_ADMIN_KEY", "hunter2-secret"),
        ("HERALD_ADMIN_KEY", "hunter2 secret with spaces and all"),
    ] {
        let mut e = prod(&[]);
        e.retain(|(k, _)| k != name);
        e.extend(env(&[(name, value)]));
        let err = Config::load(None, &e).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
    let admin = "an-admin-key-of-24-chars";
    let c = Config::load(None, &prod(&[("HERALD_ADMIN_KEY", admin)])).unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains(API) && !debug.contains(SECRET), "{debug}");
    assert!(
        !debug.contains(admin) && debug.contains("key: Some([redacted])"),
        "{debug}"
    );
    // Every field shows (the Debug is derived), the secrets as `[redacted]`.
    for field in [
        "api_key: [redacted]",
        "jwt_secret: Some([redacted])",
        "redis:",
        "max_connections_per_user:",
        "node_ttl:",
        "presence_topics:",
        "services:",
        "limits:",
    ] {
        assert!(debug.contains(field), "{field} missing from {debug}");
    }
    let dev = Config::load(None, &[]).unwrap();
    assert!(!format!("{dev:?}").contains(dev.api_key.as_str()));
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
    assert_eq!(*c.api_key, API);
    assert!(c.generated.api_key.is_none() && c.generated.jwt_secret.is_none());
    let c = Config::load(None, &env(&[("HERALD_DEV", "1"), ("HERALD_API_KEY", API)])).unwrap();
    assert_eq!(*c.api_key, API);
    assert!(c.generated.api_key.is_none() && c.generated.jwt_secret.is_some());
}

#[test]
fn one_secret_without_the_other_is_an_error_naming_the_missing_one() {
    let err = Config::load(None, &env(&[("HERALD_API_KEY", API)])).unwrap_err();
    assert_eq!(err.key(), Some(JWT_SECRET));
    assert!(err.to_string().contains("api_key is set"), "{err}");
    let err = Config::load(None, &env(&[("HERALD_JWT_SECRET", SECRET)])).unwrap_err();
    assert_eq!(err.key(), Some(API_KEY));
    assert!(err.to_string().contains("a JWT key is set"), "{err}");
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

#[test]
fn passwords_are_not_shown() {
    assert_eq!(
        redact_url("redis://:secret@127.0.0.1:6379/0"),
        "redis://***@127.0.0.1:6379/0"
    );
    assert_eq!(
        redact_url("redis://127.0.0.1:6379"),
        "redis://127.0.0.1:6379"
    );
}

#[test]
fn a_jwks_url_or_public_key_files_stand_in_for_the_jwt_secret() {
    let c = Config::load(
        None,
        &env(&[
            ("HERALD_API_KEY", API),
            (
                "HERALD_JWT_JWKS_URL",
                "https://id.example.com/.well-known/jwks.json",
            ),
        ]),
    )
    .unwrap();
    assert!(!c.dev_mode);
    assert!(c.jwt_secret.is_none());
    assert_eq!(c.jwt_keys.jwks_refresh_min, Duration::from_secs(30));
    assert_eq!(c.jwt_keys.jwks_refresh, Duration::from_secs(300));
    // A JWKS URL alone is no development mode: the API key is missing.
    let err = Config::load(
        None,
        &env(&[("HERALD_JWT_JWKS_URL", "https://id.example.com/j")]),
    )
    .unwrap_err();
    assert_eq!(err.key(), Some(API_KEY));
    assert!(err.to_string().contains("a JWT key is set"), "{err}");
    let err = err_key(
        None,
        &prod(&[("HERALD_JWT_JWKS_URL", "http://id.example.com/jwks")]),
    );
    assert_eq!(err, Some(raw::JWT_JWKS_URL));
    let err = err_key(None, &prod(&[("HERALD_JWKS_REFRESH_MIN_SECS", "0")]));
    assert_eq!(err, Some(raw::JWKS_REFRESH_MIN_SECS));
}

#[test]
fn the_admin_key_is_the_api_key_unless_set_and_metrics_are_private_by_default() {
    let c = Config::load(None, &prod(&[])).unwrap();
    assert_eq!(c.admin_key(), API);
    assert!(!c.admin.metrics_public);
    let admin = "an-admin-key-of-24-chars";
    let e = prod(&[
        ("HERALD_ADMIN_KEY", admin),
        ("HERALD_METRICS_PUBLIC", "true"),
    ]);
    let c = Config::load(None, &e).unwrap();
    assert_eq!(c.admin_key(), admin);
    assert!(c.admin.metrics_public);
}

#[test]
fn the_drain_fits_under_its_deadline_or_the_key_that_was_set_is_named() {
    let c = Config::load(
        None,
        &prod(&[
            ("HERALD_LOG_FORMAT", "json"),
            ("HERALD_DRAIN_DELAY_SECS", "0"),
            ("HERALD_DRAIN_WINDOW_SECS", "0"),
            ("HERALD_SHUTDOWN_TIMEOUT_SECS", "1"),
        ]),
    )
    .unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(
        (c.drain.delay, c.drain.window, c.drain.timeout),
        (Duration::ZERO, Duration::ZERO, Duration::from_secs(1))
    );
    // delay + window must be less than the deadline; the deadline is named when it was set.
    let e = prod(&[
        ("HERALD_DRAIN_DELAY_SECS", "20"),
        ("HERALD_DRAIN_WINDOW_SECS", "40"),
        ("HERALD_SHUTDOWN_TIMEOUT_SECS", "60"),
    ]);
    let err = Config::load(None, &e).unwrap_err();
    assert_eq!(err.key(), Some(SHUTDOWN_TIMEOUT_SECS), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("(20)") && msg.contains("(40)") && msg.contains("(60)"),
        "{msg}"
    );
    let fits = prod(&[
        ("HERALD_DRAIN_WINDOW_SECS", "54"),
        ("HERALD_SHUTDOWN_TIMEOUT_SECS", "60"),
    ]);
    assert_eq!(
        Config::load(None, &fits).unwrap().drain.window,
        Duration::from_secs(54)
    );
    // A longer window against the default deadline names the window.
    let err = Config::load(None, &prod(&[("HERALD_DRAIN_WINDOW_SECS", "30")])).unwrap_err();
    assert_eq!(err.key(), Some(DRAIN_WINDOW_SECS), "{err}");
}
