//! The replicated store with two real processes: a short run of bench/crashloop (kill -9 of
//! the active, the standby or both, partitions and heals, while a client streams writes),
//! which fails if any acknowledged write is missing from either node at the end.
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
