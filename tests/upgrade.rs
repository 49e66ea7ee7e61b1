//! A rolling upgrade across real processes: node a on 127.0.0.1, node b on 127.0.0.2, one of
//! them claiming another protocol version through `STANDBY_TEST_PROTOCOL_VERSION` (see
//! `src/engine/protocol.rs`). The README's procedure ("Upgrading a pair") is what the first
//! test does; the second shows what a different major version does instead (R13).
//!
//! Versions are taken relative to `ProtocolVersion::CURRENT`, so a bump changes nothing here.
//! That frames of another minor decode is `tests/protocol.rs`'s part (the kept frames of older
//! minors, unknown fields of a newer one); here only the version number differs, which is
//! what the nodes decide compatibility by.
//!
//! Ports 21800-21839. Every wait is bounded (the harness's `PATIENCE`), and the harness kills
//! the node processes when a test fails.
// Real processes run on the real clock; nothing here is replayed on a virtual one.
#![allow(clippy::disallowed_methods)]
// The harness serves several test files; this one uses part of it.
#![allow(dead_code)]

include!("common/pair_harness.rs");

use serde_json::{json, Value};
use standby_proxy::admin::client::ClientError;
use standby_proxy::engine::ProtocolVersion;
use std::thread::JoinHandle;

/// What the warning of a node on an overridden version starts with (`protocol.rs`).
const OVERRIDE_WARNING: &str = "TEST ONLY: this node speaks peer protocol";

fn newer_minor() -> ProtocolVersion {
    let current = ProtocolVersion::CURRENT;
    ProtocolVersion {
        minor: current.minor + 1,
        ..current
    }
}

fn previous_minor() -> ProtocolVersion {
    let current = ProtocolVersion::CURRENT;
    ProtocolVersion {
        minor: current.minor - 1,
        ..current
    }
}

fn next_major() -> ProtocolVersion {
    ProtocolVersion {
        major: ProtocolVersion::CURRENT.major + 1,
        minor: 0,
    }
}

/// Starts `node` speaking `version` instead of this build's.
fn start_speaking(node: &mut Node, version: ProtocolVersion) {
    let version = version.to_string();
    node.start_with_env(&[(
        standby_proxy::config::version::TEST_OVERRIDE_VARIABLE,
        &version,
    )]);
}

/// Runs the CLI command `command` against `node`'s admin API with the pair's token file, as
/// an operator would.
fn cli(pair: &Pair, node: &str, command: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args([command, "--admin", &pair.node(node).admin])
        .args(args)
        .env("STANDBY_TOKEN_FILE", pair.dir.join("token"))
        .env_remove("STANDBY_TOKEN")
        .output()
        .expect("the CLI runs")
}

/// `standby-proxy config set` on `node`; returns what it printed.
fn set(pair: &Pair, node: &str, key: &str, value: &Value) -> String {
    let out = cli(pair, node, "config", &["set", key, &value.to_string()]);
    assert!(out.status.success(), "config set {key} on {node}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A write on the active `node` that the standby holds before it is acknowledged.
fn set_replicated(pair: &Pair, node: &str, key: &str, value: &Value) {
    let printed = set(pair, node, key, value);
    assert!(
        !printed.contains("NOT on the standby"),
        "{key} on {node} was not replicated: {printed}"
    );
}

/// The value `node` holds under `key`, `None` when it has none (404); `Err` when it cannot
/// say (not running, say).
fn stored(pair: &Pair, node: &str, key: &str) -> Result<Option<Value>, String> {
    let answer = pair.runtime.block_on(client::call(
        &pair.node(node).admin,
        hyper::Method::GET,
        &format!("/api/v1/config/{key}"),
        Some(TOKEN),
        None,
        None,
    ));
    match answer {
        Ok(entry) => Ok(Some(entry["value"].clone())),
        Err(ClientError::Refused(reason)) if reason.contains("no key") => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

fn wait_stored(pair: &Pair, node: &str, key: &str, value: &Value) {
    pair.wait(&format!("{node} holds {key} = {value}"), |p| {
        stored(p, node, key).is_ok_and(|held| held.as_ref() == Some(value))
    });
}

/// Whether `node` is in contact with a peer speaking `version`, and reports a version
/// mismatch exactly when `mismatch`.
fn hears(pair: &Pair, node: &str, version: ProtocolVersion, mismatch: bool) -> bool {
    pair.status(node)
        .and_then(|status| status.peer)
        .is_some_and(|peer| {
            peer.contact
                && peer.version.as_deref() == Some(version.to_string().as_str())
                && peer.version_mismatch == mismatch
        })
}

/// `standby-proxy status --json` on `node`: the peer's reported version and mismatch flag.
fn cli_peer_version(pair: &Pair, node: &str) -> (String, bool) {
    let out = cli(pair, node, "status", &["--json"]);
    assert!(out.status.success(), "status --json on {node}: {out:?}");
    let status: Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    let peer = &status["peer"];
    (
        peer["version"].as_str().unwrap_or_default().to_owned(),
        peer["version_mismatch"]
            .as_bool()
            .expect("version_mismatch"),
    )
}

/// `node` is the standby and follows `active`, which is active.
fn standby_following(pair: &Pair, node: &str, active: &str) -> bool {
    is(pair, active, "active")
        && pair
            .status(node)
            .is_some_and(|s| s.role == "standby" && s.active_node.as_deref() == Some(active))
}

#[test]
fn a_rolling_upgrade_to_the_next_minor_keeps_replicating_and_switches_over_both_ways() {
    let (current, newer) = (ProtocolVersion::CURRENT, newer_minor());
    let mut pair = Pair::new("upgrade-minor", 21800, Options::default()).started();
    let before = json!({"written": "before the upgrade"});
    set_replicated(&pair, "a", "upgrade/before", &before);
    wait_stored(&pair, "b", "upgrade/before", &before);

    // 1. The standby first: b stops cleanly and comes back on the newer minor.
    let (_, code) = pair.b.terminate();
    assert_eq!(code, 0, "{}", pair.b.log());
    let while_away = json!("written while b was upgraded");
    set(&pair, "a", "upgrade/while-b-away", &while_away);
    start_speaking(&mut pair.b, newer);
    pair.wait("b, now newer, standby following a; no mismatch", |p| {
        standby_following(p, "b", "a")
            && hears(p, "a", newer, false)
            && hears(p, "b", current, false)
    });
    assert_eq!(cli_peer_version(&pair, "a"), (newer.to_string(), false));
    assert_eq!(cli_peer_version(&pair, "b"), (current.to_string(), false));
    assert!(pair.b.log().contains(OVERRIDE_WARNING), "{}", pair.b.log());
    assert!(!pair.a.log().contains(OVERRIDE_WARNING), "{}", pair.a.log());
    // The newer standby catches up on what it missed, then takes writes synchronously.
    wait_stored(&pair, "b", "upgrade/while-b-away", &while_away);
    let on_old_active = json!({"written": "on the older active"});
    set_replicated(&pair, "a", "upgrade/on-old-active", &on_old_active);
    assert_eq!(
        stored(&pair, "b", "upgrade/on-old-active"),
        Ok(Some(on_old_active.clone()))
    );

    // 2. Switchover: the newer minor takes over, with every write.
    let out = cli(&pair, "a", "switchover", &[]);
    assert!(out.status.success(), "switchover: {out:?}");
    pair.wait("b active, a standby following it", |p| {
        standby_following(p, "a", "b")
    });
    for (key, value) in [
        ("upgrade/before", &before),
        ("upgrade/while-b-away", &while_away),
        ("upgrade/on-old-active", &on_old_active),
    ] {
        assert_eq!(stored(&pair, "b", key), Ok(Some(value.clone())), "{key}");
    }
    // The newer active replicates back to the older standby.
    let on_new_active = json!({"written": "on the newer active"});
    set_replicated(&pair, "b", "upgrade/on-new-active", &on_new_active);
    assert_eq!(
        stored(&pair, "a", "upgrade/on-new-active"),
        Ok(Some(on_new_active.clone()))
    );

    // 3. Then the other: a, now the standby, comes back on the newer minor too.
    let (_, code) = pair.a.terminate();
    assert_eq!(code, 0, "{}", pair.a.log());
    start_speaking(&mut pair.a, newer);
    pair.wait(
        "a, now newer, standby following b; both on the newer minor",
        |p| {
            standby_following(p, "a", "b")
                && hears(p, "a", newer, false)
                && hears(p, "b", newer, false)
        },
    );
    let after = json!({"written": "after the upgrade"});
    set_replicated(&pair, "b", "upgrade/after", &after);
    for (key, value) in [
        ("upgrade/before", &before),
        ("upgrade/on-new-active", &on_new_active),
        ("upgrade/after", &after),
    ] {
        assert_eq!(stored(&pair, "a", key), Ok(Some(value.clone())), "{key}");
    }
}

/// Both nodes' roles as sampled at one moment (`None`: no answer).
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    a: Option<String>,
    b: Option<String>,
}

/// Polls both nodes' roles every 20 ms on a thread of its own, so it keeps sampling while
/// the test kills and starts nodes.
struct RoleWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl RoleWatch {
    fn start(pair: &Pair) -> RoleWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let admins = [pair.a.admin.clone(), pair.b.admin.clone()];
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let role = |admin: &str| {
                let status = runtime.block_on(client::call(
                    admin,
                    hyper::Method::GET,
                    "/api/v1/status",
                    None,
                    None,
                    None,
                ));
                status
                    .ok()
                    .and_then(|s| s["role"].as_str().map(str::to_owned))
            };
            let (start, mut samples) = (Instant::now(), Vec::new());
            while !stopped.load(Ordering::SeqCst) {
                let (a, b) = (role(&admins[0]), role(&admins[1]));
                samples.push(Sample {
                    at: start.elapsed(),
                    a,
                    b,
                });
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        });
        RoleWatch {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("running");
        thread.join().expect("the watch thread does not panic")
    }
}

impl Drop for RoleWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn another_major_reports_a_mismatch_on_both_sides_never_replicates_and_never_makes_two_active() {
    let (current, major) = (ProtocolVersion::CURRENT, next_major());
    let mut pair = Pair::new("upgrade-major", 21810, Options::default());
    let watch = RoleWatch::start(&pair);
    pair.a.start();
    start_speaking(&mut pair.b, major);
    // Start-up: b waits for a's liveness as for any peer, so a alone goes active (R13).
    pair.wait("a active, b standby, each reporting the mismatch", |p| {
        standby_following(p, "b", "a") && hears(p, "a", major, true) && hears(p, "b", current, true)
    });
    assert_eq!(cli_peer_version(&pair, "a"), (major.to_string(), true));
    assert_eq!(cli_peer_version(&pair, "b"), (current.to_string(), true));
    // A standby of another major is no standby: a warns as if alone.
    assert!(pair.status("a").expect("a answers").no_standby);

    // A write on the active node is acknowledged as not replicated and never reaches b.
    let key = "upgrade/across-majors";
    let printed = set(&pair, "a", key, &json!("only on a"));
    assert!(printed.contains("NOT on the standby"), "{printed}");
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(1500) {
        assert_eq!(stored(&pair, "b", key), Ok(None), "a write crossed majors");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A switchover is refused with the reason (the engine's RefuseReason::VersionMismatch):
    // b holds none of a's writes, and a could not hand over without losing them.
    let out = cli(&pair, "a", "switchover", &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("another protocol major version"), "{said}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        standby_following(&pair, "b", "a"),
        "the refused switchover moved a role"
    );

    // Liveness still counts across majors: b takes over only once a is gone, and a back on
    // its own major stays standby next to the active b.
    pair.a.kill();
    pair.wait("b active alone", |p| is(p, "b", "active"));
    pair.a.start();
    pair.wait("a back as standby following b", |p| {
        standby_following(p, "a", "b") && hears(p, "a", major, true)
    });
    std::thread::sleep(Duration::from_millis(1000));

    let samples = watch.finish();
    let both_active: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.a.as_deref() == Some("active") && s.b.as_deref() == Some("active"))
        .collect();
    println!(
        "{} samples over {:?}",
        samples.len(),
        samples.last().map(|s| s.at)
    );
    assert!(
        both_active.is_empty(),
        "both nodes active at {both_active:?}\n--- a ---\n{}\n--- b ---\n{}",
        pair.a.log(),
        pair.b.log()
    );
    // The watch saw what it was there to see: each node active at some point.
    for (name, active) in [
        (
            "a",
            samples.iter().any(|s| s.a.as_deref() == Some("active")),
        ),
        (
            "b",
            samples.iter().any(|s| s.b.as_deref() == Some("active")),
        ),
    ] {
        assert!(active, "the watch never saw {name} active");
    }
}

#[test]
fn a_malformed_version_override_stops_the_node_with_exit_2() {
    let mut pair = Pair::new("upgrade-malformed", 21820, Options::default());
    pair.a.start_with_env(&[(
        standby_proxy::config::version::TEST_OVERRIDE_VARIABLE,
        "1.x",
    )]);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        let child = pair.a.child.as_mut().expect("started");
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        // The harness kills the node when this panics.
        assert!(
            Instant::now() < deadline,
            "a node with a malformed override kept running\n{}",
            pair.a.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = pair.a.log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains(standby_proxy::config::version::TEST_OVERRIDE_VARIABLE)
            && log.contains("\"1.x\" is not a protocol version"),
        "{log}"
    );
}

/// `GET /api/v1/pair` on `node`, as JSON.
fn pair_report(pair: &Pair, node: &str) -> Value {
    let body = http_get(&pair.node(node).admin, "/api/v1/pair");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// How many status requests `node` answered over the peer link.
fn status_requests_answered(pair: &Pair, node: &str) -> f64 {
    let metrics = http_get(&pair.node(node).admin, "/metrics");
    metric(
        &metrics,
        "standby_peer_connections_total{direction=\"in\",result=\"status\"}",
    )
    .unwrap_or(0.0)
}

#[test]
fn a_peer_on_the_minor_before_status_requests_is_never_asked_for_its_own_report() {
    // The status request came with 1.3: a 1.2 node would refuse its hello as garbled.
    let previous = ProtocolVersion {
        minor: ProtocolVersion::STATUS_REQUESTS.minor - 1,
        ..ProtocolVersion::STATUS_REQUESTS
    };
    assert!(
        !previous.has(ProtocolVersion::STATUS_REQUESTS)
            && ProtocolVersion::CURRENT.has(ProtocolVersion::STATUS_REQUESTS)
    );
    let mut pair = Pair::new("upgrade-status", 21830, Options::default());
    pair.a.start();
    start_speaking(&mut pair.b, previous);
    pair.wait("a active, b (older) standby following it", |p| {
        standby_following(p, "b", "a") && hears(p, "a", previous, false)
    });
    for _ in 0..3 {
        let from_a = pair_report(&pair, "a");
        assert_eq!(from_a["local"]["status"]["node"], "a", "{from_a}");
        assert!(from_a["peer"]["report"].is_null(), "{from_a}");
        let why = from_a["peer"]["error"].as_str().unwrap_or_default();
        assert!(
            why.contains(&format!(
                "b speaks protocol {previous}, which cannot send its own report"
            )),
            "{from_a}"
        );
        std::thread::sleep(std::time::Duration::from_millis(600));
    }
    // The older node may ask the newer one, which answers.
    let from_b = pair_report(&pair, "b");
    assert_eq!(from_b["peer"]["report"]["status"]["node"], "a", "{from_b}");
    assert_eq!(
        from_b["peer"]["report"]["protocol"],
        ProtocolVersion::CURRENT.to_string()
    );
    assert!(status_requests_answered(&pair, "a") >= 1.0);
    assert_eq!(status_requests_answered(&pair, "b"), 0.0, "a never asked b");
    let rejected = http_get(&pair.b.admin, "/metrics");
    assert!(
        !rejected.contains("standby_peer_frames_rejected_total{"),
        "b refused nothing from a:\n{rejected}"
    );
}
