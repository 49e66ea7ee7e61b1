//! Runs one node in cluster mode (`[cluster]`): the election on etcd instead of the peer
//! link, the store in etcd instead of replicated files. The same admin API, front ends,
//! registrar prober, health check and hooks as a pair.
//!
//! The task that owns the [`Election`] never waits on etcd: every call runs in a task of
//! its own and comes back as an input, so the deadline to stop acting as active is kept
//! whatever etcd does. The front ends also get that deadline with the view and check it on
//! every request, so a node frozen past it (SIGSTOP) serves nobody as active on resuming,
//! even before this task runs again.

use super::cluster_store::{self, Fence};
use super::driver::{announce, now, wake_at, HISTORY};
use super::{NodeError, RunSummary};
use crate::admin::{self, AdminRequest, ClusterMemberReport, ClusterReport, StatusReport};
use crate::admin::{ServiceReport, TransitionReport};
use crate::cluster::election::{Action, Election, Input};
use crate::cluster::etcd::{leader_event, Etcd, EtcdError, Keeper};
use crate::cluster::{LeaderValue, MemberState};
use crate::config::{ClusterConfig, Config, MemberRole, OnStoreLoss};
use crate::engine::{NodeId, Policy, Priority, Reason, Role, Transition};
use crate::hooks::HookRunner;
use crate::notify::Notifier;
use crate::peer::confirm::{self, ConfirmRequest, Members};
use crate::sip::prober::ProberStatus;
use crate::store::api::{Request as StoreRequest, StoreHandle};
use crate::store::storage::{NodeState, Storage};
use crate::telemetry;
use crate::view::{self, SharedView};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn, Instrument};

/// How often each member reads the others' states (and settles the term floor).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How often a member writes its state when it did not change: the key hangs on its lease,
/// so this only brings back a key deleted by hand. Every write is a revision etcd keeps
/// until it is compacted.
const REPUBLISH_EVERY: Duration = Duration::from_secs(30);
/// Longest wait, at shutdown, for the resignation to reach etcd.
const RESIGN_GRACE: Duration = Duration::from_secs(1);

/// Runs the node in cluster mode until `shutdown` completes.
pub(super) async fn run(
    config: Config,
    cluster: ClusterConfig,
    shutdown: impl Future<Output = ()>,
    view: SharedView,
) -> Result<RunSummary, NodeError> {
    let token = super::read_token(&config)?;
    // The node's own database keeps its term and maintenance flag across runs and across a
    // move between pair and cluster mode (the configuration store is in etcd here).
    let (storage, saved) = super::open_node_state(&config)?;
    let etcd = Etcd::connect(&cluster).await?;
    info!(cluster = %cluster.name, endpoints = ?cluster.endpoints, "cluster mode: electing through etcd");
    let (store_tx, store_rx) = mpsc::channel::<StoreRequest>(64);
    let (fence_tx, fence) = watch::channel(Fence::default());
    let node_id = config.node.id.to_string();
    tokio::spawn(cluster_store::serve(etcd.clone(), store_rx, fence, node_id).in_current_span());
    let store = StoreHandle::new(store_tx);

    let (admin_tx, admin) = mpsc::channel::<AdminRequest>(16);
    let metrics = telemetry::install();
    telemetry::role(Role::Starting);
    let reporter = Arc::new(super::pair_report::Reporter::new(
        admin_tx.clone(),
        store.clone(),
        &config.frontends,
        view.clone(),
    ));
    tokio::spawn(reporter.clone().sample(metrics.clone()).in_current_span());
    let pair_sources = super::pair_sources(&reporter, None);
    let router = admin::router(admin_tx, store.clone(), token, metrics, pair_sources);
    admin::serve::start(&config.admin, router).await?;

    let (registrar, prober_status) = crate::sip::prober::start(config.registrar.clone())?;
    super::start_front_ends(&config, &view, store)?;
    let (health_tx, health) = mpsc::channel::<bool>(4);
    match config.health.clone() {
        Some(health) => drop(tokio::spawn(crate::health::run(health, health_tx))),
        None => drop(health_tx),
    }
    let confirmations = confirmations(&config, &cluster).await?;
    let local = LocalState {
        storage,
        saved,
        saved_term: watch::Sender::new(saved),
    };
    let mut driver =
        ClusterDriver::new(config, cluster, etcd, view, prober_status, fence_tx, local);
    driver.maintenance = saved.maintenance;
    let asks = confirmations.map(|(members, asks)| {
        driver.members_to_ask = Some(members);
        asks
    });
    Ok(driver.run(registrar, health, admin, asks, shutdown).await)
}

/// The node's own saved state (its term and maintenance flag), in its own database.
struct LocalState {
    storage: Arc<Storage>,
    saved: NodeState,
    /// The saved state, for the publisher, which raises the cluster's term floor to it.
    saved_term: watch::Sender<NodeState>,
}

/// `keep-if-peers-confirm`: the other members, and the asks they send us (the listener
/// runs from here on).
async fn confirmations(
    config: &Config,
    cluster: &ClusterConfig,
) -> Result<Option<(Arc<Members>, mpsc::Receiver<ConfirmRequest>)>, NodeError> {
    let Some(link) = cluster
        .peer_link
        .as_ref()
        .filter(|_| cluster.on_store_loss == OnStoreLoss::KeepIfPeersConfirm)
    else {
        return Ok(None);
    };
    let members: Vec<(String, std::net::SocketAddr)> = cluster
        .members
        .iter()
        .map(|m| (m.id.clone(), m.peer_link))
        .collect();
    let files = (link.ca.as_path(), link.cert.as_path(), link.key.as_path());
    let members = Arc::new(Members::load(
        &config.node.id,
        config.node.address,
        &members,
        files,
    )?);
    let listener = confirm::listen(link.listen).await?;
    let (asks_tx, asks) = mpsc::channel(16);
    tokio::spawn(confirm::serve(listener, members.clone(), asks_tx).in_current_span());
    info!(listen = %link.listen, "cluster: the active member keeps its role while every other member confirms it");
    Ok(Some((members, asks)))
}

/// The IO side of the election.
struct ClusterDriver {
    election: Election,
    etcd: Etcd,
    config: Config,
    cluster: ClusterConfig,
    view: SharedView,
    prober_status: watch::Receiver<ProberStatus>,
    fence: watch::Sender<Fence>,
    hooks: HookRunner,
    notifier: Notifier,
    history: VecDeque<TransitionReport>,
    role: Role,
    /// Results of etcd calls, as inputs.
    results: mpsc::Sender<Input>,
    inputs: Option<mpsc::Receiver<Input>>,
    /// Keep-alives for the keeper task: the lease and when it was asked.
    renewals: mpsc::Sender<(i64, std::time::Instant)>,
    /// This member's state and lease, for the publisher task; the members it read back.
    published: watch::Sender<Option<(i64, MemberState)>>,
    members: watch::Receiver<Result<Vec<MemberState>, String>>,
    registrar_ok: Option<bool>,
    service_ok: Option<bool>,
    maintenance: bool,
    /// Shutting down.
    leaving: bool,
    /// An operator's switchover is being carried out (the reason of the role change).
    switching_over: bool,
    /// `keep-if-peers-confirm`: the members to ask.
    members_to_ask: Option<Arc<Members>>,
    /// The saved term and maintenance flag.
    local: LocalState,
    /// The cluster's term floor as the publisher last read (or raised) it; `None` until
    /// then, and this node does not campaign (its first term could be below its saved one).
    floor: watch::Receiver<Option<u64>>,
    /// Failing rewrites and deletes of the leader key, logged once per streak (every
    /// ttl / 4 during an etcd outage otherwise; the metrics count each).
    rewrite_failures: FailureStreak,
    depose_failures: FailureStreak,
    /// What this node writes in the leader key, creating or rewriting it (every ttl / 4).
    leader_value: LeaderValue,
}

/// Whether a repeated etcd call is failing, so that a streak of failures is logged once.
#[derive(Clone, Default)]
struct FailureStreak(Arc<std::sync::atomic::AtomicBool>);

impl FailureStreak {
    /// A call failed: whether that begins a streak.
    fn began(&self) -> bool {
        !self.0.swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// A call succeeded: whether that ends a streak.
    fn ended(&self) -> bool {
        self.0.swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    fn failing(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl ClusterDriver {
    fn new(
        config: Config,
        cluster: ClusterConfig,
        etcd: Etcd,
        view: SharedView,
        prober_status: watch::Receiver<ProberStatus>,
        fence: watch::Sender<Fence>,
        local: LocalState,
    ) -> Self {
        let member = cluster.role == MemberRole::Member;
        let mut election = Election::new(&config.node.id.to_string(), cluster.lease_ttl, member);
        if config.election.policy == Policy::PreferPrimary
            && config.node.priority == Priority::Secondary
        {
            election = election.secondary_preferring_primary(config.election.preempt_delay);
        }
        if cluster.on_store_loss == OnStoreLoss::KeepIfPeersConfirm {
            election = election.keep_if_peers_confirm();
        }
        let (results, inputs) = mpsc::channel(64);
        let (renewals, renewal_rx) = mpsc::channel(1);
        tokio::spawn(keep_alive(etcd.clone(), renewal_rx, results.clone()).in_current_span());
        tokio::spawn(watch_leader(etcd.clone(), results.clone()).in_current_span());
        let (published, published_rx) = watch::channel(None);
        let (members_tx, members) = watch::channel(Ok(Vec::new()));
        let (floor_tx, floor) = watch::channel(None);
        let floor_keeping = (local.saved_term.subscribe(), floor_tx);
        let publisher = publish_member(etcd.clone(), published_rx, members_tx, floor_keeping);
        tokio::spawn(publisher.in_current_span());
        let hooks = HookRunner::spawn(config.hooks.clone(), config.node.id.to_string());
        let stale_after = election.stale_after().as_millis();
        let leader_value = LeaderValue {
            node: config.node.id.to_string(),
            targets: config.engine_config().targets,
            stale_after_ms: Some(u64::try_from(stale_after).unwrap_or(u64::MAX)),
        };
        ClusterDriver {
            election,
            etcd,
            registrar_ok: config.registrar.is_none().then_some(true),
            service_ok: config.health.is_none().then_some(true),
            config,
            cluster,
            view,
            prober_status,
            fence,
            hooks,
            notifier: Notifier::from_env(),
            history: VecDeque::with_capacity(HISTORY),
            role: Role::Starting,
            results,
            inputs: Some(inputs),
            renewals,
            published,
            members,
            maintenance: false,
            leaving: false,
            switching_over: false,
            members_to_ask: None,
            local,
            floor,
            rewrite_failures: FailureStreak::default(),
            depose_failures: FailureStreak::default(),
            leader_value,
        }
    }

    async fn run(
        mut self,
        mut registrar: mpsc::Receiver<bool>,
        mut health: mpsc::Receiver<bool>,
        mut admin: mpsc::Receiver<AdminRequest>,
        mut asks: Option<mpsc::Receiver<ConfirmRequest>>,
        shutdown: impl Future<Output = ()>,
    ) -> RunSummary {
        let Some(mut inputs) = self.inputs.take() else {
            return self.summary();
        };
        self.input(Input::Eligible(self.eligible()));
        self.notifier.ready("cluster member starting");
        let mut members = self.members.clone();
        let mut floor = self.floor.clone();
        let mut watchdog = Notifier::watchdog_interval().map(tokio::time::interval);
        tokio::pin!(shutdown);
        loop {
            let deadline = self.election.poll_timeout();
            tokio::select! {
                () = &mut shutdown => break,
                () = super::driver::tick(watchdog.as_mut()) => self.notifier.watchdog(),
                () = wake_at(deadline) => self.input(Input::Timeout),
                Some(input) = inputs.recv() => self.input(input),
                Some(reachable) = registrar.recv() => {
                    telemetry::registrar_reachable(reachable);
                    self.registrar_ok = Some(reachable);
                    self.input(Input::Eligible(self.eligible()));
                }
                Some(healthy) = health.recv() => {
                    telemetry::service_healthy(healthy);
                    self.service_ok = Some(healthy);
                    self.input(Input::Eligible(self.eligible()));
                }
                Some(request) = admin.recv() => self.admin(request),
                Some(ask) = next_ask(&mut asks) => {
                    let verdict = self.election.confirm(now(), &ask.from, ask.term, ask.asker_left);
                    if let Err(why) = &verdict {
                        debug!(peer = %ask.from, term = ask.term, %why, "cluster: not confirmed");
                    }
                    let _ = ask.reply.send(verdict);
                    self.publish();
                }
                Ok(()) = floor.changed() => {
                    floor.borrow_and_update();
                    self.input(Input::Eligible(self.eligible()));
                }
                Ok(()) = members.changed() => {
                    let primary = self.primary_standby(&members.borrow_and_update());
                    if let Some(primary) = primary {
                        self.input(Input::PrimaryStandby(primary));
                    }
                }
            }
        }
        self.leave().await
    }

    /// The first eligible primary on standby other than this node and the term it knows, as
    /// the members last published (`None` when the read failed: nothing new is known).
    fn primary_standby(
        &self,
        members: &Result<Vec<MemberState>, String>,
    ) -> Option<Option<(String, u64)>> {
        let own = self.config.node.id.0.as_str();
        let members = members.as_ref().ok()?;
        let ready = members
            .iter()
            .find(|m| m.node != own && m.primary && m.eligible && m.role == "standby");
        Some(ready.map(|m| (m.node.clone(), m.term)))
    }

    fn eligible(&self) -> bool {
        let floor_known = self.floor.borrow().is_some();
        self.registrar_ok == Some(true)
            && self.service_ok == Some(true)
            && !self.maintenance
            && floor_known
    }

    fn input(&mut self, input: Input) {
        debug!(?input, "cluster input");
        let actions = self.election.handle(now(), input);
        // Before the role change is announced (hooks, status). A failed save is logged; the
        // term is saved with the next input that succeeds.
        let _ = self.save_local_state();
        for action in actions {
            self.carry_out(action);
        }
        self.publish();
    }

    fn carry_out(&mut self, action: Action) {
        let (etcd, results) = (self.etcd.clone(), self.results.clone());
        let pause = self.cluster.lease_ttl / 4;
        let lease = self.election.lease();
        match action {
            Action::GrantLease => drop(tokio::spawn(
                async move {
                    let sent = now();
                    match etcd.grant().await {
                        Ok(id) => {
                            info!(lease = id, "cluster: lease granted");
                            let _ = results.send(Input::LeaseRenewed { id, sent }).await;
                        }
                        Err(error) => {
                            warn!(%error, "cluster: no lease from etcd; retrying");
                            tokio::time::sleep(pause).await;
                            let _ = results.send(Input::LeaseLost).await;
                        }
                    }
                }
                .in_current_span(),
            )),
            // Dropped when a keep-alive is still under way: the next one follows in ttl / 4.
            Action::RenewLease(id) => drop(self.renewals.try_send((id, now()))),
            Action::Campaign(lease) => {
                let value = self.leader_value.clone();
                drop(tokio::spawn(
                    async move {
                        let sent = now();
                        let input = match etcd.campaign(lease, &value).await {
                            Ok((leader, at, won)) => Input::Campaigned {
                                leader,
                                at,
                                sent,
                                won,
                            },
                            Err(error) => {
                                warn!(%error, "cluster: campaign failed; retrying");
                                tokio::time::sleep(pause).await;
                                Input::CampaignFailed
                            }
                        };
                        let _ = results.send(input).await;
                    }
                    .in_current_span(),
                ));
            }
            Action::Rewrite(term, lease) => {
                let value = self.leader_value.clone();
                let streak = self.rewrite_failures.clone();
                drop(tokio::spawn(
                    async move {
                        let sent = now();
                        let input = match etcd.rewrite(term, lease, &value).await {
                            Ok(true) => {
                                if streak.ended() {
                                    info!(term, "cluster: the leader key is rewritten again");
                                }
                                Input::Rewritten { term, sent }
                            }
                            Ok(false) => {
                                debug!(term, "cluster: the leader key is not ours any more");
                                Input::RewriteFailed
                            }
                            // The active node acts 3/4 of a lease time after its last rewrite
                            // went through, whatever the keep-alives say.
                            Err(error) => {
                                if streak.began() {
                                    warn!(%error, term, "cluster: could not rewrite the leader key");
                                }
                                Input::RewriteFailed
                            }
                        };
                        let _ = results.send(input).await;
                    }
                    .in_current_span(),
                ));
            }
            Action::Depose { term, written } => {
                let streak = self.depose_failures.clone();
                drop(tokio::spawn(
                    async move {
                        if !streak.failing() {
                            info!(term, "cluster: the leader stopped rewriting its key; deleting it");
                        }
                        let input = match etcd.depose(term, written).await {
                            Ok((leader, at)) => {
                                streak.ended();
                                Input::Deposed { leader, at }
                            }
                            Err(error) => {
                                if streak.began() {
                                    warn!(%error, term, "cluster: could not delete the stale leader key; retrying");
                                }
                                tokio::time::sleep(pause).await;
                                Input::DeposeFailed
                            }
                        };
                        let _ = results.send(input).await;
                    }
                    .in_current_span(),
                ));
            }
            Action::AskPeers(term) => self.ask_peers(term),
            Action::Resign(term, to) => drop(tokio::spawn(
                async move {
                    if let Err(error) = etcd.resign(term, to.as_deref(), lease).await {
                        warn!(%error, term, "cluster: could not resign; the lease runs out instead");
                    }
                    let _ = results.send(Input::Resigned).await;
                }
                .in_current_span(),
            )),
            Action::Role { active, term } => self.role_changed(active, self.reported(term)),
        }
    }

    /// One round of asks, every member at once, answered within a quarter lease time (the
    /// next round is due then).
    fn ask_peers(&self, term: u64) {
        let results = self.results.clone();
        let unlisted = self.unlisted_members();
        let Some(members) = self.members_to_ask.clone().filter(|_| unlisted.is_empty()) else {
            if !unlisted.is_empty() {
                warn!(?unlisted, "cluster: members in etcd that [[cluster.members]] does not list; no confirmation can count");
            }
            // Nobody to ask is not everyone confirming: the lease alone counts.
            drop(results.try_send(Input::PeersRefused));
            return;
        };
        let within = self.cluster.lease_ttl / 4;
        let left = self
            .election
            .act_until()
            .map(|until| until.saturating_duration_since(now()))
            .unwrap_or_default();
        drop(tokio::spawn(
            async move {
                let sent = now();
                let input = match confirm::ask_all(&members, term, left, within).await {
                    Ok(promised) => Input::PeersConfirmed {
                        term,
                        sent,
                        promised,
                    },
                    Err(why) => {
                        debug!(term, %why, "cluster: not every member confirmed");
                        Input::PeersRefused
                    }
                };
                let _ = results.send(input).await;
            }
            .in_current_span(),
        ));
    }

    /// Members that published themselves in etcd (last read) and may become active, but
    /// are not in `[[cluster.members]]`: they were never asked, so no round counts.
    fn unlisted_members(&self) -> Vec<String> {
        let own = self.config.node.id.0.as_str();
        let Some(listed) = &self.members_to_ask else {
            return Vec::new();
        };
        let published = self.members.borrow();
        let Ok(published) = published.as_ref() else {
            return Vec::new();
        };
        published
            .iter()
            .filter(|m| m.role != "front" && m.node != own)
            .filter(|m| !listed.ids().any(|id| id == m.node))
            .map(|m| m.node.clone())
            .collect()
    }

    fn role_changed(&mut self, active: bool, term: u64) {
        let to = if active { Role::Active } else { Role::Standby };
        let from = std::mem::replace(&mut self.role, to);
        if from == to {
            return;
        }
        let other_leads = self
            .election
            .leader()
            .is_some_and(|l| l.node != self.config.node.id.0);
        let reason = match (from, active) {
            (_, true) => Reason::WonLeaderKey,
            (Role::Active, false) if self.election.failing_back(now()) => Reason::Failback,
            (Role::Active, false) if self.switching_over => Reason::Switchover,
            (Role::Starting, false) => Reason::Joined,
            (_, false) if self.leaving => Reason::Shutdown,
            (_, false) if other_leads => Reason::OtherLeader,
            (_, false) if self.maintenance => Reason::MaintenanceOn,
            (_, false) if !self.eligible() => Reason::NotEligible,
            (_, false) => Reason::LeaseUnrenewed,
        };
        let change = Transition {
            from,
            to,
            term,
            reason,
        };
        announce(&change, &self.hooks, &self.notifier, &mut self.history);
    }

    /// The front ends' view, the store's fence, the member state; after every input.
    fn publish(&mut self) {
        let acting = self.election.acting();
        let leader = self.election.leader().cloned();
        // Followers too stop sending clients to a leader once they cannot vouch for it (their
        // own lease not renewed: etcd out of reach); no lease yet, no leader to follow.
        let fresh = self.election.fresh_until();
        let left = self
            .election
            .act_until()
            .map(|until| until.saturating_duration_since(now()));
        telemetry::cluster_acting_left(left.unwrap_or_default());
        let own = self.config.node.id.0.as_str();
        // A leader key of ours that we no longer act on points clients nowhere.
        let followed = leader
            .as_ref()
            .filter(|l| l.node != own || acting.is_some())
            .filter(|_| fresh.is_some());
        view::publish_until(
            &self.view,
            followed.map(|l| NodeId::from(l.node.as_str())),
            acting.is_some(),
            followed.map(|l| l.targets.clone()).unwrap_or_default(),
            fresh,
        );
        let fence = Fence {
            term: acting,
            leader: leader.as_ref().map(|l| l.node.clone()),
        };
        self.fence.send_if_modified(|current| {
            let changed = *current != fence;
            *current = fence;
            changed
        });
        telemetry::state(
            self.reported(self.election.term()),
            false,
            telemetry::Warnings::default(),
            self.eligible(),
            false,
        );
        let state = MemberState {
            node: own.to_owned(),
            role: self.role_name().to_owned(),
            // A member standing aside after a switchover may not take over now.
            eligible: self.eligible() && !self.election.yielding(now()),
            address: self.config.node.address.to_string(),
            term: self.election.term(),
            primary: self.config.node.priority == Priority::Primary,
        };
        let lease = self.election.lease();
        self.published.send_if_modified(|current| {
            let new = lease.map(|id| (id, state));
            let changed = *current != new;
            *current = new;
            changed
        });
    }

    /// A leader key's create revision as a cluster term: the term floor plus it. The
    /// election and the fencing use the revision as it is.
    fn cluster_term(&self, revision_term: u64) -> u64 {
        self.floor
            .borrow()
            .unwrap_or_default()
            .saturating_add(revision_term)
    }

    /// The term this node reports (status, hooks, metrics, what it saves): never below what
    /// it saved, in this mode or as a pair, even before the floor is read.
    fn reported(&self, revision_term: u64) -> u64 {
        self.cluster_term(revision_term).max(self.local.saved.term)
    }

    /// Saves the reported term and the maintenance flag when they changed, before the
    /// change is announced; whether they are saved.
    fn save_local_state(&mut self) -> Result<(), String> {
        // A cluster term only once the floor is known: until then the reported term is the
        // saved one, and the floor must still be settled from what it was (a pair's term).
        let floor_known = self.floor.borrow().is_some();
        let state = NodeState {
            term: self.reported(self.election.term()),
            maintenance: self.maintenance,
            cluster: floor_known || self.local.saved.cluster,
        };
        if state == self.local.saved {
            return Ok(());
        }
        super::save_node_state(&self.local.storage, state)?;
        self.local.saved = state;
        self.local.saved_term.send_replace(state);
        Ok(())
    }

    fn role_name(&self) -> &'static str {
        match (self.cluster.role, self.role) {
            (MemberRole::Front, _) => "front",
            (_, role) => role.as_str(),
        }
    }

    fn admin(&mut self, request: AdminRequest) {
        match request {
            AdminRequest::Status(reply) => {
                let _ = reply.send(self.report());
            }
            AdminRequest::Switchover(to, reply) => {
                let _ = reply.send(self.switchover(to));
            }
            AdminRequest::Maintenance(on, reply) => {
                info!(on, "maintenance requested by an operator");
                let was = std::mem::replace(&mut self.maintenance, on);
                // Saved, so a restarted node stays in maintenance as an operator left it (a
                // move to or from pair mode relies on it); refused when it cannot be.
                if let Err(error) = self.save_local_state() {
                    self.maintenance = was;
                    let _ = reply.send(Err(format!(
                        "maintenance not changed: cannot save it: {error}"
                    )));
                    return;
                }
                self.input(Input::Eligible(self.eligible()));
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// An operator's switchover: only the active node, and only with another member that
    /// may take over (as its published state says).
    fn switchover(&mut self, to: Option<String>) -> Result<(), String> {
        if self.election.acting().is_none() {
            return Err("switchover refused: this node is not the active one".to_owned());
        }
        if self.election.on_confirmations(now()) {
            return Err("switchover refused: etcd is out of reach (this node holds the role on the other members' confirmations); nobody could take over".to_owned());
        }
        let own = self.config.node.id.0.as_str();
        let members = self.members.borrow().clone().unwrap_or_default();
        let candidate = |m: &&MemberState| m.node != own && m.eligible && m.role == "standby";
        match &to {
            None if !members.iter().any(|m| candidate(&m)) => {
                return Err("switchover refused: no other member may take over".to_owned())
            }
            Some(to) if !members.iter().any(|m| candidate(&m) && &m.node == to) => {
                return Err(format!(
                    "switchover refused: {to} is not an eligible standby member of this cluster"
                ))
            }
            _ => {}
        }
        info!(
            to = to.as_deref().unwrap_or("any"),
            "switchover requested by an operator"
        );
        self.switching_over = true;
        self.input(Input::Yield { to });
        self.switching_over = false;
        Ok(())
    }

    fn report(&self) -> StatusReport {
        let leader = self.election.leader();
        // By the clock, not the last input: a node just resumed from a freeze reports what
        // its front ends do, before its timer has run.
        let acting = self.election.act_until().is_some_and(|until| now() < until);
        let role = match (acting, self.role) {
            (false, Role::Active) => Role::Standby,
            (_, role) => role,
        };
        let members = self.members.borrow().clone();
        let left_ms = self.election.act_until().map(|until| {
            let left = until.saturating_duration_since(now());
            u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
        });
        let (members, etcd_error) = match members {
            Ok(members) => (members, None),
            Err(error) => (Vec::new(), Some(error)),
        };
        let others_eligible = members
            .iter()
            .any(|m| m.node != self.config.node.id.0 && m.eligible && m.role != "front");
        let prober = self.prober_status.borrow();
        StatusReport {
            node: self.config.node.id.to_string(),
            role: role.to_string(),
            term: self.reported(self.election.term()),
            active_node: leader.map(|l| l.node.clone()),
            no_standby: acting && !others_eligible,
            eligible: self.eligible(),
            active_without_registrar: false,
            admin_token_in_clear: self.config.admin.token_in_clear(),
            store_error: etcd_error.clone(),
            vips: Vec::new(),
            accepting_writes: acting,
            handover_pending: false,
            peer: None,
            registrar: super::report::registrar_report(
                &prober,
                self.config.registrar.is_some(),
                self.registrar_ok
                    .filter(|_| self.config.registrar.is_some()),
            ),
            service: ServiceReport {
                configured: self.config.health.is_some(),
                healthy: self.service_ok.filter(|_| self.config.health.is_some()),
            },
            transitions: self.history.iter().cloned().collect(),
            store_position: 0,
            cluster: Some(ClusterReport {
                name: self.cluster.name.clone(),
                member_role: self.role_name().to_owned(),
                leader: leader.map(|l| l.node.clone()),
                lease: self.election.lease().map(|id| format!("{id:x}")),
                acting_for_ms: left_ms,
                etcd_error,
                on_store_loss: match self.cluster.on_store_loss {
                    OnStoreLoss::Demote => "demote",
                    OnStoreLoss::KeepIfPeersConfirm => "keep-if-peers-confirm",
                }
                .to_owned(),
                on_confirmations: self.election.on_confirmations(now()),
                members: members
                    .into_iter()
                    .map(|m| ClusterMemberReport {
                        node: m.node,
                        role: m.role,
                        eligible: m.eligible,
                        address: m.address,
                        term: self.cluster_term(m.term),
                        primary: m.primary,
                    })
                    .collect(),
            }),
        }
    }

    /// Resigns (an active node hands over at once), revokes the lease, waits for the hooks.
    async fn leave(mut self) -> RunSummary {
        info!(role = %self.role, "shutting down");
        self.notifier.stopping();
        self.leaving = true;
        let term = self.election.acting();
        let actions = self.election.handle(now(), Input::Leave);
        for action in actions {
            if let Action::Role { active, term } = action {
                self.role_changed(active, self.reported(term));
            }
        }
        self.publish();
        let etcd = self.etcd.clone();
        let lease = self.election.lease();
        let resign = async {
            if let Some(term) = term {
                if let Err(error) = etcd.resign(term, None, lease).await {
                    warn!(%error, "could not resign; the others take over when the lease runs out");
                }
            }
            if let Some(lease) = lease {
                let _ = etcd.revoke(lease).await;
            }
        };
        if tokio::time::timeout(RESIGN_GRACE, resign).await.is_err() {
            warn!("etcd did not confirm the resignation in time");
        }
        let grace = self.config.hooks.timeout + RESIGN_GRACE;
        self.hooks.finish(grace).await;
        self.summary()
    }

    fn summary(&self) -> RunSummary {
        RunSummary {
            last_role: self.role,
            term: self.reported(self.election.term()),
        }
    }
}

/// The next ask of another member, if this node confirms at all.
async fn next_ask(asks: &mut Option<mpsc::Receiver<ConfirmRequest>>) -> Option<ConfirmRequest> {
    match asks {
        Some(asks) => asks.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends each keep-alive asked for on one stream per lease, and reports the answer.
async fn keep_alive(
    etcd: Etcd,
    mut renewals: mpsc::Receiver<(i64, std::time::Instant)>,
    results: mpsc::Sender<Input>,
) {
    let mut keeper: Option<Keeper> = None;
    while let Some((lease, sent)) = renewals.recv().await {
        if keeper.as_ref().is_none_or(|k| k.lease() != lease) {
            keeper = match etcd.keeper(lease).await {
                Ok(opened) => Some(opened),
                Err(EtcdError::LeaseGone) => {
                    // Expired while the stream was down: a new lease, or this node would
                    // never campaign again.
                    warn!(lease, "cluster: etcd says the lease is gone");
                    if results.send(Input::LeaseLost).await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(error) => {
                    debug!(%error, "cluster: cannot open the keep-alive stream");
                    continue;
                }
            };
        }
        let Some(open) = keeper.as_mut() else {
            continue;
        };
        let input = match open.renew().await {
            Err(EtcdError::LeaseGone) => {
                warn!(lease, "cluster: etcd says the lease is gone");
                keeper = None;
                Input::LeaseLost
            }
            Ok(true) => Input::LeaseRenewed { id: lease, sent },
            Ok(false) => {
                warn!(lease, "cluster: etcd says the lease is gone");
                keeper = None;
                Input::LeaseLost
            }
            Err(error) => {
                debug!(%error, "cluster: a keep-alive was not answered");
                keeper = None;
                continue;
            }
        };
        if results.send(input).await.is_err() {
            return;
        }
    }
}

/// Follows the leader key: reads it, then watches it from there; starts over after an error.
async fn watch_leader(etcd: Etcd, results: mpsc::Sender<Input>) {
    let key = etcd.leader_key();
    loop {
        match follow(&etcd, &key, &results).await {
            Ok(()) => return,
            Err(error) => {
                debug!(%error, "cluster: watching the leader key; starting over");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// One read and watch of the leader key; `Ok` once the driver is gone.
async fn follow(
    etcd: &Etcd,
    key: &str,
    results: &mpsc::Sender<Input>,
) -> Result<(), crate::cluster::etcd::EtcdError> {
    let (leader, revision) = etcd.leader().await?;
    // A vacancy read afresh may be a switchover's that the watch did not report to us.
    let handover = match leader {
        None => etcd.handover(None).await.unwrap_or(None),
        Some(_) => None,
    };
    let known = Input::LeaderIs {
        leader,
        at: revision,
        handover,
    };
    if results.send(known).await.is_err() {
        return Ok(());
    }
    let mut stream = etcd.watch_leader(revision.saturating_add(1)).await?;
    loop {
        let Some(answer) = stream.message().await? else {
            return Err(crate::cluster::etcd::EtcdError::Call(
                "the watch ended".to_owned(),
            ));
        };
        if answer.canceled() {
            return Err(crate::cluster::etcd::EtcdError::Call(format!(
                "the watch was cancelled: {}",
                answer.cancel_reason()
            )));
        }
        for event in answer.events() {
            let (leader, at) = leader_event(key, event)?;
            // A delete may come from a switchover naming who takes over.
            let handover = match leader {
                None => etcd.handover(Some(at)).await.unwrap_or(None),
                Some(_) => None,
            };
            let input = Input::LeaderIs {
                leader,
                at,
                handover,
            };
            if results.send(input).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Publishes this member's state (attached to its lease) on change and every 30 s, and
/// reads back every member's every second.
async fn publish_member(
    etcd: Etcd,
    mut state: watch::Receiver<Option<(i64, MemberState)>>,
    members: watch::Sender<Result<Vec<MemberState>, String>>,
    (saved, floor): (watch::Receiver<NodeState>, watch::Sender<Option<u64>>),
) {
    let mut floor_error: Option<String> = None;
    let mut written: Option<((i64, MemberState), tokio::time::Instant)> = None;
    let mut ticks = tokio::time::interval(PUBLISH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            changed = state.changed() => if changed.is_err() { return },
        }
        let current = state.borrow_and_update().clone();
        let fresh = written.as_ref().is_some_and(|(last, at)| {
            Some(last) == current.as_ref() && at.elapsed() < REPUBLISH_EVERY
        });
        if let Some((lease, own)) = current.filter(|_| !fresh) {
            match etcd.publish_member(lease, &own).await {
                Ok(()) => written = Some(((lease, own), tokio::time::Instant::now())),
                Err(error) => {
                    // A write that timed out may still land later: written again next time.
                    written = None;
                    debug!(%error, "cluster: cannot publish this member's state");
                }
            }
        }
        let read = etcd.members().await.map_err(|e| e.to_string());
        // What etcd holds of this member is not what it wrote (deleted by hand, restored
        // from a backup, a late write): written again on the next tick.
        if let (Ok(read), Some(((_, own), _))) = (&read, &written) {
            if !read.iter().any(|m| m == own) {
                written = None;
            }
        }
        members.send_modify(|current| *current = read);
        // Raised to this node's saved term (from pair mode, or an earlier run), or by
        // another member that ran as a pair.
        let own = *saved.borrow();
        match etcd.settle_term_floor(own.term, own.cluster).await {
            Ok(read) => {
                floor_error = None;
                floor.send_if_modified(|current| {
                    let raised = current.is_none_or(|known| read > known);
                    *current = Some(current.map_or(read, |known| known.max(read)));
                    raised
                });
            }
            Err(error) => {
                let error = error.to_string();
                if floor_error.as_ref() != Some(&error) {
                    warn!(%error, "cluster: cannot settle the term floor; this member does not campaign until it can");
                }
                floor_error = Some(error);
            }
        }
    }
}
