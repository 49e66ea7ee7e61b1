//! TLS as deployed phones and portal clients speak it, against two real `standby-proxy`
//! processes (node a on 127.0.0.1 active, node b on 127.0.0.2 standby):
//!
//! - `openssl s_client` with TLS 1.2 and with TLS 1.3 against every client-facing listener
//!   (SIP over TLS, HTTPS, the admin API), verifying the certificate and the address against
//!   the pair CA; the peer link refuses TLS 1.2;
//! - SIP over TLS 1.2 from Kamailio (an OpenSSL-based SIP stack, pinned to TLS 1.2) in front
//!   of the standby's redirect front end: sipp's calls through it must be redirected to the
//!   active node's `tls_target`, before and after a kill -9 of the active node.
// Real processes run on the real clock.
#![allow(clippy::disallowed_methods)]
// The shared harness has parts only other test files use.
#![allow(dead_code)]

#[path = "common/peers.rs"]
mod peers;

include!("common/pair_harness.rs");

/// Both nodes' SIP front end (redirect, UDP and TLS) and HTTPS front end, from `base`:
/// SIP on +4 (UDP) and +5 (TLS), advertising `sip:<me>:+6` and `sip:<me>:+7;transport=tls`;
/// HTTPS on +8 redirecting to `http://<me>:+9`.
fn front_ends(base: u16) -> String {
    let certs = repo().join("certs");
    format!(
        r#"
[[frontend]]
name = "sip"
kind = "sip"
listen = "{{me}}:{sip}"
transports = ["udp", "tls"]
tls_listen = "{{me}}:{sip_tls}"
tls_cert = "{cert}"
tls_key = "{key}"
target = "sip:{{me}}:{service}"
tls_target = "sip:{{me}}:{tls_service};transport=tls"

[[frontend]]
name = "portal"
kind = "http"
listen = "{{me}}:{https}"
tls_cert = "{cert}"
tls_key = "{key}"
target = "http://{{me}}:{http_service}"
"#,
        sip = base + 4,
        sip_tls = base + 5,
        service = base + 6,
        tls_service = base + 7,
        https = base + 8,
        http_service = base + 9,
        cert = certs.join("front.pem").display(),
        key = certs.join("front.key").display(),
    )
}

/// What `openssl s_client -brief` said of a handshake with 127.0.0.2:`port` at `version`
/// (`-tls1_2`, `-tls1_3`), verifying chain and address against the pair CA; Err with its
/// output when the handshake or the verification failed.
fn s_client(port: u16, version: &str) -> Result<String, String> {
    let output = Command::new("openssl")
        .args(["s_client", "-brief", version])
        .args(["-connect", &format!("127.0.0.2:{port}")])
        .arg("-CAfile")
        .arg(repo().join("certs/ca.pem"))
        .args(["-verify_ip", "127.0.0.2", "-verify_return_error"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("openssl (tests/run-all.sh installs it): {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn every_client_facing_listener_speaks_tls_1_2_and_1_3_verified_against_the_pair_ca() {
    let base = 21400;
    let options = Options {
        admin_extra: "tls_cert = \"certs/front.pem\"\ntls_key = \"certs/front.key\"",
        extra: front_ends(base),
        ..Options::default()
    };
    let mut pair = Pair::new("tls-versions", base, options);
    for node in [&mut pair.a, &mut pair.b] {
        node.admin = node.admin.replace("http://", "https://");
    }
    let pair = pair.started();
    let listeners = [
        ("SIP over TLS", base + 5),
        ("HTTPS", base + 8),
        ("admin API", base + 1),
    ];
    for (listener, port) in listeners {
        for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
            let said =
                s_client(port, flag).unwrap_or_else(|e| panic!("{listener} refused {name}:\n{e}"));
            assert!(
                said.contains(&format!("Protocol version: {name}")),
                "{listener}: {said}"
            );
            assert!(said.contains("Verification: OK"), "{listener}: {said}");
        }
    }
    // The peer link stays TLS 1.3 only.
    let refused = s_client(base, "-tls1_2").expect_err("the peer link must refuse TLS 1.2");
    assert!(refused.contains("alert protocol version"), "{refused}");
    // The operator sees which versions the clients negotiated.
    let metrics = http_get_tls_admin(base + 1);
    for kind in ["sip_tls", "https", "admin"] {
        for version in ["1.2", "1.3"] {
            let name =
                format!("standby_tls_handshakes_total{{kind=\"{kind}\",version=\"{version}\"}}");
            assert!(
                metric(&metrics, &name).is_some_and(|n| n >= 1.0),
                "{name} missing:\n{metrics}"
            );
        }
    }
    assert!(is(&pair, "b", "standby"));
}

/// `/metrics` of the admin API on 127.0.0.2:`port` over HTTPS (curl verifies the pair CA).
fn http_get_tls_admin(port: u16) -> String {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(repo().join("certs/ca.pem"))
        .arg(format!("https://127.0.0.2:{port}/metrics"))
        .output()
        .expect("curl");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn sip_over_tls_1_2_from_an_openssl_stack_lands_on_the_active_nodes_tls_target() {
    let base = 21440;
    let options = Options {
        extra: front_ends(base),
        ..Options::default()
    };
    let mut pair = Pair::new("tls-sip", base, options).started();
    let certs = repo().join("certs");
    let relay_port = base + 20;
    let _relay = peers::Kamailio::tls_relay(
        relay_port,
        ("127.0.0.2", base + 5),
        &certs.join("ca.pem"),
        &certs.join("front.pem"),
        &certs.join("front.key"),
    );
    let relay = format!("127.0.0.1:{relay_port}");
    let tls_target_of = |address: &str| format!("{address}:{};transport=tls>", base + 7);
    sipp_redirect(
        &pair.dir,
        &relay,
        "u1",
        base + 22,
        &tls_target_of("127.0.0.1"),
    )
    .unwrap_or_else(|e| panic!("through the standby to a's TLS target: {e}"));
    // Kamailio spoke TLS 1.2 to the standby's front end.
    let metrics = http_get(&pair.b.admin, "/metrics");
    let name = "standby_tls_handshakes_total{kind=\"sip_tls\",version=\"1.2\"}";
    assert!(
        metric(&metrics, name).is_some_and(|n| n >= 1.0),
        "{name}:\n{metrics}"
    );
    // The check is real: a's plain target is not what the Contact says.
    let plain = format!("127.0.0.1:{};transport=tls>", base + 6);
    assert!(sipp_redirect(&pair.dir, &relay, "u1", base + 24, &plain).is_err());

    pair.a.kill();
    pair.wait("b active after a was killed", |p| is(p, "b", "active"));
    sipp_redirect(
        &pair.dir,
        &relay,
        "u1",
        base + 26,
        &tls_target_of("127.0.0.2"),
    )
    .unwrap_or_else(|e| panic!("to b's TLS target after the failover: {e}"));
}
