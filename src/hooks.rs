//! Role-change hooks: commands run when this node becomes active, becomes standby (or goes
//! into maintenance), or fails.
//!
//! They run one at a time, in the order of the role changes, each with a timeout: a slow
//! `become_standby` finishes (or is killed) before the following `become_active` starts, so
//! they never overlap or reorder (keepalived's notify scripts can: its issues #996, #1055).
//! Role changes that come while a hook runs collapse into one pending run, the latest: a
//! flapping pair does not run stale hooks minutes later, and the last hook to run always
//! matches the node's role. Skipped runs are logged and counted (`result="skipped"`).
//! Each command runs with `sh -c` in a process group of its own, and a timeout kills the whole
//! group (a hook's children do not run on into the next). The environment has
//! `STANDBY_EVENT`, `STANDBY_NODE`, `STANDBY_FROM`, `STANDBY_TO`, `STANDBY_TERM` and
//! `STANDBY_REASON`; the exit status is logged and counted.

use crate::engine::{Role, Transition};
use crate::telemetry;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

/// `[hooks]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HooksConfig {
    /// Run when this node becomes active.
    pub become_active: Vec<String>,
    /// Run when it becomes standby or goes into maintenance.
    pub become_standby: Vec<String>,
    /// Run when its service fails.
    pub fault: Vec<String>,
    /// Longest one command may run before it is killed.
    pub timeout: Duration,
}

/// Which hooks a role change runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookEvent {
    /// To active.
    BecomeActive,
    /// To standby or maintenance.
    BecomeStandby,
    /// To failed.
    Fault,
}

impl HookEvent {
    /// The event for a role change, if it has hooks.
    pub fn of(to: Role) -> Option<HookEvent> {
        match to {
            Role::Active => Some(HookEvent::BecomeActive),
            Role::Standby | Role::Maintenance => Some(HookEvent::BecomeStandby),
            Role::Failed => Some(HookEvent::Fault),
            Role::Starting => None,
        }
    }

    /// As in the config and `STANDBY_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::BecomeActive => "become_active",
            HookEvent::BecomeStandby => "become_standby",
            HookEvent::Fault => "fault",
        }
    }
}

struct Job {
    event: HookEvent,
    change: Transition,
}

/// The one pending run, shared by the node and the runner's task.
#[derive(Default)]
struct Pending {
    job: std::sync::Mutex<Option<Job>>,
    /// No more jobs: the task ends once the pending one ran.
    closed: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl Pending {
    fn take(&self) -> Option<Job> {
        self.job
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Holds the pending hook run; one task runs them in order.
pub struct HookRunner {
    pending: Arc<Pending>,
    task: Option<JoinHandle<()>>,
}

impl HookRunner {
    /// Starts the runner for `node`.
    pub fn spawn(config: HooksConfig, node: String) -> HookRunner {
        let pending = Arc::new(Pending::default());
        let shared = pending.clone();
        let task = tokio::spawn(async move {
            loop {
                let Some(job) = shared.take() else {
                    if shared.closed.load(Ordering::Acquire) {
                        return;
                    }
                    shared.wake.notified().await;
                    continue;
                };
                let commands = match job.event {
                    HookEvent::BecomeActive => &config.become_active,
                    HookEvent::BecomeStandby => &config.become_standby,
                    HookEvent::Fault => &config.fault,
                };
                for command in commands {
                    run_one(command, job.event, &job.change, &node, config.timeout).await;
                }
            }
        });
        HookRunner {
            pending,
            task: Some(task),
        }
    }

    /// Makes the hooks of a role change the pending run (none for a change to `starting`),
    /// replacing one that has not started.
    pub fn role_changed(&self, change: &Transition) {
        let Some(event) = HookEvent::of(change.to) else {
            return;
        };
        if self.pending.closed.load(Ordering::Acquire) {
            return;
        }
        let job = Job {
            event,
            change: change.clone(),
        };
        let replaced = self
            .pending
            .job
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(job);
        if let Some(skipped) = replaced {
            telemetry::hook(skipped.event.as_str(), "skipped", Duration::ZERO);
            info!(
                event = skipped.event.as_str(),
                term = skipped.change.term,
                "hook skipped: a newer role change came before it could run"
            );
        }
        self.pending.wake.notify_one();
    }

    /// Takes no more jobs and waits (at most `grace`) for the pending one to finish.
    pub async fn finish(&mut self, grace: Duration) {
        self.pending.closed.store(true, Ordering::Release);
        self.pending.wake.notify_one();
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(grace, task).await.is_err() {
                warn!("hooks still running at shutdown were abandoned");
            }
        }
    }
}

async fn run_one(
    command: &str,
    event: HookEvent,
    change: &Transition,
    node: &str,
    timeout: Duration,
) {
    let started = Instant::now();
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("STANDBY_EVENT", event.as_str())
        .env("STANDBY_NODE", node)
        .env("STANDBY_FROM", change.from.as_str())
        .env("STANDBY_TO", change.to.as_str())
        .env("STANDBY_TERM", change.term.to_string())
        .env("STANDBY_REASON", change.reason.as_str())
        .stdin(Stdio::null())
        // Its own process group, so a timeout can kill what it started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            telemetry::hook(event.as_str(), "error", started.elapsed());
            warn!(event = event.as_str(), command, %error, "hook could not start");
            return;
        }
    };
    let result = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => {
            info!(event = event.as_str(), command, took = ?started.elapsed(), "hook succeeded");
            "ok"
        }
        Ok(Ok(status)) => {
            warn!(event = event.as_str(), command, %status, "hook failed");
            "failed"
        }
        Ok(Err(error)) => {
            warn!(event = event.as_str(), command, %error, "hook could not be waited for");
            "error"
        }
        Err(_) => {
            kill_group(&child);
            let _ = child.kill().await;
            warn!(
                event = event.as_str(),
                command,
                ?timeout,
                "hook timed out and was killed"
            );
            "timeout"
        }
    };
    telemetry::hook(event.as_str(), result, started.elapsed());
}

/// Kills the process group `child` leads (it was started with `process_group(0)`).
fn kill_group(child: &tokio::process::Child) {
    let Some(leader) = child.id().and_then(|id| libc::pid_t::try_from(id).ok()) else {
        return; // already reaped
    };
    // SAFETY: killpg only sends a signal; the group id is the child's pid, which is not
    // reaped yet (we still hold it), so it cannot name another process group.
    unsafe {
        libc::killpg(leader, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Reason;

    fn change(to: Role, term: u64) -> Transition {
        Transition {
            from: Role::Standby,
            to,
            term,
            reason: Reason::PeerDead,
        }
    }

    /// A burst of role changes: hooks never overlap or reorder, the ones that could not
    /// start before a newer change are skipped, and the last to run matches the last role.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_role_changes_collapses_and_the_last_hook_matches_the_role() {
        let dir = std::env::temp_dir().join(format!("standby-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("log");
        let line = |tag: &str| {
            format!(
                "echo \"start {tag} $STANDBY_TERM\" >> {log}; sleep 0.05; echo \"end {tag} $STANDBY_TERM\" >> {log}",
                log = log.display()
            )
        };
        let config = HooksConfig {
            become_active: vec![line("active")],
            become_standby: vec![line("standby")],
            fault: vec![line("fault")],
            timeout: Duration::from_secs(5),
        };
        let mut runner = HookRunner::spawn(config, "a".into());
        for term in 0..=20u64 {
            let role = if term % 2 == 0 {
                Role::Active
            } else {
                Role::Standby
            };
            runner.role_changed(&change(role, term));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        runner.finish(Duration::from_secs(10)).await;
        let text = std::fs::read_to_string(&log).expect("log");
        std::fs::remove_dir_all(&dir).ok();
        let lines: Vec<&str> = text.lines().collect();
        // Pairs: each start followed by its own end, terms only growing.
        let mut last_term = None;
        for pair in lines.chunks(2) {
            let [start, end] = pair else {
                panic!("unpaired: {lines:?}")
            };
            assert_eq!(start.replace("start", "end"), *end, "{lines:?}");
            let term: u64 = start
                .rsplit(' ')
                .next()
                .and_then(|t| t.parse().ok())
                .expect("term");
            assert!(last_term < Some(term), "reordered: {lines:?}");
            last_term = Some(term);
        }
        // 21 changes 5 ms apart, hooks of 50 ms: most were skipped, and the last ran.
        assert!(lines.len() / 2 < 10, "nothing collapsed: {lines:?}");
        assert_eq!(lines.last(), Some(&"end active 20"), "{lines:?}");
    }

    #[tokio::test]
    async fn a_hook_timed_out_is_killed_with_what_it_started() {
        let dir = std::env::temp_dir().join(format!("standby-hooks-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let pid_file = dir.join("sleeper");
        let config = HooksConfig {
            become_active: vec![format!("sleep 30 & echo $! > {}; wait", pid_file.display())],
            timeout: Duration::from_millis(300),
            ..HooksConfig::default()
        };
        let mut runner = HookRunner::spawn(config, "a".into());
        runner.role_changed(&change(Role::Active, 1));
        runner.finish(Duration::from_secs(5)).await;
        let pid = std::fs::read_to_string(&pid_file).expect("the sleeper started");
        std::fs::remove_dir_all(&dir).ok();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let alive = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .is_ok_and(|stat| !stat.contains(") Z "));
        assert!(
            !alive,
            "the hook's child {} outlived its timeout",
            pid.trim()
        );
    }

    #[tokio::test]
    async fn a_hook_that_hangs_is_killed_and_the_next_still_runs() {
        let dir =
            std::env::temp_dir().join(format!("standby-hooks-timeout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let marker = dir.join("ran");
        let config = HooksConfig {
            become_active: vec![
                "sleep 10".to_owned(),
                "exit 3".to_owned(),
                format!("echo \"$STANDBY_EVENT $STANDBY_NODE $STANDBY_FROM $STANDBY_TO $STANDBY_REASON\" > {}", marker.display()),
            ],
            timeout: Duration::from_millis(100),
            ..HooksConfig::default()
        };
        let started = Instant::now();
        let mut runner = HookRunner::spawn(config, "b".into());
        runner.role_changed(&change(Role::Active, 5));
        runner.finish(Duration::from_secs(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the hanging hook was not killed"
        );
        let text = std::fs::read_to_string(&marker).expect("the last hook ran");
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(text.trim(), "become_active b standby active peer_dead");
    }
}
