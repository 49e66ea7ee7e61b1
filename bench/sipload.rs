//! sipload: an open-loop SIP load generator over UDP, so that bench/sip measures the server
//! and not sipp.
//!
//!     sipload --scenario redirect|options|call --target 127.0.0.1:25800 --rate 20000
//!             --seconds 4 [--local 127.0.0.1:25810] [--sockets 8] [--uas 127.0.0.1:25830]
//!             [--threads 1] [--t1-ms 500] [--timeout-ms 2000] [--tick-us 200]
//!
//! Scenarios (every request goes to `--target`):
//! - `redirect`: INVITE -> 302 -> ACK (the ACK of a non-2xx answer: same branch, the 302's To).
//! - `options`: OPTIONS -> 200.
//! - `call`: INVITE (with SDP) -> (1xx) -> 200 -> ACK, BYE -> 200, through a proxy to the
//!   UAS this program runs itself on `--uas`, so the whole call is counted here. The UAS
//!   answers INVITE and BYE with 200 (To tag `UAS_TAG`), absorbs ACK, and answers to the
//!   datagram's source (what `rport` asks for, and where both proxies' Via points).
//!
//! Open loop: call n of socket i is due at (n * sockets + i) / rate seconds from the start,
//! whether or not earlier calls were answered. One thread (`--threads`) drives all sockets on
//! a strict tick (`--tick-us`, 200 µs): each tick it sends every call due by then and reads
//! every answer waiting on each socket, so wake-ups cost the same at any rate, and servers
//! see small bursts rather than one wake-up per datagram. Latencies are therefore rounded
//! up to about a tick. Several sockets (`--sockets`, 8) are several sources, which a server
//! with `SO_REUSEPORT` sockets spreads over its workers. Messages are templates made once
//! per socket, with the call's 14-hex-digit id (socket, sequence number) written into the
//! branch, Call-ID and From tag, so an answer is matched to its call by the branch of its top
//! Via alone (the letter after `z9hG4bK` names the transaction: i, a, b, o).
//!
//! Retransmission and timeout (per transaction, as RFC 3261 timers A/E with our own bound):
//! a request without a final answer is sent again after T1 (`--t1-ms`, 500 ms), then after
//! twice the previous interval (capped at 4 s); a transaction still unanswered `--timeout-ms`
//! (2 s) after its first sending fails its call. A call is completed when its last answer
//! came (302, OPTIONS 200, BYE 200). An answer to an already answered transaction counts as
//! a duplicate (expected after a retransmission); any other message (a request, a status
//! other than the one expected, an unknown branch) counts as unexpected.
//!
//! Prints one JSON line: calls sent, completed, failed, unexpected, duplicates,
//! retransmissions, the rate actually achieved, latency p50/p99 (from a call's first request
//! to its last answer, in microseconds), this program's own CPU per call, and the UAS's
//! counts. Exits 0 whatever the figures; the caller judges them.

// A load generator runs on the real clock (the project's clippy.toml bans it for the engine).
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The To tag our UAS puts on its answers, so the in-dialog ACK and BYE are precomputed too.
const UAS_TAG: &str = "sipload-uas";
/// Where the call id goes in a template (14 hex digits: socket, then sequence number).
const ID_MARK: &str = "@@@@@@@@@@@@@@";
/// The longest interval between retransmissions (RFC 3261 T2).
const T2_US: u64 = 4_000_000;
/// How often outstanding transactions are checked for retransmission and timeout.
const SCAN_EVERY_US: u64 = 10_000;
/// A small SDP offer, as a real INVITE carries one.
const SDP: &str = "v=0\r\no=sipload 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
t=0 0\r\nm=audio 6000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Redirect,
    Options,
    Call,
}

#[derive(Clone)]
struct Settings {
    scenario: Scenario,
    target: SocketAddr,
    /// The first client socket's address; socket i binds port + i.
    local: SocketAddr,
    sockets: usize,
    /// Threads sharing the sockets (one is plenty when pinned to one core).
    threads: usize,
    rate: f64,
    seconds: f64,
    uas: Option<SocketAddr>,
    t1_us: u64,
    timeout_us: u64,
    tick_us: u64,
}

fn main() {
    let settings = match parse_args(std::env::args().skip(1)) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("sipload: {message}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(&settings) {
        eprintln!("sipload: {error}");
        std::process::exit(1);
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Settings, String> {
    let mut settings = Settings {
        scenario: Scenario::Redirect,
        target: "127.0.0.1:25800".parse().expect("literal"),
        local: "127.0.0.1:25810".parse().expect("literal"),
        sockets: 8,
        threads: 1,
        rate: 1000.0,
        seconds: 1.0,
        uas: None,
        t1_us: 500_000,
        timeout_us: 2_000_000,
        tick_us: 200,
    };
    while let Some(key) = args.next() {
        let value = args.next().ok_or(format!("{key} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{key} {value}: {e}");
        match key.as_str() {
            "--scenario" => {
                settings.scenario = match value.as_str() {
                    "redirect" => Scenario::Redirect,
                    "options" => Scenario::Options,
                    "call" => Scenario::Call,
                    _ => return Err(bad(&"redirect, options or call")),
                }
            }
            "--target" => settings.target = value.parse().map_err(|e| bad(&e))?,
            "--local" => settings.local = value.parse().map_err(|e| bad(&e))?,
            "--sockets" => settings.sockets = value.parse().map_err(|e| bad(&e))?,
            "--threads" => settings.threads = value.parse().map_err(|e| bad(&e))?,
            "--rate" => settings.rate = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => settings.seconds = value.parse().map_err(|e| bad(&e))?,
            "--uas" => settings.uas = Some(value.parse().map_err(|e| bad(&e))?),
            "--t1-ms" => settings.t1_us = millis(&value).map_err(|e| bad(&e))?,
            "--timeout-ms" => settings.timeout_us = millis(&value).map_err(|e| bad(&e))?,
            "--tick-us" => settings.tick_us = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {key}")),
        }
    }
    if settings.scenario == Scenario::Call && settings.uas.is_none() {
        return Err("--scenario call needs --uas".into());
    }
    if settings.sockets == 0 || settings.sockets > 255 || settings.rate <= 0.0 {
        return Err("--sockets 1..255 and --rate > 0".into());
    }
    if settings.threads == 0 || settings.threads > settings.sockets {
        return Err("--threads 1..sockets".into());
    }
    Ok(settings)
}

fn millis(value: &str) -> Result<u64, std::num::ParseIntError> {
    Ok(value.parse::<u64>()?.saturating_mul(1000))
}

fn run(settings: &Settings) -> std::io::Result<()> {
    // Pacing sleeps are short: ask the kernel not to stretch them by its default 50 µs.
    // SAFETY: prctl with an integer argument touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000) };
    let cpu_before = own_cpu_us();
    let stop = Arc::new(AtomicBool::new(false));
    let uas = match settings.uas {
        Some(addr) => {
            let socket = udp_socket(addr)?;
            let stop = stop.clone();
            Some(thread::spawn(move || Uas::default().serve(&socket, &stop)))
        }
        None => None,
    };
    let start = Instant::now() + Duration::from_millis(20);
    let mut workers: Vec<Worker> = (0..settings.threads)
        .map(|_| Worker {
            clients: Vec::new(),
            tick_us: settings.tick_us,
        })
        .collect();
    for index in 0..settings.sockets {
        let addr = SocketAddr::new(settings.local.ip(), settings.local.port() + index as u16);
        let client = Client::new(settings, index, udp_socket(addr)?)?;
        workers[index % settings.threads].clients.push(client);
    }
    let handles: Vec<_> = workers
        .into_iter()
        .map(|worker| thread::spawn(move || worker.run(start)))
        .collect();
    let mut total = Totals::default();
    for handle in handles {
        total.add(handle.join().expect("worker thread"));
    }
    stop.store(true, Ordering::Relaxed);
    let uas = uas.map(|handle| handle.join().expect("uas thread"));
    let cpu_us = own_cpu_us() - cpu_before;
    println!("{}", total.json(settings, cpu_us, uas.as_ref()));
    Ok(())
}

/// A UDP socket with a receive buffer large enough for bursts (as the servers have).
fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_recv_buffer_size(4 << 20)?;
    socket.set_send_buffer_size(4 << 20)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// User + system CPU of this whole process, in microseconds.
fn own_cpu_us() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// A message made once, with the places where each call's id goes.
struct Template {
    bytes: Vec<u8>,
    id_at: Vec<usize>,
}

impl Template {
    fn new(text: &str) -> Template {
        let id_at = text.match_indices(ID_MARK).map(|(at, _)| at).collect();
        Template {
            bytes: text.as_bytes().to_vec(),
            id_at,
        }
    }

    /// Appends this message with `id` written in.
    fn append(&self, id: &[u8; 14], out: &mut Vec<u8>) {
        let base = out.len();
        out.extend_from_slice(&self.bytes);
        for &at in &self.id_at {
            out[base + at..base + at + 14].copy_from_slice(id);
        }
    }
}

/// The requests of one socket's calls.
struct Templates {
    /// INVITE or OPTIONS: what starts a call.
    first: Template,
    /// Redirect: the ACK up to its To header, which is the 302's; call: the whole ACK.
    ack: Template,
    ack_tail: Template,
    bye: Template,
}

impl Templates {
    fn new(scenario: Scenario, local: SocketAddr, target: SocketAddr) -> Templates {
        let via = |kind: char| {
            format!("Via: SIP/2.0/UDP {local};branch=z9hG4bK{kind}{ID_MARK};rport\r\n")
        };
        let common = format!(
            "Max-Forwards: 70\r\nFrom: <sip:sipload@{local}>;tag={ID_MARK}\r\nCall-ID: {ID_MARK}@sipload\r\n"
        );
        let to = format!("To: <sip:service@{target}>");
        let uri = format!("sip:service@{target}");
        let contact = format!("Contact: <sip:sipload@{local}>\r\n");
        let request = |method: &str, kind: char, to: &str, cseq: &str, tail: &str| {
            // OPTIONS is to the server itself (no user part), which answers it.
            let uri = if method == "OPTIONS" {
                format!("sip:{target}")
            } else {
                uri.clone()
            };
            format!(
                "{method} {uri} SIP/2.0\r\n{}{common}{to}\r\nCSeq: {cseq}\r\n{tail}",
                via(kind)
            )
        };
        let empty = "Content-Length: 0\r\n\r\n";
        let sdp = format!(
            "{contact}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
            SDP.len()
        );
        let dialog_to = format!("{to};tag={UAS_TAG}");
        match scenario {
            Scenario::Redirect => Templates {
                first: Template::new(&request(
                    "INVITE",
                    'i',
                    &to,
                    "1 INVITE",
                    &format!("{contact}{empty}"),
                )),
                // The To header is spliced between these two: the 302's, with its tag.
                ack: Template::new(&format!("ACK {uri} SIP/2.0\r\n{}{common}", via('i'))),
                ack_tail: Template::new(&format!("CSeq: 1 ACK\r\n{empty}")),
                bye: Template::new(""),
            },
            Scenario::Options => Templates {
                first: Template::new(&request("OPTIONS", 'o', &to, "1 OPTIONS", empty)),
                ack: Template::new(""),
                ack_tail: Template::new(""),
                bye: Template::new(""),
            },
            Scenario::Call => Templates {
                first: Template::new(&request("INVITE", 'i', &to, "1 INVITE", &sdp)),
                ack: Template::new(&request("ACK", 'a', &dialog_to, "1 ACK", empty)),
                ack_tail: Template::new(""),
                bye: Template::new(&request("BYE", 'b', &dialog_to, "2 BYE", empty)),
            },
        }
    }
}

/// Where a call is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The first request (INVITE or OPTIONS) awaits its final answer.
    First,
    /// Call scenario: the BYE awaits its 200.
    Bye,
    Completed,
    Failed,
}

/// One call, times in microseconds since the client's start.
#[derive(Clone, Copy)]
struct Slot {
    phase: Phase,
    started: u64,
    /// When the current transaction was first sent.
    phase_sent: u64,
    next_retransmit: u64,
    interval: u64,
}

#[derive(Default)]
struct Totals {
    sent: u64,
    completed: u64,
    failed: u64,
    unexpected: u64,
    duplicates: u64,
    provisional: u64,
    retransmissions: u64,
    latencies_us: Vec<u64>,
    first_send: Option<Instant>,
    last_send: Option<Instant>,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.sent += other.sent;
        self.completed += other.completed;
        self.failed += other.failed;
        self.unexpected += other.unexpected;
        self.duplicates += other.duplicates;
        self.provisional += other.provisional;
        self.retransmissions += other.retransmissions;
        self.latencies_us.extend(other.latencies_us);
        self.first_send = min_some(self.first_send, other.first_send, |a, b| a.min(b));
        self.last_send = min_some(self.last_send, other.last_send, |a, b| a.max(b));
    }

    fn json(&mut self, settings: &Settings, cpu_us: u64, uas: Option<&Uas>) -> String {
        self.latencies_us.sort_unstable();
        let percentile = |p: f64| -> u64 {
            let n = self.latencies_us.len();
            if n == 0 {
                return 0;
            }
            self.latencies_us[((n as f64 * p) as usize).min(n - 1)]
        };
        let span = match (self.first_send, self.last_send) {
            (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
            _ => 0.0,
        };
        // n calls sent over a span of n - 1 intervals.
        let achieved = if span > 0.0 {
            (self.sent.saturating_sub(1)) as f64 / span
        } else {
            0.0
        };
        let uas = uas.map_or("null".to_string(), Uas::json);
        format!(
            "{{\"scenario\":\"{:?}\",\"rate\":{},\"seconds\":{},\"sockets\":{},\"sent\":{},\
             \"completed\":{},\"failed\":{},\"unexpected\":{},\"duplicates\":{},\
             \"provisional\":{},\"retransmissions\":{},\"achieved_rate\":{:.0},\"p50_us\":{},\
             \"p99_us\":{},\"generator_cpu_us_per_call\":{:.2},\"uas\":{}}}",
            settings.scenario,
            settings.rate,
            settings.seconds,
            settings.sockets,
            self.sent,
            self.completed,
            self.failed,
            self.unexpected,
            self.duplicates,
            self.provisional,
            self.retransmissions,
            achieved,
            percentile(0.5),
            percentile(0.99),
            cpu_us as f64 / self.sent.max(1) as f64,
            uas,
        )
    }
}

fn min_some<T: Copy>(a: Option<T>, b: Option<T>, pick: impl Fn(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        _ => a.or(b),
    }
}

/// Several client sockets driven by one thread: on a shared core, one wake-up per tick for
/// all of them costs far less than a thread per socket waking for each datagram.
struct Worker {
    clients: Vec<Client>,
    tick_us: u64,
}

impl Worker {
    fn run(mut self, start: Instant) -> Totals {
        thread::sleep(start.saturating_duration_since(Instant::now()));
        let mut batch = ReceiveBatch::new();
        let mut polls: Vec<libc::pollfd> = self.clients.iter().map(|c| c.pollfd()).collect();
        let mut next_scan = 0;
        let mut tick = 0;
        loop {
            let now = micros_since(start);
            // One system call finds the sockets with answers waiting.
            // SAFETY: `polls` holds one valid pollfd per client.
            unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 0) };
            for (client, poll) in self.clients.iter_mut().zip(&mut polls) {
                if poll.revents & libc::POLLIN != 0 {
                    client.receive_all(start, &mut batch);
                }
                client.send_due(now);
            }
            if now >= next_scan {
                self.clients.iter_mut().for_each(|client| client.scan(now));
                next_scan = now + SCAN_EVERY_US;
            }
            self.clients.iter_mut().for_each(Client::flush);
            if self.clients.iter().all(Client::done) {
                let mut totals = Totals::default();
                self.clients
                    .into_iter()
                    .for_each(|client| totals.add(client.totals));
                return totals;
            }
            // Strict ticks: whatever came or fell due meanwhile is handled in one batch.
            tick = (tick + self.tick_us).max(now);
            thread::sleep(Duration::from_micros(
                tick.saturating_sub(micros_since(start)),
            ));
        }
    }
}

/// One client socket and its calls.
struct Client {
    settings: Settings,
    index: usize,
    socket: UdpSocket,
    templates: Templates,
    /// Every call of this socket, by sequence number (as many as `calls`, once all started).
    slots: Vec<Slot>,
    calls: usize,
    /// The first call not completed or failed yet.
    oldest: usize,
    totals: Totals,
    /// This tick's outgoing messages, back to back, and where each ends.
    out: Vec<u8>,
    ends: Vec<usize>,
    target: socket2::SockAddr,
}

impl Client {
    fn new(settings: &Settings, index: usize, socket: UdpSocket) -> std::io::Result<Client> {
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let all = (settings.rate * settings.seconds) as usize;
        // This socket's share: calls index, index + sockets, ...
        let calls = all / settings.sockets + usize::from(index < all % settings.sockets);
        Ok(Client {
            templates: Templates::new(settings.scenario, local, settings.target),
            settings: settings.clone(),
            index,
            socket,
            slots: Vec::with_capacity(calls),
            calls,
            oldest: 0,
            totals: Totals::default(),
            out: Vec::with_capacity(64 * 1024),
            ends: Vec::new(),
            target: settings.target.into(),
        })
    }

    /// Microseconds from the start at which call `n` of this socket is due.
    fn due(&self, n: usize) -> u64 {
        let at = (n * self.settings.sockets + self.index) as f64 / self.settings.rate;
        (at * 1e6) as u64
    }

    fn send_due(&mut self, now: u64) {
        while self.slots.len() < self.calls && self.due(self.slots.len()) <= now {
            self.start_call(now);
        }
    }

    fn pollfd(&self) -> libc::pollfd {
        libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }
    }

    fn done(&self) -> bool {
        self.slots.len() == self.calls && self.oldest == self.calls
    }

    /// The 14 hex digits naming call `seq` of this socket.
    fn id(&self, seq: usize) -> [u8; 14] {
        let mut id = [0u8; 14];
        let value = ((self.index as u64) << 48) | seq as u64;
        for (n, digit) in id.iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[(value >> (4 * (13 - n)) & 0xf) as usize];
        }
        id
    }

    fn start_call(&mut self, now: u64) {
        let id = self.id(self.slots.len());
        self.templates.first.append(&id, &mut self.out);
        self.queue();
        let t1 = self.settings.t1_us;
        self.slots.push(Slot {
            phase: Phase::First,
            started: now,
            phase_sent: now,
            next_retransmit: now.saturating_add(t1),
            interval: t1,
        });
        self.totals.sent += 1;
        let sent_at = Some(Instant::now());
        self.totals.first_send = self.totals.first_send.or(sent_at);
        self.totals.last_send = sent_at;
    }

    /// Ends the message being written in `out`; it goes out with this tick's batch.
    fn queue(&mut self) {
        self.ends.push(self.out.len());
    }

    /// Sends this tick's messages with as few system calls as the kernel takes them.
    fn flush(&mut self) {
        let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(self.ends.len());
        let mut begin = 0;
        for &end in &self.ends {
            iovecs.push(libc::iovec {
                iov_base: self.out[begin..].as_mut_ptr().cast(),
                iov_len: end - begin,
            });
            begin = end;
        }
        let mut headers: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iovec| {
                // SAFETY: mmsghdr is plain data; zeroed is a valid empty header.
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_name = self.target.as_ptr() as *mut libc::c_void;
                header.msg_hdr.msg_namelen = self.target.len();
                header.msg_hdr.msg_iov = iovec;
                header.msg_hdr.msg_iovlen = 1;
                header
            })
            .collect();
        let mut sent = 0;
        while sent < headers.len() {
            let rest = &mut headers[sent..];
            // SAFETY: every header points into `iovecs`, `out` and `target`, all alive here.
            let n = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as u32,
                    0,
                )
            };
            if n <= 0 {
                // A full socket buffer loses the rest as a network would: retransmission covers it.
                break;
            }
            sent += n as usize;
        }
        self.out.clear();
        self.ends.clear();
    }

    /// Handles every answer waiting on the socket.
    fn receive_all(&mut self, start: Instant, batch: &mut ReceiveBatch) {
        loop {
            let count = batch.receive(&self.socket, libc::MSG_DONTWAIT);
            let now = micros_since(start);
            for n in 0..count {
                self.on_message(batch.message(n), now);
            }
            if count < RECEIVE_BATCH {
                return;
            }
        }
    }

    fn on_message(&mut self, message: &[u8], now: u64) {
        let (Some(status), Some((kind, seq))) = (status_code(message), self.call_of(message))
        else {
            self.totals.unexpected += 1;
            return;
        };
        if (100..200).contains(&status) {
            self.totals.provisional += 1;
            return;
        }
        let phase = self.slots[seq].phase;
        let expected = match self.settings.scenario {
            Scenario::Redirect => (kind, status) == (b'i', 302),
            Scenario::Options => (kind, status) == (b'o', 200),
            Scenario::Call => status == 200 && (kind == b'i' || kind == b'b'),
        };
        let current = match (self.settings.scenario, phase) {
            (Scenario::Call, Phase::First) => kind == b'i',
            (Scenario::Call, Phase::Bye) => kind == b'b',
            (_, phase) => phase == Phase::First,
        };
        match (expected, current) {
            (true, true) => self.advance(seq, message, now),
            // An answer again, after a retransmission (or a late one after a timeout).
            (true, false) => self.totals.duplicates += 1,
            (false, _) => self.totals.unexpected += 1,
        }
    }

    /// The call a response belongs to, from its top Via's branch: (transaction letter, sequence).
    fn call_of(&self, message: &[u8]) -> Option<(u8, usize)> {
        let branch = top_branch(message)?;
        let rest = branch.strip_prefix(b"z9hG4bK")?;
        if rest.len() != 15 {
            return None;
        }
        let socket = parse_hex(&rest[1..3])?;
        let seq = parse_hex(&rest[3..])? as usize;
        (socket == self.index as u64 && seq < self.slots.len()).then_some((rest[0], seq))
    }

    /// The current transaction of call `seq` got its final answer.
    fn advance(&mut self, seq: usize, answer: &[u8], now: u64) {
        let id = self.id(seq);
        match self.settings.scenario {
            Scenario::Redirect => {
                self.templates.ack.append(&id, &mut self.out);
                self.out
                    .extend_from_slice(header_line(answer, b"to", b't').unwrap_or(b"To: <sip:x>"));
                self.out.extend_from_slice(b"\r\n");
                self.templates.ack_tail.append(&id, &mut self.out);
                self.queue();
                self.complete(seq, now);
            }
            Scenario::Options => self.complete(seq, now),
            Scenario::Call if self.slots[seq].phase == Phase::First => {
                self.templates.ack.append(&id, &mut self.out);
                self.queue();
                self.templates.bye.append(&id, &mut self.out);
                self.queue();
                let t1 = self.settings.t1_us;
                let slot = &mut self.slots[seq];
                slot.phase = Phase::Bye;
                slot.phase_sent = now;
                slot.next_retransmit = now.saturating_add(t1);
                slot.interval = t1;
            }
            Scenario::Call => self.complete(seq, now),
        }
    }

    fn complete(&mut self, seq: usize, now: u64) {
        let slot = &mut self.slots[seq];
        slot.phase = Phase::Completed;
        self.totals.completed += 1;
        self.totals
            .latencies_us
            .push(now.saturating_sub(slot.started));
    }

    /// Retransmits and times out unanswered transactions from the oldest unfinished call on. Calls started less than T1 ago have nothing due yet, and later
    /// calls started later still, so the scan stops at the first of them.
    fn scan(&mut self, now: u64) {
        while self.oldest < self.slots.len() && self.finished(self.oldest) {
            self.oldest += 1;
        }
        for seq in self.oldest..self.slots.len() {
            let slot = self.slots[seq];
            if slot.started.saturating_add(self.settings.t1_us) > now {
                break;
            }
            if self.finished(seq) {
                continue;
            }
            if now.saturating_sub(slot.phase_sent) >= self.settings.timeout_us {
                self.slots[seq].phase = Phase::Failed;
                self.totals.failed += 1;
            } else if now >= slot.next_retransmit {
                self.retransmit(seq, now);
            }
        }
    }

    fn finished(&self, seq: usize) -> bool {
        matches!(self.slots[seq].phase, Phase::Completed | Phase::Failed)
    }

    fn retransmit(&mut self, seq: usize, now: u64) {
        let id = self.id(seq);
        match self.slots[seq].phase {
            Phase::Bye => self.templates.bye.append(&id, &mut self.out),
            _ => self.templates.first.append(&id, &mut self.out),
        }
        self.queue();
        self.totals.retransmissions += 1;
        let slot = &mut self.slots[seq];
        slot.interval = slot.interval.saturating_mul(2).min(T2_US);
        slot.next_retransmit = now.saturating_add(slot.interval);
    }
}

fn micros_since(start: Instant) -> u64 {
    Instant::now().saturating_duration_since(start).as_micros() as u64
}

/// Datagrams taken off a socket by one `recvmmsg`.
const RECEIVE_BATCH: usize = 64;
/// Bytes kept of each (our answers are well under 1 KB; a longer one is cut and unexpected).
const DATAGRAM: usize = 4096;

/// The buffers of one `recvmmsg`, reused every tick.
struct ReceiveBatch {
    buffers: Vec<u8>,
    lengths: [usize; RECEIVE_BATCH],
    /// Where each came from.
    names: Vec<libc::sockaddr_storage>,
    sources: Vec<Option<SocketAddr>>,
}

impl ReceiveBatch {
    fn new() -> ReceiveBatch {
        ReceiveBatch {
            buffers: vec![0; RECEIVE_BATCH * DATAGRAM],
            lengths: [0; RECEIVE_BATCH],
            // SAFETY: sockaddr_storage is plain data; zeroed is a valid empty address.
            names: vec![unsafe { std::mem::zeroed() }; RECEIVE_BATCH],
            sources: vec![None; RECEIVE_BATCH],
        }
    }

    /// Takes up to `RECEIVE_BATCH` waiting datagrams; returns how many.
    fn receive(&mut self, socket: &UdpSocket, flags: libc::c_int) -> usize {
        let mut iovecs: Vec<libc::iovec> = self
            .buffers
            .chunks_mut(DATAGRAM)
            .map(|chunk| libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .zip(&mut self.names)
            .map(|(iovec, name)| {
                // SAFETY: mmsghdr is plain data; zeroed is a valid empty header.
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_iov = iovec;
                header.msg_hdr.msg_iovlen = 1;
                header.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
                header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
                header
            })
            .collect();
        // SAFETY: every header points into `iovecs`, `buffers` and `names`, all alive here.
        let count = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                RECEIVE_BATCH as u32,
                flags,
                std::ptr::null_mut(),
            )
        };
        let count = usize::try_from(count).unwrap_or(0);
        for (n, header) in headers[..count].iter().enumerate() {
            self.lengths[n] = header.msg_len as usize;
            self.sources[n] = ipv4_source(&self.names[n]);
        }
        count
    }

    fn message(&self, n: usize) -> &[u8] {
        &self.buffers[n * DATAGRAM..n * DATAGRAM + self.lengths[n]]
    }
}

/// The IPv4 address the kernel wrote (all of bench/sip runs on 127.0.0.1).
fn ipv4_source(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    if name.ss_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    // SAFETY: an AF_INET address is a sockaddr_in, which sockaddr_storage is large enough for.
    let inet = unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
    let ip = std::net::Ipv4Addr::from(u32::from_be(inet.sin_addr.s_addr));
    Some(SocketAddr::from((ip, u16::from_be(inet.sin_port))))
}

/// The status code of a response; `None` for a request or garbage.
fn status_code(message: &[u8]) -> Option<u16> {
    let code = message.strip_prefix(b"SIP/2.0 ")?.get(..3)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// The header lines of a message, without their CRLF, up to the blank line.
fn header_lines(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    message
        .split(|&b| b == b'\n')
        .skip(1)
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
}

/// The first header line named `name` (or its compact form), whole.
fn header_line<'a>(message: &'a [u8], name: &[u8], compact: u8) -> Option<&'a [u8]> {
    header_lines(message).find(|line| header_is(line, name, compact))
}

fn header_is(line: &[u8], name: &[u8], compact: u8) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let field = line[..colon].trim_ascii();
    field.eq_ignore_ascii_case(name)
        || (field.len() == 1 && field[0].eq_ignore_ascii_case(&compact))
}

/// The branch parameter of the first Via.
fn top_branch(message: &[u8]) -> Option<&[u8]> {
    let via = header_line(message, b"via", b'v')?;
    let at = via
        .windows(7)
        .position(|w| w.eq_ignore_ascii_case(b"branch="))?
        + 7;
    let value = &via[at..];
    let end = value
        .iter()
        .position(|&b| matches!(b, b';' | b',' | b' ' | b'\t'))
        .unwrap_or(value.len());
    Some(&value[..end])
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// The far end of a proxied call: 200 to INVITE and BYE, ACK absorbed.
#[derive(Default)]
struct Uas {
    invites: u64,
    acks: u64,
    byes: u64,
    unexpected: u64,
}

impl Uas {
    fn serve(mut self, socket: &UdpSocket, stop: &AtomicBool) -> Uas {
        // Wakes now and then to see whether the clients are done.
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let mut batch = ReceiveBatch::new();
        let mut out = Vec::with_capacity(2048);
        while !stop.load(Ordering::Relaxed) {
            // Blocks for the first datagram, then takes whatever else is waiting with it.
            let count = batch.receive(socket, libc::MSG_WAITFORONE);
            for n in 0..count {
                let (request, from) = (batch.message(n), batch.sources[n]);
                if let (true, Some(from)) = (self.answer(request, &mut out), from) {
                    let _ = socket.send_to(&out, from);
                }
            }
        }
        self
    }

    /// Writes the answer to `request` into `out`; false when there is none to send.
    fn answer(&mut self, request: &[u8], out: &mut Vec<u8>) -> bool {
        let method = request.split(|&b| b == b' ').next().unwrap_or_default();
        match method {
            b"INVITE" => self.invites += 1,
            b"BYE" => self.byes += 1,
            b"ACK" => {
                self.acks += 1;
                return false;
            }
            _ => {
                self.unexpected += 1;
                return false;
            }
        }
        out.clear();
        out.extend_from_slice(b"SIP/2.0 200 OK\r\n");
        for line in header_lines(request) {
            let copy = header_is(line, b"via", b'v')
                || header_is(line, b"from", b'f')
                || header_is(line, b"call-id", b'i')
                || header_is(line, b"cseq", b'\0');
            if copy {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            } else if header_is(line, b"to", b't') {
                out.extend_from_slice(line);
                if !line.windows(5).any(|w| w.eq_ignore_ascii_case(b";tag=")) {
                    out.extend_from_slice(format!(";tag={UAS_TAG}").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        if method == b"INVITE" {
            out.extend_from_slice(b"Contact: <sip:uas@127.0.0.1>\r\n");
        }
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        true
    }

    fn json(&self) -> String {
        format!(
            "{{\"invites\":{},\"acks\":{},\"byes\":{},\"unexpected\":{}}}",
            self.invites, self.acks, self.byes, self.unexpected
        )
    }
}
