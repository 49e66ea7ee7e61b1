// The two-process harness shared by tests/pair.rs and tests/front.rs, included as text
// (`include!`) so each test file keeps its items private and uses only what it needs.

use standby_proxy::admin::client;
use standby_proxy::admin::StatusReport;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_standby-proxy");
const PATIENCE: Duration = Duration::from_secs(15);
const TOKEN: &str = "pair-test-token";

include!("signal.rs");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A relay for one direction of the peer link, which a test can cut and heal.
struct Relay {
    up: Arc<AtomicBool>,
}

/// A TCP connection to `target` from the address `source` (any port).
async fn connect_from(source: &str, target: &str) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    let source: std::net::IpAddr = source.parse().map_err(std::io::Error::other)?;
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    let target: std::net::SocketAddr = target.parse().map_err(std::io::Error::other)?;
    socket.connect(target).await
}

impl Relay {
    /// Relays what reaches `listen` to `target`, connecting from `source` (the sending
    /// node's address: the peer link admits only its peer's address).
    fn start(
        runtime: &tokio::runtime::Runtime,
        listen: &str,
        target: String,
        source: &'static str,
    ) -> Relay {
        let up = Arc::new(AtomicBool::new(true));
        let listener = runtime
            .block_on(TcpListener::bind(listen))
            .unwrap_or_else(|e| panic!("relay bind {listen}: {e}"));
        let flag = up.clone();
        runtime.spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !flag.load(Ordering::SeqCst) {
                    continue; // cut: drop the connection at once
                }
                let target = target.clone();
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = connect_from(source, &target).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let copy = async {
                        tokio::select! {
                            _ = tokio::io::copy(&mut ri, &mut wo) => {}
                            _ = tokio::io::copy(&mut ro, &mut wi) => {}
                        }
                    };
                    let watch = async {
                        while flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    // A cut ends established connections too.
                    tokio::select! {
                        () = copy => {}
                        () = watch => {}
                    }
                });
            }
        });
        Relay { up }
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

/// One node process and where to reach it.
struct Node {
    name: &'static str,
    config: PathBuf,
    admin: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts the node with these variables added to its environment.
    fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&self.config)
            .current_dir(repo())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("node starts");
        self.child = Some(child);
    }

    fn signal(&mut self, signal: &str) -> Instant {
        send_signal(self.child.as_ref().expect("running"), signal)
    }

    /// kill -9 and reap.
    fn kill(&mut self) -> Instant {
        let at = self.signal("KILL");
        if let Some(mut child) = self.child.take() {
            child.wait().ok();
        }
        at
    }

    /// SIGTERM and wait for a clean exit.
    fn terminate(&mut self) -> (Instant, i32) {
        let at = self.signal("TERM");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (at, status.code().unwrap_or(-1));
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// A pair of nodes with relays, on ports from `base`.
struct Pair {
    runtime: tokio::runtime::Runtime,
    a: Node,
    b: Node,
    relays: Vec<Relay>,
    dir: PathBuf,
}

struct Options {
    policy: &'static str,
    /// Each node connects straight to the other's peer-link port instead of through this
    /// process's relays (which accept first and so hide a refused connect).
    direct_link: bool,
    /// Certificates for node b (another CA, for the refusal test).
    b_certs: Option<PathBuf>,
    /// A `[health]` check for node a.
    a_health: Option<String>,
    /// A registrar (Kamailio's port on 127.0.0.1) for both nodes.
    registrar_port: Option<u16>,
    /// Another registrar for node b alone (instead of `registrar_port`).
    registrar_port_b: Option<u16>,
    /// Hooks on both nodes that append to `hooks.log` in the test's directory.
    hooks: bool,
    /// Extra lines for both nodes' `[admin]` section.
    admin_extra: &'static str,
    /// A SIP redirect front end on both nodes: listening on port base+4, each advertising
    /// its own `sip:<address>:<base+5>`.
    sip_frontend: bool,
    /// More config for both nodes (front ends, say); `{me}` becomes the node's address and
    /// `{id}` its id.
    extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            policy: "sticky",
            direct_link: false,
            b_certs: None,
            a_health: None,
            registrar_port: None,
            registrar_port_b: None,
            hooks: false,
            admin_extra: "",
            sip_frontend: false,
            extra: String::new(),
        }
    }
}

impl Pair {
    fn new(test: &str, base: u16, options: Options) -> Pair {
        let dir = std::env::temp_dir().join(format!("standby-pair-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("token"), TOKEN).expect("token");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (peer_a, admin_a) = (
            format!("127.0.0.1:{}", base),
            format!("127.0.0.1:{}", base + 1),
        );
        let (peer_b, admin_b) = (
            format!("127.0.0.2:{}", base),
            format!("127.0.0.2:{}", base + 1),
        );
        let (relay_to_b, relay_to_a) = (
            format!("127.0.0.1:{}", base + 2),
            format!("127.0.0.1:{}", base + 3),
        );
        let relays = vec![
            Relay::start(&runtime, &relay_to_b, peer_b.clone(), "127.0.0.1"),
            Relay::start(&runtime, &relay_to_a, peer_a.clone(), "127.0.0.2"),
        ];
        let certs = repo().join("certs");
        let write = |name: &str,
                     me: &str,
                     other: &str,
                     id: &str,
                     peer_id: &str,
                     priority: &str,
                     listen: &str,
                     connect: &str,
                     admin: &str,
                     cert_dir: &Path| {
            let path = dir.join(format!("{name}.toml"));
            let mut file = std::fs::File::create(&path).expect("config");
            write!(
                file,
                r#"
[node]
id = "{id}"
address = "{me}"
priority = "{priority}"

[peer]
id = "{peer_id}"
address = "{other}"
connect = "{connect}"

[peer_link]
listen = "{listen}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[election]
policy = "{policy}"
heartbeat_interval = "100ms"
peer_dead_after = "300ms"
startup_wait = "1s"
preempt_delay = "1s"
switchover_timeout = "2s"

[admin]
listen = "{admin}"
token_file = "{token}"
{admin_extra}
"#,
                admin_extra = options.admin_extra,
                ca = cert_dir.join("ca.pem").display(),
                cert = cert_dir.join(format!("{id}.pem")).display(),
                key = cert_dir.join(format!("{id}.key")).display(),
                policy = options.policy,
                token = dir.join("token").display(),
            )
            .expect("write config");
            if options.sip_frontend {
                write!(
                    file,
                    "\n[[frontend]]\nname = \"sip\"\nkind = \"sip\"\nlisten = \"{me}:{}\"\ntarget = \"sip:{me}:{}\"\nudp_sockets = 2\n",
                    base + 4,
                    base + 5,
                )
                .expect("write frontend");
            }
            if !options.extra.is_empty() {
                let extra = options.extra.replace("{me}", me).replace("{id}", id);
                writeln!(file, "\n{extra}").expect("write extra");
            }
            if options.hooks {
                let log = dir.join("hooks.log");
                let line = |event: &str| {
                    format!("echo \\\"{event} $STANDBY_NODE $STANDBY_FROM $STANDBY_TO $STANDBY_REASON\\\" >> {}", log.display())
                };
                write!(
                    file,
                    "\n[hooks]\nbecome_active = [\"{}\"]\nbecome_standby = [\"sleep 0.2; {}\"]\ntimeout = \"5s\"\n",
                    line("active"),
                    line("standby"),
                )
                .expect("write hooks");
            }
            let registrar_port = match id {
                "b" => options.registrar_port_b.or(options.registrar_port),
                _ => options.registrar_port,
            };
            if let Some(port) = registrar_port {
                write!(
                    file,
                    "\n[registrar]\ntargets = [\"sip:127.0.0.1:{port}\"]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nt1 = \"50ms\"\nrise = 1\nfall = 2\n"
                )
                .expect("write registrar");
            }
            if let (Some(check), "a") = (&options.a_health, id) {
                write!(
                    file,
                    "\n[health]\ncheck = \"{check}\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 2\n"
                )
                .expect("write health");
            }
            path
        };
        let (connect_b, connect_a) = if options.direct_link {
            (&peer_b, &peer_a)
        } else {
            (&relay_to_b, &relay_to_a)
        };
        let config_a = write(
            "a",
            "127.0.0.1",
            "127.0.0.2",
            "a",
            "b",
            "primary",
            &peer_a,
            connect_b,
            &admin_a,
            &certs,
        );
        let b_certs = options.b_certs.clone().unwrap_or_else(|| certs.clone());
        let config_b = write(
            "b",
            "127.0.0.2",
            "127.0.0.1",
            "b",
            "a",
            "secondary",
            &peer_b,
            connect_a,
            &admin_b,
            &b_certs,
        );
        let node = |name, config, admin: &str| Node {
            name,
            config,
            admin: format!("http://{admin}"),
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        Pair {
            a: node("a", config_a, &admin_a),
            b: node("b", config_b, &admin_b),
            runtime,
            relays,
            dir,
        }
    }

    fn node(&self, name: &str) -> &Node {
        if name == "a" {
            &self.a
        } else {
            &self.b
        }
    }

    fn status(&self, name: &str) -> Option<StatusReport> {
        let node = self.node(name);
        let value = self
            .runtime
            .block_on(client::call(
                &node.admin,
                hyper::Method::GET,
                "/api/v1/status",
                None,
                None,
                // Used only when a test serves the admin API over TLS.
                Some(&repo().join("certs/ca.pem")),
            ))
            .ok()?;
        serde_json::from_value(value).ok()
    }

    fn role(&self, name: &str) -> Option<String> {
        self.status(name).map(|s| s.role)
    }

    /// Polls until `done` holds; returns how long it took.
    fn wait(&self, what: &str, done: impl Fn(&Pair) -> bool) -> Duration {
        let start = Instant::now();
        while start.elapsed() < PATIENCE {
            if done(self) {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "timed out waiting for: {what}\n--- a ---\n{}\n--- b ---\n{}",
            self.a.log(),
            self.b.log()
        );
    }

    fn started(mut self) -> Pair {
        self.a.start();
        self.b.start();
        self.wait("a active, b standby following a", |p| {
            p.role("a").as_deref() == Some("active")
                && p.status("b")
                    .is_some_and(|b| b.role == "standby" && b.active_node.as_deref() == Some("a"))
        });
        self
    }

    fn cut(&self) {
        self.relays.iter().for_each(|r| r.set(false));
    }

    fn heal(&self) {
        self.relays.iter().for_each(|r| r.set(true));
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn is(pair: &Pair, name: &str, role: &str) -> bool {
    pair.role(name).as_deref() == Some(role)
}

fn http_get(admin: &str, path: &str) -> String {
    use std::io::Read;
    let authority = admin.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(authority).expect("admin reachable");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}


/// Runs sipp as a client: `xml` is the scenario, 20 calls at 50/s from 127.0.0.1:`local_port`
/// over `transport` (u1, t1) to `target`, service (user part) 1234. Ok when every call passed.
fn sipp_client(
    dir: &Path,
    xml: &str,
    transport: &str,
    local_port: u16,
    target: &str,
) -> Result<(), String> {
    let scenario = dir.join(format!("sipp-{local_port}.xml"));
    std::fs::write(&scenario, xml).expect("scenario");
    let errors = dir.join(format!("sipp-{local_port}.err"));
    let output = Command::new("sipp")
        .arg("-sf")
        .arg(&scenario)
        .args(["-s", "1234", "-m", "20", "-r", "50", "-t", transport])
        .args(["-i", "127.0.0.1", "-p", &local_port.to_string()])
        .args(["-timeout", "20s", "-nostdin", "-trace_err"])
        .arg("-error_file")
        .arg(&errors)
        .arg(target)
        .output()
        .map_err(|e| format!("sipp (tests/run-all.sh installs sip-tester): {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "sipp {target} over {transport} exited {:?}: {}\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&errors).unwrap_or_default()
        ))
    }
}

/// Runs sipp with an INVITE → 302 → ACK scenario against `target` and checks that every
/// 302's Contact points at `expected` (host:port). Returns sipp's output on failure.
fn sipp_redirect(
    dir: &Path,
    target: &str,
    transport: &str,
    local_port: u16,
    expected: &str,
) -> Result<(), String> {
    let expected = expected.replace('.', "\\.");
    let xml = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="INVITE expecting 302">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="302">
    <action>
      <ereg regexp="&lt;sip:1234@{expected}" search_in="hdr" header="Contact:" check_it="true" assign_to="1"/>
    </action>
  </recv>
  <Reference variables="1"/>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
</scenario>
"#
    );
    sipp_client(dir, &xml, transport, local_port, target)
}
