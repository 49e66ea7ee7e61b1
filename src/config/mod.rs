//! The TOML configuration: parsed, then validated into typed values.
//!
//! One file per section holds its raw serde form, its defaults and its validation (`node`,
//! `peer`, `peer_link`, `election`, `admin`, `health`, `registrar`, `frontend`, `hooks`,
//! `store`, `log`), so a new key touches one file; `value` has the parsers they share. This
//! file only reads the TOML, hands each section to its validation, collects every error and
//! assembles [`Config`].
//!
//! Every table denies unknown keys. Each top-level section is parsed on its own, so a file
//! with mistakes in several sections reports all of them. Every error names its key
//! (`election.peer_dead_after: ...`). The files in `config/` are test fixtures: each valid one
//! loads, each in `config/invalid/` fails with the message its first comment line names.

mod admin;
mod cluster;
mod election;
mod frontend;
mod health;
mod hooks;
mod log;
mod node;
mod peer;
mod peer_link;
mod registrar;
mod store;
mod value;
pub mod version;
mod vip;

pub use admin::{AdminConfig, DEFAULT_ADMIN_PORT};
pub use cluster::{
    ClusterBackend, ClusterConfig, ClusterLink, ClusterMember, EtcdTls, MemberRole, OnStoreLoss,
};
pub use election::ElectionConfig;
pub use frontend::{
    Cidr, ClientLimits, FrontMode, FrontendConfig, FrontendKind, HttpFrontend, SipFrontend,
    TcpFrontend, TlsFiles,
};
pub use health::{HealthCheck, HealthConfig};
pub use log::LogConfig;
pub use node::NodeConfig;
pub use peer::{PeerConfig, DEFAULT_PEER_PORT};
pub use peer_link::PeerLinkConfig;
pub use registrar::RegistrarConfig;
pub use store::StoreConfig;
pub use vip::VipConfig;

use crate::engine::EngineConfig;
use crate::hooks::HooksConfig;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem with a configuration, at one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the key at fault (`election.peer_dead_after`), or `-` for the file.
    pub key: String,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration; every error found is listed.
    #[error("{}", display_errors(.0))]
    Invalid(Vec<ConfigError>),
}

fn display_errors(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A validated configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node.
    pub node: NodeConfig,
    /// The other node of the pair; absent for a single node.
    pub peer: Option<PeerConfig>,
    /// The peer link; present exactly when `peer` is.
    pub peer_link: Option<PeerLinkConfig>,
    /// Election timing and policy.
    pub election: ElectionConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// The local service health check, if any.
    pub health: Option<HealthConfig>,
    /// The registrar probe, if any.
    pub registrar: Option<RegistrarConfig>,
    /// Role-change hooks.
    pub hooks: HooksConfig,
    /// The client entry points (`[[frontend]]`).
    pub frontends: Vec<FrontendConfig>,
    /// Floating service addresses the active node holds (`[[vip]]`).
    pub vips: Vec<VipConfig>,
    /// The replicated configuration store.
    pub store: StoreConfig,
    /// Logging.
    pub log: LogConfig,
    /// Cluster mode: the election on etcd instead of a peer link (`[cluster]`).
    pub cluster: Option<ClusterConfig>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(LoadError::Invalid)?;
        let state_directory = std::env::var_os("STATE_DIRECTORY");
        config.store.path =
            config
                .store
                .placed(&config.node.id, path.parent(), state_directory.as_deref());
        Ok(config)
    }

    /// Parses and validates TOML text, returning every error found.
    pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        let table: toml::Table = match text.parse() {
            Ok(table) => table,
            Err(error) => return Err(vec![syntax_error(text, &error)]),
        };
        let mut errors = Vec::new();
        let mut raw = RawConfig::default();
        for (section, value) in table {
            match section.as_str() {
                "node" => {
                    raw.node = section_value(&section, value, &mut errors);
                    raw.node_present = true;
                }
                "peer" => raw.peer = section_value(&section, value, &mut errors),
                "peer_link" => {
                    raw.peer_link = section_value(&section, value, &mut errors);
                    raw.peer_link_present = true;
                }
                "admin" => {
                    raw.admin = section_value(&section, value, &mut errors).unwrap_or_default()
                }
                "health" => raw.health = section_value(&section, value, &mut errors),
                "registrar" => raw.registrar = section_value(&section, value, &mut errors),
                "hooks" => {
                    raw.hooks = section_value(&section, value, &mut errors).unwrap_or_default()
                }
                "frontend" => {
                    raw.frontends = section_value(&section, value, &mut errors).unwrap_or_default()
                }
                "election" => {
                    raw.election = section_value(&section, value, &mut errors).unwrap_or_default()
                }
                "log" => raw.log = section_value(&section, value, &mut errors).unwrap_or_default(),
                "store" => raw.store = section_value(&section, value, &mut errors).unwrap_or_default(),
                "vip" => raw.vips = section_value(&section, value, &mut errors).unwrap_or_default(),
                "cluster" => raw.cluster = section_value(&section, value, &mut errors),
                _ => errors.push(ConfigError::new(
                    &section,
                    "unknown section (known: node, peer, peer_link, election, admin, health, registrar, hooks, frontend, vip, store, log, cluster)",
                )),
            }
        }
        let config = raw.validate(&mut errors);
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(errors),
        }
    }

    /// The state engine's view of this configuration.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            node_id: self.node.id.clone(),
            address: self.node.address,
            priority: self.node.priority,
            peer_id: self.peer.as_ref().map(|peer| peer.id.clone()),
            policy: self.election.policy,
            heartbeat_interval: self.election.heartbeat_interval,
            peer_dead_after: self.election.peer_dead_after,
            startup_wait: self.election.startup_wait,
            preempt_delay: self.election.preempt_delay,
            handover_timeout: self.election.switchover_timeout,
            registrar_configured: self.registrar.is_some(),
            on_registrar_loss: self
                .registrar
                .as_ref()
                .map_or_else(Default::default, |registrar| registrar.on_loss),
            registrar_handover_delay: self.registrar.as_ref().map_or(
                std::time::Duration::ZERO,
                |registrar| {
                    // One more probe round of the peer's, and its heartbeat saying so.
                    registrar.prober.interval
                        + registrar.prober.timeout
                        + self.election.heartbeat_interval
                },
            ),
            health_check_configured: self.health.is_some(),
            version: version::spoken_protocol_version(),
            targets: self.advertised_targets(),
        }
    }
}

impl Config {
    /// What this node advertises to its peer: each front end's target under its name and,
    /// for SIP over TLS, the TLS target under [`crate::view::tls_target_key`] (protocol 1.1;
    /// a 1.0 node ignores keys it has no front end for).
    fn advertised_targets(&self) -> crate::engine::Targets {
        let mut targets = crate::engine::Targets::new();
        for frontend in &self.frontends {
            targets.insert(frontend.name.clone(), frontend.target());
            if let Some(tls_target) = frontend.tls_target() {
                targets.insert(crate::view::tls_target_key(&frontend.name), tls_target);
            }
        }
        targets
    }
}

/// Turns a TOML syntax error into one error with its line.
fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let key = match error.span() {
        Some(span) => format!("line {}", text[..span.start].matches('\n').count() + 1),
        None => "-".to_owned(),
    };
    ConfigError::new(key, error.message().trim().to_owned())
}

/// Deserializes one section, recording an error with its full key path on failure.
fn section_value<T: DeserializeOwned>(
    section: &str,
    value: toml::Value,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            let path = error.path().to_string();
            let key = if path.is_empty() || path == "." {
                section.to_owned()
            } else {
                format!("{section}.{path}")
            };
            // The toml deserializer appends "in `key`"; the key is already in front.
            let message = error.into_inner().to_string();
            let message = message.lines().next().unwrap_or_default().to_owned();
            errors.push(ConfigError::new(key, message));
            None
        }
    }
}

/// Every section as read, before validation. `*_present` says a section was in the file
/// even though it did not parse (its error is then already reported).
#[derive(Debug, Default)]
struct RawConfig {
    node: Option<node::RawNode>,
    node_present: bool,
    peer: Option<peer::RawPeer>,
    peer_link: Option<peer_link::RawPeerLink>,
    peer_link_present: bool,
    election: election::RawElection,
    admin: admin::RawAdmin,
    health: Option<health::RawHealth>,
    registrar: Option<registrar::RawRegistrar>,
    hooks: hooks::RawHooks,
    frontends: Vec<frontend::RawFrontend>,
    vips: Vec<vip::RawVip>,
    store: store::RawStore,
    log: log::RawLog,
    cluster: Option<cluster::RawCluster>,
}

impl RawConfig {
    /// Validates each section in turn (sections that depend on `[node]` get what they need of
    /// it) and assembles the whole.
    fn validate(self, errors: &mut Vec<ConfigError>) -> Option<Config> {
        let node = node::validate(self.node, self.node_present, errors)?;
        let peer = self.peer.map(|raw| peer::validate(raw, &node, errors));
        let peer_link = peer_link::validate(
            self.peer_link,
            self.peer_link_present,
            peer.is_some(),
            node.address,
            errors,
        );
        let admin = admin::validate(self.admin, node.address, errors);
        let health = self.health.and_then(|raw| health::validate(raw, errors));
        let election = election::validate(self.election, errors);
        let log = log::validate(self.log, errors);
        let registrar = self
            .registrar
            .and_then(|raw| registrar::validate(raw, errors));
        let hooks = hooks::validate(self.hooks, errors);
        let frontends = frontend::validate(self.frontends, errors);
        let vips = vip::validate(self.vips, errors);
        let store = store::validate(self.store, &node.id);
        let cluster_mode = self.cluster.is_some();
        let cluster = self.cluster.and_then(|raw| {
            let own = (node.id.0.as_str(), node.address);
            cluster::validate(raw, peer.is_some(), own, errors)
        });
        if cluster_mode && !vips.is_empty() {
            errors.push(ConfigError::new(
                "vip",
                "floating addresses are not managed in cluster mode yet: remove [[vip]] or [cluster]",
            ));
        }
        Some(Config {
            node,
            peer,
            peer_link,
            election,
            admin,
            health,
            registrar,
            hooks,
            frontends,
            vips,
            store,
            log,
            cluster,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Policy, Priority};
    use std::time::Duration;

    const MINIMAL: &str = "[node]\nid = \"a\"\naddress = \"127.0.0.1\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::parse(MINIMAL).expect("valid");
        assert_eq!(config.node.priority, Priority::Primary);
        assert_eq!(config.peer, None);
        assert_eq!(config.election.policy, Policy::Sticky);
        assert_eq!(
            config.election.heartbeat_interval,
            Duration::from_millis(100)
        );
        assert_eq!(config.log.level, "info");
    }

    #[test]
    fn errors_in_several_sections_are_all_reported() {
        let text = format!(
            "{MINIMAL}bogus = 1\n[election]\nheartbeat_interval = \"fast\"\n[peer]\nid = \"a\"\naddress = \"127.0.0.1\"\n[extra]\n"
        );
        let errors = Config::parse(&text).expect_err("invalid");
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"node.bogus"), "{errors:?}");
        assert!(keys.contains(&"election.heartbeat_interval"), "{errors:?}");
        assert!(keys.contains(&"extra"), "{errors:?}");
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let text = format!(
            "{MINIMAL}[peer]\nid = \"a\"\naddress = \"127.0.0.1\"\n[election]\npeer_dead_after = \"150ms\"\nstartup_wait = \"50ms\"\n"
        );
        let errors = Config::parse(&text).expect_err("invalid");
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "peer.id",
                "peer.address",
                "peer_link",
                "election.peer_dead_after",
                "election.startup_wait"
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn syntax_error_names_the_line() {
        let errors = Config::parse("[node]\nid = \n").expect_err("invalid");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, "line 2", "{errors:?}");
    }
}
