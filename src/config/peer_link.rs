//! `[peer_link]`: the mutual-TLS listener the peer connects to, and its limits.

use super::peer::DEFAULT_PEER_PORT;
use super::ConfigError;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// `[peer_link]`: the TLS listener for the peer's heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLinkConfig {
    /// Where the peer connects to us (default: `node.address`, port 7701).
    pub listen: SocketAddr,
    /// The pair's CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM), issued by the pair CA for `node.id`.
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// Largest frame accepted from the peer.
    pub max_frame: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeerLink {
    listen: Option<SocketAddr>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default = "default_max_frame")]
    max_frame: usize,
}

fn default_max_frame() -> usize {
    crate::peer::frame::DEFAULT_MAX_FRAME
}

/// The section belongs with `[peer]`: one without the other is an error (`present` says the
/// section was there but did not parse, so its error is already reported).
pub(super) fn validate(
    raw: Option<RawPeerLink>,
    present: bool,
    has_peer: bool,
    node_address: IpAddr,
    errors: &mut Vec<ConfigError>,
) -> Option<PeerLinkConfig> {
    let link = match (has_peer, raw) {
        (true, Some(link)) => PeerLinkConfig {
            listen: link
                .listen
                .unwrap_or(SocketAddr::new(node_address, DEFAULT_PEER_PORT)),
            ca: link.ca,
            cert: link.cert,
            key: link.key,
            max_frame: link.max_frame,
        },
        (true, None) => {
            if !present {
                errors.push(ConfigError::new(
                    "peer_link",
                    "missing section: a node with [peer] needs [peer_link] with ca, cert and key",
                ));
            }
            return None;
        }
        (false, Some(_)) => {
            errors.push(ConfigError::new(
                "peer_link",
                "needs a [peer] to talk to; remove it for a single node",
            ));
            return None;
        }
        (false, None) => return None,
    };
    if link.max_frame < 1024 {
        errors.push(ConfigError::new(
            "peer_link.max_frame",
            "must be at least 1024 bytes, or heartbeats do not fit",
        ));
    }
    Some(link)
}
