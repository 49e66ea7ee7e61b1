//! `[store]`: where the replicated configuration store lives.

use crate::engine::NodeId;
use serde::Deserialize;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// `[store]`: where the replicated configuration store (and the node's term and
/// maintenance flag) are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The database file; a relative path is relative to the configuration file's folder.
    /// Default: `<node id>.redb` in systemd's `$STATE_DIRECTORY` when it is set (the
    /// unit's `StateDirectory=`), else `state/<node id>.redb`.
    pub path: PathBuf,
    /// Whether `path` is the default (no `path` in `[store]`).
    pub is_default: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    path: Option<PathBuf>,
}

pub(super) fn validate(raw: RawStore, node_id: &NodeId) -> StoreConfig {
    match raw.path {
        Some(path) => StoreConfig {
            path,
            is_default: false,
        },
        None => StoreConfig {
            path: PathBuf::from(format!("state/{node_id}.redb")),
            is_default: true,
        },
    }
}

impl StoreConfig {
    /// Where the store is for a config file in `config_folder`. Under systemd the default
    /// goes to the unit's state directory (`$STATE_DIRECTORY`, the first of a `:` list): the
    /// config folder is read-only there (`ProtectSystem=strict`). Otherwise a relative path
    /// is relative to the config file's folder (unlike the other files, which are relative
    /// to the working directory): two nodes started from their own config folders never
    /// share a store by accident.
    pub fn placed(
        &self,
        node_id: &NodeId,
        config_folder: Option<&Path>,
        state_directory: Option<&OsStr>,
    ) -> PathBuf {
        let state_directory = state_directory
            .and_then(|dirs| dirs.to_str())
            .and_then(|dirs| dirs.split(':').next())
            .filter(|dir| !dir.is_empty());
        match (self.is_default, state_directory) {
            (true, Some(dir)) => Path::new(dir).join(format!("{node_id}.redb")),
            _ if self.path.is_relative() => match config_folder {
                Some(folder) => folder.join(&self.path),
                None => self.path.clone(),
            },
            _ => self.path.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: Option<&str>) -> StoreConfig {
        validate(
            RawStore {
                path: path.map(PathBuf::from),
            },
            &NodeId::from("a"),
        )
    }

    #[test]
    fn the_default_goes_to_systemds_state_directory_when_there_is_one() {
        let folder = Some(Path::new("/etc/standby-proxy"));
        let id = NodeId::from("a");
        let state = Some(OsStr::new("/var/lib/standby-proxy:/var/lib/other"));
        assert_eq!(
            config(None).placed(&id, folder, state),
            PathBuf::from("/var/lib/standby-proxy/a.redb")
        );
        assert_eq!(
            config(None).placed(&id, folder, None),
            PathBuf::from("/etc/standby-proxy/state/a.redb")
        );
        assert_eq!(
            config(None).placed(&id, folder, Some(OsStr::new(""))),
            PathBuf::from("/etc/standby-proxy/state/a.redb")
        );
    }

    #[test]
    fn a_path_in_the_config_is_kept_under_systemd_too() {
        let folder = Some(Path::new("/etc/standby-proxy"));
        let id = NodeId::from("a");
        let state = Some(OsStr::new("/var/lib/standby-proxy"));
        assert_eq!(
            config(Some("/srv/a.redb")).placed(&id, folder, state),
            PathBuf::from("/srv/a.redb")
        );
        assert_eq!(
            config(Some("db/a.redb")).placed(&id, folder, state),
            PathBuf::from("/etc/standby-proxy/db/a.redb")
        );
    }
}
