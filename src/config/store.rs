//! `[store]`: where the replicated configuration store lives.

use crate::engine::NodeId;
use serde::Deserialize;
use std::path::PathBuf;

/// `[store]`: where the replicated configuration store (and the node's term and
/// maintenance flag) are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The database file; a relative path is relative to the configuration file's folder.
    /// Default: `state/<node id>.redb`.
    pub path: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    path: Option<PathBuf>,
}

pub(super) fn validate(raw: RawStore, node_id: &NodeId) -> StoreConfig {
    StoreConfig {
        path: raw
            .path
            .unwrap_or_else(|| PathBuf::from(format!("state/{node_id}.redb"))),
    }
}
