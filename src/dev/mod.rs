//! `standby-proxy dev`: a whole working pair on this machine with nothing to configure, for a
//! first look (in the spirit of `consul agent -dev`).
//!
//! Two real node processes of this binary (a on 127.0.0.1, b on 127.0.0.2: separate
//! processes, because metrics and the runtime are per process), certificates and an admin
//! token made now in a temporary folder, SIP (redirect over UDP and TCP, stateless proxy over
//! UDP), HTTP and TCP front ends on both nodes, and a tiny service per node that answers with
//! its node's name, so a client sent through either node shows which one is active.
//!
//! - this module: the ports, the files (certificates, token, one configuration per node);
//! - [`service`]: the node services (SIP over UDP and TCP, HTTP, a TCP echo);
//! - [`supervisor`]: starts the nodes, restarts one that dies (as systemd would), stops both.

pub mod service;
pub mod supervisor;

use crate::certs::{self, NodeSpec, Plan};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Why the dev pair could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A port moved by the offset does not exist.
    #[error("--port-offset {offset} moves port {port} beyond 65535")]
    PortOutOfRange {
        /// The offset asked for.
        offset: u16,
        /// The default port it moved.
        port: u16,
    },
    /// Certificates could not be made.
    #[error("certificates: {0}")]
    Certs(#[from] certs::CertsError),
    /// A file or folder could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The system's random source failed (for the admin token).
    #[error("the system's random source failed")]
    Random,
    /// A node service could not listen (another program holds the port?).
    #[error("node {node}'s service cannot listen on {address}: {source} (another program on that port? try --port-offset)")]
    Listen {
        /// The node.
        node: String,
        /// Where.
        address: std::net::SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A node process could not be started.
    #[error("starting node {node}: {source}")]
    Spawn {
        /// The node.
        node: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The pair did not come up in time.
    #[error("the pair did not elect an active node within {seconds} s: {last}")]
    NotReady {
        /// How long it waited.
        seconds: u64,
        /// The last answer or error of the admin API.
        last: String,
    },
}

/// The ports every node uses on its own address (a on 127.0.0.1, b on 127.0.0.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// The peer link.
    pub peer: u16,
    /// The admin API and status page.
    pub admin: u16,
    /// SIP front end, redirect mode, UDP and TCP.
    pub sip: u16,
    /// SIP front end, stateless proxy mode, UDP.
    pub sip_proxy: u16,
    /// HTTP front end, 307 redirect mode.
    pub http: u16,
    /// TCP front end.
    pub tcp: u16,
    /// The node service: SIP over UDP and TCP.
    pub service_sip: u16,
    /// The node service: HTTP.
    pub service_http: u16,
    /// The node service: TCP echo.
    pub service_tcp: u16,
}

impl Ports {
    /// The usual ports (SIP 5060, HTTP 8080, admin 7780 as in production), each moved by
    /// `offset` when another program holds one of them.
    pub fn shifted(offset: u16) -> Result<Ports, DevError> {
        let at = |port: u16| {
            port.checked_add(offset)
                .ok_or(DevError::PortOutOfRange { offset, port })
        };
        Ok(Ports {
            peer: at(7701)?,
            admin: at(7780)?,
            sip: at(5060)?,
            sip_proxy: at(5062)?,
            http: at(8080)?,
            tcp: at(9000)?,
            service_sip: at(5070)?,
            service_http: at(8081)?,
            service_tcp: at(9001)?,
        })
    }
}

/// One node of the dev pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevNode {
    /// Its id.
    pub id: String,
    /// Its loopback address.
    pub address: IpAddr,
}

/// The two nodes: a on 127.0.0.1 (wins the start-up tie), b on 127.0.0.2.
pub fn nodes() -> [DevNode; 2] {
    let node = |id: &str, address: [u8; 4]| DevNode {
        id: id.to_owned(),
        address: IpAddr::from(address),
    };
    [node("a", [127, 0, 0, 1]), node("b", [127, 0, 0, 2])]
}

/// What [`prepare`] wrote.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The folder holding everything (removed when dev stops).
    pub dir: PathBuf,
    /// The nodes.
    pub nodes: [DevNode; 2],
    /// Each node's configuration file, in the order of `nodes`.
    pub configs: [PathBuf; 2],
    /// The admin token both nodes accept.
    pub token_file: PathBuf,
    /// The ports.
    pub ports: Ports,
}

/// Makes a fresh folder under the system's temporary folder.
pub fn temp_dir() -> Result<PathBuf, DevError> {
    let base = std::env::temp_dir();
    let mut attempt = 0u32;
    loop {
        let dir = base.join(format!(
            "standby-proxy-dev-{}-{attempt}",
            std::process::id()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1;
            }
            Err(source) => return Err(DevError::Write { path: dir, source }),
        }
    }
}

/// Writes the certificates (`certs/`), the admin token and one configuration per node into
/// `dir`.
pub fn prepare(dir: &Path, ports: Ports) -> Result<Prepared, DevError> {
    let nodes = nodes();
    let certs_dir = dir.join("certs");
    let plan = Plan {
        nodes: nodes
            .iter()
            .map(|node| NodeSpec {
                id: node.id.clone(),
                address: node.address,
            })
            .collect(),
        front_names: vec!["localhost".to_owned()],
        force: false,
    };
    certs::init(&certs_dir, &plan)?;
    let token_file = dir.join("admin-token");
    write_secret(&token_file, &random_token()?)?;
    let configs = [dir.join("a.toml"), dir.join("b.toml")];
    for (index, path) in configs.iter().enumerate() {
        let text = config_text(&nodes[index], &nodes[1 - index], ports, dir, &token_file);
        std::fs::write(path, text).map_err(|source| DevError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(Prepared {
        dir: dir.to_owned(),
        nodes,
        configs,
        token_file,
        ports,
    })
}

/// 128 random bits, hex.
fn random_token() -> Result<String, DevError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| DevError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_secret(path: &Path, contents: &str) -> Result<(), DevError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let error = |source| DevError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)
}

/// One node's configuration: every front end kind, each pointing at the node's own service.
pub fn config_text(
    node: &DevNode,
    peer: &DevNode,
    ports: Ports,
    dir: &Path,
    token_file: &Path,
) -> String {
    let (id, address) = (&node.id, node.address);
    let certs = dir.join("certs");
    let certs = certs.display();
    format!(
        r#"# Node {id} of the pair `standby-proxy dev` made; removed when it stops.
[node]
id = "{id}"
address = "{address}"

[peer]
id = "{peer_id}"
address = "{peer_address}"
connect = "{peer_address}:{peer_port}"

[peer_link]
listen = "{address}:{peer_port}"
ca = "{certs}/ca.pem"
cert = "{certs}/{id}.pem"
key = "{certs}/{id}.key"

[election]
heartbeat_interval = "100ms"
peer_dead_after = "300ms"
startup_wait = "1s"

[admin]
listen = "{address}:{admin}"
token_file = "{token}"

[[frontend]]
name = "sip"
kind = "sip"
listen = "{address}:{sip}"
mode = "redirect"
transports = ["udp", "tcp"]
target = "sip:{address}:{service_sip}"

[[frontend]]
name = "sip-proxy"
kind = "sip"
listen = "{address}:{sip_proxy}"
mode = "proxy"
transports = ["udp"]
target = "sip:{address}:{service_sip}"

[[frontend]]
name = "portal"
kind = "http"
listen = "{address}:{http}"
mode = "redirect"
target = "http://{address}:{service_http}"

[[frontend]]
name = "rfp"
kind = "tcp"
listen = "{address}:{tcp}"
target = "{address}:{service_tcp}"

[store]
path = "{state}/{id}.redb"

[log]
level = "info"
"#,
        peer_id = peer.id,
        peer_address = peer.address,
        peer_port = ports.peer,
        admin = ports.admin,
        token = token_file.display(),
        sip = ports.sip,
        sip_proxy = ports.sip_proxy,
        http = ports.http,
        tcp = ports.tcp,
        service_sip = ports.service_sip,
        service_http = ports.service_http,
        service_tcp = ports.service_tcp,
        state = dir.join("state").display(),
    )
}

/// Whether `program` is on the PATH (to print only the lines a person can run).
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// What to try, printed once the pair is up.
pub fn guide(prepared: &Prepared, exe: &Path, pids: [u32; 2], active: &str) -> String {
    let ports = prepared.ports;
    let Ports {
        sip,
        sip_proxy,
        http,
        tcp,
        service_sip,
        service_http,
        service_tcp,
        ..
    } = ports;
    let [a, b] = &prepared.nodes;
    let standby = if active == a.id { b } else { a };
    let exe = exe.display();
    let mut out = String::new();
    out.push_str("standby-proxy dev: a pair of real nodes on this machine\n\n");
    for (node, pid) in prepared.nodes.iter().zip(pids) {
        let role = if node.id == active {
            "ACTIVE "
        } else {
            "standby"
        };
        out.push_str(&format!(
            "  node {}  {:<10} pid {:<8} {role}  status page http://{}:{}/\n",
            node.id, node.address, pid, node.address, ports.admin
        ));
    }
    out.push_str(&format!(
        "\nEvery node has front ends for clients, and a tiny service that answers with its name:\n\
         \x20 SIP  UDP+TCP :{sip:<5}  302 to the active node's service :{service_sip}\n\
         \x20 SIP  UDP     :{sip_proxy:<5}  stateless proxy to the active node's service\n\
         \x20 HTTP         :{http:<5}  307 to the active node's service :{service_http}\n\
         \x20 TCP          :{tcp:<5}  forwarded to the active node's service :{service_tcp}\n"
    ));
    let via = standby.address;
    out.push_str(&format!(
        "\nTry, through the standby (node {}): every answer comes from node {active}\n",
        standby.id
    ));
    out.push_str(&format!("  curl -L http://{via}:{}/hello\n", ports.http));
    if installed("nc") {
        out.push_str(&format!("  echo hello | nc -q1 {via} {}\n", ports.tcp));
    }
    if installed("sipp") {
        out.push_str(&format!(
            "  sipp -sn uac -m 1 -s alice {via}:{}      # a call through the proxy\n",
            ports.sip_proxy
        ));
    }
    if installed("sipsak") {
        out.push_str(&format!(
            "  sipsak -vv -s sip:alice@{via}:{}        # the 302 names the active node\n",
            ports.sip
        ));
    }
    out.push_str(&format!(
        "\nThen:\n\
         \x20 export STANDBY_TOKEN_FILE={token}\n\
         \x20 {exe} status --admin http://{via}:{admin}\n\
         \x20 {exe} switchover --admin http://{active_address}:{admin}   # node {active} hands over\n\
         \x20 kill -9 <the active node's pid>   # the other takes over at once; dev restarts the\n\
         \x20                                   # killed one 2 s later, and it comes back as standby\n\
         \nCtrl-C stops both nodes and removes {dir}\n",
        token = prepared.token_file.display(),
        admin = ports.admin,
        active_address = if active == a.id { a.address } else { b.address },
        dir = prepared.dir.display(),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn both_configurations_are_valid_and_every_front_end_kind_is_there() {
        let dir = temp_dir().expect("temp dir");
        let prepared = prepare(&dir, Ports::shifted(100).expect("ports")).expect("prepared");
        for path in &prepared.configs {
            let config = Config::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(config.frontends.len(), 4, "{}", path.display());
            let peer = config.peer.expect("a peer");
            assert_eq!(
                peer.connect.port(),
                7801,
                "the peer's link, moved by the offset too"
            );
        }
        let token = std::fs::read_to_string(&prepared.token_file).expect("token");
        assert_eq!(token.len(), 32);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_offset_that_leaves_the_port_range_is_refused() {
        assert!(matches!(
            Ports::shifted(60_000),
            Err(DevError::PortOutOfRange { port: 7701, .. })
        ));
        assert_eq!(Ports::shifted(0).expect("ports").sip, 5060);
    }
}
