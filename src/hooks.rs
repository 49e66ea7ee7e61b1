//! Role-change hooks: commands run when this node becomes active, becomes standby (or goes
//! into maintenance), or fails.
//!
//! They run strictly in the order of the role changes, one at a time, each with a timeout:
//! a slow `become_standby` finishes (or is killed) before the following `become_active`
//! starts, so they never overlap or reorder (keepalived's notify scripts can: its issues
//! #996, #1055). Each runs with `sh -c` and the environment `STANDBY_EVENT`, `STANDBY_NODE`,
//! `STANDBY_FROM`, `STANDBY_TO`, `STANDBY_TERM`, `STANDBY_REASON`; its exit status is logged
//! and counted.

use crate::engine::{Role, Transition};
use crate::telemetry;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::mpsc;
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

/// Queues hook runs; one task runs them in order.
pub struct HookRunner {
    jobs: Option<mpsc::UnboundedSender<Job>>,
    task: Option<JoinHandle<()>>,
}

impl HookRunner {
    /// Starts the runner for `node`.
    pub fn spawn(config: HooksConfig, node: String) -> HookRunner {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let task = tokio::spawn(async move {
            while let Some(job) = queue.recv().await {
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
            jobs: Some(jobs),
            task: Some(task),
        }
    }

    /// Queues the hooks of a role change (none for a change to `starting`).
    pub fn role_changed(&self, change: &Transition) {
        if let (Some(event), Some(jobs)) = (HookEvent::of(change.to), &self.jobs) {
            // The runner lives as long as the node; a closed queue only happens at shutdown.
            let _ = jobs.send(Job {
                event,
                change: change.clone(),
            });
        }
    }

    /// Takes no more jobs and waits (at most `grace`) for the queued ones to finish.
    pub async fn finish(&mut self, grace: Duration) {
        self.jobs = None;
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

    /// Rapid role changes: every hook's start and end lines must come in pairs, in the order
    /// of the changes, however long each takes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hooks_never_overlap_or_reorder() {
        let dir = std::env::temp_dir().join(format!("standby-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("log");
        let line = |tag: &str, sleep: &str| {
            format!(
                "echo \"start {tag} $STANDBY_TERM\" >> {log}; sleep {sleep}; echo \"end {tag} $STANDBY_TERM\" >> {log}",
                log = log.display()
            )
        };
        let config = HooksConfig {
            become_active: vec![line("active", "0.03")],
            become_standby: vec![line("standby", "0.06"), line("standby2", "0")],
            fault: vec![line("fault", "0.01")],
            timeout: Duration::from_secs(5),
        };
        let mut runner = HookRunner::spawn(config, "a".into());
        let roles = [
            Role::Active,
            Role::Standby,
            Role::Active,
            Role::Failed,
            Role::Maintenance,
            Role::Starting,
            Role::Active,
        ];
        for (term, role) in roles.iter().enumerate() {
            runner.role_changed(&change(*role, term as u64));
        }
        runner.finish(Duration::from_secs(10)).await;
        let text = std::fs::read_to_string(&log).expect("log");
        std::fs::remove_dir_all(&dir).ok();
        let expected = [
            "start active 0",
            "end active 0",
            "start standby 1",
            "end standby 1",
            "start standby2 1",
            "end standby2 1",
            "start active 2",
            "end active 2",
            "start fault 3",
            "end fault 3",
            "start standby 4",
            "end standby 4",
            "start standby2 4",
            "end standby2 4",
            "start active 6",
            "end active 6",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
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
