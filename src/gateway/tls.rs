//! TLS for the gateway's port: a rustls server configuration offering HTTP/1.1 over ALPN, whose
//! certificate chain and private key come from PEM files, read at start (a bad file stops the
//! start) and again on every reload (SIGHUP, wired in `server.rs`).
//!
//! The acceptor is built once. Its certificate resolver ([`Certs`]) hands every new handshake
//! the current certificate, an `Arc<CertifiedKey>` behind a lock held only to clone or replace
//! the `Arc` (never across `.await`: rustls resolves synchronously). A reload reads both files,
//! checks that the key matches the certificate, and only then swaps: a reload that fails (a file
//! unreadable or without a certificate or key, a key that does not match) changes nothing and is
//! logged once, naming the file, never its contents. Connections already open keep the
//! certificate they were established with; only new handshakes see the new one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up, or a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read.
    #[error("cannot read the TLS certificate chain from {path}: {source}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("no PEM certificate in {0}")]
    NoCertificate(PathBuf),
    /// The key file could not be read or holds no private key.
    #[error("cannot read the TLS private key from {path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the pair: the key does not match the certificate, or is of a kind it
    /// cannot use.
    #[error(
        "the TLS certificate in {cert} and the key in {key} do not form a usable pair: {source}"
    )]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the configuration.
    #[error("the TLS configuration is refused: {0}")]
    Config(#[source] rustls::Error),
}

/// The certificate that new handshakes get, reloadable from its files.
pub(crate) struct Certs {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    /// Locked only to clone the `Arc` out (every handshake) or to replace it (a reload).
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for Certs {
    // The paths only: never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Certs {
    /// Reads the certificate chain at `cert` and the private key at `key`.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Arc<Certs>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let first = read_pair(cert, key, &provider)?;
        Ok(Arc::new(Certs {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new(Arc::new(first)),
        }))
    }

    /// The acceptor for the gateway's port, built once: every handshake asks `self` for the
    /// current certificate.
    pub(crate) fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reads the files again and, when they hold a usable pair, makes it the certificate of
    /// every new handshake; otherwise keeps the current one.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let next = read_pair(&self.cert, &self.key, &self.provider)?;
        *self.current.write() = Arc::new(next);
        Ok(())
    }

    /// [`Certs::reload`], its outcome logged in one line.
    pub(crate) fn reload_logged(&self) {
        match self.reload() {
            Ok(()) => tracing::info!(
                "reloaded the TLS certificate from {} and its key from {}",
                self.cert.display(),
                self.key.display()
            ),
            Err(e) => tracing::warn!("TLS reload refused, the current certificate stays: {e}"),
        }
    }

    /// The certificate new handshakes get now.
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().clone()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The chain at `cert` and the key at `key`, checked to match.
fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|source| TlsError::Certificate {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    CertifiedKey::from_der(chain, key_der, provider).map_err(|source| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, written by `openssl` (as the integration tests
    /// make theirs) to `<dir>/<name>.crt` and `<dir>/<name>.key`.
    fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs (./test.sh installs it)");
        assert!(status.success(), "openssl made a certificate");
        (cert, key)
    }

    fn tempdir() -> PathBuf {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        let d =
            std::env::temp_dir().join(format!("herald-tls-unit-{:016x}", u64::from_le_bytes(r)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn leaf(certs: &Certs) -> Vec<u8> {
        certs.current().cert[0].to_vec()
    }

    fn pem_leaf(path: &Path) -> Vec<u8> {
        CertificateDer::pem_file_iter(path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn a_reload_swaps_the_certificate_and_a_bad_one_is_refused_keeping_the_current() {
        let dir = tempdir();
        let (a_cert, a_key) = make_cert(&dir, "a");
        let (b_cert, b_key) = make_cert(&dir, "b");
        let (cert, key) = (dir.join("live.crt"), dir.join("live.key"));
        std::fs::copy(&a_cert, &cert).unwrap();
        std::fs::copy(&a_key, &key).unwrap();
        let certs = Certs::load(&cert, &key).unwrap();
        certs.acceptor().expect("an acceptor");
        assert_eq!(leaf(&certs), pem_leaf(&a_cert));
        // The files replaced: the next handshake gets B.
        std::fs::copy(&b_cert, &cert).unwrap();
        std::fs::copy(&b_key, &key).unwrap();
        certs.reload().expect("B is a usable pair");
        assert_eq!(leaf(&certs), pem_leaf(&b_cert));
        let b_leaf = pem_leaf(&b_cert);
        let secret = std::fs::read_to_string(&b_key).unwrap();
        let secret = secret.lines().nth(1).unwrap();
        // Each bad reload is refused naming a file, never the key's contents, and B stays.
        let refused = |what: &str| {
            let e = certs.reload().expect_err(what).to_string();
            assert!(
                e.contains(&*dir.to_string_lossy()),
                "{what}: names the file: {e}"
            );
            assert!(
                !e.contains("PRIVATE KEY") && !e.contains(secret),
                "{what}: {e}"
            );
            assert_eq!(leaf(&certs), b_leaf, "{what}: B stays");
        };
        std::fs::write(&cert, "not a certificate").unwrap();
        refused("no certificate in the file");
        std::fs::copy(&b_cert, &cert).unwrap();
        std::fs::copy(&a_key, &key).unwrap();
        refused("a key that does not match");
        std::fs::write(&key, "not a key").unwrap();
        refused("no key in the file");
        std::fs::remove_file(&key).unwrap();
        refused("no key file");
        std::fs::remove_file(&cert).unwrap();
        refused("no certificate file");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
