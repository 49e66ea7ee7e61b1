//! The standby state engine: decides this node's role from what it hears, sans-IO.
//!
//! The engine owns no sockets, tasks or clock. The driver calls [`Engine::handle`] with the
//! current time and one [`Input`], then drains [`Engine::poll_output`] until it returns
//! `None`, then sleeps until [`Engine::poll_timeout`] and calls `handle(now, Input::Timeout)`.
//! Because time only comes in as an argument, every election rule is testable on a virtual
//! clock, and every fault schedule replays exactly from its seed.
//!
//! Decisions are re-derived from timestamps each time the engine runs (is the peer still in
//! contact, has `startup_wait` passed, ...); timers only say when to run again. So an extra
//! or late `Timeout` changes nothing that the state did not already imply.
//!
//! The election rules R1–R13 are those of `design.md`; each decision below names its rule.

mod message;
mod protocol;
mod timer;

pub use message::{CheckState, Heartbeat, NodeId, Priority, Role, Targets};
pub use protocol::ProtocolVersion;
pub use timer::{Timer, TimerTable};

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Who should be active when both nodes could be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Whoever is active stays active (no preemption, R8); the lower address wins ties.
    Sticky,
    /// The primary is active whenever it is eligible and caught up (failback, R9).
    PreferPrimary,
}

/// What an active node does when it loses its registrar (R7b).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRegistrarLoss {
    /// Hand over to a peer in contact that may become active (it reaches the registrar);
    /// with no such peer, stay active: a registrar nobody reaches changes nothing.
    #[default]
    HandOver,
    /// Step down at once, even with nobody to take over (the pair is then down for as long
    /// as the registrar is away).
    StepDown,
}

/// What the engine needs to know about this node and the pair. Built by the config layer.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// This node's address, compared with the peer's for the start-up tie (R3).
    pub address: IpAddr,
    /// This node's priority under `prefer-primary`.
    pub priority: Priority,
    /// The peer's id; `None` runs a single node that never sends heartbeats.
    pub peer_id: Option<NodeId>,
    /// Start-up, split heal and failback policy.
    pub policy: Policy,
    /// How often a heartbeat goes out (also at once on every change).
    pub heartbeat_interval: Duration,
    /// Silence after which the peer counts as dead (R6).
    pub peer_dead_after: Duration,
    /// How long a starting node waits for its peer before acting alone (R1, R5).
    pub startup_wait: Duration,
    /// How long the returned primary must stay eligible before the secondary hands back (R9).
    pub preempt_delay: Duration,
    /// How long a switchover waits for the peer to catch up before it gives up (R11).
    pub handover_timeout: Duration,
    /// Whether a registrar probe is configured (the election precondition).
    pub registrar_configured: bool,
    /// What an active node does when it loses its registrar (R7b).
    pub on_registrar_loss: OnRegistrarLoss,
    /// How long an active node that lost the registrar waits before handing over to a peer
    /// that still reaches it: one more probe round of the peer's (interval + timeout). The
    /// peer's prober runs out of phase with ours, so when the registrar itself fails the
    /// peer may report it lost up to one round later; handing over at once would move the
    /// role for an outage nobody can avoid (R7b).
    pub registrar_handover_delay: Duration,
    /// Whether a local service health check is configured.
    pub health_check_configured: bool,
    /// The protocol version this node speaks; tests set another to provoke R13.
    pub version: ProtocolVersion,
    /// This node's service targets, advertised in every heartbeat.
    pub targets: Targets,
}

/// One thing that happened, handed to [`Engine::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A deadline from [`Engine::poll_timeout`] may have passed.
    Timeout,
    /// The peer's heartbeat arrived.
    Heartbeat(Heartbeat),
    /// The registrar probe's state changed (after its thresholds).
    RegistrarReachable(bool),
    /// The local service health check's state changed (after its thresholds).
    ServiceHealthy(bool),
    /// The local configuration store reached this log position.
    StorePosition(u64),
    /// The local store's disk works (`false`: a commit or read failed and it waits to be
    /// reopened). A node whose store fails steps down like a failed health check (R7).
    StoreHealthy(bool),
    /// An operator asks the active node to hand over to its peer (R11).
    Switchover,
    /// An operator puts this node into maintenance or takes it out (R12).
    Maintenance(bool),
    /// The process is stopping: an active node announces it so the peer takes over (R7).
    Shutdown,
    /// The peer's process is gone (R6 without waiting for `peer_dead_after`): its host
    /// refused our connections twice, and the peer's own connection to us ended at `since`
    /// with no heartbeat after it. Ignored when a heartbeat arrived at or after `since` (the
    /// peer restarted and is talking again); a later heartbeat puts the peer back in contact.
    PeerGone {
        /// When the peer's connection to us ended.
        since: Instant,
    },
}

/// What the engine asks of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this heartbeat to the peer now.
    Send(Heartbeat),
    /// This node's role changed.
    RoleChanged(Transition),
    /// Something an operator should see in logs and metrics.
    Event(Event),
}

/// A role change and why it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Role before.
    pub from: Role,
    /// Role after.
    pub to: Role,
    /// The term after the change.
    pub term: u64,
    /// The rule that caused it.
    pub reason: Reason,
}

/// Why a role changed; each names the rule of design.md it implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// R1: the peer was heard, so start-up waiting is over.
    PeerHeard,
    /// R2/R8: the peer is active.
    PeerActive,
    /// R3: both in contact, none active; this node is the preferred eligible one.
    StartupTie,
    /// R4: the peer is not eligible and this node is.
    PeerNotEligible,
    /// R5: no peer heard within `startup_wait`.
    Alone,
    /// R6: the peer has not been heard for `peer_dead_after`.
    PeerDead,
    /// R6: the peer's process is gone (its host refuses the peer link, and its connection
    /// to us ended), so there was no need to wait for `peer_dead_after`.
    PeerGone,
    /// R7: the peer announced its failure, shutdown or maintenance.
    PeerGaveUp,
    /// R7/R9/R11/R12: the peer handed the active role over.
    PeerHandedOver,
    /// This node lost its registrar and `on_loss = "step-down"` (R7b, strict).
    NotEligible,
    /// R7b: this node lost its registrar and hands over to a peer that reaches it.
    RegistrarLostPeerHasIt,
    /// R7b: this node stepped down for a peer that reached the registrar, and the peer lost
    /// it too before taking over: nobody reaches it, so this node resumes.
    RegistrarLostByBoth,
    /// The local service health check failed.
    ServiceFailed,
    /// The local service health check passes again.
    ServiceRecovered,
    /// R7: the local store failed (a commit or read of its disk).
    StoreFailed,
    /// The local store was reopened and commits again.
    StoreRecovered,
    /// R9: the secondary hands back to the returned primary.
    Failback,
    /// R10: both were active; the peer stays.
    SplitHealLost,
    /// R11: an operator's switchover.
    Switchover,
    /// R12: maintenance on.
    MaintenanceOn,
    /// R12: maintenance off.
    MaintenanceOff,
    /// R7: this process is shutting down.
    Shutdown,
    /// Cluster mode: this member joined (its lease granted, the leader key read).
    Joined,
    /// Cluster mode: this node created the leader key.
    WonLeaderKey,
    /// Cluster mode: another node holds the leader key.
    OtherLeader,
    /// Cluster mode: the lease could not be renewed in time; stopped acting as active
    /// before it could expire.
    LeaseUnrenewed,
}

impl Reason {
    /// Short snake_case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PeerHeard => "peer_heard",
            Reason::PeerActive => "peer_active",
            Reason::StartupTie => "startup_tie",
            Reason::PeerNotEligible => "peer_not_eligible",
            Reason::Alone => "alone",
            Reason::PeerDead => "peer_dead",
            Reason::PeerGone => "peer_gone",
            Reason::PeerGaveUp => "peer_gave_up",
            Reason::PeerHandedOver => "peer_handed_over",
            Reason::NotEligible => "not_eligible",
            Reason::RegistrarLostPeerHasIt => "registrar_lost_peer_has_it",
            Reason::RegistrarLostByBoth => "registrar_lost_by_both",
            Reason::ServiceFailed => "service_failed",
            Reason::ServiceRecovered => "service_recovered",
            Reason::StoreFailed => "store_failed",
            Reason::StoreRecovered => "store_recovered",
            Reason::Failback => "failback",
            Reason::SplitHealLost => "split_heal_lost",
            Reason::Switchover => "switchover",
            Reason::MaintenanceOn => "maintenance_on",
            Reason::MaintenanceOff => "maintenance_off",
            Reason::Shutdown => "shutdown",
            Reason::Joined => "joined",
            Reason::WonLeaderKey => "won_leader_key",
            Reason::OtherLeader => "other_leader",
            Reason::LeaseUnrenewed => "lease_unrenewed",
        }
    }
}

/// Things worth a log line or a counter that are not role changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer came into contact, or was lost.
    PeerContact {
        /// In contact now.
        up: bool,
    },
    /// The No Standby warning was raised or cleared.
    NoStandby {
        /// Raised now.
        warning: bool,
    },
    /// The peer speaks another major protocol version (R13), or no longer does.
    VersionMismatch {
        /// The peer's version.
        peer: ProtocolVersion,
        /// Mismatch now.
        mismatch: bool,
    },
    /// A heartbeat was not accepted.
    HeartbeatRejected(RejectReason),
    /// A switchover started: writes are paused until it completes or fails.
    SwitchoverStarted,
    /// A switchover was not started.
    SwitchoverRefused(RefuseReason),
    /// The peer echoed one of our heartbeats: the round trip, less the time it held it.
    HeartbeatRoundTrip(Duration),
    /// A switchover started but could not complete; this node stays active.
    SwitchoverAborted(RefuseReason),
    /// R7b: active although its registrar is unreachable (no peer that reaches it to hand
    /// over to), or no longer so.
    ActiveWithoutRegistrar {
        /// Raised now.
        warning: bool,
    },
    /// The active node leaves (shutdown, maintenance) with no peer that may become active:
    /// nobody will be active.
    LeavingWithNobodyToTakeOver {
        /// Why it leaves: the reason it goes to.
        reason: Reason,
    },
}

/// Why a heartbeat was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// It carries this node's own id (a loop or a misconfigured peer).
    OwnId,
    /// It comes from a node that is not the configured peer.
    UnknownPeer,
    /// An older or duplicated heartbeat than one already accepted.
    Stale,
}

/// Why a switchover cannot start or complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// Only the active node can hand over.
    NotActive,
    /// The peer is not in contact.
    PeerNotInContact,
    /// The peer is not eligible (registrar, health, maintenance) or not a standby.
    PeerNotReady,
    /// The peer speaks another major protocol version and holds no replica.
    VersionMismatch,
    /// The peer did not catch up with the store within `handover_timeout`.
    TimedOut,
    /// This node lost the active role meanwhile.
    LostActive,
}

impl RefuseReason {
    /// Human-readable text for the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::NotActive => "this node is not active",
            RefuseReason::PeerNotInContact => "the peer is not in contact",
            RefuseReason::PeerNotReady => "the peer is not an eligible standby",
            RefuseReason::VersionMismatch => "the peer speaks another protocol major version",
            RefuseReason::TimedOut => "the peer did not catch up in time",
            RefuseReason::LostActive => "this node lost the active role",
        }
    }
}

/// A snapshot of the engine for the status API and the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub node_id: NodeId,
    /// This node's role.
    pub role: Role,
    /// Highest term known.
    pub term: u64,
    /// Who is active, as far as this node knows.
    pub active_node: Option<NodeId>,
    /// The active node's service targets (empty when nobody is active).
    pub active_targets: Targets,
    /// Active without a functioning standby.
    pub no_standby: bool,
    /// Whether this node may become active now (registrar reachable if configured, service
    /// healthy, not in maintenance or failed).
    pub eligible: bool,
    /// Active although the registrar is unreachable: no peer that reaches it (R7b).
    pub active_without_registrar: bool,
    /// Active and not in the middle of a hand-over: the store may take writes.
    pub accepting_writes: bool,
    /// A switchover or maintenance hand-over is waiting for the peer.
    pub handover_pending: bool,
    /// This node handed over and will not take back while the peer is eligible.
    pub yielding: bool,
    /// The registrar check.
    pub registrar: CheckState,
    /// The local service health check.
    pub service: CheckState,
    /// Local store position.
    pub store_position: u64,
    /// The local store failed and waits to be reopened: the node is `failed` meanwhile.
    pub store_failed: bool,
    /// How long this node has been active.
    pub active_for: Option<Duration>,
    /// What is known of the peer, once heard.
    pub peer: Option<PeerStatus>,
}

/// What this node knows of its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's id.
    pub id: NodeId,
    /// The peer's address.
    pub address: IpAddr,
    /// Heard within `peer_dead_after` and not leaving.
    pub contact: bool,
    /// The peer's role in its last heartbeat.
    pub role: Role,
    /// The peer's term in its last heartbeat.
    pub term: u64,
    /// Time since the last accepted heartbeat.
    pub last_seen: Duration,
    /// The peer's protocol version.
    pub version: ProtocolVersion,
    /// Different major version (R13).
    pub version_mismatch: bool,
    /// Whether the peer reported itself eligible.
    pub eligible: bool,
    /// The peer's registrar check.
    pub registrar: CheckState,
    /// The peer's store position.
    pub store_position: u64,
}

/// Counters for metrics; the IO layer exports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Inputs handled.
    pub inputs: u64,
    /// Heartbeats emitted.
    pub heartbeats_sent: u64,
    /// Heartbeats accepted.
    pub heartbeats_received: u64,
    /// Heartbeats rejected (stale, duplicated, foreign).
    pub heartbeats_rejected: u64,
    /// Role changes.
    pub transitions: u64,
}

/// The newest accepted heartbeat and when it arrived.
#[derive(Debug, Clone)]
struct PeerView {
    heartbeat: Heartbeat,
    received_at: Instant,
    /// Its process is gone (`Input::PeerGone`); the next heartbeat replaces this view.
    gone: bool,
}

/// How many sent heartbeats are remembered for round-trip measurement.
const SENT_TIMES: usize = 16;

/// The part of a heartbeat the peer's decisions depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SentState {
    role: Role,
    registrar: CheckState,
    service: CheckState,
    yielding: bool,
    leaving: bool,
}

/// A switchover or maintenance hand-over in progress (R11, R12).
#[derive(Debug, Clone, Copy)]
struct Handover {
    /// Give up waiting for the peer at this time.
    deadline: Instant,
    /// The role this node takes once the peer has everything.
    then: Role,
    /// Why, for a hand-over that ends in standby: an operator's switchover (R11) or a
    /// registrar this node lost and the peer reaches (R7b).
    reason: Reason,
}

/// The standby state engine of one node. See the module docs for how to drive it.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    /// This run of the process; grows across restarts (the driver derives it from wall time).
    incarnation: u64,
    /// Sequence number of the last heartbeat sent.
    seq: u64,
    /// What the peer decides on, as last sent; a change is sent at once.
    sent_state: Option<SentState>,
    /// `seq` of the heartbeat that first carried the current state.
    state_seq: u64,
    /// When the current state was first sent.
    state_changed_at: Instant,
    /// The peer's state changed: answer with a heartbeat at once (it carries our ack).
    reply_due: bool,
    /// When our recent heartbeats went out, by seq, to measure the round trip when the peer
    /// echoes one. Bounded: only the newest few can still be echoed.
    sent_times: VecDeque<(u64, Instant)>,
    role: Role,
    /// Highest term known; only grows.
    term: u64,
    started_at: Instant,
    /// When this node last became active.
    active_since: Option<Instant>,
    registrar: CheckState,
    service: CheckState,
    store_position: u64,
    /// The local store failed (R7, like a failed health check).
    store_failed: bool,
    /// Why the node is `failed`: the service or the store.
    failed_for: Reason,
    peer: Option<PeerView>,
    /// Contact as of the last evaluation, to report changes once.
    peer_contact: bool,
    /// Handed over voluntarily; do not take back while the peer is eligible.
    yielding: bool,
    handover: Option<Handover>,
    /// Both active and in contact since this time (R10).
    dual_active_since: Option<Instant>,
    /// The primary has been ready for failback since this time (R9).
    preempt_since: Option<Instant>,
    no_standby: bool,
    /// Active without its registrar (R7b), as last reported.
    active_without_registrar: bool,
    /// Active and without the registrar since this time (R7b).
    registrar_lost_since: Option<Instant>,
    /// The peer has reported the registrar reachable since this time, without a break.
    peer_registrar_since: Option<Instant>,
    /// The peer's store position when a registrar hand-over last timed out: the next try
    /// waits until it has moved (a wedged replication would otherwise pause writes again
    /// and again).
    registrar_handover_failed_at: Option<u64>,
    /// Left the active role because the peer reached the registrar and this node did not
    /// (R7b hand-over, or a split heal decided by the registrar). Should the peer lose it
    /// too before anyone is active again, this node resumes.
    stepped_down_for_registrar: bool,
    version_mismatch: bool,
    /// Shutting down: the next heartbeats say so, and the engine takes no more input.
    leaving: bool,
    timers: TimerTable,
    outputs: VecDeque<Output>,
    stats: Stats,
}

impl Engine {
    /// A node that starts now, in `starting` (R1). `incarnation` must grow across restarts of
    /// this node; `term` is the highest term the node knew before (persisted), or 0.
    pub fn new(config: EngineConfig, now: Instant, incarnation: u64, term: u64) -> Self {
        let registrar = if config.registrar_configured {
            CheckState::Unknown
        } else {
            CheckState::NotConfigured
        };
        let service = if config.health_check_configured {
            CheckState::Unknown
        } else {
            CheckState::NotConfigured
        };
        let mut engine = Engine {
            config,
            incarnation,
            seq: 0,
            sent_state: None,
            state_seq: 0,
            state_changed_at: now,
            reply_due: false,
            sent_times: VecDeque::with_capacity(SENT_TIMES),
            role: Role::Starting,
            term,
            started_at: now,
            active_since: None,
            registrar,
            service,
            store_position: 0,
            store_failed: false,
            failed_for: Reason::ServiceFailed,
            peer: None,
            peer_contact: false,
            yielding: false,
            handover: None,
            dual_active_since: None,
            preempt_since: None,
            no_standby: false,
            active_without_registrar: false,
            registrar_lost_since: None,
            peer_registrar_since: None,
            stepped_down_for_registrar: false,
            registrar_handover_failed_at: None,
            version_mismatch: false,
            leaving: false,
            timers: TimerTable::default(),
            outputs: VecDeque::new(),
            stats: Stats::default(),
        };
        engine.send_heartbeat(now);
        engine.arm_timers(now);
        engine
    }

    /// Feeds one input at time `now`. Afterwards drain [`Engine::poll_output`].
    pub fn handle(&mut self, now: Instant, input: Input) {
        if self.leaving {
            return;
        }
        self.stats.inputs += 1;
        match input {
            Input::Timeout => {}
            Input::Heartbeat(heartbeat) => self.receive(now, heartbeat),
            Input::RegistrarReachable(reachable) => {
                if self.config.registrar_configured {
                    self.registrar = CheckState::from_result(reachable);
                }
            }
            Input::ServiceHealthy(healthy) => {
                if self.config.health_check_configured {
                    self.service = CheckState::from_result(healthy);
                }
            }
            Input::StorePosition(position) => self.store_position = position,
            Input::StoreHealthy(healthy) => self.store_failed = !healthy,
            Input::Switchover => self.begin_handover(now, Role::Standby),
            Input::Maintenance(true) => self.begin_handover(now, Role::Maintenance),
            Input::Maintenance(false) => self.end_maintenance(now),
            Input::Shutdown => {
                self.shutdown(now);
                return;
            }
            Input::PeerGone { since } => self.peer_gone(since),
        }
        self.evaluate(now);
        // A changed state goes out at once, as does the answer to the peer's changed state;
        // otherwise heartbeats keep their interval.
        if self.timers.is_due(Timer::Heartbeat, now)
            || self.reply_due
            || self.sent_state != Some(self.current_state())
        {
            self.send_heartbeat(now);
        }
        self.arm_timers(now);
    }

    /// The next thing the driver must do, if any. Drain until `None` after every `handle`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When to call `handle(now, Input::Timeout)` next; `None` once shut down.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// This node's role.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// Highest term known; the driver persists it so a restart never goes back.
    #[must_use]
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Whether this node may *become* active now: registrar reachable (if configured),
    /// service healthy (if configured), not in maintenance or failed.
    #[must_use]
    pub fn eligible(&self) -> bool {
        self.registrar.allows_active() && self.may_stay_active_but_for_the_registrar()
    }

    /// Whether this node may *stay* active (R7b): what [`Engine::eligible`] asks except the
    /// registrar, which under `on_loss = "hand-over"` only moves the role to a peer that
    /// reaches it (and under `step-down` is required as for becoming active).
    #[must_use]
    pub fn may_stay_active(&self, now: Instant) -> bool {
        match self.config.on_registrar_loss {
            OnRegistrarLoss::StepDown => self.eligible(),
            OnRegistrarLoss::HandOver => {
                self.may_stay_active_but_for_the_registrar()
                    && (self.registrar.allows_active()
                        || self.handover.is_some()
                        || !self.registrar_handover_due(now))
            }
        }
    }

    fn may_stay_active_but_for_the_registrar(&self) -> bool {
        self.service.allows_active()
            && !self.store_failed
            && !matches!(self.role, Role::Maintenance | Role::Failed)
    }

    /// Whether every configured check has reported at least once.
    fn checks_known(&self) -> bool {
        self.registrar != CheckState::Unknown && self.service != CheckState::Unknown
    }

    /// Whether the store may accept writes now (active and not handing over).
    #[must_use]
    pub fn accepting_writes(&self) -> bool {
        self.role == Role::Active && self.handover.is_none()
    }

    /// Whether the peer may replicate with this node (same protocol major version).
    #[must_use]
    pub fn replication_allowed(&self) -> bool {
        self.peer.is_some() && !self.version_mismatch
    }

    /// Counters since start.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// A snapshot for the status API.
    #[must_use]
    pub fn status(&self, now: Instant) -> Status {
        let contact = self.peer_in_contact(now);
        let peer = self.peer.as_ref().map(|view| PeerStatus {
            id: view.heartbeat.node_id.clone(),
            address: view.heartbeat.address,
            contact,
            role: view.heartbeat.role,
            term: view.heartbeat.term,
            last_seen: now.saturating_duration_since(view.received_at),
            version: view.heartbeat.version,
            version_mismatch: self.version_mismatch,
            eligible: view.heartbeat.eligible(),
            registrar: view.heartbeat.registrar,
            store_position: view.heartbeat.store_position,
        });
        let (active_node, active_targets) = if self.role == Role::Active {
            (
                Some(self.config.node_id.clone()),
                self.config.targets.clone(),
            )
        } else {
            self.peer
                .as_ref()
                .filter(|view| contact && view.heartbeat.role == Role::Active)
                .map_or((None, Targets::new()), |view| {
                    (
                        Some(view.heartbeat.node_id.clone()),
                        view.heartbeat.targets.clone(),
                    )
                })
        };
        Status {
            node_id: self.config.node_id.clone(),
            role: self.role,
            term: self.term,
            active_node,
            active_targets,
            no_standby: self.no_standby,
            eligible: self.eligible(),
            active_without_registrar: self.active_without_registrar,
            accepting_writes: self.accepting_writes(),
            handover_pending: self.handover.is_some(),
            yielding: self.yielding,
            registrar: self.registrar,
            service: self.service,
            store_position: self.store_position,
            store_failed: self.store_failed,
            active_for: self
                .active_since
                .map(|since| now.saturating_duration_since(since)),
            peer,
        }
    }

    /// Accepts the peer's heartbeat if it is newer than the last one.
    fn receive(&mut self, now: Instant, heartbeat: Heartbeat) {
        let reject = if heartbeat.node_id == self.config.node_id {
            Some(RejectReason::OwnId)
        } else if self.config.peer_id.as_ref() != Some(&heartbeat.node_id) {
            Some(RejectReason::UnknownPeer)
        } else if let Some(view) = &self.peer {
            let last = (view.heartbeat.incarnation, view.heartbeat.seq);
            let newer = (heartbeat.incarnation, heartbeat.seq) > last;
            // A restarted peer whose clock went back has a lower incarnation; accept it once
            // the old incarnation is out of contact, never while it is still talking.
            let restarted = heartbeat.incarnation != last.0 && !self.peer_in_contact(now);
            (!newer && !restarted).then_some(RejectReason::Stale)
        } else {
            None
        };
        if let Some(reason) = reject {
            self.stats.heartbeats_rejected += 1;
            // Duplicates and reordering are normal on a lossy link; only report the rest.
            if reason != RejectReason::Stale {
                self.outputs
                    .push_back(Output::Event(Event::HeartbeatRejected(reason)));
            }
            return;
        }
        self.stats.heartbeats_received += 1;
        let state_changed = self.peer.as_ref().is_none_or(|view| {
            (view.heartbeat.incarnation, view.heartbeat.state_seq)
                != (heartbeat.incarnation, heartbeat.state_seq)
        });
        self.reply_due |= state_changed && self.config.peer_id.is_some();
        let mismatch = !self.config.version.compatible_with(heartbeat.version);
        if mismatch != self.version_mismatch {
            self.version_mismatch = mismatch;
            self.outputs
                .push_back(Output::Event(Event::VersionMismatch {
                    peer: heartbeat.version,
                    mismatch,
                }));
        }
        self.term = self.term.max(heartbeat.term);
        if heartbeat.acked.0 == self.incarnation {
            let echoed = heartbeat.acked.1;
            if let Some(index) = self.sent_times.iter().position(|(seq, _)| *seq == echoed) {
                let (_, sent_at) = self.sent_times[index];
                // Each heartbeat is measured once; older ones can no longer be echoed.
                self.sent_times.drain(..=index);
                let held = Duration::from_micros(heartbeat.echo_delay_us);
                let round_trip = now.saturating_duration_since(sent_at).saturating_sub(held);
                self.outputs
                    .push_back(Output::Event(Event::HeartbeatRoundTrip(round_trip)));
            }
        }
        if heartbeat.registrar.allows_active() {
            self.peer_registrar_since.get_or_insert(now);
        } else {
            self.peer_registrar_since = None;
        }
        self.peer = Some(PeerView {
            heartbeat,
            received_at: now,
            gone: false,
        });
    }

    /// The link saw the peer's process go at `since`; stale when a heartbeat came after.
    fn peer_gone(&mut self, since: Instant) {
        if let Some(view) = self.peer.as_mut().filter(|v| v.received_at < since) {
            view.gone = true;
        }
    }

    /// Heard within `peer_dead_after`, not announced as leaving, and its process not gone.
    fn peer_in_contact(&self, now: Instant) -> bool {
        self.peer.as_ref().is_some_and(|view| {
            !view.heartbeat.leaving
                && !view.gone
                && now < view.received_at + self.config.peer_dead_after
        })
    }

    /// Applies the election rules to the current state.
    fn evaluate(&mut self, now: Instant) {
        let contact = self.peer_in_contact(now);
        if contact != self.peer_contact {
            self.peer_contact = contact;
            self.outputs
                .push_back(Output::Event(Event::PeerContact { up: contact }));
            if !contact {
                // Nobody to yield to, to fail back to, or to resolve a split with.
                self.yielding = false;
                self.stepped_down_for_registrar = false;
                self.preempt_since = None;
                self.dual_active_since = None;
            }
        }

        if self.role == Role::Maintenance {
            self.update_warnings(now);
            return;
        }
        if self.service == CheckState::Failing || self.store_failed {
            self.handover = None;
            // R7: the transition sends a heartbeat saying `failed`; the peer takes over at once.
            if self.role != Role::Failed {
                self.failed_for = if self.store_failed {
                    Reason::StoreFailed
                } else {
                    Reason::ServiceFailed
                };
            }
            self.become_role(now, Role::Failed, self.failed_for);
            self.update_warnings(now);
            return;
        }
        if self.role == Role::Failed {
            let recovered = match self.failed_for {
                Reason::StoreFailed => Reason::StoreRecovered,
                _ => Reason::ServiceRecovered,
            };
            self.become_role(now, Role::Standby, recovered);
        }
        if self.handover.is_some() {
            self.progress_handover(now);
        }
        if self.role == Role::Maintenance {
            self.update_warnings(now);
            return;
        }

        if self.role == Role::Active && !self.registrar.allows_active() {
            self.registrar_lost_since.get_or_insert(now);
            self.registrar_lost(now);
        }
        if self.role != Role::Active || self.registrar.allows_active() {
            self.registrar_lost_since = None;
            self.registrar_handover_failed_at = None;
        }
        let eligible = self.eligible();

        if contact {
            self.evaluate_with_peer(now, eligible);
        } else {
            match self.role {
                // R1: keep waiting for the peer until `startup_wait` has passed.
                Role::Starting if now < self.started_at + self.config.startup_wait => {}
                // R5: alone after `startup_wait`.
                Role::Starting => {
                    let to = if eligible {
                        Role::Active
                    } else {
                        Role::Standby
                    };
                    self.become_role(now, to, Reason::Alone);
                }
                // R6 (or R5 for a node that never heard its peer): take over if eligible,
                // otherwise keep waiting; every probe result re-runs this.
                Role::Standby if eligible => {
                    let reason = match &self.peer {
                        Some(view) if view.heartbeat.leaving => Reason::PeerGaveUp,
                        Some(view) if view.gone => Reason::PeerGone,
                        Some(_) => Reason::PeerDead,
                        None => Reason::Alone,
                    };
                    self.become_role(now, Role::Active, reason);
                }
                _ => {}
            }
        }
        self.update_warnings(now);
    }

    /// R7b: active without the registrar. Strict (`step-down`): step down. Otherwise hand
    /// over to a peer that reaches it and holds every store entry, announced like R7 (the
    /// peer takes over on the next heartbeat); with no such peer, stay active.
    fn registrar_lost(&mut self, now: Instant) {
        match self.config.on_registrar_loss {
            OnRegistrarLoss::StepDown => {
                // An operator's maintenance request still ends in maintenance.
                let then = match self.handover.take() {
                    Some(handover) if handover.then == Role::Maintenance => {
                        (Role::Maintenance, Reason::MaintenanceOn)
                    }
                    _ => (Role::Standby, Reason::NotEligible),
                };
                self.become_role(now, then.0, then.1);
            }
            OnRegistrarLoss::HandOver => {
                if self.handover.is_none() && self.registrar_handover_due(now) {
                    // As a switchover (R11): writes pause until the peer holds every entry,
                    // then this node yields; it does not take the role back while the peer
                    // stays eligible.
                    self.handover = Some(Handover {
                        deadline: now + self.config.handover_timeout,
                        then: Role::Standby,
                        reason: Reason::RegistrarLostPeerHasIt,
                    });
                    self.progress_handover(now);
                }
            }
        }
    }

    /// Whether this node has a peer to hand over to, and has been without the registrar
    /// while the peer reached it for `registrar_handover_delay`: long enough for both
    /// probers to have seen an outage (or a return) of the registrar itself.
    fn registrar_handover_due(&self, now: Instant) -> bool {
        self.registrar_handover_at().is_some_and(|at| now >= at)
            && self.registrar_handover_peer(now).is_some_and(|peer| {
                self.registrar_handover_failed_at
                    .is_none_or(|position| peer.store_position > position)
            })
    }

    /// When a hand-over for the registrar falls due, as things stand.
    fn registrar_handover_at(&self) -> Option<Instant> {
        let lost = self.registrar_lost_since?;
        let peer_has_it = self.peer_registrar_since?;
        Some(lost.max(peer_has_it) + self.config.registrar_handover_delay)
    }

    /// A peer this node would hand over to because it reaches the registrar: in contact, a
    /// standby (or starting) that may become active, same major version. The hand-over
    /// itself waits until it holds every store entry.
    fn registrar_handover_peer(&self, now: Instant) -> Option<&Heartbeat> {
        self.peer_ready_for_handover(now)
            .ok()
            .filter(|peer| peer.registrar.allows_active())
    }

    /// The rules that apply while the peer is in contact.
    fn evaluate_with_peer(&mut self, now: Instant, eligible: bool) {
        let Some(view) = &self.peer else { return };
        let peer = &view.heartbeat;
        if peer.role == Role::Active {
            self.preempt_since = None;
            self.yielding = false;
            // Only an active peer that has seen this node's current state: an older
            // heartbeat may predate this node's stepping down.
            if self.role != Role::Active && peer.acked >= (self.incarnation, self.state_seq) {
                self.stepped_down_for_registrar = false;
            }
            match self.role {
                Role::Active => self.resolve_split(now),
                // R2 (and R8: a returning node follows, whatever its priority).
                Role::Starting | Role::Standby => {
                    self.dual_active_since = None;
                    self.become_role(now, Role::Standby, Reason::PeerActive);
                }
                Role::Maintenance | Role::Failed => {}
            }
            return;
        }
        self.dual_active_since = None;
        match self.role {
            Role::Active => self.consider_failback(now),
            Role::Starting | Role::Standby => {
                // R1: nobody elects before both know their own eligibility, or the outcome
                // would depend on which probe answered first rather than on R3.
                let own_checks_pending = self.role == Role::Starting
                    && !self.checks_known()
                    && now < self.started_at + self.config.startup_wait;
                // The peer must have seen our current state before either of us decides.
                // A peer that has not answered for `peer_dead_after` may not hear us at all
                // (one-way link); then waiting longer would leave nobody active.
                let unsent = self.sent_state != Some(self.current_state());
                let unacknowledged = unsent
                    || (peer.acked < (self.incarnation, self.state_seq)
                        && now < self.state_changed_at + self.config.peer_dead_after);
                if own_checks_pending || peer.undecided() || unacknowledged {
                    return;
                }
                if let Some(reason) = self.election_win(peer, eligible) {
                    self.become_role(now, Role::Active, reason);
                } else if self.role == Role::Starting {
                    self.become_role(now, Role::Standby, Reason::PeerHeard);
                }
            }
            Role::Maintenance | Role::Failed => {}
        }
    }

    /// R3/R4 with nobody active: whether this node should become active, and why. Both
    /// nodes apply the same rule to the same facts, so they agree without another round.
    fn election_win(&self, peer: &Heartbeat, eligible: bool) -> Option<Reason> {
        if !eligible {
            // R7b: the role moved away for a registrar that the peer no longer reaches
            // either; the one node that moved it takes it back.
            let resume = self.stepped_down_for_registrar
                && !self.registrar.allows_active()
                && self.may_stay_active_but_for_the_registrar()
                && !peer.eligible();
            return resume.then_some(Reason::RegistrarLostByBoth);
        }
        if !peer.eligible() {
            // R4 (and R7: a peer that announced failure or maintenance is not eligible).
            let announced = matches!(peer.role, Role::Failed | Role::Maintenance);
            return Some(if announced {
                Reason::PeerGaveUp
            } else {
                Reason::PeerNotEligible
            });
        }
        // Whoever handed the active role over does not take it back (R9, R11).
        if peer.yielding != self.yielding {
            return peer.yielding.then_some(Reason::PeerHandedOver);
        }
        self.preferred_over(peer).then_some(Reason::StartupTie)
    }

    /// The fixed tie rule (R3): `prefer-primary` picks the primary, otherwise (and between
    /// equal priorities) the lower address, then the lower id.
    fn preferred_over(&self, peer: &Heartbeat) -> bool {
        if self.config.policy == Policy::PreferPrimary && self.config.priority != peer.priority {
            return self.config.priority == Priority::Primary;
        }
        (self.config.address, &self.config.node_id) < (peer.address, &peer.node_id)
    }

    /// R10: both active and in contact. The node active longer stays; within one heartbeat
    /// interval it is a tie, broken by R3's rule. If the two sides misjudge each other's
    /// durations near the edge of that band and both stay, the fixed rule decides after two
    /// more heartbeats, so a split always heals to exactly one.
    fn resolve_split(&mut self, now: Instant) {
        let Some(view) = &self.peer else { return };
        let peer = &view.heartbeat;
        let interval = self.config.heartbeat_interval;
        let since = *self.dual_active_since.get_or_insert(now);
        let (mine_reaches, theirs_reaches) = (
            self.registrar.allows_active(),
            peer.registrar.allows_active(),
        );
        let stays = if mine_reaches != theirs_reaches {
            // R7b: the one that reaches the registrar stays (the other would hand over to
            // it at once anyway). Both see the same two facts, so they agree.
            mine_reaches
        } else if now >= since + 2 * interval {
            self.preferred_over(peer)
        } else {
            let mine = self
                .active_since
                .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
            let theirs = Duration::from_millis(peer.active_for_ms)
                + now.saturating_duration_since(view.received_at);
            if mine > theirs + interval {
                true
            } else if theirs > mine + interval {
                false
            } else {
                self.preferred_over(peer)
            }
        };
        if !stays {
            self.dual_active_since = None;
            self.become_role(now, Role::Standby, Reason::SplitHealLost);
            // Decided on the peer's last word about its registrar, which may be stale: if
            // the peer turns out not to reach it either, this node resumes.
            self.stepped_down_for_registrar = mine_reaches != theirs_reaches;
        }
    }

    /// R9: under `prefer-primary`, the active secondary hands back to a primary that is an
    /// eligible standby holding every store entry, once it has been so for `preempt_delay`.
    fn consider_failback(&mut self, now: Instant) {
        let Some(view) = &self.peer else { return };
        let peer = &view.heartbeat;
        let wanted = self.config.policy == Policy::PreferPrimary
            && self.config.priority == Priority::Secondary
            && peer.priority == Priority::Primary
            && peer.role == Role::Standby
            && peer.eligible()
            && !self.version_mismatch
            && peer.store_position >= self.store_position
            && self.handover.is_none();
        if !wanted {
            self.preempt_since = None;
            return;
        }
        let since = *self.preempt_since.get_or_insert(now);
        if now >= since + self.config.preempt_delay {
            self.preempt_since = None;
            self.yielding = true;
            self.become_role(now, Role::Standby, Reason::Failback);
        }
    }

    /// R11/R12: start handing over to the peer, ending in `then` (standby or maintenance).
    fn begin_handover(&mut self, now: Instant, then: Role) {
        if self.role != Role::Active {
            if then == Role::Maintenance {
                self.become_role(now, Role::Maintenance, Reason::MaintenanceOn);
            } else {
                self.outputs
                    .push_back(Output::Event(Event::SwitchoverRefused(
                        RefuseReason::NotActive,
                    )));
            }
            return;
        }
        if let Some(handover) = &mut self.handover {
            // A maintenance request during a switchover only changes where it ends; an
            // operator's switchover during a registrar hand-over makes it the operator's.
            if then == Role::Maintenance {
                handover.then = then;
            } else {
                handover.reason = Reason::Switchover;
            }
            return;
        }
        if let Err(reason) = self.peer_ready_for_handover(now) {
            if then == Role::Maintenance {
                // Nobody to hand to; the operator asked for maintenance all the same.
                self.warn_if_nobody_takes_over(now, Reason::MaintenanceOn);
                self.become_role(now, Role::Maintenance, Reason::MaintenanceOn);
            } else {
                self.outputs
                    .push_back(Output::Event(Event::SwitchoverRefused(reason)));
            }
            return;
        }
        self.handover = Some(Handover {
            deadline: now + self.config.handover_timeout,
            then,
            reason: Reason::Switchover,
        });
        self.outputs
            .push_back(Output::Event(Event::SwitchoverStarted));
    }

    /// Whether the peer can take over now: in contact, an eligible standby, same major version.
    fn peer_ready_for_handover(&self, now: Instant) -> Result<&Heartbeat, RefuseReason> {
        let view = match &self.peer {
            Some(view) if self.peer_in_contact(now) => view,
            _ => return Err(RefuseReason::PeerNotInContact),
        };
        if self.version_mismatch {
            return Err(RefuseReason::VersionMismatch);
        }
        let peer = &view.heartbeat;
        if !(peer.eligible() && matches!(peer.role, Role::Standby | Role::Starting)) {
            return Err(RefuseReason::PeerNotReady);
        }
        Ok(peer)
    }

    /// R11: writes are paused; hand over as soon as the peer holds every entry.
    fn progress_handover(&mut self, now: Instant) {
        let Some(handover) = self.handover else {
            return;
        };
        if handover.reason == Reason::RegistrarLostPeerHasIt
            && handover.then == Role::Standby
            && self.registrar.allows_active()
        {
            // The registrar is back before the peer caught up: nothing left to hand over for.
            self.handover = None;
            return;
        }
        let outcome = if self.role != Role::Active {
            Err(RefuseReason::LostActive)
        } else {
            match self.peer_ready_for_handover(now) {
                Ok(peer) if peer.store_position >= self.store_position => Ok(()),
                Ok(_) if now >= handover.deadline => Err(RefuseReason::TimedOut),
                Ok(_) => return,
                Err(reason) => Err(reason),
            }
        };
        self.handover = None;
        match (outcome, handover.then) {
            (Ok(()), Role::Maintenance) => {
                self.become_role(now, Role::Maintenance, Reason::MaintenanceOn)
            }
            (Ok(()), _) => {
                self.yielding = true;
                self.become_role(now, Role::Standby, handover.reason);
                // Should the peer lose the registrar too before it takes over, this node
                // resumes (R7b: a registrar nobody reaches changes nothing).
                self.stepped_down_for_registrar = handover.reason == Reason::RegistrarLostPeerHasIt;
            }
            // Maintenance was asked for; it happens even if nobody could take over cleanly.
            (Err(_), Role::Maintenance) if self.role != Role::Maintenance => {
                self.become_role(now, Role::Maintenance, Reason::MaintenanceOn)
            }
            (Err(reason), _) => {
                if !self.registrar.allows_active() {
                    // A registrar hand-over is tried again only after another delay and once
                    // the peer's store has moved, not at once with writes paused again.
                    self.registrar_lost_since = Some(now);
                    self.registrar_handover_failed_at =
                        self.peer.as_ref().map(|view| view.heartbeat.store_position);
                }
                self.outputs
                    .push_back(Output::Event(Event::SwitchoverAborted(reason)))
            }
        }
    }

    /// Maintenance off: back to standby, from where the election rules continue.
    fn end_maintenance(&mut self, now: Instant) {
        if let Some(handover) = &self.handover {
            if handover.then == Role::Maintenance {
                self.handover = None;
            }
        }
        if self.role == Role::Maintenance {
            self.become_role(now, Role::Standby, Reason::MaintenanceOff);
        }
    }

    /// R7: tell the peer this node is leaving (it takes over at once), then take no more input.
    fn shutdown(&mut self, now: Instant) {
        if self.role == Role::Active {
            self.warn_if_nobody_takes_over(now, Reason::Shutdown);
        }
        self.leaving = true;
        self.handover = None;
        if self.role == Role::Active {
            self.become_role(now, Role::Standby, Reason::Shutdown);
        } else {
            self.send_heartbeat(now);
        }
        self.timers = TimerTable::default();
        self.update_warnings(now);
    }

    /// Before an active node leaves: says so loudly if no peer may become active after it.
    fn warn_if_nobody_takes_over(&mut self, now: Instant, reason: Reason) {
        let peer_may_take_over = self.peer_in_contact(now)
            && !self.version_mismatch
            && self.peer.as_ref().is_some_and(|view| {
                view.heartbeat.eligible()
                    && matches!(view.heartbeat.role, Role::Standby | Role::Starting)
            });
        if !peer_may_take_over {
            self.outputs
                .push_back(Output::Event(Event::LeavingWithNobodyToTakeOver { reason }));
        }
    }

    /// Changes role, tells the peer at once, and reports the change.
    fn become_role(&mut self, now: Instant, to: Role, reason: Reason) {
        let from = self.role;
        if from == to {
            return;
        }
        self.role = to;
        self.stepped_down_for_registrar = false;
        if to == Role::Active {
            // Every takeover starts a new term above any seen. At the top of the range (only
            // a broken or hostile peer gets there) it stays there rather than wrap to 0,
            // which would send terms back.
            self.term = self.term.saturating_add(1);
            self.active_since = Some(now);
            self.yielding = false;
        } else {
            self.active_since = None;
        }
        self.stats.transitions += 1;
        // The peer hears of the change before anything else happens (R7).
        self.send_heartbeat(now);
        self.outputs.push_back(Output::RoleChanged(Transition {
            from,
            to,
            term: self.term,
            reason,
        }));
    }

    /// Recomputes the No Standby warning and reports a change.
    fn update_warnings(&mut self, now: Instant) {
        let functioning_standby = self.peer_in_contact(now)
            && !self.version_mismatch
            // A starting peer in contact that is eligible is about to follow: warning about
            // it would only flicker at every start-up.
            && self.peer.as_ref().is_some_and(|view| {
                matches!(view.heartbeat.role, Role::Standby | Role::Starting)
                    && view.heartbeat.eligible()
            });
        let no_standby = self.role == Role::Active && !functioning_standby;
        if no_standby != self.no_standby {
            self.no_standby = no_standby;
            self.outputs.push_back(Output::Event(Event::NoStandby {
                warning: no_standby,
            }));
        }
        // A hand-over that waits out `registrar_handover_delay` is not worth a warning.
        let without_registrar = self.role == Role::Active
            && !self.registrar.allows_active()
            && (self.registrar_handover_peer(now).is_none()
                || self.registrar_handover_failed_at.is_some());
        if without_registrar != self.active_without_registrar {
            self.active_without_registrar = without_registrar;
            self.outputs
                .push_back(Output::Event(Event::ActiveWithoutRegistrar {
                    warning: without_registrar,
                }));
        }
    }

    fn current_state(&self) -> SentState {
        SentState {
            role: self.role,
            registrar: self.registrar,
            service: self.service,
            yielding: self.yielding,
            leaving: self.leaving,
        }
    }

    /// Emits a heartbeat (if there is a peer) and schedules the next one.
    fn send_heartbeat(&mut self, now: Instant) {
        if self.config.peer_id.is_none() {
            return;
        }
        self.seq += 1;
        self.stats.heartbeats_sent += 1;
        self.reply_due = false;
        let state = self.current_state();
        if self.sent_state != Some(state) {
            self.sent_state = Some(state);
            self.state_seq = self.seq;
            self.state_changed_at = now;
        }
        let acked = self.peer.as_ref().map_or((0, 0), |view| {
            (view.heartbeat.incarnation, view.heartbeat.seq)
        });
        let echo_delay_us = self.peer.as_ref().map_or(0, |view| {
            u64::try_from(now.saturating_duration_since(view.received_at).as_micros())
                .unwrap_or(u64::MAX)
        });
        if self.sent_times.len() == SENT_TIMES {
            self.sent_times.pop_front();
        }
        self.sent_times.push_back((self.seq, now));
        let heartbeat = Heartbeat {
            version: self.config.version,
            node_id: self.config.node_id.clone(),
            address: self.config.address,
            incarnation: self.incarnation,
            seq: self.seq,
            state_seq: self.state_seq,
            acked,
            echo_delay_us,
            role: self.role,
            term: self.term,
            registrar: self.registrar,
            service: self.service,
            priority: self.config.priority,
            store_position: self.store_position,
            active_for_ms: self.active_since.map_or(0, |since| {
                u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX)
            }),
            yielding: self.yielding,
            leaving: self.leaving,
            targets: self.config.targets.clone(),
        };
        self.outputs.push_back(Output::Send(heartbeat));
        self.timers
            .set(Timer::Heartbeat, now + self.config.heartbeat_interval);
    }

    /// Derives every deadline from the state, so no timer can be forgotten or left stale.
    /// Deadlines at or before `now` were just acted on by `evaluate` and are not re-armed.
    fn arm_timers(&mut self, now: Instant) {
        let peer_dead = self
            .peer
            .as_ref()
            .filter(|_| self.peer_contact)
            .map(|view| view.received_at + self.config.peer_dead_after);
        let startup =
            (self.role == Role::Starting).then(|| self.started_at + self.config.startup_wait);
        let preempt = self.preempt_since.map(|at| at + self.config.preempt_delay);
        let split = self
            .dual_active_since
            .map(|at| at + 2 * self.config.heartbeat_interval);
        let handover = self.handover.map(|handover| handover.deadline);
        let registrar_handover = self.registrar_handover_at();
        let ack = Some(self.state_changed_at + self.config.peer_dead_after);
        for (timer, at) in [
            (Timer::PeerDead, peer_dead),
            (Timer::StartupWait, startup),
            (Timer::PreemptDelay, preempt),
            (Timer::SplitHealFallback, split),
            (Timer::HandoverTimeout, handover),
            (Timer::PeerAck, ack),
            (Timer::RegistrarHandover, registrar_handover),
        ] {
            match at {
                Some(at) if at > now => self.timers.set(timer, at),
                _ => self.timers.stop(timer),
            }
        }
    }
}
