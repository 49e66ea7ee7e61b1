//! TLS for the peer link: TLS 1.3 only, both sides present a certificate from the pair's CA,
//! and each side accepts only a certificate that names the configured peer and is a node
//! certificate: one that may authenticate a client (the clientAuth usage). The front
//! certificate, signed by the same CA for HTTPS and SIP-TLS and naming every node, has only
//! serverAuth: whoever holds its key must not pass as a node in either direction.

use crate::engine::NodeId;
use crate::tls::{file_error, load_certs, load_key, TlsError};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

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

/// The dialer's check of the peer's certificate: what any TLS client checks (chain to the
/// pair CA, the peer's name, validity), and also that it is a node certificate (the chain
/// is valid for client authentication, which the front certificate is not).
#[derive(Debug)]
struct NodeCertificateVerifier {
    as_server: Arc<rustls::client::WebPkiServerVerifier>,
    as_client: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for NodeCertificateVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.as_server.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.as_client
            .verify_client_cert(end_entity, intermediates, now)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.as_server.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.as_server.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.as_server.supported_verify_schemes()
    }
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
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain.clone(), key.clone_key())?;
        let node_verifier = Arc::new(NodeCertificateVerifier {
            as_server: rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .build()?,
            as_client: verifier.clone(),
        });
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(node_verifier)
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
