//! Browser origins: parsing, normalising (lowercase scheme and host, canonical IPv6, default
//! port dropped) and matching the `Origin` of an upgrade against `allowed_origins`.

use std::fmt;
use std::net::Ipv6Addr;

use super::raw::ALLOWED_ORIGINS;
use super::{ConfigError, invalid};

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

/// The validated `allowed_origins`, with the development-mode default.
pub(super) fn parse_origins(
    list: Option<Vec<String>>,
    dev_mode: bool,
) -> Result<Origins, ConfigError> {
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
