//! `standby-proxy dev`, driven the way the README tells a newcomer to: start it, follow
//! the printed lines through the standby (curl -L, the TCP echo, a SIP call with sipp and
//! the 302), a switchover, a kill -9 of the active node, then Ctrl-C.
//!
//! Ports: dev's defaults moved by 15000 (peer 22701, admin 22780, SIP 20060/20062, HTTP
//! 23080, TCP 24000; services 20070, 23081, 24001).

// Real processes on the wall clock: there is no driver to take time from.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_standby-proxy");
const OFFSET: &str = "15000";

/// Kills dev (and so its nodes) if the test fails half-way.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One node's line of the guide: (id, pid, active).
fn node_lines(guide: &[String]) -> Vec<(String, u32, bool)> {
    guide
        .iter()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["node", id, _, "pid", pid, role, ..] => {
                    Some((id.to_string(), pid.parse().ok()?, *role == "ACTIVE"))
                }
                _ => None,
            }
        })
        .collect()
}

fn curl_follow(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-L", "--max-time", "5", url])
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {url}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tcp_echo(address: &str) -> String {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(b"ping\n").expect("send");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("ping") {
        let read = stream.read(&mut buffer).expect("echo");
        assert!(read > 0, "closed: {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// An OPTIONS to a user through the redirect front end: the 302's Contact.
fn sip_contact(front: &str) -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let local = socket.local_addr().expect("local");
    let request = format!(
        "OPTIONS sip:alice@{front} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKdev1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:test@{local}>;tag=1\r\nTo: <sip:alice@{front}>\r\n\
         Call-ID: dev-test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    socket.send_to(request.as_bytes(), front).expect("send");
    let mut buffer = [0u8; 2048];
    let (read, _) = socket.recv_from(&mut buffer).expect("an answer");
    let answer = String::from_utf8_lossy(&buffer[..read]).into_owned();
    assert!(answer.starts_with("SIP/2.0 302"), "{answer}");
    answer
        .lines()
        .find(|line| line.to_ascii_lowercase().starts_with("contact:"))
        .unwrap_or_else(|| panic!("no Contact: {answer}"))
        .to_owned()
}

fn sipp_call_through(front: &str) {
    let out = Command::new("timeout")
        .args(["20", "sipp", "-sn", "uac", "-m", "1", "-s", "alice", front])
        .args(["-timeout", "10", "-nostdin", "-trace_err"])
        .current_dir(std::env::temp_dir())
        .output()
        .expect("sipp runs (tests/run-all.sh installs sip-tester)");
    assert!(out.status.success(), "sipp through {front}: {out:?}");
}

fn cli(args: &[&str], token_file: &str) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("STANDBY_TOKEN_FILE", token_file)
        .output()
        .expect("cli runs");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn role_of(admin: &str, token_file: &str) -> Option<String> {
    let out = Command::new(BIN)
        .args(["status", "--json", "--admin", admin])
        .env("STANDBY_TOKEN_FILE", token_file)
        .output()
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    value["role"].as_str().map(str::to_owned)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_newcomer_follows_the_guide_through_the_standby_a_switchover_and_a_kill() {
    let child = Command::new(BIN)
        .args(["dev", "--port-offset", OFFSET])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dev starts");
    let mut dev = Dev(child);
    // The guide on stdout, the nodes' logs on stderr (kept for a failure message).
    let (lines_tx, lines) = mpsc::channel();
    let stdout = dev.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let stderr = dev.0.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let mut guide = Vec::new();
    while !guide.iter().any(|l: &String| l.starts_with("Ctrl-C stops")) {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => guide.push(line),
            Err(error) => panic!("no guide ({error}); so far: {guide:#?}"),
        }
    }
    let text = guide.join("\n");
    let nodes = node_lines(&guide);
    assert_eq!(nodes.len(), 2, "{text}");
    assert!(nodes[0].2 && !nodes[1].2, "a wins the start-up tie: {text}");
    let (pid_b, dir) = (nodes[1].1, text.rsplit("removes ").next().expect("dir"));
    let token_file = format!("{dir}/admin-token");
    for printed in [
        "curl -L http://127.0.0.2:23080/hello",
        "status --admin http://127.0.0.2:22780",
        "switchover --admin http://127.0.0.1:22780",
        "export STANDBY_TOKEN_FILE=",
    ] {
        assert!(
            text.contains(printed),
            "the guide lacks {printed:?}:\n{text}"
        );
    }

    // Through the standby, every kind of client reaches node a's service.
    assert!(curl_follow("http://127.0.0.2:23080/hello").starts_with("hello from node a"));
    assert!(tcp_echo("127.0.0.2:24000").starts_with("node a echo\nping"));
    assert!(sip_contact("127.0.0.2:20060").contains("@127.0.0.1:20070"));
    sipp_call_through("127.0.0.2:20062");

    // The switchover as printed: b takes over, clients follow.
    cli(
        &["switchover", "--admin", "http://127.0.0.1:22780"],
        &token_file,
    );
    wait_for("b active after the switchover", || {
        role_of("http://127.0.0.2:22780", &token_file).as_deref() == Some("active")
    });
    wait_for("the HTTP front end to follow", || {
        curl_follow("http://127.0.0.1:23080/hello").starts_with("hello from node b")
    });
    assert!(tcp_echo("127.0.0.1:24000").starts_with("node b echo"));
    assert!(sip_contact("127.0.0.1:20060").contains("@127.0.0.2:20070"));

    // kill -9 the active node (b): a takes over, and dev brings b back as standby.
    Command::new("kill")
        .args(["-9", &pid_b.to_string()])
        .status()
        .expect("kill");
    wait_for("a active after the kill", || {
        role_of("http://127.0.0.1:22780", &token_file).as_deref() == Some("active")
    });
    assert!(curl_follow("http://127.0.0.1:23080/hello").starts_with("hello from node a"));
    wait_for("b restarted as standby", || {
        role_of("http://127.0.0.2:22780", &token_file).as_deref() == Some("standby")
    });

    // Ctrl-C: both nodes stop, the folder goes, dev exits 0.
    Command::new("kill")
        .args(["-INT", &dev.0.id().to_string()])
        .status()
        .expect("kill -INT");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = dev.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "dev did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = log.join().unwrap_or_default();
    assert!(status.success(), "dev exited {status}:\n{log}");
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
    assert!(
        log.contains("node exited; dev starts it again in 2 s") && log.contains("node=b"),
        "{log}"
    );
    assert!(
        TcpStream::connect("127.0.0.1:22780").is_err(),
        "a node still listens after Ctrl-C"
    );
}
