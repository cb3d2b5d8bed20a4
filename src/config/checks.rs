//! The checks of the second config stage: each raw value to its validated form, or a
//! [`ConfigError`] that names its key and what is wrong (and never echoes a secret).

use super::*;

/// Checks `value` (or `default`) against `min..=max`; `what` describes the value for messages,
/// e.g. "a number of seconds".
pub(super) fn ranged(
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

pub(super) fn secs(
    key: Key,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    ranged(key, value, default, min, max, "a number of seconds").map(Duration::from_secs)
}

pub(super) fn to_usize(key: Key, v: u64) -> Result<usize, ConfigError> {
    usize::try_from(v).map_err(|_| invalid(key, format!("{v} is too large for this platform")))
}

pub(super) fn size(
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

pub(super) fn count(
    key: Key,
    value: Option<u64>,
    default: u64,
    (min, max): (u64, u64),
    what: &str,
) -> Result<usize, ConfigError> {
    to_usize(key, ranged(key, value, default, min, max, what)?)
}

pub(super) fn per_sec(
    key: Key,
    value: Option<u64>,
    default: u64,
    what: &str,
) -> Result<u32, ConfigError> {
    let v = ranged(key, value, default, 1, u64::from(u32::MAX), what)?;
    u32::try_from(v).map_err(|_| invalid(key, "out of range"))
}

pub(super) fn parse_listen(value: Option<&str>) -> Result<SocketAddr, ConfigError> {
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

pub(super) fn check_node_id(id: String) -> Result<String, ConfigError> {
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

/// A secret shorter than `min` `unit`s: says so with its length only (never the value), and how
/// to make a good one.
fn too_short(key: Key, n: usize, min: usize, unit: &str, rand_bytes: u32) -> ConfigError {
    invalid(
        key,
        format!(
            "too short: expected at least {min} {unit}, got {n}; use a long random string such \
             as the output of `openssl rand -base64 {rand_bytes}`"
        ),
    )
}

/// An optional text that, when given, is not empty.
pub(super) fn non_empty(key: Key, v: Option<String>) -> Result<Option<String>, ConfigError> {
    match v {
        Some(s) if s.trim().is_empty() => Err(invalid(key, "is empty: leave it unset instead")),
        other => Ok(other),
    }
}

pub(super) fn check_api_key(key: String) -> Result<String, ConfigError> {
    let n = key.chars().count();
    if n < MIN_API_KEY_CHARS {
        return Err(too_short(API_KEY, n, MIN_API_KEY_CHARS, "characters", 24));
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

pub(super) fn check_jwt_secret(secret: String) -> Result<Vec<u8>, ConfigError> {
    let n = secret.len();
    if n < MIN_JWT_SECRET_BYTES {
        return Err(too_short(JWT_SECRET, n, MIN_JWT_SECRET_BYTES, "bytes", 48));
    }
    Ok(secret.into_bytes())
}

/// Outside development mode without `api_key`.
pub(super) fn missing_api_key(jwt_key_set: bool) -> ConfigError {
    let why = if jwt_key_set {
        "missing: a JWT key is set (jwt_secret, jwt_public_key_files or jwt_jwks_url), so Herald \
         runs in production mode, which needs api_key too; set it, or set none of them (and \
         leave dev unset) for development mode with generated secrets"
    } else {
        "missing: dev is false, so Herald runs in production mode, which needs api_key and a \
         JWT key (jwt_secret, jwt_public_key_files or jwt_jwks_url); set them, or leave dev \
         unset for development mode with generated secrets"
    };
    invalid(API_KEY, why)
}

/// Outside development mode without any way to verify a JWT.
pub(super) fn missing_identity() -> ConfigError {
    invalid(
        JWT_SECRET,
        "missing: api_key is set, so Herald runs in production mode, which needs a way to \
         verify the JWTs exchanged for tickets: set jwt_secret (HMAC), jwt_public_key_files \
         (PEM public keys) or jwt_jwks_url (an identity provider's JWKS), or auth_service \
         (a backend that checks session cookies); or set neither \
         api_key nor any of them (and leave dev unset) for development mode",
    )
}

pub(super) fn missing_pair(missing: Key, other: Key) -> ConfigError {
    invalid(
        missing,
        format!(
            "missing: {} is set; set both tls_cert and tls_key to serve TLS, or neither for \
             plain HTTP",
            other.name
        ),
    )
}

pub(super) fn check_readable(key: Key, path: &Path) -> Result<(), ConfigError> {
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

pub(super) fn random_bytes<const N: usize>(what: &'static str) -> Result<[u8; N], ConfigError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|source| ConfigError::Random { what, source })?;
    Ok(buf)
}

/// `N` random bytes as base64url without padding (24 bytes: 32 chars; 32 bytes: 43 chars).
pub(super) fn random_base64url<const N: usize>(what: &'static str) -> Result<String, ConfigError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<N>(what)?))
}

/// 8 random lowercase hex characters.
pub(super) fn random_node_id() -> Result<String, ConfigError> {
    let bytes = random_bytes::<4>("a node id")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
