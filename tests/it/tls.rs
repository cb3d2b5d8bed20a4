//! TLS on the gateway port: HTTPS for the API and `wss://` for WebSockets, with a certificate made
//! for the test by `openssl`; and a plain-text client on a TLS port gets nothing.

use std::path::Path;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Node, WAIT};

/// A self-signed leaf certificate for 127.0.0.1 (CA:FALSE, which rustls requires of a leaf).
pub(crate) fn make_cert(dir: &Path) -> (String, String) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs (./test.sh installs it)");
    assert!(status.success(), "openssl made a certificate");
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

async fn connect_tls(node: &Node, cert: &str) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(node.addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the TLS handshake succeeds with the node's certificate")
}

/// `POST /v1/tickets` over HTTPS, by hand (HTTP/1.1, `Connection: close`).
async fn https_ticket(node: &Node, cert: &str, jwt: &str) -> String {
    let mut s = connect_tls(node, cert).await;
    let req = format!(
        "POST /v1/tickets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {jwt}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // Read until the node closes, as it does after answering (`Connection: close`).
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the node closes the connection after its answer");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    body["ticket"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn wss_subscribe_and_publish_work_over_tls() {
    let dir = tempdir();
    let (cert, key) = make_cert(&dir);
    let node = Node::with(&[("HERALD_TLS_CERT", &cert), ("HERALD_TLS_KEY", &key)]).await;
    let jwt = node.jwt("alice", &herald::auth::RawGrants::all());
    let ticket = https_ticket(&node, &cert, &jwt).await;
    let tls = connect_tls(&node, &cert).await;
    let url = format!("wss://127.0.0.1:{}/ws?ticket={ticket}", node.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let first = loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            break serde_json::from_str::<Value>(t.as_str()).unwrap();
        }
    };
    assert_eq!(first["op"], "welcome");
    let sub = json!({"op":"sub","id":1,"topic":"secure"}).to_string();
    ws.send(Message::text(sub)).await.unwrap();
    let pubf = json!({"op":"pub","id":2,"topic":"secure","data":{"n":1}}).to_string();
    ws.send(Message::text(pubf)).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            seen.push(v);
        }
    }
    assert!(seen.iter().any(|v| v["op"] == "ok" && v["id"] == 1));
    assert!(
        seen.iter()
            .any(|v| v["op"] == "ok" && v["id"] == 2 && v["offset"] == 1)
    );
    let msg = seen
        .iter()
        .find(|v| v["op"] == "msg")
        .expect("the published message");
    assert_eq!(msg["data"], json!({"n":1}));
}

#[tokio::test]
async fn plain_http_on_a_tls_port_gets_no_answer() {
    let dir = tempdir();
    let (cert, key) = make_cert(&dir);
    let node = Node::with(&[("HERALD_TLS_CERT", &cert), ("HERALD_TLS_KEY", &key)]).await;
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    // No answer can come once the node has closed the connection (the read ends, or is reset).
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the node closes the connection");
    assert!(
        !String::from_utf8_lossy(&out).contains("200 OK"),
        "a TLS port never answers plain HTTP"
    );
}

#[tokio::test]
async fn a_key_that_does_not_match_is_refused_at_start() {
    let dir = tempdir();
    let (cert, _) = make_cert(&dir);
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (_, other_key) = make_cert(&other);
    let env: Vec<(String, String)> = [
        ("HERALD_LISTEN", "127.0.0.1:0"),
        ("HERALD_API_KEY", crate::support::API_KEY),
        ("HERALD_JWT_SECRET", crate::support::JWT_SECRET),
        ("HERALD_TLS_CERT", cert.as_str()),
        ("HERALD_TLS_KEY", other_key.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = herald::config::Config::load(None, &env).unwrap();
    let err = herald::server::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("TLS"), "{err}");
}

pub(crate) fn tempdir() -> std::path::PathBuf {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).unwrap();
    let d = std::env::temp_dir().join(format!("herald-tls-{:016x}", u64::from_le_bytes(r)));
    std::fs::create_dir_all(&d).unwrap();
    d
}
