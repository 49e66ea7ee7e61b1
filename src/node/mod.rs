//! Runs one node: the only module that knows all parts, and it only wires them.
//!
//! [`run_node`] opens the store, starts each part from its own configuration (the admin API,
//! the peer link, the store's task, the registrar prober, the front ends, the health check;
//! each knows how to start itself) and hands the channels between them to the [`driver`],
//! the task that owns the engine.
//!
//! Shutdown runs in a fixed order: the engine announces leaving (an active node hands over at
//! once, R7), the node waits (bounded) until that heartbeat is on the wire, then returns; the
//! listeners' tasks end with the runtime.

#[cfg(feature = "etcd")]
mod cluster;
#[cfg(feature = "etcd")]
mod cluster_store;
mod driver;
mod history;
mod pair_report;
mod report;
mod route_keys;

use crate::admin::{self, AdminRequest};
use crate::config::Config;
use crate::engine::{Engine, Role};
use crate::front::{self, FrontError};
use crate::peer::link::{self, LinkError};
use crate::peer::replication::{SessionTiming, StoreRole, StoreTask};
use crate::sip::prober;
use crate::store::api::{Request as StoreRequest, StoreHandle};
use crate::store::replica::Replica;
use crate::store::storage::{NodeState, Storage};
use crate::telemetry;
use crate::view::{self, SharedView};
use driver::{Driver, Inputs};
use pair_report::Reporter;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tracing::{info, info_span, warn, Instrument};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The admin listener could not start.
    #[error(transparent)]
    Admin(#[from] admin::serve::StartError),
    /// The peer link could not start.
    #[error(transparent)]
    PeerLink(#[from] LinkError),
    /// A front end could not start.
    #[error(transparent)]
    Front(#[from] FrontError),
    /// The DNS resolver for the registrar could not be set up.
    #[error("registrar: {0}")]
    Resolver(#[from] crate::sip::resolve::ResolveError),
    /// The store's database cannot be opened or read.
    #[error("store {path}: {reason}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The operating system gave no randomness for the SIP proxy's route key.
    #[error("no random numbers from the operating system for the SIP route key")]
    Randomness,
    /// The floating addresses cannot be managed.
    #[error("vip: {0}")]
    Vip(#[from] crate::vip::VipError),
    /// etcd (cluster mode) cannot be set up.
    #[cfg(feature = "etcd")]
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::etcd::EtcdError),
    /// The cluster's peer link for confirmations cannot be set up.
    #[error(transparent)]
    Confirm(#[from] crate::peer::confirm::ConfirmError),
    /// Cluster mode in a build without etcd support (the configuration check refuses it
    /// first; this is for a configuration made in code).
    #[error("cluster mode needs a build with the cargo feature etcd")]
    ClusterUnsupported,
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
    if let Some(cluster) = config.cluster.clone() {
        return run_cluster(config, cluster, shutdown, view).await;
    }
    let token = read_token(&config)?;
    // The store first: the node's saved term and maintenance flag come from it.
    let (storage, saved, replica) = open_store(&config)?;
    let (store_tx, store_rx) = mpsc::channel::<StoreRequest>(64);
    let (store_role_tx, store_role_rx) = watch::channel(StoreRole::default());
    let (store_position_tx, store_position) = watch::channel(0u64);

    let (admin_tx, admin) = mpsc::channel::<AdminRequest>(16);
    let metrics = telemetry::install();
    telemetry::role(Role::Starting);
    let store = StoreHandle::new(store_tx);
    let reporter = Arc::new(Reporter::new(
        admin_tx.clone(),
        store.clone(),
        &config.frontends,
        view.clone(),
    ));
    tokio::spawn(reporter.clone().sample(metrics.clone()).in_current_span());

    let pair = config.peer.as_ref().zip(config.peer_link.as_ref());
    let link = link::start(
        &config.node.id,
        config.node.address,
        pair,
        (
            config.election.peer_dead_after,
            config.election.heartbeat_interval,
        ),
        status_source(&reporter),
    )
    .await?;
    let pair_sources = pair_sources(&reporter, link.status.clone());
    let router = admin::router(admin_tx, store.clone(), token, metrics, pair_sources);
    admin::serve::start(&config.admin, router).await?;
    let timing = SessionTiming::from_election(
        config.election.heartbeat_interval,
        config.election.peer_dead_after,
    );
    let store_task = StoreTask::new(replica, storage.clone(), store_position_tx, timing);
    let store_run = store_task.run(store_rx, store_role_rx, link.replication, link.dialer);
    tokio::spawn(store_run.in_current_span());

    let (registrar, prober_status) = prober::start(config.registrar.clone())?;
    crate::front::set_floating_addresses(config.vips.iter().map(|vip| vip.address).collect());
    start_front_ends(&config, &view, store)?;
    let (health_tx, health) = mpsc::channel::<bool>(4);
    match config.health.clone() {
        Some(health) => drop(tokio::spawn(crate::health::run(health, health_tx))),
        None => drop(health_tx),
    }

    let storage_failure = storage.failure();
    telemetry::store_failed(false);
    let engine = Engine::new(
        config.engine_config(),
        driver::now(),
        driver::incarnation(),
        saved.term,
    );
    let vips = match config.vips.as_slice() {
        [] => None,
        configured => {
            let mut vips = crate::vip::Vips::open(configured.to_vec())?;
            // A run killed with -9 or frozen left them behind; this node is not active yet.
            vips.release_stale().await;
            Some(vips)
        }
    };
    let driver = Driver::new(driver::Parts {
        engine,
        config,
        outbound: link.outbound,
        view,
        link_stats: link.stats,
        prober_status,
        storage,
        saved,
        store_role: store_role_tx,
        vips,
    });
    let inputs = Inputs {
        store_failure: storage_failure,
        peer_gone: link.gone,
        heartbeats: link.inbound,
        written: link.written,
        health,
        registrar,
        admin,
        store_position,
    };
    Ok(driver.run(inputs, shutdown).await)
}

/// Runs the node in cluster mode (`[cluster]`).
#[cfg(feature = "etcd")]
async fn run_cluster(
    config: Config,
    cluster: crate::config::ClusterConfig,
    shutdown: impl Future<Output = ()>,
    view: SharedView,
) -> Result<RunSummary, NodeError> {
    cluster::run(config, cluster, shutdown, view).await
}

#[cfg(not(feature = "etcd"))]
async fn run_cluster(
    _: Config,
    _: crate::config::ClusterConfig,
    _: impl Future<Output = ()>,
    _: SharedView,
) -> Result<RunSummary, NodeError> {
    Err(NodeError::ClusterUnsupported)
}

/// Starts every front end on its own threads (the data plane), and on this runtime (the
/// control plane) what they rely on: the route key kept in step with the store, the
/// resolver of target host names, and the watchdog over their threads.
fn start_front_ends(
    config: &Config,
    view: &SharedView,
    store: StoreHandle,
) -> Result<(), NodeError> {
    let (local_key, route_keys) = route_keys::local_keys().ok_or(NodeError::Randomness)?;
    tokio::spawn(route_keys::sync(store, route_keys.clone(), local_key).in_current_span());
    let names = match crate::sip::resolve::resolver(None) {
        Ok(resolver) => Some(front::names::Names::start(resolver)),
        Err(error) => {
            warn!(%error, "no DNS resolver: front-end targets must be IP addresses");
            None
        }
    };
    let context = front::Context {
        view: view.clone(),
        heartbeat_interval: config.election.heartbeat_interval,
        route_keys,
        watchdog: front::watchdog::Watchdog::default(),
        names,
    };
    for frontend in &config.frontends {
        front::start(frontend, &context)?;
    }
    // The control plane watches the data plane's threads, never the other way round.
    tokio::spawn(context.watchdog.check().in_current_span());
    Ok(())
}

/// This node's report as JSON, for the peer that asks over the link.
fn status_source(reporter: &Arc<Reporter>) -> crate::peer::status::StatusSource {
    let reporter = reporter.clone();
    Arc::new(move || {
        let reporter = reporter.clone();
        Box::pin(async move {
            match reporter.make().await {
                Some(report) => serde_json::to_value(report).unwrap_or_else(
                    |e| serde_json::json!({ "error": format!("cannot encode the report: {e}") }),
                ),
                None => serde_json::json!({ "error": "the node is shutting down" }),
            }
        })
    })
}

/// Both nodes' reports for the admin API: ours, and the peer's over the link.
fn pair_sources(
    reporter: &Arc<Reporter>,
    fetcher: Option<crate::peer::status::StatusFetcher>,
) -> admin::pair::PairSources {
    let local = reporter.clone();
    let local: admin::pair::LocalReportSource = Arc::new(move || {
        let reporter = local.clone();
        Box::pin(async move { reporter.make().await })
    });
    let peer = fetcher.map(|fetch| {
        Arc::new(move || {
            let fetch = fetch.clone();
            Box::pin(async move { fetch().await.map_err(|e| e.to_string()) })
                as admin::pair::BoxFuture<_>
        }) as admin::pair::PeerReportSource
    });
    admin::pair::PairSources::new(local, peer)
}

fn read_token(config: &Config) -> Result<Option<String>, NodeError> {
    let Some(path) = &config.admin.token_file else {
        return Ok(None);
    };
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|source| NodeError::TokenFile {
            path: path.clone(),
            source,
        })
}

/// Opens the store's database (creating its folder on first start) and loads the node's
/// saved state and the replica from it.
fn open_store(config: &Config) -> Result<(Arc<Storage>, NodeState, Replica), NodeError> {
    let (storage, saved) = open_node_state(config)?;
    let replica = storage
        .load(&config.node.id.0)
        .map_err(|e| store_failed(config, e.to_string()))?;
    info!(head = replica.head(), "store loaded");
    Ok((storage, saved, replica))
}

/// Opens the store's database (creating its folder on first start) for the node's saved
/// term and maintenance flag only (cluster mode keeps its store in etcd).
pub(super) fn open_node_state(config: &Config) -> Result<(Arc<Storage>, NodeState), NodeError> {
    let path = &config.store.path;
    if let Some(folder) = path.parent().filter(|f| !f.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).map_err(|e| store_failed(config, e.to_string()))?;
    }
    let storage = Storage::open(path).map_err(|e| store_failed(config, e.to_string()))?;
    let saved = storage
        .node_state()
        .map_err(|e| store_failed(config, e.to_string()))?;
    info!(path = %path.display(), term = saved.term, maintenance = saved.maintenance, "store opened");
    Ok((Arc::new(storage), saved))
}

/// Saves the node's term and maintenance flag (one small commit, in place on this worker
/// thread); the error, logged.
fn save_node_state(storage: &Storage, state: NodeState) -> Result<(), String> {
    tokio::task::block_in_place(|| storage.save_node_state(state)).map_err(|error| {
        warn!(%error, "cannot save the term and maintenance flag");
        error.to_string()
    })
}

fn store_failed(config: &Config, reason: String) -> NodeError {
    NodeError::Store {
        path: config.store.path.clone(),
        reason,
    }
}
