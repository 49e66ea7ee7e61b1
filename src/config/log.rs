//! `[log]`: the tracing filter.

use super::ConfigError;
use serde::Deserialize;

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A tracing filter (`info`, `standby_proxy=debug`); `RUST_LOG` overrides it.
    pub level: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".to_owned(),
        }
    }
}

pub(super) fn validate(raw: RawLog, errors: &mut Vec<ConfigError>) -> LogConfig {
    if let Err(error) = tracing_subscriber::EnvFilter::try_new(&raw.level) {
        errors.push(ConfigError::new(
            "log.level",
            format!("not a tracing filter: {error}"),
        ));
    }
    LogConfig { level: raw.level }
}
