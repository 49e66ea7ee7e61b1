//! `[registrar]`: the SIP registrar(s) whose reachability is the election precondition.

use super::health::{default_interval, default_threshold};
use super::value::{check_thresholds, check_within_interval, duration};
use super::ConfigError;
use crate::engine::OnRegistrarLoss;
use crate::sip::prober::{ProberConfig, Rule};
use crate::sip::uri::SipUri;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[registrar]`: the SIP registrar(s) whose reachability is the election precondition.
#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    /// What the prober needs.
    pub prober: ProberConfig,
    /// DNS server for RFC 3263 resolution; default: the system's.
    pub nameserver: Option<SocketAddr>,
    /// CA certificates (PEM) for `sips:`/`transport=tls`; default: the system bundle.
    pub ca: Option<PathBuf>,
    /// What the active node does when it loses the registrar (R7b).
    pub on_loss: OnRegistrarLoss,
}

#[derive(Debug, Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "kebab-case")]
enum RawOnLoss {
    #[default]
    HandOver,
    StepDown,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum RawRule {
    Any,
    All,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistrar {
    targets: Vec<String>,
    #[serde(default = "default_rule")]
    rule: RawRule,
    #[serde(default = "default_interval", deserialize_with = "duration")]
    interval: Duration,
    #[serde(default = "default_timeout", deserialize_with = "duration")]
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
    #[serde(default)]
    on_loss: RawOnLoss,
}

fn default_rule() -> RawRule {
    RawRule::Any
}

fn default_timeout() -> Duration {
    Duration::from_millis(800)
}

fn default_t1() -> Duration {
    Duration::from_millis(100)
}

pub(super) fn validate(
    raw: RawRegistrar,
    errors: &mut Vec<ConfigError>,
) -> Option<RegistrarConfig> {
    let before = errors.len();
    let targets = targets(&raw.targets, errors);
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
    check_thresholds("registrar", raw.rise, raw.fall, errors);
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
        on_loss: match raw.on_loss {
            RawOnLoss::HandOver => OnRegistrarLoss::HandOver,
            RawOnLoss::StepDown => OnRegistrarLoss::StepDown,
        },
    })
}

fn targets(texts: &[String], errors: &mut Vec<ConfigError>) -> Vec<SipUri> {
    if texts.is_empty() {
        errors.push(ConfigError::new(
            "registrar.targets",
            "name at least one registrar, e.g. [\"sip:registrar.example.net\"]",
        ));
    }
    let mut targets = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        match text.parse::<SipUri>() {
            Ok(uri) => targets.push(uri),
            Err(error) => errors.push(ConfigError::new(
                format!("registrar.targets[{index}]"),
                error.to_string(),
            )),
        }
    }
    targets
}
