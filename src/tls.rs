//! TLS shared by every part that speaks it: the certificate and key loaders, the server
//! side of the client-facing listeners (admin API, HTTPS and SIP-TLS front ends), and the
//! client side towards servers we do not control (registrar, health check, reverse-proxy
//! upstreams). The peer link's mutual TLS is `peer::tls`, built on the loaders here.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why a TLS configuration could not be set up.
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

pub(crate) fn file_error(path: &Path, reason: impl ToString) -> TlsError {
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
