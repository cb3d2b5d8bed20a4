//! Signing keys made for a test by `openssl` (RSA, EC P-256 and P-384, Ed25519), and a real JWKS
//! server on 127.0.0.1:0 that serves whichever of them the test publishes, counts its requests,
//! and can go down and come back on the same port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use herald::auth::{RawGrants, Signer};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::watch;

use super::WAIT;

/// A key pair in PEM files.
pub(crate) struct KeyPair {
    pub private: PathBuf,
    pub public: PathBuf,
}

/// The kinds of keys a test can make.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyPair {
    /// Makes a key of `kind` in `dir`, named `name`.
    pub(crate) fn make(dir: &Path, name: &str, kind: Kind) -> KeyPair {
        let private = dir.join(format!("{name}.pem"));
        let public = dir.join(format!("{name}.pub.pem"));
        let mut cmd = std::process::Command::new("openssl");
        cmd.arg("genpkey");
        match kind {
            Kind::Rsa => cmd.args(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
            Kind::P256 => cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
            Kind::P384 => cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]),
            Kind::Ed25519 => cmd.args(["-algorithm", "ED25519"]),
        };
        let ok = cmd
            .arg("-out")
            .arg(&private)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs (./test.sh installs it)");
        assert!(ok.success(), "openssl made a {kind:?} key");
        let ok = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "openssl wrote the public key");
        KeyPair { private, public }
    }

    /// The public key's PEM text.
    pub(crate) fn public_pem(&self) -> Vec<u8> {
        std::fs::read(&self.public).unwrap()
    }

    /// A signer with `alg` (or the key's default) and `kid`.
    pub(crate) fn signer(&self, alg: Option<Algorithm>, kid: Option<&str>) -> Signer {
        let pem = std::fs::read(&self.private).unwrap();
        Signer::from_pem(&self.private, &pem, alg, kid.map(str::to_owned)).expect("a signing key")
    }

    /// A JWT for `user` with every grant, valid for an hour.
    pub(crate) fn jwt(&self, user: &str, alg: Option<Algorithm>, kid: Option<&str>) -> String {
        self.signer(alg, kid)
            .mint(
                user,
                &RawGrants::all(),
                std::time::Duration::from_secs(3600),
            )
            .unwrap()
    }

    /// The public key as a JWK with `kid` (and `alg` when given).
    pub(crate) fn jwk(&self, kid: &str, alg: Option<Algorithm>) -> Jwk {
        let pem = self.public_pem();
        let key = DecodingKey::from_rsa_pem(&pem)
            .or_else(|_| DecodingKey::from_ec_pem(&pem))
            .or_else(|_| DecodingKey::from_ed_pem(&pem))
            .unwrap();
        let mut jwk = Jwk::from_decoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        jwk
    }
}

/// A JWKS server: `GET /jwks` answers the published key set.
pub(crate) struct JwksServer {
    pub addr: SocketAddr,
    keys: Arc<Mutex<JwkSet>>,
    /// Requests answered so far.
    hits: watch::Sender<usize>,
    /// Bytes of JSON whitespace after the key set (a valid document, as large as wanted).
    pad: Arc<AtomicUsize>,
    /// Requests still to leave unanswered for ever (the server hangs on them).
    stall: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl JwksServer {
    /// Starts one serving `keys`.
    pub(crate) async fn start(keys: Vec<Jwk>) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = JwksServer {
            addr: listener.local_addr().unwrap(),
            keys: Arc::new(Mutex::new(JwkSet { keys })),
            hits: watch::Sender::new(0),
            pad: Arc::default(),
            stall: Arc::default(),
            task: None,
        };
        s.serve(listener);
        s
    }

    /// A server that is not running yet: its port is reserved by nobody until [`JwksServer::up`].
    pub(crate) async fn down_at(keys: Vec<Jwk>) -> JwksServer {
        let mut s = JwksServer::start(keys).await;
        s.down().await;
        s
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (keys, hits) = (self.keys.clone(), self.hits.clone());
        let (pad, stall) = (self.pad.clone(), self.stall.clone());
        let app = Router::new().route(
            "/jwks",
            get(move || {
                let mut body = serde_json::to_string(&*keys.lock().unwrap()).unwrap();
                body.push_str(&" ".repeat(pad.load(Ordering::SeqCst)));
                let hang = stall
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if !hang {
                    hits.send_modify(|n| *n += 1);
                }
                // No keep-alive: when the server goes down, nothing pooled reaches it.
                async move {
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    (
                        [
                            (header::CONTENT_TYPE, "application/json"),
                            (header::CONNECTION, "close"),
                        ],
                        body,
                    )
                        .into_response()
                }
            }),
        );
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// The URL for `jwt_jwks_url`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// Publishes `keys` from now on.
    pub(crate) fn publish(&self, keys: Vec<Jwk>) {
        *self.keys.lock().unwrap() = JwkSet { keys };
    }

    /// Follows the key set with `bytes` of whitespace from now on.
    pub(crate) fn pad(&self, bytes: usize) {
        self.pad.store(bytes, Ordering::SeqCst);
    }

    /// Leaves the next `n` requests unanswered for ever.
    pub(crate) fn stall(&self, n: usize) {
        self.stall.store(n, Ordering::SeqCst);
    }

    /// Requests answered so far.
    pub(crate) fn hits(&self) -> usize {
        *self.hits.borrow()
    }

    /// Waits until `n` requests have been answered in all.
    pub(crate) async fn answered(&self, n: usize) {
        let mut rx = self.hits.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|&k| k >= n))
            .await
            .unwrap_or_else(|_| panic!("the JWKS server did not answer {n} requests"))
            .unwrap();
    }

    /// Stops listening (returns once the listener is closed): connections to its port are
    /// refused.
    pub(crate) async fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same port.
    pub(crate) async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
