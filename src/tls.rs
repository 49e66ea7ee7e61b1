//! TLS shared by every part that speaks it: the certificate and key loaders, the server
//! side of the client-facing listeners (admin API, HTTPS and SIP-TLS front ends), and the
//! client side towards servers we do not control (registrar, health check, reverse-proxy
//! upstreams). The peer link's mutual TLS is `peer::tls`, built on the loaders here.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig, SupportedProtocolVersion};
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

/// The TLS versions of every client-facing listener and of our clients towards servers we
/// do not control: many deployed SIP phones and older portal clients speak TLS 1.2 at most.
/// With ring's default cipher suites, TLS 1.2 offers only ECDHE key exchange with AES-GCM or
/// ChaCha20-Poly1305 (no CBC, no RSA key exchange). The peer link asks for TLS 1.3 alone.
pub const CLIENT_FACING_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Counts one finished handshake of `kind` (`admin`, `https`, `sip_tls`, `registrar`,
/// `health`, `http_upstream`) by the version it negotiated, so an operator sees when the
/// last TLS 1.2 clients are gone.
pub fn count_handshake(kind: &'static str, connection: &CommonState) {
    let version = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
        _ => "other",
    };
    crate::telemetry::tls_handshake(kind, version);
}

/// Where the system's CA bundle lives on Debian and its kin.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A TLS client (no client certificate) trusting `ca`, or the system CA bundle: for https
/// health checks, the registrar over TLS and the reverse proxy's https upstreams.
pub fn client_connector(ca: Option<&Path>) -> Result<TlsConnector, String> {
    client_connector_offering(ca, &[])
}

/// [`client_connector`], offering the application protocols `alpn` to the server.
pub fn client_connector_offering(
    ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<TlsConnector, String> {
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
            .with_protocol_versions(CLIENT_FACING_VERSIONS)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Accepts a TLS client on `stream` within `limit`, counting the handshake as `kind` (see
/// [`count_handshake`]); the error says why not, for the log. Shared by the listeners that
/// serve clients (admin API, HTTPS and SIP-TLS front ends).
pub async fn accept_within<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    limit: std::time::Duration,
    kind: &'static str,
) -> Result<tokio_rustls::server::TlsStream<S>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            count_handshake(kind, stream.get_ref().1);
            Ok(stream)
        }
        Ok(Err(error)) => {
            crate::telemetry::tls_handshake(kind, "failed");
            Err(format!("TLS handshake failed: {error}"))
        }
        Err(_) => {
            crate::telemetry::tls_handshake(kind, "failed");
            Err("TLS handshake timed out".to_owned())
        }
    }
}

/// A TLS server (no client certificates) with `cert` (chain, leaf first) and `key`: for the
/// client-facing listeners (admin API, HTTPS and SIP-TLS front ends), offering the
/// application protocols `alpn` (none: the client's choice is not asked).
pub fn server_acceptor(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(CLIENT_FACING_VERSIONS)?
            .with_no_client_auth()
            .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}
