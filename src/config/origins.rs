//! Browser origins: parsing, normalising (lowercase scheme and host, canonical IPv6, default
//! port dropped) and matching the `Origin` of an upgrade against `allowed_origins`, whose
//! entries are exact origins or `scheme://*.domain[:port]`: one or more subdomain labels of
//! `domain`, with that scheme and port, never `domain` itself.

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
    /// These entries (normalised: lowercase, no default port). Empty: none.
    List(Vec<Allowed>),
}

/// One entry of `allowed_origins`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// Exactly this origin, normalised.
    Exact(String),
    /// `scheme://*.domain[:port]`: any origin with this scheme and port whose host is one or more
    /// labels followed by `.domain`.
    Subdomains {
        /// The scheme, lowercase.
        scheme: String,
        /// The domain, lowercase, without the leading `*.`.
        domain: String,
        /// The port, unless the scheme's default.
        port: Option<u16>,
    },
}

impl Allowed {
    fn matches(&self, o: &Origin) -> bool {
        match self {
            Allowed::Exact(e) => *e == o.to_string(),
            Allowed::Subdomains {
                scheme,
                domain,
                port,
            } => {
                let labels = o
                    .host
                    .strip_suffix(domain.as_str())
                    .and_then(|h| h.strip_suffix('.'));
                o.scheme == *scheme
                    && o.port == *port
                    && labels.is_some_and(|l| !l.is_empty() && l.split('.').all(|x| !x.is_empty()))
            }
        }
    }
}

impl Origins {
    /// True when a request with this `Origin` header value may proceed.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Origins::Any => true,
            Origins::Loopback => Origin::parse(origin).is_ok_and(|o| o.is_loopback()),
            Origins::List(list) => {
                Origin::parse(origin).is_ok_and(|o| list.iter().any(|a| a.matches(&o)))
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
        let entry = parse_allowed(o).map_err(|why| {
            invalid(
                ALLOWED_ORIGINS,
                format!(
                    "{o:?} is not an origin: {why}; expected scheme://host[:port] such as \
                     https://app.example.com, scheme://*.domain[:port] such as \
                     https://*.example.com, or the single value `*`"
                ),
            )
        })?;
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    Ok(Origins::List(out))
}

/// One `allowed_origins` entry: an exact origin, or `scheme://*.domain[:port]`.
fn parse_allowed(s: &str) -> Result<Allowed, &'static str> {
    let Some((scheme, rest)) = s.split_once("://*.") else {
        if s.contains('*') {
            return Err("a wildcard may only be the whole first label: scheme://*.domain");
        }
        return Ok(Allowed::Exact(Origin::parse(s)?.to_string()));
    };
    // The domain, parsed as an origin of its own: the same checks and normalising.
    let base = Origin::parse(&format!("{scheme}://{rest}"))?;
    if base.host.contains('*') || rest.contains('*') {
        return Err("a wildcard may only be the whole first label: scheme://*.domain");
    }
    if base.host.starts_with('[') || base.host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err("a wildcard needs a domain name, not an IP address");
    }
    if !base.host.contains('.') {
        return Err("a wildcard needs a domain of at least two labels (*.example.com, not *.com)");
    }
    Ok(Allowed::Subdomains {
        scheme: base.scheme,
        domain: base.host,
        port: base.port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Origins {
        parse_origins(Some(entries.iter().map(|e| e.to_string()).collect()), false)
            .expect("valid allowed_origins")
    }

    #[test]
    fn a_wildcard_matches_one_or_more_subdomain_labels_and_nothing_else() {
        let o = list(&["https://*.example.com"]);
        for yes in [
            "https://app.example.com",
            "https://a.b.example.com",
            "HTTPS://App.Example.COM",
            "https://app.example.com:443",
        ] {
            assert!(o.allows(yes), "{yes} should be allowed");
        }
        for no in [
            "https://example.com",
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://evil-example.com",
            "https://app.example.com.evil.net",
            "https://appexample.com",
            "https://.example.com",
            "https://a..example.com",
            "null",
        ] {
            assert!(!o.allows(no), "{no} should be refused");
        }
    }

    #[test]
    fn a_wildcard_keeps_its_port_and_exact_entries_still_work_beside_it() {
        let o = list(&["http://*.example.com:8080", "https://example.com"]);
        assert!(o.allows("http://dev.example.com:8080"));
        assert!(!o.allows("http://dev.example.com"));
        assert!(o.allows("https://example.com"));
        assert!(!o.allows("https://www.example.com"));
    }

    #[test]
    fn wildcards_anywhere_but_the_whole_first_label_or_over_a_tld_or_an_address_are_refused() {
        for bad in [
            "https://*.com",
            "https://*",
            "https://a.*.example.com",
            "https://*example.com",
            "https://app*.example.com",
            "https://*.127.0.0.1",
            "https://*.[::1]",
            "*.example.com",
        ] {
            assert!(
                parse_origins(Some(vec![bad.to_string()]), false).is_err(),
                "{bad} should be refused"
            );
        }
    }
}
