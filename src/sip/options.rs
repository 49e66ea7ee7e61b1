//! The OPTIONS request the registrar prober sends, and recognising its answer.
//!
//! Each request has a fresh RFC 3261 branch (`z9hG4bK` + random), a From tag, a Call-ID and a
//! CSeq. An answer belongs to the request only if its top Via carries the same branch and its
//! Call-ID is the same; the source address alone proves nothing.

use super::scan::{self, Name, StartLine};
use super::uri::SipUri;
use super::{TokenSource, Transport};
use std::net::SocketAddr;

/// One OPTIONS request and what identifies its answer.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The bytes to send.
    pub bytes: Vec<u8>,
    /// The Via branch.
    pub branch: String,
    /// The Call-ID.
    pub call_id: String,
}

impl Probe {
    /// Builds an OPTIONS to `target` sent from `local` over `transport`.
    pub fn new(
        target: &SipUri,
        transport: Transport,
        local: SocketAddr,
        cseq: u32,
        tokens: &mut TokenSource,
    ) -> Probe {
        let branch = format!("z9hG4bK{}", tokens.token());
        let call_id = format!("{}@standby-proxy", tokens.token());
        let tag = tokens.token();
        let host = match local {
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
            SocketAddr::V4(v4) => v4.ip().to_string(),
        };
        let port = local.port();
        let request = format!(
            "OPTIONS {target} SIP/2.0\r\n\
             Via: SIP/2.0/{via} {host}:{port};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:standby-proxy@{host}>;tag={tag}\r\n\
             To: <{target}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} OPTIONS\r\n\
             Accept: application/sdp\r\n\
             User-Agent: standby-proxy/{version}\r\n\
             Content-Length: 0\r\n\r\n",
            via = transport.via_name(),
            version = env!("CARGO_PKG_VERSION"),
        );
        Probe {
            bytes: request.into_bytes(),
            branch,
            call_id,
        }
    }

    /// If `message` is a final answer to this probe, its status code. Provisional answers,
    /// requests, and answers to other requests give `None`.
    pub fn final_answer(&self, message: &[u8]) -> Option<u16> {
        let scanned = scan::scan(message).ok()?;
        let StartLine::Response { code, .. } = scanned.start else {
            return None;
        };
        if code < 200 {
            return None;
        }
        let via = scan::top_via(scanned.head)?;
        let branch = scan::param(via, "branch")?;
        let call_id = scan::first(scanned.head, Name::CallId)?;
        (branch == self.branch.as_bytes() && call_id == self.call_id.as_bytes()).then_some(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> Probe {
        let target: SipUri = "sip:127.0.0.1:5060".parse().expect("uri");
        Probe::new(
            &target,
            Transport::Udp,
            "127.0.0.1:40000".parse().expect("addr"),
            3,
            &mut TokenSource::new(),
        )
    }

    fn answer(code: u16, branch: &str, call_id: &str) -> Vec<u8> {
        format!(
            "SIP/2.0 {code} Whatever\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch={branch};rport=40000\r\n\
             From: <sip:x>;tag=1\r\nTo: <sip:y>;tag=2\r\nCall-ID: {call_id}\r\nCSeq: 3 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn the_request_is_a_proper_options() {
        let p = probe();
        let message = scan::scan(&p.bytes).expect("scans");
        assert_eq!(
            message.start,
            StartLine::Request {
                method: b"OPTIONS",
                uri: b"sip:127.0.0.1:5060"
            }
        );
        assert!(p.branch.starts_with("z9hG4bK") && p.branch.len() > 10);
        for name in [
            Name::Via,
            Name::From,
            Name::To,
            Name::CallId,
            Name::CSeq,
            Name::MaxForwards,
        ] {
            assert!(scan::first(message.head, name).is_some(), "{name:?}");
        }
        assert!(scan::param(scan::first(message.head, Name::From).expect("from"), "tag").is_some());
        assert_eq!(message.content_length, Some(0));
        assert_ne!(probe().branch, p.branch, "every probe has its own branch");
    }

    #[test]
    fn only_its_own_final_answer_counts() {
        let p = probe();
        assert_eq!(
            p.final_answer(&answer(200, &p.branch, &p.call_id)),
            Some(200)
        );
        assert_eq!(
            p.final_answer(&answer(404, &p.branch, &p.call_id)),
            Some(404)
        );
        assert_eq!(
            p.final_answer(&answer(100, &p.branch, &p.call_id)),
            None,
            "provisional"
        );
        assert_eq!(
            p.final_answer(&answer(200, "z9hG4bKother", &p.call_id)),
            None,
            "other branch"
        );
        assert_eq!(
            p.final_answer(&answer(200, &p.branch, "other@x")),
            None,
            "other call"
        );
        assert_eq!(p.final_answer(&p.bytes), None, "a request is no answer");
        assert_eq!(p.final_answer(b"garbage"), None);
    }
}
