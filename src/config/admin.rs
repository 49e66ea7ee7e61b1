//! `[admin]`: the admin API's listener, token and limits.

use super::value::cert_and_key;
use super::ConfigError;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Port of the admin API unless configured otherwise.
pub const DEFAULT_ADMIN_PORT: u16 = 7780;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
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

pub(super) fn validate(
    raw: RawAdmin,
    node_address: IpAddr,
    errors: &mut Vec<ConfigError>,
) -> AdminConfig {
    if raw.max_connections == 0 {
        errors.push(ConfigError::new(
            "admin.max_connections",
            "must be at least 1",
        ));
    }
    if raw.max_header_bytes < 8192 {
        errors.push(ConfigError::new(
            "admin.max_header_bytes",
            "must be at least 8192 (browsers send more)",
        ));
    }
    AdminConfig {
        listen: raw
            .listen
            .unwrap_or(SocketAddr::new(node_address, DEFAULT_ADMIN_PORT)),
        token_file: raw.token_file,
        max_connections: raw.max_connections,
        max_header_bytes: raw.max_header_bytes,
        tls: cert_and_key("admin", raw.tls_cert, raw.tls_key, errors),
    }
}
