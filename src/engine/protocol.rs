//! The peer protocol's version: the one place that says which version this build speaks,
//! what changed in each version, and the rule that keeps rolling upgrades possible.
//!
//! # The rule
//!
//! Everything the nodes send each other (the hello, the heartbeat, the replication messages)
//! is JSON, and the version in [`ProtocolVersion::CURRENT`] covers all of it.
//!
//! - A **minor** bump only adds: a new field carries `#[serde(default)]` (so a message of the
//!   previous minor, which lacks it, still decodes) and nothing a node of the previous minor
//!   relies on is removed or changes meaning. No message type has `deny_unknown_fields`, so
//!   the previous minor ignores the new field in turn. Peers of the same major pair,
//!   replicate and switch over in both directions: an upgrade goes one node at a time
//!   (standby first, switchover, then the other) and never needs both nodes down.
//! - A new variant of an enum the peer decodes (a role, a check state, a replication
//!   message) is not readable by the previous minor: it needs a **major** bump, or a variant
//!   the older node already knows to fall back on.
//! - A **major** bump is for what an older node cannot read. Peers of different majors report
//!   `version_mismatch` on both sides and do not replicate, but still use each other's
//!   liveness, so they never both go active by mistake (R13).
//!
//! Each version's frames are kept in `tests/data/peer-frames/<version>/`; `tests/protocol.rs`
//! decodes every kept version of the current major with this build.
//!
//! # History
//!
//! | version | what changed |
//! |---|---|
//! | 1.0 | first release: hello, heartbeat (with `echo_delay_us` and `targets` optional), the store's replication messages |
//! | 1.1 | a SIP front end with TLS also advertises its `tls_target` in the heartbeat's `targets`, under `<name>/tls`. A 1.0 node has no front end of that name and ignores it; a 1.1 node whose active peer is 1.0 (no `<name>/tls`) sends TLS clients to `target` with `transport=tls`, as 1.0 did |
//! | 1.2 | a snapshot comes in chunks (each under the frame limit): `Snapshot` has `more` (default `false`), and the follower installs the store once the last chunk arrived. A 1.1 leader's single snapshot reads as one last chunk. An idle leader sends an empty `Append` every heartbeat interval, which the follower acknowledges, so both ends see traffic (1.1 handles it the same way). A 1.1 follower cannot install any snapshot, as before: upgrade the standby first |

use serde::{Deserialize, Serialize};
use std::fmt;

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
    pub const CURRENT: ProtocolVersion = ProtocolVersion { major: 1, minor: 2 };

    /// Whether a peer speaking `other` may replicate with us.
    pub fn compatible_with(self, other: ProtocolVersion) -> bool {
        self.major == other.major
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}
