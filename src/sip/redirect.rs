//! The SIP redirect responder, sans-IO: one request in, at most one response out.
//!
//! - every request but ACK gets `302 Moved Temporarily` whose Contact is the active node's
//!   SIP target, with the Request-URI's user part and the transport kept;
//! - ACK is absorbed; responses are dropped;
//! - OPTIONS to the proxy itself (a Request-URI without a user part) gets 200 while some
//!   node is active;
//! - no active node: 503 with Retry-After; Max-Forwards 0: 483;
//! - what cannot be scanned gets 400 when a response can still be formed, else it is dropped.
//!
//! Responses copy every Via, From, Call-ID and CSeq unchanged and To with a tag added, as
//! RFC 3261 §8.2.6 asks. The To tag is derived from the request (§8.2.6.2), so a
//! retransmission gets the same response. Nothing is allocated: the response is written into
//! the caller's buffer.

use super::scan::{self, Name, StartLine};
use super::uri::{Host, SipUri};
use super::Transport;
use std::net::IpAddr;

/// Seconds a client should wait when no node is active.
pub const RETRY_AFTER_SECONDS: u32 = 5;

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status code is in the buffer.
    Respond(u16),
    /// ACK: absorbed, nothing to send.
    Absorbed,
    /// A response, or something no response can be formed for: dropped.
    Dropped(DropReason),
}

/// Why a message was dropped without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// It was a response.
    Response,
    /// It could not be scanned far enough to answer.
    Unanswerable,
}

/// Where to send clients: the active node's SIP target, if any node is active.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// The active node's target URI (`sip:10.0.0.1:5070`), `None` when nobody is active.
    pub target: Option<&'a SipUri>,
    /// The active node's SIP-over-TLS target (`sip:10.0.0.1:5071;transport=tls`), for
    /// requests that arrived over TLS; without one they get `target` with `transport=tls`.
    pub tls_target: Option<&'a SipUri>,
}

/// The method, for metrics with a bounded label set.
pub fn method_label(method: &[u8]) -> &'static str {
    const KNOWN: [&str; 14] = [
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "INFO",
        "PRACK",
        "UPDATE",
        "MESSAGE",
        "REFER",
    ];
    KNOWN
        .iter()
        .find(|known| known.as_bytes() == method)
        .copied()
        .unwrap_or("other")
}

/// Answers `request`, arrived over `transport`, writing any response into `out` (cleared
/// first). Returns what it did and, for a request, its method.
pub fn respond<'a>(
    request: &'a [u8],
    transport: Transport,
    destination: Destination<'_>,
    out: &mut Vec<u8>,
) -> (Outcome, Option<&'a [u8]>) {
    out.clear();
    let message = match scan::scan(request) {
        Ok(message) => message,
        Err(_) => {
            // Something that calls itself a response is never answered (RFC 3261 §18.1.2),
            // nor would a 400 to it pass the UDP rate guard, which only counts requests.
            let start = request
                .iter()
                .position(|b| !matches!(b, b'\r' | b'\n'))
                .unwrap_or(request.len());
            if request[start..].starts_with(b"SIP/") {
                return (Outcome::Dropped(DropReason::Response), None);
            }
            // Perhaps only the start line or one header is bad: answer 400 if the headers
            // a response needs are there.
            let outcome = match head_of(request) {
                Some(head) if write_response(out, 400, "Bad Request", head, None) => {
                    Outcome::Respond(400)
                }
                _ => Outcome::Dropped(DropReason::Unanswerable),
            };
            return (outcome, None);
        }
    };
    let StartLine::Request { method, uri } = message.start else {
        return (Outcome::Dropped(DropReason::Response), None);
    };
    if method == b"ACK" {
        return (Outcome::Absorbed, Some(method));
    }
    let head = message.head;
    let respond = |out: &mut Vec<u8>, code: u16, reason: &str, extra: Option<Extra<'_>>| {
        if write_response(out, code, reason, head, extra) {
            Outcome::Respond(code)
        } else {
            Outcome::Dropped(DropReason::Unanswerable)
        }
    };
    // `0`, `00`, ...: the value is a number (RFC 3261 §20.22), not a string.
    let max_forwards = scan::first(head, Name::MaxForwards).map(scan::trim);
    if max_forwards.is_some_and(|v| !v.is_empty() && v.iter().all(|&b| b == b'0')) {
        return (respond(out, 483, "Too Many Hops", None), Some(method));
    }
    // Only the user part and `transport=` matter here: no full URI parse on the hot path.
    let (user, uri_transport) = uri_user_and_transport(uri);
    let contact_transport = uri_transport.or(match transport {
        Transport::Udp => None,
        other => Some(other),
    });
    // A TLS client must land on a TLS port: the active node's TLS service, if it named one.
    let target = match (contact_transport, destination.tls_target) {
        (Some(Transport::Tls), Some(tls_target)) => Some(tls_target),
        _ => destination.target,
    };
    let Some(target) = target else {
        return (
            respond(out, 503, "Service Unavailable", Some(Extra::RetryAfter)),
            Some(method),
        );
    };
    if method == b"OPTIONS" && user.is_none() {
        return (respond(out, 200, "OK", None), Some(method));
    }
    let contact = Contact {
        user,
        target,
        // `sips:` already means TLS (RFC 5630 deprecates adding transport=tls to it).
        transport: contact_transport.filter(|t| !(target.secure && *t == Transport::Tls)),
    };
    (
        respond(out, 302, "Moved Temporarily", Some(Extra::Contact(contact))),
        Some(method),
    )
}

/// The user part and the `transport=` parameter of a SIP Request-URI, without allocating.
pub(crate) fn uri_user_and_transport(uri: &[u8]) -> (Option<&[u8]>, Option<Transport>) {
    let rest = if uri.len() > 5 && uri[..5].eq_ignore_ascii_case(b"sips:") {
        &uri[5..]
    } else if uri.len() > 4 && uri[..4].eq_ignore_ascii_case(b"sip:") {
        &uri[4..]
    } else {
        return (None, None);
    };
    // The user part ends at '@', which must come before any parameter or header.
    let user_end = rest.iter().position(|&b| matches!(b, b'@' | b';' | b'?'));
    let (user, hostpart) = match user_end {
        Some(at) if rest[at] == b'@' => (Some(&rest[..at]), &rest[at + 1..]),
        _ => (None, rest),
    };
    let transport = hostpart.split(|&b| b == b';').skip(1).find_map(|param| {
        let equals = param.iter().position(|&b| b == b'=')?;
        let (key, value) = param.split_at(equals);
        if !key.eq_ignore_ascii_case(b"transport") {
            return None;
        }
        std::str::from_utf8(&value[1..])
            .ok()
            .and_then(Transport::from_param)
    });
    (user.filter(|u| !u.is_empty()), transport)
}

/// FNV-1a: a cheap hash for the To tag (it must be stable, not secret).
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The header section of a message that did not scan, if it has one.
fn head_of(request: &[u8]) -> Option<&[u8]> {
    let start = request.windows(2).position(|w| w == b"\r\n")? + 2;
    let end = request.windows(4).position(|w| w == b"\r\n\r\n")?;
    (start <= end).then(|| &request[start..end])
}

#[derive(Debug, Clone, Copy)]
struct Contact<'a> {
    user: Option<&'a [u8]>,
    target: &'a SipUri,
    transport: Option<Transport>,
}

#[derive(Debug, Clone, Copy)]
enum Extra<'a> {
    Contact(Contact<'a>),
    RetryAfter,
}

/// Appends `value` in decimal, without the formatting machinery (hot path).
fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends the low `width` hex digits of `value`, zero-padded.
fn push_hex(out: &mut Vec<u8>, value: u64, width: u32) {
    for shift in (0..width).rev() {
        let nibble = (value >> (shift * 4)) & 0xf;
        out.push(b"0123456789abcdef"[nibble as usize]);
    }
}

/// Writes a response without extra headers built from the request's headers (for the proxy
/// mode's own answers). False if a needed header is missing.
pub(crate) fn write_plain_response(
    out: &mut Vec<u8>,
    code: u16,
    reason: &str,
    head: &[u8],
) -> bool {
    write_response(out, code, reason, head, None)
}

/// Writes a response built from the request's headers. False if a needed header is missing.
fn write_response(
    out: &mut Vec<u8>,
    code: u16,
    reason: &str,
    head: &[u8],
    extra: Option<Extra<'_>>,
) -> bool {
    use std::io::Write;
    out.clear();
    // One pass collects what the response copies; the Vias too, unless there are very many.
    const VIAS_KEPT: usize = 8;
    let mut vias: [&[u8]; VIAS_KEPT] = [&[]; VIAS_KEPT];
    let mut via_count = 0;
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for (name, value) in scan::headers(head).map_while(Result::ok) {
        match Name::of(name) {
            Name::Via => {
                if let Some(slot) = vias.get_mut(via_count) {
                    *slot = value;
                }
                via_count += 1;
            }
            Name::From => from = from.or(Some(value)),
            Name::To => to = to.or(Some(value)),
            Name::CallId => call_id = call_id.or(Some(value)),
            Name::CSeq => cseq = cseq.or(Some(value)),
            _ => {}
        }
    }
    let (Some(from), Some(to), Some(call_id), Some(cseq)) = (from, to, call_id, cseq) else {
        return false;
    };
    if via_count == 0 {
        return false;
    }
    out.extend_from_slice(b"SIP/2.0 ");
    push_decimal(out, u64::from(code));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    // Every Via, in order and unchanged (§8.2.6.2).
    let mut write_via = |value: &[u8]| {
        out.extend_from_slice(b"Via: ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    if via_count <= VIAS_KEPT {
        vias[..via_count].iter().for_each(|value| write_via(value));
    } else {
        scan::headers(head)
            .map_while(Result::ok)
            .filter(|(name, _)| Name::of(name) == Name::Via)
            .for_each(|(_, value)| write_via(value));
    }
    out.extend_from_slice(b"From: ");
    out.extend_from_slice(from);
    out.extend_from_slice(b"\r\nTo: ");
    out.extend_from_slice(to);
    if scan::param(to, "tag").is_none() {
        // The same request always gets the same tag, so retransmissions match.
        let tag = fnv1a(&[call_id, cseq, from]) & 0xffff_ffff_ffff;
        out.extend_from_slice(b";tag=sp");
        push_hex(out, tag, 12);
    }
    out.extend_from_slice(b"\r\nCall-ID: ");
    out.extend_from_slice(call_id);
    out.extend_from_slice(b"\r\nCSeq: ");
    out.extend_from_slice(cseq);
    out.extend_from_slice(b"\r\n");
    match extra {
        Some(Extra::Contact(contact)) => {
            out.extend_from_slice(b"Contact: <");
            out.extend_from_slice(if contact.target.secure {
                b"sips:"
            } else {
                b"sip:"
            });
            if let Some(user) = contact.user {
                out.extend_from_slice(user);
                out.push(b'@');
            }
            match &contact.target.host {
                Host::Domain(name) => out.extend_from_slice(name.as_bytes()),
                Host::Ip(IpAddr::V4(ip)) => {
                    for (index, octet) in ip.octets().iter().enumerate() {
                        if index > 0 {
                            out.push(b'.');
                        }
                        push_decimal(out, u64::from(*octet));
                    }
                }
                host @ Host::Ip(IpAddr::V6(_)) => {
                    let _ = write!(out, "{host}");
                }
            }
            if let Some(port) = contact.target.port {
                out.push(b':');
                push_decimal(out, u64::from(port));
            }
            if let Some(transport) = contact.transport.or(contact.target.transport) {
                let _ = write!(
                    out,
                    ";transport={}",
                    transport.via_name().to_ascii_lowercase()
                );
            }
            out.extend_from_slice(b">\r\n");
        }
        Some(Extra::RetryAfter) => {
            let _ = write!(out, "Retry-After: {RETRY_AFTER_SECONDS}\r\n");
        }
        None => {}
    }
    out.extend_from_slice(b"Server: standby-proxy\r\nContent-Length: 0\r\n\r\n");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:1234@proxy.example.net SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKaaa;rport\r\n\
Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKbbb\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@example.net>;tag=f1\r\n\
To: <sip:1234@proxy.example.net>\r\n\
Call-ID: c1@192.0.2.5\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";

    fn target() -> SipUri {
        "sip:10.0.0.1:5070".parse().expect("uri")
    }

    fn answer(request: &[u8], transport: Transport, target: Option<&SipUri>) -> (Outcome, String) {
        let mut out = Vec::new();
        let destination = Destination {
            target,
            tls_target: None,
        };
        let (outcome, _) = respond(request, transport, destination, &mut out);
        (outcome, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn invite_gets_302_to_the_active_node_with_the_dialog_headers_copied() {
        let target = target();
        let (outcome, text) = answer(INVITE, Transport::Udp, Some(&target));
        assert_eq!(outcome, Outcome::Respond(302));
        assert!(
            text.starts_with("SIP/2.0 302 Moved Temporarily\r\n"),
            "{text}"
        );
        assert!(text.contains("Via: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKaaa;rport\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKbbb\r\n"), "{text}");
        assert!(text.contains("From: <sip:alice@example.net>;tag=f1\r\n"));
        assert!(text.contains("To: <sip:1234@proxy.example.net>;tag=sp"));
        assert!(text.contains("Call-ID: c1@192.0.2.5\r\nCSeq: 1 INVITE\r\n"));
        assert!(
            text.contains("Contact: <sip:1234@10.0.0.1:5070>\r\n"),
            "{text}"
        );
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        // A retransmission gets the very same answer.
        assert_eq!(answer(INVITE, Transport::Udp, Some(&target)).1, text);
        let scanned = scan::scan(text.as_bytes()).expect("our answer scans");
        assert_eq!(
            scanned.start,
            StartLine::Response {
                code: 302,
                reason: b"Moved Temporarily"
            }
        );
    }

    #[test]
    fn the_transport_is_kept() {
        let target = target();
        let (_, text) = answer(INVITE, Transport::Tcp, Some(&target));
        assert!(
            text.contains("Contact: <sip:1234@10.0.0.1:5070;transport=tcp>"),
            "{text}"
        );
        let via_param = String::from_utf8_lossy(INVITE).replace(
            "proxy.example.net SIP",
            "proxy.example.net;transport=tls SIP",
        );
        let (_, text) = answer(via_param.as_bytes(), Transport::Udp, Some(&target));
        assert!(
            text.contains("Contact: <sip:1234@10.0.0.1:5070;transport=tls>"),
            "{text}"
        );
    }

    #[test]
    fn a_tls_client_is_sent_to_the_tls_target() {
        let (target, tls_target): (SipUri, SipUri) = (
            target(),
            "sip:10.0.0.1:5071;transport=tls".parse().expect("uri"),
        );
        let respond_with_tls = |request: &[u8], transport| {
            let mut out = Vec::new();
            let destination = Destination {
                target: Some(&target),
                tls_target: Some(&tls_target),
            };
            let (outcome, _) = respond(request, transport, destination, &mut out);
            assert_eq!(outcome, Outcome::Respond(302));
            String::from_utf8(out).expect("utf-8")
        };
        let text = respond_with_tls(INVITE, Transport::Tls);
        assert!(
            text.contains("Contact: <sip:1234@10.0.0.1:5071;transport=tls>\r\n"),
            "{text}"
        );
        // Over UDP or TCP the plain target, also with a TLS target known.
        let text = respond_with_tls(INVITE, Transport::Tcp);
        assert!(
            text.contains("Contact: <sip:1234@10.0.0.1:5070;transport=tcp>"),
            "{text}"
        );
        let text = respond_with_tls(INVITE, Transport::Udp);
        assert!(text.contains("Contact: <sip:1234@10.0.0.1:5070>"), "{text}");
        // A Request-URI asking for TLS gets the TLS target whichever way it came.
        let asks_tls = String::from_utf8_lossy(INVITE).replace(
            "proxy.example.net SIP",
            "proxy.example.net;transport=tls SIP",
        );
        let text = respond_with_tls(asks_tls.as_bytes(), Transport::Udp);
        assert!(
            text.contains("Contact: <sip:1234@10.0.0.1:5071;transport=tls>"),
            "{text}"
        );
    }

    #[test]
    fn a_broken_response_gets_no_400() {
        let target = target();
        for broken in [
            &b"SIP/2.0 999 X\r\nVia: SIP/2.0/UDP 192.0.2.5;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"[..],
            &b"\r\nSIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.5;branch=z9hG4bK1\r\nl: x\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"[..],
        ] {
            let (outcome, text) = answer(broken, Transport::Udp, Some(&target));
            assert_eq!(outcome, Outcome::Dropped(DropReason::Response), "{text}");
            assert!(text.is_empty());
        }
    }

    #[test]
    fn a_sips_tls_target_gets_no_transport_parameter() {
        let (target, tls_target): (SipUri, SipUri) =
            (target(), "sips:omm.example.net:5061".parse().expect("uri"));
        let mut out = Vec::new();
        let destination = Destination {
            target: Some(&target),
            tls_target: Some(&tls_target),
        };
        let _ = respond(INVITE, Transport::Tls, destination, &mut out);
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.contains("Contact: <sips:1234@omm.example.net:5061>\r\n"),
            "{text}"
        );
    }

    #[test]
    fn ack_is_absorbed_and_responses_dropped() {
        let target = target();
        let ack = String::from_utf8_lossy(INVITE)
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK");
        assert_eq!(
            answer(ack.as_bytes(), Transport::Udp, Some(&target)).0,
            Outcome::Absorbed
        );
        let response =
            b"SIP/2.0 200 OK\r\nVia: x\r\nFrom: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: 1 X\r\n\r\n";
        assert_eq!(
            answer(response, Transport::Udp, Some(&target)).0,
            Outcome::Dropped(DropReason::Response)
        );
    }

    #[test]
    fn options_to_the_proxy_itself_is_200_while_someone_is_active() {
        let target = target();
        let options = String::from_utf8_lossy(INVITE)
            .replace(
                "INVITE sip:1234@proxy.example.net",
                "OPTIONS sip:proxy.example.net",
            )
            .replace("1 INVITE", "1 OPTIONS");
        assert_eq!(
            answer(options.as_bytes(), Transport::Udp, Some(&target)).0,
            Outcome::Respond(200)
        );
        let (outcome, text) = answer(options.as_bytes(), Transport::Udp, None);
        assert_eq!(outcome, Outcome::Respond(503));
        assert!(text.contains("Retry-After: 5\r\n"));
    }

    #[test]
    fn max_forwards_written_with_leading_zeros_is_still_0() {
        let target = target();
        for zero in ["00", "000"] {
            let hops = String::from_utf8_lossy(INVITE)
                .replace("Max-Forwards: 70", &format!("Max-Forwards: {zero}"));
            let (outcome, _) = answer(hops.as_bytes(), Transport::Udp, Some(&target));
            assert_eq!(outcome, Outcome::Respond(483), "{zero}");
        }
        let ten = String::from_utf8_lossy(INVITE).replace("Max-Forwards: 70", "Max-Forwards: 010");
        assert_eq!(
            answer(ten.as_bytes(), Transport::Udp, Some(&target)).0,
            Outcome::Respond(302)
        );
    }

    #[test]
    fn nobody_active_is_503_and_max_forwards_0_is_483() {
        assert_eq!(
            answer(INVITE, Transport::Udp, None).0,
            Outcome::Respond(503)
        );
        let target = target();
        let hops = String::from_utf8_lossy(INVITE).replace("Max-Forwards: 70", "Max-Forwards: 0");
        assert_eq!(
            answer(hops.as_bytes(), Transport::Udp, Some(&target)).0,
            Outcome::Respond(483)
        );
    }

    #[test]
    fn unparseable_gets_400_when_possible_else_dropped() {
        let target = target();
        let bad_start = String::from_utf8_lossy(INVITE)
            .replace("INVITE sip:1234@proxy.example.net SIP/2.0", "INVITE");
        assert_eq!(
            answer(bad_start.as_bytes(), Transport::Udp, Some(&target)).0,
            Outcome::Respond(400)
        );
        assert_eq!(
            answer(b"\x00\x01garbage", Transport::Udp, Some(&target)).0,
            Outcome::Dropped(DropReason::Unanswerable)
        );
        let no_call_id = String::from_utf8_lossy(INVITE).replace("Call-ID: c1@192.0.2.5\r\n", "");
        assert_eq!(
            answer(no_call_id.as_bytes(), Transport::Udp, Some(&target)).0,
            Outcome::Dropped(DropReason::Unanswerable)
        );
    }

    #[test]
    fn many_vias_are_all_copied_in_order() {
        let vias: String = (0..11)
            .map(|i| format!("Via: SIP/2.0/UDP 10.0.0.{i};branch=z9hG4bK{i}\r\n"))
            .collect();
        let request = format!("INVITE sip:1@x SIP/2.0\r\n{vias}From: <sip:a@x>;tag=1\r\nTo: <sip:1@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n");
        let (outcome, response) = answer(request.as_bytes(), Transport::Udp, Some(&target()));
        assert_eq!(outcome, Outcome::Respond(302));
        assert!(response.contains(&vias), "{response}");
        let few = format!("INVITE sip:1@x SIP/2.0\r\n{}From: <sip:a@x>;tag=1\r\nTo: <sip:1@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n", &vias[..vias.find("Via: SIP/2.0/UDP 10.0.0.3").expect("third")]);
        let (_, response) = answer(few.as_bytes(), Transport::Udp, Some(&target()));
        assert_eq!(response.matches("Via: ").count(), 3, "{response}");
    }

    #[test]
    fn compact_forms_are_answered_too() {
        let target = target();
        let compact = b"INVITE sip:99@p SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:a@h>;tag=1\r\nt: <sip:99@p>\r\ni: x\r\nCSeq: 2 INVITE\r\nl: 0\r\n\r\n";
        let (outcome, text) = answer(compact, Transport::Udp, Some(&target));
        assert_eq!(outcome, Outcome::Respond(302));
        assert!(
            text.contains("Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n")
                && text.contains("Call-ID: x\r\n"),
            "{text}"
        );
    }

    /// RFC 4475: every torture message either gets a well-formed response (which our own
    /// scanner reads back, with the dialog headers present) or nothing at all.
    #[test]
    fn rfc4475_messages_get_a_well_formed_answer_or_none() {
        let dir = crate::sip::rfc4475_corpus();
        let target = target();
        let mut answered = 0;
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).expect("rfc4475 corpus").flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "dat") {
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).expect("readable");
            for transport in [Transport::Udp, Transport::Tcp] {
                let mut out = Vec::new();
                let (outcome, _) = respond(
                    &bytes,
                    transport,
                    Destination {
                        target: Some(&target),
                        tls_target: None,
                    },
                    &mut out,
                );
                match outcome {
                    Outcome::Respond(code) => {
                        let answer = scan::scan(&out).unwrap_or_else(|e| {
                            panic!("{}: our answer does not scan: {e}", path.display())
                        });
                        assert_eq!(
                            answer.start,
                            StartLine::Response {
                                code,
                                reason: match answer.start {
                                    StartLine::Response { reason, .. } => reason,
                                    _ => b"",
                                }
                            }
                        );
                        for name in [Name::Via, Name::From, Name::To, Name::CallId, Name::CSeq] {
                            assert!(
                                scan::first(answer.head, name).is_some(),
                                "{}: {name:?} missing",
                                path.display()
                            );
                        }
                        answered += 1;
                    }
                    Outcome::Absorbed | Outcome::Dropped(_) => {
                        assert!(out.is_empty(), "{}", path.display())
                    }
                }
            }
        }
        assert_eq!(files, 50, "the corpus has 49 RFC messages plus TC_TEST_I");
        assert!(answered >= 60, "only {answered} answers");
    }
}
