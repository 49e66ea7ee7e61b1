//! The task that owns the engine.
//!
//! It waits for whichever comes first: the engine's next deadline, a heartbeat from the peer
//! link, a health check flip, a registrar flip, an admin request, a new store position, or
//! shutdown. It feeds that in with the current time and carries out every output in order:
//! heartbeats go to the peer link (newest only), role changes are logged, published to the
//! [`ActiveView`](crate::view::ActiveView) and handed to the hooks, events are logged and
//! counted.

use super::RunSummary;
use crate::admin::{AdminRequest, TransitionReport};
use crate::config::Config;
use crate::engine::{Engine, Event, Heartbeat, Input, Output, Role, Status, Transition};
use crate::hooks::HookRunner;
use crate::notify::Notifier;
use crate::peer::link::LinkStats;
use crate::peer::replication::StoreRole;
use crate::sip::prober::ProberStatus;
use crate::store::storage::{NodeState, Storage};
use crate::telemetry;
use crate::view::{self, SharedView};
use crate::vip::Vips;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// Longest wait, at shutdown, for the leaving heartbeat to reach the wire.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How many role changes the status keeps.
pub(super) const HISTORY: usize = 20;

/// The IO-side state the engine task carries between inputs.
pub(super) struct Driver {
    pub(super) engine: Engine,
    pub(super) config: Config,
    /// The newest heartbeat for the peer link.
    outbound: watch::Sender<Option<Heartbeat>>,
    view: SharedView,
    pub(super) link_stats: Arc<LinkStats>,
    /// What the registrar prober found last.
    pub(super) prober_status: watch::Receiver<ProberStatus>,
    /// Runs the role-change hooks in order.
    hooks: HookRunner,
    /// Tells systemd about readiness and role changes.
    notifier: Notifier,
    /// The newest role changes, newest first, for the status page.
    pub(super) history: VecDeque<TransitionReport>,
    /// The store's database, where the term and maintenance flag are saved too.
    pub(super) storage: Arc<Storage>,
    /// The term and maintenance flag as last saved.
    saved: NodeState,
    /// What the store's task needs to know of the engine.
    store_role: watch::Sender<StoreRole>,
    /// The floating addresses, when the config has any.
    pub(super) vips: Option<Vips>,
    /// When the newest heartbeat the engine saw came off the wire.
    last_heartbeat_at: Option<Instant>,
}

/// What the driver is built from.
pub(super) struct Parts {
    pub engine: Engine,
    pub config: Config,
    pub outbound: watch::Sender<Option<Heartbeat>>,
    pub view: SharedView,
    pub link_stats: Arc<LinkStats>,
    pub prober_status: watch::Receiver<ProberStatus>,
    pub storage: Arc<Storage>,
    pub saved: NodeState,
    pub store_role: watch::Sender<StoreRole>,
    pub vips: Option<Vips>,
}

/// Everything that feeds the engine. A closed channel (no peer, no health check, no
/// registrar) simply never fires.
pub(super) struct Inputs {
    /// Heartbeats from the peer link.
    pub heartbeats: mpsc::Receiver<crate::peer::link::Received>,
    /// The `seq` of the newest heartbeat on the wire.
    pub written: watch::Receiver<u64>,
    /// Health check flips.
    pub health: mpsc::Receiver<bool>,
    /// Registrar group flips.
    pub registrar: mpsc::Receiver<bool>,
    /// Requests from the admin API.
    pub admin: mpsc::Receiver<AdminRequest>,
    /// The store's log position.
    pub store_position: watch::Receiver<u64>,
    /// Why the store's disk failed (`None`: it works).
    pub store_failure: watch::Receiver<Option<String>>,
    /// When the peer's connection ended, once the link has found its process gone.
    pub peer_gone: watch::Receiver<Option<Instant>>,
}

/// The engine's notion of now: tokio's clock, which tests may pause.
pub(super) fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Wall-clock milliseconds since the Unix epoch.
#[allow(clippy::disallowed_methods)] // the driver is where the wall clock may be read
pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Identifies this run of the process; grows across restarts because it is wall time.
pub(super) fn incarnation() -> u64 {
    unix_ms()
}

impl Driver {
    pub(super) fn new(parts: Parts) -> Driver {
        let hooks = HookRunner::spawn(parts.config.hooks.clone(), parts.config.node.id.to_string());
        Driver {
            engine: parts.engine,
            config: parts.config,
            outbound: parts.outbound,
            view: parts.view,
            link_stats: parts.link_stats,
            prober_status: parts.prober_status,
            hooks,
            notifier: Notifier::from_env(),
            history: VecDeque::with_capacity(HISTORY),
            storage: parts.storage,
            saved: parts.saved,
            store_role: parts.store_role,
            vips: parts.vips,
            last_heartbeat_at: None,
        }
    }

    /// Runs the engine until `shutdown` completes, then shuts down in order.
    pub(super) async fn run(
        mut self,
        mut inputs: Inputs,
        shutdown: impl Future<Output = ()>,
    ) -> RunSummary {
        if self.saved.maintenance {
            // An operator put this node in maintenance before it stopped: it stays there.
            self.engine.handle(now(), Input::Maintenance(true));
        }
        info!(role = %self.engine.role(), "started");
        self.carry_out();
        // Every listener is bound by now: systemd may consider the node up.
        self.notifier.ready(&self.one_line_status());
        let mut watchdog = Notifier::watchdog_interval().map(tokio::time::interval);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = wake_at(self.engine.poll_timeout()) => self.input(Input::Timeout),
                Some(received) = inputs.heartbeats.recv() => self.heartbeat(received),
                Some(healthy) = inputs.health.recv() => {
                    telemetry::service_healthy(healthy);
                    self.input(Input::ServiceHealthy(healthy));
                }
                Some(reachable) = inputs.registrar.recv() => {
                    telemetry::registrar_reachable(reachable);
                    self.input(Input::RegistrarReachable(reachable));
                }
                Some(request) = inputs.admin.recv() => self.admin(request),
                Ok(()) = inputs.store_position.changed() => {
                    let position = *inputs.store_position.borrow_and_update();
                    self.input(Input::StorePosition(position));
                }
                Ok(()) = inputs.peer_gone.changed() => {
                    let since = *inputs.peer_gone.borrow_and_update();
                    // What the peer sent before its connection ended comes first.
                    while let Ok(received) = inputs.heartbeats.try_recv() {
                        self.heartbeat(received);
                    }
                    // The engine saw those heartbeats later than they came: it is told
                    // "gone since now" only if none came after the connection ended.
                    if since.is_some_and(|ended_at| silent_since(self.last_heartbeat_at, ended_at)) {
                        // Strictly after every heartbeat fed so far, even on a paused clock.
                        let since = now() + Duration::from_nanos(1);
                        self.input(Input::PeerGone { since });
                    }
                }
                Ok(()) = inputs.store_failure.changed() => {
                    let failed = inputs.store_failure.borrow_and_update().is_some();
                    telemetry::store_failed(failed);
                    self.input(Input::StoreHealthy(!failed));
                }
                () = tick(watchdog.as_mut()) => self.notifier.watchdog(),
            }
        }
        self.shut_down(inputs.written).await
    }

    /// Announces leaving (an active node hands over at once, R7), waits until that is on
    /// the wire and the last hooks ran, each bounded.
    async fn shut_down(mut self, mut written: watch::Receiver<u64>) -> RunSummary {
        let last_role = self.engine.role();
        info!(role = %last_role, "shutting down");
        self.notifier.stopping();
        self.engine.handle(now(), Input::Shutdown);
        let events = self.carry_out();
        debug!(?events, "last events");
        // Wait until the leaving heartbeat is on the wire, so the peer takes over at once
        // (R7) rather than after peer_dead_after.
        let last_seq = self.outbound.borrow().as_ref().map(|h| h.seq);
        let peer_listening = self
            .engine
            .status(now())
            .peer
            .is_some_and(|peer| peer.contact);
        if let (Some(last_seq), true) = (last_seq, peer_listening) {
            let delivered = tokio::time::timeout(
                SHUTDOWN_GRACE,
                written.wait_for(|&written| written >= last_seq),
            )
            .await;
            if !matches!(delivered, Ok(Ok(_))) {
                warn!("could not tell the peer that this node is leaving; it takes over after peer_dead_after");
            }
        }
        // The hooks of the last role change (become_standby of an active node) still run.
        let grace = self.config.hooks.timeout + SHUTDOWN_GRACE;
        self.hooks.finish(grace).await;
        RunSummary {
            last_role,
            term: self.engine.term(),
        }
    }

    fn heartbeat(&mut self, received: crate::peer::link::Received) {
        // The latest arrival: a heartbeat read late off an old connection must not hide a
        // newer one.
        self.last_heartbeat_at = self.last_heartbeat_at.max(Some(received.at));
        self.input(Input::Heartbeat(received.heartbeat));
    }

    fn input(&mut self, input: Input) {
        self.engine.handle(now(), input);
        self.carry_out();
    }

    /// Carries out every pending output, then publishes the resulting state; returns the
    /// events for callers that wait on one.
    pub(super) fn carry_out(&mut self) -> Vec<Event> {
        // The term is on disk before any heartbeat carries it, so a restarted node never
        // reuses a term its peer saw. Should the save fail, the node steps down first (its
        // store failed) and the heartbeat says so.
        let saved = self.save_node_state(NodeState {
            cluster: false,
            term: self.engine.term(),
            maintenance: self.saved.maintenance,
        });
        if !saved {
            self.engine.handle(now(), Input::StoreHealthy(false));
        }
        let mut events = Vec::new();
        let mut heartbeat = None;
        while let Some(output) = self.engine.poll_output() {
            match output {
                // Only the newest matters; it goes out below, after the floating addresses.
                Output::Send(newest) => heartbeat = Some(newest),
                Output::RoleChanged(change) => {
                    self.move_vips(&change);
                    self.role_changed(&change);
                }
                Output::Event(event) => {
                    if let (Event::PeerContact { up: true }, Role::Active, Some(vips)) =
                        (&event, self.engine.role(), self.vips.as_mut())
                    {
                        // A split healed (or the standby came back): neighbours that
                        // listened to the other node in between learn who holds it.
                        vips.announce();
                    }
                    log_event(&event);
                    events.push(event);
                }
            }
        }
        if let Some(heartbeat) = heartbeat {
            self.outbound.send_replace(Some(heartbeat));
        }
        self.publish(&self.engine.status(now()));
        events
    }

    /// Takes the floating addresses on becoming active; gives them up on leaving the active
    /// role and waits for netlink to confirm, so the heartbeat that lets the peer take over
    /// (sent after this) never goes out while this node still holds them.
    fn move_vips(&mut self, change: &Transition) {
        let Some(vips) = self.vips.as_mut() else {
            return;
        };
        if change.to == Role::Active {
            vips.take();
        } else if change.from == Role::Active {
            // At most one heartbeat interval: longer, and the peer's view of this node
            // (and this node's of the peer) would go stale while the driver waits.
            let within = self.config.election.heartbeat_interval;
            let runtime = tokio::runtime::Handle::current();
            tokio::task::block_in_place(|| runtime.block_on(vips.release(within)));
        }
    }

    /// A role change: hooks, history, systemd status, metrics and the log.
    fn role_changed(&mut self, change: &Transition) {
        announce(change, &self.hooks, &self.notifier, &mut self.history);
    }

    /// Tells the rest of the node what the engine decided: metrics, the front ends' view,
    /// the store's role, and the saved term.
    fn publish(&mut self, status: &Status) {
        let peer_in_contact = status.peer.as_ref().is_some_and(|p| p.contact);
        telemetry::state(
            status.term,
            peer_in_contact,
            telemetry::Warnings {
                no_standby: status.no_standby,
                active_without_registrar: status.active_without_registrar,
            },
            status.eligible,
            status.peer.as_ref().is_some_and(|p| p.version_mismatch),
        );
        let active = status.role == crate::engine::Role::Active;
        view::publish(
            &self.view,
            status.active_node.clone(),
            active,
            status.active_targets.clone(),
        );
        let store_role = StoreRole {
            leader: active,
            accepting_writes: self.engine.accepting_writes(),
            peer_in_contact,
            replication_allowed: self.engine.replication_allowed(),
            active_node: status.active_node.as_ref().map(|id| id.to_string()),
        };
        self.store_role.send_if_modified(|current| {
            let changed = *current != store_role;
            *current = store_role;
            changed
        });
    }

    /// Saves the term (and maintenance flag) when they changed, so a restarted node never
    /// reuses a term and stays in maintenance if an operator put it there.
    /// Whether `state` is saved (a failure closes the storage, which reports it).
    fn save_node_state(&mut self, state: NodeState) -> bool {
        if state == self.saved {
            return true;
        }
        let saved = super::save_node_state(&self.storage, state).is_ok();
        if saved {
            self.saved = state;
        }
        saved
    }

    fn admin(&mut self, request: AdminRequest) {
        match request {
            AdminRequest::Status(reply) => {
                let _ = reply.send(self.report());
            }
            AdminRequest::Switchover(to, reply) => {
                let peer = self.config.peer.as_ref().map(|p| p.id.to_string());
                if let Some(to) = to.filter(|to| Some(to) != peer.as_ref()) {
                    let _ = reply.send(Err(format!(
                        "switchover refused: {to} is not this node's peer"
                    )));
                    return;
                }
                info!("switchover requested by an operator");
                self.engine.handle(now(), Input::Switchover);
                let events = self.carry_out();
                let refused = events.iter().find_map(|event| match event {
                    Event::SwitchoverRefused(reason) => Some(*reason),
                    _ => None,
                });
                let _ = reply.send(match refused {
                    Some(reason) => Err(format!("switchover refused: {}", reason.as_str())),
                    None => Ok(()),
                });
            }
            AdminRequest::Maintenance(on, reply) => {
                info!(on, "maintenance requested by an operator");
                let saved = self.save_node_state(NodeState {
                    cluster: false,
                    term: self.saved.term,
                    maintenance: on,
                });
                if !saved {
                    // A restart would forget it: the operator must know (moving a pair to
                    // cluster mode relies on the saved flag).
                    let why = "maintenance not changed: it cannot be saved (see the store's error)";
                    let _ = reply.send(Err(why.to_owned()));
                    return;
                }
                self.engine.handle(now(), Input::Maintenance(on));
                self.carry_out();
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// A line for `systemctl status`.
    fn one_line_status(&self) -> String {
        let status = self.engine.status(now());
        format!("{} (term {})", status.role, status.term)
    }
}

/// An engine event in the log (and the round trip in the metrics).
fn log_event(event: &Event) {
    match event {
        Event::NoStandby { warning: true } => {
            warn!("No Standby: this node is active without a functioning standby")
        }
        Event::NoStandby { warning: false } => info!("No Standby cleared"),
        Event::ActiveWithoutRegistrar { warning: true } => warn!(
            "active without the registrar: it is unreachable from here and no peer reaches it; staying active (R7b), handing over as soon as the peer reaches it"
        ),
        Event::ActiveWithoutRegistrar { warning: false } => {
            info!("active without the registrar: cleared")
        }
        Event::LeavingWithNobodyToTakeOver { reason } => error!(
            reason = reason.as_str(),
            "the active node leaves and no peer may take over: NO NODE WILL BE ACTIVE"
        ),
        Event::PeerContact { up } => info!(up, "peer contact"),
        Event::HeartbeatRoundTrip(rtt) => telemetry::heartbeat_rtt(*rtt),
        Event::VersionMismatch { peer, mismatch } => {
            warn!(%peer, mismatch, "peer protocol version")
        }
        other => info!(event = ?other, "engine event"),
    }
}

/// A role change, told to all that follow it: the hooks, the history the status shows
/// (newest first, at most [`HISTORY`]), systemd, the metrics and the log. Shared with
/// cluster mode's driver.
pub(super) fn announce(
    change: &Transition,
    hooks: &HookRunner,
    notifier: &Notifier,
    history: &mut VecDeque<TransitionReport>,
) {
    hooks.role_changed(change);
    if history.len() == HISTORY {
        history.pop_back();
    }
    let reason = change.reason.as_str();
    history.push_front(TransitionReport {
        at_unix_ms: unix_ms(),
        from: change.from.to_string(),
        to: change.to.to_string(),
        term: change.term,
        reason: reason.to_owned(),
    });
    notifier.status(&format!("{} (term {}, {reason})", change.to, change.term));
    telemetry::transition(change.from, change.to, change.reason);
    telemetry::role(change.to);
    info!(from = %change.from, to = %change.to, term = change.term, reason, "role changed");
}

/// Completes at `deadline`; never without one (a lone active node has nothing to time).
pub(super) async fn wake_at(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// The next tick of the systemd watchdog, if it is on.
pub(super) async fn tick(watchdog: Option<&mut tokio::time::Interval>) {
    match watchdog {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Whether no heartbeat came off the wire after the peer's connection ended at `ended_at`.
/// The old connection's own heartbeats arrived at or before its end; a heartbeat after it
/// came over a new connection, from a peer that restarted and is talking again.
fn silent_since(last_heartbeat_at: Option<Instant>, ended_at: Instant) -> bool {
    last_heartbeat_at.is_none_or(|at| at <= ended_at)
}

#[cfg(test)]
mod tests {
    use super::silent_since;
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn a_peer_is_silent_since_its_connection_ended_unless_a_heartbeat_came_after_it() {
        let ended_at = Instant::now();
        let before = ended_at - Duration::from_millis(5);
        let after = ended_at + Duration::from_millis(5);
        assert!(silent_since(None, ended_at), "never heard");
        assert!(
            silent_since(Some(before), ended_at),
            "heard only before the end"
        );
        assert!(
            silent_since(Some(ended_at), ended_at),
            "the old connection's last word"
        );
        assert!(
            !silent_since(Some(after), ended_at),
            "a restarted peer is talking"
        );
    }
}
