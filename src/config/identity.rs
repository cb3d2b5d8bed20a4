//! The second stage of the identity settings: the PEM public keys (`jwt_public_key_files`, read
//! here, parsed by `auth::keys` at start), the JWKS URL and its refresh intervals, and the rule
//! that a node outside development mode has at least one way to know who a client is.

use super::*;
use raw::{
    AUTH_SERVICE, JWKS_REFRESH_MIN_SECS, JWKS_REFRESH_SECS, JWT_JWKS_URL, JWT_PUBLIC_KEY_FILES,
};

/// Largest PEM file read for a public key (an RSA-8192 public key is under 2 KiB).
const MAX_PEM_BYTES: u64 = 64 * 1024;
/// Most public key files.
const MAX_PEM_FILES: usize = 16;

/// A public key file as read at start (public: not redacted).
#[derive(Clone, Debug)]
pub struct PublicKeyFile {
    /// The file, for error messages.
    pub path: PathBuf,
    /// Its PEM text.
    pub pem: Vec<u8>,
}

/// Where JWT keys come from besides `jwt_secret`.
#[derive(Clone, Debug, Default)]
pub struct JwtKeySources {
    /// `jwt_public_key_files`, read.
    pub public_key_files: Vec<PublicKeyFile>,
    /// `jwt_jwks_url`: `https://`, or `http://` to a loopback address.
    pub jwks_url: Option<String>,
    /// How often the JWKS is refreshed in the background (`jwks_refresh_secs`, default 300).
    pub jwks_refresh: Duration,
    /// The least time between two refetches for an unknown `kid` (`jwks_refresh_min_secs`,
    /// default 30).
    pub jwks_refresh_min: Duration,
}

impl JwtKeySources {
    /// True when some asymmetric key source is configured.
    pub fn any(&self) -> bool {
        !self.public_key_files.is_empty() || self.jwks_url.is_some()
    }
}

pub(super) fn validate(raw: &mut RawConfig) -> Result<JwtKeySources, ConfigError> {
    let files = raw.jwt_public_key_files.take().unwrap_or_default();
    if files.len() > MAX_PEM_FILES {
        return Err(invalid(
            JWT_PUBLIC_KEY_FILES,
            format!("at most {MAX_PEM_FILES} files, got {}", files.len()),
        ));
    }
    let public_key_files = files
        .into_iter()
        .map(|f| read_pem(PathBuf::from(f)))
        .collect::<Result<_, _>>()?;
    let jwks_url = raw.jwt_jwks_url.take().map(check_jwks_url).transpose()?;
    Ok(JwtKeySources {
        public_key_files,
        jwks_url,
        jwks_refresh: secs(JWKS_REFRESH_SECS, raw.jwks_refresh_secs, 300, 10, 86_400)?,
        jwks_refresh_min: secs(
            JWKS_REFRESH_MIN_SECS,
            raw.jwks_refresh_min_secs,
            30,
            1,
            3600,
        )?,
    })
}

/// `auth_service`: it must name a configured `[services.NAME]` (whose balancing, health checks,
/// timeout and `forward_headers` the hook then uses).
pub(super) fn auth_service(
    name: Option<String>,
    services: &[services::ServiceConfig],
) -> Result<Option<String>, ConfigError> {
    let Some(name) = name else { return Ok(None) };
    if !services.iter().any(|s| s.name == name) {
        return Err(invalid(
            AUTH_SERVICE,
            format!(
                "{name:?} is not a configured service: add a [services.{name}] table with its \
                 endpoints (and forward_headers = [\"cookie\"] for cookie sessions)"
            ),
        ));
    }
    Ok(Some(name))
}

fn read_pem(path: PathBuf) -> Result<PublicKeyFile, ConfigError> {
    let fail = |what: String| invalid(JWT_PUBLIC_KEY_FILES, format!("{}: {what}", path.display()));
    let meta = std::fs::metadata(&path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    if !meta.is_file() || meta.len() > MAX_PEM_BYTES {
        return Err(fail(format!(
            "expected a PEM file of at most {MAX_PEM_BYTES} bytes"
        )));
    }
    let pem = std::fs::read(&path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(fail("not a PEM file (no -----BEGIN line)".into()));
    }
    if pem.windows(7).any(|w| w == b"PRIVATE") {
        return Err(fail(
            "holds a private key; give the public key only (openssl pkey -pubout)".into(),
        ));
    }
    Ok(PublicKeyFile { path, pem })
}

/// `https://...`, or `http://` to a loopback address (a test's or a sidecar's).
fn check_jwks_url(url: String) -> Result<String, ConfigError> {
    let bad = |why: &str| invalid(JWT_JWKS_URL, why.to_owned());
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|_| bad("expected a URL such as https://id.example.com/.well-known/jwks.json"))?;
    let host = uri.host().unwrap_or("");
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(url),
        Some("http") if is_loopback(host) => Ok(url),
        Some("http") => Err(bad(
            "http:// is allowed only to a loopback address (127.0.0.1, [::1], localhost): \
             keys fetched in the clear could be swapped; use https://",
        )),
        _ => Err(bad("expected an https:// URL")),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_urls_are_https_or_loopback_http() {
        for ok in [
            "https://id.example.com/.well-known/jwks.json",
            "http://127.0.0.1:9000/jwks",
            "http://[::1]:9000/jwks",
            "http://localhost/jwks",
        ] {
            assert!(check_jwks_url(ok.into()).is_ok(), "{ok}");
        }
        for bad in [
            "http://id.example.com/jwks",
            "http://10.0.0.1/jwks",
            "ftp://127.0.0.1/jwks",
            "jwks.json",
            "https:///jwks",
        ] {
            let e = check_jwks_url(bad.into()).unwrap_err();
            assert_eq!(e.key(), Some(JWT_JWKS_URL), "{bad}");
        }
    }
}
