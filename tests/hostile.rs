//! Hostile clients against real processes: whatever reaches a front end, from any address,
//! must never delay a heartbeat, stop a listener, or turn the proxy into a relay.
//!
//! One test per attack, named after what the attacker does. Each runs the attack against a
//! running pair (node a on 127.0.0.1 active, node b on 127.0.0.2 standby) and asserts what an
//! operator would see: no takeover or role change because of it, the heartbeat round trip
//! well under `peer_dead_after`, the status API answering throughout, clean clients still
//! served, and the attack counted in `/metrics`.
// Real processes run on the real clock.
#![allow(clippy::disallowed_methods)]
// The shared harness has parts only other test files use.
#![allow(dead_code)]

#[path = "common/peers.rs"]
mod peers;

include!("common/pair_harness.rs");

/// One attack at a time: each test asserts that every heartbeat round trip stayed under
/// 250 ms, which another test's flood on the same 2 cores could break for reasons of its own.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed while holding it poisons it; the next one still runs alone.
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

use std::io::Read;

/// What the operator saw while an attack ran.
#[derive(Debug, Default)]
struct Watched {
    /// Status calls that did not answer in time, by node.
    unanswered: Vec<String>,
    /// Roles seen other than a active and b standby.
    role_changes: Vec<String>,
    /// Status polls made.
    polls: usize,
}

/// Polls both nodes' status every 50 ms for `duration` (each call must answer within
/// `peer_dead_after`, 300 ms) while the attack runs on other threads.
fn watch(pair: &Pair, duration: Duration) -> Watched {
    let mut watched = Watched::default();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        for name in ["a", "b"] {
            let asked = Instant::now();
            let status = pair.status(name);
            let took = asked.elapsed();
            match status {
                Some(status) if took < Duration::from_millis(300) => {
                    let expected = if name == "a" { "active" } else { "standby" };
                    if status.role != expected {
                        watched
                            .role_changes
                            .push(format!("{name} {} term {}", status.role, status.term));
                    }
                }
                Some(_) => watched.unanswered.push(format!("{name} took {took:?}")),
                None => watched.unanswered.push(format!("{name} did not answer")),
            }
        }
        watched.polls += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    watched
}

/// The operator's verdict after an attack: nothing moved, heartbeats stayed fast.
fn assert_the_pair_held(pair: &Pair, watched: &Watched) {
    assert!(watched.polls > 5, "{watched:?}");
    assert!(
        watched.unanswered.is_empty(),
        "status API stalled: {watched:?}"
    );
    assert!(watched.role_changes.is_empty(), "roles moved: {watched:?}");
    for name in ["a", "b"] {
        let metrics = http_get(&pair.node(name).admin, "/metrics");
        let transitions: f64 = metrics
            .lines()
            .filter(|line| line.starts_with("standby_transitions_total{"))
            .filter(|line| {
                line.contains("reason=\"peer_dead\"")
                    || (name == "b" && line.contains("to=\"active\""))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(
            transitions, 0.0,
            "{name} took over or saw its peer dead:\n{metrics}"
        );
        assert_heartbeats_were_fast(name, &metrics);
    }
}

/// Every heartbeat round trip under 250 ms (peer_dead_after is 300 ms): the histogram's
/// bucket up to 0.25 s holds them all.
fn assert_heartbeats_were_fast(name: &str, metrics: &str) {
    let all = metric(metrics, "standby_heartbeat_rtt_seconds_count").unwrap_or(0.0);
    let fast = metric(metrics, "standby_heartbeat_rtt_seconds_bucket{le=\"0.25\"}").unwrap_or(0.0);
    assert!(
        all > 0.0 && fast == all,
        "{name}: {fast} of {all} round trips under 250 ms"
    );
}

/// The sum of every series of `family` whose labels contain `labels`.
fn sum_of(metrics: &str, family: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(family) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A clean SIP client over TCP from `from` gets its 302 from `listener`.
fn clean_sip_client_is_served(from: &str, listener: &str) -> Result<String, String> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    let local: std::net::SocketAddr = format!("{from}:0").parse().map_err(|e| format!("{e}"))?;
    socket
        .bind(&local.into())
        .map_err(|e| format!("bind {from}: {e}"))?;
    let remote: std::net::SocketAddr = listener.parse().map_err(|e| format!("{e}"))?;
    socket
        .connect_timeout(&remote.into(), Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    let mut stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let invite = format!(
        "INVITE sip:4711@{listener} SIP/2.0\r\nVia: SIP/2.0/TCP {from}:5060;branch=z9hG4bKclean\r\nMax-Forwards: 70\r\nFrom: <sip:1@{from}>;tag=1\r\nTo: <sip:4711@{listener}>\r\nCall-ID: clean-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    stream
        .write_all(invite.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).map_err(|e| format!("read: {e}"))?;
        if read == 0 {
            return Err(format!(
                "closed after {:?}",
                String::from_utf8_lossy(&answer)
            ));
        }
        answer.extend_from_slice(&buffer[..read]);
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    if answer.starts_with("SIP/2.0 302 ") {
        Ok(answer)
    } else {
        Err(answer)
    }
}

#[test]
fn two_wrapping_content_lengths_do_not_freeze_the_node() {
    let _alone = one_at_a_time();
    let options = Options {
        sip_frontend: true,
        ..Options::default()
    };
    let pair = Pair::new("wrap", 21500, options).started();
    let attack = b"OPTIONS sip:x SIP/2.0\r\nl: 18446744073709551566\r\n\r\n";
    // Two connections to each node, the active one included.
    let mut held = Vec::new();
    for listener in [
        "127.0.0.1:21504",
        "127.0.0.2:21504",
        "127.0.0.1:21504",
        "127.0.0.2:21504",
    ] {
        let mut stream = std::net::TcpStream::connect(listener).expect("connect");
        stream.write_all(attack).expect("send");
        held.push(stream);
    }
    let watched = watch(&pair, Duration::from_secs(2));
    assert_the_pair_held(&pair, &watched);
    for listener in ["127.0.0.1:21504", "127.0.0.2:21504"] {
        clean_sip_client_is_served("127.0.0.3", listener)
            .unwrap_or_else(|e| panic!("{listener} no longer serves SIP over TCP: {e}"));
    }
    let metrics = http_get(&pair.b.admin, "/metrics");
    assert!(
        metric(&metrics, "standby_limit_hits_total{limit=\"sip_message\"}")
            .is_some_and(|n| n >= 2.0),
        "{metrics}"
    );
}

#[test]
fn max_forwards_written_00_gets_483_not_a_redirect() {
    let _alone = one_at_a_time();
    let options = Options {
        sip_frontend: true,
        ..Options::default()
    };
    let _pair = Pair::new("maxfwd", 21520, options).started();
    let udp = std::net::UdpSocket::bind("127.0.0.3:0").expect("udp");
    udp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let request = "OPTIONS sip:4711@127.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.3:5060;branch=z9hG4bKmf\r\nMax-Forwards: 00\r\nFrom: <sip:1@127.0.0.3>;tag=1\r\nTo: <sip:4711@127.0.0.2>\r\nCall-ID: mf-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    udp.send_to(request.as_bytes(), "127.0.0.2:21524")
        .expect("send");
    let mut buffer = [0u8; 4096];
    let (length, _) = udp.recv_from(&mut buffer).expect("an answer");
    let answer = String::from_utf8_lossy(&buffer[..length]);
    assert!(answer.starts_with("SIP/2.0 483 "), "{answer}");
}

/// A SIP redirect front end on both nodes at `listen_port` (UDP and TCP) with `limits`
/// (extra TOML lines), advertising `sip:<me>:<listen_port + 1>`.
fn sip_front_end(listen_port: u16, limits: &str) -> String {
    format!(
        "[[frontend]]\nname = \"sip\"\nkind = \"sip\"\nlisten = \"{{me}}:{listen_port}\"\ntarget = \"sip:{{me}}:{}\"\nudp_sockets = 1\n{limits}\n",
        listen_port + 1
    )
}

#[test]
fn seventy_two_slow_connections_from_one_address_do_not_lock_others_out() {
    let _alone = one_at_a_time();
    let listen_port = 21546;
    let options = Options {
        extra: sip_front_end(
            listen_port,
            "max_connections = 64\nfirst_message_timeout = \"2s\"",
        ),
        ..Options::default()
    };
    let pair = Pair::new("slowloris", 21540, options).started();
    let listener = format!("127.0.0.2:{listen_port}");
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, listener) = (stop.clone(), listener.clone());
        std::thread::spawn(move || {
            let mut held: Vec<std::net::TcpStream> = (0..72)
                .filter_map(|_| std::net::TcpStream::connect(&listener).ok())
                .collect();
            for stream in &mut held {
                let _ = stream.write_all(b"INVITE sip:4711@x SIP/2.0\r\n");
            }
            while !stop.load(Ordering::Relaxed) {
                // One byte per connection now and then: never a whole message.
                for stream in &mut held {
                    let _ = stream.write_all(b"X");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let watched = watch(&pair, Duration::from_secs(1));
    let served = clean_sip_client_is_served("127.0.0.3", &listener);
    // Past the message deadline the trickling connections are closed too.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    attacker.join().expect("attacker");
    served.unwrap_or_else(|e| panic!("a clean client was locked out: {e}"));
    assert_the_pair_held(&pair, &watched);
    let metrics = http_get(&pair.b.admin, "/metrics");
    for (limit, at_least) in [
        ("sip_connections_per_source", 60.0),
        ("sip_message_timeout", 1.0),
    ] {
        let name = format!("standby_limit_hits_total{{limit=\"{limit}\"}}");
        assert!(
            metric(&metrics, &name).is_some_and(|n| n >= at_least),
            "{name} under {at_least}:\n{metrics}"
        );
    }
}

#[test]
fn forged_answers_to_the_proxy_reach_neither_a_third_address_nor_another_client() {
    let _alone = one_at_a_time();
    let listen_port = 21566;
    let options = Options {
        extra: sip_front_end(
            listen_port,
            "mode = \"proxy\"\ntransports = [\"udp\", \"tcp\"]",
        ),
        ..Options::default()
    };
    let pair = Pair::new("relay", 21560, options).started();
    let listener = format!("127.0.0.2:{listen_port}");
    // The victim: a third address the attacker wants datagrams sent to.
    let victim = std::net::UdpSocket::bind("127.0.0.3:0").expect("victim");
    victim
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let victim_port = victim.local_addr().expect("addr").port();
    // A clean TCP client of the proxy, whose connection the attacker wants to write into.
    let mut client = std::net::TcpStream::connect(&listener).expect("client");
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let attacker = std::net::UdpSocket::bind("127.0.0.4:0").expect("attacker");
    let forged = |connection: Option<u64>, seq: u64| {
        let connection = connection.map(|c| format!(";sp-c={c}")).unwrap_or_default();
        format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {listener};branch=z9hG4bK-sp{seq:016x}{seq:016x}{connection}\r\nVia: SIP/2.0/UDP 127.0.0.3:{victim_port};rport={victim_port};received=127.0.0.3\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: forged-{seq}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\nINVITE sip:victim SIP/2.0\r\n\r\n"
        )
    };
    for seq in 0..5 {
        attacker
            .send_to(forged(None, seq).as_bytes(), &listener)
            .expect("send");
        // Connection numbers are small and sequential: try the likely ones.
        for connection in 1..4 {
            attacker
                .send_to(forged(Some(connection), seq).as_bytes(), &listener)
                .expect("send");
        }
    }
    let mut buffer = [0u8; 4096];
    if let Ok((length, from)) = victim.recv_from(&mut buffer) {
        panic!(
            "the proxy relayed a forged answer to a third address ({from}): {}",
            String::from_utf8_lossy(&buffer[..length])
        );
    }
    if let Ok(length) = client.read(&mut buffer) {
        assert_eq!(
            length,
            0,
            "a forged answer entered another client's connection: {}",
            String::from_utf8_lossy(&buffer[..length])
        );
    }
    let metrics = http_get(&pair.b.admin, "/metrics");
    assert!(
        metric(&metrics, "standby_sip_dropped_total{reason=\"bad_mac\"}")
            .is_some_and(|n| n >= 20.0),
        "{metrics}"
    );
    let watched = watch(&pair, Duration::from_millis(500));
    assert_the_pair_held(&pair, &watched);
}

#[test]
fn a_flood_from_one_address_draws_a_bounded_number_of_answers() {
    let _alone = one_at_a_time();
    // A reflection attack: requests with a spoofed source make the front end answer the
    // victim. Here the "victim" is the sender's own address; the rate guard bounds what one
    // source draws, and everyone else is still answered.
    let listen_port = 21586;
    let options = Options {
        extra: sip_front_end(listen_port, "udp_rate_per_source = 100"),
        ..Options::default()
    };
    let pair = Pair::new("reflect", 21580, options).started();
    let listener = format!("127.0.0.2:{listen_port}");
    let flood = std::net::UdpSocket::bind("127.0.0.5:0").expect("flooder");
    flood
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let request = |from: &str, seq: u32| {
        format!("OPTIONS sip:4711@{listener} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKflood{seq}\r\nMax-Forwards: 70\r\nFrom: <sip:1@{from}>;tag=1\r\nTo: <sip:4711@{listener}>\r\nCall-ID: flood-{seq}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    };
    let from = flood.local_addr().expect("addr").to_string();
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(900) && sent < 3000 {
        flood
            .send_to(request(&from, sent).as_bytes(), &listener)
            .expect("send");
        sent += 1;
    }
    let mut answers = 0;
    let mut buffer = [0u8; 4096];
    while flood.recv_from(&mut buffer).is_ok() {
        answers += 1;
    }
    // One second's allowance, or two if the flood straddled a window boundary.
    assert!(sent >= 1000, "the test sent only {sent}");
    assert!(
        answers <= 200,
        "{answers} answers to {sent} requests from one address"
    );
    let clean = std::net::UdpSocket::bind("127.0.0.6:0").expect("clean client");
    clean
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let clean_from = clean.local_addr().expect("addr").to_string();
    clean
        .send_to(request(&clean_from, 1).as_bytes(), &listener)
        .expect("send");
    let (length, _) = clean
        .recv_from(&mut buffer)
        .expect("the clean client is answered");
    assert!(buffer[..length].starts_with(b"SIP/2.0 302 "));
    let metrics = http_get(&pair.b.admin, "/metrics");
    let name = "standby_limit_hits_total{limit=\"sip_udp_rate_per_source\"}";
    assert!(
        metric(&metrics, name).is_some_and(|n| n >= 500.0),
        "{name}:\n{metrics}"
    );
    let watched = watch(&pair, Duration::from_millis(500));
    assert_the_pair_held(&pair, &watched);
}

#[test]
fn an_http_client_trickling_its_request_head_is_closed() {
    let _alone = one_at_a_time();
    let port = 21606;
    let options = Options {
        extra: format!(
            "[[frontend]]\nname = \"portal\"\nkind = \"http\"\nlisten = \"{{me}}:{port}\"\ntarget = \"http://{{me}}:{}\"\nfirst_message_timeout = \"2s\"\n",
            port + 1
        ),
        ..Options::default()
    };
    let pair = Pair::new("drip", 21600, options).started();
    let mut stream = std::net::TcpStream::connect(("127.0.0.2", port)).expect("connect");
    stream.write_all(b"GET / HTTP/1.1\r\n").expect("send");
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    let closed_after = loop {
        // One header byte every 400 ms: activity, but never a whole head.
        if stream.write_all(b"X").is_err() {
            break started.elapsed();
        }
        match stream.read(&mut buffer) {
            Ok(0) => break started.elapsed(),
            Ok(_) | Err(_) if started.elapsed() > Duration::from_secs(6) => {
                panic!("a trickling client still holds its connection after 6 s")
            }
            Ok(_) => break started.elapsed(), // an error answer (408), then the close
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(closed_after >= Duration::from_secs(1), "{closed_after:?}");
    // One byte every whole deadline (2 s): each byte comes before the deadline of the last,
    // but the head as a whole is still not complete in time.
    let mut slow = std::net::TcpStream::connect(("127.0.0.2", port)).expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\n").expect("send");
    slow.set_read_timeout(Some(Duration::from_millis(2000)))
        .expect("timeout");
    let started = Instant::now();
    loop {
        let _ = slow.write_all(b"X");
        match slow.read(&mut buffer) {
            Ok(_) => break,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => break,
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "a client sending a head byte every 2 s still holds its connection"
        );
    }
    // A clean client is answered.
    let mut clean = std::net::TcpStream::connect(("127.0.0.2", port)).expect("connect");
    clean
        .write_all(b"GET /x HTTP/1.1\r\nHost: portal\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    clean.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 307 "), "{answer}");
    let metrics = http_get(&pair.b.admin, "/metrics");
    let name = "standby_limit_hits_total{limit=\"http_head_timeout\"}";
    assert!(
        metric(&metrics, name).is_some_and(|n| n >= 1.0),
        "{name}:\n{metrics}"
    );
    let watched = watch(&pair, Duration::from_millis(300));
    assert_the_pair_held(&pair, &watched);
}

/// The messages a hostile stream is made of: the RFC 4475 torture messages and every
/// input the stream and front-end fuzzers keep (seeds, regressions).
fn torture_and_fuzz_messages() -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    for folder in [
        "tests/data/rfc4475",
        "fuzz/seeds/sip_stream",
        "fuzz/regressions/sip_stream",
        "fuzz/regressions/sip_front",
    ] {
        let mut paths: Vec<_> = std::fs::read_dir(repo().join(folder))
            .expect("corpus folder")
            .filter_map(|entry| Some(entry.ok()?.path()))
            .filter(|path| path.is_file() && path.extension().is_none_or(|e| e != "md"))
            .collect();
        paths.sort();
        messages.extend(
            paths
                .iter()
                .map(|path| std::fs::read(path).expect("message")),
        );
    }
    messages
}

/// A small seeded generator: the same pieces on every run, so a failure replays.
struct Pieces(u64);

impl Pieces {
    fn below(&mut self, bound: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}

/// Streams `messages` over and over to `listener` (TLS when `tls` is given) in pieces of
/// 1 to 300 bytes, reading whatever comes back, reconnecting whenever the node closes the
/// connection or is gone, until `stop`. Returns the bytes it sent.
async fn stream_in_pieces(
    listener: std::net::SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    messages: Arc<Vec<Vec<u8>>>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> u64 {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn drain<S: AsyncRead + Unpin>(mut reader: S) {
        let mut sink = [0u8; 4096];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    }
    async fn send<S: AsyncWrite + Unpin>(
        writer: &mut S,
        bytes: &[u8],
        pieces: &mut Pieces,
    ) -> std::io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let size = (pieces.below(300) as usize + 1).min(rest.len());
            writer.write_all(&rest[..size]).await?;
            writer.flush().await?;
            rest = &rest[size..];
            if pieces.below(4) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok(())
    }
    let mut pieces = Pieces(seed);
    let mut sent = 0u64;
    let mut next = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(tcp)) =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(listener)).await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (reader, mut writer): (
            Box<dyn AsyncRead + Unpin + Send>,
            Box<dyn AsyncWrite + Unpin + Send>,
        ) = match &tls {
            None => {
                let (reader, writer) = tcp.into_split();
                (Box::new(reader), Box::new(writer))
            }
            Some(connector) => {
                let name = rustls_pki_types::ServerName::IpAddress(listener.ip().into());
                let Ok(stream) = connector.connect(name, tcp).await else {
                    continue;
                };
                let (reader, writer) = tokio::io::split(stream);
                (Box::new(reader), Box::new(writer))
            }
        };
        let drained = tokio::spawn(drain(reader));
        while !stop.load(Ordering::Relaxed) {
            let message = &messages[next % messages.len()];
            next += 1;
            if send(&mut writer, message, &mut pieces).await.is_err() {
                break;
            }
            sent += message.len() as u64;
        }
        drained.abort();
    }
    sent
}

#[test]
fn torture_and_fuzz_messages_streamed_in_random_pieces_over_tcp_and_tls_survive_a_failover() {
    let _alone = one_at_a_time();
    let base = 21620;
    let certs = repo().join("certs");
    let options = Options {
        extra: format!(
            "[[frontend]]\nname = \"sip\"\nkind = \"sip\"\nlisten = \"{{me}}:{sip}\"\ntransports = [\"udp\", \"tcp\", \"tls\"]\ntls_listen = \"{{me}}:{tls}\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\ntarget = \"sip:{{me}}:{service}\"\ntls_target = \"sip:{{me}}:{tls_service};transport=tls\"\nudp_sockets = 1\n",
            sip = base + 4,
            tls = base + 5,
            service = base + 6,
            tls_service = base + 7,
            cert = certs.join("front.pem").display(),
            key = certs.join("front.key").display(),
        ),
        ..Options::default()
    };
    let mut pair = Pair::new("stream", base, options).started();
    let messages = Arc::new(torture_and_fuzz_messages());
    assert!(messages.len() > 40, "only {} messages", messages.len());
    let connector =
        standby_proxy::tls::client_connector(Some(&certs.join("ca.pem"))).expect("connector");
    let stop = Arc::new(AtomicBool::new(false));
    let mut streamers = Vec::new();
    for (seed, address) in ["127.0.0.1", "127.0.0.2"].into_iter().enumerate() {
        for (offset, tls) in [(4, None), (5, Some(connector.clone()))] {
            let listener = format!("{address}:{}", base + offset)
                .parse()
                .expect("addr");
            let seed = 0x5eed_0000 + (seed as u64) * 16 + u64::from(offset);
            let task = stream_in_pieces(listener, tls, messages.clone(), seed, stop.clone());
            streamers.push((listener, pair.runtime.spawn(task)));
        }
    }
    // Both nodes under the stream for a second, then the active node is killed, the
    // standby takes over, and the old active node comes back as standby: all under it.
    let before = watch(&pair, Duration::from_secs(1));
    assert_the_pair_held(&pair, &before);
    pair.a.kill();
    pair.wait("b active after a was killed", |p| is(p, "b", "active"));
    std::thread::sleep(Duration::from_millis(500));
    pair.a.start();
    pair.wait("a back as standby following b", |p| {
        p.status("a")
            .is_some_and(|a| a.role == "standby" && a.active_node.as_deref() == Some("b"))
    });
    // Still streamed at, the pair holds its new roles and answers.
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let (a, b) = (pair.status("a"), pair.status("b"));
        let roles = (a.map(|s| s.role), b.map(|s| s.role));
        assert_eq!(
            roles,
            (Some("standby".to_owned()), Some("active".to_owned())),
            "under the stream after the failover"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for (listener, streamer) in streamers {
        let sent = pair.runtime.block_on(streamer).expect("streamer");
        assert!(sent > 100_000, "only {sent} bytes reached {listener}");
    }
    for node in ["127.0.0.1", "127.0.0.2"] {
        let listener = format!("{node}:{}", base + 4);
        let answer = clean_sip_client_is_served("127.0.0.3", &listener)
            .unwrap_or_else(|e| panic!("{listener} no longer serves SIP over TCP: {e}"));
        let target = format!("127.0.0.2:{}", base + 6);
        assert!(answer.contains(&target), "not sent to b: {answer}");
    }
    for name in ["a", "b"] {
        let metrics = http_get(&pair.node(name).admin, "/metrics");
        let panics = sum_of(&metrics, "standby_front_panics_total", "");
        assert_eq!(panics, 0.0, "{name} panicked in a front end");
        let tls = sum_of(&metrics, "standby_tls_handshakes_total", "kind=\"sip_tls\"");
        assert!(tls > 0.0, "{name}: no SIP-TLS handshake\n{metrics}");
        let answered = sum_of(&metrics, "standby_sip_requests_total", "");
        assert!(answered > 100.0, "{name} answered {answered} requests");
        let took_over = sum_of(&metrics, "standby_transitions_total", "to=\"active\"");
        // b once, on a's death; a (a new process) never: it came back as standby.
        let expected = if name == "b" { 1.0 } else { 0.0 };
        assert_eq!(took_over, expected, "{name} went active {took_over} times");
        assert_heartbeats_were_fast(name, &metrics);
    }
}

#[test]
fn a_silent_forwarded_connection_is_closed_after_its_idle_timeout_a_talking_one_is_kept() {
    let _alone = one_at_a_time();
    use std::io::{BufRead, BufReader};
    let base = 21640;
    let (front, service) = (base + 4, base + 5);
    let options = Options {
        extra: format!(
            "[[frontend]]\nname = \"rfp\"\nkind = \"tcp\"\nlisten = \"{{me}}:{front}\"\ntarget = \"{{me}}:{service}\"\nidle_timeout = \"1s\"\n"
        ),
        ..Options::default()
    };
    let pair = Pair::new("tcp-idle", base, options);
    // An echo service behind a: it greets, echoes each line, and never closes first.
    let echo = std::net::TcpListener::bind(("127.0.0.1", service)).expect("echo");
    std::thread::spawn(move || {
        for stream in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone");
                let _ = writer.write_all(b"hello\n");
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = writer.write_all(format!("{line}\n").as_bytes());
                }
            });
        }
    });
    let pair = pair.started();
    let connect = || {
        let stream = std::net::TcpStream::connect(("127.0.0.2", front)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut greeting = String::new();
        reader.read_line(&mut greeting).expect("greeting");
        assert_eq!(greeting, "hello\n");
        (stream, reader)
    };
    let (_silent, mut silent_reader) = connect();
    let (mut talking, mut talking_reader) = connect();
    let started = Instant::now();
    // The talking one sends a line every 300 ms for 2.5 s and hears each one back.
    while started.elapsed() < Duration::from_millis(2500) {
        talking
            .write_all(b"keepalive\n")
            .expect("the talking connection was cut");
        let mut line = String::new();
        talking_reader.read_line(&mut line).expect("echo");
        assert_eq!(line, "keepalive\n");
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut rest = String::new();
    let ended = silent_reader.read_line(&mut rest);
    assert!(
        matches!(ended, Ok(0))
            || matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the silent connection is still open after {:?}: {ended:?}",
        started.elapsed()
    );
    let metrics = http_get(&pair.b.admin, "/metrics");
    assert!(
        metric(&metrics, "standby_limit_hits_total{limit=\"tcp_idle\"}").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

#[test]
fn a_sip_client_that_never_reads_its_answers_is_closed_after_the_write_timeout() {
    let _alone = one_at_a_time();
    let listen_port = 21666;
    let options = Options {
        extra: sip_front_end(listen_port, "write_timeout = \"1s\""),
        ..Options::default()
    };
    let pair = Pair::new("no-read", 21660, options).started();
    let listener: std::net::SocketAddr = format!("127.0.0.2:{listen_port}").parse().expect("addr");
    // A client that keeps asking and never reads: a small receive window fills at once.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(&listener.into()).expect("connect");
    let mut stream: std::net::TcpStream = socket.into();
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let request = |seq: u32| {
        format!("OPTIONS sip:4711@{listener} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.3:5060;branch=z9hG4bKnr{seq}\r\nMax-Forwards: 70\r\nFrom: <sip:1@127.0.0.3>;tag=1\r\nTo: <sip:4711@{listener}>\r\nCall-ID: noread-{seq}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    };
    let started = Instant::now();
    let mut seq = 0;
    let closed_after = loop {
        match stream.write_all(request(seq).as_bytes()) {
            Ok(()) => seq += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break started.elapsed(),
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "a client that never reads still holds its connection after {seq} requests"
        );
    };
    assert!(closed_after >= Duration::from_secs(1), "{closed_after:?}");
    clean_sip_client_is_served("127.0.0.4", &listener.to_string())
        .unwrap_or_else(|e| panic!("a clean client is not served: {e}"));
    let metrics = http_get(&pair.b.admin, "/metrics");
    let name = "standby_limit_hits_total{limit=\"sip_write_timeout\"}";
    assert!(
        metric(&metrics, name).is_some_and(|n| n >= 1.0),
        "{name}:\n{metrics}"
    );
    let watched = watch(&pair, Duration::from_millis(300));
    assert_the_pair_held(&pair, &watched);
}

/// Keeps `count` idle TCP connections (nothing sent, no TLS) from each of `sources` to each
/// of `targets` open, reopening any the node closes, until `stop`.
fn hold_idle_connections(
    sources: &'static [&'static str],
    targets: Vec<String>,
    count: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let open = |source: &str, target: &str| -> Option<std::net::TcpStream> {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            let local: std::net::SocketAddr = format!("{source}:0").parse().ok()?;
            socket.bind(&local.into()).ok()?;
            let remote: std::net::SocketAddr = target.parse().ok()?;
            socket
                .connect_timeout(&remote.into(), Duration::from_millis(200))
                .ok()?;
            let stream: std::net::TcpStream = socket.into();
            stream.set_nonblocking(true).ok()?;
            Some(stream)
        };
        let mut held: Vec<(usize, usize, Option<std::net::TcpStream>)> = Vec::new();
        for source in 0..sources.len() {
            for target in 0..targets.len() {
                held.extend((0..count).map(|_| (source, target, None)));
            }
        }
        let mut opened = 0;
        while !stop.load(Ordering::Relaxed) {
            for (source, target, stream) in &mut held {
                let closed = match stream {
                    None => true,
                    Some(open) => {
                        matches!(open.read(&mut [0u8; 16]), Ok(0))
                            || matches!(open.read(&mut [0u8; 0]), Err(ref e) if e.kind() != std::io::ErrorKind::WouldBlock)
                    }
                };
                if closed {
                    *stream = open(sources[*source], &targets[*target]);
                    opened += usize::from(stream.is_some());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        opened
    })
}

#[test]
fn idle_connections_held_on_the_peer_ports_do_not_split_the_pair_across_restarts() {
    let _alone = one_at_a_time();
    let base = 21680;
    let mut pair = Pair::new("peer-idle", base, Options::default()).started();
    let stop = Arc::new(AtomicBool::new(false));
    // 12 connections to each node's peer port from each node's own address (so from the
    // peer's address too) and from a stranger's, kept open.
    let attacker = hold_idle_connections(
        &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        vec![format!("127.0.0.1:{base}"), format!("127.0.0.2:{base}")],
        12,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let both_active = |pair: &Pair| is(pair, "a", "active") && is(pair, "b", "active");
    for restarted in ["b", "a", "b"] {
        // A restart of a standby: it must hear the active node within startup_wait.
        let node = if restarted == "a" {
            &mut pair.a
        } else {
            &mut pair.b
        };
        node.kill();
        if restarted == "a" {
            // a was active: b takes over first, then a comes back as its standby.
            pair.wait("b active", |p| is(p, "b", "active"));
        }
        let node = if restarted == "a" {
            &mut pair.a
        } else {
            &mut pair.b
        };
        node.start();
        let (active, standby) = if restarted == "a" {
            ("b", "a")
        } else {
            ("a", "b")
        };
        pair.wait(&format!("{restarted} back as standby"), |p| {
            is(p, standby, "standby")
        });
        // startup_wait (1 s) and a heartbeat past the restart: exactly one active, and it
        // stays so.
        let watched_until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < watched_until {
            assert!(
                !both_active(&pair),
                "both active after {restarted} restarted\n--- a ---\n{}\n--- b ---\n{}",
                pair.a.log(),
                pair.b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(is(&pair, active, "active") && is(&pair, standby, "standby"));
    }
    stop.store(true, Ordering::Relaxed);
    let opened = attacker.join().expect("attacker");
    assert!(
        opened >= 72,
        "the attacker opened only {opened} connections"
    );
    let metrics = http_get(&pair.a.admin, "/metrics");
    let strangers = "standby_peer_connections_total{direction=\"in\",result=\"stranger\"}";
    assert!(
        metric(&metrics, strangers).is_some_and(|n| n >= 24.0),
        "{metrics}"
    );
}

/// Runs tests/tools/h2_hostile.py against `port` on b (TLS, ALPN h2) and returns its verdict.
fn h2_hostile(port: u16, mode: &str, count: usize) -> serde_json::Value {
    let output = Command::new("python3")
        .arg(repo().join("tests/tools/h2_hostile.py"))
        .args(["127.0.0.2", &port.to_string(), mode, &count.to_string()])
        .output()
        .expect("python3 (tests/run-all.sh installs its h2 package)");
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{mode}: {e}: {text}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn http2_clients_resetting_streams_opening_too_many_or_sending_huge_headers_are_bounded() {
    let _alone = one_at_a_time();
    let (base, redirect, proxy, hung) = (21700, 21704, 21705, 21706);
    let certs = repo().join("certs");
    let front = |name: &str, port: u16, mode: &str, target: &str| {
        format!(
            "[[frontend]]\nname = \"{name}\"\nkind = \"http\"\nlisten = \"{{me}}:{port}\"\nmode = \"{mode}\"\ntarget = \"{target}\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n",
            cert = certs.join("front.pem").display(),
            key = certs.join("front.key").display(),
        )
    };
    // The proxy's active node never answers: its requests stay open until cancelled.
    let node = std::net::TcpListener::bind(("127.0.0.1", hung)).expect("hung node");
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = held.clone();
    std::thread::spawn(move || {
        for stream in node.incoming().flatten() {
            holder.lock().expect("held").push(stream);
        }
    });
    let options = Options {
        extra: front("portal", redirect, "redirect", "http://{me}:1")
            + &front(
                "portal-proxy",
                proxy,
                "proxy",
                &format!("http://{{me}}:{hung}"),
            ),
        ..Options::default()
    };
    let pair = Pair::new("h2", base, options).started();
    let hits = |limit: &str| {
        let metrics = http_get(&pair.b.admin, "/metrics");
        metric(
            &metrics,
            &format!("standby_limit_hits_total{{limit=\"{limit}\"}}"),
        )
        .unwrap_or(0.0)
    };

    // Rapid reset: streams opened and reset at once end the connection (GOAWAY
    // ENHANCE_YOUR_CALM, which the client may not get to read before the close) long before
    // 20,000 are through; only that reason is counted.
    let flood = h2_hostile(redirect, "reset-flood", 20_000);
    assert_eq!(flood["closed"], true, "{flood}");
    assert!(
        flood["goaway"].is_null() || flood["goaway"] == 0xb,
        "{flood}"
    );
    assert!(hits("http2_reset_flood") >= 1.0);
    // Streams the node takes and the client then cancels, hundreds a second: closed by us.
    let before = hits("http2_reset_flood");
    let cancels = h2_hostile(proxy, "cancel", 1000);
    assert_eq!(cancels["closed"], true, "{cancels}");
    assert!(hits("http2_reset_flood") > before);
    // More streams at once than the limit: the excess is refused, and counted.
    let streams = h2_hostile(proxy, "streams", 140);
    assert!(streams["refused"].as_u64() >= Some(12), "{streams}");
    assert!(hits("http2_concurrent_streams") >= 1.0);
    // A header list over 32 KiB: 431, counted.
    let huge = h2_hostile(redirect, "header-list", 40_000);
    assert_eq!(huge["status"], 431, "{huge}");
    assert!(hits("http2_header_list") >= 1.0);

    // Clean HTTP/2 and HTTP/1.1 clients are served all along.
    for version in ["--http2", "--http1.1"] {
        let output = Command::new("curl")
            .args([
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .arg(version)
            .arg(format!("https://127.0.0.2:{redirect}/clean"))
            .output()
            .expect("curl");
        let seen = String::from_utf8_lossy(&output.stdout);
        let expected = if version == "--http2" {
            "2 307"
        } else {
            "1.1 307"
        };
        assert_eq!(seen, expected);
    }
    let watched = watch(&pair, Duration::from_millis(300));
    assert_the_pair_held(&pair, &watched);
}
