//! A pair of engines on a virtual clock, joined by a link that can lose, duplicate, delay,
//! reorder and cut heartbeats. The scenario tests and the seeded random-fault test drive it.
//!
//! Nothing here reads a real clock except `Instant::now()` once, as the origin; all times
//! after that are offsets the harness chooses, so a run replays exactly.
#![allow(dead_code)] // each test file uses part of the harness

use standby_proxy::engine::{
    Engine, EngineConfig, Event, Heartbeat, Input, NodeId, OnRegistrarLoss, Output, Policy,
    Priority, ProtocolVersion, Reason, Role, Status, Transition,
};
use standby_proxy::sip::TokenSource;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// Index of node a (127.0.0.1 unless swapped).
pub const A: usize = 0;
/// Index of node b (127.0.0.2 unless swapped).
pub const B: usize = 1;

pub fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// The seeded generator of the schedules (the crate's SplitMix64 token source).
#[derive(Debug, Clone)]
pub struct Rng(TokenSource);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(TokenSource::seeded(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Uniform in `lo..=hi`.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi - lo).as_micros() as u64;
        lo + Duration::from_micros(if span == 0 { 0 } else { self.below(span + 1) })
    }
}

/// How the pair is set up.
#[derive(Debug, Clone)]
pub struct PairConfig {
    pub policy: Policy,
    pub heartbeat_interval: Duration,
    pub peer_dead_after: Duration,
    pub startup_wait: Duration,
    pub preempt_delay: Duration,
    pub handover_timeout: Duration,
    pub registrar_configured: bool,
    /// What an active node does when it loses its registrar (R7b).
    pub on_registrar_loss: OnRegistrarLoss,
    pub registrar_handover_delay: Duration,
    pub health_check_configured: bool,
    /// Priorities of a and b.
    pub priorities: [Priority; 2],
    /// Addresses of a and b.
    pub addresses: [IpAddr; 2],
    /// Protocol versions of a and b.
    pub versions: [ProtocolVersion; 2],
}

impl PairConfig {
    pub fn sticky() -> Self {
        PairConfig {
            policy: Policy::Sticky,
            heartbeat_interval: ms(100),
            peer_dead_after: ms(300),
            startup_wait: ms(1000),
            preempt_delay: ms(2000),
            handover_timeout: ms(1000),
            registrar_configured: true,
            on_registrar_loss: OnRegistrarLoss::HandOver,
            registrar_handover_delay: ms(300),
            health_check_configured: true,
            priorities: [Priority::Primary, Priority::Secondary],
            addresses: [
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            ],
            versions: [ProtocolVersion::CURRENT; 2],
        }
    }

    pub fn prefer_primary() -> Self {
        PairConfig {
            policy: Policy::PreferPrimary,
            ..PairConfig::sticky()
        }
    }

    fn engine_config(&self, node: usize) -> EngineConfig {
        let ids = ["a", "b"];
        EngineConfig {
            node_id: NodeId::from(ids[node]),
            address: self.addresses[node],
            priority: self.priorities[node],
            peer_id: Some(NodeId::from(ids[1 - node])),
            policy: self.policy,
            heartbeat_interval: self.heartbeat_interval,
            peer_dead_after: self.peer_dead_after,
            startup_wait: self.startup_wait,
            preempt_delay: self.preempt_delay,
            handover_timeout: self.handover_timeout,
            registrar_configured: self.registrar_configured,
            on_registrar_loss: self.on_registrar_loss,
            registrar_handover_delay: self.registrar_handover_delay,
            health_check_configured: self.health_check_configured,
            version: self.versions[node],
            targets: [(
                "sip".to_owned(),
                format!("sip:{}:5070", self.addresses[node]),
            )]
            .into_iter()
            .collect(),
        }
    }
}

/// One direction of the link.
#[derive(Debug, Clone)]
pub struct Direction {
    pub up: bool,
    /// Percent of heartbeats lost.
    pub loss: u64,
    /// Percent of heartbeats delivered twice.
    pub duplicate: u64,
    /// Each heartbeat takes between these two; a spread reorders them.
    pub delay_min: Duration,
    pub delay_max: Duration,
    /// Drop this many next heartbeats, whatever else holds.
    pub drop_next: u32,
}

impl Direction {
    fn clean(latency: Duration) -> Self {
        Direction {
            up: true,
            loss: 0,
            duplicate: 0,
            delay_min: latency,
            delay_max: latency,
            drop_next: 0,
        }
    }
}

/// A node of the simulated pair: its engine while running, and what survives a crash.
#[derive(Debug)]
pub struct SimNode {
    pub engine: Option<Engine>,
    /// The highest term, as the driver would persist it.
    pub persisted_term: u64,
    /// The environment as this node's probes see it.
    pub registrar_up: bool,
    pub service_healthy: bool,
    /// Operator setting; survives restarts, as the driver persists it.
    pub maintenance: bool,
    pub store_position: u64,
    /// Every role change with the time (since the pair's origin) it happened.
    pub transitions: Vec<(Duration, Transition)>,
    pub events: Vec<(Duration, Event)>,
    /// Role changes to active that happened while the engine said it was not eligible.
    pub ineligible_takeovers: u32,
}

/// A heartbeat on its way (or another input the link layer delivers later, such as
/// `PeerGone`); ordered by delivery time, then by send order.
#[derive(Debug)]
struct InFlight {
    at: Duration,
    order: u64,
    to: usize,
    input: Input,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// Two engines, a link, and a virtual clock.
pub struct Pair {
    pub config: PairConfig,
    origin: Instant,
    /// Virtual time since the origin.
    pub now: Duration,
    pub nodes: [SimNode; 2],
    /// `links[from]` carries heartbeats from `from` to the other node.
    pub links: [Direction; 2],
    /// Latency of a clean link.
    pub latency: Duration,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    incarnations: u64,
    rng: Rng,
    /// A human-readable trace, printed when a random schedule fails.
    pub trace: Vec<String>,
    pub tracing: bool,
}

impl Pair {
    /// A pair whose nodes are not started yet.
    pub fn new(config: PairConfig) -> Self {
        Pair::with_seed(config, 1)
    }

    pub fn with_seed(config: PairConfig, seed: u64) -> Self {
        let node = || SimNode {
            engine: None,
            persisted_term: 0,
            registrar_up: true,
            service_healthy: true,
            maintenance: false,
            store_position: 0,
            transitions: Vec::new(),
            events: Vec::new(),
            ineligible_takeovers: 0,
        };
        let latency = ms(1);
        // The one real clock read: the origin of virtual time.
        #[allow(clippy::disallowed_methods)]
        let origin = Instant::now();
        Pair {
            config,
            origin,
            now: Duration::ZERO,
            nodes: [node(), node()],
            links: [Direction::clean(latency), Direction::clean(latency)],
            latency,
            in_flight: BinaryHeap::new(),
            order: 0,
            incarnations: 0,
            rng: Rng::new(seed),
            trace: Vec::new(),
            tracing: false,
        }
    }

    /// Both nodes started and run until they settle.
    pub fn started(config: PairConfig) -> Self {
        let mut pair = Pair::new(config);
        pair.start(A);
        pair.start(B);
        pair.run_for(ms(2000));
        pair
    }

    pub fn instant(&self) -> Instant {
        self.origin + self.now
    }

    fn note(&mut self, text: impl FnOnce() -> String) {
        if self.tracing {
            let line = format!("{:>8.3}s {}", self.now.as_secs_f64(), text());
            self.trace.push(line);
        }
    }

    /// Starts (or restarts) `node` with its persisted term and current environment.
    pub fn start(&mut self, node: usize) {
        assert!(self.nodes[node].engine.is_none(), "node {node} is running");
        self.incarnations += 1;
        let incarnation = self.now.as_millis() as u64 * 16 + self.incarnations;
        let term = self.nodes[node].persisted_term;
        let engine = Engine::new(
            self.config.engine_config(node),
            self.instant(),
            incarnation,
            term,
        );
        self.nodes[node].engine = Some(engine);
        self.note(|| format!("start {node}"));
        self.drain(node);
        // Probes report their first result straight away.
        if self.config.registrar_configured {
            let up = self.nodes[node].registrar_up;
            self.input(node, Input::RegistrarReachable(up));
        }
        if self.config.health_check_configured {
            let ok = self.nodes[node].service_healthy;
            self.input(node, Input::ServiceHealthy(ok));
        }
        let position = self.nodes[node].store_position;
        self.input(node, Input::StorePosition(position));
        if self.nodes[node].maintenance {
            self.input(node, Input::Maintenance(true));
        }
    }

    /// `kill -9`: the engine is gone, nothing announced.
    pub fn crash(&mut self, node: usize) {
        self.note(|| format!("crash {node}"));
        self.nodes[node].engine = None;
    }

    /// `kill -9` of the process while its host stays up: the peer's connection from it ends
    /// one latency later, and if the link carries the peer's connection attempts and their
    /// refusals (both directions up), the peer's link layer reports `PeerGone` after two
    /// refusals, `confirm` later. With the link down the peer only notices the silence.
    pub fn kill(&mut self, node: usize, confirm: Duration) {
        self.crash(node);
        let other = 1 - node;
        if self.links.iter().all(|link| link.up) {
            let since = self.instant() + self.latency;
            self.deliver_after(other, self.latency + confirm, Input::PeerGone { since });
        }
    }

    /// Hands `input` to `node` after `delay`, in order with the heartbeats in flight.
    pub fn deliver_after(&mut self, node: usize, delay: Duration, input: Input) {
        self.order += 1;
        self.in_flight.push(Reverse(InFlight {
            at: self.now + delay,
            order: self.order,
            to: node,
            input,
        }));
    }

    /// Restarts a crashed or shut down node.
    pub fn restart(&mut self, node: usize) {
        self.start(node);
    }

    /// SIGTERM: the node announces leaving, then its process is gone.
    pub fn shutdown(&mut self, node: usize) {
        self.note(|| format!("shutdown {node}"));
        self.input(node, Input::Shutdown);
        self.nodes[node].engine = None;
    }

    pub fn running(&self, node: usize) -> bool {
        self.nodes[node].engine.is_some()
    }

    /// Cuts the link both ways.
    pub fn cut(&mut self) {
        self.note(|| "cut".into());
        for link in &mut self.links {
            link.up = false;
        }
    }

    /// Cuts only what `from` sends.
    pub fn cut_one_way(&mut self, from: usize) {
        self.note(|| format!("cut from {from}"));
        self.links[from].up = false;
    }

    /// Restores a clean link both ways.
    pub fn heal(&mut self) {
        self.note(|| "heal".into());
        let latency = self.latency;
        for link in &mut self.links {
            *link = Direction::clean(latency);
        }
    }

    /// Makes both directions lossy: `loss`% lost, `duplicate`% doubled, delays spread from
    /// 1ms to `delay_max` (which reorders).
    pub fn degrade(&mut self, loss: u64, duplicate: u64, delay_max: Duration) {
        self.note(|| format!("degrade loss {loss}% dup {duplicate}% delay <= {delay_max:?}"));
        for link in &mut self.links {
            link.up = true;
            link.loss = loss;
            link.duplicate = duplicate;
            link.delay_min = ms(1);
            link.delay_max = delay_max;
        }
    }

    /// Whether the link neither loses, duplicates nor reorders (it may be cut).
    pub fn link_clean(&self) -> bool {
        self.links.iter().all(|link| {
            link.loss == 0
                && link.duplicate == 0
                && link.drop_next == 0
                && link.delay_min == link.delay_max
        })
    }

    /// Drops the next `count` heartbeats in each direction.
    pub fn drop_next(&mut self, count: u32) {
        self.note(|| format!("drop next {count}"));
        for link in &mut self.links {
            link.drop_next += count;
        }
    }

    /// Sets the one-way latency of both directions.
    pub fn delay(&mut self, latency: Duration) {
        self.latency = latency;
        for link in &mut self.links {
            link.delay_min = latency;
            link.delay_max = latency;
        }
    }

    /// The registrar becomes reachable or unreachable for `node`'s prober.
    pub fn registrar(&mut self, node: usize, up: bool) {
        self.note(|| format!("registrar {node} {}", if up { "up" } else { "down" }));
        self.nodes[node].registrar_up = up;
        if self.config.registrar_configured && self.running(node) {
            self.input(node, Input::RegistrarReachable(up));
        }
    }

    /// `node`'s local service health check starts passing or failing.
    pub fn health(&mut self, node: usize, healthy: bool) {
        self.note(|| format!("health {node} {healthy}"));
        self.nodes[node].service_healthy = healthy;
        if self.config.health_check_configured && self.running(node) {
            self.input(node, Input::ServiceHealthy(healthy));
        }
    }

    pub fn maintenance(&mut self, node: usize, on: bool) {
        self.note(|| format!("maintenance {node} {on}"));
        self.nodes[node].maintenance = on;
        if self.running(node) {
            self.input(node, Input::Maintenance(on));
        }
    }

    pub fn switchover(&mut self, node: usize) {
        self.note(|| format!("switchover {node}"));
        if self.running(node) {
            self.input(node, Input::Switchover);
        }
    }

    /// Sets `node`'s store position (the store layer would report it).
    pub fn store_position(&mut self, node: usize, position: u64) {
        self.nodes[node].store_position = position;
        if self.running(node) {
            self.input(node, Input::StorePosition(position));
        }
    }

    /// Feeds one input now and carries out the outputs.
    pub fn input(&mut self, node: usize, input: Input) {
        let now = self.instant();
        let Some(engine) = self.nodes[node].engine.as_mut() else {
            return;
        };
        engine.handle(now, input);
        self.drain(node);
    }

    fn drain(&mut self, node: usize) {
        loop {
            let Some(engine) = self.nodes[node].engine.as_mut() else {
                return;
            };
            let Some(output) = engine.poll_output() else {
                let term = engine.term();
                self.nodes[node].persisted_term = self.nodes[node].persisted_term.max(term);
                return;
            };
            match output {
                Output::Send(heartbeat) => self.transmit(node, heartbeat),
                Output::RoleChanged(change) => {
                    // R7b: a node that moved the role away for a registrar the peer then
                    // lost too resumes without it.
                    let eligible = engine.eligible()
                        || change.to != Role::Active
                        || change.reason == Reason::RegistrarLostByBoth;
                    if !eligible {
                        self.nodes[node].ineligible_takeovers += 1;
                    }
                    self.note(|| {
                        format!(
                            "node {node}: {} -> {} term {} ({})",
                            change.from,
                            change.to,
                            change.term,
                            change.reason.as_str()
                        )
                    });
                    let at = self.now;
                    self.nodes[node].transitions.push((at, change));
                }
                Output::Event(event) => {
                    self.note(|| format!("node {node}: {event:?}"));
                    let at = self.now;
                    self.nodes[node].events.push((at, event));
                }
            }
        }
    }

    fn transmit(&mut self, from: usize, heartbeat: Heartbeat) {
        let to = 1 - from;
        let link = &mut self.links[from];
        if !link.up {
            return;
        }
        if link.drop_next > 0 {
            link.drop_next -= 1;
            return;
        }
        let (loss, duplicate, lo, hi) = (link.loss, link.duplicate, link.delay_min, link.delay_max);
        if loss > 0 && self.rng.chance(loss) {
            return;
        }
        let copies = if duplicate > 0 && self.rng.chance(duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + self.rng.duration(lo, hi);
            self.order += 1;
            self.in_flight.push(Reverse(InFlight {
                at,
                order: self.order,
                to,
                input: Input::Heartbeat(heartbeat.clone()),
            }));
        }
    }

    /// Time (since origin) of the next thing that happens, if any.
    fn next_event(&self) -> Option<Duration> {
        let delivery = self.in_flight.peek().map(|Reverse(f)| f.at);
        let timeouts = self
            .nodes
            .iter()
            .filter_map(|n| n.engine.as_ref()?.poll_timeout())
            .map(|at| at.saturating_duration_since(self.origin));
        delivery.into_iter().chain(timeouts).min()
    }

    /// Carries out everything due at or before `self.now`. Returns whether anything was due.
    fn step_due(&mut self) -> bool {
        let mut any = false;
        while let Some(Reverse(flight)) = self.in_flight.peek() {
            if flight.at > self.now {
                break;
            }
            let Some(Reverse(flight)) = self.in_flight.pop() else {
                break;
            };
            any = true;
            self.input(flight.to, flight.input);
        }
        for node in [A, B] {
            let now = self.instant();
            let due = self.nodes[node]
                .engine
                .as_ref()
                .and_then(Engine::poll_timeout)
                .is_some_and(|at| at <= now);
            if due {
                any = true;
                self.input(node, Input::Timeout);
            }
        }
        any
    }

    /// Advances to the next event (at most to `limit`) and carries it out. Returns false if
    /// nothing happens before `limit`.
    pub fn step_until(&mut self, limit: Duration) -> bool {
        match self.next_event() {
            Some(at) if at <= limit => {
                self.now = self.now.max(at);
                let mut rounds = 0;
                while self.step_due() {
                    rounds += 1;
                    assert!(rounds < 1000, "engine busy-loops at {:?}", self.now);
                }
                true
            }
            _ => {
                self.now = self.now.max(limit);
                false
            }
        }
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        self.run_with(duration, |_| {});
    }

    /// Runs for `duration`, calling `check` after every step.
    pub fn run_with(&mut self, duration: Duration, mut check: impl FnMut(&Pair)) {
        let end = self.now + duration;
        while self.step_until(end) {
            check(self);
        }
    }

    /// Runs until `done` holds (checked after every step) or `limit` passes; returns the time
    /// it took, or `None`.
    pub fn run_until(&mut self, limit: Duration, done: impl Fn(&Pair) -> bool) -> Option<Duration> {
        let start = self.now;
        let end = self.now + limit;
        if done(self) {
            return Some(Duration::ZERO);
        }
        while self.step_until(end) {
            if done(self) {
                return Some(self.now - start);
            }
        }
        None
    }

    pub fn role(&self, node: usize) -> Option<Role> {
        self.nodes[node].engine.as_ref().map(Engine::role)
    }

    pub fn status(&self, node: usize) -> Status {
        self.nodes[node]
            .engine
            .as_ref()
            .expect("node is running")
            .status(self.instant())
    }

    pub fn term(&self, node: usize) -> u64 {
        self.nodes[node].persisted_term
    }

    /// Nodes that are running and active.
    pub fn actives(&self) -> Vec<usize> {
        [A, B]
            .into_iter()
            .filter(|&n| self.role(n) == Some(Role::Active))
            .collect()
    }

    /// Transitions of `node` since `since`.
    pub fn transitions_since(&self, node: usize, since: Duration) -> Vec<&Transition> {
        self.nodes[node]
            .transitions
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, t)| t)
            .collect()
    }

    /// Whether `node` ever had a transition to `role`.
    pub fn ever_became(&self, node: usize, role: Role) -> bool {
        self.nodes[node]
            .transitions
            .iter()
            .any(|(_, t)| t.to == role)
    }

    /// The link generator, for schedules that need randomness of their own.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}
