//! This node's own report for the status page ([`NodeReport`]), made for the admin API and
//! for the peer that asks over the link; and the sampler that keeps its last minutes.
//!
//! It runs on the control plane and only reads: the engine's status (through the engine
//! task's request channel, as the admin API does), the store's conflict count, the shared
//! view of who is active, and the process's metrics. Each read has a deadline, so a busy
//! store or engine task makes a report with a gap, never a stuck page or peer.

use super::history::{History, Sample, STEP};
use crate::admin::pair::{FrontEndReport, NodeReport, StoreReport};
use crate::admin::{AdminRequest, StatusReport};
use crate::config::{FrontMode, FrontendConfig, FrontendKind};
use crate::lock::lock;
use crate::store::api::StoreHandle;
use crate::telemetry;
use crate::view::SharedView;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the engine's task or the store's may take to answer a report's question: two
/// of them fit in the peer link's deadline for a report.
const ASK_WITHIN: Duration = Duration::from_millis(300);

/// Makes the report; shared by the admin API, the peer link and the sampler.
pub(super) struct Reporter {
    engine: mpsc::Sender<AdminRequest>,
    store: StoreHandle,
    /// Name, kind and listening address of each front end, as configured.
    front_ends: Vec<(String, String, String)>,
    view: SharedView,
    history: Mutex<History>,
}

impl Reporter {
    pub(super) fn new(
        engine: mpsc::Sender<AdminRequest>,
        store: StoreHandle,
        front_ends: &[FrontendConfig],
        view: SharedView,
    ) -> Self {
        Reporter {
            engine,
            store,
            front_ends: front_ends.iter().map(describe).collect(),
            view,
            history: Mutex::new(History::default()),
        }
    }

    /// This node's own report; `None` once the engine's task is gone (shutdown).
    pub(super) async fn make(&self) -> Option<NodeReport> {
        let status = self.status().await?;
        let (latest_counts, history) = {
            let history = lock(&self.history);
            (history.latest().cloned(), history.report())
        };
        let store = store_report(&status, latest_counts.as_ref());
        Some(NodeReport {
            software: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: crate::config::version::spoken_protocol_version().to_string(),
            at_unix_ms: super::driver::unix_ms(),
            front_ends: self.front_end_reports(latest_counts.as_ref()),
            store,
            history,
            status,
        })
    }

    async fn status(&self) -> Option<StatusReport> {
        let (reply, answer) = oneshot::channel();
        let asked = tokio::time::timeout(ASK_WITHIN, self.engine.send(AdminRequest::Status(reply)));
        asked.await.ok()?.ok()?;
        tokio::time::timeout(ASK_WITHIN, answer).await.ok()?.ok()
    }

    /// The store's conflict count, as the sampler asks it once a second (a flood of page
    /// requests never reaches the store's task).
    async fn conflicts(&self) -> Result<usize, String> {
        match tokio::time::timeout(ASK_WITHIN, self.store.conflicts()).await {
            Ok(Ok(list)) => Ok(list.len()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("the store did not answer in time".to_owned()),
        }
    }

    fn front_end_reports(&self, latest: Option<&Sample>) -> Vec<FrontEndReport> {
        let view = self.view.load();
        let counts = latest.map(|s| &s.counts);
        self.front_ends
            .iter()
            .map(|(name, kind, listen)| FrontEndReport {
                name: name.clone(),
                kind: kind.clone(),
                listen: listen.clone(),
                sends_to: view
                    .active
                    .as_ref()
                    .and_then(|_| view.targets.get(name).cloned()),
                counts: counts
                    .and_then(|c| c.get(name).cloned())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Takes one sample a second, for as long as the node runs.
    pub(super) async fn sample(self: Arc<Self>, metrics: PrometheusHandle) {
        let mut ticks = tokio::time::interval(STEP);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let exposition = telemetry::render(&metrics);
            let mut counts = telemetry::front_end_counts(&exposition);
            // Every front end has a line, traffic or not.
            for (name, _, _) in &self.front_ends {
                counts.entry(name.clone()).or_default();
            }
            let lag = match self.status().await {
                Some(status) => lag(&status),
                None if self.engine.is_closed() => return,
                None => None,
            };
            let conflicts = self.conflicts().await;
            let sample = Sample {
                at: super::driver::now(),
                at_unix_ms: super::driver::unix_ms(),
                conflicts,
                round_trips: telemetry::round_trip_totals(&exposition),
                lag,
                counts,
            };
            lock(&self.history).push(sample);
        }
    }
}

/// The store part of the report: positions from the status, conflicts from the sampler.
fn store_report(status: &StatusReport, latest: Option<&Sample>) -> StoreReport {
    let (conflicts, error) = match latest.map(|s| &s.conflicts) {
        Some(Ok(count)) => (Some(*count), None),
        Some(Err(error)) => (None, Some(error.clone())),
        None => (None, None),
    };
    StoreReport {
        position: status.store_position,
        peer_position: status.peer.as_ref().and_then(|p| p.store_position),
        lag: lag(status),
        conflicts,
        error,
    }
}

/// How many entries the standby trails the active node by, while they are in contact.
fn lag(status: &StatusReport) -> Option<u64> {
    let peer = status.peer.as_ref().filter(|p| p.contact)?;
    let theirs = peer.store_position?;
    let ours = status.store_position;
    match (status.role.as_str(), peer.role.as_deref()) {
        ("active", _) => Some(ours.saturating_sub(theirs)),
        (_, Some("active")) => Some(theirs.saturating_sub(ours)),
        _ => None,
    }
}

/// A front end as the page names it: (name, kind, where it listens).
fn describe(frontend: &FrontendConfig) -> (String, String, String) {
    let mode = |mode: FrontMode| match mode {
        FrontMode::Redirect => "redirect",
        FrontMode::Proxy => "proxy",
    };
    let (kind, listen) = match &frontend.kind {
        FrontendKind::Sip(sip) => {
            let transports: Vec<&str> = [(sip.udp, "udp"), (sip.tcp, "tcp")]
                .into_iter()
                .filter_map(|(on, name)| on.then_some(name))
                .collect();
            let mut listen = format!("{} {}", transports.join("+"), sip.listen);
            if let Some((tls, _)) = &sip.tls {
                listen.push_str(&format!(", tls {tls}"));
            }
            (format!("sip {}", mode(sip.mode)), listen)
        }
        FrontendKind::Http(http) => {
            let scheme = if http.tls.is_some() { "https" } else { "http" };
            (
                format!("{scheme} {}", mode(http.mode)),
                http.listen.to_string(),
            )
        }
        FrontendKind::Tcp(tcp) => ("tcp forward".to_owned(), tcp.listen.to_string()),
    };
    (frontend.name.clone(), kind, listen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::PeerReport;

    fn status(role: &str, ours: u64, peer: Option<(bool, &str, u64)>) -> StatusReport {
        let json = serde_json::json!({
            "node": "a", "role": role, "term": 1, "active_node": null, "no_standby": false,
            "eligible": true, "accepting_writes": false, "handover_pending": false,
            "peer": null,
            "registrar": {"configured": false, "reachable": null, "target": null,
                          "rtt_ms": null, "last_error": null},
            "service": {"configured": false, "healthy": null},
            "store_position": ours,
        });
        let mut status: StatusReport = serde_json::from_value(json).expect("a status");
        status.peer = peer.map(|(contact, role, position)| PeerReport {
            id: "b".to_owned(),
            contact,
            role: Some(role.to_owned()),
            last_seen_ms: Some(1),
            version: Some("1.3".to_owned()),
            version_mismatch: false,
            eligible: Some(true),
            store_position: Some(position),
        });
        status
    }

    #[test]
    fn the_lag_is_how_far_the_standby_trails_the_active_node() {
        assert_eq!(
            lag(&status("active", 10, Some((true, "standby", 7)))),
            Some(3)
        );
        assert_eq!(
            lag(&status("standby", 7, Some((true, "active", 10)))),
            Some(3)
        );
        // A standby ahead (a stale position from before it followed): no negative lag.
        assert_eq!(
            lag(&status("standby", 12, Some((true, "active", 10)))),
            Some(0)
        );
        assert_eq!(
            lag(&status("active", 10, Some((false, "standby", 7)))),
            None
        );
        assert_eq!(
            lag(&status("starting", 0, Some((true, "starting", 0)))),
            None
        );
        assert_eq!(lag(&status("active", 10, None)), None);
    }
}
