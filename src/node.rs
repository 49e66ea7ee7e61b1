//! Runs one node: the async driver around the sans-IO engine. The only module that knows
//! all parts.
//!
//! One task owns the engine. It waits for whichever comes first: the engine's next deadline,
//! a heartbeat from the peer link, a health check flip, an admin request, or shutdown. It feeds
//! that in with the current time and carries out every output in order: heartbeats go to the
//! peer link (newest only), role changes are logged and published to the [`ActiveView`].
//!
//! Shutdown runs in a fixed order: the engine announces leaving (an active node hands over at
//! once, R7), the node waits (bounded) until that heartbeat is on the wire, then returns; the
//! listeners' tasks end with the runtime.
//!
//! [`ActiveView`]: crate::view::ActiveView

use crate::admin::{
    self, AdminRequest, PeerReport, RegistrarReport, RegistrarTargetReport, ServiceReport,
    StatusReport, TransitionReport,
};
use crate::config::Config;
use crate::config::{FrontendConfig, FrontendKind};
use crate::engine::{CheckState, Engine, Event, Heartbeat, Input, Output, RefuseReason, Role};
use crate::front;
use crate::hooks::HookRunner;
use crate::notify::Notifier;
use crate::peer::link::{self, LinkStats};
use crate::peer::replication::{BoxedStream, Dialer, StoreRole, StoreTask};
use crate::peer::tls::{PeerTls, TlsError};
use crate::sip::prober::{self, ProberStatus};
use crate::sip::resolve;
use crate::store::api::{Request as StoreRequest, StoreHandle};
use crate::store::storage::{NodeState, Storage};
use crate::telemetry;
use crate::view::{self, SharedView};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

/// Longest wait, at shutdown, for the leaving heartbeat to reach the wire.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The peer link's certificates are unusable.
    #[error("peer link TLS: {0}")]
    Tls(#[from] TlsError),
    /// The DNS resolver for the registrar could not be set up.
    #[error("registrar: {0}")]
    Resolver(#[from] crate::sip::resolve::ResolveError),
    /// A front end's TLS files (or the proxy's CA) are unusable.
    #[error("frontend {name:?} TLS: {reason}")]
    FrontTls {
        /// The front end.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The store's database cannot be opened or read.
    #[error("store {path}: {reason}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The admin token file cannot be read.
    #[error("admin token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// What a finished run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// The role when shutdown was asked for.
    pub last_role: Role,
    /// Highest term known at the end.
    pub term: u64,
}

/// The IO-side state the engine task carries between inputs.
struct Driver {
    engine: Engine,
    config: Config,
    /// The newest heartbeat for the peer link.
    outbound: watch::Sender<Option<Heartbeat>>,
    view: SharedView,
    link_stats: Arc<LinkStats>,
    /// What the registrar prober found last.
    prober_status: watch::Receiver<ProberStatus>,
    /// Runs the role-change hooks in order.
    hooks: HookRunner,
    /// Tells systemd about readiness and role changes.
    notifier: Notifier,
    /// The newest role changes, newest first, for the status page.
    history: VecDeque<TransitionReport>,
    /// The store's database, where the term and maintenance flag are saved too.
    storage: Arc<Storage>,
    /// The term and maintenance flag as last saved.
    saved: NodeState,
    /// What the store's task needs to know of the engine.
    store_role: watch::Sender<StoreRole>,
}

/// How many role changes the status keeps.
const HISTORY: usize = 20;

/// Runs the node until `shutdown` completes, then announces leaving (R7) and returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, NodeError> {
    let span = info_span!("node", id = %config.node.id);
    run_node(config, shutdown, view::shared())
        .instrument(span)
        .await
}

/// Like [`run`], publishing who is active to `view`.
pub async fn run_node(
    config: Config,
    shutdown: impl Future<Output = ()>,
    view: SharedView,
) -> Result<RunSummary, NodeError> {
    let token = match &config.admin.token_file {
        Some(path) => {
            Some(
                std::fs::read_to_string(path).map_err(|source| NodeError::TokenFile {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        None => None,
    };
    // The store first: the node's saved term and maintenance flag come from it.
    let storage = open_store(&config.store.path)?;
    let saved = storage.node_state().map_err(|source| NodeError::Store {
        path: config.store.path.clone(),
        reason: source.to_string(),
    })?;
    let replica = storage
        .load(&config.node.id.0)
        .map_err(|source| NodeError::Store {
            path: config.store.path.clone(),
            reason: source.to_string(),
        })?;
    info!(path = %config.store.path.display(), head = replica.head(), term = saved.term, maintenance = saved.maintenance, "store opened");
    let storage = Arc::new(storage);
    let (store_tx, store_rx) = mpsc::channel::<StoreRequest>(64);
    let (store_role_tx, store_role_rx) = watch::channel(StoreRole::default());
    let (store_position_tx, mut store_position_rx) = watch::channel(0u64);
    let (replication_tx, replication_rx) = mpsc::channel::<BoxedStream>(4);

    let admin_listener = bind("the admin API", config.admin.listen).await?;
    let (admin_tx, mut admin_rx) = mpsc::channel::<AdminRequest>(16);
    let metrics = telemetry::install();
    telemetry::role(Role::Starting);
    let router = admin::router(admin_tx, StoreHandle::new(store_tx), token, metrics);
    let admin_tls = match &config.admin.tls {
        Some((cert, key)) => Some(crate::peer::tls::server_acceptor(cert, key)?),
        None => None,
    };
    info!(listen = %config.admin.listen, tls = admin_tls.is_some(), "admin API listening");
    let limits = admin::serve::Limits {
        max_connections: config.admin.max_connections,
        max_header_bytes: config.admin.max_header_bytes,
    };
    tokio::spawn(admin::serve::serve(admin_listener, router, limits, admin_tls).in_current_span());

    let link_stats = Arc::new(LinkStats::default());
    let (outbound, outbound_rx) = watch::channel(None::<Heartbeat>);
    let (written_tx, mut written_rx) = watch::channel(0u64);
    let (inbound_tx, mut inbound_rx) = mpsc::channel::<Heartbeat>(64);
    let mut dialer: Option<Dialer> = None;
    if let (Some(peer), Some(link_config)) = (&config.peer, &config.peer_link) {
        let tls = PeerTls::load(
            &link_config.ca,
            &link_config.cert,
            &link_config.key,
            &peer.id,
        )?;
        let listener = bind("the peer link", link_config.listen).await?;
        info!(listen = %link_config.listen, peer = %peer.id, connect = %peer.connect, "peer link listening");
        tokio::spawn(
            link::accept_heartbeats(
                listener,
                tls.clone(),
                link_config.max_frame,
                inbound_tx,
                replication_tx,
                link_stats.clone(),
            )
            .in_current_span(),
        );
        let (target, dial_tls, own_id) = (peer.connect, tls.clone(), config.node.id.clone());
        dialer = Some(Arc::new(move || {
            let (tls, own_id) = (dial_tls.clone(), own_id.clone());
            Box::pin(link::dial_replication(target, tls, own_id))
                as std::pin::Pin<Box<dyn Future<Output = std::io::Result<BoxedStream>> + Send>>
        }) as Dialer);
        tokio::spawn(
            link::send_heartbeats(
                peer.connect,
                tls,
                config.node.id.clone(),
                outbound_rx,
                written_tx,
                // A write stuck this long means the peer is as good as gone.
                config.election.peer_dead_after,
                link_stats.clone(),
            )
            .in_current_span(),
        );
    } else {
        drop(inbound_tx);
        drop(replication_tx);
    }
    tokio::spawn(
        StoreTask::new(replica, storage.clone(), store_position_tx)
            .run(store_rx, store_role_rx, replication_rx, dialer)
            .in_current_span(),
    );

    let (registrar_tx, mut registrar_rx) = mpsc::channel::<bool>(4);
    let (prober_status_tx, prober_status) = watch::channel(ProberStatus::default());
    if let Some(registrar) = config.registrar.clone() {
        let resolver = resolve::resolver(registrar.nameserver).map_err(NodeError::Resolver)?;
        let needs_tls = registrar
            .prober
            .targets
            .iter()
            .any(|uri| uri.secure || uri.transport == Some(crate::sip::Transport::Tls))
            || registrar
                .prober
                .targets
                .iter()
                .any(|uri| uri.port.is_none());
        let tls = if needs_tls {
            match crate::peer::tls::client_connector(registrar.ca.as_deref()) {
                Ok(connector) => Some(connector),
                Err(reason) => {
                    warn!(%reason, "no TLS client for the registrar; TLS candidates will fail");
                    None
                }
            }
        } else {
            None
        };
        prober::spawn(
            registrar.prober,
            resolver,
            tls,
            registrar_tx,
            prober_status_tx,
        );
    } else {
        drop(registrar_tx);
    }

    for frontend in &config.frontends {
        start_frontend(frontend, &view, config.election.heartbeat_interval).await?;
    }

    let (health_tx, mut health_rx) = mpsc::channel::<bool>(4);
    if let Some(health) = config.health.clone() {
        tokio::spawn(crate::health::run(health, health_tx));
    } else {
        drop(health_tx);
    }

    let engine = Engine::new(config.engine_config(), now(), incarnation(), saved.term);
    let config_hooks = config.hooks.clone();
    let node_id = config.node.id.to_string();
    let mut driver = Driver {
        engine,
        config,
        outbound,
        view,
        link_stats,
        prober_status,
        hooks: HookRunner::spawn(config_hooks, node_id),
        notifier: Notifier::from_env(),
        history: VecDeque::with_capacity(HISTORY),
        storage,
        saved,
        store_role: store_role_tx,
    };
    if saved.maintenance {
        // An operator put this node in maintenance before it stopped: it stays there.
        driver.engine.handle(now(), Input::Maintenance(true));
    }
    info!(role = %driver.engine.role(), "started");
    driver.carry_out();
    // Every listener is bound by now: systemd may consider the node up.
    driver.notifier.ready(&driver.one_line_status());
    let mut watchdog = Notifier::watchdog_interval().map(tokio::time::interval);

    tokio::pin!(shutdown);
    loop {
        // No deadline (a lone active node has nothing to time) means: wait for input.
        let deadline = driver.engine.poll_timeout();
        let wake = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        let watchdog_tick = async {
            match watchdog.as_mut() {
                Some(interval) => {
                    interval.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = wake => driver.input(Input::Timeout),
            Some(heartbeat) = inbound_rx.recv() => driver.input(Input::Heartbeat(heartbeat)),
            Some(healthy) = health_rx.recv() => {
                telemetry::service_healthy(healthy);
                driver.input(Input::ServiceHealthy(healthy));
            }
            Some(reachable) = registrar_rx.recv() => {
                telemetry::registrar_reachable(reachable);
                driver.input(Input::RegistrarReachable(reachable));
            }
            Some(request) = admin_rx.recv() => driver.admin(request),
            Ok(()) = store_position_rx.changed() => {
                let position = *store_position_rx.borrow_and_update();
                driver.input(Input::StorePosition(position));
            }
            () = watchdog_tick => driver.notifier.watchdog(),
        }
    }

    let last_role = driver.engine.role();
    info!(role = %last_role, "shutting down");
    driver.notifier.stopping();
    driver.engine.handle(now(), Input::Shutdown);
    let events = driver.carry_out();
    debug!(?events, "last events");
    // Wait until the leaving heartbeat is on the wire, so the peer takes over at once (R7)
    // rather than after peer_dead_after.
    let last_seq = driver.outbound.borrow().as_ref().map(|h| h.seq);
    let peer_listening = driver
        .engine
        .status(now())
        .peer
        .is_some_and(|peer| peer.contact);
    if let (Some(last_seq), true) = (last_seq, peer_listening) {
        let delivered = tokio::time::timeout(
            SHUTDOWN_GRACE,
            written_rx.wait_for(|&written| written >= last_seq),
        )
        .await;
        if !matches!(delivered, Ok(Ok(_))) {
            warn!("could not tell the peer that this node is leaving; it takes over after peer_dead_after");
        }
    }
    // The hooks of the last role change (become_standby of an active node) still run.
    let grace = driver.config.hooks.timeout + SHUTDOWN_GRACE;
    driver.hooks.finish(grace).await;
    Ok(RunSummary {
        last_role,
        term: driver.engine.term(),
    })
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

/// The engine's notion of now: tokio's clock, which tests may pause.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Wall-clock milliseconds since the Unix epoch.
#[allow(clippy::disallowed_methods)] // the driver is where the wall clock may be read
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Identifies this run of the process; grows across restarts because it is wall time.
fn incarnation() -> u64 {
    unix_ms()
}

impl Driver {
    fn input(&mut self, input: Input) {
        self.engine.handle(now(), input);
        self.carry_out();
    }

    /// Carries out every pending output; returns the events for callers that wait on one.
    fn carry_out(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Send(heartbeat) => {
                    self.outbound.send_replace(Some(heartbeat));
                }
                Output::RoleChanged(change) => {
                    self.hooks.role_changed(&change);
                    if self.history.len() == HISTORY {
                        self.history.pop_back();
                    }
                    self.history.push_front(TransitionReport {
                        at_unix_ms: unix_ms(),
                        from: change.from.to_string(),
                        to: change.to.to_string(),
                        term: change.term,
                        reason: change.reason.as_str().to_owned(),
                    });
                    self.notifier.status(&format!(
                        "{} (term {}, {})",
                        change.to,
                        change.term,
                        change.reason.as_str()
                    ));
                    telemetry::transition(change.from, change.to, change.reason);
                    telemetry::role(change.to);
                    info!(
                    from = %change.from,
                    to = %change.to,
                    term = change.term,
                    reason = change.reason.as_str(),
                    "role changed"
                    );
                }
                Output::Event(event) => {
                    match &event {
                        Event::NoStandby { warning: true } => {
                            warn!("No Standby: this node is active without a functioning standby")
                        }
                        Event::NoStandby { warning: false } => info!("No Standby cleared"),
                        Event::PeerContact { up } => info!(up, "peer contact"),
                        Event::HeartbeatRoundTrip(rtt) => telemetry::heartbeat_rtt(*rtt),
                        Event::VersionMismatch { peer, mismatch } => {
                            warn!(%peer, mismatch, "peer protocol version")
                        }
                        other => info!(event = ?other, "engine event"),
                    }
                    events.push(event);
                }
            }
        }
        let status = self.engine.status(now());
        telemetry::state(
            status.term,
            status.peer.as_ref().is_some_and(|p| p.contact),
            status.no_standby,
            status.eligible,
            status.peer.as_ref().is_some_and(|p| p.version_mismatch),
        );
        view::publish(
            &self.view,
            status.active_node.clone(),
            status.role == Role::Active,
            status.active_targets.clone(),
        );
        let store_role = StoreRole {
            leader: status.role == Role::Active,
            accepting_writes: self.engine.accepting_writes(),
            peer_in_contact: status.peer.as_ref().is_some_and(|p| p.contact),
            replication_allowed: self.engine.replication_allowed(),
            active_node: status.active_node.as_ref().map(|id| id.to_string()),
        };
        self.store_role.send_if_modified(|current| {
            let changed = *current != store_role;
            *current = store_role;
            changed
        });
        self.save_node_state(NodeState {
            term: status.term,
            maintenance: self.saved.maintenance,
        });
        events
    }

    /// Saves the term (and maintenance flag) when they changed, so a restarted node never
    /// reuses a term and stays in maintenance if an operator put it there.
    fn save_node_state(&mut self, state: NodeState) {
        if state == self.saved {
            return;
        }
        let storage = self.storage.clone();
        match tokio::task::block_in_place(|| storage.save_node_state(state)) {
            Ok(()) => self.saved = state,
            Err(error) => warn!(%error, "cannot save the term and maintenance flag"),
        }
    }

    fn admin(&mut self, request: AdminRequest) {
        match request {
            AdminRequest::Status(reply) => {
                let _ = reply.send(self.report());
            }
            AdminRequest::Switchover(reply) => {
                info!("switchover requested by an operator");
                self.engine.handle(now(), Input::Switchover);
                let events = self.carry_out();
                let refused = events.iter().find_map(|event| match event {
                    Event::SwitchoverRefused(reason) => Some(*reason),
                    _ => None,
                });
                let _ = reply.send(match refused {
                    Some(reason) => Err(refuse_text(reason)),
                    None => Ok(()),
                });
            }
            AdminRequest::Maintenance(on, reply) => {
                info!(on, "maintenance requested by an operator");
                self.save_node_state(NodeState {
                    term: self.saved.term,
                    maintenance: on,
                });
                self.engine.handle(now(), Input::Maintenance(on));
                self.carry_out();
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn report(&self) -> StatusReport {
        let status = self.engine.status(now());
        let peer = self.config.peer.as_ref().map(|configured| {
            let heard = status.peer.as_ref();
            PeerReport {
                id: configured.id.to_string(),
                contact: heard.is_some_and(|p| p.contact),
                role: heard.map(|p| p.role.to_string()),
                last_seen_ms: heard
                    .map(|p| u64::try_from(p.last_seen.as_millis()).unwrap_or(u64::MAX)),
                version: heard.map(|p| p.version.to_string()),
                version_mismatch: heard.is_some_and(|p| p.version_mismatch),
                eligible: heard.map(|p| p.eligible),
                store_position: heard.map(|p| p.store_position),
            }
        });
        let known = |state: CheckState| match state {
            CheckState::Passing => Some(true),
            CheckState::Failing => Some(false),
            CheckState::NotConfigured | CheckState::Unknown => None,
        };
        debug!(
            accepted = self
                .link_stats
                .accepted
                .load(std::sync::atomic::Ordering::Relaxed),
            "status requested"
        );
        StatusReport {
            node: status.node_id.to_string(),
            role: status.role.to_string(),
            term: status.term,
            active_node: status.active_node.map(|id| id.to_string()),
            no_standby: status.no_standby,
            eligible: status.eligible,
            accepting_writes: status.accepting_writes,
            handover_pending: status.handover_pending,
            peer,
            registrar: self.registrar_report(status.registrar, known(status.registrar)),
            service: ServiceReport {
                configured: status.service != CheckState::NotConfigured,
                healthy: known(status.service),
            },
            transitions: self.history.iter().cloned().collect(),
            store_position: status.store_position,
        }
    }
}

impl Driver {
    /// A line for `systemctl status`.
    fn one_line_status(&self) -> String {
        let status = self.engine.status(now());
        format!("{} (term {})", status.role, status.term)
    }

    /// The registrar part of the status: the group as the engine sees it, and each target
    /// as the prober last found it. `target`/`rtt_ms`/`last_error` describe the first
    /// reachable registrar, or else the first one.
    fn registrar_report(&self, state: CheckState, reachable: Option<bool>) -> RegistrarReport {
        let prober = self.prober_status.borrow();
        let targets: Vec<RegistrarTargetReport> = prober
            .targets
            .iter()
            .map(|t| RegistrarTargetReport {
                uri: t.uri.clone(),
                reachable: t.reachable,
                target: t.target.clone(),
                rtt_ms: t.rtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
                last_code: t.last_code,
                last_error: t.last_error.clone(),
            })
            .collect();
        let lead = targets
            .iter()
            .find(|t| t.reachable == Some(true))
            .or_else(|| targets.first());
        RegistrarReport {
            configured: state != CheckState::NotConfigured,
            reachable,
            target: lead.and_then(|t| t.target.clone().or_else(|| Some(t.uri.clone()))),
            rtt_ms: lead.and_then(|t| t.rtt_ms),
            last_error: lead.and_then(|t| t.last_error.clone()),
            targets,
        }
    }
}

fn refuse_text(reason: RefuseReason) -> String {
    format!("switchover refused: {}", reason.as_str())
}

/// Binds one front end's listeners and starts serving them.
async fn start_frontend(
    frontend: &FrontendConfig,
    view: &SharedView,
    heartbeat_interval: Duration,
) -> Result<(), NodeError> {
    let name = frontend.name.clone();
    match &frontend.kind {
        FrontendKind::Sip(sip) => {
            let sockets = if sip.udp {
                front::sip::bind_udp(sip.listen, sip.udp_sockets).map_err(|source| {
                    NodeError::Bind {
                        what: "SIP over UDP",
                        addr: sip.listen,
                        source,
                    }
                })?
            } else {
                Vec::new()
            };
            let service = front::sip::SipService::new(
                name.clone(),
                view.clone(),
                sip.mode,
                sip.listen,
                sockets.first(),
            )
            .map_err(|source| NodeError::Bind {
                what: "SIP front end",
                addr: sip.listen,
                source,
            })?;
            // SO_REUSEPORT spreads flows over the sockets by hash; each socket gets
            // THREADS_PER_SOCKET blocking workers.
            for socket in sockets {
                for _ in 0..front::sip::THREADS_PER_SOCKET {
                    let worker = socket
                        .try_clone()
                        .and_then(|clone| front::sip::spawn_udp(clone, service.clone()));
                    worker.map_err(|source| NodeError::Bind {
                        what: "SIP over UDP (worker thread)",
                        addr: sip.listen,
                        source,
                    })?;
                }
            }
            if sip.tcp {
                let listener = bind("SIP over TCP", sip.listen).await?;
                tokio::spawn(
                    front::sip::serve_stream(
                        listener,
                        service.clone(),
                        None,
                        sip.max_connections,
                        sip.max_message,
                    )
                    .in_current_span(),
                );
            }
            if let Some((listen, files)) = &sip.tls {
                let acceptor = crate::peer::tls::server_acceptor(&files.cert, &files.key).map_err(
                    |source| NodeError::FrontTls {
                        name: name.clone(),
                        reason: source.to_string(),
                    },
                )?;
                let listener = bind("SIP over TLS", *listen).await?;
                tokio::spawn(
                    front::sip::serve_stream(
                        listener,
                        service,
                        Some(acceptor),
                        sip.max_connections,
                        sip.max_message,
                    )
                    .in_current_span(),
                );
            }
            info!(%name, listen = %sip.listen, mode = ?sip.mode, udp = sip.udp, tcp = sip.tcp, tls = ?sip.tls.as_ref().map(|(addr, _)| addr), target = %sip.target, "SIP front end");
        }
        FrontendKind::Http(http) => {
            let tls = match &http.tls {
                Some(files) => Some(
                    crate::peer::tls::server_acceptor(&files.cert, &files.key).map_err(
                        |error| NodeError::FrontTls {
                            name: name.clone(),
                            reason: error.to_string(),
                        },
                    )?,
                ),
                None => None,
            };
            let upstream_tls = if http.mode == crate::config::FrontMode::Proxy {
                match crate::peer::tls::client_connector(http.ca.as_deref()) {
                    Ok(connector) => Some(connector),
                    // Needed only for https targets: fatal when ours is one or a CA was named.
                    Err(reason) if http.ca.is_some() || http.target.starts_with("https:") => {
                        return Err(NodeError::FrontTls { name, reason })
                    }
                    Err(reason) => {
                        warn!(%name, %reason, "no TLS client: an https target of the peer would fail");
                        None
                    }
                }
            } else {
                None
            };
            let listeners =
                front::bind_per_core(http.listen, front::threads()).map_err(|source| {
                    NodeError::Bind {
                        what: "HTTP front end",
                        addr: http.listen,
                        source,
                    }
                })?;
            let service = front::http::HttpService::new(
                name.clone(),
                view.clone(),
                http.mode,
                http.connect_timeout,
                upstream_tls,
            );
            // The connection limit is shared out over the threads.
            let per_thread = http.max_connections.div_ceil(listeners.len().max(1));
            front::spawn_per_core(&format!("http-{name}"), listeners, move |listener| {
                front::http::serve(listener, service.clone(), tls.clone(), per_thread)
            })
            .map_err(|source| NodeError::Bind {
                what: "HTTP front end (threads)",
                addr: http.listen,
                source,
            })?;
            info!(%name, listen = %http.listen, mode = ?http.mode, https = http.tls.is_some(), target = %http.target, "HTTP front end");
        }
        FrontendKind::Tcp(tcp) => {
            let listeners =
                front::bind_per_core(tcp.listen, front::threads()).map_err(|source| {
                    NodeError::Bind {
                        what: "TCP front end",
                        addr: tcp.listen,
                        source,
                    }
                })?;
            let per_thread = tcp.max_connections.div_ceil(listeners.len().max(1));
            let (view, connect_timeout) = (view.clone(), tcp.connect_timeout);
            let frontend_name = name.clone();
            front::spawn_per_core(&format!("tcp-{name}"), listeners, move |listener| {
                front::tcp::serve(
                    listener,
                    frontend_name.clone(),
                    view.clone(),
                    connect_timeout,
                    per_thread,
                    heartbeat_interval,
                )
            })
            .map_err(|source| NodeError::Bind {
                what: "TCP front end (threads)",
                addr: tcp.listen,
                source,
            })?;
            info!(%name, listen = %tcp.listen, target = %tcp.target, "TCP front end forwarding to the active node");
        }
    }
    Ok(())
}

/// Opens the store's database, creating its folder on first start.
fn open_store(path: &std::path::Path) -> Result<Storage, NodeError> {
    if let Some(folder) = path.parent().filter(|f| !f.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).map_err(|source| NodeError::Store {
            path: path.to_owned(),
            reason: source.to_string(),
        })?;
    }
    Storage::open(path).map_err(|source| NodeError::Store {
        path: path.to_owned(),
        reason: source.to_string(),
    })
}
