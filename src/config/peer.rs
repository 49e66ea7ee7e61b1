//! `[peer]`: the other node of the pair.

use super::node::NodeConfig;
use super::value::check_id;
use super::ConfigError;
use crate::engine::NodeId;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};

/// Port of the peer link unless configured otherwise.
pub const DEFAULT_PEER_PORT: u16 = 7701;

/// `[peer]`: the other node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's id; heartbeats with any other id are refused, and its certificate must
    /// carry this name.
    pub id: NodeId,
    /// The peer's address.
    pub address: IpAddr,
    /// Where to reach the peer's link listener (default: `address`, port 7701).
    pub connect: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    id: String,
    address: IpAddr,
    connect: Option<SocketAddr>,
}

pub(super) fn validate(
    raw: RawPeer,
    node: &NodeConfig,
    errors: &mut Vec<ConfigError>,
) -> PeerConfig {
    check_id("peer.id", &raw.id, errors);
    if raw.id == node.id.0 {
        errors.push(ConfigError::new(
            "peer.id",
            format!("must differ from node.id ({})", node.id),
        ));
    }
    if raw.address == node.address {
        errors.push(ConfigError::new(
            "peer.address",
            format!("must differ from node.address ({})", node.address),
        ));
    }
    PeerConfig {
        id: NodeId(raw.id),
        address: raw.address,
        connect: raw
            .connect
            .unwrap_or(SocketAddr::new(raw.address, DEFAULT_PEER_PORT)),
    }
}
