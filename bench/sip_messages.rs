//! The SIP hot path per message, without any IO: the scanner alone, the redirect mode's
//! scan + 302 build, and the proxy mode's scan + forwarded request and relayed response.
//!
//! Run: `cargo bench --bench sip_messages`. These bound the CPU the front end spends per
//! message (bench/sip measures the whole server against Kamailio); a change that makes the
//! hot path allocate or rescan shows here first.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use standby_proxy::sip::proxy::{self, Source, Upstream};
use standby_proxy::sip::redirect::{self, Destination};
use standby_proxy::sip::scan;
use standby_proxy::sip::uri::SipUri;
use standby_proxy::sip::Transport;
use std::hint::black_box;

/// A typical INVITE from a DECT handset's OMM-facing SIP stack, with an SDP body.
const INVITE: &[u8] = b"INVITE sip:4711@omm.example.net SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.1.1.7:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:4711@omm.example.net>\r\n\
From: \"Handset 12\" <sip:12@omm.example.net>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@10.1.1.7\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:12@10.1.1.7:5060>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY\r\n\
User-Agent: bench-handset/1.0\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 142\r\n\r\n\
v=0\r\no=12 2890844526 2890844526 IN IP4 10.1.1.7\r\ns=-\r\nc=IN IP4 10.1.1.7\r\nt=0 0\r\n\
m=audio 49170 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n";

fn bench(c: &mut Criterion) {
    let target: SipUri = "sip:10.0.0.1:5070".parse().expect("uri");
    let mut group = c.benchmark_group("sip");
    group.throughput(Throughput::Elements(1));
    group.bench_function("scan", |b| {
        b.iter(|| black_box(scan::scan(black_box(INVITE)).is_ok()))
    });
    let mut out = Vec::with_capacity(2048);
    group.bench_function("redirect: scan + 302", |b| {
        b.iter(|| {
            let destination = Destination {
                target: Some(&target),
                tls_target: None,
            };
            black_box(redirect::respond(black_box(INVITE), Transport::Udp, destination, &mut out).0)
        })
    });
    let source = Source {
        addr: "192.0.2.7:40000".parse().expect("addr"),
        transport: Transport::Udp,
        connection: None,
    };
    let upstream = Some(Upstream {
        uri: &target,
        addr: "10.0.0.1:5070".parse().expect("addr"),
    });
    let listener = "10.0.0.2:5060";
    let keys = proxy::RouteKeys::new(b"the benchmark's route key.......", None);
    let listener = proxy::Identity {
        listener,
        keys: &keys,
    };
    group.bench_function("proxy: scan + forwarded request", |b| {
        b.iter(|| {
            black_box(proxy::handle(black_box(INVITE), source, listener, upstream, &mut out).0)
        })
    });
    // The active node's answer to the forwarded request, relayed back.
    let (_, _) = proxy::handle(INVITE, source, listener, upstream, &mut out);
    let forwarded = String::from_utf8(out.clone()).expect("utf8");
    let vias: Vec<&str> = forwarded
        .split("\r\n")
        .filter(|l| l.starts_with("Via: "))
        .collect();
    let response = format!(
        "SIP/2.0 180 Ringing\r\n{}\r\n{}\r\nTo: <sip:4711@omm.example.net>;tag=x\r\nFrom: <sip:12@omm.example.net>;tag=1928301774\r\nCall-ID: a84b4c76e66710@10.1.1.7\r\nCSeq: 314159 INVITE\r\nContent-Length: 0\r\n\r\n",
        vias[0], vias[1]
    );
    group.bench_function("proxy: scan + relayed response", |b| {
        b.iter(|| {
            black_box(
                proxy::handle(
                    black_box(response.as_bytes()),
                    source,
                    listener,
                    upstream,
                    &mut out,
                )
                .0,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
