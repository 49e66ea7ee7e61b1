//! What the two nodes tell each other: the heartbeat, and the small value types it carries.
//!
//! The heartbeat is the whole election protocol: every decision a node takes about its peer is
//! taken from the newest heartbeat it accepted. The peer link (a later layer) frames and
//! encrypts it; here it is plain data so the engine stays free of IO.

use super::protocol::ProtocolVersion;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// A node's name within the pair (`a`, `omm-1`, ...), as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(id: &str) -> Self {
        NodeId(id.to_owned())
    }
}

/// The standby state of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Just started; waits until it hears the peer or `startup_wait` passes (R1).
    Starting,
    /// Ready to take over, follows the active peer or waits to become eligible.
    Standby,
    /// Serves the clients.
    Active,
    /// Taken out of service by an operator; never eligible (R12).
    Maintenance,
    /// The local service health check fails; not eligible until it passes again.
    Failed,
}

impl Role {
    /// Lower-case name, as used in logs, the API and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Standby => "standby",
            Role::Active => "active",
            Role::Maintenance => "maintenance",
            Role::Failed => "failed",
        }
    }

    /// Every role, for metrics that export one gauge per role.
    pub const ALL: [Role; 5] = [
        Role::Starting,
        Role::Standby,
        Role::Active,
        Role::Maintenance,
        Role::Failed,
    ];
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Configured preference of a node; decides start-up, split heal ties and failback under
/// the `prefer-primary` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// The node an operator wants active when both are fine.
    Primary,
    /// The node that serves while the primary cannot.
    Secondary,
}

/// State of one eligibility check (the registrar probe, the local service health check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    /// No such check is configured: it never stands in the way.
    NotConfigured,
    /// Configured, but no result yet. Not reason enough to take over, nor to declare failure.
    Unknown,
    /// The last result (after thresholds) passed.
    Passing,
    /// The last result (after thresholds) failed.
    Failing,
}

impl CheckState {
    /// Whether this check lets the node be active.
    pub fn allows_active(self) -> bool {
        matches!(self, CheckState::NotConfigured | CheckState::Passing)
    }

    /// The state of a configured check after a result came in.
    pub fn from_result(passing: bool) -> Self {
        if passing {
            CheckState::Passing
        } else {
            CheckState::Failing
        }
    }
}

/// Everything a node tells its peer, every `heartbeat_interval` and at once on every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Protocol version of the sender.
    pub version: ProtocolVersion,
    /// Who sends it.
    pub node_id: NodeId,
    /// The sender's address; the lower one wins the `sticky` start-up tie (R3).
    pub address: IpAddr,
    /// Identifies one run of the sender's process; grows across restarts. With `seq` it orders
    /// heartbeats so a late or duplicated one never overrides a newer one.
    pub incarnation: u64,
    /// Counts heartbeats within one incarnation.
    pub seq: u64,
    /// `seq` of the heartbeat that first carried the sender's current role, checks and
    /// yielding flag; the receiver answers a new one at once.
    pub state_seq: u64,
    /// The newest heartbeat the sender has accepted from the receiver, as (incarnation,
    /// seq). A node takes part in an election only once the peer has acknowledged its
    /// current state, so neither decides on what the other has already acted against.
    pub acked: (u64, u64),
    /// Microseconds the sender held the heartbeat named in `acked` before sending this one;
    /// the receiver subtracts it to get the round trip without a shared clock.
    #[serde(default)]
    pub echo_delay_us: u64,
    /// The sender's role.
    pub role: Role,
    /// The highest term the sender knows; a takeover uses the highest known term + 1.
    pub term: u64,
    /// The sender's registrar check (the election precondition).
    pub registrar: CheckState,
    /// The sender's local service health check.
    pub service: CheckState,
    /// The sender's configured priority.
    pub priority: Priority,
    /// How far the sender's configuration store has got; failback and switchover wait until
    /// the node taking over holds every entry.
    pub store_position: u64,
    /// How long the sender has been active, in milliseconds (0 unless active); decides who
    /// stays active when a split heals (R10).
    pub active_for_ms: u64,
    /// The sender has handed the active role over (switchover, failback) and will not take it
    /// back while the receiver is eligible.
    pub yielding: bool,
    /// The sender is shutting down: the receiver treats it as gone at once (R7).
    pub leaving: bool,
    /// Where the sender's services are, by front-end name (`sip` → `sip:10.0.0.1:5070`): a
    /// node sends clients to the active node's target of the same name.
    #[serde(default)]
    pub targets: Targets,
}

/// Service targets by front-end name; sorted, so heartbeats compare and print stably.
pub type Targets = std::collections::BTreeMap<String, String>;

impl Heartbeat {
    /// The sender is starting and has no first result from a check yet, so it cannot take
    /// part in an election; the peer waits for it (at most its `startup_wait`).
    pub fn undecided(&self) -> bool {
        self.role == Role::Starting
            && (self.registrar == CheckState::Unknown || self.service == CheckState::Unknown)
    }

    /// Whether the sender may become or stay active, judging by what it reported.
    pub fn eligible(&self) -> bool {
        self.registrar.allows_active()
            && self.service.allows_active()
            && !matches!(self.role, Role::Maintenance | Role::Failed)
            && !self.leaving
    }
}
