//! TLS on the client side, for `--url https://…` (storm mode): a rustls client configuration on
//! the aws-lc-rs provider (the gateway's own) that trusts only the certificates of `--ca`, does
//! no session resumption (every connection pays a full handshake, as a storm of clients that
//! never met this node would), and can be held to one key exchange group (`--tls-kx`). Tickets go
//! over it with hyper-rustls, upgrades with tokio-rustls.

use anyhow::{Context as _, bail};
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// What a TLS connection to the target needs: the configuration and the name to verify.
#[derive(Clone)]
pub(crate) struct Tls {
    /// Without ALPN: hyper-rustls sets its own (none for HTTP/1.1 only).
    pub config: Arc<ClientConfig>,
    /// The same with ALPN `http/1.1`, for upgrades.
    upgrades: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish()
    }
}

/// The names of the key exchange groups the provider offers, best first.
pub(crate) fn kx_names() -> Vec<String> {
    rustls::crypto::aws_lc_rs::default_provider()
        .kx_groups
        .iter()
        .map(|g| format!("{:?}", g.name()))
        .collect()
}

impl Tls {
    /// Trusts the PEM certificates in `ca`; verifies the server as `host` (an IP address or a
    /// DNS name); offers only the group named `kx` when given.
    pub(crate) fn new(ca: &Path, host: &str, kx: Option<&str>) -> anyhow::Result<Tls> {
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<_, _>>())
            .with_context(|| format!("--ca {}: cannot read PEM certificates", ca.display()))?;
        if certs.is_empty() {
            bail!("--ca {}: no PEM certificate in it", ca.display());
        }
        for c in certs {
            roots
                .add(c)
                .with_context(|| format!("--ca {}: a certificate rustls refuses", ca.display()))?;
        }
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if let Some(want) = kx {
            provider
                .kx_groups
                .retain(|g| format!("{:?}", g.name()).eq_ignore_ascii_case(want));
            if provider.kx_groups.is_empty() {
                bail!(
                    "--tls-kx {want:?} is not one of the provider's groups: {}",
                    kx_names().join(", ")
                );
            }
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_owned())
                .with_context(|| format!("{host:?} is not a valid server name"))?,
        };
        let mut with_alpn = config.clone();
        with_alpn.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
            upgrades: TlsConnector::from(Arc::new(with_alpn)),
            name,
        })
    }

    /// The client handshake over `tcp`, offering ALPN `http/1.1` as a browser does.
    pub(crate) async fn connect(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.upgrades.connect(self.name.clone(), tcp).await
    }
}

/// The protocol version, cipher suite and key exchange group a handshake settled on.
pub(crate) fn describe(s: &TlsStream<TcpStream>) -> String {
    let c = s.get_ref().1;
    format!(
        "{} {} {}",
        c.protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        c.negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        c.negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_default(),
    )
}
