//! The TOML configuration: parsed, then validated into typed values.
//!
//! Every table denies unknown keys. Each top-level section is parsed on its own, so a file
//! with mistakes in several sections reports all of them; then the values are checked against
//! each other. Every error names its key (`election.peer_dead_after: ...`). The files in
//! `config/` are test fixtures: each valid one loads, each in `config/invalid/` fails with the
//! message its first comment line names.

use crate::engine::{EngineConfig, NodeId, Policy, Priority, ProtocolVersion};
use crate::hooks::HooksConfig;
use crate::sip::prober::{ProberConfig, Rule};
use crate::sip::uri::SipUri;
use crate::sip::Transport;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One problem with a configuration, at one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the key at fault (`election.peer_dead_after`), or `-` for the file.
    pub key: String,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
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
    /// The replicated configuration store.
    pub store: StoreConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[store]`: where the replicated configuration store (and the node's term and
/// maintenance flag) are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The database file; a relative path is relative to the configuration file's folder.
    /// Default: `state/<node id>.redb`.
    pub path: PathBuf,
}

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

/// `[admin]`: the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the admin API listens (default: `node.address`, port 7780).
    pub listen: SocketAddr,
    /// File holding the token that mutating calls must present; without it they are refused.
    pub token_file: Option<PathBuf>,
    /// Connections served at once.
    pub max_connections: usize,
    /// Largest request head accepted (at least 8 KiB).
    pub max_header_bytes: usize,
    /// Serve HTTPS with this certificate chain and key.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// `[health]`: the local service health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// What to check.
    pub check: HealthCheck,
    /// How often.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Consecutive passes before the service counts as healthy.
    pub rise: u32,
    /// Consecutive failures before the service counts as failed.
    pub fall: u32,
    /// CA certificates (PEM) for an `https://` check; default: the system bundle.
    pub ca: Option<PathBuf>,
}

/// `[registrar]`: the SIP registrar(s) whose reachability is the election precondition.
#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    /// What the prober needs.
    pub prober: ProberConfig,
    /// DNS server for RFC 3263 resolution; default: the system's.
    pub nameserver: Option<SocketAddr>,
    /// CA certificates (PEM) for `sips:`/`transport=tls`; default: the system bundle.
    pub ca: Option<PathBuf>,
}

/// One `[[frontend]]`: a listener that sends clients to the active node.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    /// Names the service: each node advertises its own target under this name.
    pub name: String,
    /// What it listens for.
    pub kind: FrontendKind,
}

impl FrontendConfig {
    /// This node's own target for this service, as advertised to the peer.
    pub fn target(&self) -> String {
        match &self.kind {
            FrontendKind::Sip(sip) => sip.target.to_string(),
            FrontendKind::Http(http) => http.target.clone(),
            FrontendKind::Tcp(tcp) => tcp.target.to_string(),
        }
    }
}

/// The kinds of front end.
#[derive(Debug, Clone)]
pub enum FrontendKind {
    /// SIP: redirect (302) or stateless proxy.
    Sip(SipFrontend),
    /// HTTP(S): redirect (307) or reverse proxy.
    Http(HttpFrontend),
    /// TCP forwarding (base stations).
    Tcp(TcpFrontend),
}

/// How a SIP or HTTP front end sends clients on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontMode {
    /// Tell the client where the active node is (SIP 302, HTTP 307).
    Redirect,
    /// Forward to the active node (SIP stateless proxy, HTTP reverse proxy).
    Proxy,
}

/// A certificate and its key, for a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// A SIP front end.
#[derive(Debug, Clone)]
pub struct SipFrontend {
    /// Redirect or stateless proxy.
    pub mode: FrontMode,
    /// Address and port for UDP and TCP.
    pub listen: SocketAddr,
    /// Listen over UDP.
    pub udp: bool,
    /// Listen over TCP.
    pub tcp: bool,
    /// Listen over TLS: where, and with which certificate.
    pub tls: Option<(SocketAddr, TlsFiles)>,
    /// `SO_REUSEPORT` UDP sockets (so every core serves).
    pub udp_sockets: usize,
    /// TCP connections served at once.
    pub max_connections: usize,
    /// Largest message accepted over TCP.
    pub max_message: usize,
    /// This node's own SIP service, advertised to the peer.
    pub target: SipUri,
}

/// An HTTP(S) front end.
#[derive(Debug, Clone)]
pub struct HttpFrontend {
    /// Redirect (307) or reverse proxy.
    pub mode: FrontMode,
    /// Address and port.
    pub listen: SocketAddr,
    /// HTTPS with this certificate; plain HTTP without.
    pub tls: Option<TlsFiles>,
    /// This node's own HTTP service base URL (`http://10.0.0.1:8080`), advertised to the peer.
    pub target: String,
    /// CA certificates (PEM) for an `https://` target in proxy mode; default: the system bundle.
    pub ca: Option<PathBuf>,
    /// How long the reverse proxy waits to connect to the active node.
    pub connect_timeout: Duration,
    /// Client connections served at once.
    pub max_connections: usize,
}

/// A TCP forwarding front end.
#[derive(Debug, Clone)]
pub struct TcpFrontend {
    /// Address and port.
    pub listen: SocketAddr,
    /// This node's own service address, advertised to the peer.
    pub target: SocketAddr,
    /// How long to wait to connect to the active node.
    pub connect_timeout: Duration,
    /// Connections forwarded at once.
    pub max_connections: usize,
}

/// A health check target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// A TCP connect succeeds.
    Tcp(String),
    /// `GET` answers 2xx.
    Http {
        /// `host:port` to connect to.
        authority: String,
        /// Path and query.
        path: String,
        /// Over TLS, verified against `ca` (or the system's CA bundle).
        tls: bool,
    },
}

/// `[election]`: timing and policy of the state engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionConfig {
    /// `sticky` or `prefer-primary`.
    pub policy: Policy,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Silence after which the peer counts as dead.
    pub peer_dead_after: Duration,
    /// How long a starting node waits for its peer before acting alone.
    pub startup_wait: Duration,
    /// Delay before the secondary hands back to a returned primary (`prefer-primary`).
    pub preempt_delay: Duration,
    /// How long a switchover waits for the peer to catch up.
    pub switchover_timeout: Duration,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A tracing filter (`info`, `standby_proxy=debug`); `RUST_LOG` overrides it.
    pub level: String,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(LoadError::Invalid)?;
        // The store's path is relative to the config file's folder (unlike the other
        // files, which are relative to the working directory): two nodes started from their
        // own config folders never share a store by accident.
        if config.store.path.is_relative() {
            if let Some(folder) = path.parent() {
                config.store.path = folder.join(&config.store.path);
            }
        }
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
                _ => errors.push(ConfigError::new(
                    &section,
                    "unknown section (known: node, peer, peer_link, election, admin, health, registrar, hooks, frontend, store, log)",
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
            health_check_configured: self.health.is_some(),
            version: ProtocolVersion::CURRENT,
            targets: self
                .frontends
                .iter()
                .map(|frontend| (frontend.name.clone(), frontend.target()))
                .collect(),
        }
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

#[derive(Debug, Default)]
struct RawConfig {
    node: Option<RawNode>,
    /// `[node]` was there, even if it did not parse (then its error is already reported).
    node_present: bool,
    peer: Option<RawPeer>,
    peer_link: Option<RawPeerLink>,
    peer_link_present: bool,
    election: RawElection,
    admin: RawAdmin,
    health: Option<RawHealth>,
    registrar: Option<RawRegistrar>,
    hooks: RawHooks,
    frontends: Vec<RawFrontend>,
    store: RawStore,
    log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrontend {
    name: String,
    kind: String,
    listen: SocketAddr,
    #[serde(default = "default_mode")]
    mode: String,
    target: String,
    #[serde(default = "default_frontend_connections")]
    max_connections: usize,
    // SIP only.
    transports: Option<Vec<String>>,
    udp_sockets: Option<usize>,
    max_message: Option<usize>,
    tls_listen: Option<SocketAddr>,
    // SIP over TLS and HTTPS.
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    // HTTP proxy mode and TCP.
    ca: Option<PathBuf>,
    #[serde(default, deserialize_with = "optional_duration")]
    connect_timeout: Option<Duration>,
}

fn default_mode() -> String {
    "redirect".to_owned()
}

fn default_udp_sockets() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn default_frontend_connections() -> usize {
    4096
}

fn default_max_message() -> usize {
    64 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHooks {
    become_active: Vec<String>,
    become_standby: Vec<String>,
    fault: Vec<String>,
    #[serde(deserialize_with = "duration")]
    timeout: Duration,
}

impl Default for RawHooks {
    fn default() -> Self {
        RawHooks {
            become_active: Vec::new(),
            become_standby: Vec::new(),
            fault: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum RawRule {
    Any,
    All,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistrar {
    targets: Vec<String>,
    #[serde(default = "default_rule")]
    rule: RawRule,
    #[serde(default = "default_health_interval", deserialize_with = "duration")]
    interval: Duration,
    #[serde(default = "default_probe_timeout", deserialize_with = "duration")]
    timeout: Duration,
    #[serde(default = "default_t1", deserialize_with = "duration")]
    t1: Duration,
    #[serde(default = "default_threshold")]
    rise: u32,
    #[serde(default = "default_threshold")]
    fall: u32,
    #[serde(default)]
    codes: Vec<u16>,
    nameserver: Option<SocketAddr>,
    ca: Option<PathBuf>,
}

fn default_rule() -> RawRule {
    RawRule::Any
}

fn default_probe_timeout() -> Duration {
    Duration::from_millis(800)
}

fn default_t1() -> Duration {
    Duration::from_millis(100)
}

/// Port of the peer link unless configured otherwise.
pub const DEFAULT_PEER_PORT: u16 = 7701;
/// Port of the admin API unless configured otherwise.
pub const DEFAULT_ADMIN_PORT: u16 = 7780;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeerLink {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: Option<SocketAddr>,
    token_file: Option<PathBuf>,
    max_connections: usize,
    max_header_bytes: usize,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: None,
            token_file: None,
            max_connections: 64,
            max_header_bytes: 16 * 1024,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    check: String,
    #[serde(default = "default_health_interval", deserialize_with = "duration")]
    interval: Duration,
    #[serde(default = "default_health_timeout", deserialize_with = "duration")]
    timeout: Duration,
    #[serde(default = "default_threshold")]
    rise: u32,
    #[serde(default = "default_threshold")]
    fall: u32,
    ca: Option<PathBuf>,
}

fn default_health_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_health_timeout() -> Duration {
    Duration::from_millis(500)
}

fn default_threshold() -> u32 {
    2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    address: IpAddr,
    #[serde(default = "default_priority")]
    priority: Priority,
}

fn default_priority() -> Priority {
    Priority::Primary
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: String,
    address: IpAddr,
    connect: Option<SocketAddr>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum RawPolicy {
    Sticky,
    PreferPrimary,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawElection {
    policy: RawPolicy,
    #[serde(deserialize_with = "duration")]
    heartbeat_interval: Duration,
    #[serde(deserialize_with = "duration")]
    peer_dead_after: Duration,
    #[serde(deserialize_with = "duration")]
    startup_wait: Duration,
    #[serde(deserialize_with = "duration")]
    preempt_delay: Duration,
    #[serde(deserialize_with = "duration")]
    switchover_timeout: Duration,
}

impl Default for RawElection {
    fn default() -> Self {
        RawElection {
            policy: RawPolicy::Sticky,
            heartbeat_interval: Duration::from_millis(100),
            peer_dead_after: Duration::from_millis(300),
            startup_wait: Duration::from_secs(2),
            preempt_delay: Duration::from_secs(10),
            switchover_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".to_owned(),
        }
    }
}

/// Reads a duration written like `100ms`, `2s` or `1m 30s`, saying why when it cannot.
fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|error| {
        serde::de::Error::custom(format!(
            "{error} in {text:?}: write a duration like \"100ms\", \"2s\" or \"1m 30s\""
        ))
    })
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

/// The shortest heartbeat interval accepted; below it scheduling noise causes false failovers.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

impl RawConfig {
    fn validate(self, errors: &mut Vec<ConfigError>) -> Option<Config> {
        let node = match self.node {
            Some(node) => node,
            None => {
                if !self.node_present {
                    errors.push(ConfigError::new(
                        "node",
                        "missing section: every node needs [node] with id and address",
                    ));
                }
                return None;
            }
        };
        check_id("node.id", &node.id, errors);
        let peer = self.peer.map(|peer| {
            check_id("peer.id", &peer.id, errors);
            if peer.id == node.id {
                errors.push(ConfigError::new(
                    "peer.id",
                    format!("must differ from node.id ({})", node.id),
                ));
            }
            if peer.address == node.address {
                errors.push(ConfigError::new(
                    "peer.address",
                    format!("must differ from node.address ({})", node.address),
                ));
            }
            PeerConfig {
                id: NodeId(peer.id),
                address: peer.address,
                connect: peer
                    .connect
                    .unwrap_or(SocketAddr::new(peer.address, DEFAULT_PEER_PORT)),
            }
        });
        let peer_link = match (&peer, self.peer_link) {
            (Some(_), Some(link)) => Some(PeerLinkConfig {
                listen: link
                    .listen
                    .unwrap_or(SocketAddr::new(node.address, DEFAULT_PEER_PORT)),
                ca: link.ca,
                cert: link.cert,
                key: link.key,
                max_frame: link.max_frame,
            }),
            (Some(_), None) => {
                if !self.peer_link_present {
                    errors.push(ConfigError::new(
                        "peer_link",
                        "missing section: a node with [peer] needs [peer_link] with ca, cert and key",
                    ));
                }
                None
            }
            (None, Some(_)) => {
                errors.push(ConfigError::new(
                    "peer_link",
                    "needs a [peer] to talk to; remove it for a single node",
                ));
                None
            }
            (None, None) => None,
        };
        if let Some(link) = &peer_link {
            if link.max_frame < 1024 {
                errors.push(ConfigError::new(
                    "peer_link.max_frame",
                    "must be at least 1024 bytes, or heartbeats do not fit",
                ));
            }
        }
        if self.admin.max_connections == 0 {
            errors.push(ConfigError::new(
                "admin.max_connections",
                "must be at least 1",
            ));
        }
        if self.admin.max_header_bytes < 8192 {
            errors.push(ConfigError::new(
                "admin.max_header_bytes",
                "must be at least 8192 (browsers send more)",
            ));
        }
        let tls = match (self.admin.tls_cert, self.admin.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                errors.push(ConfigError::new(
                    "admin.tls_key",
                    "missing: tls_cert needs its key",
                ));
                None
            }
            (None, Some(_)) => {
                errors.push(ConfigError::new(
                    "admin.tls_cert",
                    "missing: tls_key needs its certificate",
                ));
                None
            }
        };
        let admin = AdminConfig {
            listen: self
                .admin
                .listen
                .unwrap_or(SocketAddr::new(node.address, DEFAULT_ADMIN_PORT)),
            token_file: self.admin.token_file,
            max_connections: self.admin.max_connections,
            max_header_bytes: self.admin.max_header_bytes,
            tls,
        };
        let health = self.health.and_then(|raw| {
            let check = parse_health_check(&raw.check)
                .map_err(|message| errors.push(ConfigError::new("health.check", message)))
                .ok()?;
            if raw.rise == 0 || raw.fall == 0 {
                errors.push(ConfigError::new(
                    "health",
                    "rise and fall must be at least 1",
                ));
            }
            check_within_interval("health", raw.timeout, raw.interval, errors);
            Some(HealthConfig {
                check,
                interval: raw.interval,
                timeout: raw.timeout,
                rise: raw.rise,
                fall: raw.fall,
                ca: raw.ca,
            })
        });

        let election = self.election;
        let interval = election.heartbeat_interval;
        if interval < MIN_HEARTBEAT {
            errors.push(ConfigError::new(
                "election.heartbeat_interval",
                format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_HEARTBEAT)
                ),
            ));
        }
        if election.peer_dead_after < 2 * interval {
            errors.push(ConfigError::new(
                "election.peer_dead_after",
                format!(
                    "must be at least twice heartbeat_interval ({}), or one late heartbeat fails the pair over",
                    humantime::format_duration(interval)
                ),
            ));
        }
        if election.startup_wait <= interval {
            errors.push(ConfigError::new(
                "election.startup_wait",
                format!(
                    "must be larger than heartbeat_interval ({}), or the peer's first heartbeat cannot arrive in time",
                    humantime::format_duration(interval)
                ),
            ));
        }
        if election.switchover_timeout < interval {
            errors.push(ConfigError::new(
                "election.switchover_timeout",
                format!(
                    "must be at least heartbeat_interval ({})",
                    humantime::format_duration(interval)
                ),
            ));
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            errors.push(ConfigError::new(
                "log.level",
                format!("not a tracing filter: {error}"),
            ));
        }

        let registrar = self
            .registrar
            .and_then(|raw| validate_registrar(raw, errors));
        let hooks = validate_hooks(self.hooks, errors);
        let frontends = validate_frontends(self.frontends, errors);
        let store = StoreConfig {
            path: self
                .store
                .path
                .unwrap_or_else(|| PathBuf::from(format!("state/{}.redb", node.id))),
        };
        Some(Config {
            registrar,
            hooks,
            frontends,
            store,
            node: NodeConfig {
                id: NodeId(node.id),
                address: node.address,
                priority: node.priority,
            },
            peer,
            peer_link,
            admin,
            health,
            election: ElectionConfig {
                policy: match election.policy {
                    RawPolicy::Sticky => Policy::Sticky,
                    RawPolicy::PreferPrimary => Policy::PreferPrimary,
                },
                heartbeat_interval: interval,
                peer_dead_after: election.peer_dead_after,
                startup_wait: election.startup_wait,
                preempt_delay: election.preempt_delay,
                switchover_timeout: election.switchover_timeout,
            },
            log: LogConfig {
                level: self.log.level,
            },
        })
    }
}

fn validate_registrar(raw: RawRegistrar, errors: &mut Vec<ConfigError>) -> Option<RegistrarConfig> {
    let before = errors.len();
    if raw.targets.is_empty() {
        errors.push(ConfigError::new(
            "registrar.targets",
            "name at least one registrar, e.g. [\"sip:registrar.example.net\"]",
        ));
    }
    let mut targets = Vec::new();
    for (index, text) in raw.targets.iter().enumerate() {
        match text.parse::<SipUri>() {
            Ok(uri) => targets.push(uri),
            Err(error) => errors.push(ConfigError::new(
                format!("registrar.targets[{index}]"),
                error.to_string(),
            )),
        }
    }
    check_within_interval("registrar", raw.timeout, raw.interval, errors);
    if raw.t1 >= raw.timeout {
        errors.push(ConfigError::new(
            "registrar.t1",
            format!(
                "must be shorter than timeout ({}), or UDP is never retransmitted",
                humantime::format_duration(raw.timeout)
            ),
        ));
    }
    if raw.rise == 0 || raw.fall == 0 {
        errors.push(ConfigError::new(
            "registrar",
            "rise and fall must be at least 1",
        ));
    }
    if let Some(code) = raw.codes.iter().find(|c| !(200..700).contains(*c)) {
        errors.push(ConfigError::new(
            "registrar.codes",
            format!("{code} is not a final SIP status code (200-699)"),
        ));
    }
    (errors.len() == before).then_some(RegistrarConfig {
        prober: ProberConfig {
            targets,
            rule: match raw.rule {
                RawRule::Any => Rule::Any,
                RawRule::All => Rule::All,
            },
            interval: raw.interval,
            timeout: raw.timeout,
            t1: raw.t1,
            rise: raw.rise,
            fall: raw.fall,
            codes: raw.codes,
        },
        nameserver: raw.nameserver,
        ca: raw.ca,
    })
}

fn validate_frontends(raw: Vec<RawFrontend>, errors: &mut Vec<ConfigError>) -> Vec<FrontendConfig> {
    let mut frontends = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (index, raw) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("frontend[{index}].{field}");
        let before = errors.len();
        check_id(&key("name"), &raw.name, errors);
        if !names.insert(raw.name.clone()) {
            errors.push(ConfigError::new(
                key("name"),
                format!("{:?} is used twice", raw.name),
            ));
        }
        let mode = match raw.mode.as_str() {
            "redirect" => Some(FrontMode::Redirect),
            "proxy" => Some(FrontMode::Proxy),
            other => {
                errors.push(ConfigError::new(
                    key("mode"),
                    format!("{other:?}: write redirect or proxy"),
                ));
                None
            }
        };
        if raw.max_connections == 0 {
            errors.push(ConfigError::new(
                key("max_connections"),
                "must be at least 1",
            ));
        }
        // A key that means nothing for this kind is an error, not silently ignored.
        let only_for = |field: &str, present: bool, kinds: &str, errors: &mut Vec<ConfigError>| {
            if present {
                errors.push(ConfigError::new(
                    key(field),
                    format!("only for kind {kinds}, this front end is {:?}", raw.kind),
                ));
            }
        };
        let tls_files = |errors: &mut Vec<ConfigError>| match (&raw.tls_cert, &raw.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => {
                errors.push(ConfigError::new(
                    key("tls_key"),
                    "missing: tls_cert needs its key",
                ));
                None
            }
            (None, Some(_)) => {
                errors.push(ConfigError::new(
                    key("tls_cert"),
                    "missing: tls_key needs its certificate",
                ));
                None
            }
        };
        let kind = match raw.kind.as_str() {
            "sip" => {
                only_for("ca", raw.ca.is_some(), "http", errors);
                only_for(
                    "connect_timeout",
                    raw.connect_timeout.is_some(),
                    "http or tcp",
                    errors,
                );
                validate_sip_frontend(&raw, mode, tls_files(errors), &key, errors)
                    .map(FrontendKind::Sip)
            }
            "http" => {
                for (field, present) in [
                    ("transports", raw.transports.is_some()),
                    ("udp_sockets", raw.udp_sockets.is_some()),
                    ("max_message", raw.max_message.is_some()),
                    ("tls_listen", raw.tls_listen.is_some()),
                ] {
                    only_for(field, present, "sip", errors);
                }
                let tls = tls_files(errors);
                let target = validate_http_target(&raw.target)
                    .map_err(|message| errors.push(ConfigError::new(key("target"), message)))
                    .ok();
                mode.zip(target).map(|(mode, target)| {
                    FrontendKind::Http(HttpFrontend {
                        mode,
                        listen: raw.listen,
                        tls,
                        target,
                        ca: raw.ca.clone(),
                        connect_timeout: raw.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                        max_connections: raw.max_connections,
                    })
                })
            }
            "tcp" => {
                for (field, present, kinds) in [
                    ("transports", raw.transports.is_some(), "sip"),
                    ("udp_sockets", raw.udp_sockets.is_some(), "sip"),
                    ("max_message", raw.max_message.is_some(), "sip"),
                    ("tls_listen", raw.tls_listen.is_some(), "sip"),
                    ("tls_cert", raw.tls_cert.is_some(), "sip or http"),
                    ("tls_key", raw.tls_key.is_some(), "sip or http"),
                    ("ca", raw.ca.is_some(), "http"),
                ] {
                    only_for(field, present, kinds, errors);
                }
                // TCP can only forward: its `mode` is not consulted.
                let target = raw
                    .target
                    .parse::<SocketAddr>()
                    .map_err(|_| {
                        errors.push(ConfigError::new(
                            key("target"),
                            format!(
                                "{:?}: write this node's service as address:port, like \"10.0.0.1:16321\"",
                                raw.target
                            ),
                        ))
                    })
                    .ok();
                target.map(|target| {
                    FrontendKind::Tcp(TcpFrontend {
                        listen: raw.listen,
                        target,
                        connect_timeout: raw.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                        max_connections: raw.max_connections,
                    })
                })
            }
            other => {
                errors.push(ConfigError::new(
                    key("kind"),
                    format!("{other:?}: write sip, http or tcp"),
                ));
                None
            }
        };
        if let (Some(kind), true) = (kind, errors.len() == before) {
            frontends.push(FrontendConfig {
                name: raw.name,
                kind,
            });
        }
    }
    frontends
}

/// How long a proxy or forwarder waits to connect to the active node by default.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

fn validate_sip_frontend(
    raw: &RawFrontend,
    mode: Option<FrontMode>,
    tls_files: Option<TlsFiles>,
    key: &dyn Fn(&str) -> String,
    errors: &mut Vec<ConfigError>,
) -> Option<SipFrontend> {
    let target = raw
        .target
        .parse::<SipUri>()
        .map_err(|e| errors.push(ConfigError::new(key("target"), e.to_string())))
        .ok();
    let (mut udp, mut tcp, mut tls) = (false, false, false);
    let default_transports = ["udp".to_owned(), "tcp".to_owned()];
    for transport in raw.transports.as_deref().unwrap_or(&default_transports) {
        match transport.as_str() {
            "udp" => udp = true,
            "tcp" => tcp = true,
            "tls" => tls = true,
            other => errors.push(ConfigError::new(
                key("transports"),
                format!("{other:?}: write udp, tcp and/or tls"),
            )),
        }
    }
    if !udp && !tcp && !tls {
        errors.push(ConfigError::new(
            key("transports"),
            "name at least one of udp, tcp, tls",
        ));
    }
    let tls = match (tls, raw.tls_listen, tls_files) {
        (true, Some(listen), Some(files)) => Some((listen, files)),
        (true, None, _) => {
            errors.push(ConfigError::new(
                key("tls_listen"),
                "missing: transport tls needs its own address and port (SIP over TLS is usually port 5061)",
            ));
            None
        }
        (true, _, None) => {
            errors.push(ConfigError::new(
                key("tls_cert"),
                "missing: transport tls needs tls_cert and tls_key (the front certificate)",
            ));
            None
        }
        (false, listen, files) => {
            if listen.is_some() || files.is_some() {
                errors.push(ConfigError::new(
                    key("transports"),
                    "tls_listen/tls_cert are set but \"tls\" is not among the transports",
                ));
            }
            None
        }
    };
    if mode == Some(FrontMode::Proxy) {
        // The stateless proxy forwards over UDP from the listener's own socket, so responses
        // come back to it.
        if !udp {
            errors.push(ConfigError::new(
                key("transports"),
                "proxy mode forwards to the active node over UDP from this listener: include \"udp\"",
            ));
        }
        if let Some(target) = &target {
            if target.transport.is_some_and(|t| t != Transport::Udp) || target.secure {
                errors.push(ConfigError::new(
                    key("target"),
                    "proxy mode forwards over UDP: the target must be a sip: URI without transport=tcp/tls",
                ));
            }
        }
    }
    let udp_sockets = raw.udp_sockets.unwrap_or_else(default_udp_sockets);
    if udp_sockets == 0 {
        errors.push(ConfigError::new(key("udp_sockets"), "must be at least 1"));
    }
    let max_message = raw.max_message.unwrap_or_else(default_max_message);
    if max_message < 1024 {
        errors.push(ConfigError::new(
            key("max_message"),
            "must be at least 1024 bytes",
        ));
    }
    Some(SipFrontend {
        mode: mode?,
        listen: raw.listen,
        udp,
        tcp,
        tls,
        udp_sockets,
        max_connections: raw.max_connections,
        max_message,
        target: target?,
    })
}

/// An HTTP target is a base URL: scheme, host and port, no path, query or user info.
fn validate_http_target(target: &str) -> Result<String, String> {
    let hint = "write this node's service as a base URL, like \"http://10.0.0.1:8080\"";
    let uri: hyper::Uri = target
        .parse()
        .map_err(|e| format!("{target:?}: {e}; {hint}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "{target:?}: the scheme must be http or https; {hint}"
            ))
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{target:?}: no host; {hint}"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("{target:?}: no user info allowed; {hint}"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("{target:?}: no path or query allowed; {hint}"));
    }
    Ok(format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        authority
    ))
}

fn validate_hooks(raw: RawHooks, errors: &mut Vec<ConfigError>) -> HooksConfig {
    if raw.timeout.is_zero() {
        errors.push(ConfigError::new("hooks.timeout", "must be more than 0"));
    }
    for (key, commands) in [
        ("become_active", &raw.become_active),
        ("become_standby", &raw.become_standby),
        ("fault", &raw.fault),
    ] {
        if let Some(index) = commands.iter().position(|c| c.trim().is_empty()) {
            errors.push(ConfigError::new(
                format!("hooks.{key}[{index}]"),
                "is empty: give a command, e.g. \"systemctl start omm\"",
            ));
        }
    }
    HooksConfig {
        become_active: raw.become_active,
        become_standby: raw.become_standby,
        fault: raw.fault,
        timeout: raw.timeout,
    }
}

/// A periodic check must finish before the next one is due.
fn check_within_interval(
    section: &str,
    timeout: Duration,
    interval: Duration,
    errors: &mut Vec<ConfigError>,
) {
    if timeout > interval {
        errors.push(ConfigError::new(
            format!("{section}.timeout"),
            format!(
                "must not exceed interval ({})",
                humantime::format_duration(interval)
            ),
        ));
    }
}

/// `tcp://host:port`, `http://host:port/path` or `https://host:port/path`.
fn parse_health_check(text: &str) -> Result<HealthCheck, String> {
    let usage = "write tcp://HOST:PORT, http://HOST:PORT/PATH or https://HOST:PORT/PATH";
    if let Some(authority) = text.strip_prefix("tcp://") {
        if authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
        {
            return Ok(HealthCheck::Tcp(authority.to_owned()));
        }
        return Err(format!("{text:?} has no port: {usage}"));
    }
    let (tls, rest) = match (text.strip_prefix("https://"), text.strip_prefix("http://")) {
        (Some(rest), _) => (true, Some(rest)),
        (None, rest) => (false, rest),
    };
    if let Some(rest) = rest {
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("{text:?} has no host: {usage}"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        return Ok(HealthCheck::Http {
            authority,
            path: path.to_owned(),
            tls,
        });
    }
    Err(format!("{text:?}: {usage}"))
}

/// Node ids appear in logs, metric labels and certificate names: keep them plain.
fn check_id(key: &str, id: &str, errors: &mut Vec<ConfigError>) {
    let plain = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if id.is_empty() || id.len() > 63 || !plain {
        errors.push(ConfigError::new(
            key,
            format!("{id:?} is not a valid id: use 1 to 63 of A-Z a-z 0-9 - _ ."),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
