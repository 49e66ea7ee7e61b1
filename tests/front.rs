//! The front ends with real clients and real services, on two real `standby-proxy`
//! processes (node a on 127.0.0.1 active, node b on 127.0.0.2 standby): whichever node a
//! client reaches, it ends up at the active node, and after a failover at the new one.
//!
//! - SIP proxy mode: sipp REGISTERs through the standby's listener (UDP and TCP) to a sipp
//!   registrar on the active node; SIP over TLS in redirect mode with a rustls client.
//! - HTTP: `curl -L` over HTTPS (front certificate verified) through the standby's 307; the
//!   reverse proxy with Forwarded/X-Forwarded-For and a streamed POST; a WebSocket (Python's
//!   websockets client and server) through the proxy.
//! - TCP: an echo through the forwarder with half-close, cut after the failover.
// Real processes run on the real clock.
#![allow(clippy::disallowed_methods)]
// The shared harness has parts only tests/pair.rs uses.
#![allow(dead_code)]

#[path = "common/peers.rs"]
mod peers;

include!("common/pair_harness.rs");

/// A child process killed when the test ends.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Each node's own services (tests/tools/node_service.py): HTTP on `http`, WebSocket echo on
/// `ws`, answering with the node's name.
fn node_services(node: &str, address: &str, http: u16, ws: u16) -> Service {
    let mut command = Command::new("python3");
    command
        .arg(repo().join("tests/tools/node_service.py"))
        .args(["--node", node])
        .args(["--http", &format!("{address}:{http}")])
        .args(["--ws", &format!("{address}:{ws}")]);
    started(command, &format!("node service for {node}"))
}

/// Starts `command`, a service that prints "ready" once it listens, and waits for that.
fn started(mut command: Command, what: &str) -> Service {
    use std::io::BufRead;
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e} (tests/run-all.sh installs what it needs)"));
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(line.trim(), "ready", "{what}");
    Service(child)
}

fn curl(args: &[&str]) -> Result<String, String> {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Loads `url` in headless Chromium (the test CA is not installed in it, so certificate
/// errors are ignored) and returns the DOM and Chromium's network log.
fn chromium_h2(url: &str, dir: &std::path::Path) -> (String, String) {
    let net_log = dir.join("chromium-net-log.json");
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--ignore-certificate-errors",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .arg(format!("--log-net-log={}", net_log.display()))
        .arg(url)
        .output()
        .expect("chromium (tests/run-all.sh installs Debian's chromium)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let log = std::fs::read_to_string(&net_log).expect("Chromium's network log");
    (String::from_utf8_lossy(&output.stdout).into_owned(), log)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn http_clients_of_the_standby_end_at_the_active_node_over_https_proxy_and_websocket() {
    let base = 21200;
    let (https, proxy, ws_front, http_port, ws_port, plain) =
        (base + 4, base + 5, base + 6, base + 7, base + 8, base + 9);
    let secure_proxy = base + 19;
    let certs = repo().join("certs");
    let options = Options {
        extra: format!(
            r#"
[[frontend]]
name = "portal"
kind = "http"
listen = "{{me}}:{https}"
mode = "redirect"
target = "http://{{me}}:{http_port}"
tls_cert = "{cert}"
tls_key = "{key}"

[[frontend]]
name = "portal-proxy"
kind = "http"
listen = "{{me}}:{proxy}"
mode = "proxy"
target = "http://{{me}}:{http_port}"
# Longer than a client waits: a request queued behind a stuck connection fails the test.
connect_timeout = "30s"

[[frontend]]
name = "portal-secure-proxy"
kind = "http"
listen = "{{me}}:{secure_proxy}"
mode = "proxy"
target = "http://{{me}}:{http_port}"
tls_cert = "{cert}"
tls_key = "{key}"

[[frontend]]
name = "portal-plain"
kind = "http"
listen = "{{me}}:{plain}"
mode = "redirect"
target = "http://{{me}}:{http_port}"

[[frontend]]
name = "events"
kind = "http"
listen = "{{me}}:{ws_front}"
mode = "proxy"
target = "http://{{me}}:{ws_port}"
"#,
            cert = certs.join("front.pem").display(),
            key = certs.join("front.key").display(),
        ),
        ..Options::default()
    };
    let _a_services = node_services("a", "127.0.0.1", http_port, ws_port);
    let _b_services = node_services("b", "127.0.0.2", http_port, ws_port);
    let mut pair = Pair::new("http", base, options).started();
    let ca = certs.join("ca.pem");
    let ca = ca.to_str().expect("utf8 path");

    // HTTPS to the standby, certificate verified against the pair CA, 307 followed to a.
    let url = format!("https://127.0.0.2:{https}/portal/page?x=1");
    let answer = json(&curl(&["-L", "--cacert", ca, &url]).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(answer["node"], "a");
    assert_eq!(answer["path"], "/portal/page?x=1");
    // The redirect itself: 307 with the active node's base URL, over HTTP/2 (ALPN) and
    // HTTP/1.1 alike.
    for (version, status) in [("--http2", "HTTP/2 307"), ("--http1.1", "HTTP/1.1 307")] {
        let head =
            curl(&[version, "-D", "-", "-o", "/dev/null", "--cacert", ca, &url]).expect("head");
        assert!(head.starts_with(status), "{head}");
        assert!(
            head.to_ascii_lowercase().contains(&format!(
                "location: http://127.0.0.1:{http_port}/portal/page?x=1"
            )),
            "{head}"
        );
    }
    // The reverse proxy over HTTP/2: the body goes through, and the node gets the host the
    // client named in :authority as Host.
    let secure_url = format!("https://127.0.0.2:{secure_proxy}/api/h2?q=3");
    let head = curl(&[
        "--http2",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "--cacert",
        ca,
        &secure_url,
    ])
    .expect("h2 proxy head");
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    let proxied = json(
        &curl(&[
            "--http2",
            "--cacert",
            ca,
            "--data-binary",
            "over h2",
            &secure_url,
        ])
        .expect("h2 proxy"),
    );
    assert_eq!(proxied["node"], "a");
    assert_eq!(proxied["path"], "/api/h2?q=3");
    assert_eq!(proxied["body"], "over h2");
    assert_eq!(
        proxied["headers"]["host"],
        format!("127.0.0.2:{secure_proxy}")
    );
    // Chromium through the standby's HTTPS front end: the page is a's, and the connection
    // was HTTP/2 (its network log names the protocol ALPN chose).
    let (dom, net_log) = chromium_h2(&secure_url, &pair.dir);
    assert!(
        dom.contains("\"node\": \"a\"") || dom.contains("\"node\":\"a\""),
        "{dom}"
    );
    assert!(
        net_log.contains("\"negotiated_protocol\":\"h2\""),
        "no h2 in the net log"
    );
    // Plain HTTP: a client asking to close gets its redirect in the accept loop; a
    // keep-alive one, or one whose head comes in pieces, from hyper, with what the accept
    // loop read first. The answer is the same.
    let plain_url = format!("http://127.0.0.2:{plain}/portal/page?x=1");
    let location = format!("location: http://127.0.0.1:{http_port}/portal/page?x=1\r\n");
    for close in [true, false] {
        let connection = if close {
            "Connection: close"
        } else {
            "X-Keep: alive"
        };
        let head = curl(&["-D", "-", "-o", "/dev/null", "-H", connection, &plain_url])
            .expect("plain head");
        assert!(head.starts_with("HTTP/1.1 307"), "{head}");
        assert!(head.to_ascii_lowercase().contains(&location), "{head}");
        assert!(head.to_ascii_lowercase().contains("date: "), "{head}");
    }
    for _ in 0..10 {
        let answer = in_two_pieces(
            plain,
            "GET /portal/page?x=1 HTTP/1.1\r\nHost: p\r\n",
            "Connection: close\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 307"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains(&location), "{answer}");
    }
    // Without the CA the front certificate is not trusted: verification is real.
    assert!(curl(&["-L", &url]).is_err());

    // The reverse proxy: a POST body streamed through, who the client is added.
    let proxied = json(
        &curl(&[
            "-H",
            "X-Forwarded-For: 192.0.2.1",
            "--data-binary",
            "hello through b",
            &format!("http://127.0.0.2:{proxy}/api?q=2"),
        ])
        .expect("proxy"),
    );
    assert_eq!(proxied["node"], "a");
    assert_eq!(proxied["method"], "POST");
    assert_eq!(proxied["path"], "/api?q=2");
    assert_eq!(proxied["body"], "hello through b");
    assert_eq!(
        proxied["headers"]["x-forwarded-for"],
        "192.0.2.1, 127.0.0.1"
    );
    assert_eq!(proxied["headers"]["host"], format!("127.0.0.2:{proxy}"));
    assert!(
        proxied["headers"]["forwarded"]
            .as_str()
            .is_some_and(|f| f.starts_with("for=127.0.0.1;proto=http")),
        "{proxied}"
    );

    // Clients that close their connection after each request (each curl run is one) share
    // the proxy's kept-alive connections to the active node: a few (one pool per front-end
    // thread), not one per request.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let upstream_ports: std::collections::BTreeSet<u64> = (0..20.max(4 * threads + 4))
        .map(|_| {
            let answer = json(&curl(&[&format!("http://127.0.0.2:{proxy}/")]).expect("proxy"));
            answer["client_port"].as_u64().expect("client_port")
        })
        .collect();
    assert!(
        upstream_ports.len() <= threads,
        "closing clients took {} connections to the active node (front-end threads: {threads})",
        upstream_ports.len()
    );

    // An upload the active node refuses at once, without reading it, while the client goes
    // on sending: that connection is still busy with the upload and must not be handed to
    // the next client, who would wait behind it (or be answered from it).
    let _uploader = upload_refused_early(proxy);
    for _ in 0..4 * threads + 4 {
        let answer = curl(&[
            "--max-time",
            "5",
            &format!("http://127.0.0.2:{proxy}/after"),
        ])
        .expect("a request after the refused upload");
        assert_eq!(json(&answer)["path"], "/after");
    }

    // A WebSocket through the standby's proxy, echoed by a's service.
    let ws = |front: u16| {
        Command::new("python3")
            .arg(repo().join("tests/tools/ws_client.py"))
            .arg(format!("ws://127.0.0.2:{front}/events"))
            .args(["one", "two"])
            .output()
            .expect("python3")
    };
    let output = ws(ws_front);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "a:one\na:two\n");

    // A WebSocket held open through the standby to a is cut when b becomes active, as TCP
    // forwarding is (a's service itself lives on).
    let held = Command::new("python3")
        .arg(repo().join("tests/tools/ws_client.py"))
        .args(["--hold", "8"])
        .arg(format!("ws://127.0.0.2:{ws_front}/events"))
        .arg("held")
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_millis(500));

    // After a failover every path ends at b.
    pair.a.kill();
    pair.wait("b active", |p| is(p, "b", "active"));
    let answer = json(&curl(&["-L", "--cacert", ca, &url]).expect("after failover"));
    assert_eq!(answer["node"], "b");
    let proxied = json(&curl(&[&format!("http://127.0.0.2:{proxy}/")]).expect("proxy"));
    assert_eq!(proxied["node"], "b");
    // b's idle connections to a's service closed when a stopped being active: asked
    // directly, a's service has only this request's connection open.
    pair.wait("b's idle connections to a's service closed", |_| {
        curl(&[&format!("http://127.0.0.1:{http_port}/")])
            .is_ok_and(|answer| json(&answer)["open_connections"] == 1)
    });
    let output = ws(ws_front);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "b:one\nb:two\n");
    let held = held.wait_with_output().expect("held WebSocket client");
    assert_eq!(
        String::from_utf8_lossy(&held.stdout),
        "a:held\nclosed\n",
        "the WebSocket to the old active node was not cut"
    );

    let metrics = http_get(&pair.b.admin, "/metrics");
    let count = |frontend: &str, code: u16| {
        metric(
            &metrics,
            &format!("standby_http_requests_total{{frontend=\"{frontend}\",code=\"{code}\"}}"),
        )
    };
    assert!(count("portal", 307).is_some_and(|n| n >= 3.0), "{metrics}");
    assert_eq!(count("portal-plain", 307), Some(12.0), "{metrics}");
    assert!(count("events", 101).is_some_and(|n| n >= 2.0), "{metrics}");
}

/// Sends `first`, then a moment later `rest`, to 127.0.0.2:`port`; what came back until the
/// server closed.
fn in_two_pieces(port: u16, first: &str, rest: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.2", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(first.as_bytes()).expect("first piece");
    std::thread::sleep(Duration::from_millis(20));
    stream.write_all(rest.as_bytes()).expect("the rest");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
}

/// Through the reverse proxy on 127.0.0.2:`port`: a 64 MB POST to `/early`, which the node
/// service refuses with 413 before reading it; returns once the 413 came back, while the
/// client (the returned thread) goes on sending.
fn upload_refused_early(port: u16) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.2", port)).expect("proxy");
    let size = 64 << 20;
    write!(
        stream,
        "POST /early HTTP/1.1\r\nHost: portal\r\nContent-Length: {size}\r\n\r\n"
    )
    .expect("request head");
    let mut sending = stream.try_clone().expect("clone");
    sending
        .set_write_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let uploader = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if sending.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).expect("the 413");
    assert_eq!(&head, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&head));
    uploader
}

/// sipp as a registrar on a node's SIP service: answers REGISTER 200 with `X-Node`, and
/// checks that the request came through the proxy (our Via on top).
fn sipp_registrar(dir: &Path, node: &str, address: &str, port: u16, proxy_port: u16) -> Service {
    let scenario = dir.join(format!("registrar-{node}.xml"));
    std::fs::write(
        &scenario,
        format!(
            r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="registrar {node}">
  <recv request="REGISTER">
    <action>
      <ereg regexp="Via: SIP/2.0/UDP 127.0.0.[12]:{proxy_port};branch=z9hG4bK-sp" search_in="msg" check_it="true" assign_to="via"/>
    </action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=reg[call_number]
[last_Call-ID:]
[last_CSeq:]
[last_Contact:]
X-Node: {node}
Content-Length: 0

    ]]>
  </send>
  <Reference variables="via"/>
</scenario>
"#
        ),
    )
    .expect("scenario");
    let child = Command::new("sipp")
        .arg("-sf")
        .arg(&scenario)
        .args([
            "-i",
            address,
            "-p",
            &port.to_string(),
            "-nostdin",
            "-trace_err",
        ])
        .arg("-error_file")
        .arg(dir.join(format!("registrar-{node}.err")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp (tests/run-all.sh installs sip-tester)");
    Service(child)
}

/// sipp REGISTERs `calls` times through `listener` over `transport` (u1 or t1) and checks
/// each 200 came from `node`.
fn sipp_register(
    dir: &Path,
    listener: &str,
    transport: &str,
    local_port: u16,
    node: &str,
) -> Result<(), String> {
    let xml = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register">
  <send retrans="500">
    <![CDATA[
REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:[service]@[remote_ip]>;tag=[pid]reg[call_number]
To: <sip:[service]@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:[service]@[local_ip]:[local_port]>
Max-Forwards: 70
Expires: 3600
Content-Length: 0

    ]]>
  </send>
  <recv response="200">
    <action>
      <ereg regexp="X-Node: {node}" search_in="msg" check_it="true" assign_to="node"/>
    </action>
  </recv>
  <Reference variables="node"/>
</scenario>
"#
    );
    sipp_client(dir, &xml, transport, local_port, listener)
}

#[test]
fn register_through_the_standbys_sip_proxy_reaches_the_active_registrar() {
    let base = 21220;
    let (listener_port, service_port) = (base + 4, base + 5);
    let options = Options {
        extra: format!(
            r#"
[[frontend]]
name = "sip"
kind = "sip"
mode = "proxy"
listen = "{{me}}:{listener_port}"
target = "sip:{{me}}:{service_port}"
udp_sockets = 2
"#
        ),
        ..Options::default()
    };
    let mut pair = Pair::new("sipproxy", base, options).started();
    let _registrar_a = sipp_registrar(&pair.dir, "a", "127.0.0.1", service_port, listener_port);
    let _registrar_b = sipp_registrar(&pair.dir, "b", "127.0.0.2", service_port, listener_port);
    std::thread::sleep(Duration::from_millis(300));
    let b_listener = format!("127.0.0.2:{listener_port}");
    sipp_register(&pair.dir, &b_listener, "u1", base + 10, "a").unwrap_or_else(|e| panic!("{e}"));
    sipp_register(&pair.dir, &b_listener, "t1", base + 11, "a").unwrap_or_else(|e| panic!("{e}"));
    // A check that cannot match must fail, or the checks above prove nothing.
    assert!(sipp_register(&pair.dir, &b_listener, "u1", base + 12, "b").is_err());
    pair.a.kill();
    pair.wait("b active", |p| is(p, "b", "active"));
    sipp_register(&pair.dir, &b_listener, "u1", base + 13, "b").unwrap_or_else(|e| panic!("{e}"));
    let metrics = http_get(&pair.b.admin, "/metrics");
    assert!(
        metric(
            &metrics,
            "standby_sip_requests_total{method=\"REGISTER\",response=\"forwarded\",frontend=\"sip\"}"
        )
        .is_some_and(|n| n >= 60.0),
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "standby_sip_requests_total{method=\"response\",response=\"relayed\",frontend=\"sip\"}"
        )
        .is_some_and(|n| n >= 60.0),
        "{metrics}"
    );
}

#[test]
fn sip_over_tls_is_redirected_with_the_front_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let base = 21240;
    let (listener_port, tls_port, tls_service_port) = (base + 4, base + 5, base + 7);
    let certs = repo().join("certs");
    let options = Options {
        extra: format!(
            r#"
[[frontend]]
name = "sip"
kind = "sip"
listen = "{{me}}:{listener_port}"
transports = ["udp", "tls"]
tls_listen = "{{me}}:{tls_port}"
tls_cert = "{cert}"
tls_key = "{key}"
target = "sip:{{me}}:{service_port}"
tls_target = "sip:{{me}}:{tls_service_port};transport=tls"
"#,
            service_port = base + 6,
            cert = certs.join("front.pem").display(),
            key = certs.join("front.key").display(),
        ),
        ..Options::default()
    };
    let pair = Pair::new("siptls", base, options).started();
    let connector =
        standby_proxy::tls::client_connector(Some(&certs.join("ca.pem"))).expect("client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let answer = runtime.block_on(async {
        let tcp = TcpStream::connect(("127.0.0.2", tls_port)).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("127.0.0.2").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake verifies");
        let invite = "INVITE sip:4711@127.0.0.2 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKtls1\r\nMax-Forwards: 70\r\nFrom: <sip:1@127.0.0.1>;tag=1\r\nTo: <sip:4711@127.0.0.2>\r\nCall-ID: tls-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        tls.write_all(invite.as_bytes()).await.expect("send");
        let mut buffer = vec![0u8; 4096];
        let mut answer = Vec::new();
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buffer))
                .await
                .expect("answer in time")
                .expect("read");
            assert!(read > 0, "closed before answering");
            answer.extend_from_slice(&buffer[..read]);
        }
        String::from_utf8(answer).expect("utf8")
    });
    assert!(
        answer.starts_with("SIP/2.0 302 Moved Temporarily\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains(&format!(
            "Contact: <sip:4711@127.0.0.1:{tls_service_port};transport=tls>"
        )),
        "{answer}"
    );
    assert!(is(&pair, "b", "standby"));
}

/// A node's base-station service: greets with its name, echoes, and on end-of-stream from
/// the client says "bye" and closes (so half-close is visible).
fn echo_service(runtime: &tokio::runtime::Runtime, node: &'static str, addr: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = runtime
        .block_on(TcpListener::bind(&addr))
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    runtime.spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = stream.write_all(format!("{node}\n").as_bytes()).await;
                let mut buffer = [0u8; 1024];
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.write_all(b"bye\n").await;
            });
        }
    });
}

#[test]
fn base_station_connections_are_forwarded_and_cut_after_failover() {
    use std::io::{BufRead, BufReader, Read};
    let base = 21260;
    let (front, service) = (base + 4, base + 5);
    let options = Options {
        extra: format!(
            r#"
[[frontend]]
name = "rfp"
kind = "tcp"
listen = "{{me}}:{front}"
target = "{{me}}:{service}"
connect_timeout = "1s"
"#
        ),
        ..Options::default()
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    echo_service(&runtime, "a", format!("127.0.0.1:{service}"));
    echo_service(&runtime, "b", format!("127.0.0.2:{service}"));
    let mut pair = Pair::new("tcpfwd", base, options).started();
    let connect = || {
        let stream = std::net::TcpStream::connect(("127.0.0.2", front)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut greeting = String::new();
        reader.read_line(&mut greeting).expect("greeting");
        (stream, reader, greeting)
    };

    // Through the standby to a; half-close: our end of sending still gets the answer.
    let (mut stream, mut reader, greeting) = connect();
    assert_eq!(greeting, "a\n");
    stream.write_all(b"ping\n").expect("send");
    let mut line = String::new();
    reader.read_line(&mut line).expect("echo");
    assert_eq!(line, "ping\n");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let mut rest = String::new();
    reader.read_to_string(&mut rest).expect("rest");
    assert_eq!(rest, "bye\n");

    // A long-lived connection to a is cut when b takes over; the next one reaches b.
    let (mut stream, mut reader, greeting) = connect();
    assert_eq!(greeting, "a\n");
    pair.a.kill();
    pair.wait("b active", |p| is(p, "b", "active"));
    let started = Instant::now();
    let mut rest = Vec::new();
    // The echo service of a is still up: only the forwarder can end this stream.
    let _ = stream.write_all(b"still there?\n");
    let result = reader.read_to_end(&mut rest);
    println!(
        "connection to the old active node ended {:?} after b became active: {result:?}",
        started.elapsed()
    );
    assert!(
        !matches!(&result, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the connection to the old active node stayed open"
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("bye"),
        "the client must not see the old node's orderly end: {rest:?}"
    );
    let (_, _, greeting) = connect();
    assert_eq!(greeting, "b\n");
    let metrics = http_get(&pair.b.admin, "/metrics");
    assert!(
        metric(
            &metrics,
            "standby_tcp_connections_total{frontend=\"rfp\",result=\"closed_on_change\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

#[test]
fn with_no_active_node_every_front_end_says_so_at_once() {
    use std::io::Read;
    let base = 21280;
    let (sip, http, tcp, admin) = (base, base + 1, base + 2, base + 3);
    let dir = std::env::temp_dir().join(format!("standby-front-none-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("lonely.toml");
    // A lone node waits startup_wait before it may go active: until then nobody is.
    std::fs::write(
        &config,
        format!(
            r#"
[node]
id = "lonely"
address = "127.0.0.1"
[election]
startup_wait = "60s"
[admin]
listen = "127.0.0.1:{admin}"
[[frontend]]
name = "sip"
kind = "sip"
listen = "127.0.0.1:{sip}"
mode = "proxy"
target = "sip:127.0.0.1:{sip}"
[[frontend]]
name = "portal"
kind = "http"
listen = "127.0.0.1:{http}"
target = "http://127.0.0.1:9"
[[frontend]]
name = "rfp"
kind = "tcp"
listen = "127.0.0.1:{tcp}"
target = "127.0.0.1:9"
"#
        ),
    )
    .expect("config");
    let _node = Service(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("standby-proxy"),
    );
    let deadline = Instant::now() + PATIENCE;
    let head = loop {
        match curl(&[
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{http}/x"),
        ]) {
            Ok(head) => break head,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(error) => panic!("the HTTP front end never answered: {error}"),
        }
    };
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 5"),
        "{head}"
    );

    // SIP, proxy mode: a REGISTER gets 503 with Retry-After instead of being forwarded.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let register = "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKnone\r\nFrom: <sip:1@127.0.0.1>;tag=1\r\nTo: <sip:1@127.0.0.1>\r\nCall-ID: none\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
    udp.send_to(register.as_bytes(), ("127.0.0.1", sip))
        .expect("send");
    let mut buffer = [0u8; 2048];
    let (length, _) = udp.recv_from(&mut buffer).expect("an answer");
    let answer = String::from_utf8_lossy(&buffer[..length]);
    assert!(answer.starts_with("SIP/2.0 503 "), "{answer}");
    assert!(answer.contains("\r\nRetry-After: 5\r\n"), "{answer}");

    // TCP: accepted and closed at once, without a byte.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", tcp)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest);
    assert!(
        matches!(read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
}

/// An https node service that speaks only HTTP/2 (tests/tools/h2_node.py), answering with
/// the node's name and the connection each request came on.
fn h2_node(node: &str, address: &str, port: u16) -> Service {
    let certs = repo().join("certs");
    let mut command = Command::new("python3");
    command
        .arg(repo().join("tests/tools/h2_node.py"))
        .args(["--node", node])
        .args(["--listen", &format!("{address}:{port}")])
        .arg("--cert")
        .arg(certs.join("front.pem"))
        .arg("--key")
        .arg(certs.join("front.key"));
    started(command, &format!("h2 node for {node}"))
}

#[test]
fn an_https_node_that_speaks_http2_gets_the_proxied_requests_over_one_connection_per_thread() {
    let base = 21300;
    let (front, node_port) = (base + 4, base + 5);
    let options = Options {
        extra: format!(
            "[[frontend]]\nname = \"portal-h2\"\nkind = \"http\"\nlisten = \"{{me}}:{front}\"\nmode = \"proxy\"\ntarget = \"https://{{me}}:{node_port}\"\nca = \"{ca}\"\n",
            ca = repo().join("certs/ca.pem").display()
        ),
        ..Options::default()
    };
    let _a_node = h2_node("a", "127.0.0.1", node_port);
    let _b_node = h2_node("b", "127.0.0.2", node_port);
    let mut pair = Pair::new("h2up", base, options).started();
    let url = format!("http://127.0.0.2:{front}/h2/page?x=1");

    // HTTP/1.1 clients closing after each request: every request reaches the node over
    // HTTP/2, on one connection per front-end thread at most.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut connections = std::collections::BTreeSet::new();
    for _ in 0..4 * threads + 4 {
        let answer = json(&curl(&[&url]).expect("proxied to an h2 node"));
        assert_eq!(answer["node"], "a");
        assert_eq!(answer["protocol"], "h2");
        assert_eq!(answer["path"], "/h2/page?x=1");
        assert_eq!(answer["authority"], format!("127.0.0.2:{front}"));
        assert!(
            answer["forwarded"]
                .as_str()
                .is_some_and(|f| f.starts_with("for=127.0.0.1;proto=http")),
            "{answer}"
        );
        connections.insert(answer["connection"].as_u64().expect("connection"));
    }
    assert!(
        connections.len() <= threads,
        "{} HTTP/2 connections for {threads} front-end threads",
        connections.len()
    );
    // A body goes through.
    let posted =
        json(&curl(&["--data-binary", "to an h2 node", &url]).expect("POST to an h2 node"));
    assert_eq!(posted["method"], "POST");
    assert_eq!(posted["body"], "to an h2 node");

    // After a failover the requests go to b's node, over HTTP/2 too.
    pair.a.kill();
    pair.wait("b active", |p| is(p, "b", "active"));
    let answer = json(&curl(&[&url]).expect("after failover"));
    assert_eq!(answer["node"], "b");
    assert_eq!(answer["protocol"], "h2");
}
