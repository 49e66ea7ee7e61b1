//! Prometheus metrics: every name in one place, and the calls the IO layer makes.
//!
//! Names start with `standby_` and follow Prometheus conventions (`_total` for counters,
//! base units such as `_seconds`). The recorder is process-wide; `/metrics` on the admin
//! listener renders it (no exporter listener of its own).

use crate::engine::{Reason, Role};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets for round trips and probe durations: 0.1 ms to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Installs the process-wide recorder once and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed (a test harness); then ours stays
            // unused and renders empty, which that harness will notice.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// The text exposition of every metric.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    handle.render()
}

fn describe() {
    describe_counter!(
        "standby_front_stalls_total",
        "Times a front-end thread did not get back to its loop for a second (seen by the control plane's watchdog)"
    );
    describe_counter!(
        "standby_front_stall_seconds_total",
        "Seconds front-end threads spent stalled"
    );
    describe_counter!(
        "standby_sip_dropped_total",
        "SIP messages the proxy dropped, by reason (bad_mac, not_ours, unroutable_response, unroutable_request)"
    );
    describe_counter!(
        "standby_front_panics_total",
        "Panics while a front end handled one message or connection (that one was dropped, the front end served on)"
    );
    describe_counter!(
        "standby_tls_handshakes_total",
        "TLS handshakes by kind (admin, https, sip_tls, registrar, health, http_upstream) and negotiated version (1.2, 1.3) or failed"
    );
    describe_gauge!(
        "standby_role",
        "1 for this node's current role, 0 for the others"
    );
    describe_gauge!("standby_term", "Highest election term this node knows");
    describe_counter!(
        "standby_transitions_total",
        "Role changes of this node, by from, to and reason"
    );
    describe_gauge!(
        "standby_peer_up",
        "1 while the peer is heard within peer_dead_after"
    );
    describe_histogram!(
        "standby_heartbeat_rtt_seconds",
        "Heartbeat round trip to the peer, its holding time subtracted"
    );
    describe_gauge!(
        "standby_no_standby",
        "1 while active without a functioning standby"
    );
    describe_gauge!("standby_eligible", "1 while this node may become active");
    describe_gauge!(
        "standby_store_failed",
        "1 while the store's disk failed and waits to be reopened (the node is failed meanwhile)"
    );
    describe_gauge!(
        "standby_vip_held",
        "1 while this node holds the floating address (label address, as address/prefix)"
    );
    describe_counter!(
        "standby_vip_errors_total",
        "Failures to add, find, remove or announce a floating address, by operation"
    );
    describe_gauge!(
        "standby_admin_token_in_clear",
        "1 while the admin API takes a token on a non-loopback address without TLS"
    );
    describe_gauge!(
        "standby_active_without_registrar",
        "1 while this node is active although its registrar is unreachable and no peer reaches it (R7b)"
    );
    describe_gauge!(
        "standby_version_mismatch",
        "1 while the peer speaks another protocol major version"
    );
    describe_gauge!(
        "standby_registrar_reachable",
        "1 while the registrar group counts as reachable (after thresholds)"
    );
    describe_histogram!(
        "standby_registrar_probe_duration_seconds",
        "Duration of one registrar probe, by result"
    );
    describe_counter!(
        "standby_registrar_probes_total",
        "Registrar probes, by result"
    );
    describe_gauge!(
        "standby_service_healthy",
        "1 while the local service health check passes"
    );
    describe_counter!(
        "standby_peer_connections_total",
        "Peer link connections, by direction and result"
    );
    describe_counter!(
        "standby_peer_frames_rejected_total",
        "Peer frames that closed a connection, by reason"
    );
    describe_counter!(
        "standby_heartbeats_sent_total",
        "Heartbeats written to the peer"
    );
    describe_counter!(
        "standby_heartbeats_received_total",
        "Heartbeats received from the peer"
    );
    describe_counter!(
        "standby_hooks_total",
        "Role-change hook commands run, by event and result"
    );
    describe_histogram!(
        "standby_hook_duration_seconds",
        "Run time of one hook command, by event"
    );
    describe_counter!(
        "standby_limit_hits_total",
        "Requests or connections refused by a configured limit, by limit"
    );
    describe_counter!(
        "standby_admin_requests_total",
        "Admin API requests, by status code"
    );
    describe_counter!(
        "standby_store_writes_total",
        "Acknowledged store writes, by whether the standby held them too (replicated) or the node was alone (unreplicated)"
    );
    describe_histogram!(
        "standby_store_write_seconds",
        "Time from a store write's arrival to its acknowledgement, by replicated"
    );
    describe_counter!(
        "standby_sip_requests_total",
        "SIP messages at the front end, by front end, method and outcome (status code, forwarded, relayed, absorbed, dropped)"
    );
    describe_counter!(
        "standby_http_requests_total",
        "HTTP requests at the front end, by front end and status code"
    );
    describe_counter!(
        "standby_tcp_connections_total",
        "TCP connections at the forwarder, by front end and result"
    );
    describe_gauge!(
        "standby_tcp_open_connections",
        "TCP connections being forwarded now, by front end"
    );
    describe_counter!(
        "standby_tcp_bytes_total",
        "Bytes forwarded by the TCP front end, by front end and direction"
    );
    describe_counter!(
        "standby_etcd_requests_total",
        "Cluster mode: etcd calls, by call and result (ok, error, timeout)"
    );
    describe_histogram!(
        "standby_etcd_request_seconds",
        "Cluster mode: how long etcd calls took, by call"
    );
    describe_gauge!(
        "standby_cluster_acting_left_seconds",
        "Cluster mode: how long this node may still act as active without a lease renewal (0 when it does not)"
    );
}

fn flag(value: bool) -> f64 {
    if value {
        1.0
    } else {
        0.0
    }
}

/// The current role: one gauge per role, 1 for the current one.
pub fn role(current: Role) {
    for role in Role::ALL {
        gauge!("standby_role", "role" => role.as_str()).set(flag(role == current));
    }
}

/// Whether the admin token would cross the network in clear (see `AdminConfig::token_in_clear`).
pub fn admin_token_in_clear(exposed: bool) {
    gauge!("standby_admin_token_in_clear").set(flag(exposed));
}

/// The warnings an active node can raise.
#[derive(Debug, Clone, Copy, Default)]
pub struct Warnings {
    /// Active without a functioning standby.
    pub no_standby: bool,
    /// Active without the registrar, no peer reaching it (R7b).
    pub active_without_registrar: bool,
}

/// The node's state gauges, refreshed after each engine step.
pub fn state(term: u64, peer_up: bool, warnings: Warnings, eligible: bool, mismatch: bool) {
    gauge!("standby_term").set(term as f64);
    gauge!("standby_active_without_registrar").set(flag(warnings.active_without_registrar));
    gauge!("standby_peer_up").set(flag(peer_up));
    gauge!("standby_no_standby").set(flag(warnings.no_standby));
    gauge!("standby_eligible").set(flag(eligible));
    gauge!("standby_version_mismatch").set(flag(mismatch));
}

/// The store's disk failed (1) or works (0).
pub fn store_failed(failed: bool) {
    gauge!("standby_store_failed").set(flag(failed));
}

/// This node holds the floating address `address` (1) or not (0).
pub fn vip_held(address: &str, held: bool) {
    gauge!("standby_vip_held", "address" => address.to_owned()).set(flag(held));
}

/// Adding, finding, removing or announcing a floating address failed.
pub fn vip_error(operation: &'static str) {
    counter!("standby_vip_errors_total", "operation" => operation).increment(1);
}

/// A role change.
pub fn transition(from: Role, to: Role, reason: Reason) {
    counter!(
        "standby_transitions_total",
        "from" => from.as_str(),
        "to" => to.as_str(),
        "reason" => reason.as_str()
    )
    .increment(1);
}

/// A heartbeat round trip.
pub fn heartbeat_rtt(rtt: Duration) {
    histogram!("standby_heartbeat_rtt_seconds").record(rtt.as_secs_f64());
}

/// The registrar group after thresholds.
pub fn registrar_reachable(reachable: bool) {
    gauge!("standby_registrar_reachable").set(flag(reachable));
}

/// One registrar probe.
pub fn registrar_probe(duration: Duration, passed: bool) {
    let result = if passed { "ok" } else { "failed" };
    histogram!("standby_registrar_probe_duration_seconds", "result" => result)
        .record(duration.as_secs_f64());
    counter!("standby_registrar_probes_total", "result" => result).increment(1);
}

/// The local service health check after thresholds.
pub fn service_healthy(healthy: bool) {
    gauge!("standby_service_healthy").set(flag(healthy));
}

/// A peer link connection: `direction` in/out, `result` accepted/refused/connected/failed.
pub fn peer_connection(direction: &'static str, result: &'static str) {
    counter!("standby_peer_connections_total", "direction" => direction, "result" => result)
        .increment(1);
}

/// A peer frame that closed its connection: `reason` oversized/garbled/unexpected.
pub fn peer_frame_rejected(reason: &'static str) {
    counter!("standby_peer_frames_rejected_total", "reason" => reason).increment(1);
}

/// A heartbeat written to the peer.
pub fn heartbeat_sent() {
    counter!("standby_heartbeats_sent_total").increment(1);
}

/// A heartbeat received from the peer.
pub fn heartbeat_received() {
    counter!("standby_heartbeats_received_total").increment(1);
}

/// One hook command finished: `result` ok/failed/timeout/error.
pub fn hook(event: &'static str, result: &'static str, duration: Duration) {
    counter!("standby_hooks_total", "event" => event, "result" => result).increment(1);
    histogram!("standby_hook_duration_seconds", "event" => event).record(duration.as_secs_f64());
}

/// One TLS handshake of `kind`, by negotiated version (or `failed`).
pub fn tls_handshake(kind: &'static str, version: &'static str) {
    counter!("standby_tls_handshakes_total", "kind" => kind, "version" => version).increment(1);
}

/// A SIP message the proxy dropped, by why (`bad_mac`: a response whose branch MAC did
/// not verify, a forgery or a stale key).
pub fn sip_dropped(reason: &'static str) {
    counter!("standby_sip_dropped_total", "reason" => reason).increment(1);
}

/// A front-end thread's stamp went stale: one stall began.
pub fn front_stall(frontend: &str) {
    counter!("standby_front_stalls_total", "frontend" => frontend.to_owned()).increment(1);
}

/// `seconds` more whole seconds a front-end thread was stalled.
pub fn front_stall_seconds(frontend: &str, seconds: u64) {
    counter!("standby_front_stall_seconds_total", "frontend" => frontend.to_owned())
        .increment(seconds);
}

/// A panic while a front end handled one message; the front end served on.
pub fn front_panic(frontend: &str) {
    counter!("standby_front_panics_total", "frontend" => frontend.to_owned()).increment(1);
}

/// Something refused by a configured limit.
pub fn limit_hit(limit: &'static str) {
    counter!("standby_limit_hits_total", "limit" => limit).increment(1);
}

/// One etcd call of cluster mode (`call`: grant, keep_alive, campaign, ...): its result
/// (`ok`, `error`, `timeout`) and how long it took.
pub fn etcd_call(call: &'static str, result: &'static str, took: Duration) {
    counter!("standby_etcd_requests_total", "call" => call, "result" => result).increment(1);
    histogram!("standby_etcd_request_seconds", "call" => call).record(took.as_secs_f64());
}

/// Cluster mode: how long this node may still act as active without a renewal.
pub fn cluster_acting_left(left: Duration) {
    gauge!("standby_cluster_acting_left_seconds").set(left.as_secs_f64());
}

/// An admin API request and its status code.
pub fn admin_request(code: u16) {
    counter!("standby_admin_requests_total", "code" => code.to_string()).increment(1);
}

/// An acknowledged store write: replicated to the standby or not, and how long it took.
pub fn store_write(replicated: bool, took: Duration) {
    let label = if replicated {
        "replicated"
    } else {
        "unreplicated"
    };
    counter!("standby_store_writes_total", "replication" => label).increment(1);
    histogram!("standby_store_write_seconds", "replication" => label).record(took.as_secs_f64());
}

/// The counter of HTTP requests at the front end answered with `code`.
pub fn http_requests(frontend: &str, code: u16) -> metrics::Counter {
    counter!("standby_http_requests_total", "frontend" => frontend.to_owned(), "code" => code.to_string())
}

/// The counter of TCP connections at the forwarder with `result` (forwarded, no_active,
/// connect_failed, closed_on_change).
pub fn tcp_connections(frontend: &str, result: &'static str) -> metrics::Counter {
    counter!("standby_tcp_connections_total", "frontend" => frontend.to_owned(), "result" => result)
}

/// The gauge of TCP connections being forwarded now.
pub fn tcp_open(frontend: &str) -> metrics::Gauge {
    gauge!("standby_tcp_open_connections", "frontend" => frontend.to_owned())
}

/// The byte counters of one TCP front end: (to the active node, to the client).
pub fn tcp_byte_counters(frontend: &str) -> (metrics::Counter, metrics::Counter) {
    (
        counter!("standby_tcp_bytes_total", "frontend" => frontend.to_owned(), "direction" => "to_active"),
        counter!("standby_tcp_bytes_total", "frontend" => frontend.to_owned(), "direction" => "to_client"),
    )
}

/// Counter handles for `standby_sip_requests_total` by (method, response) of one front
/// end, looked up once each, so the hot path only increments an atomic.
pub struct SipCounters {
    frontend: String,
    handles: std::collections::HashMap<(&'static str, &'static str), metrics::Counter>,
}

impl SipCounters {
    /// The counters of the SIP front end `frontend`.
    pub fn new(frontend: &str) -> Self {
        SipCounters {
            frontend: frontend.to_owned(),
            handles: std::collections::HashMap::new(),
        }
    }

    /// Counts one SIP message at the front end: its method (bounded set) and what it got.
    pub fn count(&mut self, method: &'static str, response: &'static str) {
        let frontend = &self.frontend;
        self.handles
            .entry((method, response))
            .or_insert_with(|| {
                counter!("standby_sip_requests_total", "method" => method, "response" => response, "frontend" => frontend.clone())
            })
            .increment(1);
    }
}

/// The metrics that count what each front end did: SIP messages, HTTP requests, TCP
/// connections. Each carries a `frontend` label.
const FRONT_END_COUNTERS: [&str; 3] = [
    "standby_sip_requests_total",
    "standby_http_requests_total",
    "standby_tcp_connections_total",
];

/// What one front end did so far, read back from the metrics (the status page's counters
/// and its requests-per-second chart).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrontEndCounts {
    /// Every message, request or connection.
    pub total: u64,
    /// By outcome: the SIP `method response`, the HTTP status code, the TCP result.
    pub by_outcome: std::collections::BTreeMap<String, u64>,
}

/// Sums the front-end counters in a text exposition (what [`render`] returns), by front end.
pub fn front_end_counts(exposition: &str) -> std::collections::BTreeMap<String, FrontEndCounts> {
    let mut counts = std::collections::BTreeMap::<String, FrontEndCounts>::new();
    for line in exposition.lines() {
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        if !FRONT_END_COUNTERS.contains(&name) {
            continue;
        }
        let label = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| *k == key)
                .map_or("", |(_, v)| *v)
        };
        let outcome = match name {
            "standby_sip_requests_total" => format!("{} {}", label("method"), label("response")),
            "standby_http_requests_total" => label("code").to_owned(),
            _ => label("result").to_owned(),
        };
        // Counters are whole numbers; `as` saturates.
        let value = value as u64;
        let entry = counts.entry(label("frontend").to_owned()).or_default();
        entry.total = entry.total.saturating_add(value);
        let by = entry.by_outcome.entry(outcome).or_default();
        *by = by.saturating_add(value);
    }
    counts
}

/// The heartbeat round trips so far: their sum in seconds and their count.
pub fn round_trip_totals(exposition: &str) -> (f64, u64) {
    let (mut sum, mut count) = (0.0, 0);
    for (name, _, value) in exposition.lines().filter_map(sample) {
        match name {
            "standby_heartbeat_rtt_seconds_sum" => sum = value,
            "standby_heartbeat_rtt_seconds_count" => count = value as u64,
            _ => {}
        }
    }
    (sum, count)
}

/// A sample's labels: (key, value) in order.
type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One sample line of the exposition: name, labels and a value (finite, not negative). Label values here are
/// our own (front-end names and fixed words: no quotes or commas inside).
fn sample(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let labels = labels
        .split(',')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (key, quoted) = pair.split_once('=')?;
            Some((key, quoted.trim_matches('"')))
        })
        .collect();
    Some((name, labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_end_counters_are_summed_by_front_end_and_outcome() {
        let exposition = "\
# TYPE standby_sip_requests_total counter
standby_sip_requests_total{method=\"INVITE\",response=\"302\",frontend=\"sip\"} 7
standby_sip_requests_total{method=\"OPTIONS\",response=\"302\",frontend=\"sip\"} 3
standby_http_requests_total{frontend=\"web\",code=\"307\"} 5
standby_http_requests_total{frontend=\"web\",code=\"503\"} 1
standby_tcp_connections_total{frontend=\"bases\",result=\"forwarded\"} 2
standby_tcp_open_connections{frontend=\"bases\"} 9
standby_term 4
standby_heartbeat_rtt_seconds_bucket{le=\"+Inf\"} 12
";
        let counts = front_end_counts(exposition);
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert_eq!(counts["sip"].total, 10);
        assert_eq!(counts["sip"].by_outcome["INVITE 302"], 7);
        assert_eq!(counts["web"].total, 6);
        assert_eq!(counts["web"].by_outcome["503"], 1);
        assert_eq!(
            counts["bases"].total, 2,
            "the open-connections gauge is not a count"
        );
    }

    #[test]
    fn the_round_trips_are_read_from_the_histogram() {
        let exposition = "\
standby_heartbeat_rtt_seconds_bucket{le=\"0.001\"} 3
standby_heartbeat_rtt_seconds_sum 0.0042
standby_heartbeat_rtt_seconds_count 4
";
        assert_eq!(round_trip_totals(exposition), (0.0042, 4));
        assert_eq!(round_trip_totals(""), (0.0, 0));
    }

    #[test]
    fn lines_that_are_not_samples_are_skipped() {
        for line in [
            "",
            "#",
            "standby_sip_requests_total{",
            "x{a=\"b\"} NaN",
            "x -1",
            "{} 1",
        ] {
            let counts = front_end_counts(line);
            assert!(counts.is_empty(), "{line:?} gave {counts:?}");
        }
    }
}
