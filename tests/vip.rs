//! The floating address with real processes in network namespaces: two node namespaces and
//! a client namespace on one bridge (in a switch namespace of its own), all created and
//! removed by the test; nothing leaves the machine. Each node namespace runs a web server
//! that answers with the node's name; the client reaches it through the floating address.
//! Checked: the active node holds the address and the client's neighbour entry names its
//! MAC, and a TCP front end listening on the floating address on both nodes forwards to it;
//! after kill -9 (and the unit's `release-vips`), SIGTERM, the active node's link going
//! down, and a split of the bridge and its heal, the client's next request through the
//! address reaches the node that is active then, and its neighbour entry names that node.
// Real processes run on the real clock.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_standby-proxy");
const PATIENCE: Duration = Duration::from_secs(15);
const VIP: &str = "10.77.0.100";
const VIP6: &str = "2001:db8:77::100";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `ip` (or another tool) and insists that it worked.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (tests/run-all.sh installs iproute2): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// The namespaces, the bridge and the node processes; all removed on drop.
struct Lab {
    prefix: String,
    dir: PathBuf,
    nodes: [Option<Child>; 2],
    servers: Vec<Child>,
}

const NAMES: [&str; 2] = ["a", "b"];
const ADDRESSES: [&str; 2] = ["10.77.0.1", "10.77.0.2"];
const CLIENT: &str = "10.77.0.9";
const ADDRESSES6: [&str; 2] = ["2001:db8:77::1", "2001:db8:77::2"];
const CLIENT6: &str = "2001:db8:77::9";

impl Lab {
    fn ns(&self, who: &str) -> String {
        format!("{}{who}", self.prefix)
    }

    fn new() -> Lab {
        let prefix = format!("spv{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("standby-vip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let lab = Lab {
            prefix,
            dir,
            nodes: [None, None],
            servers: Vec::new(),
        };
        let switch = lab.ns("sw");
        for who in ["sw", "a", "b", "c"] {
            run("ip", &["netns", "add", &lab.ns(who)]);
            in_ns(&lab.ns(who), &["ip", "link", "set", "lo", "up"]);
        }
        in_ns(&switch, &["ip", "link", "add", "br0", "type", "bridge"]);
        in_ns(&switch, &["ip", "link", "set", "br0", "up"]);
        for (who, address, address6) in [
            ("a", ADDRESSES[0], ADDRESSES6[0]),
            ("b", ADDRESSES[1], ADDRESSES6[1]),
            ("c", CLIENT, CLIENT6),
        ] {
            let port = format!("p{who}");
            run(
                "ip",
                &[
                    "link",
                    "add",
                    "eth0",
                    "netns",
                    &lab.ns(who),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    &switch,
                ],
            );
            in_ns(&switch, &["ip", "link", "set", &port, "master", "br0"]);
            in_ns(&switch, &["ip", "link", "set", &port, "up"]);
            in_ns(
                &lab.ns(who),
                &["ip", "addr", "add", &format!("{address}/24"), "dev", "eth0"],
            );
            let address6 = format!("{address6}/64");
            in_ns(
                &lab.ns(who),
                &["ip", "addr", "add", &address6, "dev", "eth0", "nodad"],
            );
            in_ns(&lab.ns(who), &["ip", "link", "set", "eth0", "up"]);
        }
        lab
    }

    fn config(&self, index: usize) -> PathBuf {
        let (me, other) = (ADDRESSES[index], ADDRESSES[1 - index]);
        let (id, peer) = (NAMES[index], NAMES[1 - index]);
        let certs = repo().join("certs");
        let path = self.dir.join(format!("{id}.toml"));
        let text = format!(
            r#"
[node]
id = "{id}"
address = "{me}"
priority = "{priority}"
[peer]
id = "{peer}"
address = "{other}"
connect = "{other}:7701"
[peer_link]
listen = "{me}:7701"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
[election]
heartbeat_interval = "100ms"
peer_dead_after = "300ms"
startup_wait = "1s"
[admin]
listen = "{me}:7780"
[store]
path = "{dir}/{id}.redb"
[[vip]]
address = "{VIP}/24"
interface = "eth0"
[[vip]]
address = "{VIP6}/64"
interface = "eth0"
# Bound on the floating address on both nodes (IP_FREEBIND): the standby's listener waits
# for the address; the active node's forwards to its own web server.
[[frontend]]
name = "web"
kind = "tcp"
listen = "{VIP}:9000"
target = "{me}:8080"
"#,
            priority = if index == 0 { "primary" } else { "secondary" },
            ca = certs.join("ca.pem").display(),
            cert = certs.join(format!("{id}.pem")).display(),
            key = certs.join(format!("{id}.key")).display(),
            dir = self.dir.display(),
        );
        std::fs::write(&path, text).expect("config");
        path
    }

    fn start(&mut self, index: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", NAMES[index])))
            .expect("log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(NAMES[index]),
                BIN,
                "run",
                "--config",
            ])
            .arg(self.config(index))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("node starts");
        self.nodes[index] = Some(child);
    }

    /// A web server in the node's namespace answering `/who` with the node's name.
    fn serve(&mut self, index: usize) {
        let root = self.dir.join(format!("www-{}", NAMES[index]));
        std::fs::create_dir_all(&root).expect("www");
        std::fs::write(root.join("who"), NAMES[index]).expect("who");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(NAMES[index]),
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "::",
                "--directory",
            ])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("web server");
        self.servers.push(child);
    }

    fn signal(&mut self, index: usize, signal: &str) -> Instant {
        let child = self.nodes[index].as_ref().expect("running");
        // `ip netns exec` execs the node, so the child's pid is the node's.
        run("kill", &[&format!("-{signal}"), &child.id().to_string()]);
        Instant::now()
    }

    fn reap(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].take() {
            child.wait().ok();
        }
    }

    fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", NAMES[index]))).unwrap_or_default()
    }

    /// The role a node reports, asked from the client's namespace.
    fn role(&self, index: usize) -> Option<String> {
        let url = format!("http://{}:7780/api/v1/status", ADDRESSES[index]);
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns("c"),
                "curl",
                "-s",
                "-m",
                "1",
                &url,
            ])
            .output()
            .ok()?;
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        status["role"].as_str().map(str::to_owned)
    }

    fn wait(&self, what: &str, done: impl Fn(&Lab) -> bool) -> Duration {
        let start = Instant::now();
        while start.elapsed() < PATIENCE {
            if done(self) {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out waiting for {what}\n--- a ---\n{}\n--- b ---\n{}",
            self.log(0),
            self.log(1)
        );
    }

    /// Who answers through the floating address, as the client sees it.
    fn through_vip(&self) -> Option<String> {
        self.through(&format!("http://{VIP}:8080/who"))
    }

    /// The same through the IPv6 floating address.
    fn through_vip6(&self) -> Option<String> {
        self.through(&format!("http://[{VIP6}]:8080/who"))
    }

    fn through(&self, url: &str) -> Option<String> {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.ns("c"), "curl", "-s", "-m", "1", url])
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The client's neighbour entry for a floating address (its MAC).
    fn client_neighbour(&self, vip: &str) -> Option<String> {
        let shown = in_ns(&self.ns("c"), &["ip", "neigh", "show", vip]);
        let mut words = shown.split_whitespace();
        words.find(|word| *word == "lladdr")?;
        words.next().map(str::to_owned)
    }

    fn mac(&self, index: usize) -> String {
        in_ns(
            &self.ns(NAMES[index]),
            &["cat", "/sys/class/net/eth0/address"],
        )
        .trim()
        .to_owned()
    }

    fn holds_vip(&self, index: usize) -> bool {
        let shown = in_ns(
            &self.ns(NAMES[index]),
            &["ip", "-o", "addr", "show", "dev", "eth0"],
        );
        let v4 = shown.contains(&format!("{VIP}/24"));
        let v6 = shown.contains(&format!("{VIP6}/64"));
        assert_eq!(
            v4, v6,
            "{} holds one address of the two:\n{shown}",
            NAMES[index]
        );
        v4
    }

    /// `index` is active, holds the address alone, and the client reaches it through it
    /// with its neighbour entry naming it.
    fn served_by(&self, index: usize) {
        let name = NAMES[index];
        self.wait(
            &format!("{name} active and reached through the addresses"),
            |lab| {
                lab.role(index).as_deref() == Some("active")
                    && lab.through_vip().as_deref() == Some(name)
                    && lab.through_vip6().as_deref() == Some(name)
                    && lab.through(&format!("http://{VIP}:9000/who")).as_deref() == Some(name)
            },
        );
        assert!(self.holds_vip(index), "{name} holds the address");
        assert!(
            !self.holds_vip(1 - index),
            "{} still holds the address",
            NAMES[1 - index]
        );
        self.wait(
            &format!("the client's neighbour entries to name {name}"),
            |lab| {
                let mac = lab.mac(index);
                lab.client_neighbour(VIP).as_deref() == Some(mac.as_str())
                    && lab.client_neighbour(VIP6).as_deref() == Some(mac.as_str())
            },
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in self
            .nodes
            .iter_mut()
            .flatten()
            .chain(self.servers.iter_mut())
        {
            child.kill().ok();
            child.wait().ok();
        }
        for who in ["a", "b", "c", "sw"] {
            Command::new("ip")
                .args(["netns", "del", &self.ns(who)])
                .status()
                .ok();
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

#[test]
fn the_floating_address_follows_the_active_node() {
    let mut lab = Lab::new();
    lab.serve(0);
    lab.serve(1);
    // An earlier run of b, with other prefixes in its config, was killed holding the
    // addresses: b removes them at start-up, whatever their prefix.
    in_ns(
        &lab.ns("b"),
        &["ip", "addr", "add", &format!("{VIP}/28"), "dev", "eth0"],
    );
    in_ns(
        &lab.ns("b"),
        &[
            "ip",
            "addr",
            "add",
            &format!("{VIP6}/120"),
            "dev",
            "eth0",
            "nodad",
        ],
    );
    lab.start(0);
    lab.start(1);
    lab.served_by(0);
    let shown = in_ns(&lab.ns("b"), &["ip", "-o", "addr", "show", "dev", "eth0"]);
    assert!(
        !shown.contains(&format!("{VIP}/")) && !shown.contains(&format!("{VIP6}/")),
        "b kept the addresses an earlier run left:\n{shown}"
    );
    // Who holds it, as an operator sees it: metrics, the status API and the status page.
    let metrics = lab
        .through("http://10.77.0.1:7780/metrics")
        .unwrap_or_default();
    assert!(
        metrics.contains(&format!("standby_vip_held{{address=\"{VIP}/24\"}} 1")),
        "{metrics}"
    );
    let page = lab.status_page(0);
    assert!(page.contains(&format!("{VIP}/24 held here")), "{page}");
    assert!(lab
        .status_page(1)
        .contains(&format!("{VIP}/24 not held here")));

    // kill -9 of the active node: the peer takes over and announces; the unit's
    // ExecStopPost (`release-vips`) removes what the killed node left behind.
    let killed = lab.signal(0, "KILL");
    lab.reap(0);
    in_ns(
        &lab.ns("a"),
        &[
            BIN,
            "release-vips",
            "--config",
            &lab.config(0).display().to_string(),
        ],
    );
    lab.served_by(1);
    println!(
        "kill -9 -> served by b through the address: {:?}",
        killed.elapsed()
    );
    assert!(
        lab.log(1).contains("reason=\"peer_gone\""),
        "{}",
        lab.log(1)
    );

    // a comes back as standby; SIGTERM of b hands over: b lets go before a takes it.
    lab.start(0);
    lab.wait("a standby", |lab| lab.role(0).as_deref() == Some("standby"));
    let stopped = lab.signal(1, "TERM");
    lab.reap(1);
    lab.served_by(0);
    println!(
        "SIGTERM -> served by a through the address: {:?}",
        stopped.elapsed()
    );
    // b let go of the addresses before a, told it may take over, added them.
    let removed = last_time(&lab.log(1), "vip: removed");
    let added = last_time(&lab.log(0), "vip: added");
    assert!(
        removed < added,
        "b removed at {removed}, a added at {added}"
    );

    // The active node's link goes down: the peer takes over after peer_dead_after.
    lab.start(1);
    lab.wait("b standby", |lab| lab.role(1).as_deref() == Some("standby"));
    let down = Instant::now();
    in_ns(&lab.ns("a"), &["ip", "link", "set", "eth0", "down"]);
    lab.wait("b active", |lab| lab.role(1).as_deref() == Some("active"));
    lab.wait("served by b", |lab| {
        lab.through_vip().as_deref() == Some("b")
    });
    println!(
        "link down -> served by b through the address: {:?}",
        down.elapsed()
    );
    // Back up: a split heal; exactly one holds the address and the client follows it.
    in_ns(&lab.ns("a"), &["ip", "link", "set", "eth0", "up"]);
    let winner = lab.wait_one_active();
    lab.served_by(winner);

    // A split of the bridge that cuts the active node off: the other takes over and the
    // client follows it. Healed, the node active longer stays (R10) and must announce
    // again, or the client would keep sending to the loser's MAC until its neighbour entry
    // went stale (tens of seconds).
    let (cut_off, other) = (winner, 1 - winner);
    let port = format!("p{}", NAMES[cut_off]);
    in_ns(&lab.ns("sw"), &["ip", "link", "set", &port, "down"]);
    lab.served_by_while_split(other, cut_off);
    in_ns(&lab.ns("sw"), &["ip", "link", "set", &port, "up"]);
    assert_eq!(
        lab.wait_one_active(),
        cut_off,
        "the node active longer stays"
    );
    lab.served_by(cut_off);
    // The loser let go for good: nothing of its time as active (the check that puts a
    // missing address back, every 2 s) goes on adding it.
    std::thread::sleep(Duration::from_millis(2500));
    lab.served_by(cut_off);

    // An operator (or a script) removes the address from the active node: the node puts
    // it back and announces it within a few seconds, and says so.
    let holder = lab.ns(NAMES[cut_off]);
    in_ns(
        &holder,
        &["ip", "addr", "del", &format!("{VIP}/24"), "dev", "eth0"],
    );
    in_ns(
        &holder,
        &["ip", "addr", "del", &format!("{VIP6}/64"), "dev", "eth0"],
    );
    lab.wait("the removed addresses back", |lab| {
        let shown = in_ns(
            &lab.ns(NAMES[cut_off]),
            &["ip", "-o", "addr", "show", "dev", "eth0"],
        );
        shown.contains(&format!("{VIP}/24")) && shown.contains(&format!("{VIP6}/64"))
    });
    lab.served_by(cut_off);
    assert!(
        lab.log(cut_off).contains("had gone from the interface"),
        "{}",
        lab.log(cut_off)
    );
}

/// The timestamp (RFC 3339, so it sorts as text) of the last log line containing `what`.
fn last_time(log: &str, what: &str) -> String {
    log.lines()
        .rfind(|line| line.contains(what))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {what:?} in:\n{log}"))
        .to_owned()
}

impl Lab {
    /// During a split that cut `cut_off` off: `index` is active too and the client reaches it.
    fn served_by_while_split(&self, index: usize, cut_off: usize) {
        let name = NAMES[index];
        self.wait(&format!("{name} active and reached while split"), |lab| {
            lab.role_from_switch(cut_off).as_deref() == Some("active")
                && lab.role(index).as_deref() == Some("active")
                && lab.through_vip().as_deref() == Some(name)
                && lab.through_vip6().as_deref() == Some(name)
        });
        self.wait(
            &format!("the client's neighbour entries to name {name}"),
            |lab| {
                let mac = lab.mac(index);
                lab.client_neighbour(VIP).as_deref() == Some(mac.as_str())
                    && lab.client_neighbour(VIP6).as_deref() == Some(mac.as_str())
            },
        );
    }

    /// The node's status page as headless Chromium in the client's namespace renders it.
    fn status_page(&self, index: usize) -> String {
        let profile = self.dir.join(format!("chromium-{index}"));
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns("c"),
                "chromium",
                "--headless",
                "--no-sandbox",
            ])
            .args([
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
            ])
            .args([
                "--disable-component-update",
                "--virtual-time-budget=2000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("http://{}:7780/", ADDRESSES[index]))
            .output()
            .expect("chromium (tests/run-all.sh installs it)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits until exactly one node is active; returns it.
    fn wait_one_active(&self) -> usize {
        self.wait("exactly one active", |lab| {
            let roles = (lab.role(0), lab.role(1));
            matches!(
                (roles.0.as_deref(), roles.1.as_deref()),
                (Some("active"), Some("standby")) | (Some("standby"), Some("active"))
            )
        });
        if self.role(0).as_deref() == Some("active") {
            0
        } else {
            1
        }
    }

    /// A node's role asked from its own namespace (the client cannot reach it in a split).
    fn role_from_switch(&self, index: usize) -> Option<String> {
        let url = format!("http://{}:7780/api/v1/status", ADDRESSES[index]);
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(NAMES[index]),
                "curl",
                "-s",
                "-m",
                "1",
                &url,
            ])
            .output()
            .ok()?;
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        status["role"].as_str().map(str::to_owned)
    }
}
