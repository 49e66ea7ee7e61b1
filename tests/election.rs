//! One scenario per election rule (R1–R13 of design.md), on the virtual-clock pair.
//!
//! Timing: heartbeat 100ms, peer dead after 300ms, startup wait 1s, preempt delay 2s,
//! handover timeout 1s, link latency 1ms. Times asserted here are virtual, so exact.

mod common;

use common::{ms, Pair, PairConfig, A, B};
use standby_proxy::engine::{
    Event, Input, OnRegistrarLoss, Priority, ProtocolVersion, Reason, RefuseReason, Role,
};

fn reasons_to(pair: &Pair, node: usize, role: Role) -> Vec<Reason> {
    pair.nodes[node]
        .transitions
        .iter()
        .filter(|(_, t)| t.to == role)
        .map(|(_, t)| t.reason)
        .collect()
}

fn has_event(pair: &Pair, node: usize, wanted: &Event) -> bool {
    pair.nodes[node].events.iter().any(|(_, e)| e == wanted)
}

// R1 -----------------------------------------------------------------------------------------

#[test]
fn r1_starting_node_waits_for_its_peer_until_startup_wait() {
    let mut pair = Pair::new(PairConfig::sticky());
    pair.start(A);
    pair.run_for(ms(999));
    assert_eq!(pair.role(A), Some(Role::Starting));
    pair.run_for(ms(1));
    assert_ne!(pair.role(A), Some(Role::Starting));
}

#[test]
fn r1_starting_node_stops_waiting_as_soon_as_it_hears_the_peer() {
    let mut pair = Pair::new(PairConfig::sticky());
    pair.start(A);
    pair.run_for(ms(200));
    pair.start(B);
    let took = pair.run_until(ms(2000), |p| {
        p.role(A) != Some(Role::Starting) && p.role(B) != Some(Role::Starting)
    });
    // B's first heartbeat goes out at start; one link latency later both have decided,
    // long before either startup_wait ends.
    assert!(took.is_some_and(|t| t <= ms(5)), "took {took:?}");
    assert_eq!(pair.role(A), Some(Role::Active));
    assert_eq!(pair.role(B), Some(Role::Standby));
}

// R2 -----------------------------------------------------------------------------------------

#[test]
fn r2_node_hearing_an_active_peer_becomes_standby() {
    let mut pair = Pair::new(PairConfig::sticky());
    // b is the preferred one by address, but a is already active when b starts.
    pair.config.addresses.swap(A, B);
    pair.start(A);
    pair.run_for(ms(1500));
    assert_eq!(pair.role(A), Some(Role::Active));
    pair.start(B);
    pair.run_for(ms(3000));
    assert_eq!(pair.role(B), Some(Role::Standby));
    assert!(!pair.ever_became(B, Role::Active));
    assert_eq!(reasons_to(&pair, B, Role::Standby), [Reason::PeerActive]);
    assert_eq!(pair.role(A), Some(Role::Active));
}

// R3 -----------------------------------------------------------------------------------------

#[test]
fn r3_startup_tie_lower_address_becomes_active_when_sticky() {
    let mut config = PairConfig::sticky();
    // Priority plays no part under `sticky`.
    config.priorities = [Priority::Secondary, Priority::Primary];
    let pair = Pair::started(config);
    assert_eq!(pair.actives(), [A]);
    assert_eq!(reasons_to(&pair, A, Role::Active), [Reason::StartupTie]);
    assert_eq!(pair.role(B), Some(Role::Standby));
}

#[test]
fn r3_startup_tie_primary_becomes_active_with_prefer_primary() {
    let mut config = PairConfig::prefer_primary();
    config.priorities = [Priority::Secondary, Priority::Primary];
    let pair = Pair::started(config);
    assert_eq!(pair.actives(), [B]);
    assert_eq!(pair.role(A), Some(Role::Standby));
}

// R4 -----------------------------------------------------------------------------------------

#[test]
fn r4_eligible_node_wins_the_tie_when_the_preferred_one_is_not_eligible() {
    let mut pair = Pair::new(PairConfig::sticky());
    pair.nodes[A].registrar_up = false;
    pair.start(A);
    pair.start(B);
    pair.run_for(ms(2000));
    assert_eq!(pair.actives(), [B]);
    assert_eq!(
        reasons_to(&pair, B, Role::Active),
        [Reason::PeerNotEligible]
    );
    assert!(!pair.ever_became(A, Role::Active));
}

#[test]
fn r4_nobody_eligible_nobody_active_until_a_probe_succeeds() {
    let mut pair = Pair::new(PairConfig::sticky());
    pair.nodes[A].registrar_up = false;
    pair.nodes[B].registrar_up = false;
    pair.start(A);
    pair.start(B);
    pair.run_for(ms(5000));
    assert!(pair.actives().is_empty());
    assert_eq!(pair.role(A), Some(Role::Standby));
    assert_eq!(pair.role(B), Some(Role::Standby));
    // The probe result re-runs the election at once (one round trip to the peer).
    pair.registrar(B, true);
    pair.run_for(ms(3));
    assert_eq!(pair.actives(), [B]);
    // a becoming eligible later does not take over (b is active).
    pair.registrar(A, true);
    pair.run_for(ms(3000));
    assert_eq!(pair.actives(), [B]);
}

// R5 -----------------------------------------------------------------------------------------

#[test]
fn r5_node_alone_after_startup_wait_goes_active_with_no_standby_warning() {
    let mut pair = Pair::new(PairConfig::sticky());
    pair.start(A);
    pair.run_for(ms(1000));
    assert_eq!(pair.role(A), Some(Role::Active));
    assert_eq!(reasons_to(&pair, A, Role::Active), [Reason::Alone]);
    assert!(pair.status(A).no_standby);
    assert!(has_event(&pair, A, &Event::NoStandby { warning: true }));
    // The warning clears once a functioning standby joins.
    pair.start(B);
    pair.run_for(ms(50));
    assert_eq!(pair.role(B), Some(Role::Standby));
    assert!(!pair.status(A).no_standby);
}

#[test]
fn r5_node_alone_but_not_eligible_waits_and_rechecks() {
    let mut pair = Pair::new(PairConfig::sticky());
    pair.nodes[A].registrar_up = false;
    pair.start(A);
    pair.run_for(ms(3000));
    assert_eq!(pair.role(A), Some(Role::Standby));
    pair.registrar(A, true);
    assert_eq!(pair.role(A), Some(Role::Active));
    assert!(pair.status(A).no_standby);
}

// R6 -----------------------------------------------------------------------------------------

#[test]
fn r6_standby_takes_over_when_active_unreachable_and_registrar_up() {
    let mut pair = Pair::started(PairConfig::sticky());
    assert_eq!(pair.actives(), [A]);
    let term_before = pair.term(B);
    pair.crash(A);
    let took = pair
        .run_until(ms(2000), |p| p.role(B) == Some(Role::Active))
        .expect("b takes over");
    // Within peer_dead_after of a's last heartbeat.
    assert!(took <= ms(300), "took {took:?}");
    assert!(took > ms(190), "took over early: {took:?}");
    assert_eq!(reasons_to(&pair, B, Role::Active), [Reason::PeerDead]);
    assert!(pair.status(B).no_standby);
    assert_eq!(pair.term(B), term_before + 1);
}

#[test]
fn r6_standby_does_not_take_over_while_its_registrar_is_unreachable() {
    let mut pair = Pair::started(PairConfig::sticky());
    pair.registrar(B, false);
    pair.crash(A);
    pair.run_for(ms(5000));
    assert_eq!(pair.role(B), Some(Role::Standby));
    assert!(!pair.status(B).eligible);
    pair.registrar(B, true);
    assert_eq!(pair.role(B), Some(Role::Active));
}

#[test]
fn r6_a_killed_peer_whose_host_refuses_the_link_is_taken_over_in_milliseconds() {
    let mut pair = Pair::started(PairConfig::sticky());
    let term_before = pair.term(B);
    pair.kill(A, ms(5));
    let took = pair
        .run_until(ms(2000), |p| p.role(B) == Some(Role::Active))
        .expect("b takes over");
    // One latency for the connection's end, 5 ms of refusals: not peer_dead_after.
    assert!(took <= ms(10), "took {took:?}");
    assert_eq!(reasons_to(&pair, B, Role::Active), [Reason::PeerGone]);
    assert!(pair.status(B).no_standby);
    assert_eq!(pair.term(B), term_before + 1);
    // The killed node comes back and follows.
    pair.restart(A);
    pair.run_for(ms(2000));
    assert_eq!(pair.actives(), [B]);
    assert_eq!(pair.role(A), Some(Role::Standby));
}

#[test]
fn r6_a_gone_peer_is_not_taken_over_without_the_registrar() {
    let mut config = PairConfig::sticky();
    config.registrar_configured = true;
    let mut pair = Pair::started(config);
    pair.registrar(B, false);
    pair.kill(A, ms(5));
    pair.run_for(ms(2000));
    assert_eq!(pair.role(B), Some(Role::Standby));
    pair.registrar(B, true);
    assert_eq!(pair.role(B), Some(Role::Active));
    assert_eq!(reasons_to(&pair, B, Role::Active), [Reason::PeerGone]);
}

#[test]
fn r6_a_refusal_older_than_the_peers_last_heartbeat_changes_nothing() {
    let mut pair = Pair::started(PairConfig::sticky());
    // The link layer saw a's connection end, but a heartbeat came after (a restarted fast,
    // or a firewall REJECT while a still talks): the report is stale.
    let since = pair.instant();
    pair.run_for(ms(150));
    pair.input(B, Input::PeerGone { since });
    pair.run_for(ms(50));
    assert_eq!(pair.role(B), Some(Role::Standby));
    assert!(pair.status(B).peer.is_some_and(|peer| peer.contact));
    assert!(pair.transitions_since(B, ms(1000)).is_empty());
}

#[test]
fn r6_a_refusal_racing_the_peers_restart_never_leaves_two_active() {
    for confirm in [1, 3, 10, 30, 80] {
        let mut pair = Pair::started(PairConfig::sticky());
        pair.kill(A, ms(confirm));
        // a is back before, or right after, b hears that it was gone.
        pair.run_for(ms(confirm / 2));
        pair.restart(A);
        pair.run_for(ms(3000));
        assert_eq!(pair.actives().len(), 1, "confirm {confirm} ms");
    }
}

#[test]
fn r6_partition_makes_both_active_with_no_standby() {
    let mut pair = Pair::started(PairConfig::sticky());
    pair.cut();
    pair.run_for(ms(1000));
    assert_eq!(pair.actives(), [A, B]);
    assert!(pair.status(A).no_standby && pair.status(B).no_standby);
}

// R7 -----------------------------------------------------------------------------------------

#[test]
fn r7_active_whose_service_fails_hands_over_at_once() {
    let mut pair = Pair::started(PairConfig::sticky());
    pair.health(A, false);
    assert_eq!(pair.role(A), Some(Role::Failed));
    let took = pair
        .run_until(ms(2000), |p| p.role(B) == Some(Role::Active))
        .expect("b takes over");
    // One link latency, not peer_dead_after.
    assert!(took <= ms(2), "took {took:?}");
    assert_eq!(reasons_to(&pair, B, Role::Active), [Reason::PeerGaveUp]);
    // Recovered, it follows the active peer.
    pair.health(A, true);
    pair.run_for(ms(500));
    assert_eq!(pair.role(A), Some(Role::Standby));
    assert_eq!(pair.actives(), [B]);
}

#[test]
fn r7_active_whose_store_fails_hands_over_at_once_and_comes_back_as_standby() {
    let mut pair = Pair::started(PairConfig::sticky());
    pair.input(A, Input::StoreHealthy(false));
    assert_eq!(pair.role(A), Some(Role::Failed));
    assert!(pair.status(A).store_failed && !pair.status(A).eligible);
    let took = pair
        .run_until(ms(2000), |p| p.role(B) == Some(Role::Active))
        .expect("b takes over");
    assert!(took <= ms(2), "took {took:?}");
    assert_eq!(reasons_to(&pair, B, Role::Active), [Reason::PeerGaveUp]);
    assert_eq!(reasons_to(&pair, A, Role::Failed), [Reason::StoreFailed]);
    // A standby whose store fails is failed too: it may not take over with a broken store.
    pair.input(B, Input::StoreHealthy(false));
    pair.run_for(ms(500));
    assert_eq!(pair.role(B), Some(Role::Failed));
    assert!(pair.actives().is_empty() || pair.actives() == [A]);
    pair.input(B, Input::StoreHealthy(true));
    pair.input(A, Input::StoreHealthy(true));
    pair.run_for(ms(1000));
    assert_eq!(
        reasons_to(&pair, A, Role::Standby).last(),
        Some(&Reason::StoreRecovered)
    );
    assert_eq!(
        pair.actives().len(),
        1,
        "exactly one active once both stores work"
    );
}

#[test]
fn r7_active_shutting_down_hands_over_at_once() {
    let mut pair = Pair::started(PairConfig::sticky());
    pair.shutdown(A);
    let took = pair
        .run_until(ms(2000), |p| p.role(B) == Some(Role::Active))
        .expect("b takes over");
    assert!(took <= ms(2), "took {took:?}");
    assert_eq!(reasons_to(&pair, B, Role::Active), [Reason::PeerGaveUp]);
}

// R7b ----------------------------------------------------------------------------------------

/// a active, b standby, and neither reaches the registrar any more (b lost it first).
fn registrar_lost_on_both_sides(config: PairConfig) -> Pair {
    let mut pair = Pair::started(config);
    assert_eq!(pair.actives(), [A]);
    pair.registrar(B, false);
    pair.run_for(ms(500));
    pair.registrar(A, false);
    pair
}

#[test]
fn r7b_both_lose_the_registrar_the_active_stays_and_says_so() {
    let mut pair = registrar_lost_on_both_sides(PairConfig::sticky());
    let lost_at = pair.now;
    pair.run_for(ms(10_000));
    assert_eq!(pair.actives(), [A]);
    assert!(pair.transitions_since(A, lost_at).is_empty());
    assert!(pair.transitions_since(B, lost_at).is_empty());
    let status = pair.status(A);
    assert!(status.active_without_registrar);
    assert!(!status.eligible, "eligible means may become active");
    let raised = Event::ActiveWithoutRegistrar { warning: true };
    let times = pair.nodes[A]
        .events
        .iter()
        .filter(|(_, e)| *e == raised)
        .count();
    assert_eq!(times, 1, "the warning is raised once");
    assert!(!pair.status(B).active_without_registrar);
}

#[test]
fn r7b_the_active_without_registrar_hands_over_when_the_peer_regains_it() {
    let mut pair = registrar_lost_on_both_sides(PairConfig::sticky());
    pair.run_for(ms(2000));
    pair.registrar(B, true);
    let took = pair
        .run_until(ms(2000), |p| p.role(B) == Some(Role::Active))
        .expect("b takes over");
    // Once b has reached it for registrar_handover_delay (300 ms; b's heartbeat takes 1 ms
    // to a), announced: b takes over one link latency after a hands over.
    assert!(took >= ms(300) && took <= ms(303), "took {took:?}");
    assert_eq!(
        reasons_to(&pair, A, Role::Standby).last(),
        Some(&Reason::RegistrarLostPeerHasIt)
    );
    assert!(has_event(
        &pair,
        A,
        &Event::ActiveWithoutRegistrar { warning: false }
    ));
    assert!(!pair.status(A).active_without_registrar);
    // a gets the registrar back later: it stays standby (it handed over).
    pair.registrar(A, true);
    pair.run_for(ms(10_000));
    assert_eq!(pair.actives(), [B]);
}

#[test]
fn r7b_only_the_active_loses_the_registrar_it_hands_over_after_one_probe_round() {
    let mut pair = Pair::started(PairConfig::sticky());
    pair.registrar(A, false);
    assert_eq!(pair.role(A), Some(Role::Active), "b may yet lose it too");
    let took = pair
        .run_until(ms(2000), |p| p.role(B) == Some(Role::Active))
        .expect("b takes over");
    // registrar_handover_delay (300 ms), then one link latency.
    assert!(took >= ms(300) && took <= ms(302), "took {took:?}");
    assert_eq!(
        reasons_to(&pair, A, Role::Standby).last(),
        Some(&Reason::RegistrarLostPeerHasIt)
    );
    assert!(!has_event(
        &pair,
        A,
        &Event::ActiveWithoutRegistrar { warning: true }
    ));
}

#[test]
fn r7b_an_outage_of_the_registrar_seen_apart_by_the_two_probers_moves_nothing() {
    let mut pair = Pair::started(PairConfig::sticky());
    let before = pair.now;
    // The registrar fails; a's prober notices first, b's one probe round (200 ms) later.
    pair.registrar(A, false);
    pair.run_for(ms(200));
    pair.registrar(B, false);
    pair.run_for(ms(5000));
    // It returns; b notices first this time.
    pair.registrar(B, true);
    pair.run_for(ms(200));
    pair.registrar(A, true);
    pair.run_for(ms(5000));
    assert_eq!(pair.actives(), [A]);
    assert!(pair.transitions_since(A, before).is_empty());
    assert!(pair.transitions_since(B, before).is_empty());
}

/// a active at store position 10, b standby at 7, and a loses the registrar.
fn active_loses_the_registrar_with_the_peer_behind() -> Pair {
    let mut pair = Pair::started(PairConfig::sticky());
    pair.store_position(A, 10);
    pair.store_position(B, 7);
    pair.registrar(A, false);
    pair
}

#[test]
fn r7b_the_hand_over_pauses_writes_until_the_peer_holds_every_entry() {
    let mut pair = active_loses_the_registrar_with_the_peer_behind();
    pair.run_for(ms(400));
    assert_eq!(pair.actives(), [A], "would lose writes 8 to 10");
    assert!(
        !pair.status(A).accepting_writes,
        "writes pause as for a switchover"
    );
    pair.store_position(B, 10);
    pair.run_for(ms(50));
    assert_eq!(pair.actives(), [B]);
    assert_eq!(
        reasons_to(&pair, A, Role::Standby).last(),
        Some(&Reason::RegistrarLostPeerHasIt)
    );
}

#[test]
fn r7b_a_peer_that_never_catches_up_is_retried_only_once_its_store_moves() {
    let mut pair = active_loses_the_registrar_with_the_peer_behind();
    // Delay 300 ms, then the hand-over times out after 1 s; writes resume meanwhile.
    pair.run_for(ms(1400));
    assert_eq!(pair.actives(), [A]);
    assert!(has_event(
        &pair,
        A,
        &Event::SwitchoverAborted(RefuseReason::TimedOut)
    ));
    // b's replication is wedged: no new try, no new pause, and the warning is up.
    pair.run_for(ms(3000));
    let status = pair.status(A);
    assert!(
        status.accepting_writes,
        "writes paused again for a wedged peer"
    );
    assert!(status.active_without_registrar);
    pair.store_position(B, 10);
    pair.run_for(ms(100));
    assert_eq!(pair.actives(), [B]);
}

#[test]
fn r7b_a_registrar_back_before_the_hand_over_completes_cancels_it() {
    let mut pair = active_loses_the_registrar_with_the_peer_behind();
    pair.run_for(ms(400));
    assert!(!pair.status(A).accepting_writes, "hand-over under way");
    pair.registrar(A, true);
    assert!(pair.status(A).accepting_writes, "writes resume at once");
    pair.store_position(B, 10);
    pair.run_for(ms(3000));
    assert_eq!(pair.actives(), [A]);
    assert!(!pair.ever_became(B, Role::Active));
}

#[test]
fn r7b_a_peer_that_loses_the_registrar_before_taking_over_gives_the_role_back() {
    let mut pair = Pair::started(PairConfig::sticky());
    pair.registrar(A, false);
    pair.run_until(ms(1000), |p| p.role(A) == Some(Role::Standby))
        .expect("a hands over");
    // b's prober fails in the same instant, before a's hand-over reaches it.
    pair.registrar(B, false);
    pair.run_for(ms(1000));
    assert_eq!(
        pair.actives(),
        [A],
        "a registrar nobody reaches changes nothing"
    );
    assert_eq!(
        reasons_to(&pair, A, Role::Active).last(),
        Some(&Reason::RegistrarLostByBoth)
    );
    assert!(!pair.ever_became(B, Role::Active));
    assert!(pair.status(A).active_without_registrar);
}

#[test]
fn r7b_strict_step_down_during_a_maintenance_hand_over_still_ends_in_maintenance() {
    let config = PairConfig {
        on_registrar_loss: OnRegistrarLoss::StepDown,
        ..PairConfig::sticky()
    };
    let mut pair = Pair::started(config);
    pair.store_position(A, 10);
    pair.store_position(B, 7);
    pair.maintenance(A, true);
    assert_eq!(
        pair.role(A),
        Some(Role::Active),
        "waiting for b to catch up"
    );
    pair.registrar(A, false);
    assert_eq!(pair.role(A), Some(Role::Maintenance));
}

#[test]
fn r7b_strict_step_down_leaves_nobody_active_while_nobody_reaches_the_registrar() {
    let config = PairConfig {
        on_registrar_loss: OnRegistrarLoss::StepDown,
        ..PairConfig::sticky()
    };
    let mut pair = registrar_lost_on_both_sides(config);
    assert_eq!(pair.role(A), Some(Role::Standby));
    assert_eq!(
        reasons_to(&pair, A, Role::Standby).last(),
        Some(&Reason::NotEligible)
    );
    pair.run_for(ms(5000));
    assert!(pair.actives().is_empty());
    pair.registrar(B, true);
    pair.run_for(ms(100));
    assert_eq!(pair.actives(), [B]);
}

#[test]
fn r7b_a_registrar_flapping_on_one_side_moves_the_role_at_most_once_per_threshold_run() {
    use standby_proxy::thresholds::Thresholds;
    let mut pair = Pair::started(PairConfig::sticky());
    let started = pair.now;
    // a's prober: fall 2, rise 2, a result every 200 ms that passes or fails at random.
    let mut thresholds = Thresholds::new(2, 2);
    let mut runs = 0;
    for _ in 0..200 {
        let passed = pair.rng().chance(50);
        if let Some(reachable) = thresholds.record(passed) {
            runs += 1;
            pair.registrar(A, reachable);
        }
        pair.run_with(ms(200), |p| assert!(p.actives().len() <= 1));
    }
    assert!(runs > 10, "only {runs} completed runs");
    for node in [A, B] {
        let changes = pair.transitions_since(node, started).len();
        assert!(
            changes <= runs,
            "node {node}: {changes} changes for {runs} runs"
        );
    }
    // Only a flaps and b always reaches the registrar: at most one hand-over, after which
    // b keeps the role (a handed over and does not take it back).
    let handed_over = pair.transitions_since(A, started).len();
    assert!(handed_over <= 1, "{handed_over} role changes at a");
    assert_eq!(pair.actives(), if handed_over == 1 { [B] } else { [A] });
}

#[test]
fn r7b_stopping_or_maintenance_of_the_active_with_nobody_to_take_over_is_loud() {
    let mut pair = registrar_lost_on_both_sides(PairConfig::sticky());
    pair.run_for(ms(500));
    pair.maintenance(A, true);
    assert_eq!(pair.role(A), Some(Role::Maintenance));
    assert!(has_event(
        &pair,
        A,
        &Event::LeavingWithNobodyToTakeOver {
            reason: Reason::MaintenanceOn
        }
    ));
    let mut pair = registrar_lost_on_both_sides(PairConfig::sticky());
    pair.run_for(ms(500));
    pair.shutdown(A);
    assert!(has_event(
        &pair,
        A,
        &Event::LeavingWithNobodyToTakeOver {
            reason: Reason::Shutdown
        }
    ));
    // With a peer that may take over, no such warning.
    let mut pair = Pair::started(PairConfig::sticky());
    pair.shutdown(A);
    assert!(!pair.nodes[A]
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::LeavingWithNobodyToTakeOver { .. })));
}

#[test]
fn r7b_split_heal_keeps_the_node_that_reaches_the_registrar() {
    let mut pair = Pair::started(PairConfig::sticky());
    pair.cut();
    pair.run_for(ms(1000));
    assert_eq!(pair.actives(), [A, B]);
    // a has been active far longer, but only b reaches the registrar.
    pair.registrar(A, false);
    pair.heal();
    pair.run_for(ms(500));
    assert_eq!(pair.actives(), [B]);
    assert_eq!(
        reasons_to(&pair, A, Role::Standby).last(),
        Some(&Reason::SplitHealLost)
    );
}

// R8 -----------------------------------------------------------------------------------------

#[test]
fn r8_sticky_returning_node_becomes_standby_and_stays_standby() {
    let mut pair = Pair::started(PairConfig::sticky());
    pair.crash(A);
    pair.run_for(ms(1000));
    assert_eq!(pair.actives(), [B]);
    let back = pair.now;
    pair.restart(A);
    pair.run_for(ms(20_000));
    assert_eq!(pair.role(A), Some(Role::Standby));
    assert_eq!(pair.actives(), [B]);
    assert!(pair
        .transitions_since(A, back)
        .iter()
        .all(|t| t.to != Role::Active));
    assert!(!pair.status(B).no_standby);
}

// R9 -----------------------------------------------------------------------------------------

fn failed_over_prefer_primary() -> Pair {
    let mut pair = Pair::started(PairConfig::prefer_primary());
    assert_eq!(pair.actives(), [A]);
    pair.crash(A);
    pair.run_for(ms(1000));
    assert_eq!(pair.actives(), [B]);
    pair
}

#[test]
fn r9_prefer_primary_secondary_hands_back_after_preempt_delay() {
    let mut pair = failed_over_prefer_primary();
    pair.restart(A);
    pair.run_for(ms(1900));
    assert_eq!(pair.actives(), [B], "hands back too early");
    let took = pair
        .run_until(ms(1000), |p| p.role(A) == Some(Role::Active))
        .expect("primary takes back");
    assert!(took <= ms(150), "took {took:?}");
    assert_eq!(pair.role(B), Some(Role::Standby));
    assert_eq!(
        reasons_to(&pair, B, Role::Standby).last(),
        Some(&Reason::Failback)
    );
    assert_eq!(
        reasons_to(&pair, A, Role::Active).last(),
        Some(&Reason::PeerHandedOver)
    );
    pair.run_for(ms(10_000));
    assert_eq!(pair.actives(), [A]);
}

#[test]
fn r9_no_failback_to_a_primary_that_is_not_caught_up() {
    let mut pair = failed_over_prefer_primary();
    pair.store_position(B, 10);
    pair.store_position(A, 7);
    pair.restart(A);
    pair.run_for(ms(10_000));
    assert_eq!(pair.actives(), [B]);
    pair.store_position(A, 10);
    pair.run_for(ms(2100));
    assert_eq!(pair.actives(), [A]);
}

#[test]
fn r9_no_failback_to_a_primary_that_is_not_eligible() {
    let mut pair = failed_over_prefer_primary();
    pair.nodes[A].registrar_up = false;
    pair.restart(A);
    pair.run_for(ms(10_000));
    assert_eq!(pair.actives(), [B]);
}

#[test]
fn r9_preempt_delay_restarts_when_the_primary_wavers() {
    let mut pair = failed_over_prefer_primary();
    pair.restart(A);
    pair.run_for(ms(1500));
    pair.registrar(A, false);
    pair.run_for(ms(100));
    pair.registrar(A, true);
    pair.run_for(ms(1800));
    assert_eq!(
        pair.actives(),
        [B],
        "the delay must count from the last change"
    );
    pair.run_for(ms(300));
    assert_eq!(pair.actives(), [A]);
}

// R10 ----------------------------------------------------------------------------------------

#[test]
fn r10_split_heal_keeps_the_node_active_longer() {
    let mut pair = Pair::started(PairConfig::sticky());
    // b becomes active first (a hands over, R7b), then the split lets a (the lower
    // address) go active too.
    pair.registrar(A, false);
    pair.run_for(ms(500));
    assert_eq!(pair.actives(), [B]);
    pair.cut();
    pair.registrar(A, true);
    pair.run_for(ms(3000));
    assert_eq!(pair.actives(), [A, B]);
    pair.heal();
    pair.run_for(ms(500));
    assert_eq!(pair.actives(), [B]);
    assert_eq!(
        reasons_to(&pair, A, Role::Standby).last(),
        Some(&Reason::SplitHealLost)
    );
    pair.run_for(ms(10_000));
    assert_eq!(pair.actives(), [B]);
}

#[test]
fn r10_split_heal_tie_goes_to_the_lower_address() {
    let mut pair = Pair::new(PairConfig::sticky());
    pair.cut();
    pair.start(A);
    pair.start(B);
    pair.run_for(ms(2000));
    assert_eq!(pair.actives(), [A, B]);
    pair.heal();
    pair.run_for(ms(500));
    assert_eq!(pair.actives(), [A]);
    assert_eq!(reasons_to(&pair, B, Role::Standby), [Reason::SplitHealLost]);
}

#[test]
fn r10_split_heal_tie_goes_to_the_primary_with_prefer_primary() {
    let mut config = PairConfig::prefer_primary();
    config.priorities = [Priority::Secondary, Priority::Primary];
    let mut pair = Pair::new(config);
    pair.cut();
    pair.start(A);
    pair.start(B);
    pair.run_for(ms(2000));
    pair.heal();
    pair.run_for(ms(500));
    assert_eq!(pair.actives(), [B]);
}

#[test]
fn r10_split_heal_near_the_tie_band_still_ends_with_exactly_one() {
    // Activation times about one heartbeat interval apart, with a slow link so each side
    // misjudges the other's duration: the fallback to the fixed rule must still decide.
    for offset in 90..=110 {
        let mut pair = Pair::new(PairConfig::sticky());
        pair.delay(ms(20));
        pair.cut();
        pair.start(B);
        pair.run_for(ms(offset));
        pair.start(A);
        pair.run_for(ms(2000));
        assert_eq!(pair.actives(), [A, B]);
        pair.heal();
        pair.run_for(ms(1000));
        assert_eq!(pair.actives().len(), 1, "offset {offset}ms");
        let settled = pair.now;
        pair.run_for(ms(5000));
        assert!(
            pair.transitions_since(A, settled).is_empty()
                && pair.transitions_since(B, settled).is_empty(),
            "offset {offset}ms: roles still changing"
        );
    }
}

// R11 ----------------------------------------------------------------------------------------

#[test]
fn r11_switchover_pauses_writes_and_hands_over_once_the_peer_holds_every_entry() {
    let mut pair = Pair::started(PairConfig::sticky());
    pair.store_position(A, 10);
    pair.store_position(B, 8);
    pair.switchover(A);
    assert!(has_event(&pair, A, &Event::SwitchoverStarted));
    let status = pair.status(A);
    assert_eq!(status.role, Role::Active);
    assert!(!status.accepting_writes && status.handover_pending);
    pair.run_for(ms(500));
    assert_eq!(pair.actives(), [A], "handed over before the peer caught up");
    pair.store_position(B, 10);
    pair.run_for(ms(150));
    assert_eq!(pair.actives(), [B]);
    assert_eq!(
        reasons_to(&pair, A, Role::Standby).last(),
        Some(&Reason::Switchover)
    );
    assert_eq!(
        reasons_to(&pair, B, Role::Active).last(),
        Some(&Reason::PeerHandedOver)
    );
    // a (lower address) does not take back.
    pair.run_for(ms(10_000));
    assert_eq!(pair.actives(), [B]);
}

#[test]
fn r11_switchover_is_refused_without_an_eligible_standby() {
    let mut pair = Pair::started(PairConfig::sticky());
    pair.registrar(B, false);
    pair.run_for(ms(200));
    pair.switchover(A);
    assert!(has_event(
        &pair,
        A,
        &Event::SwitchoverRefused(RefuseReason::PeerNotReady)
    ));
    assert!(pair.status(A).accepting_writes);
    pair.switchover(B);
    assert!(has_event(
        &pair,
        B,
        &Event::SwitchoverRefused(RefuseReason::NotActive)
    ));
    pair.crash(B);
    pair.run_for(ms(500));
    pair.switchover(A);
    assert!(has_event(
        &pair,
        A,
        &Event::SwitchoverRefused(RefuseReason::PeerNotInContact)
    ));
}

#[test]
fn r11_switchover_gives_up_after_its_timeout_and_keeps_serving() {
    let mut pair = Pair::started(PairConfig::sticky());
    pair.store_position(A, 10);
    pair.switchover(A);
    pair.run_for(ms(1100));
    assert!(has_event(
        &pair,
        A,
        &Event::SwitchoverAborted(RefuseReason::TimedOut)
    ));
    assert_eq!(pair.actives(), [A]);
    assert!(pair.status(A).accepting_writes);
}

// R12 ----------------------------------------------------------------------------------------

#[test]
fn r12_node_in_maintenance_is_never_eligible() {
    let mut pair = Pair::started(PairConfig::sticky());
    pair.maintenance(B, true);
    assert_eq!(pair.role(B), Some(Role::Maintenance));
    assert!(!pair.status(B).eligible);
    pair.run_for(ms(10));
    assert!(pair.status(A).no_standby);
    pair.crash(A);
    pair.run_for(ms(5000));
    assert_eq!(pair.role(B), Some(Role::Maintenance));
    assert!(pair.actives().is_empty());
    pair.maintenance(B, false);
    assert_eq!(pair.actives(), [B]);
}

#[test]
fn r12_active_node_put_in_maintenance_hands_over_first() {
    let mut pair = Pair::started(PairConfig::prefer_primary());
    pair.maintenance(A, true);
    pair.run_for(ms(50));
    assert_eq!(pair.role(A), Some(Role::Maintenance));
    assert_eq!(pair.actives(), [B]);
    // A primary in maintenance gets no failback.
    pair.run_for(ms(10_000));
    assert_eq!(pair.actives(), [B]);
    pair.maintenance(A, false);
    pair.run_for(ms(2100));
    assert_eq!(
        pair.actives(),
        [A],
        "prefer-primary fails back once maintenance ends"
    );
}

// R13 ----------------------------------------------------------------------------------------

#[test]
fn r13_version_mismatch_is_reported_on_both_sides_and_never_both_active() {
    let mut config = PairConfig::prefer_primary();
    config.versions[B] = ProtocolVersion { major: 2, minor: 0 };
    let mut pair = Pair::started(config);
    assert_eq!(pair.actives(), [A]);
    for node in [A, B] {
        let peer = pair.status(node).peer.expect("peer heard");
        assert!(peer.version_mismatch, "node {node}");
        assert!(!pair.nodes[node]
            .engine
            .as_ref()
            .expect("running")
            .replication_allowed());
    }
    // A mismatched standby is no functioning standby.
    assert!(pair.status(A).no_standby);
    pair.switchover(A);
    assert!(has_event(
        &pair,
        A,
        &Event::SwitchoverRefused(RefuseReason::VersionMismatch)
    ));
    // Liveness still counts both ways.
    pair.crash(A);
    pair.run_for(ms(1000));
    assert_eq!(pair.actives(), [B]);
    pair.restart(A);
    pair.run_for(ms(10_000));
    assert_eq!(
        pair.actives(),
        [B],
        "no failback to a node that holds no replica"
    );
}

// Terms ----------------------------------------------------------------------------------------

#[test]
fn terms_only_grow_and_each_takeover_uses_the_highest_known_plus_one() {
    let mut pair = Pair::started(PairConfig::sticky());
    assert_eq!((pair.term(A), pair.term(B)), (1, 1));
    pair.crash(A);
    pair.run_for(ms(1000));
    assert_eq!(pair.term(B), 2);
    pair.restart(A);
    pair.run_for(ms(100));
    assert_eq!(pair.term(A), 2, "a learns the term from b");
    pair.shutdown(B);
    pair.run_for(ms(100));
    assert_eq!(pair.term(A), 3);
}

#[test]
fn heartbeat_round_trip_is_measured_without_a_shared_clock() {
    let mut pair = Pair::new(PairConfig::sticky());
    pair.delay(ms(7));
    pair.start(A);
    pair.start(B);
    pair.run_for(ms(3000));
    let trips: Vec<std::time::Duration> = pair.nodes[A]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::HeartbeatRoundTrip(rtt) => Some(*rtt),
            _ => None,
        })
        .collect();
    assert!(trips.len() > 10, "{} measurements", trips.len());
    // Two one-way delays of 7ms; the peer's holding time is subtracted.
    assert!(trips.iter().all(|&rtt| rtt == ms(14)), "{trips:?}");
}

#[test]
fn a_standby_knows_where_the_active_node_serves() {
    let mut pair = Pair::started(PairConfig::sticky());
    let status = pair.status(B);
    assert_eq!(status.active_node.map(|id| id.0), Some("a".to_owned()));
    assert_eq!(
        status.active_targets.get("sip").map(String::as_str),
        Some("sip:127.0.0.1:5070")
    );
    pair.crash(A);
    pair.run_for(ms(400));
    let status = pair.status(B);
    assert_eq!(
        status.active_targets.get("sip").map(String::as_str),
        Some("sip:127.0.0.2:5070")
    );
    // Nobody active: no targets.
    pair.health(B, false);
    assert!(pair.status(B).active_targets.is_empty());
}

#[test]
fn a_peer_term_at_the_top_of_the_range_does_not_wrap_or_panic() {
    use standby_proxy::engine::{CheckState, Heartbeat, Input, NodeId};
    let mut pair = Pair::started(PairConfig::sticky());
    // A heartbeat from a (a newer run of it) claiming the largest term there is.
    let forged = Heartbeat {
        version: ProtocolVersion::CURRENT,
        node_id: NodeId::from("a"),
        address: "127.0.0.1".parse().expect("address"),
        incarnation: u64::MAX,
        seq: 1,
        state_seq: 1,
        acked: (0, 0),
        echo_delay_us: 0,
        role: Role::Active,
        term: u64::MAX,
        registrar: CheckState::Passing,
        service: CheckState::Passing,
        priority: Priority::Primary,
        store_position: 0,
        active_for_ms: 0,
        yielding: false,
        leaving: false,
        targets: Default::default(),
    };
    pair.input(B, Input::Heartbeat(forged));
    pair.crash(A);
    pair.run_for(ms(1000));
    assert_eq!(pair.role(B), Some(Role::Active));
    assert_eq!(pair.term(B), u64::MAX, "terms never go back, nor wrap to 0");
}
