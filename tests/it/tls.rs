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
    connect_with(node, &trusting(&[cert])).await
}

/// A client configuration that trusts the certificates in the files `certs` (self-signed
/// leaves), without session resumption: every handshake gets the node's current certificate.
fn trusting(certs: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        for c in CertificateDer::pem_file_iter(cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

async fn connect_with(node: &Node, config: &Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(node.addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .expect("the TLS handshake succeeds with the node's certificate")
}

/// `POST /v1/tickets` over HTTPS, by hand (HTTP/1.1, `Connection: close`).
async fn https_ticket(node: &Node, cert: &str, jwt: &str) -> String {
    let (status, body) = https_post(node, &trusting(&[cert]), "/v1/tickets", jwt, "").await;
    assert_eq!(status, 200, "{body}");
    body["ticket"].as_str().unwrap().to_owned()
}

/// A POST over HTTPS with a bearer token, by hand (HTTP/1.1, `Connection: close`): the status
/// and the JSON body.
async fn https_post(
    node: &Node,
    config: &Arc<rustls::ClientConfig>,
    path: &str,
    bearer: &str,
    body: &str,
) -> (u16, Value) {
    let mut s = connect_with(node, config).await;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // Read until the node closes, as it does after answering (`Connection: close`).
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the node closes the connection after its answer");
    let text = String::from_utf8_lossy(&out);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {text}"));
    let body = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    (status, body)
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

/// The DER of the first certificate in the PEM file `path`.
fn leaf(path: &str) -> Vec<u8> {
    let first = CertificateDer::pem_file_iter(path).unwrap().next();
    first.expect("a certificate").unwrap().to_vec()
}

/// The certificate the node presents to a new handshake.
async fn presented(node: &Node, config: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let s = connect_with(node, config).await;
    let certs = s
        .get_ref()
        .1
        .peer_certificates()
        .expect("the node presents one");
    certs[0].to_vec()
}

/// The next JSON text frame on `ws`, within [`WAIT`].
async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within the wait")
            .expect("the connection is open")
            .expect("a frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_for_new_handshakes_keeps_open_connections_and_refuses_a_broken_one()
 {
    use crate::support::proc;
    let dir = tempdir();
    let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let (a_cert, a_key) = make_cert(&a_dir);
    let (b_cert, b_key) = make_cert(&b_dir);
    let (cert, key) = (dir.join("live.crt"), dir.join("live.key"));
    let install = |c: &str, k: &str| {
        std::fs::copy(c, &cert).unwrap();
        std::fs::copy(k, &key).unwrap();
    };
    install(&a_cert, &a_key);
    let addr = proc::free_addr().to_string();
    let (cert_path, key_path) = (cert.to_string_lossy(), key.to_string_lossy());
    let env = [
        ("HERALD_LISTEN", addr.as_str()),
        ("HERALD_API_KEY", crate::support::API_KEY),
        ("HERALD_JWT_SECRET", crate::support::JWT_SECRET),
        ("HERALD_TLS_CERT", &*cert_path),
        ("HERALD_TLS_KEY", &*key_path),
    ];
    let mut child = proc::herald(&["serve"], &env)
        .spawn()
        .expect("spawning herald serve");
    let mut log = proc::stderr(&mut child);
    proc::stdout(&mut child).drain();
    let bound = std::time::Duration::from_secs(10);
    log.until(bound, |l| l.contains("listening on")).await;
    let node = Node::external(addr.parse().unwrap());
    let trust = trusting(&[&a_cert, &b_cert]);
    assert_eq!(presented(&node, &trust).await, leaf(&a_cert));

    // A wss connection established with certificate A, subscribed.
    let jwt = node.jwt("alice", &herald::auth::RawGrants::all());
    let (status, t) = https_post(&node, &trust, "/v1/tickets", &jwt, "").await;
    assert_eq!(status, 200, "{t}");
    let tls = connect_with(&node, &trust).await;
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
        leaf(&a_cert)
    );
    let url = format!("wss://{addr}/ws?ticket={}", t["ticket"].as_str().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(next_json(&mut ws).await["op"], "welcome");
    let sub = json!({"op": "sub", "id": 1, "topic": "certs"}).to_string();
    ws.send(Message::text(sub)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["op"], "ok");

    // Certificate B in the same files, then SIGHUP: once the node says it reloaded, new
    // handshakes get B.
    install(&b_cert, &b_key);
    proc::sighup(&child);
    let line = log.until(bound, |l| l.contains("TLS")).await;
    assert!(line.contains("reloaded the TLS certificate"), "{line}");
    assert_eq!(presented(&node, &trust).await, leaf(&b_cert));
    // The connection made with A stays open and still receives.
    let body = json!({"topic": "certs", "data": {"after": "reload"}}).to_string();
    let api = crate::support::API_KEY;
    let (status, out) = https_post(&node, &trust, "/v1/publish", api, &body).await;
    assert_eq!(status, 200, "{out}");
    let m = next_json(&mut ws).await;
    assert_eq!(
        (&m["op"], &m["data"]),
        (&json!("msg"), &json!({"after": "reload"})),
        "{m}"
    );

    // A broken certificate (a file cut short) is refused in one line naming the file, never the
    // key; B stays.
    let b_text = std::fs::read_to_string(&b_cert).unwrap();
    std::fs::write(&cert, &b_text[..b_text.len() / 2]).unwrap();
    proc::sighup(&child);
    let line = log.until(bound, |l| l.contains("TLS")).await;
    assert!(
        line.contains("TLS reload refused") && line.contains(&*cert_path),
        "{line}"
    );
    let key_text = std::fs::read_to_string(&b_key).unwrap();
    let secret = key_text.lines().nth(1).unwrap();
    assert!(
        !line.contains("PRIVATE KEY") && !line.contains(secret),
        "{line}"
    );
    assert_eq!(presented(&node, &trust).await, leaf(&b_cert));

    // SIGHUP does not stop the node; SIGTERM still does, cleanly.
    proc::sigterm(&child);
    let status = proc::wait_exit(&mut child, std::time::Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
