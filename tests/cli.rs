//! The command line as an operator meets it: the real binary, its exit codes and its logs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_standby-proxy");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Generous bound for a process to do something; a guard against hanging, not a timing.
const PATIENCE: Duration = Duration::from_secs(20);

#[test]
fn check_config_accepts_every_shipped_config() {
    for name in ["standby-proxy.toml", "node-a.toml", "node-b.toml"] {
        let output = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(repo().join("config").join(name))
            .output()
            .expect("runs");
        assert!(output.status.success(), "{name}: {output:?}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("ok"));
    }
}

#[test]
fn check_config_exits_2_naming_every_error_by_key() {
    let dir = std::env::temp_dir().join(format!("standby-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("broken.toml");
    std::fs::write(
        &file,
        "[node]\nid = \"a\"\naddress = \"127.0.0.1\"\n[peer]\nid = \"a\"\naddress = \"127.0.0.1\"\n\
         [election]\npeer_dead_after = \"100ms\"\n",
    )
    .expect("write");
    let output = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .expect("runs");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in ["peer.id:", "peer.address:", "election.peer_dead_after:"] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
}

#[test]
fn run_with_a_missing_config_exits_2() {
    let output = Command::new(BIN)
        .args(["run", "--config", "/nonexistent/standby.toml"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/standby.toml"));
}

#[test]
fn unknown_verb_exits_2() {
    let output = Command::new(BIN).arg("frobnicate").output().expect("runs");
    assert_eq!(output.status.code(), Some(2));
}

/// The default-config node, its log lines arriving on a channel.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start() -> Self {
        Running::start_with(&[])
    }

    /// `run` with more arguments (`--config FILE`).
    fn start_with(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("run")
            .args(args)
            .current_dir(repo())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts");
        let stderr = child.stderr.take().expect("piped");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing every one of `words`.
    fn expect_line(&mut self, words: &[&str]) -> String {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if words.iter().all(|word| line.contains(word)) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {words:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> i32 {
        for _ in 0..(PATIENCE.as_millis() / 50) {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().expect("exited, not killed");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().ok();
        panic!("did not exit; saw:\n{}", self.seen.join("\n"));
    }
}

/// The default config binds the admin port 7780: one default node at a time.
static DEFAULT_PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn default_node_goes_active_and_stops_on(signal: &str) {
    let _ports = DEFAULT_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut node = Running::start();
    node.expect_line(&["started", "role=starting"]);
    node.expect_line(&[
        "role changed",
        "from=starting",
        "to=active",
        "reason=\"alone\"",
    ]);
    node.expect_line(&["No Standby"]);
    node.signal(signal);
    node.expect_line(&["shutting down", "role=active"]);
    node.expect_line(&[
        "role changed",
        "from=active",
        "to=standby",
        "reason=\"shutdown\"",
    ]);
    assert_eq!(node.wait_exit(), 0);
}

#[test]
fn run_on_the_default_config_goes_active_alone_and_stops_cleanly_on_sigterm() {
    default_node_goes_active_and_stops_on("TERM");
}

#[test]
fn run_on_the_default_config_stops_cleanly_on_ctrl_c() {
    default_node_goes_active_and_stops_on("INT");
}

#[test]
fn run_tells_systemd_ready_status_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let _ports = DEFAULT_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = std::env::temp_dir().join(format!("standby-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    socket.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut child = Command::new(BIN)
        .arg("run")
        .current_dir(repo())
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let mut seen = Vec::new();
    let mut expect = |wanted: &str| loop {
        let mut buffer = [0u8; 512];
        let length = socket
            .recv(&mut buffer)
            .unwrap_or_else(|e| panic!("no {wanted:?} from the node ({e}); saw {seen:?}"));
        let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
        seen.push(message.clone());
        if message.contains(wanted) {
            return message;
        }
    };
    let ready = expect("READY=1");
    assert!(ready.contains("STATUS=starting"), "{ready}");
    // The term is saved across runs, so it is whatever this store reached, plus one.
    let active = expect("STATUS=active (term ");
    assert!(active.contains(", alone)"), "{active}");
    expect("WATCHDOG=1");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    expect("STOPPING=1");
    assert!(child.wait().expect("exits").success());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("config/standby-proxy.service")).expect("unit");
    assert!(unit.contains("Type=notify"));
    // Floating addresses: exactly the capabilities they need, and stale ones removed after
    // any stop.
    assert!(unit.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_ADMIN CAP_NET_RAW"));
    assert!(unit.contains("ExecStopPost=/usr/bin/standby-proxy release-vips --config"));
    // Verify it with this build's binary in place of the installed path.
    let dir = std::env::temp_dir().join(format!("standby-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("standby-proxy.service");
    std::fs::write(&path, unit.replace("/usr/bin/standby-proxy", BIN)).expect("write");
    // --man=no: the man page in Documentation= comes with the Debian package (tests/package.rs
    // verifies the installed unit with it).
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (tests/run-all.sh installs systemd)");
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The unit's `ExecStartPre=`/`ExecStart=` command lines, with this build's binary and
/// `etc` in place of the installed paths.
fn unit_commands(unit: &str, etc: &Path) -> Vec<Vec<String>> {
    unit.lines()
        .filter_map(|line| {
            line.strip_prefix("ExecStartPre=")
                .or_else(|| line.strip_prefix("ExecStart="))
        })
        .map(|command| {
            command
                .replace("/usr/bin/standby-proxy", BIN)
                .replace("/etc/standby-proxy", &etc.display().to_string())
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[test]
fn the_binary_runs_with_the_systemd_units_paths() {
    let _ports = DEFAULT_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let unit = std::fs::read_to_string(repo().join("config/standby-proxy.service")).expect("unit");
    assert!(unit.contains("ProtectSystem=strict") && unit.contains("StateDirectory=standby-proxy"));
    assert!(unit.contains("WorkingDirectory=/etc/standby-proxy"));
    // /etc/standby-proxy as the unit leaves it: read-only (a tmpfs remounted so; root would
    // write through mode bits). $STATE_DIRECTORY as systemd sets it for StateDirectory=.
    let dir = std::env::temp_dir().join(format!("standby-unit-paths-{}", std::process::id()));
    let (etc, state) = (dir.join("etc"), dir.join("state"));
    std::fs::create_dir_all(&etc).expect("etc");
    std::fs::create_dir_all(&state).expect("state");
    let mount = |args: &[&str]| {
        let done = Command::new("mount")
            .args(args)
            .arg(&etc)
            .status()
            .expect("mount runs");
        assert!(done.success(), "mount {args:?} (the tests run as root)");
    };
    mount(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"]);
    let shipped =
        std::fs::read_to_string(repo().join("config/standby-proxy.toml")).expect("config");
    let config = shipped.replace("[admin]\n", "[admin]\ntoken_file = \"token\"\n");
    assert_ne!(config, shipped, "the shipped config has an [admin] section");
    std::fs::write(etc.join("standby-proxy.toml"), config).expect("config");
    std::fs::write(etc.join("token"), "unit-token").expect("token");
    mount(&["-o", "remount,ro"]);
    let commands = unit_commands(&unit, &etc);
    assert_eq!(commands.len(), 2, "ExecStartPre and ExecStart");
    let check = Command::new(&commands[0][0])
        .args(&commands[0][1..])
        .current_dir(&etc)
        .env("STATE_DIRECTORY", &state)
        .output()
        .expect("check-config runs");
    assert!(check.status.success(), "{check:?}");
    let mut child = Command::new(&commands[1][0])
        .args(&commands[1][1..])
        .current_dir(&etc)
        .env("STATE_DIRECTORY", &state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run starts");
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-H", "Authorization: Bearer unit-token"])
            .args(args)
            .output()
            .expect("curl (tests/run-all.sh installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let key = "http://127.0.0.1:7780/api/v1/config/unit-check";
    let mut stored = String::new();
    for _ in 0..(PATIENCE.as_millis() / 100) {
        stored = curl(&["-X", "PUT", "--data-binary", "\"kept\"", key]);
        if stored.contains("\"revision\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let read = curl(&[key]);
    child.kill().ok();
    let output = child.wait_with_output().expect("exits");
    let umount = Command::new("umount").arg(&etc).status();
    let in_state: Vec<_> = std::fs::read_dir(&state)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    std::fs::remove_dir_all(&dir).ok();
    assert!(umount.is_ok_and(|s| s.success()), "umount");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        stored.contains("\"revision\""),
        "PUT answered {stored:?}; log:\n{log}"
    );
    assert!(read.contains("kept"), "GET answered {read:?}");
    assert_eq!(in_state, vec![std::ffi::OsString::from("standalone.redb")]);
}

#[test]
fn status_does_not_send_the_admin_token() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr");
    let captured = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the CLI connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
            head.push(byte[0]);
        }
        let _ =
            stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}");
        String::from_utf8_lossy(&head).to_ascii_lowercase()
    });
    let token = std::env::temp_dir().join(format!("standby-cli-token-{}", std::process::id()));
    std::fs::write(&token, "secret-token").expect("token");
    let _ = Command::new(BIN)
        .args([
            "status",
            "--admin",
            &format!("http://{address}"),
            "--token-file",
        ])
        .arg(&token)
        .output()
        .expect("cli runs");
    std::fs::remove_file(&token).ok();
    let head = captured.join().expect("server");
    assert!(head.starts_with("get /api/v1/status"), "{head}");
    assert!(
        !head.contains("authorization"),
        "the token went out: {head}"
    );
}

#[test]
fn an_admin_token_served_in_clear_beyond_loopback_is_a_loud_warning_not_a_refusal() {
    let dir = std::env::temp_dir().join(format!("standby-cli-clear-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("token"), "secret-token").expect("token");
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = \"a\"\naddress = \"127.0.0.1\"\n\n[admin]\nlisten = \"0.0.0.0:21795\"\ntoken_file = \"{}\"\n",
            dir.join("token").display()
        ),
    )
    .expect("config");
    let mut node = Running::start_with(&["--config", config.to_str().expect("utf-8 path")]);
    node.expect_line(&["THE ADMIN TOKEN CROSSES THE NETWORK IN CLEAR"]);
    node.expect_line(&["role changed", "active"]);
    let table = Command::new(BIN)
        .args(["status", "--admin", "http://127.0.0.1:21795"])
        .output()
        .expect("cli");
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let metrics = Command::new("curl")
        .args(["-s", "http://127.0.0.1:21795/metrics"])
        .output()
        .expect("curl");
    node.signal("TERM");
    assert_eq!(node.wait_exit(), 0);
    std::fs::remove_dir_all(&dir).ok();
    assert!(table.contains("ADMIN TOKEN IN CLEAR"), "{table}");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics
            .lines()
            .any(|l| l == "standby_admin_token_in_clear 1"),
        "{metrics}"
    );
}

#[test]
fn a_node_with_a_floating_address_but_without_net_admin_refuses_to_start() {
    let dir = std::env::temp_dir().join(format!("standby-vip-caps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("vip.toml");
    std::fs::write(
        &config,
        "[node]\nid = \"a\"\naddress = \"127.0.0.1\"\n[admin]\nlisten = \"127.0.0.1:21395\"\n\
         [[vip]]\naddress = \"192.0.2.10/24\"\ninterface = \"lo\"\n",
    )
    .expect("config");
    // The tests run as root: drop the capabilities from the bounding set as a service
    // user's would lack them.
    let output = Command::new("setpriv")
        .args([
            "--bounding-set=-net_admin,-net_raw",
            "--inh-caps=-net_admin,-net_raw",
        ])
        .arg(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("setpriv (util-linux) runs");
    std::fs::remove_dir_all(&dir).ok();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("CAP_NET_ADMIN"), "{stderr}");
}
