//! The SIP stateless proxy (RFC 3261 §16.11), sans-IO: one message in, at most one message
//! out, and where it goes.
//!
//! Requests are forwarded to the active node's SIP target:
//! - the Request-URI becomes the target with the user part kept (what a client following
//!   the redirect mode's 302 would send);
//! - our own Via goes on top, with a branch derived from the request, so a retransmission
//!   (and the CANCEL or ACK of an INVITE) gets the same branch and the active node matches
//!   it to the same transaction;
//! - the client's Via gets `received` (§18.2.1) and a filled-in `rport` (RFC 3581), so the
//!   answer finds its way back through NAT;
//! - Max-Forwards is decremented, or set to 70 when absent (§16.6).
//!
//! Responses whose top Via is ours lose it and go to the next Via's address (its
//! `received`/`rport` first). A client that reached us over TCP or TLS is answered on its own
//! connection: the connection's number travels in our Via (`sp-c`), as a stateless proxy keeps
//! no table of transactions.
//!
//! What needs no forwarding is answered as the redirect mode does: Max-Forwards 0 → 483, no
//! active node → 503, OPTIONS to the proxy itself → 200, unparseable → 400 or dropped.

use super::redirect::{self, fnv1a, Destination, Outcome};
use super::scan::{self, Name, StartLine};
use super::uri::SipUri;
use super::Transport;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};

/// The prefix of every branch we make: RFC 3261's magic cookie and our mark.
const BRANCH_PREFIX: &str = "z9hG4bK-sp";
/// Max-Forwards set on a request that had none (§16.6 step 3).
const DEFAULT_MAX_FORWARDS: u32 = 70;

/// The keys of the MAC in our Via branch (HMAC-SHA256, truncated to 64 bits), shared by the
/// pair: a response is relayed only when the branch's MAC over where it would be relayed to
/// verifies, so nobody can make the proxy send to an address, or into a client's
/// connection, of their choosing. Answers keep routing after a restart or a failover
/// because both nodes hold the same key.
pub struct RouteKeys {
    /// Signs every branch and verifies.
    current: ring::hmac::Key,
    /// Verifies too: answers to what was forwarded just before a key change.
    previous: Option<ring::hmac::Key>,
}

impl RouteKeys {
    /// Keys from secret bytes (at least 16, or the MAC is weaker than its 64 bits).
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> RouteKeys {
        let key = |bytes: &[u8]| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes);
        RouteKeys {
            current: key(current),
            previous: previous.map(key),
        }
    }

    fn mac(key: &ring::hmac::Key, transaction: u64, hop: &Hop) -> u64 {
        let mut context = ring::hmac::Context::with_key(key);
        context.update(&transaction.to_be_bytes());
        context.update(&[hop.transport as u8]);
        match hop.addr.ip() {
            IpAddr::V4(ip) => context.update(&ip.octets()),
            IpAddr::V6(ip) => context.update(&ip.octets()),
        }
        context.update(&hop.addr.port().to_be_bytes());
        context.update(&hop.connection.unwrap_or(u64::MAX).to_be_bytes());
        let tag = context.sign();
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_be_bytes(first)
    }

    fn sign(&self, transaction: u64, hop: &Hop) -> u64 {
        Self::mac(&self.current, transaction, hop)
    }

    fn verify(&self, transaction: u64, hop: &Hop, mac: u64) -> bool {
        // One 64-bit comparison: it takes the same time whatever the bits.
        let same = |key| Self::mac(key, transaction, hop) == mac;
        same(&self.current) || self.previous.as_ref().is_some_and(same)
    }
}

/// Who the proxy is: the sent-by of its Via and the keys of its branch MAC.
#[derive(Clone, Copy)]
pub struct Identity<'a> {
    /// The UDP listener (`10.0.0.1:5060`), where answers come back.
    pub listener: &'a str,
    /// The pair's route keys.
    pub keys: &'a RouteKeys,
}

/// The active node's SIP service: its URI and the address requests go to.
#[derive(Debug, Clone, Copy)]
pub struct Upstream<'a> {
    /// The advertised target.
    pub uri: &'a SipUri,
    /// Where its host and port resolve to.
    pub addr: SocketAddr,
}

/// Where a message came from.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// The client's address as seen on the socket.
    pub addr: SocketAddr,
    /// How it arrived.
    pub transport: Transport,
    /// For TCP and TLS: the number of its connection, to answer on it.
    pub connection: Option<u64>,
}

/// Where a relayed response goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// The transport the next Via names.
    pub transport: Transport,
    /// Its address (`received`/`rport` first, else its sent-by).
    pub addr: SocketAddr,
    /// The client connection the request came in on, for TCP and TLS.
    pub connection: Option<u64>,
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyOutcome {
    /// Answered here, as the redirect mode would (the response is in the buffer when it
    /// is [`Outcome::Respond`]).
    Local(Outcome),
    /// A request to send to the active node (in the buffer).
    ToUpstream(SocketAddr),
    /// A response to send on (in the buffer).
    ToClient(Hop),
    /// Dropped, with why.
    Dropped(&'static str),
}

/// Handles one message arrived at the proxy listener whose Via sent-by is `listener`
/// (`10.0.0.1:5060`). Writes what is to be sent into `out` (cleared first). Returns the
/// outcome and, for a request, its method.
pub fn handle<'a>(
    message: &'a [u8],
    source: Source,
    identity: Identity<'_>,
    upstream: Option<Upstream<'_>>,
    out: &mut Vec<u8>,
) -> (ProxyOutcome, Option<&'a [u8]>) {
    out.clear();
    let local = |out: &mut Vec<u8>| {
        // The proxy forwards every transport over UDP: no TLS target to choose.
        let destination = Destination {
            target: upstream.map(|u| u.uri),
            tls_target: None,
        };
        let (outcome, method) = redirect::respond(message, source.transport, destination, out);
        (ProxyOutcome::Local(outcome), method)
    };
    let Ok(scanned) = scan::scan(message) else {
        return local(out);
    };
    let (method, uri) = match scanned.start {
        StartLine::Response { .. } => {
            return (relay_response(message, &scanned, identity, out), None)
        }
        StartLine::Request { method, uri } => (method, uri),
    };
    let max_forwards = match scan::first(scanned.head, Name::MaxForwards).map(scan::trim) {
        None => DEFAULT_MAX_FORWARDS,
        Some(text) => match std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<u32>().ok())
        {
            Some(n) => n,
            None => return (bad_request(scanned.head, out), Some(method)),
        },
    };
    let (user, _) = redirect::uri_user_and_transport(uri);
    let answer_here =
        max_forwards == 0 || upstream.is_none() || (method == b"OPTIONS" && user.is_none());
    let Some(upstream) = upstream.filter(|_| !answer_here) else {
        return local(out);
    };
    // A Content-Length past the end of the datagram cannot be trusted for arithmetic.
    let body_end = scanned
        .content_length
        .and_then(|length| scanned.body_offset.checked_add(length))
        .map_or(message.len(), |end| end.min(message.len()));
    let body = &message[scanned.body_offset.min(body_end)..body_end];
    match write_request(
        out,
        &scanned,
        method,
        user,
        source,
        identity,
        upstream,
        max_forwards - 1,
        body,
    ) {
        Ok(()) => (ProxyOutcome::ToUpstream(upstream.addr), Some(method)),
        Err(_) => {
            // No usable Via: nothing can route an answer, so neither can ours.
            out.clear();
            (
                ProxyOutcome::Dropped("request without a usable Via"),
                Some(method),
            )
        }
    }
}

/// 400 built from the request's headers, or a drop if they are too broken for an answer.
fn bad_request(head: &[u8], out: &mut Vec<u8>) -> ProxyOutcome {
    if redirect::write_plain_response(out, 400, "Bad Request", head) {
        ProxyOutcome::Local(Outcome::Respond(400))
    } else {
        ProxyOutcome::Local(Outcome::Dropped(redirect::DropReason::Unanswerable))
    }
}

/// A Via value's parts that routing needs.
#[derive(Debug, Clone, Copy)]
struct Via<'a> {
    transport: Transport,
    host: &'a [u8],
    port: Option<u16>,
}

/// Parses `SIP/2.0/UDP host:port;params`.
fn parse_via(value: &[u8]) -> Option<Via<'_>> {
    let params_at = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    let main = scan::trim(&value[..params_at]);
    // "SIP / 2.0 / UDP" may carry spaces around the slashes (RFC 4475 torture tests).
    let slash = main.iter().rposition(|&b| b == b'/')?;
    let rest = scan::trim(&main[slash + 1..]);
    let space = rest.iter().position(|b| b.is_ascii_whitespace())?;
    let transport = std::str::from_utf8(&rest[..space])
        .ok()
        .and_then(Transport::from_param)?;
    let sent_by = scan::trim(&rest[space..]);
    let (host, port) = if let Some(v6) = sent_by.strip_prefix(b"[") {
        let close = v6.iter().position(|&b| b == b']')?;
        let port = v6[close + 1..].strip_prefix(b":");
        (&v6[..close], port)
    } else {
        match sent_by.iter().rposition(|&b| b == b':') {
            Some(colon) => (&sent_by[..colon], Some(&sent_by[colon + 1..])),
            None => (sent_by, None),
        }
    };
    let port = match port {
        Some(digits) => Some(parse_number::<u16>(scan::trim(digits))?),
        None => None,
    };
    Some(Via {
        transport,
        host: scan::trim(host),
        port,
    })
}

fn parse_number<T: std::str::FromStr>(digits: &[u8]) -> Option<T> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Splits the first Via value off a Via header value: (first, the rest after its comma).
fn split_first_via(value: &[u8]) -> (&[u8], Option<&[u8]>) {
    match value.iter().position(|&b| b == b',') {
        Some(comma) => (
            scan::trim(&value[..comma]),
            Some(scan::trim(&value[comma + 1..])),
        ),
        None => (scan::trim(value), None),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_request(
    out: &mut Vec<u8>,
    scanned: &scan::Message<'_>,
    method: &[u8],
    user: Option<&[u8]>,
    source: Source,
    identity: Identity<'_>,
    upstream: Upstream<'_>,
    max_forwards: u32,
    body: &[u8],
) -> Result<(), ()> {
    let head = scanned.head;
    let top_via = scan::top_via(head).ok_or(())?;
    let client_via = parse_via(top_via).ok_or(())?;
    let branch = branch_of(head, top_via, scanned)?;
    out.extend_from_slice(method);
    out.extend_from_slice(b" sip:");
    if let Some(user) = user {
        out.extend_from_slice(user);
        out.push(b'@');
    }
    let _ = write!(out, "{}", upstream.uri.host);
    if let Some(port) = upstream.uri.port {
        let _ = write!(out, ":{port}");
    }
    let listener = identity.listener;
    let _ = write!(
        out,
        " SIP/2.0\r\nVia: SIP/2.0/UDP {listener};branch={BRANCH_PREFIX}{branch:016x}"
    );
    // The MAC covers where the answer will go, known once the client's Via is written:
    // its place is kept and filled in below.
    let mac_at = out.len();
    out.extend_from_slice(&[b'0'; 16]);
    if let Some(connection) = source.connection {
        let _ = write!(out, ";sp-c={connection}");
    }
    out.extend_from_slice(b"\r\n");
    let mut via_done = false;
    let mut max_forwards_done = false;
    for line in scan::header_lines(head) {
        let line = line.map_err(|_| ())?;
        match Name::of(line.name) {
            Name::Via if !via_done => {
                via_done = true;
                let (first, rest) = split_first_via(line.value);
                out.extend_from_slice(b"Via: ");
                let client_via_at = out.len();
                write_client_via(out, first, client_via, source.addr);
                // Routed exactly as relay_response will route the answer.
                let hop = hop_of(&out[client_via_at..], source.connection).ok_or(())?;
                let mac = identity.keys.sign(branch, &hop);
                write_hex(&mut out[mac_at..mac_at + 16], mac);
                if let Some(rest) = rest {
                    out.extend_from_slice(b", ");
                    out.extend_from_slice(rest);
                }
            }
            Name::MaxForwards if !max_forwards_done => {
                max_forwards_done = true;
                let _ = write!(out, "Max-Forwards: {max_forwards}");
            }
            _ => out.extend_from_slice(line.line),
        }
        out.extend_from_slice(b"\r\n");
    }
    if !max_forwards_done {
        let _ = write!(out, "Max-Forwards: {max_forwards}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(())
}

/// The client's Via, with `received` when its sent-by is not the address it came from and
/// `rport` filled in when it asked for it (RFC 3581).
fn write_client_via(out: &mut Vec<u8>, via: &[u8], parsed: Via<'_>, from: SocketAddr) {
    let mut parts = via.split(|&b| b == b';');
    out.extend_from_slice(parts.next().unwrap_or_default());
    for part in parts {
        let key = scan::trim(part.split(|&b| b == b'=').next().unwrap_or_default());
        if key.eq_ignore_ascii_case(b"received") {
            continue; // ours replaces it
        }
        out.push(b';');
        if key.eq_ignore_ascii_case(b"rport") {
            let _ = write!(out, "rport={}", from.port());
        } else {
            out.extend_from_slice(part);
        }
    }
    let sent_by_is_source = std::str::from_utf8(parsed.host)
        .ok()
        .and_then(|host| host.parse::<IpAddr>().ok())
        == Some(from.ip());
    if !sent_by_is_source {
        let _ = write!(out, ";received={}", from.ip());
    }
}

/// The branch of our Via (§16.11): from the client's branch when it has the magic cookie,
/// else from the fields that tell transactions apart. The same request, its retransmissions
/// and its CANCEL map to the same branch.
fn branch_of(head: &[u8], top_via: &[u8], scanned: &scan::Message<'_>) -> Result<u64, ()> {
    if let Some(branch) = scan::param(top_via, "branch").filter(|b| b.starts_with(b"z9hG4bK")) {
        return Ok(fnv1a(&[branch]));
    }
    let tag = |name| {
        scan::first(head, name)
            .and_then(|value| scan::param(value, "tag"))
            .unwrap_or_default()
    };
    let call_id = scan::first(head, Name::CallId).ok_or(())?;
    let cseq = scan::first(head, Name::CSeq).ok_or(())?;
    let cseq_number = cseq
        .split(|b| b.is_ascii_whitespace())
        .next()
        .unwrap_or_default();
    let uri = match scanned.start {
        StartLine::Request { uri, .. } => uri,
        StartLine::Response { .. } => &[],
    };
    Ok(fnv1a(&[
        top_via,
        tag(Name::To),
        tag(Name::From),
        call_id,
        cseq_number,
        uri,
    ]))
}

/// Relays a response whose top Via is ours, and whose branch MAC verifies for where it
/// would go, to the next Via, without ours.
fn relay_response(
    message: &[u8],
    scanned: &scan::Message<'_>,
    identity: Identity<'_>,
    out: &mut Vec<u8>,
) -> ProxyOutcome {
    let Some(ours) = scan::top_via(scanned.head) else {
        return ProxyOutcome::Dropped("response without Via");
    };
    let Some(branch) = our_branch(ours, identity.listener) else {
        // §16.11 via §16.7 step 3: a response not for us is dropped.
        return ProxyOutcome::Dropped("response whose top Via is not ours");
    };
    let connection = scan::param(ours, "sp-c").and_then(parse_number::<u64>);
    let Some(next) = write_without_our_via(message, scanned, out) else {
        out.clear();
        return ProxyOutcome::Dropped("response with no usable Via after ours");
    };
    let Some(hop) = hop_of(next, connection) else {
        out.clear();
        return ProxyOutcome::Dropped("response whose next Via names no address");
    };
    if !identity.keys.verify(branch.0, &hop, branch.1) {
        out.clear();
        return ProxyOutcome::Dropped("bad_mac");
    }
    ProxyOutcome::ToClient(hop)
}

/// The (transaction, MAC) of our branch when the top Via's sent-by is our listener.
fn our_branch(ours: &[u8], listener: &str) -> Option<(u64, u64)> {
    let via = parse_via(ours)?;
    let port = via.port?;
    let mut sent_by = Vec::with_capacity(listener.len());
    if via.host.contains(&b':') {
        sent_by.push(b'[');
        sent_by.extend_from_slice(via.host);
        sent_by.push(b']');
    } else {
        sent_by.extend_from_slice(via.host);
    }
    let _ = write!(sent_by, ":{port}");
    if sent_by != listener.as_bytes() {
        return None;
    }
    let hex = scan::param(ours, "branch")?.strip_prefix(BRANCH_PREFIX.as_bytes())?;
    if hex.len() != 32 {
        return None;
    }
    let number = |digits: &[u8]| u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok();
    Some((number(&hex[..16])?, number(&hex[16..])?))
}

/// Writes the response without our Via into `out`; returns the next Via (where it goes).
fn write_without_our_via<'a>(
    message: &[u8],
    scanned: &scan::Message<'a>,
    out: &mut Vec<u8>,
) -> Option<&'a [u8]> {
    out.extend_from_slice(scanned.start_line);
    out.extend_from_slice(b"\r\n");
    let mut removed = false;
    let mut next: Option<&[u8]> = None;
    for line in scan::header_lines(scanned.head) {
        let line = line.ok()?;
        if Name::of(line.name) == Name::Via && next.is_none() {
            if !removed {
                removed = true;
                let (_, rest) = split_first_via(line.value);
                if let Some(rest) = rest {
                    next = Some(split_first_via(rest).0);
                    out.extend_from_slice(b"Via: ");
                    out.extend_from_slice(rest);
                    out.extend_from_slice(b"\r\n");
                }
                continue;
            }
            next = Some(split_first_via(line.value).0);
        }
        out.extend_from_slice(line.line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(message.get(scanned.body_offset..).unwrap_or_default());
    next
}

/// Where an answer goes by a client's Via (`received`/`rport` first, else its sent-by):
/// the same for the Via we forward and the one that comes back.
fn hop_of(via_value: &[u8], connection: Option<u64>) -> Option<Hop> {
    let via = parse_via(via_value)?;
    let host = scan::param(via_value, "received").unwrap_or(via.host);
    let ip = std::str::from_utf8(host).ok().and_then(|h| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
    })?;
    let port = scan::param(via_value, "rport")
        .and_then(parse_number::<u16>)
        .or(via.port)
        .unwrap_or(via.transport.default_port());
    Some(Hop {
        transport: via.transport,
        addr: SocketAddr::new(ip, port),
        connection: connection.filter(|_| via.transport != Transport::Udp),
    })
}

/// Writes `value` as 16 lower-case hex digits into `into`.
fn write_hex(into: &mut [u8], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (index, slot) in into.iter_mut().enumerate().take(16) {
        let shift = 60 - 4 * index;
        *slot = DIGITS[((value >> shift) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTENER: &str = "127.0.0.2:5060";

    fn target() -> SipUri {
        "sip:127.0.0.1:5070".parse().expect("uri")
    }

    fn run(message: &[u8], source: Source, upstream: bool) -> (ProxyOutcome, String) {
        let uri = target();
        let upstream = upstream.then_some(Upstream {
            uri: &uri,
            addr: "127.0.0.1:5070".parse().expect("addr"),
        });
        let mut out = Vec::new();
        let (outcome, _) = handle(message, source, identity(&KEYS), upstream, &mut out);
        (outcome, String::from_utf8(out).expect("utf8"))
    }

    static KEYS: std::sync::LazyLock<RouteKeys> =
        std::sync::LazyLock::new(|| RouteKeys::new(b"the pair's test key, 32 bytes..", None));

    fn v6_identity() -> Identity<'static> {
        Identity {
            listener: "[::1]:5060",
            keys: &KEYS,
        }
    }

    fn identity(keys: &RouteKeys) -> Identity<'_> {
        Identity {
            listener: LISTENER,
            keys,
        }
    }

    fn udp_client() -> Source {
        Source {
            addr: "192.0.2.7:40000".parse().expect("addr"),
            transport: Transport::Udp,
            connection: None,
        }
    }

    const REGISTER: &[u8] = b"REGISTER sip:omm.example.net SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKreg1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:4711@omm.example.net>;tag=f1\r\n\
To: <sip:4711@omm.example.net>\r\n\
Call-ID: reg-1\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:4711@10.1.1.1:5060>\r\n\
Content-Length: 4\r\n\r\nbody";

    #[test]
    fn a_request_is_forwarded_with_our_via_and_max_forwards_decremented() {
        let (outcome, out) = run(REGISTER, udp_client(), true);
        assert_eq!(
            outcome,
            ProxyOutcome::ToUpstream("127.0.0.1:5070".parse().expect("addr"))
        );
        let mut lines = out.split("\r\n");
        assert_eq!(lines.next(), Some("REGISTER sip:127.0.0.1:5070 SIP/2.0"));
        let ours = lines.next().expect("our via");
        assert!(
            ours.starts_with("Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK-sp"),
            "{ours}"
        );
        assert_eq!(
            lines.next(),
            Some(
                "Via: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKreg1;rport=40000;received=192.0.2.7"
            )
        );
        assert_eq!(lines.next(), Some("Max-Forwards: 69"));
        assert!(out.contains("\r\nContact: <sip:4711@10.1.1.1:5060>\r\n"));
        assert!(out.ends_with("\r\n\r\nbody"));
    }

    #[test]
    fn retransmissions_and_cancel_get_the_same_branch_other_transactions_another() {
        let branch = |message: &[u8]| {
            let (_, out) = run(message, udp_client(), true);
            let at = out.find("branch=z9hG4bK-sp").expect("branch");
            out[at..at + 33].to_owned()
        };
        let invite = b"INVITE sip:100@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.1;branch=z9hG4bKinv\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:100@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
        let cancel = b"CANCEL sip:100@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.1;branch=z9hG4bKinv\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:100@x>\r\nCall-ID: c\r\nCSeq: 1 CANCEL\r\n\r\n";
        let other = b"INVITE sip:100@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.1;branch=z9hG4bKinv2\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:100@x>\r\nCall-ID: c\r\nCSeq: 2 INVITE\r\n\r\n";
        assert_eq!(branch(invite), branch(invite));
        assert_eq!(branch(invite), branch(cancel));
        assert_ne!(branch(invite), branch(other));
        // RFC 2543 clients (no magic cookie): the hash covers Call-ID, CSeq number, tags, URI.
        let old = |cseq: &str| {
            format!("INVITE sip:100@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:100@x>\r\nCall-ID: c\r\nCSeq: {cseq}\r\n\r\n")
        };
        assert_eq!(
            branch(old("1 INVITE").as_bytes()),
            branch(old("1 CANCEL").as_bytes())
        );
        assert_ne!(
            branch(old("1 INVITE").as_bytes()),
            branch(old("2 INVITE").as_bytes())
        );
    }

    #[test]
    fn the_answer_goes_back_to_the_received_address_without_our_via() {
        let (_, forwarded) = run(REGISTER, udp_client(), true);
        // The active node answers, copying the Vias.
        let vias: Vec<&str> = forwarded
            .split("\r\n")
            .filter(|l| l.starts_with("Via: "))
            .collect();
        let response = format!(
            "SIP/2.0 200 OK\r\n{}\r\n{}\r\nFrom: <sip:4711@omm.example.net>;tag=f1\r\nTo: <sip:4711@omm.example.net>;tag=t\r\nCall-ID: reg-1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
            vias[0], vias[1]
        );
        let active = Source {
            addr: "127.0.0.1:5070".parse().expect("addr"),
            transport: Transport::Udp,
            connection: None,
        };
        let (outcome, out) = run(response.as_bytes(), active, true);
        assert_eq!(
            outcome,
            ProxyOutcome::ToClient(Hop {
                transport: Transport::Udp,
                addr: "192.0.2.7:40000".parse().expect("addr"),
                connection: None,
            })
        );
        assert!(
            out.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.1.1.1:5060;"),
            "{out}"
        );
        assert!(!out.contains("z9hG4bK-sp"));
        // Several Vias in one header line: only ours goes.
        let second = response
            .match_indices("\r\nVia: ")
            .nth(1)
            .expect("two Vias")
            .0;
        let folded = format!("{}, {}", &response[..second], &response[second + 7..]);
        let (outcome, out) = run(folded.as_bytes(), active, true);
        assert!(matches!(outcome, ProxyOutcome::ToClient(_)), "{outcome:?}");
        assert!(
            out.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.1.1.1:5060;"),
            "{out}"
        );
    }

    /// REGISTER from a TCP client on connection 42, as forwarded.
    fn forwarded_for_tcp_client_42() -> String {
        let tcp = Source {
            addr: "10.1.1.1:5060".parse().expect("addr"),
            transport: Transport::Tcp,
            connection: Some(42),
        };
        let request = String::from_utf8_lossy(REGISTER)
            .replace("SIP/2.0/UDP 10.1.1.1", "SIP/2.0/TCP 10.1.1.1");
        run(request.as_bytes(), tcp, true).1
    }

    #[test]
    fn a_stream_client_is_answered_on_its_connection() {
        let forwarded = forwarded_for_tcp_client_42();
        assert!(forwarded.contains(";sp-c=42\r\n"), "{forwarded}");
        // sent-by is the source address: no received.
        assert!(!forwarded.contains("received="));
        let vias: Vec<&str> = forwarded
            .split("\r\n")
            .filter(|l| l.starts_with("Via: "))
            .collect();
        let response = format!(
            "SIP/2.0 100 Trying\r\n{}\r\n{}\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n\r\n",
            vias[0], vias[1]
        );
        let (outcome, _) = run(response.as_bytes(), udp_client(), true);
        assert_eq!(
            outcome,
            ProxyOutcome::ToClient(Hop {
                transport: Transport::Tcp,
                addr: "10.1.1.1:5060".parse().expect("addr"),
                connection: Some(42),
            })
        );
    }

    #[test]
    fn responses_not_for_us_are_dropped() {
        let response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bK-sp0000000000000001\r\nVia: SIP/2.0/UDP 10.1.1.1\r\nCall-ID: c\r\n\r\n";
        assert_eq!(
            run(response, udp_client(), true).0,
            ProxyOutcome::Dropped("response whose top Via is not ours")
        );
        let unsigned = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK-sp0000000000000001\r\nVia: SIP/2.0/UDP 10.1.1.1\r\nCall-ID: c\r\n\r\n";
        assert_eq!(
            run(unsigned, udp_client(), true).0,
            ProxyOutcome::Dropped("response whose top Via is not ours")
        );
        let last = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK-sp00000000000000010000000000000001\r\nCall-ID: c\r\n\r\n";
        assert_eq!(
            run(last, udp_client(), true).0,
            ProxyOutcome::Dropped("response with no usable Via after ours")
        );
    }

    /// The two Vias the active node copies into its answer to what we forwarded.
    fn answer_to(forwarded: &str) -> String {
        let vias: Vec<&str> = forwarded
            .split("\r\n")
            .filter(|l| l.starts_with("Via: "))
            .collect();
        format!(
            "SIP/2.0 200 OK\r\n{}\r\n{}\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
            vias[0], vias[1]
        )
    }

    #[test]
    fn a_forged_answer_is_not_relayed_anywhere() {
        let (_, forwarded) = run(REGISTER, udp_client(), true);
        let answer = answer_to(&forwarded);
        assert!(matches!(
            run(answer.as_bytes(), udp_client(), true).0,
            ProxyOutcome::ToClient(_)
        ));
        // Another address, port or transport in the client's Via: the MAC no longer fits.
        for (from, to) in [
            ("received=192.0.2.7", "received=198.51.100.9"),
            ("rport=40000", "rport=40001"),
            ("SIP/2.0/UDP 10.1.1.1", "SIP/2.0/TCP 10.1.1.1"),
        ] {
            let forged = answer.replace(from, to);
            assert_ne!(forged, answer, "{from}");
            assert_eq!(
                run(forged.as_bytes(), udp_client(), true).0,
                ProxyOutcome::Dropped("bad_mac"),
                "{to}"
            );
        }
        // Another node's key: dropped; our previous key still verifies.
        let other = RouteKeys::new(b"another pair's key, 32 bytes....", None);
        let mut out = Vec::new();
        let (outcome, _) = handle(
            answer.as_bytes(),
            udp_client(),
            identity(&other),
            None,
            &mut out,
        );
        assert_eq!(outcome, ProxyOutcome::Dropped("bad_mac"));
        let rotated = RouteKeys::new(
            b"a new key.......................",
            Some(b"the pair's test key, 32 bytes.."),
        );
        let (outcome, _) = handle(
            answer.as_bytes(),
            udp_client(),
            identity(&rotated),
            None,
            &mut out,
        );
        assert!(matches!(outcome, ProxyOutcome::ToClient(_)));
    }

    #[test]
    fn a_forged_answer_cannot_enter_another_clients_connection() {
        let forwarded = forwarded_for_tcp_client_42();
        let answer = answer_to(&forwarded);
        let forged = answer.replace(";sp-c=42", ";sp-c=43");
        assert_eq!(
            run(forged.as_bytes(), udp_client(), true).0,
            ProxyOutcome::Dropped("bad_mac")
        );
    }

    #[test]
    fn local_answers_as_in_redirect_mode() {
        let (outcome, out) = run(REGISTER, udp_client(), false);
        assert_eq!(outcome, ProxyOutcome::Local(Outcome::Respond(503)));
        assert!(out.contains("Retry-After:"));
        let zero = String::from_utf8_lossy(REGISTER).replace("Max-Forwards: 70", "Max-Forwards: 0");
        assert_eq!(
            run(zero.as_bytes(), udp_client(), true).0,
            ProxyOutcome::Local(Outcome::Respond(483))
        );
        let bad =
            String::from_utf8_lossy(REGISTER).replace("Max-Forwards: 70", "Max-Forwards: many");
        assert_eq!(
            run(bad.as_bytes(), udp_client(), true).0,
            ProxyOutcome::Local(Outcome::Respond(400))
        );
        let options = b"OPTIONS sip:127.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.1;branch=z9hG4bKo\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\n\r\n";
        assert_eq!(
            run(options, udp_client(), true).0,
            ProxyOutcome::Local(Outcome::Respond(200))
        );
        // Without Max-Forwards, 70 is assumed and 69 sent.
        let none = String::from_utf8_lossy(REGISTER).replace("Max-Forwards: 70\r\n", "");
        let (_, out) = run(none.as_bytes(), udp_client(), true);
        assert!(out.contains("\r\nMax-Forwards: 69\r\n\r\nbody"), "{out}");
    }

    #[test]
    fn ipv6_listener_and_client() {
        let uri = target();
        let upstream = Some(Upstream {
            uri: &uri,
            addr: "[::1]:5070".parse().expect("addr"),
        });
        let source = Source {
            addr: "[2001:db8::7]:5062".parse().expect("addr"),
            transport: Transport::Udp,
            connection: None,
        };
        let request = b"INVITE sip:100@x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::7]:5062;branch=z9hG4bKv6\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:100@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
        let mut out = Vec::new();
        let (_, _) = handle(request, source, v6_identity(), upstream, &mut out);
        let forwarded = String::from_utf8(out.clone()).expect("utf8");
        assert!(!forwarded.contains("received="), "{forwarded}");
        let vias: Vec<&str> = forwarded
            .split("\r\n")
            .filter(|l| l.starts_with("Via: "))
            .collect();
        let response = format!(
            "SIP/2.0 180 Ringing\r\n{}\r\n{}\r\nCall-ID: c\r\n\r\n",
            vias[0], vias[1]
        );
        let (outcome, _) = handle(
            response.as_bytes(),
            source,
            v6_identity(),
            upstream,
            &mut out,
        );
        assert_eq!(
            outcome,
            ProxyOutcome::ToClient(Hop {
                transport: Transport::Udp,
                addr: "[2001:db8::7]:5062".parse().expect("addr"),
                connection: None,
            })
        );
    }

    #[test]
    fn rfc4475_messages_never_panic_and_forwarded_ones_scan() {
        let corpus = crate::sip::rfc4475_corpus();
        let Ok(entries) = std::fs::read_dir(&corpus) else {
            panic!("{} is missing", corpus.display());
        };
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).expect("readable");
            for transport in [Transport::Udp, Transport::Tcp] {
                let source = Source {
                    transport,
                    connection: (transport == Transport::Tcp).then_some(1),
                    ..udp_client()
                };
                let (outcome, out) = {
                    let uri = target();
                    let upstream = Some(Upstream {
                        uri: &uri,
                        addr: "127.0.0.1:5070".parse().expect("addr"),
                    });
                    let mut out = Vec::new();
                    let (outcome, _) = handle(&bytes, source, identity(&KEYS), upstream, &mut out);
                    (outcome, out)
                };
                if matches!(outcome, ProxyOutcome::ToUpstream(_)) {
                    assert!(scan::scan(&out).is_ok(), "{}", entry.path().display());
                }
            }
        }
    }
}
