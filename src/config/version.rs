//! The peer protocol version this process speaks: the build's, or a test's override.
//!
//! The rule and the override are documented in `engine::protocol`; reading the environment
//! and stopping on a malformed value happen here, outside the sans-IO engine.

use crate::engine::ProtocolVersion;
use std::sync::OnceLock;

/// The environment variable that makes a process speak another version (tests only).
pub const TEST_OVERRIDE_VARIABLE: &str = "STANDBY_TEST_PROTOCOL_VERSION";

/// The version this process speaks: [`ProtocolVersion::CURRENT`], or the test override (see `engine::protocol`). Read once; the first call warns when overridden, and exits
/// the process with code 2 when the override is malformed.
pub fn spoken_protocol_version() -> ProtocolVersion {
    static SPOKEN: OnceLock<ProtocolVersion> = OnceLock::new();
    *SPOKEN.get_or_init(|| {
        let variable = TEST_OVERRIDE_VARIABLE;
        let text = match std::env::var(variable) {
            Err(std::env::VarError::NotPresent) => return ProtocolVersion::CURRENT,
            Ok(text) => text,
            Err(std::env::VarError::NotUnicode(raw)) => raw.to_string_lossy().into_owned(),
        };
        match text.parse::<ProtocolVersion>() {
            Ok(version) => {
                tracing::warn!(
                    variable,
                    spoken = %version,
                    built = %ProtocolVersion::CURRENT,
                    "TEST ONLY: this node speaks peer protocol {version}, not {}, because \
                     {variable} is set; never set it in production",
                    ProtocolVersion::CURRENT
                );
                version
            }
            Err(error) => {
                // Running on CURRENT instead would pass a skew test without any skew.
                tracing::error!(variable, "{variable}: {error}; not starting");
                std::process::exit(EXIT_BAD_OVERRIDE)
            }
        }
    })
}

/// The exit code of a node whose version override is malformed: that of a bad configuration.
const EXIT_BAD_OVERRIDE: i32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_speaks_the_current_version_unless_overridden() {
        // The unit tests do not set the variable, but whoever runs them might.
        let expected = match std::env::var(TEST_OVERRIDE_VARIABLE) {
            Ok(text) => text
                .parse()
                .expect("spoken_protocol_version() would have exited on a bad value"),
            Err(_) => ProtocolVersion::CURRENT,
        };
        assert_eq!(spoken_protocol_version(), expected);
    }
}
