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

impl AdminConfig {
    /// Whether the token would cross the network in clear: a token, no TLS, and a listener
    /// others can reach. Warned about loudly, not refused, so that an upgrade never turns a
    /// working configuration into a node that does not start.
    pub fn token_in_clear(&self) -> bool {
        self.token_file.is_some() && self.tls.is_none() && !self.listen.ip().is_loopback()
    }
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

#[cfg(test)]
mod tests {
    use super::AdminConfig;

    #[test]
    fn the_token_is_in_clear_only_without_tls_beyond_loopback() {
        let config = |listen: &str, token: bool, tls: bool| AdminConfig {
            listen: listen.parse().expect("address"),
            token_file: token.then(|| "token".into()),
            max_connections: 64,
            max_header_bytes: 16384,
            tls: tls.then(|| ("cert".into(), "key".into())),
        };
        assert!(config("0.0.0.0:7780", true, false).token_in_clear());
        assert!(config("192.0.2.1:7780", true, false).token_in_clear());
        assert!(!config("127.0.0.1:7780", true, false).token_in_clear());
        assert!(!config("[::1]:7780", true, false).token_in_clear());
        assert!(!config("0.0.0.0:7780", true, true).token_in_clear());
        assert!(!config("0.0.0.0:7780", false, false).token_in_clear());
    }
}
