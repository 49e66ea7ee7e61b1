//! `[health]`: the local service health check (failing makes the node ineligible, R7).

use super::value::{check_thresholds, check_within_interval, duration};
use super::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    check: String,
    #[serde(default = "default_interval", deserialize_with = "duration")]
    interval: Duration,
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    timeout: Duration,
    #[serde(default = "default_threshold")]
    rise: u32,
    #[serde(default = "default_threshold")]
    fall: u32,
    ca: Option<PathBuf>,
}

/// How often a periodic check runs unless configured (the registrar prober's too).
pub(super) fn default_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_timeout() -> Duration {
    Duration::from_millis(500)
}

/// Consecutive results before a periodic check changes state (the registrar prober's too).
pub(super) fn default_threshold() -> u32 {
    2
}

pub(super) fn validate(raw: RawHealth, errors: &mut Vec<ConfigError>) -> Option<HealthConfig> {
    let check = parse_check(&raw.check)
        .map_err(|message| errors.push(ConfigError::new("health.check", message)))
        .ok()?;
    check_thresholds("health", raw.rise, raw.fall, errors);
    check_within_interval("health", raw.timeout, raw.interval, errors);
    Some(HealthConfig {
        check,
        interval: raw.interval,
        timeout: raw.timeout,
        rise: raw.rise,
        fall: raw.fall,
        ca: raw.ca,
    })
}

/// `tcp://host:port`, `http://host:port/path` or `https://host:port/path`.
fn parse_check(text: &str) -> Result<HealthCheck, String> {
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
    let Some(rest) = rest else {
        return Err(format!("{text:?}: {usage}"));
    };
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
    Ok(HealthCheck::Http {
        authority,
        path: path.to_owned(),
        tls,
    })
}
