//! Real peers for the tests: Kamailio as the SIP registrar and dnsmasq as the DNS server,
//! each started by the test on loopback and stopped when dropped. The test command installs
//! them (`tests/run-all.sh`); a missing binary fails the test, it never skips it.
#![allow(dead_code)] // each test file uses part of this

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn signal_group(child: &Child, signal: &str) {
    // Negative pid: the whole process group (Kamailio forks its workers).
    let status = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{}", child.id())])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} failed");
}

fn start(program: &str, args: &[String], log: &PathBuf) -> Child {
    let log_file = std::fs::File::create(log).expect("log file");
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {program}: {e} (tests/run-all.sh installs it: apt-get install kamailio dnsmasq-base)")
        })
}

fn wait_for_tcp(port: u16, what: &str, log: &PathBuf) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "{what} did not come up on port {port}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A fresh folder for one Kamailio's config, log and pid file.
fn kamailio_dir(kind: &str, port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("standby-{kind}-{port}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Starts Kamailio on `config` in the foreground of its own process group, logging to `dir`,
/// and waits until it accepts TCP on `tcp_port`.
fn run_kamailio(dir: &std::path::Path, config: &std::path::Path, tcp_port: u16) -> Child {
    let log = dir.join("kamailio.log");
    let args = vec![
        "-f".to_owned(),
        config.display().to_string(),
        "-DD".to_owned(),
        "-E".to_owned(),
        "-w".to_owned(),
        dir.display().to_string(),
        "-P".to_owned(),
        dir.join("kamailio.pid").display().to_string(),
    ];
    let child = start("kamailio", &args, &log);
    wait_for_tcp(tcp_port, "kamailio", &log);
    child
}

/// A Kamailio answering OPTIONS with 200 (anything else with 404), on UDP and TCP.
pub struct Kamailio {
    child: Child,
    dir: PathBuf,
    /// Its port on 127.0.0.1, UDP and TCP.
    pub port: u16,
}

impl Kamailio {
    pub fn start(port: u16) -> Kamailio {
        let dir = kamailio_dir("kamailio", port);
        let config = dir.join("kamailio.cfg");
        std::fs::write(
            &config,
            format!(
                r#"#!KAMAILIO
debug=-1
log_stderror=yes
children=1
tcp_children=1
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "sl.so"
request_route {{
    if (method=="OPTIONS") {{
        sl_send_reply("200", "OK");
        exit;
    }}
    sl_send_reply("404", "Not Here");
}}
"#
            ),
        )
        .expect("config");
        let child = run_kamailio(&dir, &config, port);
        Kamailio { child, dir, port }
    }

    /// A stateless SIP proxy, built on OpenSSL as many phones' stacks are, that takes SIP
    /// over UDP on 127.0.0.1:`port` and forwards every request over TLS 1.2 (and only 1.2)
    /// to `next_hop` (host, port), verifying its certificate against `ca`. Its own TLS
    /// listener (needed to send TLS) is on `port` + 1.
    pub fn tls_relay(
        port: u16,
        next_hop: (&str, u16),
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Kamailio {
        let dir = kamailio_dir("kamailio-tls", port);
        let tls_config = dir.join("tls.cfg");
        std::fs::write(
            &tls_config,
            format!(
                "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\ncertificate = {cert}\nprivate_key = {key}\n\n\
                 [client:default]\nmethod = TLSv1.2\nverify_certificate = yes\nrequire_certificate = yes\nca_list = {ca}\n",
                cert = cert.display(),
                key = key.display(),
                ca = ca.display(),
            ),
        )
        .expect("tls.cfg");
        let config = dir.join("kamailio.cfg");
        std::fs::write(
            &config,
            format!(
                r#"#!KAMAILIO
debug=-1
log_stderror=yes
children=1
tcp_children=1
enable_tls=yes
listen=udp:127.0.0.1:{port}
listen=tls:127.0.0.1:{tls_port}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tls.so"
modparam("tls", "config", "{tls_config}")
request_route {{
    forward_tls("{host}", {hop_port});
    exit;
}}
"#,
                tls_port = port + 1,
                tls_config = tls_config.display(),
                host = next_hop.0,
                hop_port = next_hop.1,
            ),
        )
        .expect("config");
        let child = run_kamailio(&dir, &config, port + 1);
        Kamailio { child, dir, port }
    }

    /// Stops answering without closing anything: a hung registrar.
    pub fn freeze(&self) {
        signal_group(&self.child, "STOP");
    }

    /// Answers again.
    pub fn thaw(&self) {
        signal_group(&self.child, "CONT");
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        signal_group(&self.child, "CONT");
        signal_group(&self.child, "KILL");
        self.child.wait().ok();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// A dnsmasq serving only the records given, on 127.0.0.1:`port` (UDP and TCP).
pub struct Dnsmasq {
    child: Child,
    log: PathBuf,
    pub port: u16,
}

impl Dnsmasq {
    /// `records` are dnsmasq options such as `--srv-host=...`, `--naptr-record=...`,
    /// `--host-record=...`.
    pub fn start(port: u16, records: &[String]) -> Dnsmasq {
        let log =
            std::env::temp_dir().join(format!("standby-dnsmasq-{port}-{}.log", std::process::id()));
        let mut args = vec![
            "-k".to_owned(),
            format!("--port={port}"),
            "--listen-address=127.0.0.1".to_owned(),
            "--bind-interfaces".to_owned(),
            "--no-resolv".to_owned(),
            "--no-hosts".to_owned(),
            "--conf-file=/dev/null".to_owned(),
            "--pid-file=".to_owned(),
            "--user=root".to_owned(),
            "--log-queries".to_owned(),
            "--log-facility=-".to_owned(),
            "--local-ttl=1".to_owned(),
        ];
        args.extend(records.iter().cloned());
        let child = start("dnsmasq", &args, &log);
        wait_for_tcp(port, "dnsmasq", &log);
        Dnsmasq { child, log, port }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The queries it answered, for tests that check which records were asked for.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        signal_group(&self.child, "KILL");
        self.child.wait().ok();
        std::fs::remove_file(&self.log).ok();
    }
}
