//! `[cluster]`: election arbitrated by etcd, for any number of nodes (cluster mode), instead
//! of the pair's own peer link.
//!
//! Needs a build with the cargo feature `etcd` (its client needs `protoc` to build, so a plain
//! `cargo build` leaves it out); without it the section is refused by name.

use super::value::duration;
use super::ConfigError;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// What arbitrates the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterBackend {
    /// An etcd v3 cluster.
    Etcd,
}

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Takes part in the election: may become the active node.
    #[default]
    Member,
    /// Never campaigns: follows the leader and serves the front ends only (a stateless
    /// front tier).
    Front,
}

/// What the active node does when it can no longer renew its lease (etcd unreachable or
/// without quorum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnStoreLoss {
    /// Stop acting as active before the lease can expire (no two active nodes, at the price
    /// of no active node while etcd is gone).
    #[default]
    Demote,
    /// Keep acting while every other member named in `[[cluster.members]]` confirms it over
    /// the cluster's peer link, promising not to take over meanwhile (after Patroni's
    /// failsafe mode). The risk: a member missing from the list could take over.
    KeepIfPeersConfirm,
}

/// `[cluster.peer_link]`: the mutual-TLS listener other members ask for confirmations
/// (`on_store_loss = "keep-if-peers-confirm"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLink {
    /// Where the other members connect (default: `node.address`, port 7701).
    pub listen: SocketAddr,
    /// The cluster's CA (PEM): every member's certificate comes from it.
    pub ca: PathBuf,
    /// This node's certificate (PEM), issued for `node.id`.
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

/// One entry of `[[cluster.members]]`: a member that may become active.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterMember {
    /// Its node id (the name its certificate carries).
    pub id: String,
    /// Its `[cluster.peer_link]` listener.
    pub peer_link: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClusterLink {
    listen: Option<SocketAddr>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// The client certificate and CA for etcd over TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// The CA that issued etcd's server certificates (PEM).
    pub ca: PathBuf,
    /// This node's client certificate (PEM), when etcd asks for one.
    pub cert: Option<PathBuf>,
    /// Its key (PEM).
    pub key: Option<PathBuf>,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The arbiter.
    pub backend: ClusterBackend,
    /// The cluster's name: its keys are under `<prefix>/<name>/`, so one etcd holds many.
    pub name: String,
    /// etcd's client URLs (`http://host:2379`, `https://...`).
    pub endpoints: Vec<String>,
    /// Where every cluster's keys live.
    pub prefix: String,
    /// The lease's time to live: how long a dead active node holds the role at most.
    pub lease_ttl: Duration,
    /// etcd over TLS.
    pub tls: Option<EtcdTls>,
    /// Member or front only.
    pub role: MemberRole,
    /// When the lease cannot be renewed.
    pub on_store_loss: OnStoreLoss,
    /// The peer link for confirmations (`keep-if-peers-confirm` only).
    pub peer_link: Option<ClusterLink>,
    /// Every member that may become active, this node included (`keep-if-peers-confirm`
    /// only): the active node needs all the others' confirmations.
    pub members: Vec<ClusterMember>,
}

impl ClusterConfig {
    /// The folder of this cluster's keys, with a trailing `/`.
    pub fn key_folder(&self) -> String {
        format!("{}/{}/", self.prefix.trim_end_matches('/'), self.name)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    backend: ClusterBackend,
    name: String,
    endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default = "default_lease_ttl", deserialize_with = "duration")]
    lease_ttl: Duration,
    tls: Option<EtcdTls>,
    #[serde(default)]
    role: MemberRole,
    #[serde(default)]
    on_store_loss: OnStoreLoss,
    peer_link: Option<RawClusterLink>,
    #[serde(default)]
    members: Vec<ClusterMember>,
}

fn default_prefix() -> String {
    "/standby-proxy".to_owned()
}

/// etcd's default election timeout is 1 s, and it grants no lease shorter than 1.5 times
/// that: 2 s is the shortest lease it keeps as asked.
fn default_lease_ttl() -> Duration {
    Duration::from_secs(2)
}

/// Whether this build can talk to etcd.
const ETCD_BUILT_IN: bool = cfg!(feature = "etcd");

pub(super) fn validate(
    mut raw: RawCluster,
    has_peer: bool,
    node: (&str, IpAddr),
    errors: &mut Vec<ConfigError>,
) -> Option<ClusterConfig> {
    let before = errors.len();
    if !ETCD_BUILT_IN {
        errors.push(ConfigError::new(
            "cluster.backend",
            "this build has no etcd support: build with `cargo build --features etcd` (it needs protoc, Debian's protobuf-compiler)",
        ));
    }
    if has_peer {
        errors.push(ConfigError::new(
            "cluster",
            "cluster mode elects through etcd: remove [peer] and [peer_link] (a pair's own link)",
        ));
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if raw.name.is_empty() || raw.name.len() > 64 || !raw.name.chars().all(plain) {
        errors.push(ConfigError::new(
            "cluster.name",
            format!(
                "{:?} is not a cluster name (1 to 64 letters, digits, '-' or '_')",
                raw.name
            ),
        ));
    }
    if raw.endpoints.is_empty() {
        errors.push(ConfigError::new(
            "cluster.endpoints",
            "name at least one etcd endpoint",
        ));
    }
    for (index, endpoint) in raw.endpoints.iter().enumerate() {
        let Some(rest) = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"))
        else {
            errors.push(ConfigError::new(
                format!("cluster.endpoints[{index}]"),
                format!("{endpoint:?} is not an etcd client URL (http://host:port or https://host:port)"),
            ));
            continue;
        };
        let has_port = rest.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !has_port || rest.contains('/') {
            errors.push(ConfigError::new(
                format!("cluster.endpoints[{index}]"),
                format!("{endpoint:?} needs a host and a port, and no path (http://10.0.0.5:2379)"),
            ));
        }
        if endpoint.starts_with("https://") && raw.tls.is_none() {
            errors.push(ConfigError::new(
                "cluster.tls",
                "an https endpoint needs [cluster.tls] with at least the CA",
            ));
        }
    }
    if !raw.prefix.starts_with('/') || raw.prefix.contains("//") {
        errors.push(ConfigError::new(
            "cluster.prefix",
            format!(
                "{:?} must start with '/' and hold no empty part",
                raw.prefix
            ),
        ));
    }
    let whole = raw.lease_ttl.subsec_nanos() == 0;
    if !whole || raw.lease_ttl < Duration::from_secs(1) || raw.lease_ttl > Duration::from_secs(60) {
        errors.push(ConfigError::new(
            "cluster.lease_ttl",
            "must be whole seconds, 1 to 60 (etcd's leases count in seconds; at least 1.5 times etcd's election timeout)",
        ));
    }
    if let Some(tls) = &raw.tls {
        if tls.cert.is_some() != tls.key.is_some() {
            errors.push(ConfigError::new(
                "cluster.tls",
                "give both cert and key, or neither",
            ));
        }
    }
    let members = std::mem::take(&mut raw.members);
    let peer_link = validate_confirmations(&mut raw, &members, node, errors);
    (errors.len() == before).then_some(ClusterConfig {
        backend: raw.backend,
        name: raw.name,
        endpoints: raw.endpoints,
        prefix: raw.prefix,
        lease_ttl: raw.lease_ttl,
        tls: raw.tls,
        role: raw.role,
        on_store_loss: raw.on_store_loss,
        peer_link,
        members,
    })
}

/// `keep-if-peers-confirm` needs the peer link and the whole membership, this node in it;
/// `demote` uses neither.
fn validate_confirmations(
    raw: &mut RawCluster,
    members: &[ClusterMember],
    (own_id, own_address): (&str, IpAddr),
    errors: &mut Vec<ConfigError>,
) -> Option<ClusterLink> {
    let link = raw.peer_link.take();
    if raw.on_store_loss != OnStoreLoss::KeepIfPeersConfirm {
        if link.is_some() || !members.is_empty() {
            errors.push(ConfigError::new(
                "cluster.peer_link",
                "[cluster.peer_link] and [[cluster.members]] are only used with on_store_loss = \"keep-if-peers-confirm\"",
            ));
        }
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    for (index, member) in members.iter().enumerate() {
        if !seen.insert(member.id.as_str()) {
            errors.push(ConfigError::new(
                format!("cluster.members[{index}].id"),
                format!("{:?} is listed twice", member.id),
            ));
        }
    }
    let own = members.iter().find(|m| m.id == own_id);
    if members.len() < 2 {
        errors.push(ConfigError::new(
            "cluster.members",
            "list at least two members: the active one needs another to confirm it",
        ));
    }
    if let Some(own) = own.filter(|m| m.peer_link.ip().to_canonical() != own_address.to_canonical())
    {
        errors.push(ConfigError::new(
            "cluster.members",
            format!(
                "this node's entry ({}) must be on node.address ({own_address}): the others admit it by that address",
                own.peer_link
            ),
        ));
    }
    if raw.role == MemberRole::Member && own.is_none() {
        errors.push(ConfigError::new(
            "cluster.members",
            format!("list every member that may become active, this node ({own_id}) included, the same on every member"),
        ));
    }
    if raw.role == MemberRole::Front {
        errors.push(ConfigError::new(
            "cluster.on_store_loss",
            "a front never becomes active: leave on_store_loss at \"demote\"",
        ));
    }
    let Some(link) = link else {
        errors.push(ConfigError::new(
            "cluster.peer_link",
            "on_store_loss = \"keep-if-peers-confirm\" needs [cluster.peer_link] with ca, cert and key",
        ));
        return None;
    };
    let listen = link
        .listen
        .or(own.map(|m| m.peer_link))
        .unwrap_or(SocketAddr::new(own_address, super::peer::DEFAULT_PEER_PORT));
    Some(ClusterLink {
        listen,
        ca: link.ca,
        cert: link.cert,
        key: link.key,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const NODE: &str = "[node]\nid = \"a\"\naddress = \"127.0.0.1\"\n";

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(text) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_cluster_section_needs_the_etcd_build_and_is_read_with_its_defaults() {
        let text = format!(
            "{NODE}[cluster]\nbackend = \"etcd\"\nname = \"site-1\"\nendpoints = [\"http://10.0.0.5:2379\"]\n"
        );
        let built_in = super::ETCD_BUILT_IN;
        match Config::parse(&text) {
            Ok(config) => {
                assert!(built_in, "accepted without etcd support");
                let cluster = config.cluster.expect("cluster mode");
                assert_eq!(cluster.key_folder(), "/standby-proxy/site-1/");
                assert_eq!(cluster.lease_ttl, std::time::Duration::from_secs(2));
                assert_eq!(cluster.role, super::MemberRole::Member);
            }
            Err(errors) => {
                assert!(!built_in, "{errors:?}");
                let text = errors[0].to_string();
                assert!(text.contains("cluster.backend") && text.contains("--features etcd"));
            }
        }
    }

    #[test]
    fn each_bad_cluster_key_is_named() {
        let text = format!(
            "{NODE}[cluster]\nbackend = \"etcd\"\nname = \"a b\"\nendpoints = [\"10.0.0.5:2379\", \"https://x:2379\", \"http://x:0\"]\n\
             prefix = \"relative\"\nlease_ttl = \"1500ms\"\n\n\
             [peer]\nid = \"b\"\naddress = \"127.0.0.2\"\n\n\
             [peer_link]\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n"
        );
        let found = errors(&text).join("\n");
        for key in [
            "cluster.name",
            "cluster.endpoints[0]",
            "cluster.endpoints[2]",
            "cluster.tls",
            "cluster.prefix",
            "cluster.lease_ttl",
            "remove [peer]",
        ] {
            assert!(found.contains(key), "{key} not named in:\n{found}");
        }
    }

    #[test]
    fn floating_addresses_are_refused_in_cluster_mode() {
        let text = format!(
            "{NODE}[cluster]\nbackend = \"etcd\"\nname = \"c\"\nendpoints = [\"http://127.0.0.1:2379\"]\n\n\
             [[vip]]\naddress = \"192.0.2.10/24\"\ninterface = \"eth0\"\n"
        );
        let found = errors(&text).join("\n");
        assert!(
            found.contains("vip") && found.contains("cluster mode"),
            "{found}"
        );
    }

    #[test]
    fn keep_if_peers_confirm_needs_the_peer_link_and_every_member_and_demote_neither() {
        let cluster = "[cluster]\nbackend = \"etcd\"\nname = \"c\"\nendpoints = [\"http://127.0.0.1:2379\"]\n";
        let link = "[cluster.peer_link]\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n";
        let member = |id: &str, at: &str| {
            format!("[[cluster.members]]\nid = \"{id}\"\npeer_link = \"{at}\"\n")
        };
        let keep = "on_store_loss = \"keep-if-peers-confirm\"\n";
        if !super::ETCD_BUILT_IN {
            return;
        }
        let whole = format!(
            "{NODE}{cluster}{keep}{link}{}{}",
            member("a", "127.0.0.1:7801"),
            member("b", "127.0.0.2:7801")
        );
        let config = Config::parse(&whole).expect("valid");
        let cluster_config = config.cluster.expect("cluster");
        let listen = cluster_config.peer_link.expect("link").listen;
        assert_eq!(listen.to_string(), "127.0.0.1:7801");
        assert_eq!(cluster_config.members.len(), 2);
        let missing = errors(&format!(
            "{NODE}{cluster}{keep}{}",
            member("b", "127.0.0.2:7801")
        ));
        let missing = missing.join("\n");
        assert!(missing.contains("needs [cluster.peer_link]"), "{missing}");
        assert!(missing.contains("this node (a) included"), "{missing}");
        let twice = errors(&format!(
            "{NODE}{cluster}{keep}{link}{}{}",
            member("a", "127.0.0.1:7801"),
            member("a", "127.0.0.2:7801")
        ));
        assert!(
            twice.join("\n").contains("cluster.members[1].id"),
            "{twice:?}"
        );
        let unused = errors(&format!("{NODE}{cluster}{link}"));
        assert!(unused.join("\n").contains("only used with"), "{unused:?}");
    }
}
