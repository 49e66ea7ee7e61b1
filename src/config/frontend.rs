//! `[[frontend]]`: the client entry points (SIP, HTTP, TCP) and their limits.

use super::value::{cert_and_key, check_id, optional_duration};
use super::ConfigError;
pub use crate::cidr::Cidr;
use crate::sip::uri::SipUri;
use crate::sip::Transport;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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

    /// This node's own SIP-over-TLS target, if this is a SIP front end with TLS.
    pub fn tls_target(&self) -> Option<String> {
        match &self.kind {
            FrontendKind::Sip(sip) => sip.tls_target.as_ref().map(ToString::to_string),
            FrontendKind::Http(_) | FrontendKind::Tcp(_) => None,
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

/// What one client may take of a front end, and how long it may take (see
/// `front::limits`). Defaults per kind are in [`Limits::defaults`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// Connections served at once by the whole front end.
    pub max_connections: usize,
    /// Connections from one source address (IPv6: one /64) at once.
    pub max_connections_per_source: usize,
    /// Sources exempt from the per-source limits (an SBC, a NAT).
    pub trusted_networks: Vec<Cidr>,
    /// A message (SIP) or request head (HTTP) must be complete this long after its first
    /// byte; `None` for TCP forwarding, which has no messages.
    pub first_message_timeout: Option<Duration>,
    /// A connection on which nothing moved for this long is closed (HTTP and TCP: in
    /// either direction, so a client that never reads is closed too).
    pub idle_timeout: Duration,
    /// A write to a SIP client that does not finish within this closes its connection.
    pub write_timeout: Duration,
}

/// The defaults of one kind of front end.
struct Limits {
    first_message: Option<Duration>,
    idle: Duration,
}

impl Limits {
    fn defaults(kind: &str) -> Limits {
        match kind {
            // Phones keep a registration's connection open and send CRLF keep-alives.
            "sip" => Limits {
                first_message: Some(Duration::from_secs(10)),
                idle: Duration::from_secs(300),
            },
            // Browsers reuse keep-alive connections for about a minute.
            "http" => Limits {
                first_message: Some(Duration::from_secs(10)),
                idle: Duration::from_secs(45),
            },
            // Base stations' links are long-lived and have keep-alives of their own, far more
            // often than this.
            _ => Limits {
                first_message: None,
                idle: Duration::from_secs(600),
            },
        }
    }
}

/// The longest timeout accepted: beyond it a typo (`"300h"`) would disable the limit.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

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
    /// TCP/TLS connections and their timeouts.
    pub limits: ClientLimits,
    /// Requests per second one source may send over UDP (0: no limit).
    pub udp_rate_per_source: u32,
    /// Largest message accepted over TCP.
    pub max_message: usize,
    /// This node's own SIP service, advertised to the peer.
    pub target: SipUri,
    /// This node's own SIP-over-TLS service (`sips:` or `;transport=tls`), advertised to the
    /// peer: a request that arrived over TLS is redirected here, since no server speaks TLS
    /// and plain SIP on one port. Present exactly when `tls` is.
    pub tls_target: Option<SipUri>,
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
    /// Client connections (upgraded tunnels included) and their timeouts.
    pub limits: ClientLimits,
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
    /// Connections forwarded at once and their idle timeout.
    pub limits: ClientLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFrontend {
    name: String,
    kind: String,
    listen: SocketAddr,
    #[serde(default = "default_mode")]
    mode: String,
    target: String,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    max_connections_per_source: Option<usize>,
    #[serde(default)]
    trusted_networks: Vec<String>,
    #[serde(default, deserialize_with = "optional_duration")]
    first_message_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    write_timeout: Option<Duration>,
    udp_rate_per_source: Option<u32>,
    // SIP only.
    transports: Option<Vec<String>>,
    udp_sockets: Option<usize>,
    max_message: Option<usize>,
    tls_listen: Option<SocketAddr>,
    tls_target: Option<String>,
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

fn default_max_connections() -> usize {
    4096
}

fn default_max_message() -> usize {
    64 * 1024
}

/// Requests per second one source may send to a SIP front end over UDP by default: far above
/// what a phone sends, so it bounds reflection at a spoofed address (to about 2 Mbit/s of
/// answers per front end) without touching clients. A PBX or SBC that sends more belongs in
/// `trusted_networks`.
const DEFAULT_UDP_RATE: u32 = 1000;

/// How long a proxy or forwarder waits to connect to the active node by default.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The keys of the `index`th front end, for error messages.
struct Keys {
    index: usize,
}

impl Keys {
    fn section(&self) -> String {
        format!("frontend[{}]", self.index)
    }

    fn key(&self, field: &str) -> String {
        format!("frontend[{}].{field}", self.index)
    }
}

pub(super) fn validate(
    raw: Vec<RawFrontend>,
    errors: &mut Vec<ConfigError>,
) -> Vec<FrontendConfig> {
    let mut frontends = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    // Where each listener is, and whose: two front ends on one address would fail to bind,
    // or (with SO_REUSEPORT) silently share the clients.
    let mut listeners = std::collections::BTreeMap::new();
    for (index, raw) in raw.into_iter().enumerate() {
        let keys = Keys { index };
        let before = errors.len();
        check_id(&keys.key("name"), &raw.name, errors);
        if !names.insert(raw.name.clone()) {
            errors.push(ConfigError::new(
                keys.key("name"),
                format!("{:?} is used twice", raw.name),
            ));
        }
        for (field, address) in [("listen", Some(raw.listen)), ("tls_listen", raw.tls_listen)] {
            let Some(address) = address else { continue };
            if let Some(owner) = listeners.insert(address, keys.key(field)) {
                errors.push(ConfigError::new(
                    keys.key(field),
                    format!("{address} is already {owner}: every listener needs its own address"),
                ));
            }
        }
        let kind = validate_one(&raw, &keys, errors);
        if let (Some(kind), true) = (kind, errors.len() == before) {
            frontends.push(FrontendConfig {
                name: raw.name,
                kind,
            });
        }
    }
    frontends
}

/// The keys every kind has, then the kind's own.
fn validate_one(
    raw: &RawFrontend,
    keys: &Keys,
    errors: &mut Vec<ConfigError>,
) -> Option<FrontendKind> {
    let mode = match raw.mode.as_str() {
        "redirect" => Some(FrontMode::Redirect),
        "proxy" => Some(FrontMode::Proxy),
        other => {
            errors.push(ConfigError::new(
                keys.key("mode"),
                format!("{other:?}: write redirect or proxy"),
            ));
            None
        }
    };
    let limits = client_limits(raw, keys, errors);
    match raw.kind.as_str() {
        "sip" => sip(raw, mode, limits, keys, errors).map(FrontendKind::Sip),
        "http" => http(raw, mode, limits, keys, errors).map(FrontendKind::Http),
        "tcp" => tcp(raw, limits, keys, errors).map(FrontendKind::Tcp),
        other => {
            errors.push(ConfigError::new(
                keys.key("kind"),
                format!("{other:?}: write sip, http or tcp"),
            ));
            None
        }
    }
}

/// The connection limits every kind has, with the kind's defaults.
fn client_limits(raw: &RawFrontend, keys: &Keys, errors: &mut Vec<ConfigError>) -> ClientLimits {
    if raw.max_connections == 0 {
        errors.push(ConfigError::new(
            keys.key("max_connections"),
            "must be at least 1",
        ));
    }
    // By default one source may hold an eighth of the listener, so a few misbehaving
    // clients cannot lock everyone else out.
    let per_source = raw
        .max_connections_per_source
        .unwrap_or((raw.max_connections / 8).max(1));
    if per_source == 0 || per_source > raw.max_connections.max(1) {
        errors.push(ConfigError::new(
            keys.key("max_connections_per_source"),
            format!("must be 1 to max_connections ({})", raw.max_connections),
        ));
    }
    let mut trusted_networks = Vec::new();
    for (index, text) in raw.trusted_networks.iter().enumerate() {
        match text.parse::<Cidr>() {
            Ok(network) => trusted_networks.push(network),
            Err(message) => errors.push(ConfigError::new(
                format!("{}[{index}]", keys.key("trusted_networks")),
                message,
            )),
        }
    }
    let defaults = Limits::defaults(&raw.kind);
    let mut timeout = |field: &str, value: Option<Duration>, default: Duration| {
        let value = value.unwrap_or(default);
        if value.is_zero() || value > MAX_TIMEOUT {
            errors.push(ConfigError::new(
                keys.key(field),
                "must be more than 0 and at most 24h",
            ));
        }
        value
    };
    let first_message_timeout = defaults
        .first_message
        .map(|default| timeout("first_message_timeout", raw.first_message_timeout, default));
    let idle_timeout = timeout("idle_timeout", raw.idle_timeout, defaults.idle);
    let write_timeout = timeout("write_timeout", raw.write_timeout, Duration::from_secs(10));
    ClientLimits {
        max_connections: raw.max_connections,
        max_connections_per_source: per_source,
        trusted_networks,
        first_message_timeout,
        idle_timeout,
        write_timeout,
    }
}

/// The keys only a SIP front end has, and whether each is set.
fn sip_only(raw: &RawFrontend) -> [(&'static str, bool, &'static str); 7] {
    [
        ("transports", raw.transports.is_some(), "sip"),
        ("udp_sockets", raw.udp_sockets.is_some(), "sip"),
        ("max_message", raw.max_message.is_some(), "sip"),
        ("tls_listen", raw.tls_listen.is_some(), "sip"),
        ("tls_target", raw.tls_target.is_some(), "sip"),
        ("write_timeout", raw.write_timeout.is_some(), "sip"),
        (
            "udp_rate_per_source",
            raw.udp_rate_per_source.is_some(),
            "sip",
        ),
    ]
}

/// A key that means nothing for this kind is an error, not silently ignored.
fn only_for(
    raw: &RawFrontend,
    keys: &Keys,
    fields: &[(&str, bool, &str)],
    errors: &mut Vec<ConfigError>,
) {
    for (field, present, kinds) in fields {
        if *present {
            errors.push(ConfigError::new(
                keys.key(field),
                format!("only for kind {kinds}, this front end is {:?}", raw.kind),
            ));
        }
    }
}

fn tls_files(raw: &RawFrontend, keys: &Keys, errors: &mut Vec<ConfigError>) -> Option<TlsFiles> {
    cert_and_key(
        &keys.section(),
        raw.tls_cert.clone(),
        raw.tls_key.clone(),
        errors,
    )
    .map(|(cert, key)| TlsFiles { cert, key })
}

fn sip(
    raw: &RawFrontend,
    mode: Option<FrontMode>,
    limits: ClientLimits,
    keys: &Keys,
    errors: &mut Vec<ConfigError>,
) -> Option<SipFrontend> {
    only_for(
        raw,
        keys,
        &[
            ("ca", raw.ca.is_some(), "http"),
            (
                "connect_timeout",
                raw.connect_timeout.is_some(),
                "http or tcp",
            ),
        ],
        errors,
    );
    let tls_files = tls_files(raw, keys, errors);
    let target = raw
        .target
        .parse::<SipUri>()
        .map_err(|e| errors.push(ConfigError::new(keys.key("target"), e.to_string())))
        .ok();
    let (udp, tcp, tls) = sip_transports(raw, keys, errors);
    let tls_target = sip_tls_target(raw, tls, keys, errors);
    let tls = sip_tls(raw, tls, tls_files, keys, errors);
    if mode == Some(FrontMode::Proxy) {
        check_sip_proxy(udp, target.as_ref(), keys, errors);
    }
    let udp_sockets = raw.udp_sockets.unwrap_or_else(default_udp_sockets);
    if udp_sockets == 0 {
        errors.push(ConfigError::new(
            keys.key("udp_sockets"),
            "must be at least 1",
        ));
    }
    let max_message = raw.max_message.unwrap_or_else(default_max_message);
    if max_message < 1024 {
        errors.push(ConfigError::new(
            keys.key("max_message"),
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
        limits,
        udp_rate_per_source: raw.udp_rate_per_source.unwrap_or(DEFAULT_UDP_RATE),
        max_message,
        target: target?,
        tls_target,
    })
}

/// `tls_target`: needed with transport tls (a TLS client must land on a TLS port), and
/// itself a TLS URI.
fn sip_tls_target(
    raw: &RawFrontend,
    tls: bool,
    keys: &Keys,
    errors: &mut Vec<ConfigError>,
) -> Option<SipUri> {
    let key = keys.key("tls_target");
    let Some(text) = &raw.tls_target else {
        if tls {
            errors.push(ConfigError::new(
                key,
                format!(
                    "missing: \"tls\" in {} needs this node's SIP-over-TLS service here, like \"sip:10.0.0.1:5061;transport=tls\" (target is not a TLS port)",
                    keys.key("transports")
                ),
            ));
        }
        return None;
    };
    if !tls {
        errors.push(ConfigError::new(
            key,
            format!("is set but \"tls\" is not among {}", keys.key("transports")),
        ));
        return None;
    }
    let uri = text
        .parse::<SipUri>()
        .map_err(|e| errors.push(ConfigError::new(&key, e.to_string())))
        .ok()?;
    if !uri.secure && uri.transport != Some(Transport::Tls) {
        errors.push(ConfigError::new(
            key,
            format!("{text:?}: write a sips: URI or one with ;transport=tls"),
        ));
        return None;
    }
    Some(uri)
}

/// `transports`: which of UDP, TCP and TLS (default UDP and TCP).
fn sip_transports(
    raw: &RawFrontend,
    keys: &Keys,
    errors: &mut Vec<ConfigError>,
) -> (bool, bool, bool) {
    let (mut udp, mut tcp, mut tls) = (false, false, false);
    let default_transports = ["udp".to_owned(), "tcp".to_owned()];
    for transport in raw.transports.as_deref().unwrap_or(&default_transports) {
        match transport.as_str() {
            "udp" => udp = true,
            "tcp" => tcp = true,
            "tls" => tls = true,
            other => errors.push(ConfigError::new(
                keys.key("transports"),
                format!("{other:?}: write udp, tcp and/or tls"),
            )),
        }
    }
    if !udp && !tcp && !tls {
        errors.push(ConfigError::new(
            keys.key("transports"),
            "name at least one of udp, tcp, tls",
        ));
    }
    (udp, tcp, tls)
}

/// SIP over TLS needs its own listener and the front certificate.
fn sip_tls(
    raw: &RawFrontend,
    tls: bool,
    files: Option<TlsFiles>,
    keys: &Keys,
    errors: &mut Vec<ConfigError>,
) -> Option<(SocketAddr, TlsFiles)> {
    match (tls, raw.tls_listen, files) {
        (true, Some(listen), Some(files)) => Some((listen, files)),
        (true, None, _) => {
            errors.push(ConfigError::new(
                keys.key("tls_listen"),
                "missing: transport tls needs its own address and port (SIP over TLS is usually port 5061)",
            ));
            None
        }
        (true, _, None) => {
            errors.push(ConfigError::new(
                keys.key("tls_cert"),
                "missing: transport tls needs tls_cert and tls_key (the front certificate)",
            ));
            None
        }
        (false, listen, files) => {
            if listen.is_some() || files.is_some() {
                errors.push(ConfigError::new(
                    keys.key("transports"),
                    "tls_listen/tls_cert are set but \"tls\" is not among the transports",
                ));
            }
            None
        }
    }
}

/// The stateless proxy forwards over UDP from the listener's own socket, so responses come
/// back to it.
fn check_sip_proxy(udp: bool, target: Option<&SipUri>, keys: &Keys, errors: &mut Vec<ConfigError>) {
    if !udp {
        errors.push(ConfigError::new(
            keys.key("transports"),
            "proxy mode forwards to the active node over UDP from this listener: include \"udp\"",
        ));
    }
    if target.is_some_and(|t| t.transport.is_some_and(|t| t != Transport::Udp) || t.secure) {
        errors.push(ConfigError::new(
            keys.key("target"),
            "proxy mode forwards over UDP: the target must be a sip: URI without transport=tcp/tls",
        ));
    }
}

fn http(
    raw: &RawFrontend,
    mode: Option<FrontMode>,
    limits: ClientLimits,
    keys: &Keys,
    errors: &mut Vec<ConfigError>,
) -> Option<HttpFrontend> {
    only_for(raw, keys, &sip_only(raw), errors);
    let tls = tls_files(raw, keys, errors);
    let target = http_target(&raw.target)
        .map_err(|message| errors.push(ConfigError::new(keys.key("target"), message)))
        .ok();
    Some(HttpFrontend {
        mode: mode?,
        listen: raw.listen,
        tls,
        target: target?,
        ca: raw.ca.clone(),
        connect_timeout: raw.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        limits,
    })
}

/// An HTTP target is a base URL: scheme, host and port, no path, query or user info.
fn http_target(target: &str) -> Result<String, String> {
    let hint = "write this node's service as a base URL, like \"http://10.0.0.1:8080\"";
    let uri: hyper::Uri = target
        .parse()
        .map_err(|e| format!("{target:?}: {e}; {hint}"))?;
    let Some(scheme @ ("http" | "https")) = uri.scheme_str() else {
        return Err(format!(
            "{target:?}: the scheme must be http or https; {hint}"
        ));
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("{target:?}: no host; {hint}"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("{target:?}: no user info allowed; {hint}"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("{target:?}: no path or query allowed; {hint}"));
    }
    Ok(format!("{scheme}://{authority}"))
}

fn tcp(
    raw: &RawFrontend,
    limits: ClientLimits,
    keys: &Keys,
    errors: &mut Vec<ConfigError>,
) -> Option<TcpFrontend> {
    only_for(raw, keys, &sip_only(raw), errors);
    only_for(
        raw,
        keys,
        &[
            (
                "first_message_timeout",
                raw.first_message_timeout.is_some(),
                "sip or http",
            ),
            ("tls_cert", raw.tls_cert.is_some(), "sip or http"),
            ("tls_key", raw.tls_key.is_some(), "sip or http"),
            ("ca", raw.ca.is_some(), "http"),
        ],
        errors,
    );
    // TCP can only forward: its `mode` is not consulted.
    let target = raw
        .target
        .parse::<SocketAddr>()
        .map_err(|_| {
            errors.push(ConfigError::new(
                keys.key("target"),
                format!(
                    "{:?}: write this node's service as address:port, like \"10.0.0.1:16321\"",
                    raw.target
                ),
            ))
        })
        .ok()?;
    Some(TcpFrontend {
        listen: raw.listen,
        target,
        connect_timeout: raw.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        limits,
    })
}
