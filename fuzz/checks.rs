// What the fuzz targets check, shared with the regression test in the normal suite
// (tests/fuzz_regressions.rs includes this file), so an input that once failed keeps being
// checked by `cargo test` exactly as the fuzzer checked it.

use standby_proxy::peer::frame;
use standby_proxy::sip::proxy::{self, ProxyOutcome, Source, Upstream};
use standby_proxy::sip::redirect::{self, Destination, Outcome};
use standby_proxy::sip::scan::{self, StartLine};
use standby_proxy::sip::uri::SipUri;
use standby_proxy::sip::Transport;

/// The SIP front end on one message: the scanner, the redirect responder and the proxy,
/// over each transport, with and without an active node. Whatever they send must scan as a
/// SIP message of the right kind and stay within a bounded size.
pub fn sip_front(data: &[u8]) {
    let _ = scan::scan(data);
    let target: SipUri = "sip:10.0.0.1:5070".parse().expect("fixed URI");
    let tls_target: SipUri = "sip:10.0.0.1:5071;transport=tls"
        .parse()
        .expect("fixed URI");
    let mut out = Vec::new();
    let bound = data.len() * 2 + 1024;
    for transport in [Transport::Udp, Transport::Tcp, Transport::Tls] {
        for active in [Some(&target), None] {
            let destination = Destination {
                target: active,
                tls_target: active.map(|_| &tls_target),
            };
            let (outcome, _) = redirect::respond(data, transport, destination, &mut out);
            if let Outcome::Respond(code) = outcome {
                assert!(out.len() <= bound, "response of {} bytes", out.len());
                let response = scan::scan(&out).expect("our response scans");
                assert!(
                    matches!(response.start, StartLine::Response { code: c, .. } if c == code),
                    "status line"
                );
            } else {
                assert!(out.is_empty() || matches!(outcome, Outcome::Respond(_)));
            }
        }
        let source = Source {
            addr: "192.0.2.7:40000".parse().expect("fixed address"),
            transport,
            connection: (transport != Transport::Udp).then_some(7),
        };
        let upstream = Upstream {
            uri: &target,
            addr: "10.0.0.1:5070".parse().expect("fixed address"),
        };
        let keys = proxy::RouteKeys::new(b"the fuzzer's fixed route key....", None);
        let identity = proxy::Identity {
            listener: "10.0.0.2:5060",
            keys: &keys,
        };
        let (outcome, _) = proxy::handle(data, source, identity, Some(upstream), &mut out);
        match outcome {
            ProxyOutcome::ToUpstream(_) => {
                assert!(out.len() <= bound, "forwarded {} bytes", out.len());
                let forwarded = scan::scan(&out).expect("the forwarded request scans");
                assert!(matches!(forwarded.start, StartLine::Request { .. }));
                assert!(scan::top_via(forwarded.head).is_some_and(
                    |via| via.starts_with(b"SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-sp")
                ));
            }
            ProxyOutcome::ToClient(_) => {
                assert!(out.len() <= data.len(), "a relayed response only shrinks");
                let relayed = scan::scan(&out).expect("the relayed response scans");
                assert!(matches!(relayed.start, StartLine::Response { .. }));
            }
            ProxyOutcome::Local(Outcome::Respond(_)) => {
                scan::scan(&out).expect("our response scans");
            }
            ProxyOutcome::Local(_) | ProxyOutcome::Dropped(_) => {}
        }
    }
}

/// The peer link's frame reader on a byte stream: a length prefix over the limit is refused
/// before allocating, anything else decodes or is refused, and what decodes re-encodes to
/// a frame that decodes to the same message.
pub fn peer_frame(data: &[u8]) {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut reader = data;
    let mut buffer = Vec::new();
    let limit = 4096;
    let result = {
        let read = frame::read_message(&mut reader, &mut buffer, limit);
        let mut read = std::pin::pin!(read);
        // Reading from a byte slice never waits: one poll finishes.
        match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("a read from memory did not finish"),
        }
    };
    assert!(buffer.len() <= limit, "allocated past the limit");
    if let Ok(message) = result {
        let encoded = frame::encode(&message);
        let again = frame::decode(&encoded[4..]).expect("our own encoding decodes");
        assert_eq!(again, message);
    }
    let _ = frame::decode(data);
}

/// The framing of a SIP byte stream (front end TCP/TLS): whatever arrives, in pieces,
/// every message taken off lies within the buffer and the limit, a buffer waiting for
/// more never holds more than the limit, and the incremental framer the front end uses
/// says exactly what the one-shot framing says.
pub fn sip_stream(data: &[u8]) {
    use standby_proxy::sip::framing::{self, Frame, Framer};
    // The first byte, if any, picks where the pieces split (one read may end anywhere).
    let step = data.first().map_or(1, |b| usize::from(*b % 16) + 1);
    for max in [64, 1024, 65_536] {
        let mut buffer = Vec::new();
        let mut framer = Framer::new(max);
        'pieces: for piece in data.chunks(step) {
            buffer.extend_from_slice(piece);
            loop {
                let frame = framing::next(&buffer, max);
                assert_eq!(framer.next(&buffer), frame, "the framers disagree");
                match frame {
                    Frame::Complete(end) => {
                        assert!(end > 0 && end <= max && end <= buffer.len(), "end {end}");
                        buffer.drain(..end);
                    }
                    Frame::Incomplete => {
                        assert!(buffer.len() <= max, "{} bytes waiting", buffer.len());
                        break;
                    }
                    Frame::TooLarge | Frame::Unframeable(_) => break 'pieces,
                }
            }
        }
    }
}

/// The registrar prober's reader on what a registrar (or whoever answers for it) sends on
/// a stream, in two pieces: it finds the probe's answer, asks for more with the buffer
/// within the limit, or gives up; it never panics.
pub fn prober_stream(data: &[u8]) {
    use standby_proxy::sip::options::Probe;
    use standby_proxy::sip::prober::{take_answers, MAX_ANSWER};
    use standby_proxy::sip::TokenSource;
    let target: SipUri = "sip:10.0.0.1".parse().expect("fixed URI");
    let local = "10.0.0.2:5060".parse().expect("fixed address");
    let probe = Probe::new(
        &target,
        Transport::Tcp,
        local,
        1,
        &mut TokenSource::seeded(7),
    );
    let mut buffer = Vec::new();
    let (first, second) = data.split_at(data.len() / 2);
    for piece in [first, second] {
        buffer.extend_from_slice(piece);
        match take_answers(&mut buffer, &probe) {
            Ok(None) => assert!(buffer.len() <= MAX_ANSWER, "{} bytes waiting", buffer.len()),
            Ok(Some(code)) => {
                assert!((100..700).contains(&code), "code {code}");
                return;
            }
            Err(_) => return,
        }
    }
}
