//! The `standby-proxy` command: runs a node, checks configurations, makes certificates, and
//! drives a running node through its admin API.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper::Method;
use standby_proxy::admin::client::{self, ClientError};
use standby_proxy::admin::StatusReport;
use standby_proxy::certs::{self, NodeSpec, Plan};
use standby_proxy::config::{Config, LoadError};
use standby_proxy::vip;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Makes a pair of telephony servers behave as one: elects the active node, fails over,
/// and redirects every client to it.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A whole pair on this machine, nothing to configure: two nodes (127.0.0.1 and
    /// 127.0.0.2) with SIP, HTTP and TCP front ends and a tiny service each that answers
    /// with its node's name. Prints what to try; Ctrl-C stops everything.
    Dev {
        /// Add this to every port (SIP 5060, HTTP 8080, TCP 9000, admin 7780, ...) when
        /// another program holds one of them.
        #[arg(long, default_value_t = 0)]
        port_offset: u16,
    },
    /// Run one node until SIGTERM or Ctrl-C.
    Run {
        /// Configuration file.
        #[arg(long, default_value = "config/standby-proxy.toml")]
        config: PathBuf,
    },
    /// Remove the floating addresses (`[[vip]]`) of a node that is not running: a node
    /// killed with -9 leaves them behind (the systemd unit runs this as `ExecStopPost=`).
    ReleaseVips {
        /// Configuration file.
        #[arg(long, default_value = "config/standby-proxy.toml")]
        config: PathBuf,
    },
    /// Check a configuration file: exit 0 if valid, else 2 with every error by key.
    CheckConfig {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Show the pair as a node sees it.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hand the active role to the peer, losing no write (R11); in cluster mode to any
    /// eligible member, or the one named with --to.
    Switchover {
        #[command(flatten)]
        admin: AdminArgs,
        /// The node that should take over (cluster mode; in a pair, the peer).
        #[arg(long)]
        to: Option<String>,
    },
    /// Put the node into maintenance (an active node hands over first) or take it out.
    Maintenance {
        #[command(flatten)]
        admin: AdminArgs,
        /// on or off.
        state: OnOff,
    },
    /// The replicated configuration store: get, set, delete, list keys, conflicts.
    Config {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Make certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a key's value (JSON).
    Get { key: String },
    /// Set a key (on the active node). VALUE is JSON; anything that is not JSON is taken as
    /// a string.
    Set { key: String, value: String },
    /// Delete a key (on the active node).
    Delete { key: String },
    /// List the keys under PREFIX (all without one): key, revision, value.
    List { prefix: Option<String> },
    /// Write every key and value as one JSON document (to FILE, or standard output): what
    /// `config import` reads, in pair mode or cluster mode alike.
    Export {
        /// Where to write it (standard output without).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Set every key of a document `config export` wrote (on the active node); keys not in
    /// it stay as they are, unless --replace deletes them.
    Import {
        /// The document.
        file: PathBuf,
        /// Also delete the keys the document does not hold.
        #[arg(long)]
        replace: bool,
    },
    /// Show the values that lost a merge after a split; --clear empties the list.
    Conflicts {
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// A pair CA, a peer-link certificate per node, and one front certificate for all names.
    Init {
        /// Where to write them.
        #[arg(long)]
        dir: PathBuf,
        /// A node as ID=ADDRESS (repeat for each node), e.g. --node a=192.0.2.10.
        #[arg(long = "node", required = true)]
        nodes: Vec<NodeSpec>,
        /// An extra DNS name for the front certificate (repeatable), e.g. the service name.
        #[arg(long = "name")]
        names: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Args)]
struct AdminArgs {
    /// The node's admin API.
    #[arg(long, env = "STANDBY_ADMIN", default_value = "http://127.0.0.1:7780")]
    admin: String,
    /// File holding the admin token (needed for changes).
    #[arg(long, env = "STANDBY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The admin token itself (prefer --token-file: arguments show in `ps`).
    #[arg(long, env = "STANDBY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate(s) to verify an https admin URL; default: the system bundle.
    #[arg(long, env = "STANDBY_ADMIN_CA")]
    admin_ca: Option<PathBuf>,
}

impl AdminArgs {
    fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?;
            return Ok(Some(token.trim().to_owned()));
        }
        Ok(self.token.clone())
    }
}

/// Exit code for bad usage or configuration (the contract: 0 ok, 1 runtime failure, 2 usage).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { config } => {
            return match Config::load(&config) {
                Ok(_) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(error) => config_failure(&config, &error),
            }
        }
        Command::Run { config: path } => {
            let config = match Config::load(&path) {
                Ok(config) => config,
                Err(error) => return config_failure(&path, &error),
            };
            if let (false, Err(error)) = (config.vips.is_empty(), vip::check_capabilities()) {
                eprintln!("{}: {error}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
            run(config)
        }
        Command::Dev { port_offset } => dev(port_offset),
        Command::ReleaseVips { config: path } => match Config::load(&path) {
            Ok(config) => release_vips(config),
            Err(error) => return config_failure(&path, &error),
        },
        Command::Status { admin, json } => status(&admin, json),
        Command::Switchover { admin, to } => {
            let body = to.as_ref().map(|to| serde_json::json!({ "to": to }));
            change(&admin, "/api/v1/switchover", body).map(|_| match to {
                Some(to) => println!("switchover to {to} started"),
                None => {
                    println!("switchover started: the peer takes over once it holds every entry")
                }
            })
        }
        Command::Maintenance { admin, state } => {
            let on = matches!(state, OnOff::On);
            let body = serde_json::json!({ "on": on });
            change(&admin, "/api/v1/maintenance", Some(body)).map(|_| {
                println!("maintenance {}", if on { "on" } else { "off" });
            })
        }
        Command::Config { admin, command } => store_command(&admin, command),
        Command::Certs {
            command:
                CertsCommand::Init {
                    dir,
                    nodes,
                    names,
                    force,
                },
        } => certs_init(&dir, nodes, names, force),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("standby-proxy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_failure(path: &Path, error: &LoadError) -> ExitCode {
    eprintln!("{}: invalid configuration", path.display());
    for line in error.to_string().lines() {
        eprintln!("  {line}");
    }
    ExitCode::from(EXIT_USAGE)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Logs go to stderr so stdout stays for command output; colour only on a terminal.
fn init_logs(filter: EnvFilter) {
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

fn run(config: Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .context("log filter")?;
    init_logs(filter);
    runtime()?.block_on(async {
        let summary = standby_proxy::node::run(config, shutdown_signal()).await?;
        tracing::info!(role = %summary.last_role, term = summary.term, "stopped");
        Ok(())
    })
}

/// `standby-proxy dev`: sets up the pair in a temporary folder, runs it until Ctrl-C, and
/// removes the folder.
fn dev(port_offset: u16) -> anyhow::Result<()> {
    use standby_proxy::dev;
    init_logs(EnvFilter::try_new("info").context("log filter")?);
    let ports = dev::Ports::shifted(port_offset)?;
    let exe = std::env::current_exe().context("finding this program's path")?;
    let dir = dev::temp_dir()?;
    // The nodes' parent-death signal follows the thread that started them: one thread.
    let run = || -> anyhow::Result<()> {
        let prepared = dev::prepare(&dir, ports)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(async {
            for node in &prepared.nodes {
                dev::service::start(node, ports).await?;
            }
            dev::supervisor::run(&prepared, &exe, shutdown_signal(), |pids, active| {
                print!("{}", dev::guide(&prepared, &exe, pids, &active));
            })
            .await?;
            anyhow::Ok(())
        })
    };
    let result = run();
    if let Err(error) = std::fs::remove_dir_all(&dir) {
        eprintln!("standby-proxy dev: removing {}: {error}", dir.display());
    }
    result
}

/// Removes every configured floating address this host holds.
fn release_vips(config: Config) -> anyhow::Result<()> {
    if config.vips.is_empty() {
        return Ok(());
    }
    runtime()?.block_on(async {
        let mut vips = vip::Vips::open(config.vips)?;
        vips.release_stale().await;
        let failed: Vec<String> = vips
            .report()
            .into_iter()
            .filter_map(|status| {
                status
                    .error
                    .map(|error| format!("{}: {error}", status.address))
            })
            .collect();
        if failed.is_empty() {
            println!("floating addresses released");
            Ok(())
        } else {
            anyhow::bail!("{}", failed.join("; "))
        }
    })
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this node");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

fn admin_call(
    admin: &AdminArgs,
    method: Method,
    path: &str,
    token: Option<String>,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Unexpected(e.to_string()))?;
    runtime.block_on(client::call(
        &admin.admin,
        method,
        path,
        token.as_deref(),
        body,
        admin.admin_ca.as_deref(),
    ))
}

fn change(admin: &AdminArgs, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<()> {
    let token = admin.token()?;
    if token.is_none() {
        anyhow::bail!("changes need the admin token: pass --token-file FILE or set STANDBY_TOKEN");
    }
    admin_call(admin, Method::POST, path, token, body)?;
    Ok(())
}

/// Percent-encodes what a key may hold beyond URL-safe characters (keys are checked by the
/// node; this only keeps the path intact).
fn key_path(key: &str) -> String {
    let mut path = String::from("/api/v1/config/");
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/:@+".contains(&byte) {
            path.push(byte as char);
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path
}

fn store_command(admin: &AdminArgs, command: ConfigCommand) -> anyhow::Result<()> {
    let token = admin.token()?;
    if token.is_none() {
        anyhow::bail!(
            "the store needs the admin token: pass --token-file FILE or set STANDBY_TOKEN"
        );
    }
    match command {
        ConfigCommand::Get { key } => {
            let answer = admin_call(admin, Method::GET, &key_path(&key), token, None)?;
            println!("{}", serde_json::to_string_pretty(&answer["value"])?);
        }
        ConfigCommand::Set { key, value } => {
            let value = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
            let answer = admin_call(admin, Method::PUT, &key_path(&key), token, Some(value))?;
            let replicated = answer["replicated"].as_bool().unwrap_or(false);
            println!(
                "{key}: revision {}{}",
                answer["revision"],
                if replicated {
                    ""
                } else {
                    " (NOT on the standby: the node is alone)"
                }
            );
        }
        ConfigCommand::Delete { key } => {
            admin_call(admin, Method::DELETE, &key_path(&key), token, None)?;
            println!("{key}: deleted");
        }
        ConfigCommand::List { prefix } => {
            let mut path = String::from("/api/v1/config");
            if let Some(prefix) = prefix {
                path.push_str("?prefix=");
                path.push_str(&key_path(&prefix)["/api/v1/config/".len()..]);
            }
            let answer = admin_call(admin, Method::GET, &path, token, None)?;
            for entry in answer["entries"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}",
                    entry["key"].as_str().unwrap_or_default(),
                    entry["revision"],
                    entry["value"]
                );
            }
        }
        ConfigCommand::Export { file } => export_store(admin, token, file.as_deref())?,
        ConfigCommand::Import { file, replace } => import_store(admin, token, &file, replace)?,
        ConfigCommand::Conflicts { clear: false } => {
            let answer = admin_call(admin, Method::GET, "/api/v1/conflicts", token, None)?;
            let conflicts = answer["conflicts"].as_array().cloned().unwrap_or_default();
            if conflicts.is_empty() {
                println!("no conflicts");
            }
            for conflict in conflicts {
                println!(
                    "{}\tlost {}\tto {}\tvalue {}",
                    conflict["key"].as_str().unwrap_or_default(),
                    conflict["lost"].as_str().unwrap_or_default(),
                    conflict["won"].as_str().unwrap_or_default(),
                    conflict["value"]
                );
            }
        }
        ConfigCommand::Conflicts { clear: true } => {
            admin_call(admin, Method::DELETE, "/api/v1/conflicts", token, None)?;
            println!("conflict list cleared");
        }
    }
    Ok(())
}

/// What `config export` writes and `config import` reads.
const EXPORT_FORMAT: &str = "standby-proxy store export 1";

fn export_store(
    admin: &AdminArgs,
    token: Option<String>,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    let answer = admin_call(admin, Method::GET, "/api/v1/config", token, None)?;
    let mut entries = serde_json::Map::new();
    for entry in answer["entries"].as_array().into_iter().flatten() {
        let key = entry["key"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("the node listed an entry without a key: {entry}"))?;
        entries.insert(key.to_owned(), entry["value"].clone());
    }
    let count = entries.len();
    let document = serde_json::json!({ "format": EXPORT_FORMAT, "entries": entries });
    let text = serde_json::to_string_pretty(&document)? + "\n";
    match file {
        Some(file) => {
            write_private(file, &text)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
            eprintln!("exported {count} keys to {}", file.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Writes `text` to a new file only its owner may read (a store may hold secrets).
fn write_private(file: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)?;
    out.write_all(text.as_bytes())
}

fn import_store(
    admin: &AdminArgs,
    token: Option<String>,
    file: &Path,
    replace: bool,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let document: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", file.display()))?;
    if document["format"] != EXPORT_FORMAT {
        anyhow::bail!(
            "{} is not a `config export` document (format {:?} expected)",
            file.display(),
            EXPORT_FORMAT
        );
    }
    let entries = document["entries"]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("{}: \"entries\" is not an object", file.display()))?;
    // Every key checked before the first write: no half import for a bad key.
    for key in entries.keys() {
        standby_proxy::store::api::check_key(key)
            .map_err(|e| anyhow::anyhow!("{}: {key:?}: {e}", file.display()))?;
    }
    if replace {
        let listed = admin_call(admin, Method::GET, "/api/v1/config", token.clone(), None)?;
        for entry in listed["entries"].as_array().into_iter().flatten() {
            // `_standby/` keys are the nodes' own (the SIP route key): never deleted here.
            let Some(key) = entry["key"]
                .as_str()
                .filter(|k| !entries.contains_key(*k) && !k.starts_with("_standby/"))
            else {
                continue;
            };
            admin_call(admin, Method::DELETE, &key_path(key), token.clone(), None)
                .map_err(|e| anyhow::anyhow!("deleting {key}: {e}"))?;
            println!("{key}: deleted (not in {})", file.display());
        }
    }
    for (done, (key, value)) in entries.iter().enumerate() {
        let path = key_path(key);
        admin_call(
            admin,
            Method::PUT,
            &path,
            token.clone(),
            Some(value.clone()),
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "{key}: {e} ({done} of {} keys imported before it)",
                entries.len()
            )
        })?;
    }
    println!("imported {} keys", entries.len());
    Ok(())
}

fn status(admin: &AdminArgs, json: bool) -> anyhow::Result<()> {
    // The status needs no token: it is not sent where it is not needed.
    let value = admin_call(admin, Method::GET, "/api/v1/status", None, None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let report: StatusReport = serde_json::from_value(value)
        .map_err(|e| ClientError::Unexpected(format!("status: {e}")))?;
    print!("{}", status_table(&report));
    Ok(())
}

/// The human view of a status report.
fn status_table(report: &StatusReport) -> String {
    let dash = || "-".to_owned();
    let mut out = String::new();
    out.push_str(&format!(
        "{:<6} {:<10} {:<12} {:<8} {:<10} {}\n",
        "NODE", "ID", "ROLE", "CONTACT", "ELIGIBLE", "NOTE"
    ));
    let mut note = Vec::new();
    if report.no_standby {
        note.push("NO STANDBY".to_owned());
    }
    if report.active_without_registrar {
        note.push("ACTIVE WITHOUT REGISTRAR".to_owned());
    }
    if report.admin_token_in_clear {
        note.push("ADMIN TOKEN IN CLEAR".to_owned());
    }
    if report.store_error.is_some() {
        note.push("STORE FAILED".to_owned());
    }
    if report.handover_pending {
        note.push("handing over".to_owned());
    }
    out.push_str(&format!(
        "{:<6} {:<10} {:<12} {:<8} {:<10} {}\n",
        "this",
        report.node,
        report.role,
        "-",
        if report.eligible { "yes" } else { "no" },
        note.join(", ")
    ));
    if let Some(cluster) = &report.cluster {
        out.push_str(&cluster_rows(report, cluster));
        return out;
    }
    match &report.peer {
        Some(peer) => {
            let mut note = Vec::new();
            if peer.version_mismatch {
                note.push(format!(
                    "VERSION MISMATCH ({})",
                    peer.version.clone().unwrap_or_else(dash)
                ));
            }
            if let Some(ms) = peer.last_seen_ms {
                note.push(format!("last heard {ms} ms ago"));
            } else {
                note.push("never heard".to_owned());
            }
            out.push_str(&format!(
                "{:<6} {:<10} {:<12} {:<8} {:<10} {}\n",
                "peer",
                peer.id,
                peer.role.clone().unwrap_or_else(dash),
                if peer.contact { "yes" } else { "NO" },
                match peer.eligible {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "-",
                },
                note.join(", ")
            ));
        }
        None => out.push_str("peer   (none configured: single node)\n"),
    }
    out.push_str(&format!(
        "\nactive node: {}    term: {}\n",
        report
            .active_node
            .clone()
            .unwrap_or_else(|| "NONE".to_owned()),
        report.term
    ));
    // The store: this node's log position and the peer's; a standby at the active node's
    // position holds every entry (what a switchover waits for).
    let peer_position = report
        .peer
        .as_ref()
        .and_then(|p| p.store_position)
        .map_or_else(dash, |p| p.to_string());
    out.push_str(&format!(
        "store position: {} (peer {})\n",
        report.store_position, peer_position
    ));
    let registrar = &report.registrar;
    let via = registrar.target.clone().unwrap_or_else(dash);
    let registrar = if !registrar.configured {
        "not configured".to_owned()
    } else {
        match registrar.reachable {
            Some(true) => match registrar.rtt_ms {
                Some(rtt) => format!("reachable ({via}, {rtt:.1} ms)"),
                None => format!("reachable ({via})"),
            },
            Some(false) => format!(
                "UNREACHABLE ({})",
                registrar.last_error.clone().unwrap_or_else(|| via.clone())
            ),
            None => "not probed yet".to_owned(),
        }
    };
    let service = if !report.service.configured {
        "no health check".to_owned()
    } else {
        match report.service.healthy {
            Some(true) => "healthy".to_owned(),
            Some(false) => "FAILING".to_owned(),
            None => "not checked yet".to_owned(),
        }
    };
    out.push_str(&format!("registrar: {registrar}    service: {service}\n"));
    out
}

/// Cluster mode: every other member as it published itself, then the cluster's line.
fn cluster_rows(report: &StatusReport, cluster: &standby_proxy::admin::ClusterReport) -> String {
    let mut out = String::new();
    for member in cluster.members.iter().filter(|m| m.node != report.node) {
        let primary = if member.primary { ", primary" } else { "" };
        let note = format!("{} (term {}{primary})", member.address, member.term);
        out.push_str(&format!(
            "{:<6} {:<10} {:<12} {:<8} {:<10} {note}\n",
            "member",
            member.node,
            member.role,
            "etcd",
            if member.eligible { "yes" } else { "no" },
        ));
    }
    let leader = cluster.leader.clone().unwrap_or_else(|| "NONE".to_owned());
    out.push_str(&format!(
        "\ncluster: {}    leader: {leader}    term: {}\n",
        cluster.name, report.term
    ));
    let lease = cluster.lease.clone().unwrap_or_else(|| "none".to_owned());
    let acting = cluster.acting_for_ms.map_or_else(String::new, |ms| {
        format!("    may act {ms} ms more without a renewal")
    });
    out.push_str(&format!("lease: {lease}{acting}\n"));
    if cluster.on_confirmations {
        out.push_str("ACTIVE ON CONFIRMATIONS: etcd does not renew the lease; every other member confirms this node\n");
    }
    if !cluster.on_store_loss.is_empty() {
        out.push_str(&format!("on etcd loss: {}\n", cluster.on_store_loss));
    }
    if let Some(error) = &cluster.etcd_error {
        out.push_str(&format!("etcd: ERROR {error}\n"));
    }
    out.push_str("store: in etcd\n");
    out
}

fn certs_init(
    dir: &Path,
    nodes: Vec<NodeSpec>,
    names: Vec<String>,
    force: bool,
) -> anyhow::Result<()> {
    let plan = Plan {
        nodes,
        front_names: names,
        force,
    };
    let files = certs::init(dir, &plan)?;
    for file in files {
        println!("wrote {}", file.display());
    }
    println!("Keep ca.key off the nodes; each node needs ca.pem, its own ID.pem and ID.key.");
    Ok(())
}
