//! `[node]`: who this node is.

use super::value::check_id;
use super::ConfigError;
use crate::engine::{NodeId, Priority};
use serde::Deserialize;
use std::net::IpAddr;

/// `[node]`: who this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Name of this node within the pair.
    pub id: NodeId,
    /// This node's address; the lower address wins the `sticky` start-up tie.
    pub address: IpAddr,
    /// Priority under `prefer-primary`.
    pub priority: Priority,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    id: String,
    address: IpAddr,
    #[serde(default = "default_priority")]
    priority: Priority,
}

fn default_priority() -> Priority {
    Priority::Primary
}

/// The section is required: without it nothing else can be checked (`present` says it was
/// there but did not parse, so its error is already reported).
pub(super) fn validate(
    raw: Option<RawNode>,
    present: bool,
    errors: &mut Vec<ConfigError>,
) -> Option<NodeConfig> {
    let Some(raw) = raw else {
        if !present {
            errors.push(ConfigError::new(
                "node",
                "missing section: every node needs [node] with id and address",
            ));
        }
        return None;
    };
    check_id("node.id", &raw.id, errors);
    Some(NodeConfig {
        id: NodeId(raw.id),
        address: raw.address,
        priority: raw.priority,
    })
}
