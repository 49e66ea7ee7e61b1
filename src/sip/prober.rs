//! The registrar prober: SIP OPTIONS to each configured registrar, the election precondition.
//!
//! Each registrar URI gets its own task. Before every probe it resolves the URI (RFC 3263;
//! the resolver's cache re-resolves when a TTL runs out), then tries the candidates in order
//! until one gives a final answer whose code counts (by default: any final answer, since many
//! registrars answer OPTIONS with 4xx). UDP retransmits on RFC 3261 timer E, doubling from T1
//! up to T2, but within the prober's own total timeout: Timer F's 32 s is far too slow for an
//! election. Each registrar's state flips only after `rise`/`fall` results in a row; the group
//! is reachable by the rule `any` or `all`, and only its flips reach the engine.

use super::framing::{self, Frame};
use super::options::Probe;
use super::resolve::{self, Candidate};
use super::uri::SipUri;
use super::{TokenSource, Transport};
use crate::thresholds::Thresholds;
use hickory_resolver::TokioResolver;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, info_span, warn, Instrument};

/// RFC 3261 T2: the longest retransmission interval.
const T2: Duration = Duration::from_secs(4);
/// Largest answer read over a stream.
pub const MAX_ANSWER: usize = 64 * 1024;

/// How the group of registrars counts as reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// At least one registrar answers.
    Any,
    /// Every registrar answers.
    All,
}

/// What the prober needs to know.
#[derive(Debug, Clone)]
pub struct ProberConfig {
    /// The registrars.
    pub targets: Vec<SipUri>,
    /// `any` or `all`.
    pub rule: Rule,
    /// Time from one probe's start to the next.
    pub interval: Duration,
    /// Longest a probe of one candidate may take, retransmissions included.
    pub timeout: Duration,
    /// First UDP retransmission interval (RFC 3261 T1).
    pub t1: Duration,
    /// Answers in a row before a registrar counts as reachable.
    pub rise: u32,
    /// Failures in a row before it counts as unreachable.
    pub fall: u32,
    /// Status codes that count; empty: any final answer.
    pub codes: Vec<u16>,
}

/// One registrar as last probed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetStatus {
    /// The configured URI.
    pub uri: String,
    /// After thresholds; `None` until decided.
    pub reachable: Option<bool>,
    /// Transport and address that answered last (or was tried last).
    pub target: Option<String>,
    /// Round trip of the last answered probe.
    pub rtt: Option<Duration>,
    /// Status code of the last answer.
    pub last_code: Option<u16>,
    /// Why the last probe failed, if it did.
    pub last_error: Option<String>,
}

/// The group as last probed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProberStatus {
    /// The group by its rule; `None` until decided.
    pub reachable: Option<bool>,
    /// Each registrar.
    pub targets: Vec<TargetStatus>,
}

/// Starts the prober of `config` with its resolver and, when a target may need it, a TLS
/// client; returns the group's flips and the newest status. Without a registrar the flips
/// channel is closed at once and the status stays empty.
pub fn start(
    config: Option<crate::config::RegistrarConfig>,
) -> Result<(mpsc::Receiver<bool>, watch::Receiver<ProberStatus>), resolve::ResolveError> {
    let (flips_tx, flips) = mpsc::channel::<bool>(4);
    let (status_tx, status) = watch::channel(ProberStatus::default());
    let Some(registrar) = config else {
        return Ok((flips, status));
    };
    let resolver = resolve::resolver(registrar.nameserver)?;
    // A target without a port may resolve (NAPTR) to TLS.
    let needs_tls = registrar
        .prober
        .targets
        .iter()
        .any(|uri| uri.secure || uri.transport == Some(Transport::Tls) || uri.port.is_none());
    let tls = if needs_tls {
        match crate::tls::client_connector(registrar.ca.as_deref()) {
            Ok(connector) => Some(connector),
            Err(reason) => {
                warn!(%reason, "no TLS client for the registrar; TLS candidates will fail");
                None
            }
        }
    } else {
        None
    };
    spawn(registrar.prober, resolver, tls, flips_tx, status_tx);
    Ok((flips, status))
}

/// Starts one task per registrar and combines them; flips of the group go to `flips`, every
/// result to `status`.
pub fn spawn(
    config: ProberConfig,
    resolver: TokioResolver,
    tls: Option<TlsConnector>,
    flips: mpsc::Sender<bool>,
    status: watch::Sender<ProberStatus>,
) {
    let (updates_tx, mut updates_rx) = mpsc::channel::<(usize, TargetStatus)>(16);
    let resolver = Arc::new(resolver);
    let config = Arc::new(config);
    status.send_replace(ProberStatus {
        reachable: None,
        targets: config
            .targets
            .iter()
            .map(|uri| TargetStatus {
                uri: uri.to_string(),
                ..TargetStatus::default()
            })
            .collect(),
    });
    for (index, uri) in config.targets.iter().enumerate() {
        let span = info_span!("registrar", uri = %uri);
        tokio::spawn(
            probe_loop(
                index,
                uri.clone(),
                config.clone(),
                resolver.clone(),
                tls.clone(),
                updates_tx.clone(),
            )
            .instrument(span),
        );
    }
    let rule = config.rule;
    tokio::spawn(async move {
        let mut group = None;
        while let Some((index, target)) = updates_rx.recv().await {
            let mut current = status.borrow().clone();
            if let Some(slot) = current.targets.get_mut(index) {
                *slot = target;
            }
            let states: Vec<Option<bool>> = current.targets.iter().map(|t| t.reachable).collect();
            let decided = combine(rule, &states);
            current.reachable = decided;
            status.send_replace(current);
            if decided.is_some() && decided != group {
                group = decided;
                if let Some(reachable) = decided {
                    info!(reachable, "registrar group changed");
                    if flips.send(reachable).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// The group's state by `rule`; `None` while it cannot be decided yet.
pub fn combine(rule: Rule, states: &[Option<bool>]) -> Option<bool> {
    match rule {
        Rule::Any if states.contains(&Some(true)) => Some(true),
        Rule::Any if states.iter().all(|s| *s == Some(false)) => Some(false),
        Rule::All if states.contains(&Some(false)) => Some(false),
        Rule::All if states.iter().all(|s| *s == Some(true)) => Some(true),
        _ => None,
    }
}

async fn probe_loop(
    index: usize,
    uri: SipUri,
    config: Arc<ProberConfig>,
    resolver: Arc<TokioResolver>,
    tls: Option<TlsConnector>,
    updates: mpsc::Sender<(usize, TargetStatus)>,
) {
    let mut tokens = TokenSource::new();
    let mut thresholds = Thresholds::new(config.rise, config.fall);
    let mut status = TargetStatus {
        uri: uri.to_string(),
        ..TargetStatus::default()
    };
    let mut cseq: u32 = 0;
    loop {
        let started = Instant::now();
        cseq = cseq.wrapping_add(1);
        let outcome = probe(&uri, &config, &resolver, tls.as_ref(), &mut tokens, cseq).await;
        let passed = match &outcome {
            Ok(answer) => config.codes.is_empty() || config.codes.contains(&answer.code),
            Err(_) => false,
        };
        crate::telemetry::registrar_probe(started.elapsed(), passed);
        match outcome {
            Ok(answer) => {
                status.target = Some(answer.target);
                status.rtt = Some(answer.rtt);
                status.last_code = Some(answer.code);
                status.last_error =
                    (!passed).then(|| format!("answered {}, which does not count", answer.code));
            }
            Err(failure) => {
                status.target = failure.target;
                status.last_error = Some(failure.reason);
            }
        }
        if let Some(reachable) = thresholds.record(passed) {
            status.reachable = Some(reachable);
            if reachable {
                info!(target = ?status.target, "registrar reachable");
            } else {
                warn!(error = ?status.last_error, "registrar unreachable");
            }
        } else {
            debug!(passed, "registrar probe");
        }
        if updates.send((index, status.clone())).await.is_err() {
            return;
        }
        tokio::time::sleep_until(started + config.interval).await;
    }
}

/// A final answer to one probe.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status code.
    pub code: u16,
    /// Request to answer.
    pub rtt: Duration,
    /// Transport and address that answered.
    pub target: String,
}

/// Why a probe failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The last candidate tried, if any.
    pub target: Option<String>,
    /// What went wrong (with every candidate).
    pub reason: String,
}

fn describe(candidate: &Candidate) -> String {
    format!("{} {}", candidate.transport.via_name(), candidate.addr)
}

/// Resolves `uri` and tries its candidates in order until one answers.
pub async fn probe(
    uri: &SipUri,
    config: &ProberConfig,
    resolver: &TokioResolver,
    tls: Option<&TlsConnector>,
    tokens: &mut TokenSource,
    cseq: u32,
) -> Result<Answer, Failure> {
    let candidates = resolve::resolve(uri, resolver, tokens)
        .await
        .map_err(|e| Failure {
            target: None,
            reason: e.to_string(),
        })?;
    let mut reasons = Vec::new();
    let mut last = None;
    for candidate in &candidates {
        let target = describe(candidate);
        match exchange(uri, candidate, config, tls, tokens, cseq).await {
            Ok((code, rtt)) => return Ok(Answer { code, rtt, target }),
            Err(reason) => {
                debug!(%target, %reason, "candidate failed; trying the next");
                reasons.push(format!("{target}: {reason}"));
                last = Some(target);
            }
        }
    }
    Err(Failure {
        target: last,
        reason: reasons.join("; "),
    })
}

/// Sends one OPTIONS to one candidate; its final answer's code and the round trip.
pub async fn exchange(
    uri: &SipUri,
    candidate: &Candidate,
    config: &ProberConfig,
    tls: Option<&TlsConnector>,
    tokens: &mut TokenSource,
    cseq: u32,
) -> Result<(u16, Duration), String> {
    let deadline = Instant::now() + config.timeout;
    let within = |what: &'static str| {
        move |_| {
            format!(
                "no {what} within {}",
                humantime::format_duration(config.timeout)
            )
        }
    };
    match candidate.transport {
        Transport::Udp => udp(uri, candidate.addr, config, tokens, cseq, deadline).await,
        Transport::Tcp => {
            let stream = tokio::time::timeout_at(deadline, TcpStream::connect(candidate.addr))
                .await
                .map_err(within("connection"))?
                .map_err(|e| format!("connect: {e}"))?;
            let local = stream.local_addr().map_err(|e| e.to_string())?;
            let probe = Probe::new(uri, Transport::Tcp, local, cseq, tokens);
            tokio::time::timeout_at(deadline, stream_exchange(stream, &probe))
                .await
                .map_err(within("answer"))?
        }
        Transport::Tls => {
            let connector = tls.ok_or("TLS transport without a TLS client (see registrar.ca)")?;
            let name = rustls::pki_types::ServerName::try_from(candidate.server_name.clone())
                .map_err(|e| {
                    format!("{:?} is not a TLS server name: {e}", candidate.server_name)
                })?;
            let attempt = async {
                let tcp = TcpStream::connect(candidate.addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let local = tcp.local_addr().map_err(|e| e.to_string())?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                crate::tls::count_handshake("registrar", stream.get_ref().1);
                let probe = Probe::new(uri, Transport::Tls, local, cseq, tokens);
                stream_exchange(stream, &probe).await
            };
            tokio::time::timeout_at(deadline, attempt)
                .await
                .map_err(within("answer"))?
        }
    }
}

/// UDP with timer E: resend after T1, 2·T1, 4·T1, ... (at most T2) until the deadline.
async fn udp(
    uri: &SipUri,
    addr: SocketAddr,
    config: &ProberConfig,
    tokens: &mut TokenSource,
    cseq: u32,
    deadline: Instant,
) -> Result<(u16, Duration), String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("bind: {e}"))?;
    // Connected: the kernel picks the source address for the Via, and an ICMP "port
    // unreachable" fails the probe at once instead of at the timeout.
    socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let probe = Probe::new(uri, Transport::Udp, local, cseq, tokens);
    let started = Instant::now();
    let mut interval = config.t1;
    let mut next_send = started;
    let mut buffer = vec![0u8; 65_535];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "no answer within {}",
                humantime::format_duration(config.timeout)
            ));
        }
        if now >= next_send {
            socket
                .send(&probe.bytes)
                .await
                .map_err(|e| format!("send: {e}"))?;
            next_send = now + interval;
            interval = (interval * 2).min(T2);
        }
        match tokio::time::timeout_at(next_send.min(deadline), socket.recv(&mut buffer)).await {
            Ok(Ok(length)) => {
                if let Some(code) = probe.final_answer(&buffer[..length]) {
                    return Ok((code, started.elapsed()));
                }
            }
            Ok(Err(error)) => return Err(format!("receive: {error}")),
            Err(_) => {} // time to retransmit, or the deadline
        }
    }
}

/// Writes the request on a stream and reads answers until this probe's final one.
async fn stream_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    probe: &Probe,
) -> Result<(u16, Duration), String> {
    let started = Instant::now();
    stream
        .write_all(&probe.bytes)
        .await
        .map_err(|e| format!("send: {e}"))?;
    stream.flush().await.map_err(|e| format!("send: {e}"))?;
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(code) = take_answers(&mut buffer, probe)? {
            return Ok((code, started.elapsed()));
        }
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if read == 0 {
            return Err("connection closed before an answer".to_owned());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Takes every complete message off the front of `buffer` (what a registrar sent on a
/// stream): the probe's final answer if one is there, `None` to read more, or why the
/// stream is unusable. The buffer never holds more than [`MAX_ANSWER`] after this returns
/// `Ok(None)`. Sans-IO, so the fuzzer (`prober_stream`) drives it directly.
pub fn take_answers(buffer: &mut Vec<u8>, probe: &Probe) -> Result<Option<u16>, String> {
    loop {
        match framing::next(buffer, MAX_ANSWER) {
            Frame::Complete(end) => {
                if let Some(code) = probe.final_answer(&buffer[..end]) {
                    return Ok(Some(code));
                }
                buffer.drain(..end);
            }
            Frame::Incomplete => return Ok(None),
            Frame::TooLarge => {
                crate::telemetry::limit_hit("sip_message");
                return Err(format!("answer over {MAX_ANSWER} bytes"));
            }
            Frame::Unframeable(error) => return Err(format!("unreadable answer: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::scan::{self, Name};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn config(timeout_ms: u64) -> ProberConfig {
        ProberConfig {
            targets: Vec::new(),
            rule: Rule::Any,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(timeout_ms),
            t1: Duration::from_millis(20),
            rise: 1,
            fall: 1,
            codes: Vec::new(),
        }
    }

    /// The answer a registrar would give to `request`, with `code` and `branch`.
    fn answer_to(request: &[u8], code: u16, branch: Option<&str>) -> Vec<u8> {
        let message = scan::scan(request).expect("request scans");
        let via = scan::top_via(message.head).expect("via");
        let via = match branch {
            Some(branch) => format!("SIP/2.0/UDP 127.0.0.1:1;branch={branch}"),
            None => String::from_utf8_lossy(via).into_owned(),
        };
        let call_id =
            String::from_utf8_lossy(scan::first(message.head, Name::CallId).expect("call-id"));
        format!("SIP/2.0 {code} X\r\nVia: {via}\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").into_bytes()
    }

    /// A UDP registrar that ignores the first `silent` requests, then first sends an answer
    /// with a foreign branch, then the right one.
    async fn udp_registrar(silent: usize, code: u16) -> (SocketAddr, Arc<AtomicUsize>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let received = Arc::new(AtomicUsize::new(0));
        let count = received.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 65_535];
            while let Ok((length, from)) = socket.recv_from(&mut buffer).await {
                if count.fetch_add(1, Ordering::SeqCst) < silent {
                    continue;
                }
                let request = &buffer[..length];
                let _ = socket
                    .send_to(&answer_to(request, 200, Some("z9hG4bKforeign")), from)
                    .await;
                let _ = socket.send_to(&answer_to(request, code, None), from).await;
            }
        });
        (addr, received)
    }

    fn candidate(transport: Transport, addr: SocketAddr) -> Candidate {
        Candidate {
            transport,
            addr,
            server_name: addr.ip().to_string(),
        }
    }

    #[tokio::test]
    async fn udp_retransmits_on_timer_e_until_answered() {
        let (addr, received) = udp_registrar(2, 200).await;
        let uri: SipUri = format!("sip:{addr}").parse().expect("uri");
        let answer = exchange(
            &uri,
            &candidate(Transport::Udp, addr),
            &config(1000),
            None,
            &mut TokenSource::new(),
            1,
        )
        .await
        .expect("answered on the third transmission");
        assert_eq!(answer.0, 200);
        assert_eq!(received.load(Ordering::SeqCst), 3);
        // Sent at 0, T1 and 3·T1 (T1 = 20ms): the answer came after about 60ms.
        assert!(answer.1 >= Duration::from_millis(55), "{:?}", answer.1);
    }

    #[tokio::test]
    async fn udp_gives_up_at_its_own_timeout_and_a_foreign_answer_does_not_count() {
        let (addr, received) = udp_registrar(usize::MAX, 200).await;
        let uri: SipUri = format!("sip:{addr}").parse().expect("uri");
        let error = exchange(
            &uri,
            &candidate(Transport::Udp, addr),
            &config(200),
            None,
            &mut TokenSource::new(),
            1,
        )
        .await
        .expect_err("never answered");
        assert!(error.contains("no answer within 200ms"), "{error}");
        // 0, 20, 60, 140ms: four transmissions before the 200ms deadline.
        assert_eq!(received.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_4xx_answer_counts_as_reachable() {
        let (addr, _) = udp_registrar(0, 404).await;
        let uri: SipUri = format!("sip:{addr}").parse().expect("uri");
        let answer = exchange(
            &uri,
            &candidate(Transport::Udp, addr),
            &config(500),
            None,
            &mut TokenSource::new(),
            1,
        )
        .await;
        assert_eq!(answer.map(|a| a.0), Ok(404));
    }

    #[tokio::test]
    async fn tcp_skips_provisional_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut request = vec![0u8; 4096];
                let length = socket.read(&mut request).await.unwrap_or(0);
                let request = &request[..length];
                let mut both = answer_to(request, 100, None);
                both.extend(answer_to(request, 200, None));
                // Split mid-message to exercise reassembly.
                let (first, second) = both.split_at(both.len() / 2 + 7);
                let _ = socket.write_all(first).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = socket.write_all(second).await;
            }
        });
        let uri: SipUri = format!("sip:{addr};transport=tcp").parse().expect("uri");
        let answer = exchange(
            &uri,
            &candidate(Transport::Tcp, addr),
            &config(1000),
            None,
            &mut TokenSource::new(),
            1,
        )
        .await;
        assert_eq!(answer.map(|a| a.0), Ok(200));
    }

    #[tokio::test]
    async fn a_closed_port_fails_fast_and_the_next_candidate_is_tried() {
        // Find a UDP port with nobody on it.
        let closed = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr");
        let (open, _) = udp_registrar(0, 200).await;
        let uri: SipUri = "sip:127.0.0.1".parse().expect("uri");
        let mut tokens = TokenSource::new();
        let mut failures = Vec::new();
        for addr in [closed, open] {
            match exchange(
                &uri,
                &candidate(Transport::Udp, addr),
                &config(1000),
                None,
                &mut tokens,
                1,
            )
            .await
            {
                Ok((code, rtt)) => {
                    assert_eq!(code, 200);
                    assert!(rtt < Duration::from_millis(500));
                    break;
                }
                Err(reason) => failures.push(reason),
            }
        }
        assert_eq!(failures.len(), 1);
        assert!(failures[0].contains("refused"), "{failures:?}");
    }

    #[test]
    fn group_rules() {
        use Rule::{All, Any};
        assert_eq!(combine(Any, &[Some(false), Some(true)]), Some(true));
        assert_eq!(combine(Any, &[Some(false), None]), None);
        assert_eq!(combine(Any, &[Some(false), Some(false)]), Some(false));
        assert_eq!(combine(All, &[Some(true), Some(false)]), Some(false));
        assert_eq!(combine(All, &[Some(true), None]), None);
        assert_eq!(combine(All, &[Some(true), Some(true)]), Some(true));
    }

    /// SIP over TLS to a registrar with the pair's front certificate (valid for localhost):
    /// answered when its CA is trusted, refused when it is not.
    #[tokio::test]
    async fn tls_verifies_the_registrar_and_gets_its_answer() {
        use crate::tls::{client_connector, load_certs, load_key};
        let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            load_certs(&certs.join("front.pem")).expect("cert"),
            load_key(&certs.join("front.key")).expect("key"),
        )
        .expect("server");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(socket).await {
                        let mut request = vec![0u8; 4096];
                        let length = tls.read(&mut request).await.unwrap_or(0);
                        let _ = tls
                            .write_all(&answer_to(&request[..length], 200, None))
                            .await;
                        let _ = tls.flush().await;
                    }
                });
            }
        });
        let uri: SipUri = format!("sips:localhost:{}", addr.port())
            .parse()
            .expect("uri");
        let target = Candidate {
            transport: Transport::Tls,
            addr,
            server_name: "localhost".into(),
        };
        let trusted = client_connector(Some(&certs.join("ca.pem"))).expect("connector");
        let answer = exchange(
            &uri,
            &target,
            &config(1000),
            Some(&trusted),
            &mut TokenSource::new(),
            1,
        )
        .await;
        assert_eq!(answer.map(|a| a.0), Ok(200));
        let untrusted = client_connector(Some(&certs.join("a.pem"))).expect("connector");
        let refused = exchange(
            &uri,
            &target,
            &config(1000),
            Some(&untrusted),
            &mut TokenSource::new(),
            1,
        )
        .await;
        assert!(refused.is_err_and(|e| e.contains("TLS")));
    }
}
