//! The peer protocol's version: the one place that says which version this build speaks,
//! what changed in each version, and the rule that keeps rolling upgrades possible.
//!
//! # The rule
//!
//! Everything the nodes send each other (the hello, the heartbeat, the replication messages,
//! and in cluster mode what they write in etcd for each other to read) is JSON, and the
//! version in [`ProtocolVersion::CURRENT`] covers all of it.
//!
//! - A **minor** bump only adds: a new field carries `#[serde(default)]` (so a message of the
//!   previous minor, which lacks it, still decodes) and nothing a node of the previous minor
//!   relies on is removed or changes meaning. No message type has `deny_unknown_fields`, so
//!   the previous minor ignores the new field in turn. Peers of the same major pair,
//!   replicate and switch over in both directions: an upgrade goes one node at a time
//!   (standby first, switchover, then the other) and never needs both nodes down.
//! - A new variant of an enum the peer decodes (a role, a check state, a replication
//!   message) is not readable by the previous minor: it needs a **major** bump, or a variant
//!   the older node already knows to fall back on, or it is only ever sent to a peer whose
//!   heartbeats say it speaks the minor that added it (as the status request of 1.3 is).
//! - A **major** bump is for what an older node cannot read. Peers of different majors report
//!   `version_mismatch` on both sides and do not replicate, but still use each other's
//!   liveness, so they never both go active by mistake (R13).
//!
//! Each version's frames are kept in `tests/data/peer-frames/<version>/`; `tests/protocol.rs`
//! decodes every kept version of the current major with this build.
//!
//! # Speaking another version, for tests only
//!
//! What a process puts in its hello and heartbeats is `config::spoken_protocol_version()`
//! (outside the engine: it reads the environment): [`ProtocolVersion::CURRENT`], unless the
//! environment variable `STANDBY_TEST_PROTOCOL_VERSION` holds
//! `MAJOR.MINOR`. Then the process claims that version instead, so `tests/upgrade.rs` can run
//! two real processes of different versions side by side (a newer minor, another major)
//! without building two binaries. Only the number changes, not the frames: wire compatibility
//! with older minors is what the kept frames above prove. The variable is read once, the
//! first time the version is needed (at start, by the first hello or the engine's
//! configuration, before the node takes part in any election), and the node then logs a
//! warning that it speaks another version. The engine never reads it: the version comes in
//! its configuration, as everything does.
//! A value that is not `MAJOR.MINOR` (digits only) stops the node with exit code 2, as a bad
//! configuration does: a test that meant to skew versions must not quietly run unskewed.
//! Never set it in production.
//!
//! # History
//!
//! | version | what changed |
//! |---|---|
//! | 1.0 | first release: hello, heartbeat (with `echo_delay_us` and `targets` optional), the store's replication messages |
//! | 1.1 | a SIP front end with TLS also advertises its `tls_target` in the heartbeat's `targets`, under `<name>/tls`. A 1.0 node has no front end of that name and ignores it; a 1.1 node whose active peer is 1.0 (no `<name>/tls`) sends TLS clients to `target` with `transport=tls`, as 1.0 did |
//! | 1.2 | a snapshot comes in chunks (each under the frame limit): `Snapshot` has `more` (default `false`), and the follower installs the store once the last chunk arrived. A 1.1 leader's single snapshot reads as one last chunk. An idle leader sends an empty `Append` every heartbeat interval, which the follower acknowledges, so both ends see traffic (1.1 handles it the same way). A 1.1 follower cannot install any snapshot, as before: upgrade the standby first |
//! | 1.3 | a node may ask its peer for the peer's own status report, for the status page: a connection whose hello has `channel: "status"`, answered with one `{"type": "status", "report": {...}}` frame. A 1.2 node cannot decode that hello, so a 1.3 node asks only a peer whose heartbeats carry 1.3 or newer, and shows "the peer cannot report" otherwise. Nothing else changed: 1.2 and 1.3 pair, replicate and switch over as before |
//! | 1.4 | cluster mode only (`on_store_loss = "keep-if-peers-confirm"`): the active member asks every other member to confirm it, on a connection whose hello has `channel: "confirm"`: one `{"type": "confirm_ask", "term": N}` frame, answered with one `{"type": "confirm_answer", "promised_ms": M, "refused": null}`. A pair never opens such a connection, so 1.3 and 1.4 pair, replicate and switch over as before. A 1.3 cluster member has no such listener: it cannot confirm, and the active member demotes on losing etcd as with `demote` until every member runs 1.4 |
//! | 1.5 | cluster mode only: what the leader writes in etcd's `leader` key gains `stale_after_ms`, and the leader rewrites the key every `ttl / 4`; a member that sees no rewrite for `stale_after_ms` deletes the key (only if not rewritten since) so the others campaign without waiting out the lease. A 1.4 member ignores the field and the rewrites (its `Put` events of the same create revision are no leader change) and waits for the lease as before; a 1.5 member never deletes the key of a 1.4 leader, which publishes no `stale_after_ms`. The values of both are kept in `tests/data/etcd-values/`. Peer frames are unchanged: a pair is not concerned |

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Protocol version of the peer messages. Peers of different `major` versions report a
/// mismatch and do not replicate, but still use each other's liveness (R13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProtocolVersion {
    /// Incompatible changes bump this.
    pub major: u16,
    /// Compatible additions bump this.
    pub minor: u16,
}

impl ProtocolVersion {
    /// The version this build speaks.
    pub const CURRENT: ProtocolVersion = ProtocolVersion { major: 1, minor: 5 };

    /// The first version that answers a status request (`Channel::Status`).
    pub const STATUS_REQUESTS: ProtocolVersion = ProtocolVersion { major: 1, minor: 3 };

    /// Whether a peer speaking `self` understands what `since` added: same major, and that
    /// minor or newer.
    pub fn has(self, since: ProtocolVersion) -> bool {
        self.major == since.major && self.minor >= since.minor
    }

    /// Whether a peer speaking `other` may replicate with us.
    pub fn compatible_with(self, other: ProtocolVersion) -> bool {
        self.major == other.major
    }
}

/// Text that is not a protocol version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a protocol version: expected MAJOR.MINOR, digits only, such as {}",
    ProtocolVersion::CURRENT
)]
pub struct ParseVersionError {
    text: String,
}

impl FromStr for ProtocolVersion {
    type Err = ParseVersionError;

    /// `MAJOR.MINOR` as [`fmt::Display`] writes it; nothing else (no sign, space or third part).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseVersionError {
            text: text.to_owned(),
        };
        // u16::from_str alone would also take "+1".
        let number = |part: &str| -> Result<u16, ParseVersionError> {
            if part.is_empty() || !part.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(error());
            }
            part.parse().map_err(|_| error())
        };
        let (major, minor) = text.split_once('.').ok_or_else(error)?;
        Ok(ProtocolVersion {
            major: number(major)?,
            minor: number(minor)?,
        })
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_reads_back_from_what_display_writes() {
        for version in [
            ProtocolVersion::CURRENT,
            ProtocolVersion { major: 0, minor: 0 },
            ProtocolVersion {
                major: u16::MAX,
                minor: u16::MAX,
            },
        ] {
            assert_eq!(version.to_string().parse(), Ok(version));
        }
        assert_eq!(
            "2.10".parse(),
            Ok(ProtocolVersion {
                major: 2,
                minor: 10
            })
        );
    }

    #[test]
    fn anything_but_major_dot_minor_is_refused() {
        for text in [
            "", "1", "1.", ".2", "1.2.3", "+1.2", "1.+2", "-1.2", " 1.2", "1.2 ", "1,2", "a.b",
            "1.2a", "65536.0", "1.65536", "v1.2",
        ] {
            let refused = text.parse::<ProtocolVersion>();
            assert!(refused.is_err(), "{text:?} was taken as {refused:?}");
        }
    }

    #[test]
    fn the_refusal_names_the_text_and_the_expected_form() {
        let error = "1.x".parse::<ProtocolVersion>().expect_err("refused");
        let message = error.to_string();
        assert!(
            message.contains("\"1.x\"") && message.contains("MAJOR.MINOR"),
            "{message}"
        );
    }

    #[test]
    fn a_feature_is_there_from_its_minor_on_within_its_major() {
        let status = ProtocolVersion::STATUS_REQUESTS;
        let v = |major, minor| ProtocolVersion { major, minor };
        assert!(v(1, 3).has(status) && v(1, 9).has(status));
        assert!(!v(1, 2).has(status) && !v(0, 9).has(status) && !v(2, 0).has(status));
        assert!(ProtocolVersion::CURRENT.has(status));
    }

    #[test]
    fn only_the_major_decides_compatibility() {
        let current = ProtocolVersion::CURRENT;
        let newer_minor = ProtocolVersion {
            minor: current.minor + 1,
            ..current
        };
        let next_major = ProtocolVersion {
            major: current.major + 1,
            minor: 0,
        };
        assert!(current.compatible_with(newer_minor) && newer_minor.compatible_with(current));
        assert!(!current.compatible_with(next_major) && !next_major.compatible_with(current));
    }
}
