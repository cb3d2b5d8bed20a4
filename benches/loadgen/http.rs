//! HTTP side of the bench: the loopback-only target, minting the JWT, fetching one-use tickets
//! over a pooled keep-alive client (HTTPS too, for storm mode), and a dedicated HTTP/1.1
//! connection for `POST /v1/publish`.

use crate::tls::Tls;
use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, StatusCode, Uri, header};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The server under test. Loopback only.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// `host:port` as sent in `Host:`.
    pub authority: String,
    pub addr: SocketAddr,
    /// `http://host:port` or `https://host:port`
    pub base: String,
    /// The URL was `https://`: tickets over HTTPS and `wss://` upgrades (storm mode only; set
    /// up with [`Target::with_tls`]).
    pub https: bool,
    /// The client TLS configuration, once [`Target::with_tls`] gave it.
    pub tls: Option<Tls>,
    /// Loopback addresses to connect from, taken in turn (`--source-addrs`); empty: the kernel's
    /// choice. Spreads the bench over many client addresses, so that the node's per-address
    /// limits can stay at their defaults.
    pub sources: Arc<[IpAddr]>,
    /// The next source to use.
    next_source: Arc<AtomicUsize>,
}

impl Target {
    pub(crate) fn parse(url: &str) -> anyhow::Result<Target> {
        let uri: Uri = url.parse().with_context(|| format!("bad --url {url:?}"))?;
        let https = match uri.scheme_str() {
            Some("http") | None => false,
            Some("https") => true,
            Some(s) => bail!("--url scheme {s:?} is not supported (use http:// or https://)"),
        };
        let host = uri.host().context("--url has no host")?;
        let ip = match host.trim_start_matches('[').trim_end_matches(']') {
            "localhost" | "127.0.0.1" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            "::1" => IpAddr::V6(Ipv6Addr::LOCALHOST),
            other => bail!(
                "refusing --url host {other:?}: the bench only drives a server on this machine \
                 (127.0.0.1, localhost or [::1])"
            ),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = match ip {
            IpAddr::V6(_) => format!("[::1]:{port}"),
            IpAddr::V4(_) => format!("127.0.0.1:{port}"),
        };
        let scheme = if https { "https" } else { "http" };
        Ok(Target {
            base: format!("{scheme}://{authority}"),
            authority,
            https,
            tls: None,
            addr: SocketAddr::new(ip, port),
            sources: Arc::from([]),
            next_source: Arc::default(),
        })
    }

    /// For an `https://` target: trust the certificates in `ca` (PEM), offer only the key
    /// exchange group `kx` when given. Nothing for a plain one.
    pub(crate) fn with_tls(
        mut self,
        ca: Option<&std::path::Path>,
        kx: Option<&str>,
    ) -> anyhow::Result<Target> {
        if !self.https {
            return Ok(self);
        }
        let Some(ca) = ca else {
            bail!("an https:// --url needs --ca FILE (the PEM certificate to trust)");
        };
        let host = self.addr.ip().to_string();
        self.tls = Some(Tls::new(ca, &host, kx)?);
        Ok(self)
    }

    /// Refuses an `https://` target for a path that speaks plain TCP only.
    pub(crate) fn require_plain(&self, what: &str) -> anyhow::Result<()> {
        if self.https {
            bail!("{what}: plain TCP only; https:// (TLS) is for --storm (use http:// here)");
        }
        Ok(())
    }

    /// Connects from `n` addresses, 127.0.1.1 upwards (IPv4 targets only; 0: the kernel's choice).
    pub(crate) fn with_sources(mut self, n: usize) -> anyhow::Result<Target> {
        if n > 0 && !self.addr.is_ipv4() {
            bail!("--source-addrs needs an IPv4 --url");
        }
        if n > 65_000 {
            bail!("--source-addrs is at most 65000");
        }
        self.sources = (0..n)
            .map(|i| {
                let i = u16::try_from(i + 1).expect("bounded above");
                let [hi, lo] = (256 + i).to_be_bytes();
                IpAddr::V4(Ipv4Addr::new(127, 0, hi, lo))
            })
            .collect();
        Ok(self)
    }

    /// The address to connect from next, if any.
    pub(crate) fn source(&self) -> Option<IpAddr> {
        if self.sources.is_empty() {
            return None;
        }
        let i = self.next_source.fetch_add(1, Ordering::Relaxed);
        Some(self.sources[i % self.sources.len()])
    }

    /// A TCP connection to the target, from the next source address.
    pub(crate) async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        match self.source() {
            None => tokio::net::TcpStream::connect(self.addr).await,
            Some(src) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(src, 0))?;
                socket.connect(self.addr).await
            }
        }
    }
}

/// An HS256 JWT allowing everything the bench does.
pub(crate) fn mint_jwt(secret: &[u8], sub: &str, ttl: Duration) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "sub": sub,
        "iat": now,
        "exp": now + ttl.as_secs(),
        "grants": {"subscribe": [">"], "publish": [">"], "send": [">"]},
    });
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    Ok(jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )?)
}

/// Gets one-use tickets with `POST /v1/tickets` over a keep-alive pool (HTTP or HTTPS).
#[derive(Clone)]
pub(crate) struct Tickets {
    /// One pool per source address (one in all without `--source-addrs`), taken in turn.
    clients: Arc<[Client<HttpsConnector<HttpConnector>, Full<Bytes>>]>,
    next: Arc<AtomicUsize>,
    uri: Uri,
    /// `Bearer <JWT>` per user; [`Tickets::get`] uses the first.
    auths: Arc<[String]>,
}

impl Tickets {
    pub(crate) fn new(target: &Target, jwt: &str) -> anyhow::Result<Self> {
        Self::for_users(target, &[jwt.to_owned()], false)
    }

    /// Tickets for several users (one JWT each, taken by [`Tickets::get_for`]). `fresh`: no
    /// keep-alive, a new connection (and, over TLS, a new handshake) for every ticket.
    pub(crate) fn for_users(target: &Target, jwts: &[String], fresh: bool) -> anyhow::Result<Self> {
        anyhow::ensure!(!jwts.is_empty(), "no JWT to ask tickets with");
        // Plain targets go through the same connector (it passes http:// through untouched);
        // its TLS configuration then trusts nothing and is never used.
        let tls_config = match &target.tls {
            Some(t) => (*t.config).clone(),
            None => rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        };
        let sources: Vec<Option<IpAddr>> = if target.sources.is_empty() {
            vec![None]
        } else {
            target.sources.iter().copied().map(Some).collect()
        };
        let clients = sources
            .into_iter()
            .map(|src| {
                let mut conn = HttpConnector::new();
                conn.set_nodelay(true);
                conn.set_local_address(src);
                conn.enforce_http(false);
                let conn = HttpsConnectorBuilder::new()
                    .with_tls_config(tls_config.clone())
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(conn);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .pool_max_idle_per_host(if fresh { 0 } else { 1024 })
                    .build(conn)
            })
            .collect();
        Ok(Tickets {
            clients,
            next: Arc::default(),
            uri: format!("{}/v1/tickets", target.base).parse()?,
            auths: jwts.iter().map(|j| format!("Bearer {j}")).collect(),
        })
    }

    /// One ticket, or a short reason (used as the failure category).
    pub(crate) async fn get(&self) -> Result<String, String> {
        self.get_for(0).await
    }

    /// One ticket for user `user` (an index into the JWTs, modulo their number).
    pub(crate) async fn get_for(&self, user: usize) -> Result<String, String> {
        let auth = &self.auths[user % self.auths.len()];
        let req = Request::post(self.uri.clone())
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_LENGTH, "0")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("ticket request: {e}"))?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let resp = self.clients[i]
            .request(req)
            .await
            .map_err(|e| format!("ticket http: {}", chain(&e)))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("ticket body: {e}"))?;
        let body = body.to_bytes();
        if status != StatusCode::OK && status != StatusCode::CREATED {
            return Err(format!(
                "ticket HTTP {}: {}",
                status.as_u16(),
                error_code(&body)
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("ticket body not JSON: {e}"))?;
        v.get("ticket")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| "ticket body has no \"ticket\"".to_string())
    }
}

/// An error and its causes, `: `-separated (hyper's own words say only "client error (Connect)").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The `error` code of an error body, or the start of the body.
pub(crate) fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned())
}

/// One dedicated HTTP/1.1 keep-alive connection for publishing (one request in flight, so the
/// order of a topic's messages is the order they were sent).
pub(crate) struct Publisher {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    uri: Uri,
    auth: String,
    authority: String,
}

impl Publisher {
    pub(crate) async fn connect(target: &Target, api_key: &str) -> anyhow::Result<Self> {
        let tcp = target.connect().await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Publisher {
            send,
            uri: format!("{}/v1/publish", target.base).parse()?,
            auth: format!("Bearer {api_key}"),
            authority: target.authority.clone(),
        })
    }

    /// Publish one body; `Ok(())` on success, `Err(code)` on a refusal or failure.
    pub(crate) async fn publish(&mut self, body: Vec<u8>) -> Result<(), String> {
        self.send.ready().await.map_err(|e| format!("http: {e}"))?;
        let req = Request::post(self.uri.clone())
            .header(header::HOST, &self.authority)
            .header(header::AUTHORIZATION, &self.auth)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| format!("http: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("http body: {e}"))?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "HTTP {} {}",
                status.as_u16(),
                error_code(&body.to_bytes())
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_targets_are_loopback_only_and_need_a_ca() {
        let t = Target::parse("https://localhost:8443").unwrap();
        assert!(t.https);
        assert_eq!(t.base, "https://127.0.0.1:8443");
        assert_eq!(Target::parse("https://127.0.0.1").unwrap().addr.port(), 443);
        assert!(Target::parse("https://example.com:443").is_err());
        assert!(t.clone().with_tls(None, None).is_err());
        assert!(t.require_plain("this").is_err());
        let plain = Target::parse("http://127.0.0.1:8080").unwrap();
        assert!(plain.require_plain("this").is_ok());
        assert!(plain.with_tls(None, None).unwrap().tls.is_none());
    }
}
