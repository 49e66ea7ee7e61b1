//! Value parsers and checks that several sections share: durations, ids, and "a periodic
//! check must finish within its interval".

use super::ConfigError;
use serde::Deserialize;
use std::time::Duration;

/// Reads a duration written like `100ms`, `2s` or `1m 30s`, saying why when it cannot.
pub(super) fn duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    let parsed = humantime::parse_duration(&text).map_err(|error| {
        serde::de::Error::custom(format!(
            "{error} in {text:?}: write a duration like \"100ms\", \"2s\" or \"1m 30s\""
        ))
    })?;
    // Every duration is added to a clock reading somewhere; a huge one would overflow it.
    if parsed > MAX_DURATION {
        return Err(serde::de::Error::custom(format!(
            "{text:?} is longer than the longest duration allowed ({})",
            humantime::format_duration(MAX_DURATION)
        )));
    }
    Ok(parsed)
}

/// The longest duration any key takes: far beyond any sensible timeout or interval, far
/// below what `Instant + duration` can hold.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// As [`duration`], for a key that may be left out.
pub(super) fn optional_duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

/// Node and front-end ids appear in logs, metric labels and certificate names: keep them
/// plain.
pub(super) fn check_id(key: &str, id: &str, errors: &mut Vec<ConfigError>) {
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

/// A periodic check must finish before the next one is due.
pub(super) fn check_within_interval(
    section: &str,
    timeout: Duration,
    interval: Duration,
    errors: &mut Vec<ConfigError>,
) {
    if interval.is_zero() {
        errors.push(ConfigError::new(
            format!("{section}.interval"),
            "must be longer than 0 (it is how often the check runs)",
        ));
    }
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

/// Rise and fall thresholds of a periodic check.
pub(super) fn check_thresholds(section: &str, rise: u32, fall: u32, errors: &mut Vec<ConfigError>) {
    if rise == 0 || fall == 0 {
        errors.push(ConfigError::new(
            section,
            "rise and fall must be at least 1",
        ));
    }
}

/// A certificate and key given as two optional keys: both or neither.
pub(super) fn cert_and_key<T>(
    section: &str,
    cert: Option<T>,
    key: Option<T>,
    errors: &mut Vec<ConfigError>,
) -> Option<(T, T)> {
    match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            errors.push(ConfigError::new(
                format!("{section}.tls_key"),
                "missing: tls_cert needs its key",
            ));
            None
        }
        (None, Some(_)) => {
            errors.push(ConfigError::new(
                format!("{section}.tls_cert"),
                "missing: tls_key needs its certificate",
            ));
            None
        }
    }
}
