//! Runs the dev pair's two node processes: starts them, waits until one is active, restarts
//! one that dies 2 s later (as the systemd unit's `Restart=on-failure` would, so a person who
//! kills the active node sees it come back as standby), and stops both on Ctrl-C.
//!
//! Each node's log goes to this process's stderr, every line prefixed with the node's id.
//! The nodes get `PR_SET_PDEATHSIG`: if this process is killed, they stop too rather than
//! hold the ports. That signal follows the *thread* that started them, so the caller runs
//! this on a current-thread runtime (the main thread).

use super::{DevError, Prepared};
use crate::admin::client;
use crate::admin::StatusReport;
use hyper::Method;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tracing::{info, warn};

/// How long a dead node stays down before it is started again.
const RESTART_AFTER: Duration = Duration::from_secs(2);
/// How long the pair may take to elect its first active node.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// How long a node may take to stop on SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(10);

enum Event {
    Stop,
    Exited(usize, std::io::Result<ExitStatus>),
    Restart(usize),
}

/// Runs the pair until `shutdown` completes; calls `ready` with both nodes' process ids and
/// the active node's id once the pair has elected one.
pub async fn run(
    prepared: &Prepared,
    exe: &Path,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce([u32; 2], String),
) -> Result<(), DevError> {
    let exe = exe.to_owned();
    let mut children = [
        Some(spawn(prepared, &exe, 0)?),
        Some(spawn(prepared, &exe, 1)?),
    ];
    let pids = [pid(&children[0]), pid(&children[1])];
    tokio::pin!(shutdown);
    let active = tokio::select! {
        active = wait_until_active(prepared) => active,
        () = &mut shutdown => {
            stop(&mut children).await;
            return Ok(());
        }
    };
    let active = match active {
        Ok(active) => active,
        Err(error) => {
            stop(&mut children).await;
            return Err(error);
        }
    };
    ready(pids, active);
    let mut restart_at: [Option<Instant>; 2] = [None, None];
    loop {
        let [first, second] = &mut children;
        let event = tokio::select! {
            () = &mut shutdown => Event::Stop,
            status = exited(first) => Event::Exited(0, status),
            status = exited(second) => Event::Exited(1, status),
            () = due(restart_at[0]) => Event::Restart(0),
            () = due(restart_at[1]) => Event::Restart(1),
        };
        match event {
            Event::Stop => break,
            Event::Exited(index, status) => {
                children[index] = None;
                restart_at[index] = Some(Instant::now() + RESTART_AFTER);
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                info!(node = %prepared.nodes[index].id, %status, "node exited; dev starts it again in 2 s");
            }
            Event::Restart(index) => {
                restart_at[index] = None;
                children[index] = Some(spawn(prepared, &exe, index)?);
                let pid = pid(&children[index]);
                info!(node = %prepared.nodes[index].id, pid, "node started again");
            }
        }
    }
    stop(&mut children).await;
    Ok(())
}

fn pid(child: &Option<Child>) -> u32 {
    child.as_ref().and_then(Child::id).unwrap_or(0)
}

fn spawn(prepared: &Prepared, exe: &PathBuf, index: usize) -> Result<Child, DevError> {
    let id = prepared.nodes[index].id.clone();
    let mut command = Command::new(exe);
    command
        .arg("run")
        .arg("--config")
        .arg(&prepared.configs[index])
        .current_dir(&prepared.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl only sets this process's parent-death signal; it touches no memory and
    // is async-signal-safe, as a pre_exec closure must be.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| DevError::Spawn {
        node: id.clone(),
        source,
    })?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(prefix_lines(out, id.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(prefix_lines(err, id));
    }
    Ok(child)
}

/// Copies a node's output to this process's stderr, each line as `<id> | line`.
async fn prefix_lines(output: impl AsyncRead + Unpin, id: String) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let _ = writeln!(std::io::stderr().lock(), "{id} | {line}");
    }
}

async fn exited(child: &mut Option<Child>) -> std::io::Result<ExitStatus> {
    match child {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
}

async fn due(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The active node's id once one node says it is active and the other standby.
async fn wait_until_active(prepared: &Prepared) -> Result<String, DevError> {
    let deadline = Instant::now() + READY_WITHIN;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        let mut roles = Vec::new();
        for node in &prepared.nodes {
            let base = format!("http://{}:{}", node.address, prepared.ports.admin);
            match client::call(&base, Method::GET, "/api/v1/status", None, None, None).await {
                Ok(value) => match serde_json::from_value::<StatusReport>(value) {
                    Ok(report) => roles.push((report.node, report.role)),
                    Err(error) => last = format!("{base}: {error}"),
                },
                Err(error) => last = error.to_string(),
            }
        }
        let active: Vec<&String> = roles
            .iter()
            .filter(|(_, role)| role == "active")
            .map(|(id, _)| id)
            .collect();
        let standby = roles.iter().filter(|(_, role)| role == "standby").count();
        if let ([active], 1) = (active.as_slice(), standby) {
            return Ok((*active).clone());
        }
        if roles.len() == 2 {
            last = format!("roles {roles:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(DevError::NotReady {
        seconds: READY_WITHIN.as_secs(),
        last,
    })
}

/// SIGTERM to every running node (the graceful hand-over), then a kill after
/// [`STOP_WITHIN`].
async fn stop(children: &mut [Option<Child>; 2]) {
    for child in children.iter().flatten() {
        if let Some(pid) = child.id().and_then(|id| libc::pid_t::try_from(id).ok()) {
            // SAFETY: kill only sends a signal, to our own child, not reaped yet (we hold it).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    for child in children.iter_mut().flatten() {
        if tokio::time::timeout(STOP_WITHIN, child.wait())
            .await
            .is_err()
        {
            warn!("a node did not stop within 10 s of SIGTERM: killed");
            let _ = child.kill().await;
        }
    }
}
