//! `GET /api/v1/pair`: both nodes' own reports side by side, what an operator looks for
//! during an incident. This node makes its own; the peer's comes over the peer link (the node
//! wires a fetcher in), so the browser talks to one origin only.
//!
//! The peer is asked at most once per [`PEER_REPORT_FRESH`] however many pages poll, one
//! fetch at a time, and only while it is in contact and speaks a protocol that answers
//! (1.3 or newer): a page left open costs the peer one small connection a second or less.

use super::StatusReport;
use crate::engine::ProtocolVersion;
use crate::telemetry::FrontEndCounts;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A peer report younger than this is served again instead of asking the peer anew.
pub const PEER_REPORT_FRESH: Duration = Duration::from_millis(500);
/// Longest wait for the peer's report (connect, handshake, answer); pages polling meanwhile
/// wait for the same fetch.
pub const PEER_FETCH_WITHIN: Duration = Duration::from_secs(3);

/// A boxed future, as the sources return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Makes this node's own report (`None`: the node is shutting down).
pub type LocalReportSource = Arc<dyn Fn() -> BoxFuture<Option<NodeReport>> + Send + Sync>;

/// Fetches the peer's own report as JSON, or says why not.
pub type PeerReportSource =
    Arc<dyn Fn() -> BoxFuture<Result<serde_json::Value, String>> + Send + Sync>;

/// `GET /api/v1/pair`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairReport {
    /// What this node says of itself (and of its peer, in `status.peer`).
    pub local: NodeReport,
    /// What the peer says of itself; `None` without a configured peer.
    pub peer: Option<PeerSide>,
}

/// The peer's own report, or why it is missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerSide {
    /// The report, when it came.
    pub report: Option<NodeReport>,
    /// Why there is none (no contact, an older protocol, an error on the way).
    pub error: Option<String>,
    /// How long ago it was fetched, in milliseconds.
    pub age_ms: u64,
}

/// One node's own report: its status and what the status page shows beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// As `GET /api/v1/status` answers.
    pub status: StatusReport,
    /// The software's version.
    #[serde(default)]
    pub software: String,
    /// The peer protocol version the node speaks.
    #[serde(default)]
    pub protocol: String,
    /// When the report was made: wall-clock milliseconds since the Unix epoch (two reports
    /// far apart in time show the nodes' clocks disagree).
    #[serde(default)]
    pub at_unix_ms: u64,
    /// The node's front ends.
    #[serde(default)]
    pub front_ends: Vec<FrontEndReport>,
    /// The node's configuration store.
    #[serde(default)]
    pub store: StoreReport,
    /// The last minutes, one sample a second.
    #[serde(default)]
    pub history: HistoryReport,
}

/// One front end as its node runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontEndReport {
    /// Its configured name.
    pub name: String,
    /// What it is: `sip redirect`, `http proxy`, `tcp`, ...
    pub kind: String,
    /// Where it listens.
    pub listen: String,
    /// Where it sends clients now: the active node's target; `None` while nobody is active.
    pub sends_to: Option<String>,
    /// What it did so far.
    pub counts: FrontEndCounts,
}

/// The configuration store as its node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreReport {
    /// This node's log position.
    pub position: u64,
    /// The peer's, from its heartbeats.
    pub peer_position: Option<u64>,
    /// How many entries the standby trails the active node by, while they are in contact.
    pub lag: Option<u64>,
    /// Conflicts kept from merging a split, waiting for an operator.
    pub conflicts: Option<usize>,
    /// Why the store could not be asked.
    pub error: Option<String>,
}

/// One sample a second over the last minutes, oldest first; `None` where nothing was measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryReport {
    /// Time between samples, in milliseconds.
    pub step_ms: u64,
    /// When the newest sample was taken (wall clock, ms since the Unix epoch).
    pub end_unix_ms: u64,
    /// Heartbeat round trip, in milliseconds.
    pub rtt_ms: Vec<Option<f64>>,
    /// Replication lag, in entries.
    pub lag: Vec<Option<u64>>,
    /// Requests (SIP messages, HTTP requests, TCP connections) per second, by front end.
    pub requests_per_s: BTreeMap<String, Vec<Option<f64>>>,
}

/// What the pair endpoint needs: both sources and the last peer answer.
pub struct PairSources {
    local: LocalReportSource,
    peer: Option<PeerReportSource>,
    /// The last fetch: when, and what came. Locked across a fetch, so there is one at a time.
    last: tokio::sync::Mutex<Option<(Instant, Result<NodeReport, String>)>>,
}

impl PairSources {
    /// `peer` is `None` for a single node.
    pub fn new(local: LocalReportSource, peer: Option<PeerReportSource>) -> Self {
        PairSources {
            local,
            peer,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Both reports; `None` while the node shuts down. This node's own is made last, so
    /// that waiting for the peer's does not make the two look further apart in time (and
    /// their clocks skewed) than they are.
    pub async fn report(&self) -> Option<PairReport> {
        let first = (self.local)().await?;
        let Some(seen) = &first.status.peer else {
            return Some(PairReport {
                local: first,
                peer: None,
            });
        };
        let peer = Some(self.peer_side(seen).await);
        let local = (self.local)().await?;
        Some(PairReport { local, peer })
    }

    async fn peer_side(&self, seen: &super::PeerReport) -> PeerSide {
        let missing = |error: String| PeerSide {
            report: None,
            error: Some(error),
            age_ms: 0,
        };
        if let Some(why) = why_not_ask(seen) {
            return missing(why);
        }
        let Some(fetch) = &self.peer else {
            return missing("this node has no peer link".to_owned());
        };
        let mut last = self.last.lock().await;
        let fresh = last
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < PEER_REPORT_FRESH);
        if !fresh {
            let fetched = match tokio::time::timeout(PEER_FETCH_WITHIN, fetch()).await {
                Ok(answer) => answer.and_then(read_report),
                Err(_) => Err(format!(
                    "the peer did not answer within {PEER_FETCH_WITHIN:?}"
                )),
            };
            *last = Some((Instant::now(), fetched));
        }
        let Some((at, fetched)) = last.as_ref() else {
            return missing("no report yet".to_owned());
        };
        let age_ms = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
        match fetched {
            Ok(report) => PeerSide {
                report: Some(report.clone()),
                error: None,
                age_ms,
            },
            Err(error) => PeerSide {
                error: Some(error.clone()),
                age_ms,
                report: None,
            },
        }
    }
}

/// Why the peer is not asked for its report: no contact, or a protocol that cannot answer
/// (a 1.2 node would refuse the request as a garbled hello).
fn why_not_ask(seen: &super::PeerReport) -> Option<String> {
    if !seen.contact {
        return Some(format!("no contact with {}", seen.id));
    }
    let version = seen
        .version
        .as_deref()
        .and_then(|v| v.parse::<ProtocolVersion>().ok());
    match version {
        Some(version) if version.has(ProtocolVersion::STATUS_REQUESTS) => None,
        Some(version) => Some(format!(
            "{} speaks protocol {version}, which cannot send its own report (that needs {}); \
             upgrade it to see it here",
            seen.id,
            ProtocolVersion::STATUS_REQUESTS
        )),
        None => Some(format!("{} has not said which protocol it speaks", seen.id)),
    }
}

/// The peer's JSON as a report, or the error it sent instead.
fn read_report(value: serde_json::Value) -> Result<NodeReport, String> {
    if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
        return Err(format!("the peer could not report: {error}"));
    }
    serde_json::from_value(value).map_err(|e| format!("the peer's report is unreadable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{PeerReport, RegistrarReport, ServiceReport};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn status(node: &str, peer: Option<PeerReport>) -> StatusReport {
        StatusReport {
            node: node.to_owned(),
            role: "active".to_owned(),
            term: 3,
            active_node: Some(node.to_owned()),
            no_standby: false,
            eligible: true,
            active_without_registrar: false,
            admin_token_in_clear: false,
            store_error: None,
            vips: Vec::new(),
            accepting_writes: true,
            handover_pending: false,
            peer,
            registrar: RegistrarReport {
                configured: false,
                reachable: None,
                target: None,
                rtt_ms: None,
                last_error: None,
                targets: Vec::new(),
            },
            service: ServiceReport {
                configured: false,
                healthy: None,
            },
            transitions: Vec::new(),
            store_position: 5,
            cluster: None,
        }
    }

    fn seen(contact: bool, version: &str) -> PeerReport {
        PeerReport {
            id: "b".to_owned(),
            contact,
            role: Some("standby".to_owned()),
            last_seen_ms: Some(10),
            version: Some(version.to_owned()),
            version_mismatch: false,
            eligible: Some(true),
            store_position: Some(5),
        }
    }

    fn report(node: &str, peer: Option<PeerReport>) -> NodeReport {
        NodeReport {
            status: status(node, peer),
            software: "0.1.0".to_owned(),
            protocol: "1.3".to_owned(),
            at_unix_ms: 1,
            front_ends: Vec::new(),
            store: StoreReport::default(),
            history: HistoryReport::default(),
        }
    }

    /// Sources whose peer answers with `answer`, counting the fetches.
    fn sources(peer: PeerReport, answer: serde_json::Value) -> (PairSources, Arc<AtomicUsize>) {
        let local = report("a", Some(peer));
        let fetches = Arc::new(AtomicUsize::new(0));
        let counted = fetches.clone();
        let local: LocalReportSource = Arc::new(move || {
            let local = local.clone();
            Box::pin(async move { Some(local) })
        });
        let fetch: PeerReportSource = Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            Box::pin(async move { Ok(answer) })
        });
        (PairSources::new(local, Some(fetch)), fetches)
    }

    #[tokio::test]
    async fn the_peer_is_asked_at_most_once_while_its_report_is_fresh() {
        let theirs = serde_json::to_value(report("b", None)).expect("json");
        let (sources, fetches) = sources(seen(true, "1.3"), theirs);
        for _ in 0..5 {
            let pair = sources.report().await.expect("report");
            let peer = pair.peer.expect("a peer");
            assert_eq!(peer.report.expect("its report").status.node, "b");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        tokio::time::sleep(PEER_REPORT_FRESH).await;
        sources.report().await.expect("report");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_peer_out_of_contact_or_on_an_older_protocol_is_not_asked() {
        for (peer, expected) in [
            (seen(false, "1.3"), "no contact with b"),
            (
                seen(true, "1.2"),
                "b speaks protocol 1.2, which cannot send its own report",
            ),
        ] {
            let (sources, fetches) = sources(peer, serde_json::json!({}));
            let side = sources.report().await.expect("report").peer.expect("peer");
            assert!(side.report.is_none());
            let error = side.error.unwrap_or_default();
            assert!(error.contains(expected), "{error}");
            assert_eq!(fetches.load(Ordering::SeqCst), 0, "{expected}");
        }
    }

    #[tokio::test]
    async fn an_error_or_an_unreadable_answer_is_shown_as_such() {
        for (answer, expected) in [
            (
                serde_json::json!({"error": "too large"}),
                "could not report: too large",
            ),
            (serde_json::json!({"status": 5}), "unreadable"),
        ] {
            let (sources, _) = sources(seen(true, "1.4"), answer);
            let side = sources.report().await.expect("report").peer.expect("peer");
            let error = side.error.unwrap_or_default();
            assert!(error.contains(expected), "{error}");
        }
    }
}
