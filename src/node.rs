//! Runs one node: the async driver around the sans-IO engine.
//!
//! One task owns the engine. It sleeps until the engine's next deadline or until shutdown is
//! asked for, feeds that in with the current time, and carries out every output in order.
//! The clock is tokio's, so tests may pause it.

use crate::config::Config;
use crate::engine::{Engine, Event, Input, Output, Role};
use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

/// What a finished run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// The role when shutdown was asked for.
    pub last_role: Role,
    /// Highest term known at the end.
    pub term: u64,
}

/// Runs the node until `shutdown` completes, then announces leaving (R7) and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> RunSummary {
    let span = info_span!("node", id = %config.node.id);
    async move {
        if let Some(peer) = &config.peer {
            // The engine is ready for a peer, but this build has no peer link yet: say so
            // rather than let an operator believe the pair is watching each other.
            warn!(
                peer = %peer.id,
                "this build has no peer link yet; the peer will never be heard and this node acts alone"
            );
        }
        let mut engine = Engine::new(
            config.engine_config(),
            Instant::now().into_std(),
            incarnation(),
            0,
        );
        info!(role = %engine.role(), "started");
        carry_out(&mut engine);
        tokio::pin!(shutdown);
        loop {
            // No deadline (a lone active node has nothing to time) means: wait for input.
            let deadline = engine.poll_timeout();
            let wake = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = wake => {
                    engine.handle(Instant::now().into_std(), Input::Timeout);
                    carry_out(&mut engine);
                }
            }
        }
        let last_role = engine.role();
        info!(role = %last_role, "shutting down");
        engine.handle(Instant::now().into_std(), Input::Shutdown);
        carry_out(&mut engine);
        RunSummary {
            last_role,
            term: engine.term(),
        }
    }
    .instrument(span)
    .await
}

/// Identifies this run of the process; grows across restarts because it is wall time.
#[allow(clippy::disallowed_methods)] // the driver is where the wall clock may be read
fn incarnation() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Carries out every pending output of the engine.
fn carry_out(engine: &mut Engine) {
    while let Some(output) = engine.poll_output() {
        match output {
            // No peer link in this build: heartbeats have nowhere to go.
            Output::Send(heartbeat) => {
                debug!(seq = heartbeat.seq, "heartbeat not sent: no peer link")
            }
            Output::RoleChanged(change) => info!(
                from = %change.from,
                to = %change.to,
                term = change.term,
                reason = change.reason.as_str(),
                "role changed"
            ),
            Output::Event(Event::NoStandby { warning: true }) => {
                warn!("No Standby: this node is active without a functioning standby")
            }
            Output::Event(Event::NoStandby { warning: false }) => info!("No Standby cleared"),
            Output::Event(event) => info!(?event, "engine event"),
        }
    }
}
