//! `[election]`: timing and policy of the state engine.

use super::value::duration;
use super::ConfigError;
use crate::engine::Policy;
use serde::Deserialize;
use std::time::Duration;

/// The shortest heartbeat interval accepted; below it scheduling noise causes false failovers.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

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

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum RawPolicy {
    Sticky,
    PreferPrimary,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawElection {
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

pub(super) fn validate(raw: RawElection, errors: &mut Vec<ConfigError>) -> ElectionConfig {
    let interval = raw.heartbeat_interval;
    let shown = humantime::format_duration(interval);
    if interval < MIN_HEARTBEAT {
        errors.push(ConfigError::new(
            "election.heartbeat_interval",
            format!(
                "must be at least {}",
                humantime::format_duration(MIN_HEARTBEAT)
            ),
        ));
    }
    if raw.peer_dead_after < 2 * interval {
        errors.push(ConfigError::new(
            "election.peer_dead_after",
            format!(
                "must be at least twice heartbeat_interval ({shown}), or one late heartbeat fails the pair over"
            ),
        ));
    }
    if raw.startup_wait <= interval {
        errors.push(ConfigError::new(
            "election.startup_wait",
            format!(
                "must be larger than heartbeat_interval ({shown}), or the peer's first heartbeat cannot arrive in time"
            ),
        ));
    }
    if raw.switchover_timeout < interval {
        errors.push(ConfigError::new(
            "election.switchover_timeout",
            format!("must be at least heartbeat_interval ({shown})"),
        ));
    }
    ElectionConfig {
        policy: match raw.policy {
            RawPolicy::Sticky => Policy::Sticky,
            RawPolicy::PreferPrimary => Policy::PreferPrimary,
        },
        heartbeat_interval: interval,
        peer_dead_after: raw.peer_dead_after,
        startup_wait: raw.startup_wait,
        preempt_delay: raw.preempt_delay,
        switchover_timeout: raw.switchover_timeout,
    }
}
