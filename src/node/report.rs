//! The status report the admin API serves: the engine's status, the peer as configured and
//! heard, the registrar as the prober last found it, and the newest role changes.

use super::driver::{now, Driver};
use crate::admin::{
    PeerReport, RegistrarReport, RegistrarTargetReport, ServiceReport, StatusReport,
};
use crate::engine::CheckState;
use tracing::debug;

impl Driver {
    /// What `GET /api/v1/status` answers.
    pub(super) fn report(&self) -> StatusReport {
        let status = self.engine.status(now());
        let peer = self.config.peer.as_ref().map(|configured| {
            let heard = status.peer.as_ref();
            PeerReport {
                id: configured.id.to_string(),
                contact: heard.is_some_and(|p| p.contact),
                role: heard.map(|p| p.role.to_string()),
                last_seen_ms: heard
                    .map(|p| u64::try_from(p.last_seen.as_millis()).unwrap_or(u64::MAX)),
                version: heard.map(|p| p.version.to_string()),
                version_mismatch: heard.is_some_and(|p| p.version_mismatch),
                eligible: heard.map(|p| p.eligible),
                store_position: heard.map(|p| p.store_position),
            }
        });
        let known = |state: CheckState| match state {
            CheckState::Passing => Some(true),
            CheckState::Failing => Some(false),
            CheckState::NotConfigured | CheckState::Unknown => None,
        };
        debug!(
            accepted = self
                .link_stats
                .accepted
                .load(std::sync::atomic::Ordering::Relaxed),
            "status requested"
        );
        StatusReport {
            node: status.node_id.to_string(),
            role: status.role.to_string(),
            term: status.term,
            active_node: status.active_node.map(|id| id.to_string()),
            no_standby: status.no_standby,
            eligible: status.eligible,
            active_without_registrar: status.active_without_registrar,
            admin_token_in_clear: self.config.admin.token_in_clear(),
            store_error: self.storage.failure_reason(),
            vips: self
                .vips
                .as_ref()
                .map(|vips| vips.report())
                .unwrap_or_default(),
            accepting_writes: status.accepting_writes,
            handover_pending: status.handover_pending,
            peer,
            registrar: self.registrar_report(status.registrar, known(status.registrar)),
            service: ServiceReport {
                configured: status.service != CheckState::NotConfigured,
                healthy: known(status.service),
            },
            transitions: self.history.iter().cloned().collect(),
            store_position: status.store_position,
            cluster: None,
        }
    }

    /// The registrar part of the status: the group as the engine sees it, and each target
    /// as the prober last found it.
    fn registrar_report(&self, state: CheckState, reachable: Option<bool>) -> RegistrarReport {
        let prober = self.prober_status.borrow();
        registrar_report(&prober, state != CheckState::NotConfigured, reachable)
    }
}

/// The registrar part of the status from what the prober found: `target`/`rtt_ms`/
/// `last_error` describe the first reachable registrar, or else the first one.
pub(super) fn registrar_report(
    prober: &crate::sip::prober::ProberStatus,
    configured: bool,
    reachable: Option<bool>,
) -> RegistrarReport {
    let targets: Vec<RegistrarTargetReport> = prober
        .targets
        .iter()
        .map(|t| RegistrarTargetReport {
            uri: t.uri.clone(),
            reachable: t.reachable,
            target: t.target.clone(),
            rtt_ms: t.rtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
            last_code: t.last_code,
            last_error: t.last_error.clone(),
        })
        .collect();
    let lead = targets
        .iter()
        .find(|t| t.reachable == Some(true))
        .or_else(|| targets.first());
    RegistrarReport {
        configured,
        reachable,
        target: lead.and_then(|t| t.target.clone().or_else(|| Some(t.uri.clone()))),
        rtt_ms: lead.and_then(|t| t.rtt_ms),
        last_error: lead.and_then(|t| t.last_error.clone()),
        targets,
    }
}
