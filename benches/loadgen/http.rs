//! HTTP side of the bench: the loopback-only target, minting the JWT, fetching one-use tickets
//! over a pooled keep-alive client, and a dedicated HTTP/1.1 connection for `POST /v1/publish`.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The server under test. Loopback only.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port` as sent in `Host:`.
    pub authority: String,
    pub addr: SocketAddr,
    /// `http://host:port`
    pub base: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let uri: Uri = url.parse().with_context(|| format!("bad --url {url:?}"))?;
        match uri.scheme_str() {
            Some("http") | None => {}
            Some(s) => bail!("--url scheme {s:?} is not supported (use http://)"),
        }
        let host = uri.host().context("--url has no host")?;
        let ip = match host.trim_start_matches('[').trim_end_matches(']') {
            "localhost" | "127.0.0.1" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            "::1" => IpAddr::V6(Ipv6Addr::LOCALHOST),
            other => bail!(
                "refusing --url host {other:?}: the bench only drives a server on this machine \
                 (127.0.0.1, localhost or [::1])"
            ),
        };
        let port = uri.port_u16().unwrap_or(80);
        let authority = match ip {
            IpAddr::V6(_) => format!("[::1]:{port}"),
            IpAddr::V4(_) => format!("127.0.0.1:{port}"),
        };
        Ok(Target {
            base: format!("http://{authority}"),
            authority,
            addr: SocketAddr::new(ip, port),
        })
    }
}

/// An HS256 JWT allowing everything the bench does.
pub fn mint_jwt(secret: &[u8], sub: &str, ttl: Duration) -> anyhow::Result<String> {
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

/// Gets one-use tickets with `POST /v1/tickets` over a keep-alive pool.
#[derive(Clone)]
pub struct Tickets {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    auth: String,
}

impl Tickets {
    pub fn new(target: &Target, jwt: &str) -> anyhow::Result<Self> {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1024)
            .build(conn);
        Ok(Tickets {
            client,
            uri: format!("{}/v1/tickets", target.base).parse()?,
            auth: format!("Bearer {jwt}"),
        })
    }

    /// One ticket, or a short reason (used as the failure category).
    pub async fn get(&self) -> Result<String, String> {
        let req = Request::post(self.uri.clone())
            .header(header::AUTHORIZATION, &self.auth)
            .header(header::CONTENT_LENGTH, "0")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("ticket request: {e}"))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("ticket http: {e}"))?;
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

/// The `error` code of an error body, or the start of the body.
pub fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned())
}

/// One dedicated HTTP/1.1 keep-alive connection for publishing (one request in flight, so the
/// order of a topic's messages is the order they were sent).
pub struct Publisher {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    uri: Uri,
    auth: String,
    authority: String,
}

impl Publisher {
    pub async fn connect(target: &Target, api_key: &str) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(target.addr).await?;
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
    pub async fn publish(&mut self, body: Vec<u8>) -> Result<(), String> {
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
