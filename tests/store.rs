//! The replicated store with two real processes: a short run of bench/crashloop (kill -9 of
//! the active, the standby or both, partitions and heals, strangers on the peer port, the
//! standby's disk replaced, the active's disk full, hooks that hang, while a client streams
//! writes), which fails if any acknowledged write is missing from either node at the end or
//! both were active while the link was up.
// Real processes run on the real clock.
#![allow(clippy::disallowed_methods)]
// The shared harness has parts only other test files use.
#![allow(dead_code)]

#[path = "common/peers.rs"]
mod peers;

include!("common/pair_harness.rs");

/// One store call through the admin API, with the pair's token.
fn store_call(
    pair: &Pair,
    node: &str,
    method: hyper::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, String> {
    pair.runtime
        .block_on(client::call(
            &pair.node(node).admin,
            method,
            path,
            Some(TOKEN),
            body,
            None,
        ))
        .map_err(|e| e.to_string())
}

#[test]
fn a_switchover_hands_over_only_a_store_the_standby_holds_and_writes_follow_the_active_node() {
    let pair = Pair::new("storeswitch", 21320, Options::default()).started();
    for n in 0..200 {
        let ack = store_call(
            &pair,
            "a",
            hyper::Method::PUT,
            &format!("/api/v1/config/users/{n}/forwarding"),
            Some(serde_json::json!({ "to": n })),
        )
        .unwrap_or_else(|e| panic!("write {n}: {e}"));
        assert_eq!(ack["replicated"], true, "{ack}");
    }
    // The store needs the token, for reads too.
    let anonymous = pair.runtime.block_on(client::call(
        &pair.node("a").admin,
        hyper::Method::GET,
        "/api/v1/config/users/1/forwarding",
        None,
        None,
        None,
    ));
    assert!(
        anonymous
            .as_ref()
            .is_err_and(|e| e.to_string().contains("missing token")),
        "{anonymous:?}"
    );
    // The standby refuses writes and says where the active node is.
    let refused = store_call(
        &pair,
        "b",
        hyper::Method::PUT,
        "/api/v1/config/x",
        Some(serde_json::json!(1)),
    );
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("not active")),
        "{refused:?}"
    );
    // Both report the same log position: the standby follows the active node's log.
    pair.wait("b caught up", |p| {
        p.status("a").is_some_and(|a| {
            a.store_position >= 200
                && a.peer.as_ref().and_then(|peer| peer.store_position) == Some(a.store_position)
        })
    });
    store_call(&pair, "a", hyper::Method::POST, "/api/v1/switchover", None).expect("switchover");
    pair.wait("b active", |p| is(p, "b", "active"));
    // Once b is active it holds every acknowledged write (R11 waited for it).
    let listing = store_call(
        &pair,
        "b",
        hyper::Method::GET,
        "/api/v1/config?prefix=users/",
        None,
    )
    .expect("list");
    assert_eq!(
        listing["entries"].as_array().map(Vec::len),
        Some(200),
        "{listing}"
    );
    // Writes now go to b and reach a.
    let ack = store_call(
        &pair,
        "b",
        hyper::Method::PUT,
        "/api/v1/config/after/switch",
        Some(serde_json::json!("b")),
    )
    .expect("write on b");
    assert_eq!(ack["replicated"], true, "{ack}");
    let on_a = store_call(
        &pair,
        "a",
        hyper::Method::GET,
        "/api/v1/config/after/switch",
        None,
    )
    .expect("read on a");
    assert_eq!(on_a["value"], "b");
}

#[test]
fn no_acknowledged_write_is_lost_across_kills_and_partitions() {
    let output = Command::new("python3")
        .arg(repo().join("bench/crashloop"))
        .args(["--cycles", "8", "--seed", "7", "--port-base", "21300"])
        .args(["--latency-writes", "50"])
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_standby-proxy"))
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("acknowledged writes lost: 0"), "{stdout}");
    assert!(
        stdout.contains("two active while the link was up: 0.000 s"),
        "{stdout}"
    );
    // Every fault ran (8 cycles deal each of the 7 once, in a shuffled order).
    for fault in [
        "kill-active",
        "kill-standby",
        "kill-both",
        "partition",
        "strangers",
        "replace-standby-disk",
        "disk-full",
    ] {
        assert!(stdout.contains(&format!("{fault} ")), "{fault}: {stdout}");
    }
    // The run must have written something, or it proves nothing.
    let acknowledged: usize = stdout
        .lines()
        .find_map(|line| line.strip_prefix("writes acknowledged: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(acknowledged > 100, "{stdout}");
}

#[test]
fn the_store_answers_through_the_cli_and_refuses_bad_input() {
    let dir = std::env::temp_dir().join(format!("standby-store-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("token"), "store-cli-token").expect("token");
    let config = dir.join("alone.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = \"alone\"\naddress = \"127.0.0.1\"\n[election]\nstartup_wait = \"200ms\"\n[admin]\nlisten = \"127.0.0.1:21390\"\ntoken_file = \"{}\"\n",
            dir.join("token").display()
        ),
    )
    .expect("config");
    let bin = env!("CARGO_BIN_EXE_standby-proxy");
    let start = || {
        Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node")
    };
    let mut node = start();
    let cli = |args: &[&str]| {
        Command::new(bin)
            .args([
                "config",
                "--admin",
                "http://127.0.0.1:21390",
                "--token",
                "store-cli-token",
            ])
            .args(args)
            .output()
            .expect("cli")
    };
    // Wait until the lone node is active and takes writes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let out = cli(&["set", "users/1234/forwarding", "{\"to\": \"4711\"}"]);
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("NOT on the standby"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let got = cli(&["get", "users/1234/forwarding"]);
    assert!(
        String::from_utf8_lossy(&got.stdout).contains("\"4711\""),
        "{got:?}"
    );
    assert!(cli(&["set", "users/2", "plain words"]).status.success());
    let list = String::from_utf8_lossy(&cli(&["list", "users/"]).stdout).into_owned();
    assert!(
        list.contains("users/1234/forwarding\t1\t{\"to\":\"4711\"}"),
        "{list}"
    );
    assert!(list.contains("users/2\t1\t\"plain words\""), "{list}");
    // Bad keys are refused with the reason; the node keeps serving.
    let bad = cli(&["set", "users//x", "1"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("empty path segment"),
        "{bad:?}"
    );
    assert!(cli(&["delete", "users/2"]).status.success());
    let list = String::from_utf8_lossy(&cli(&["list"]).stdout).into_owned();
    assert!(!list.contains("users/2\t"), "{list}");
    let conflicts = cli(&["conflicts"]);
    assert!(String::from_utf8_lossy(&conflicts.stdout).contains("no conflicts"));
    // Restarted, the node still holds what was acknowledged.
    node.kill().expect("kill");
    node.wait().expect("wait");
    let mut node = start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let got = cli(&["get", "users/1234/forwarding"]);
        if got.status.success() {
            assert!(
                String::from_utf8_lossy(&got.stdout).contains("\"4711\""),
                "{got:?}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{got:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    node.kill().expect("kill");
    let _ = node.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes `count` small keys `prefix<n>` to `node` through `workers` concurrent clients;
/// panics on the first refused write.
fn write_many(pair: &Pair, node: &str, prefix: &str, count: usize, workers: usize) {
    let admin = pair.node(node).admin.clone();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    pair.runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let (admin, next, prefix) = (admin.clone(), next.clone(), prefix.to_owned());
            tasks.spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return;
                    }
                    client::call(
                        &admin,
                        hyper::Method::PUT,
                        &format!("/api/v1/config/{prefix}{n}"),
                        Some(TOKEN),
                        Some(serde_json::json!(n)),
                        None,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("write {n}: {e}"));
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("writer");
        }
    });
}

/// Whether `node` holds exactly the keys `prefix0..prefix<count>`, each with its number.
fn holds_every_key(pair: &Pair, node: &str, prefix: &str, count: usize) -> Result<(), String> {
    let listing = store_call(
        pair,
        node,
        hyper::Method::GET,
        &format!("/api/v1/config?prefix={prefix}"),
        None,
    )?;
    let entries = listing["entries"].as_array().cloned().unwrap_or_default();
    let mut seen = vec![false; count];
    for entry in &entries {
        let n = entry["key"]
            .as_str()
            .and_then(|k| k.strip_prefix(prefix))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n < count)
            .ok_or_else(|| format!("unexpected entry {entry}"))?;
        if entry["value"] != serde_json::json!(n) {
            return Err(format!("{node}: {entry} holds another value"));
        }
        seen[n] = true;
    }
    match seen.iter().position(|held| !held) {
        Some(n) => Err(format!("{node} lacks {prefix}{n} ({} held)", entries.len())),
        None => Ok(()),
    }
}

#[test]
fn a_standby_whose_disk_was_replaced_catches_up_past_the_trimmed_log() {
    // More writes than the active node keeps in its log (10,000 plus a batch of 1,000):
    // the wiped standby can only catch up from a snapshot.
    const WRITES: usize = 11_500;
    let pair = Pair::new("storewipe", 21340, Options::default()).started();
    write_many(&pair, "a", "k/", WRITES, 16);
    let caught_up = |p: &Pair| {
        p.status("a").is_some_and(|a| {
            a.store_position >= WRITES as u64
                && a.peer.as_ref().and_then(|peer| peer.store_position) == Some(a.store_position)
        })
    };
    pair.wait("b caught up with the writes", caught_up);
    pair.wait("a trimmed its log", |p| {
        p.a.log().contains("store: log trimmed")
    });
    let mut pair = pair;
    pair.b.kill();
    let wiped = pair.dir.join("state/b.redb");
    std::fs::remove_file(&wiped).unwrap_or_else(|e| panic!("{}: {e}", wiped.display()));
    pair.b.start();
    pair.wait("the wiped b caught up again", |p| {
        caught_up(p) && p.status("b").is_some_and(|b| b.role == "standby")
    });
    holds_every_key(&pair, "b", "k/", WRITES).expect("b holds every key");
    store_call(&pair, "a", hyper::Method::POST, "/api/v1/switchover", None).expect("switchover");
    pair.wait("b active", |p| is(p, "b", "active"));
    holds_every_key(&pair, "b", "k/", WRITES).expect("b, active, holds every key");
    // And it replicates on from where the snapshot left it.
    let ack = store_call(
        &pair,
        "b",
        hyper::Method::PUT,
        "/api/v1/config/after/wipe",
        Some(serde_json::json!(1)),
    )
    .expect("write on b");
    assert_eq!(ack["replicated"], true, "{ack}");
}

/// A small tmpfs mounted for a test, unmounted when dropped (the tests run as root, as
/// `tests/run-all.sh` does).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&at).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mount a tmpfs (the tests run as root)");
        SmallDisk(at)
    }

    fn grow(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount runs");
        assert!(status.success(), "remount");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// PUT through curl, for the status code: (code, body).
fn put_with_curl(pair: &Pair, node: &str, key: &str, value_file: &Path) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-X", "PUT", "-w", "\n%{http_code}"])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg("--data-binary")
        .arg(format!("@{}", value_file.display()))
        .arg(format!("{}/api/v1/config/{key}", pair.node(node).admin))
        .output()
        .expect("curl (tests/run-all.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn a_full_disk_refuses_writes_hands_over_and_loses_nothing_acknowledged() {
    let options = Options {
        extra: "[store]\npath = \"disk-{id}/store.redb\"".to_owned(),
        ..Options::default()
    };
    let pair = Pair::new("storefull", 21350, options);
    std::fs::create_dir_all(pair.dir.join("disk-b")).expect("b's folder");
    let disk = SmallDisk::mount(pair.dir.join("disk-a"), "3m");
    let pair = pair.started();
    let value = pair.dir.join("value.json");
    std::fs::write(&value, serde_json::json!("x".repeat(60_000)).to_string()).expect("value");
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for n in 0..200 {
        let key = format!("big/{n}");
        match put_with_curl(&pair, "a", &key, &value) {
            (200, _) => acknowledged.push(key),
            (code, body) => {
                assert!(code >= 500, "write {n}: {code} {body}");
                refused = Some(key);
                break;
            }
        }
    }
    let refused = refused.expect("a 3 MB disk refuses a write");
    assert!(acknowledged.len() > 5, "{acknowledged:?}");
    // The refused value is never read back, on either node, failed or not.
    for node in ["a", "b"] {
        let read = store_call(
            &pair,
            node,
            hyper::Method::GET,
            &format!("/api/v1/config/{refused}"),
            None,
        );
        assert!(
            read.is_err(),
            "{node} returned the refused write {refused} (revision {:?})",
            read.as_ref().ok().map(|v| v["revision"].clone())
        );
    }
    // A small write after it is refused too, and not read back either.
    let small = store_call(
        &pair,
        "a",
        hyper::Method::PUT,
        "/api/v1/config/small",
        Some(serde_json::json!(1)),
    );
    assert!(small.is_err(), "{small:?}");
    assert!(store_call(&pair, "a", hyper::Method::GET, "/api/v1/config/small", None).is_err());
    // a steps down with its own reason and says why; b takes over.
    pair.wait("b active, a not", |p| {
        is(p, "b", "active") && p.status("a").is_some_and(|a| a.role != "active")
    });
    let a = pair.status("a").expect("a answers");
    assert!(a.store_error.is_some(), "{a:?}");
    assert!(!a.eligible, "{a:?}");
    assert!(
        a.transitions.iter().any(|t| t.reason == "store_failed"),
        "{:?}",
        a.transitions
    );
    let metrics = http_get(&pair.node("a").admin, "/metrics");
    assert_eq!(
        metric(&metrics, "standby_store_failed"),
        Some(1.0),
        "{metrics}"
    );
    // No acknowledged write is lost: the new active node holds each.
    for key in &acknowledged {
        let got = store_call(
            &pair,
            "b",
            hyper::Method::GET,
            &format!("/api/v1/config/{key}"),
            None,
        )
        .unwrap_or_else(|e| panic!("b lacks acknowledged {key}: {e}"));
        assert_eq!(got["value"].as_str().map(str::len), Some(60_000), "{key}");
    }
    // Room again: a reopens its store and comes back as a caught-up standby.
    disk.grow("64m");
    store_call(
        &pair,
        "b",
        hyper::Method::PUT,
        "/api/v1/config/after/full",
        Some(serde_json::json!(2)),
    )
    .expect("write on b");
    pair.wait("a reopened its store and follows b", |p| {
        p.status("a").is_some_and(|a| {
            a.store_error.is_none()
                && a.eligible
                && a.role == "standby"
                && a.active_node.as_deref() == Some("b")
        })
    });
    pair.wait("a holds b's write", |p| {
        store_call(
            p,
            "a",
            hyper::Method::GET,
            "/api/v1/config/after/full",
            None,
        )
        .is_ok_and(|got| got["value"] == 2)
    });
    let metrics = http_get(&pair.node("a").admin, "/metrics");
    assert_eq!(
        metric(&metrics, "standby_store_failed"),
        Some(0.0),
        "{metrics}"
    );
}
