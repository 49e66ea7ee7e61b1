//! The stall watchdog: every front-end thread stamps a heartbeat; the control plane checks
//! the stamps and reports a thread whose stamp is late. The data plane never waits on the
//! control plane, and the control plane only reads atomics the data plane writes.
//!
//! A stamp that did not move means a front-end thread did not get back to its loop for a whole
//! [`STALL_AFTER`]: a task that spins, a blocking call on a runtime thread, or a starved
//! machine. It is logged once per stall and counted in `standby_front_stalls_total` and
//! `standby_front_stall_seconds_total`, so an operator sees it if it ever happens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// How often a front-end thread stamps.
pub const STAMP_EVERY: Duration = Duration::from_millis(100);
/// A stamp older than this is a stall.
pub const STALL_AFTER: Duration = Duration::from_secs(1);

/// Milliseconds since the first stamp of the process: small numbers an atomic holds.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(Instant::now().saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// One thread's stamp: a count of its loop's turns, which only that thread writes. Counting
/// costs no clock read on the hot path; the checker notes when the count last moved.
#[derive(Debug)]
pub struct Stamp {
    /// The front end it serves.
    frontend: String,
    /// The thread, for the log.
    thread: String,
    /// Turns of the thread's loop so far.
    beats: AtomicU64,
}

impl Stamp {
    /// Records that the thread is at its loop now.
    pub fn beat(&self) {
        // One writer: a plain store of the next value, no locked instruction.
        let next = self.beats.load(Ordering::Relaxed).wrapping_add(1);
        self.beats.store(next, Ordering::Relaxed);
    }
}

/// What the checker remembers of one stamp: the count it last saw and when that changed.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    beats: u64,
    since_ms: u64,
}

/// Every front-end thread's stamp, shared by the front ends (which register) and the control
/// plane (which checks).
#[derive(Debug, Clone, Default)]
pub struct Watchdog {
    stamps: Arc<Mutex<Vec<Arc<Stamp>>>>,
}

/// A thread found late by one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Late {
    /// Its front end.
    pub frontend: String,
    /// The thread.
    pub thread: String,
    /// How late: time since its last stamp.
    pub silent: Duration,
}

impl Watchdog {
    /// A stamp for a thread of `frontend`, stamped now. The thread's name gets a number,
    /// so several threads of one name are told apart.
    pub fn register(&self, frontend: &str, thread: &str) -> Arc<Stamp> {
        let mut stamps = self
            .stamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stamp = Arc::new(Stamp {
            frontend: frontend.to_owned(),
            thread: format!("{thread}#{}", stamps.len()),
            beats: AtomicU64::new(0),
        });
        stamps.push(stamp.clone());
        stamp
    }

    /// Stamps `stamp` every [`STAMP_EVERY`], on the runtime the thread serves with: if that
    /// runtime stops getting to its tasks, the stamp goes stale.
    pub async fn stamp_runtime(stamp: Arc<Stamp>) {
        loop {
            stamp.beat();
            tokio::time::sleep(STAMP_EVERY).await;
        }
    }

    /// The threads whose count has not moved for longer than [`STALL_AFTER`] at `now_ms`;
    /// `seen` is what the checker saw before (one entry per stamp, grown as they register).
    fn late_at(&self, now_ms: u64, seen: &mut Vec<Seen>) -> Vec<Late> {
        let stamps = self
            .stamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.resize(
            stamps.len(),
            Seen {
                beats: u64::MAX,
                since_ms: now_ms,
            },
        );
        stamps
            .iter()
            .zip(seen.iter_mut())
            .filter_map(|(stamp, seen)| {
                let beats = stamp.beats.load(Ordering::Relaxed);
                if beats != seen.beats {
                    *seen = Seen {
                        beats,
                        since_ms: now_ms,
                    };
                }
                let silent = Duration::from_millis(now_ms.saturating_sub(seen.since_ms));
                (silent > STALL_AFTER).then(|| Late {
                    frontend: stamp.frontend.clone(),
                    thread: stamp.thread.clone(),
                    silent,
                })
            })
            .collect()
    }

    /// Checks the stamps every [`STAMP_EVERY`] for as long as the task runs (on the control
    /// plane): a stall is logged when it starts and ends, counted once, and its duration
    /// added up while it lasts.
    pub async fn check(self) {
        // Stalled threads and the whole seconds of their stall counted so far.
        let mut stalled: Vec<(String, u64)> = Vec::new();
        let mut seen = Vec::new();
        let mut interval = tokio::time::interval(STAMP_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let late = self.late_at(now_ms(), &mut seen);
            for thread in &late {
                let seconds = thread.silent.as_secs();
                match stalled.iter_mut().find(|(name, _)| *name == thread.thread) {
                    Some((_, counted)) => {
                        crate::telemetry::front_stall_seconds(
                            &thread.frontend,
                            seconds.saturating_sub(*counted),
                        );
                        *counted = seconds.max(*counted);
                    }
                    None => {
                        crate::telemetry::front_stall(&thread.frontend);
                        crate::telemetry::front_stall_seconds(&thread.frontend, seconds);
                        tracing::warn!(frontend = %thread.frontend, thread = %thread.thread, silent_ms = thread.silent.as_millis() as u64, "a front-end thread is stalled");
                        stalled.push((thread.thread.clone(), seconds));
                    }
                }
            }
            stalled.retain(|(name, _)| {
                let still = late.iter().any(|thread| &thread.thread == name);
                if !still {
                    tracing::info!(thread = %name, "the front-end thread serves again");
                }
                still
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_whose_count_stops_is_late_and_one_that_counts_is_not() {
        let watchdog = Watchdog::default();
        let quiet = watchdog.register("sip", "sip-udp");
        let busy = watchdog.register("sip", "sip-tcp");
        let mut seen = Vec::new();
        assert!(watchdog.late_at(1_000, &mut seen).is_empty());
        busy.beat();
        assert!(watchdog.late_at(1_600, &mut seen).is_empty());
        busy.beat();
        let late = watchdog.late_at(2_100, &mut seen);
        assert_eq!(
            late,
            [Late {
                frontend: "sip".to_owned(),
                thread: "sip-udp#0".to_owned(),
                silent: Duration::from_millis(1_100),
            }]
        );
        quiet.beat();
        busy.beat();
        assert!(watchdog.late_at(2_200, &mut seen).is_empty());
    }
}
