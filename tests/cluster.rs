//! Cluster mode against a real etcd: a 3-member etcd cluster on loopback (Debian's
//! etcd-server, data on tmpfs, default election timeout) and three standby-proxy members on
//! 127.0.0.1, 127.0.0.2 and 127.0.0.3, and a front-only node (`role = "front"`) on
//! 127.0.0.4, each with a SIP redirect front end.
//!
//! A checker polls every node's status and SIP front end every few milliseconds with its own
//! monotonic timestamps through every scenario, and fails if two nodes were surely serving as
//! the active node at the same time (see [`Checker`]).
//!
//! Tests run one at a time (each starts its own etcd and members). Ports 23100-23299: a
//! test's base + 0..2 etcd clients, +10..12 etcd peers, +20..31 relays, +50 admin, +60 SIP.
//! Built only with the cargo feature `etcd` (the README test command
//! enables it; `tests/run-all.sh` installs etcd-server and protobuf-compiler).
#![cfg(feature = "etcd")]
// Real processes run on the real clock.
#![allow(clippy::disallowed_methods)]

use serde_json::Value;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_standby-proxy");
const PATIENCE: Duration = Duration::from_secs(20);
const TOKEN: &str = "cluster-test-token";
/// The lease: etcd's minimum with its default 1 s election timeout.
const LEASE_TTL: Duration = Duration::from_secs(2);
const ADDRESSES: [&str; 4] = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"];
/// The fourth node runs with `role = "front"`: it never campaigns, only follows.
const FRONT: usize = 3;

/// One test at a time: each starts its own etcd cluster and members on 2 cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds [`SERIAL`] for a test (a test that failed before does not stop the others).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A 3-member etcd cluster on loopback, stopped on drop.
struct Etcd {
    members: Vec<Child>,
    endpoints: Vec<String>,
    dir: PathBuf,
}

impl Etcd {
    /// Client ports base, base+1, base+2; peer ports base+10...
    fn start(base: u16) -> (Etcd, Vec<String>) {
        let dir = PathBuf::from(format!(
            "/dev/shm/standby-etcd-{}-{base}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd data folder on tmpfs");
        let peer = |i: u16| format!("http://127.0.0.1:{}", base + 10 + i);
        let client = |i: u16| format!("http://127.0.0.1:{}", base + i);
        let initial: Vec<String> = (0..3).map(|i| format!("e{i}={}", peer(i))).collect();
        let members = (0..3)
            .map(|i| {
                let log = std::fs::File::create(dir.join(format!("e{i}.log"))).expect("log");
                Command::new("etcd")
                    .args(["--name", &format!("e{i}")])
                    .args([
                        "--data-dir",
                        &dir.join(format!("e{i}")).display().to_string(),
                    ])
                    .args(["--listen-client-urls", &client(i)])
                    .args(["--advertise-client-urls", &client(i)])
                    .args(["--listen-peer-urls", &peer(i)])
                    .args(["--initial-advertise-peer-urls", &peer(i)])
                    .args(["--initial-cluster", &initial.join(",")])
                    .args(["--initial-cluster-token", &format!("standby-test-{base}")])
                    .args(["--initial-cluster-state", "new"])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("etcd (tests/run-all.sh installs Debian's etcd-server)")
            })
            .collect();
        let endpoints: Vec<String> = (0..3).map(client).collect();
        let etcd = Etcd {
            members,
            endpoints: endpoints.clone(),
            dir,
        };
        let deadline = Instant::now() + PATIENCE;
        while !endpoints.iter().all(|e| healthy(e)) {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
        (etcd, endpoints)
    }
}

impl Etcd {
    /// One call of etcd's JSON gateway about `key`: the status and the answer.
    fn call(&self, path: &str, key: &str) -> Option<(u16, String)> {
        let body = serde_json::json!({ "key": base64(key.as_bytes()) }).to_string();
        let endpoint = self.endpoints[0].trim_start_matches("http://");
        // No bearer token: etcd would take it for one of its own.
        request("POST", endpoint, path, Some(&body), "")
    }

    /// Sends `signal` (STOP, CONT) to etcd member `index`.
    fn signal(&self, index: usize, signal: &str) -> Instant {
        send_signal(&self.members[index], signal)
    }

    /// The etcd member that is raft leader now, as the members themselves say.
    fn leader(&self) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            for (index, endpoint) in self.endpoints.iter().enumerate() {
                let status = http(
                    "POST",
                    endpoint.trim_start_matches("http://"),
                    "/v3/maintenance/status",
                    Some("{}"),
                )
                .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok());
                if let Some(status) = status {
                    if status["leader"] == status["header"]["member_id"] {
                        return index;
                    }
                }
            }
            assert!(Instant::now() < deadline, "etcd has no leader");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Standard base64 with padding, as etcd's gateway takes keys.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            let sextet = (n >> (18 - 6 * i)) & 63;
            let present = i <= chunk.len();
            out.push(if present {
                char::from(ALPHABET[sextet as usize])
            } else {
                '='
            });
        }
    }
    out
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

include!("common/signal.rs");

fn healthy(endpoint: &str) -> bool {
    http("GET", &endpoint.replace("http://", ""), "/health", None)
        .is_some_and(|(_, body)| body.contains("\"true\""))
}

/// One HTTP/1.1 exchange: the status code and the body; `None` if nothing answered in time.
fn http(method: &str, authority: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    request(method, authority, path, body, &bearer)
}

/// One HTTP/1.1 request with `headers` (each ending in CRLF): the status and the body.
fn request(
    method: &str,
    authority: &str,
    path: &str,
    body: Option<&str>,
    headers: &str,
) -> Option<(u16, String)> {
    let address = authority.parse().ok()?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&address, Duration::from_millis(300)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let code = answer.get(9..12)?.parse().ok()?;
    let (_, body) = answer.split_once("\r\n\r\n")?;
    Some((code, body.to_owned()))
}

/// One standby-proxy member.
struct Member {
    index: usize,
    /// The test's port base.
    base: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn admin(&self) -> String {
        format!("{}:{}", ADDRESSES[self.index], self.base + 50)
    }

    fn sip(&self) -> String {
        format!("{}:{}", ADDRESSES[self.index], self.base + 60)
    }

    /// The SIP target it advertises: where clients go while it is active.
    fn target(&self) -> String {
        format!("sip:{}:{}", ADDRESSES[self.index], self.base + 61)
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "standby_proxy=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn");
        self.child = Some(child);
    }

    fn signal(&self, signal: &str) -> Instant {
        send_signal(self.child.as_ref().expect("running"), signal)
    }

    fn kill(&mut self) -> Instant {
        let at = self.signal("KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        at
    }

    fn terminate(&mut self) -> Instant {
        let at = self.signal("TERM");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        at
    }

    fn status(&self) -> Option<Value> {
        let (code, body) = http("GET", &self.admin(), "/api/v1/status", None)?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    fn role(&self) -> Option<String> {
        self.status()
            .and_then(|s| s["role"].as_str().map(str::to_owned))
    }

    /// Where its SIP front end sends a client now (the 302's Contact), if it answers.
    fn sends_to(&self) -> Option<String> {
        sends_to(&self.sip())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The cluster under test.
struct Cluster {
    members: Vec<Member>,
    dir: PathBuf,
    /// Per member: the switch of the relays its etcd connections go through.
    cut_from_etcd: Vec<Arc<AtomicBool>>,
    etcd: Etcd,
}

/// Relays `listen` to `target`; while `cut` is set, bytes are read and dropped both ways (a
/// link that lost its packets: no reset, no answer).
fn relay(listen: u16, target: String, cut: Arc<AtomicBool>) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", listen)).expect("relay bind");
    std::thread::spawn(move || {
        for inbound in listener.incoming().flatten() {
            let Ok(outbound) = std::net::TcpStream::connect(&target) else {
                continue;
            };
            for (from, to) in [
                (inbound.try_clone(), outbound.try_clone()),
                (outbound.try_clone(), inbound.try_clone()),
            ] {
                let (Ok(mut from), Ok(mut to)) = (from, to) else {
                    continue;
                };
                let cut = cut.clone();
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 16384];
                    while let Ok(n @ 1..) = from.read(&mut buffer) {
                        if !cut.load(Ordering::SeqCst) && to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
}

impl Cluster {
    /// Waits until the front node sends clients to `active`'s target.
    fn front_follows(&self, active: usize) {
        self.follows(FRONT, active);
    }

    /// Waits until `member`'s front end sends clients to `active`'s target.
    fn follows(&self, member: usize, active: usize) {
        let target = self.members[active].target();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let contact = self.members[member].sends_to();
            if contact.as_deref().is_some_and(|c| c.contains(&target[4..])) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "n{member} sends clients to {contact:?}, not n{active}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts etcd and the nodes; `node_settings(index)` goes at the end of a node's `[node]`
    /// table (and may open tables of its own, such as `[election]`).
    fn start(test: &str, base: u16, node_settings: &dyn Fn(usize) -> String) -> Cluster {
        Cluster::start_with(test, base, node_settings, &|_, _| String::new())
    }

    /// As [`Cluster::start`]; `cluster_settings(index, folder)` goes at the end of a node's
    /// `[cluster]` table (and may open its sub-tables); `folder` is the test's.
    fn start_with(
        test: &str,
        base: u16,
        node_settings: &dyn Fn(usize) -> String,
        cluster_settings: &dyn Fn(usize, &std::path::Path) -> String,
    ) -> Cluster {
        let dir =
            std::env::temp_dir().join(format!("standby-cluster-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test folder");
        std::fs::write(dir.join("token"), TOKEN).expect("token");
        let (etcd, endpoints) = Etcd::start(base);
        // Each member reaches etcd through relays of its own, which a test can cut.
        let cut_from_etcd: Vec<Arc<AtomicBool>> = (0..ADDRESSES.len())
            .map(|_| Arc::new(AtomicBool::new(false)))
            .collect();
        let relayed = |index: usize| {
            endpoints
                .iter()
                .enumerate()
                .map(|(j, endpoint)| {
                    let port = base + 20 + u16::try_from(index * 3 + j).expect("port");
                    let target = endpoint.trim_start_matches("http://").to_owned();
                    relay(port, target, cut_from_etcd[index].clone());
                    format!("\"http://127.0.0.1:{port}\"")
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let members = (0..ADDRESSES.len())
            .map(|index| {
                let me = ADDRESSES[index];
                let role = if index == FRONT { "role = \"front\"\n" } else { "" };
                let endpoints = relayed(index);
                let config = dir.join(format!("n{index}.toml"));
                let text = format!(
                    "[node]\nid = \"n{index}\"\naddress = \"{me}\"\n{}\n\
                     [cluster]\nbackend = \"etcd\"\nname = \"{test}\"\nendpoints = [{endpoints}]\n\
                     lease_ttl = \"{}s\"\n{role}{}\n\
                     [admin]\nlisten = \"{me}:{}\"\ntoken_file = \"{}\"\n\n\
                     [store]\npath = \"{}\"\n\n\
                     [[frontend]]\nname = \"sip\"\nkind = \"sip\"\nlisten = \"{me}:{}\"\ntarget = \"sip:{me}:{}\"\n",
                    node_settings(index),
                    LEASE_TTL.as_secs(),
                    cluster_settings(index, &dir),
                    base + 50,
                    dir.join("token").display(),
                    dir.join(format!("n{index}.redb")).display(),
                    base + 60,
                    base + 61,
                );
                std::fs::write(&config, text).expect("config");
                Member {
                    index,
                    base,
                    config,
                    log: dir.join(format!("n{index}.log")),
                    child: None,
                }
            })
            .collect();
        let mut cluster = Cluster {
            members,
            dir,
            cut_from_etcd,
            etcd,
        };
        for member in &mut cluster.members {
            member.start();
        }
        cluster
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "--- n{}\n{}",
                    m.index,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until exactly one member is active and every other running one is standby;
    /// returns the active one's index.
    fn one_active(&self) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let roles: Vec<Option<String>> = self
                .members
                .iter()
                .map(|m| m.child.as_ref().and(m.role()))
                .collect();
            let active: Vec<usize> = (0..roles.len())
                .filter(|&i| roles[i].as_deref() == Some("active"))
                .collect();
            assert!(!active.contains(&FRONT), "the front node went active");
            let settled = roles.iter().enumerate().all(|(i, role)| {
                self.members[i].child.is_none()
                    || matches!(role.as_deref(), Some("active" | "standby"))
            });
            if active.len() == 1 && settled {
                return active[0];
            }
            assert!(
                Instant::now() < deadline,
                "no single active member: {roles:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a member other than `old` is active; how long after `since`.
    fn new_active_after(&self, old: usize, since: Instant) -> (usize, Duration) {
        self.active_after(&[old], since)
    }

    /// Waits until a member not in `except` is active; how long after `since`.
    fn active_after(&self, except: &[usize], since: Instant) -> (usize, Duration) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            for (i, member) in self.members.iter().enumerate() {
                if !except.contains(&i)
                    && member.child.is_some()
                    && member.role().as_deref() == Some("active")
                {
                    return (i, since.elapsed());
                }
            }
            assert!(
                Instant::now() < deadline,
                "nobody took over\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Cluster {
    /// Waits until `member` is the one active member (others may lead on the way).
    fn settles_on(&self, member: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.one_active() != member {
            assert!(
                Instant::now() < deadline,
                "n{member} never became the active member\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `member` no longer says it is active; how long after `since`.
    fn stops_acting(&self, member: usize, since: Instant) -> Duration {
        let deadline = Instant::now() + PATIENCE;
        while self.members[member].role().as_deref() == Some("active") {
            assert!(
                Instant::now() < deadline,
                "n{member} stays active\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        since.elapsed()
    }

    /// Waits until `active`'s member list shows `member` (as standby) or not.
    fn lists(&self, active: usize, member: usize, listed: bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let status = self.members[active].status().unwrap_or_default();
            let shown = status["cluster"]["members"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["node"] == format!("n{member}") && m["role"] == "standby");
            if shown == listed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "n{active} lists n{member}: {shown}, not {listed}: {status}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What the checker saw of one member in one poll: when the poll started and ended on the
/// test's monotonic clock, and whether the member served as active (its status said active,
/// or its front end sent a client to its own target).
#[derive(Debug, Clone, Copy)]
struct Seen {
    start: Instant,
    end: Instant,
    active: bool,
}

/// Polls every member all through a test and finds two members surely active at once.
struct Checker {
    started: Instant,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Vec<Seen>>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Checker {
    fn start(cluster: &Cluster) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(vec![Vec::new(); ADDRESSES.len()]));
        let probes: Vec<(String, String, String)> = cluster
            .members
            .iter()
            .map(|m| (m.admin(), m.sip(), m.target()))
            .collect();
        // One thread per member: a dead or frozen one (whose polls time out) must not
        // thin out the polls of the others.
        let threads = probes
            .into_iter()
            .enumerate()
            .map(|(index, (admin, sip, target))| {
                let (flag, record) = (stop.clone(), seen.clone());
                std::thread::spawn(move || {
                    let record = |seen: Seen| {
                        if let Ok(mut record) = record.lock() {
                            record[index].push(seen);
                        }
                    };
                    while !flag.load(Ordering::SeqCst) {
                        // Each probe is its own sample: the shorter, the tighter the span.
                        let start = Instant::now();
                        let active = http("GET", &admin, "/api/v1/status", None)
                            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                            .is_some_and(|s| {
                                s["role"] == "active" || s["accepting_writes"] == true
                            });
                        record(Seen {
                            start,
                            end: Instant::now(),
                            active,
                        });
                        let start = Instant::now();
                        let active =
                            sends_to(&sip).is_some_and(|contact| contact.contains(&target[4..]));
                        record(Seen {
                            start,
                            end: Instant::now(),
                            active,
                        });
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Checker {
            started: Instant::now(),
            stop,
            seen,
            threads,
        }
    }

    /// Stops polling; fails if two members may have been active at the same instant. A run
    /// of active answers from a member counts from the start of its first poll to the end of
    /// its last: the widest the truth can be, so even a one-poll overlap is caught.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        let mut spans: Vec<(usize, Instant, Instant)> = Vec::new();
        for (index, polls) in seen.iter().enumerate() {
            let mut run: Option<(Instant, Instant)> = None;
            for poll in polls {
                match (poll.active, run) {
                    (true, None) => run = Some((poll.start, poll.end)),
                    (true, Some((from, _))) => run = Some((from, poll.end)),
                    (false, Some(span)) => {
                        spans.push((index, span.0, span.1));
                        run = None;
                    }
                    (false, None) => {}
                }
            }
            if let Some((from, to)) = run {
                spans.push((index, from, to));
            }
        }
        for (i, a) in spans.iter().enumerate() {
            for b in &spans[i + 1..] {
                let overlap = a.0 != b.0 && a.1 < b.2 && b.1 < a.2;
                let at = |t: Instant| t.saturating_duration_since(self.started);
                assert!(
                    !overlap,
                    "two members active at once: n{} {:?}..{:?} and n{} {:?}..{:?}",
                    a.0,
                    at(a.1),
                    at(a.2),
                    b.0,
                    at(b.1),
                    at(b.2)
                );
            }
        }
        seen.iter().map(Vec::len).sum()
    }
}

/// A SIP OPTIONS sent to a front end, whose answer is read later.
struct Waiting {
    socket: std::net::UdpSocket,
}

impl Waiting {
    fn send(listener: &str) -> Waiting {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let from = socket.local_addr().expect("address");
        let request = format!(
            "OPTIONS sip:1234@{listener} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKc{port}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:t@{from}>;tag=1\r\nTo: <sip:1234@{listener}>\r\n\
             Call-ID: cluster-{port}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            port = from.port()
        );
        let _ = socket.send_to(request.as_bytes(), listener);
        Waiting { socket }
    }

    /// The answer's Contact line, if an answer came within 300 ms and has one.
    fn contact(&self) -> Option<String> {
        self.socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .ok()?;
        let mut buffer = [0u8; 2048];
        let n = self.socket.recv(&mut buffer).ok()?;
        let answer = String::from_utf8_lossy(&buffer[..n]).into_owned();
        answer
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("contact:"))
            .map(str::to_owned)
    }
}

/// Where the SIP front end at `listener` sends a client now (the 302's Contact line).
fn sends_to(listener: &str) -> Option<String> {
    Waiting::send(listener).contact()
}

/// Headless Chromium on `url` with `extra` flags; its standard output.
fn chromium(url: &str, profile: &std::path::Path, extra: &[&str]) -> String {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium (tests/run-all.sh installs it)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn write(member: &Member, key: &str, value: &str) -> Option<(u16, String)> {
    http(
        "PUT",
        &member.admin(),
        &format!("/api/v1/config/{key}"),
        Some(value),
    )
}

#[test]
fn three_members_on_etcd_fail_over_on_kill_term_and_freeze_never_two_active() {
    let _serial = one_at_a_time();
    let mut cluster = Cluster::start("failover", 23100, &|_| String::new());
    let checker = Checker::start(&cluster);

    // Start-up: one active; the others follow it and send clients there.
    let first = cluster.one_active();
    cluster.front_follows(first);
    // Polled: a call is counted once its answer is in, which may be just after the role
    // changed (CI's debug build once read the page in between).
    let counted = |metrics: &str| {
        metrics.contains("standby_etcd_requests_total{call=\"grant\",result=\"ok\"}")
            && metrics.contains("standby_etcd_request_seconds_count{call=\"campaign\"}")
    };
    let mut metrics = String::new();
    for _ in 0..20 {
        metrics = http("GET", &cluster.members[first].admin(), "/metrics", None)
            .map(|(_, body)| body)
            .unwrap_or_default();
        if counted(&metrics) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(counted(&metrics), "{metrics}");
    let left = metrics
        .lines()
        .find_map(|l| l.strip_prefix("standby_cluster_acting_left_seconds "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(left.is_some_and(|s| s > 0.0 && s <= 1.5), "{left:?}");
    let front = cluster.members[FRONT]
        .status()
        .expect("the front node's status");
    assert_eq!(front["cluster"]["member_role"], "front", "{front}");
    for member in &cluster.members {
        // A standby may have announced itself before its watch delivered the leader.
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            let status = member.status().expect("status");
            if status["active_node"] == format!("n{first}") || Instant::now() > deadline {
                break status;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status["active_node"], format!("n{first}"), "{status}");
        assert_eq!(status["cluster"]["leader"], format!("n{first}"), "{status}");
        cluster.follows(member.index, first);
    }
    // The CLI shows the cluster: every member (as published, within a second), the leader,
    // the lease.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = Command::new(BIN)
            .args(["status", "--admin"])
            .arg(format!("http://{}", cluster.members[first].admin()))
            .output()
            .expect("status");
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{table}");
        let shown = table.contains(&format!("cluster: failover    leader: n{first}"))
            && table.contains("may act")
            && table.lines().filter(|l| l.starts_with("member")).count() == 3;
        if shown {
            break;
        }
        assert!(Instant::now() < deadline, "{table}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The status page lists the members instead of a peer.
    let url = format!("http://{}/", cluster.members[first].admin());
    let profile = cluster.dir.join("chromium");
    let dom = chromium(&url, &profile, &["--dump-dom"]);
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("test-artifacts")
        .join("status-page-cluster.png");
    std::fs::create_dir_all(shot.parent().expect("folder")).expect("artifacts folder");
    chromium(
        &url,
        &profile,
        &[
            "--window-size=1400,1100",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    assert!(shot.exists(), "no screenshot");
    let members = &dom[dom.find("id=\"members\"").expect("the member table")..];
    assert!(
        members.contains("<td>front</td>") && members.matches("<tr").count() >= 4,
        "{members:.1500}"
    );
    assert!(
        dom.contains(&format!("class=\"leader\">n{first}<")),
        "{dom:.3000}"
    );
    // The store lives in etcd: writes on the active, refused with where to go elsewhere.
    let (code, body) = write(&cluster.members[first], "site/name", "\"berlin\"").expect("answer");
    assert_eq!(code, 200, "{body}");
    let standby = (first + 1) % 3;
    let (code, body) = write(&cluster.members[standby], "site/name", "\"paris\"").expect("answer");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains(&format!("n{first}")), "{body}");
    let (code, body) = http(
        "GET",
        &cluster.members[standby].admin(),
        "/api/v1/config/site/name",
        None,
    )
    .expect("answer");
    assert!(
        code == 200 && body.contains("berlin"),
        "every member reads etcd: {body}"
    );

    // A member's own key deleted by hand while its lease lives: it sees that in its next
    // read of the members and writes the key again, without waiting for its 30 s rewrite.
    let key = format!("/standby-proxy/failover/members/n{standby}");
    let deleted_at = Instant::now();
    let (code, body) = cluster.etcd.call("/v3/kv/deleterange", &key).expect("etcd");
    assert!(code == 200 && body.contains("\"deleted\":\"1\""), "{body}");
    loop {
        let (_, body) = cluster.etcd.call("/v3/kv/range", &key).expect("etcd");
        if body.contains("\"kvs\"") {
            break;
        }
        assert!(
            deleted_at.elapsed() < Duration::from_secs(5),
            "n{standby} did not write its key again: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // kill -9 of the active: another takes over once its lease ran out.
    let killed_at = cluster.members[first].kill();
    let (second, took) = cluster.new_active_after(first, killed_at);
    cluster.front_follows(second);
    println!("kill -9 -> new active n{second} after {took:?} (lease {LEASE_TTL:?})");
    assert!(
        took >= LEASE_TTL / 2,
        "taken over before the lease could expire: {took:?}"
    );
    cluster.members[first].start();
    cluster.one_active();

    // SIGTERM: the active resigns; another takes over at once.
    let termed_at = cluster.members[second].terminate();
    let (third, took) = cluster.new_active_after(second, termed_at);
    cluster.front_follows(third);
    println!("SIGTERM -> new active n{third} after {took:?}");
    assert!(took < LEASE_TTL, "the resignation was not used: {took:?}");
    cluster.members[second].start();
    assert_eq!(
        cluster.one_active(),
        third,
        "a returning member does not take over"
    );

    // SIGSTOP of the active until its lease expired, then SIGCONT: it comes back as a
    // standby and never serves as active meanwhile.
    let frozen_at = cluster.members[third].signal("STOP");
    let (fourth, took) = cluster.new_active_after(third, frozen_at);
    cluster.front_follows(fourth);
    println!("SIGSTOP -> new active n{fourth} after {took:?}");
    std::thread::sleep(Duration::from_millis(500));
    // A client's request waits in the frozen node's socket: it is the first thing the node
    // handles on resuming, before its control plane has looked at the clock.
    let waiting = Waiting::send(&cluster.members[third].sip());
    cluster.members[third].signal("CONT");
    let resumed = &cluster.members[third];
    let contact = waiting.contact();
    assert!(
        contact
            .as_deref()
            .is_none_or(|c| !c.contains(&resumed.target()[4..])),
        "the resumed node served a waiting client as active: {contact:?}"
    );
    let contact = resumed.sends_to();
    assert!(
        contact
            .as_deref()
            .is_none_or(|c| !c.contains(&resumed.target()[4..])),
        "the resumed node served a client as active: {contact:?}"
    );
    let (code, body) = write(resumed, "site/name", "\"stale\"").expect("answer");
    assert_eq!(code, 409, "a deposed node's write must fail: {body}");
    assert_eq!(cluster.one_active(), fourth);
    let (_, body) = http(
        "GET",
        &cluster.members[fourth].admin(),
        "/api/v1/config/site/name",
        None,
    )
    .expect("answer");
    assert!(body.contains("berlin"), "{body}");

    // The active node cut from etcd while the others still reach it: it stops acting within
    // 3/4 of the lease, before anyone else may start; another takes over once the lease is
    // gone; healed, it comes back as a standby with a new lease.
    let cut_at = Instant::now();
    cluster.cut_from_etcd[fourth].store(true, Ordering::SeqCst);
    let (fifth, took) = cluster.new_active_after(fourth, cut_at);
    println!("cut from etcd -> new active n{fifth} after {took:?}");
    assert!(
        took >= LEASE_TTL / 2,
        "taken over before the lease could expire: {took:?}"
    );
    let cut_off = &cluster.members[fourth];
    let contact = cut_off.sends_to();
    assert!(
        contact
            .as_deref()
            .is_none_or(|c| !c.contains(&cut_off.target()[4..])),
        "the node cut from etcd still serves as active: {contact:?}"
    );
    // Its member key went with its lease; healed, it publishes itself again on a new one.
    cluster.lists(fifth, fourth, false);
    cluster.cut_from_etcd[fourth].store(false, Ordering::SeqCst);
    assert_eq!(
        cluster.one_active(),
        fifth,
        "the healed node came back as a standby"
    );
    cluster.front_follows(fifth);
    cluster.lists(fifth, fourth, true);

    // An operator's switchover: the active node resigns and stands aside; another member
    // takes over at once. Asked of a standby, it is refused.
    let standby = (0..FRONT).find(|&i| i != fifth).expect("a standby");
    let (code, body) = http(
        "POST",
        &cluster.members[standby].admin(),
        "/api/v1/switchover",
        Some(""),
    )
    .expect("answer");
    assert_eq!(code, 409, "{body}");
    let switched_at = Instant::now();
    let (code, body) = http(
        "POST",
        &cluster.members[fifth].admin(),
        "/api/v1/switchover",
        Some(""),
    )
    .expect("answer");
    assert_eq!(code, 202, "{body}");
    let (sixth, took) = cluster.new_active_after(fifth, switched_at);
    println!("switchover -> new active n{sixth} after {took:?}");
    assert!(
        took < LEASE_TTL,
        "the switchover waited for the lease: {took:?}"
    );
    assert_eq!(cluster.one_active(), sixth);
    cluster.front_follows(sixth);
    let old = cluster.members[fifth].status().expect("status");
    assert_eq!(old["transitions"][0]["reason"], "switchover", "{old}");
    // To a named member, through the CLI as an operator types it.
    // Not the member that just stood aside (it may not lead for a lease time).
    let named = (0..FRONT)
        .find(|&i| i != sixth && i != fifth)
        .expect("another member");
    // The active node knows the others from what they publish every second: a member just
    // healed may need a moment before it counts as an eligible standby there.
    let deadline = Instant::now() + PATIENCE;
    let switched_at = loop {
        let asked_at = Instant::now();
        let out = Command::new(BIN)
            .args(["switchover", "--to", &format!("n{named}"), "--admin"])
            .arg(format!("http://{}", cluster.members[sixth].admin()))
            .env("STANDBY_TOKEN", TOKEN)
            .output()
            .expect("switchover");
        if out.status.success() {
            break asked_at;
        }
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            said.contains("not an eligible standby") && Instant::now() < deadline,
            "{said}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (seventh, took) = cluster.new_active_after(sixth, switched_at);
    println!("switchover --to n{named} -> new active n{seventh} after {took:?}");
    assert_eq!(
        seventh, named,
        "another member than the one named took over"
    );
    assert_eq!(cluster.one_active(), named);
    cluster.front_follows(named);

    let polls = checker.finish();
    assert!(polls > 100, "the checker polled {polls} times");
    println!("checker: {polls} polls, never two active");
    let _ = std::fs::remove_dir_all(&cluster.dir);
}

/// `prefer-primary` on n0 (n1 and n2 secondary), then etcd's own faults: its raft leader
/// frozen, its quorum lost under `on_store_loss = "demote"`, and a killed active restarted
/// within its lease time.
#[test]
fn prefer_primary_and_etcd_faults_never_two_active() {
    let _serial = one_at_a_time();
    let policy = |index: usize| {
        let priority = if index == 0 { "primary" } else { "secondary" };
        format!(
            "priority = \"{priority}\"\n\n\
             [election]\npolicy = \"prefer-primary\"\npreempt_delay = \"1s\"\n"
        )
    };
    let mut cluster = Cluster::start("etcd-faults", 23200, &policy);
    let checker = Checker::start(&cluster);

    // Start-up: the primary leads; the secondaries left the vacant key to it (a primary
    // starting alongside may publish itself after they first read the key).
    cluster.settles_on(0);
    cluster.front_follows(0);
    for secondary in [1, 2] {
        let status = cluster.members[secondary].status().expect("status");
        let led = status["transitions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["to"] == "active");
        assert!(!led, "n{secondary} took the key at start-up: {status}");
    }

    // kill -9 of the primary: a secondary takes over once the lease ran out, without waiting
    // a lease time more for a primary that is gone.
    let killed_at = cluster.members[0].kill();
    let (secondary, took) = cluster.new_active_after(0, killed_at);
    println!("prefer-primary: kill -9 of the primary -> n{secondary} after {took:?}");
    assert!(took >= LEASE_TTL / 2, "taken over too early: {took:?}");
    cluster.front_follows(secondary);

    // The primary returns: once ready for preempt_delay, the secondary hands back to it.
    let restarted_at = Instant::now();
    cluster.members[0].start();
    let (_, took) = cluster.active_after(&[secondary], restarted_at);
    println!("prefer-primary: primary restarted -> active again after {took:?} (preempt 1 s)");
    cluster.settles_on(0);
    cluster.front_follows(0);
    let old = cluster.members[secondary].status().expect("status");
    assert_eq!(old["transitions"][0]["reason"], "failback", "{old}");
    cluster.lists(0, secondary, true);

    // etcd's raft leader frozen beyond a lease time, then resumed: etcd elects another
    // leader; the cluster ends with one active member and never had two.
    let active = cluster.one_active();
    let etcd_leader = cluster.etcd.leader();
    let frozen_at = cluster.etcd.signal(etcd_leader, "STOP");
    std::thread::sleep(LEASE_TTL * 2);
    let during = cluster.one_active();
    println!(
        "etcd leader e{etcd_leader} frozen: n{active} active before, n{during} {:?} after",
        frozen_at.elapsed()
    );
    cluster.etcd.signal(etcd_leader, "CONT");
    let after = cluster.one_active();
    println!("etcd leader resumed: n{after} active");

    // etcd without quorum, on_store_loss = "demote": the active member stops acting before
    // its lease could expire, nobody else starts, no write is accepted; with quorum back,
    // one member leads again.
    let active = cluster.one_active();
    let lost = [(etcd_leader + 1) % 3, (etcd_leader + 2) % 3];
    let lost_at = Instant::now();
    for member in lost {
        cluster.etcd.signal(member, "STOP");
    }
    let demoted = cluster.stops_acting(active, lost_at);
    println!("etcd quorum lost: n{active} stopped acting after {demoted:?}");
    assert!(
        demoted < LEASE_TTL,
        "acted as active past the lease: {demoted:?}"
    );
    let (code, body) =
        write(&cluster.members[active], "site/name", "\"lost\"").unwrap_or((0, String::new()));
    assert_ne!(code, 200, "a write accepted without quorum: {body}");
    std::thread::sleep(LEASE_TTL);
    for member in &cluster.members {
        assert_ne!(
            member.role().as_deref(),
            Some("active"),
            "active without quorum"
        );
    }
    let back_at = Instant::now();
    for member in lost {
        cluster.etcd.signal(member, "CONT");
    }
    let (leader, took) = cluster.active_after(&[], back_at);
    println!("etcd quorum back: n{leader} active after {took:?}");
    cluster.settles_on(0);

    // The active member killed and restarted within its lease time: the restarted run finds
    // the key of its old lease and waits it out; nobody acts before that lease could end.
    let killed_at = cluster.members[0].kill();
    cluster.members[0].start();
    let (leader, took) = cluster.active_after(&[], killed_at);
    println!("kill -9 and restart within the lease -> n{leader} after {took:?}");
    assert!(took >= LEASE_TTL / 2, "acted on an old lease: {took:?}");
    cluster.settles_on(0);
    cluster.front_follows(0);

    let polls = checker.finish();
    assert!(polls > 100, "the checker polled {polls} times");
    println!("checker: {polls} polls, never two active");
    let _ = std::fs::remove_dir_all(&cluster.dir);
}

/// `on_store_loss = "keep-if-peers-confirm"` for the three members (the front keeps
/// `demote`): each lists all three, with a peer link of its own on `base + 70`, and
/// certificates made by `standby-proxy certs init` in `certs`.
fn keep_if_peers_confirm(base: u16, certs: &std::path::Path, index: usize) -> String {
    if index == FRONT {
        return String::new();
    }
    let members: String = (0..FRONT)
        .map(|i| {
            format!(
                "[[cluster.members]]\nid = \"n{i}\"\npeer_link = \"{}:{}\"\n",
                ADDRESSES[i],
                base + 70
            )
        })
        .collect();
    format!(
        "on_store_loss = \"keep-if-peers-confirm\"\n\n\
         [cluster.peer_link]\nca = \"{ca}\"\ncert = \"{dir}/n{index}.pem\"\nkey = \"{dir}/n{index}.key\"\n\n{members}",
        ca = certs.join("ca.pem").display(),
        dir = certs.display(),
    )
}

#[test]
fn keep_if_peers_confirm_rides_out_an_etcd_quorum_loss_only_while_every_member_answers() {
    let _serial = one_at_a_time();
    const BASE: u16 = 23300;
    let certs = std::env::temp_dir().join(format!("standby-cluster-certs-{}", std::process::id()));
    let made = Command::new(BIN)
        .args(["certs", "init", "--force", "--dir"])
        .arg(&certs)
        .args(["--node", "n0=127.0.0.1", "--node", "n1=127.0.0.2"])
        .args(["--node", "n2=127.0.0.3"])
        .output()
        .expect("certs init");
    assert!(made.status.success(), "{made:?}");
    let settings = |index: usize, _: &std::path::Path| keep_if_peers_confirm(BASE, &certs, index);
    let mut cluster = Cluster::start_with("keep-if-confirmed", BASE, &|_| String::new(), &settings);
    let checker = Checker::start(&cluster);
    let active = cluster.one_active();
    let standbys: Vec<usize> = (0..FRONT).filter(|&i| i != active).collect();
    for &member in &standbys {
        cluster.follows(member, active);
    }

    // etcd loses quorum: the active member keeps its role on the others' confirmations, and
    // their front ends still send clients to it (they vouch for it while they promised);
    // no store write lands without etcd.
    let etcd_leader = cluster.etcd.leader();
    let lost = [(etcd_leader + 1) % 3, (etcd_leader + 2) % 3];
    let lost_at = Instant::now();
    for member in lost {
        cluster.etcd.signal(member, "STOP");
    }
    std::thread::sleep(LEASE_TTL * 3);
    assert_eq!(
        cluster.members[active].role().as_deref(),
        Some("active"),
        "the active member gave up its role with every member confirming it\n{}",
        cluster.logs()
    );
    let status = cluster.members[active].status().expect("status");
    assert_eq!(status["cluster"]["on_confirmations"], true, "{status}");
    assert_eq!(
        status["cluster"]["on_store_loss"], "keep-if-peers-confirm",
        "{status}"
    );
    // Its own front end too, past its lease's own deadline.
    cluster.follows(active, active);
    for &member in &standbys {
        cluster.follows(member, active);
        assert_eq!(cluster.members[member].role().as_deref(), Some("standby"));
    }
    let (code, body) =
        write(&cluster.members[active], "site/name", "\"lost\"").unwrap_or((0, String::new()));
    assert_ne!(code, 200, "a write accepted without quorum: {body}");
    println!(
        "etcd quorum lost: n{active} still active {:?} later on its peers' confirmations",
        lost_at.elapsed()
    );

    // A member stops answering (frozen): the active member gives the role up, and nobody
    // takes it without quorum.
    let frozen = standbys[0];
    let frozen_at = cluster.members[frozen].signal("STOP");
    let demoted = cluster.stops_acting(active, frozen_at);
    println!("n{frozen} frozen: n{active} stopped acting after {demoted:?}");
    std::thread::sleep(LEASE_TTL);
    for (index, member) in cluster.members.iter().enumerate() {
        if index != frozen {
            assert_ne!(member.role().as_deref(), Some("active"), "n{index} active");
        }
    }
    cluster.members[frozen].signal("CONT");
    let back_at = Instant::now();
    for member in lost {
        cluster.etcd.signal(member, "CONT");
    }
    let (leader, took) = cluster.active_after(&[], back_at);
    println!("etcd quorum back: n{leader} active after {took:?}");

    // The active member cut from etcd alone: its peers still see its key, so they confirm it
    // until etcd expires its lease; then they refuse, it stops, and another member takes
    // over once its promise ran out.
    let active = cluster.one_active();
    let cut_at = Instant::now();
    cluster.cut_from_etcd[active].store(true, Ordering::SeqCst);
    let (successor, took) = cluster.new_active_after(active, cut_at);
    println!("n{active} cut from etcd: n{successor} active after {took:?}");
    cluster.cut_from_etcd[active].store(false, Ordering::SeqCst);
    assert_eq!(cluster.one_active(), successor);

    // SIGTERM: the active member resigns, which releases the others' promises: one takes
    // over at once, not a lease time later.
    let active = successor;
    let terminated_at = cluster.members[active].terminate();
    let (successor, took) = cluster.new_active_after(active, terminated_at);
    println!("SIGTERM of n{active}: n{successor} active after {took:?}");
    assert!(
        took < LEASE_TTL / 2,
        "the promise outlived the resignation: {took:?}"
    );
    cluster.members[active].start();
    assert_eq!(cluster.one_active(), successor);

    // kill -9: the others take over once its lease ran out.
    let active = successor;
    let killed_at = cluster.members[active].kill();
    let (successor, took) = cluster.new_active_after(active, killed_at);
    println!("kill -9 of n{active}: n{successor} active after {took:?}");
    assert!(took >= LEASE_TTL / 2, "taken over too early: {took:?}");

    let polls = checker.finish();
    assert!(polls > 100, "the checker polled {polls} times");
    println!("checker: {polls} polls, never two active");
    let _ = std::fs::remove_dir_all(&cluster.dir);
    let _ = std::fs::remove_dir_all(&certs);
}

/// An export's entries without the `_standby/` keys the node writes itself.
fn user_keys(export: &Value) -> Value {
    let mut entries = export["entries"].clone();
    if let Some(entries) = entries.as_object_mut() {
        entries.retain(|key, _| !key.starts_with("_standby/"));
    }
    entries
}

/// The CLI against a node's admin API with the test token; its standard output.
fn cli(member: &Member, args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(args)
        .env("STANDBY_ADMIN", format!("http://{}", member.admin()))
        .env("STANDBY_TOKEN", TOKEN)
        .output()
        .expect("standby-proxy");
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `member`'s term once it reports at least `floor` (a member reads a raised term floor
/// within a second).
fn term_at_least(member: &Member, floor: u64) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let term = member.status().and_then(|s| s["term"].as_u64());
        if let Some(term) = term.filter(|&t| t >= floor) {
            return term;
        }
        assert!(
            Instant::now() < deadline,
            "n{} reports term {term:?}, below {floor}",
            member.index
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs node 0 of `cluster`'s folder alone in pair mode (no `[peer]`, no `[cluster]`), on
/// its own database; until dropped.
fn alone_in_pair_mode(dir: &std::path::Path, base: u16) -> Member {
    let config = dir.join("n0-pair.toml");
    let me = ADDRESSES[0];
    let text = format!(
        "[node]\nid = \"n0\"\naddress = \"{me}\"\n\n\
         [admin]\nlisten = \"{me}:{}\"\ntoken_file = \"{}\"\n\n\
         [store]\npath = \"{}\"\n\n\
         [[frontend]]\nname = \"sip\"\nkind = \"sip\"\nlisten = \"{me}:{}\"\ntarget = \"sip:{me}:{}\"\n",
        base + 50,
        dir.join("token").display(),
        dir.join("n0.redb").display(),
        base + 60,
        base + 61,
    );
    std::fs::write(&config, text).expect("config");
    let mut member = Member {
        index: 0,
        base,
        config,
        log: dir.join("n0-pair.log"),
        child: None,
    };
    member.start();
    let deadline = Instant::now() + PATIENCE;
    while member.role().as_deref() != Some("active") {
        assert!(Instant::now() < deadline, "n0 alone never became active");
        std::thread::sleep(Duration::from_millis(50));
    }
    member
}

#[test]
fn a_node_moves_from_pair_mode_to_etcd_and_back_with_its_store_and_terms_never_going_back() {
    let _serial = one_at_a_time();
    const BASE: u16 = 23400;
    // Pair mode first: n0 alone, with a term far above anything etcd's revisions reach in
    // this test (as after years of failovers), and a store.
    let pair_dir =
        std::env::temp_dir().join(format!("standby-cluster-pair-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pair_dir);
    std::fs::create_dir_all(&pair_dir).expect("folder");
    std::fs::write(pair_dir.join("token"), TOKEN).expect("token");
    {
        use standby_proxy::store::storage::{NodeState, Storage};
        let storage = Storage::open(&pair_dir.join("n0.redb")).expect("database");
        let state = NodeState {
            cluster: false,
            term: 5000,
            maintenance: false,
        };
        storage.save_node_state(state).expect("saved");
    }
    let mut pair = alone_in_pair_mode(&pair_dir, BASE);
    let pair_term = term_at_least(&pair, 5000);
    cli(&pair, &["config", "set", "site/name", "\"Lab\""]);
    cli(&pair, &["config", "set", "users/1", "{\"ext\": 1001}"]);
    let exported = pair_dir.join("pair-export.json");
    cli(
        &pair,
        &[
            "config",
            "export",
            "--file",
            exported.to_str().expect("path"),
        ],
    );
    // In maintenance before the move (as the README's procedure has it): saved with the term.
    cli(&pair, &["maintenance", "on"]);
    pair.terminate();

    // The same node in cluster mode, on the same database (put in place before the members
    // start), with two new members: terms go on from above the pair's.
    let database = pair_dir.join("n0.redb");
    let settings = |index: usize, dir: &std::path::Path| {
        if index == 0 {
            std::fs::copy(&database, dir.join("n0.redb")).expect("the pair's database");
        }
        String::new()
    };
    let mut cluster = Cluster::start_with("moved", BASE, &|_| String::new(), &settings);
    let active = cluster.one_active();
    // n0 came back in maintenance: it never campaigned.
    assert_ne!(active, 0, "n0 took the key in maintenance");
    let status = cluster.members[0].status().expect("status");
    assert_eq!(status["eligible"], false, "{status}");
    cli(&cluster.members[0], &["maintenance", "off"]);
    for member in &cluster.members {
        term_at_least(member, pair_term + 1);
    }
    let read = |path: &std::path::Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(path).expect("export")).expect("JSON")
    };
    let imported = cli(
        &cluster.members[active],
        &["config", "import", exported.to_str().expect("path")],
    );
    let count = read(&exported)["entries"]
        .as_object()
        .map_or(0, serde_json::Map::len);
    assert!(
        imported.contains(&format!("imported {count} keys")),
        "{imported}"
    );
    let other = (active + 1) % FRONT;
    let name = cli(&cluster.members[other], &["config", "get", "site/name"]);
    assert_eq!(name.trim(), "\"Lab\"");
    let again = cluster.dir.join("cluster-export.json");
    cli(
        &cluster.members[other],
        &["config", "export", "--file", again.to_str().expect("path")],
    );
    // The operator's keys; `_standby/` ones (the SIP route key) each mode writes when it
    // needs them, so one export may hold one the other does not yet.
    assert_eq!(user_keys(&read(&again)), user_keys(&read(&exported)));
    // A member restarted in cluster mode does not move the terms (it settles the floor to
    // the term it saved, which the cluster's terms already reach).
    let before = term_at_least(&cluster.members[active], pair_term + 1);
    cluster.members[other].terminate();
    cluster.members[other].start();
    cluster.lists(active, other, true);
    std::thread::sleep(Duration::from_millis(1500));
    let after = term_at_least(&cluster.members[active], pair_term + 1);
    assert_eq!(after, before, "a restart moved the term");
    // Changes in cluster mode: one key more, one less.
    cli(
        &cluster.members[active],
        &["config", "set", "users/2", "{\"ext\": 1002}"],
    );
    cli(&cluster.members[active], &["config", "delete", "users/1"]);
    cli(
        &cluster.members[other],
        &["config", "export", "--file", again.to_str().expect("path")],
    );
    let entries = read(&again)["entries"].clone();
    assert_eq!(entries["users/2"]["ext"], 1002, "{entries}");
    assert!(entries.get("users/1").is_none(), "{entries}");
    // A switchover makes a new term; the one n0 last knew is what it saved.
    cli(&cluster.members[active], &["switchover"]);
    let (_, _) = cluster.new_active_after(active, Instant::now());
    std::thread::sleep(Duration::from_millis(300));
    let cluster_term = term_at_least(&cluster.members[0], pair_term + 1);
    for member in &mut cluster.members {
        if member.child.is_some() {
            member.terminate();
        }
    }

    // Back to pair mode on n0's database: its term does not go back, and the store comes
    // back through an import.
    std::fs::copy(cluster.dir.join("n0.redb"), pair_dir.join("n0.redb")).expect("database");
    let pair = alone_in_pair_mode(&pair_dir, BASE);
    let back = term_at_least(&pair, cluster_term);
    println!("terms: pair {pair_term}, cluster {cluster_term}, pair again {back}");
    // The pair's own copy of the store is the one from before the move: --replace also
    // drops what was deleted meanwhile.
    let path = again.to_str().expect("path");
    let imported = cli(&pair, &["config", "import", "--replace", path]);
    assert!(imported.contains("users/1: deleted"), "{imported}");
    let listed = cli(&pair, &["config", "list"]);
    assert!(
        listed.contains("users/2") && !listed.contains("users/1"),
        "{listed}"
    );
    drop(pair);
    let _ = std::fs::remove_dir_all(&cluster.dir);
    let _ = std::fs::remove_dir_all(&pair_dir);
}
