//! Seeded random-fault schedules on the virtual-clock pair, with invariants checked after
//! every step.
//!
//! Each schedule alternates storms (heartbeats lost, duplicated, delayed and reordered;
//! partitions, crashes (silent, or a killed process whose host refuses the link: `PeerGone`
//! a few ms later, racing a restart), restarts, shutdowns, registrar and health flips, maintenance,
//! switchovers, store writes) with quiet stretches (clean link, no new fault). Checked:
//!
//! - (a) once nothing has changed for `SETTLE`, exactly one node is active if any running
//!   node may *become* active; if none may, none is active under `on_loss = "step-down"`,
//!   and at most one under `hand-over` (an active node that lost its registrar stays, R7b);
//! - (b) a node's term never decreases (the term survives restarts, as the driver persists it);
//! - (c) a node becomes active only while it may become active, and is active only while it
//!   may *stay* active (checked at every step, not only on takeover): under `hand-over` an
//!   active node without its registrar has no peer in contact that reaches it and could
//!   take over;
//! - (d) no role changes once settled, and only a few per node while settling;
//! - (e) never two active nodes while the link is up: on a clean link, both active and both
//!   in contact for longer than R10's decision window (a heartbeat, plus one more and the
//!   longest link delay for the reports to cross) is a violation, storms or not. This is
//!   what a `PeerGone` racing a restart must never cause.
//!
//! `SETTLE` is longer than `peer_dead_after` because some rules legitimately act later than
//! that after the last fault: a restarted node may wait `startup_wait`, a failback waits
//! `preempt_delay`, a switchover may wait `handover_timeout`.
//!
//! A failure prints its seed; `STANDBY_SEED=<seed> cargo test --test random_faults` replays
//! exactly that schedule and prints its trace. `STANDBY_SCHEDULES=<n>` changes the count.

mod common;

use common::{ms, Pair, PairConfig, Rng, A, B};
use standby_proxy::engine::{OnRegistrarLoss, ProtocolVersion, Role};
use std::time::{Duration, Instant};

const SCHEDULES: u64 = 10_000;
/// startup_wait 1s + peer_dead_after 0.3s + preempt_delay 1s + handover_timeout 1s, plus
/// four heartbeats and the longest link delay, rounded up.
const SETTLE: Duration = Duration::from_secs(4);
/// Role changes one fault may cause at one node on a clean link (e.g. failed -> standby ->
/// active, or after a split: active -> standby, then failback -> active). More is flapping.
const CHANGES_PER_FAULT: usize = 2;
const MAX_LINK_DELAY: Duration = Duration::from_millis(150);

/// Checks the invariants after every step of one schedule.
struct Checker {
    last_fault: Duration,
    /// Times of the faults that may still be settling.
    recent_faults: Vec<Duration>,
    terms: [u64; 2],
    /// Since when both nodes have been active and in contact on a clean link (e).
    dual_active_since: Option<Duration>,
    violation: Option<String>,
}

impl Checker {
    /// (e): both active while in contact on a clean link lasts at most R10's window.
    fn check_dual_active(&mut self, pair: &Pair) -> Result<(), String> {
        let in_contact = |node| pair.status(node).peer.is_some_and(|peer| peer.contact);
        let dual = pair.link_clean() && pair.actives().len() == 2 && in_contact(A) && in_contact(B);
        let since = match (dual, self.dual_active_since) {
            (false, _) => {
                self.dual_active_since = None;
                return Ok(());
            }
            (true, Some(since)) => since,
            (true, None) => *self.dual_active_since.insert(pair.now),
        };
        let window = pair.config.heartbeat_interval * 2 + MAX_LINK_DELAY;
        if pair.now > since + window {
            return Err(format!(
                "(e) both active and in contact on a clean link since {:.3}s",
                since.as_secs_f64()
            ));
        }
        Ok(())
    }

    fn fault(&mut self, pair: &Pair) {
        self.last_fault = pair.now;
        self.recent_faults.retain(|&at| at + SETTLE >= pair.now);
        self.recent_faults.push(pair.now);
    }

    fn check(&mut self, pair: &Pair) {
        if self.violation.is_some() {
            return;
        }
        if let Err(message) = self.check_step(pair) {
            self.violation = Some(format!("at {:.3}s: {message}", pair.now.as_secs_f64()));
        }
    }

    fn check_step(&mut self, pair: &Pair) -> Result<(), String> {
        for node in [A, B] {
            // (c)
            if pair.nodes[node].ineligible_takeovers > 0 {
                return Err(format!(
                    "(c) node {node} became active while it may not become active"
                ));
            }
            let Some(engine) = pair.nodes[node].engine.as_ref() else {
                continue;
            };
            if engine.role() == Role::Active && !engine.may_stay_active(pair.instant()) {
                return Err(format!(
                    "(c) node {node} is active while it may not stay active"
                ));
            }
            // (b)
            if engine.term() < self.terms[node] {
                return Err(format!(
                    "(b) node {node} term went back from {} to {}",
                    self.terms[node],
                    engine.term()
                ));
            }
            self.terms[node] = engine.term();
        }

        self.check_dual_active(pair)?;
        let settled_at = self.last_fault + SETTLE;
        // On a lossy link every lost heartbeat is a new fault; the bound holds on a clean one.
        let clean = pair.link_clean();
        let window_start = self.recent_faults.first().copied().unwrap_or_default();
        let allowed = CHANGES_PER_FAULT * self.recent_faults.len() + 1;
        for node in [A, B].into_iter().filter(|_| clean) {
            let changes = pair.transitions_since(node, window_start);
            if changes.len() > allowed {
                return Err(format!(
                    "(d) node {node} changed role {} times after {} faults",
                    changes.len(),
                    self.recent_faults.len()
                ));
            }
        }
        if pair.now < settled_at {
            return Ok(());
        }
        // (d)
        for node in [A, B] {
            if let Some(change) = pair.transitions_since(node, settled_at).first() {
                return Err(format!(
                    "(d) node {node} changed role without a new fault: {} -> {} ({})",
                    change.from,
                    change.to,
                    change.reason.as_str()
                ));
            }
        }
        // (a)
        let any_eligible = [A, B].into_iter().any(|node| {
            pair.nodes[node]
                .engine
                .as_ref()
                .is_some_and(|engine| engine.eligible())
        });
        let actives = pair.actives();
        let strict = pair.config.on_registrar_loss == OnRegistrarLoss::StepDown;
        let expected = if any_eligible || !strict {
            usize::from(any_eligible)..=1
        } else {
            0..=0
        };
        if !expected.contains(&actives.len()) {
            return Err(format!(
                "(a) {} active ({actives:?}) although {} eligible",
                actives.len(),
                if any_eligible {
                    "some node is"
                } else {
                    "none is"
                }
            ));
        }
        Ok(())
    }
}

/// Replicates instantly while both run, the link is up and they speak the same version:
/// the store itself is simulated only as far as positions go.
fn sync_stores(pair: &mut Pair) {
    let linked = pair.links.iter().all(|link| link.up);
    let same_version = pair.config.versions[A].compatible_with(pair.config.versions[B]);
    if pair.running(A) && pair.running(B) && linked && same_version {
        let position = pair.nodes[A]
            .store_position
            .max(pair.nodes[B].store_position);
        pair.store_position(A, position);
        pair.store_position(B, position);
    }
}

fn random_fault(pair: &mut Pair, rng: &mut Rng) {
    let node = if rng.chance(50) { A } else { B };
    match rng.below(13) {
        0 => pair.cut(),
        1 => pair.cut_one_way(node),
        2 => pair.heal(),
        3 => {
            let loss = rng.below(60);
            let duplicate = rng.below(30);
            let delay_max = rng.duration(ms(1), MAX_LINK_DELAY);
            pair.degrade(loss, duplicate, delay_max);
        }
        4 => {
            // A host that goes silent, or a process killed on a host that refuses the
            // link afterwards (the peer learns it in a few ms, R6 via `PeerGone`); the
            // next fault may restart it at once, racing the refusal.
            if pair.running(node) && rng.chance(50) {
                pair.crash(node);
            } else if pair.running(node) {
                let confirm = rng.duration(ms(1), ms(20));
                pair.kill(node, confirm);
            }
        }
        5 | 6 => {
            if !pair.running(node) {
                pair.restart(node);
            } else if rng.chance(30) {
                pair.shutdown(node);
            }
        }
        7 => {
            let up = !pair.nodes[node].registrar_up;
            pair.registrar(node, up);
        }
        8 => {
            let healthy = !pair.nodes[node].service_healthy;
            pair.health(node, healthy);
        }
        9 => {
            let on = !pair.nodes[node].maintenance;
            pair.maintenance(node, on);
        }
        10 => pair.switchover(node),
        11 => {
            if pair.role(node) == Some(Role::Active) {
                let position = pair.nodes[node].store_position + 1 + rng.below(5);
                pair.store_position(node, position);
            }
        }
        _ => pair.drop_next(1 + rng.below(5) as u32),
    }
    sync_stores(pair);
}

/// Runs one schedule; returns the violation and, if `trace`, the trace.
fn run_schedule(seed: u64, trace: bool) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut config = if rng.chance(50) {
        PairConfig::sticky()
    } else {
        PairConfig::prefer_primary()
    };
    config.preempt_delay = ms(1000);
    config.registrar_configured = rng.chance(70);
    if rng.chance(30) {
        config.on_registrar_loss = OnRegistrarLoss::StepDown;
    }
    config.health_check_configured = rng.chance(50);
    if rng.chance(50) {
        config.addresses.swap(A, B);
    }
    if rng.chance(50) {
        config.priorities.swap(A, B);
    }
    if rng.chance(10) {
        config.versions[B] = ProtocolVersion { major: 2, minor: 0 };
    }
    let mut pair = Pair::with_seed(config, rng.next_u64());
    pair.tracing = trace;
    let mut checker = Checker {
        last_fault: Duration::ZERO,
        recent_faults: Vec::new(),
        terms: [0, 0],
        dual_active_since: None,
        violation: None,
    };

    pair.start(A);
    pair.run_for(rng.duration(ms(0), ms(1500)));
    pair.start(B);
    checker.fault(&pair);

    for _cycle in 0..2 {
        let storm_end = pair.now + rng.duration(ms(300), ms(4000));
        while pair.now < storm_end {
            let next = (pair.now + rng.duration(ms(0), ms(600))).min(storm_end);
            pair.run_with(next - pair.now, |p| checker.check(p));
            random_fault(&mut pair, &mut rng);
            checker.fault(&pair);
        }
        pair.heal();
        sync_stores(&mut pair);
        checker.fault(&pair);
        pair.run_with(SETTLE + ms(2000), |p| checker.check(p));
        if checker.violation.is_some() {
            break;
        }
    }
    match checker.violation {
        None => Ok(()),
        Some(violation) if trace => Err(format!("{violation}\n{}", pair.trace.join("\n"))),
        Some(violation) => Err(violation),
    }
}

#[test]
fn random_fault_schedules_keep_the_invariants() {
    if let Ok(seed) = std::env::var("STANDBY_SEED") {
        let seed: u64 = seed.parse().expect("STANDBY_SEED is a number");
        if let Err(failure) = run_schedule(seed, true) {
            panic!("seed {seed}: {failure}");
        }
        return;
    }
    let count = std::env::var("STANDBY_SCHEDULES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(SCHEDULES);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    #[allow(clippy::disallowed_methods)] // reports how long the run took, not a decision
    let started = Instant::now();
    let failures: Vec<(u64, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                scope.spawn(move || {
                    (worker..count)
                        .step_by(threads as usize)
                        .filter_map(|seed| run_schedule(seed, false).err().map(|e| (seed, e)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("worker thread"))
            .collect()
    });
    println!(
        "{count} schedules in {:.1}s, {} failed",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    if let Some((seed, failure)) = failures.iter().min_by_key(|(seed, _)| *seed) {
        panic!(
            "{} of {count} schedules failed; first: seed {seed}: {failure}\n\
             replay: STANDBY_SEED={seed} cargo test --test random_faults -- --nocapture",
            failures.len()
        );
    }
}
