//! TLS for the peer link: TLS 1.3 only, both sides present a certificate from the pair's CA,
//! and each side accepts only a certificate that names the configured peer.

use crate::engine::NodeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why the peer link's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration (for example a key that does not match its cert).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The CA could not be used to verify clients.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Everything needed to accept and make peer connections.
#[derive(Clone)]
pub struct PeerTls {
    /// Accepts the peer's inbound connections (client certificate required).
    pub acceptor: TlsAcceptor,
    /// Makes connections to the peer, presenting our certificate.
    pub connector: TlsConnector,
    /// The name the peer's certificate must carry.
    pub peer_name: ServerName<'static>,
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Loads the certificates (a chain, leaf first) from a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// Loads a private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

impl PeerTls {
    /// Builds the TLS side of the peer link from the pair CA, our certificate and key.
    pub fn load(ca: &Path, cert: &Path, key: &Path, peer_id: &NodeId) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca_cert in load_certs(ca)? {
            roots
                .add(ca_cert)
                .map_err(|e| file_error(ca, format!("not a usable CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let chain = load_certs(cert)?;
        let key = load_key(key)?;

        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        let peer_name = ServerName::try_from(peer_id.0.clone())
            .map_err(|e| file_error(cert, format!("peer id {peer_id} is not a DNS name: {e}")))?;
        Ok(PeerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            peer_name,
        })
    }

    /// Whether the client certificate of an accepted connection names our peer. The CA check
    /// already passed in the handshake; this keeps a node from accepting its own certificate
    /// (or a third one from the same CA) as the peer.
    pub fn names_peer(&self, certificates: Option<&[CertificateDer<'_>]>) -> bool {
        let Some(leaf) = certificates.and_then(<[_]>::first) else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf)
            .and_then(|cert| cert.verify_is_valid_for_subject_name(&self.peer_name))
            .is_ok()
    }
}

/// Where the system's CA bundle lives on Debian and its kin.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A TLS client (no client certificate) trusting `ca`, or the system CA bundle: for https
/// health checks and SIP over TLS.
pub fn client_connector(ca: Option<&Path>) -> Result<TlsConnector, String> {
    let path = ca.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path).map_err(|e| e.to_string())? {
        // A bundle may hold certificates rustls cannot use; skip those, keep the rest.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!("{}: no usable CA certificate", path.display()));
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Accepts a TLS client on `stream` within `limit`; the error says why not, for the log.
/// Shared by the listeners that serve clients (admin API, HTTPS and SIP-TLS front ends).
pub async fn accept_within<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    limit: std::time::Duration,
) -> Result<tokio_rustls::server::TlsStream<S>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(format!("TLS handshake failed: {error}")),
        Err(_) => Err("TLS handshake timed out".to_owned()),
    }
}

/// A TLS server (no client certificates) with `cert` (chain, leaf first) and `key`: for the
/// admin listener.
pub fn server_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
