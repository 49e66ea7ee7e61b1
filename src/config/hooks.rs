//! `[hooks]`: shell commands run on role changes.

use super::value::duration;
use super::ConfigError;
use crate::hooks::HooksConfig;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHooks {
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

pub(super) fn validate(raw: RawHooks, errors: &mut Vec<ConfigError>) -> HooksConfig {
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
