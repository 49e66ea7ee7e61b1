//! How many inputs per second the state engine takes through `handle` + draining its outputs.
//!
//! Run: `cargo bench --bench engine`. The figure that matters is the steady state of a pair:
//! the active node receiving its standby's heartbeats. It bounds how little CPU the election
//! costs (at 10 heartbeats/s the engine is idle by six orders of magnitude) and catches a
//! change that makes the hot path allocate or scan.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use standby_proxy::engine::{
    CheckState, Engine, EngineConfig, Heartbeat, Input, NodeId, Policy, Priority, ProtocolVersion,
    Role,
};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

fn config() -> EngineConfig {
    EngineConfig {
        node_id: NodeId::from("a"),
        address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        priority: Priority::Primary,
        peer_id: Some(NodeId::from("b")),
        policy: Policy::Sticky,
        heartbeat_interval: Duration::from_millis(100),
        peer_dead_after: Duration::from_millis(300),
        startup_wait: Duration::from_secs(1),
        preempt_delay: Duration::from_secs(10),
        handover_timeout: Duration::from_secs(5),
        registrar_configured: true,
        on_registrar_loss: Default::default(),
        registrar_handover_delay: Duration::from_millis(1800),
        health_check_configured: false,
        version: ProtocolVersion::CURRENT,
        targets: Default::default(),
    }
}

fn standby_heartbeat(seq: u64) -> Heartbeat {
    Heartbeat {
        version: ProtocolVersion::CURRENT,
        node_id: NodeId::from("b"),
        address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        incarnation: 1,
        seq,
        state_seq: 1,
        // Acknowledges everything node a sent, as a peer in steady state does.
        acked: (7, u64::MAX),
        echo_delay_us: 0,
        role: Role::Standby,
        term: 1,
        registrar: CheckState::Passing,
        service: CheckState::NotConfigured,
        priority: Priority::Secondary,
        store_position: 0,
        active_for_ms: 0,
        yielding: false,
        leaving: false,
        targets: Default::default(),
    }
}

/// An active node in contact with its standby, and the time it is at.
fn active_engine() -> (Engine, Instant) {
    #[allow(clippy::disallowed_methods)] // the origin of the benchmark's own clock
    let mut now = Instant::now();
    let mut engine = Engine::new(config(), now, 7, 0);
    engine.handle(now, Input::RegistrarReachable(true));
    engine.handle(now, Input::Heartbeat(standby_heartbeat(1)));
    now += Duration::from_millis(1);
    engine.handle(now, Input::Timeout);
    while engine.poll_output().is_some() {}
    assert_eq!(
        engine.role(),
        Role::Active,
        "set-up must reach the steady state"
    );
    (engine, now)
}

fn drain(engine: &mut Engine) -> usize {
    let mut outputs = 0;
    while let Some(output) = engine.poll_output() {
        black_box(output);
        outputs += 1;
    }
    outputs
}

fn bench_engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));

    group.bench_function("heartbeat_in_steady_state", |b| {
        let (mut engine, mut now) = active_engine();
        let mut seq = 1;
        b.iter_batched(
            || {
                seq += 1;
                standby_heartbeat(seq)
            },
            |heartbeat| {
                now += Duration::from_micros(50);
                engine.handle(now, Input::Heartbeat(heartbeat));
                drain(&mut engine)
            },
            BatchSize::SmallInput,
        );
    });

    group.bench_function("timeout_with_heartbeat_due", |b| {
        let (mut engine, mut now) = active_engine();
        let mut seq = 1;
        b.iter(|| {
            // Keep the peer alive and make a heartbeat due on every call.
            seq += 1;
            now += Duration::from_millis(100);
            engine.handle(now, Input::Heartbeat(standby_heartbeat(seq)));
            engine.handle(now, Input::Timeout);
            drain(&mut engine)
        });
    });

    group.bench_function("registrar_flap", |b| {
        let (mut engine, mut now) = active_engine();
        let mut up = false;
        b.iter(|| {
            now += Duration::from_micros(10);
            engine.handle(now, Input::RegistrarReachable(up));
            up = !up;
            drain(&mut engine)
        });
    });
    group.finish();
}

criterion_group!(benches, bench_engine);
criterion_main!(benches);
