//! The registrar prober against real peers: Kamailio as the registrar (UDP and TCP) and
//! dnsmasq serving NAPTR, SRV and A records on a loopback port for RFC 3263 resolution.

#[path = "common/peers.rs"]
mod peers;

use peers::{Dnsmasq, Kamailio};
use standby_proxy::sip::prober::{self, ProberConfig, Rule};
use standby_proxy::sip::resolve::{self, ResolveError};
use standby_proxy::sip::uri::SipUri;
use standby_proxy::sip::{TokenSource, Transport};
use std::time::Duration;

fn config(targets: &[&str]) -> ProberConfig {
    ProberConfig {
        targets: targets.iter().map(|t| t.parse().expect("uri")).collect(),
        rule: Rule::Any,
        interval: Duration::from_millis(500),
        timeout: Duration::from_millis(300),
        t1: Duration::from_millis(50),
        rise: 1,
        fall: 1,
        codes: Vec::new(),
    }
}

fn uri(text: &str) -> SipUri {
    text.parse().expect("uri")
}

/// Records for the domain `pair.test`: NAPTR says TCP, SRV has two targets by priority.
fn pair_test_records(first: u16, second: u16) -> Vec<String> {
    vec![
        "--naptr-record=pair.test,10,10,S,SIP+D2T,,_sip._tcp.pair.test".to_owned(),
        format!("--srv-host=_sip._tcp.pair.test,reg1.pair.test,{first},10,0"),
        format!("--srv-host=_sip._tcp.pair.test,reg2.pair.test,{second},20,0"),
        "--host-record=reg1.pair.test,127.0.0.1".to_owned(),
        "--host-record=reg2.pair.test,127.0.0.1".to_owned(),
        "--srv-host=_sip._udp.srv.test,reg.srv.test,25999,10,0".to_owned(),
        "--host-record=reg.srv.test,127.0.0.1".to_owned(),
    ]
}

#[tokio::test]
async fn naptr_then_srv_by_priority_then_addresses() {
    let dns = Dnsmasq::start(25153, &pair_test_records(25101, 25102));
    let resolver = resolve::resolver(Some(dns.addr())).expect("resolver");
    let found = resolve::resolve(&uri("sip:pair.test"), &resolver, &mut TokenSource::new())
        .await
        .expect("resolves");
    let got: Vec<(Transport, u16)> = found.iter().map(|c| (c.transport, c.addr.port())).collect();
    assert_eq!(got, [(Transport::Tcp, 25101), (Transport::Tcp, 25102)]);
    assert!(
        dns.log().contains("NAPTR") || dns.log().contains("type=35"),
        "{}",
        dns.log()
    );
}

#[tokio::test]
async fn without_naptr_the_srv_records_choose_the_transport() {
    let dns = Dnsmasq::start(25154, &pair_test_records(25101, 25102));
    let resolver = resolve::resolver(Some(dns.addr())).expect("resolver");
    let found = resolve::resolve(&uri("sip:srv.test"), &resolver, &mut TokenSource::new())
        .await
        .expect("resolves");
    assert_eq!(found[0].transport, Transport::Udp);
    assert_eq!(found[0].addr, "127.0.0.1:25999".parse().expect("addr"));
}

#[tokio::test]
async fn an_explicit_port_means_addresses_only() {
    let dns = Dnsmasq::start(25155, &pair_test_records(25101, 25102));
    let resolver = resolve::resolver(Some(dns.addr())).expect("resolver");
    let found = resolve::resolve(
        &uri("sip:reg1.pair.test:5099"),
        &resolver,
        &mut TokenSource::new(),
    )
    .await
    .expect("resolves");
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].transport, found[0].addr.port()),
        (Transport::Udp, 5099)
    );
    let log = dns.log();
    assert!(
        !log.contains("_sip._"),
        "no SRV lookups with an explicit port:\n{log}"
    );
}

#[tokio::test]
async fn a_name_without_records_is_a_clear_error() {
    let dns = Dnsmasq::start(25156, &pair_test_records(25101, 25102));
    let resolver = resolve::resolver(Some(dns.addr())).expect("resolver");
    let error = resolve::resolve(&uri("sip:nothing.test"), &resolver, &mut TokenSource::new())
        .await
        .expect_err("nothing there");
    assert!(
        matches!(&error, ResolveError::NotFound { name, .. } if name == "nothing.test"),
        "{error}"
    );
}

#[tokio::test]
async fn kamailio_answers_over_udp_and_tcp() {
    let kamailio = Kamailio::start(25110);
    let resolver = resolve::resolver(Some("127.0.0.1:9".parse().expect("addr"))).expect("resolver");
    for (text, transport) in [
        ("sip:127.0.0.1:25110", "UDP"),
        ("sip:127.0.0.1:25110;transport=tcp", "TCP"),
    ] {
        let config = config(&[text]);
        let answer = prober::probe(
            &config.targets[0],
            &config,
            &resolver,
            None,
            &mut TokenSource::new(),
            1,
        )
        .await
        .unwrap_or_else(|f| panic!("{text}: {}", f.reason));
        assert_eq!(answer.code, 200);
        assert_eq!(
            answer.target,
            format!("{transport} 127.0.0.1:{}", kamailio.port)
        );
        println!(
            "{transport} OPTIONS round trip to Kamailio: {:?}",
            answer.rtt
        );
    }
}

#[tokio::test]
async fn the_next_srv_target_is_tried_when_one_fails() {
    // reg1 (priority 10) has nobody on its port; reg2 (priority 20) is Kamailio.
    let kamailio = Kamailio::start(25120);
    let dns = Dnsmasq::start(25157, &pair_test_records(25121, kamailio.port));
    let resolver = resolve::resolver(Some(dns.addr())).expect("resolver");
    let config = config(&["sip:pair.test"]);
    let answer = prober::probe(
        &config.targets[0],
        &config,
        &resolver,
        None,
        &mut TokenSource::new(),
        1,
    )
    .await
    .unwrap_or_else(|f| panic!("{}", f.reason));
    assert_eq!(answer.target, format!("TCP 127.0.0.1:{}", kamailio.port));
}

#[tokio::test]
async fn a_hung_registrar_is_unreachable_until_it_answers_again() {
    let kamailio = Kamailio::start(25130);
    let resolver = resolve::resolver(Some("127.0.0.1:9".parse().expect("addr"))).expect("resolver");
    let config = config(&["sip:127.0.0.1:25130"]);
    let target = &config.targets[0];
    let mut tokens = TokenSource::new();
    assert!(
        prober::probe(target, &config, &resolver, None, &mut tokens, 1)
            .await
            .is_ok()
    );
    kamailio.freeze();
    let failure = prober::probe(target, &config, &resolver, None, &mut tokens, 2)
        .await
        .expect_err("a frozen registrar does not answer");
    assert!(
        failure.reason.contains("no answer within 300ms"),
        "{}",
        failure.reason
    );
    kamailio.thaw();
    assert!(
        prober::probe(target, &config, &resolver, None, &mut tokens, 3)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn records_are_looked_up_again_when_their_ttl_runs_out() {
    // dnsmasq serves local records with a TTL of 1s; the same resolver sees a change after it.
    let records = |port: u16| {
        vec![
            format!("--srv-host=_sip._udp.ttl.test,reg.ttl.test,{port},10,0"),
            "--host-record=reg.ttl.test,127.0.0.1".to_owned(),
        ]
    };
    let dns = Dnsmasq::start(25158, &records(25001));
    let resolver = resolve::resolver(Some(dns.addr())).expect("resolver");
    let mut tokens = TokenSource::new();
    let first = resolve::resolve(&uri("sip:ttl.test"), &resolver, &mut tokens)
        .await
        .expect("resolves");
    assert_eq!(first[0].addr.port(), 25001);
    drop(dns);
    let _dns = Dnsmasq::start(25158, &records(25002));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = resolve::resolve(&uri("sip:ttl.test"), &resolver, &mut tokens)
        .await
        .expect("resolves");
    assert_eq!(
        second[0].addr.port(),
        25002,
        "the cached answer outlived its TTL"
    );
}

/// Two registrars, one answering (Kamailio) and one not (a closed port): `any` is reachable,
/// `all` is not.
#[tokio::test]
async fn the_group_rule_any_or_all_decides() {
    let kamailio = Kamailio::start(25140);
    for (rule, expected) in [(Rule::Any, true), (Rule::All, false)] {
        let mut config = config(&["sip:127.0.0.1:25140", "sip:127.0.0.1:25141"]);
        config.rule = rule;
        config.interval = Duration::from_millis(100);
        config.timeout = Duration::from_millis(80);
        config.t1 = Duration::from_millis(20);
        let resolver =
            resolve::resolver(Some("127.0.0.1:9".parse().expect("addr"))).expect("resolver");
        let (flips_tx, mut flips) = tokio::sync::mpsc::channel(4);
        let (status_tx, status) = tokio::sync::watch::channel(prober::ProberStatus::default());
        prober::spawn(config, resolver, None, flips_tx, status_tx);
        let flip = tokio::time::timeout(Duration::from_secs(5), flips.recv())
            .await
            .expect("the group decides")
            .expect("a flip");
        assert_eq!(flip, expected, "{rule:?}");
        // The group may be decided by one registrar before the other reports.
        let mut status = status;
        let status = tokio::time::timeout(
            Duration::from_secs(5),
            status.wait_for(|s| s.targets.iter().all(|t| t.reachable.is_some())),
        )
        .await
        .expect("both registrars decided")
        .expect("prober running")
        .clone();
        assert_eq!(status.reachable, Some(expected));
        assert_eq!(status.targets[0].reachable, Some(true));
        assert_eq!(status.targets[1].reachable, Some(false));
        assert!(
            status.targets[1]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("refused")),
            "{status:?}"
        );
    }
    drop(kamailio);
}
