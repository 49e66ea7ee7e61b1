//! The engine's timers as data: one optional deadline per kind.
//!
//! A timer is only a wake-up: the engine re-derives its decisions from timestamps whenever
//! it runs, so firing a timer twice, late, or not at all when another input came first is
//! harmless.

use std::time::Instant;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Send the next heartbeat.
    Heartbeat,
    /// The peer counts as dead if nothing arrives before this (R6).
    PeerDead,
    /// A starting node stops waiting for its peer (R1, R5).
    StartupWait,
    /// The secondary hands back to the returned primary (R9).
    PreemptDelay,
    /// Both nodes still active after a heal: fall back to the fixed tie rule (R10).
    SplitHealFallback,
    /// A switchover or maintenance hand-over gives up waiting for the peer (R11, R12).
    HandoverTimeout,
    /// Stop waiting for the peer to acknowledge this node's state (it may not hear us).
    PeerAck,
    /// Hand over to the peer that still reaches the registrar this node lost (R7b).
    RegistrarHandover,
}

impl Timer {
    const COUNT: usize = 8;

    fn index(self) -> usize {
        match self {
            Timer::Heartbeat => 0,
            Timer::PeerDead => 1,
            Timer::StartupWait => 2,
            Timer::PreemptDelay => 3,
            Timer::SplitHealFallback => 4,
            Timer::HandoverTimeout => 5,
            Timer::PeerAck => 6,
            Timer::RegistrarHandover => 7,
        }
    }
}

/// One optional deadline per [`Timer`].
#[derive(Debug, Default, Clone)]
pub struct TimerTable {
    deadlines: [Option<Instant>; Timer::COUNT],
}

impl TimerTable {
    /// Arms `timer` for `at`, replacing an earlier deadline.
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer.index()] = Some(at);
    }

    /// Disarms `timer`.
    pub fn stop(&mut self, timer: Timer) {
        self.deadlines[timer.index()] = None;
    }

    /// The deadline of `timer`, if armed.
    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer.index()]
    }

    /// Whether `timer` is armed and due at `now`.
    pub fn is_due(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| at <= now)
    }

    /// The earliest armed deadline.
    pub fn next(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }
}
