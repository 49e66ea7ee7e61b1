//! Each node's own status report, fetched by its peer over the peer link (protocol 1.3), so
//! the status page can put both nodes' words side by side without a second origin for the
//! browser.
//!
//! A fetch is one connection: the hello (channel `Status`), then one `Status` frame back,
//! then both close. It never shares a connection with heartbeats or replication, so a slow
//! report can delay neither. The link does not look into the report: the node makes it
//! (a [`StatusSource`]) and the admin API shows it.
//!
//! Bounds: one request is answered at a time (another arriving meanwhile is closed and
//! counted); making the report, writing it and the whole fetch each have a deadline; a report
//! larger than the frame limit is answered with an error instead.

use super::frame::{self, FrameError, PeerMessage};
use crate::telemetry;
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

/// How long making this node's report may take (it asks the engine's task and the store's).
const MAKE_WITHIN: Duration = Duration::from_secs(1);
/// How long writing the answer may take.
const WRITE_WITHIN: Duration = Duration::from_secs(2);
/// How long the asking side waits for the answer once connected.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// A boxed future, as the status closures return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Makes this node's own status report (JSON), for the peer that asks.
pub type StatusSource = Arc<dyn Fn() -> BoxFuture<Value> + Send + Sync>;

/// Fetches the peer's own status report over the link.
pub type StatusFetcher = Arc<dyn Fn() -> BoxFuture<Result<Value, FetchError>> + Send + Sync>;

/// Why the peer's report could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No connection (refused, timed out, TLS failed).
    #[error("cannot reach the peer: {0}")]
    Connect(std::io::Error),
    /// The peer did not answer in time.
    #[error("the peer did not answer within {0:?}")]
    Timeout(Duration),
    /// The answer was oversized, garbled or not a status report.
    #[error("the peer's answer was unusable: {0}")]
    Unusable(String),
}

/// Answers one status request on an authenticated `Status` connection: this node's report,
/// or an error object if it cannot be made in time or would exceed `max_frame`.
/// `busy` holds one permit: a second request while one is served is closed unanswered.
pub async fn answer<S: AsyncWrite + AsyncRead + Unpin>(
    mut stream: S,
    source: &StatusSource,
    busy: &Arc<tokio::sync::Semaphore>,
    max_frame: usize,
) {
    let Ok(_permit) = busy.try_acquire() else {
        telemetry::limit_hit("peer_status");
        debug!("peer link: a status request while another is served; closed");
        return;
    };
    let report = match tokio::time::timeout(MAKE_WITHIN, source()).await {
        Ok(report) => report,
        Err(_) => json!({ "error": "the node did not make its status report in time" }),
    };
    let bytes = fitting_answer(report, max_frame);
    let write = async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(WRITE_WITHIN, write).await {
        Ok(Ok(())) => telemetry::peer_connection("in", "status"),
        Ok(Err(error)) => debug!(%error, "peer link: the status answer was not delivered"),
        Err(_) => warn!("peer link: writing the status answer timed out"),
    }
}

/// The answer's frame; an error object instead if the report would exceed `max_frame`
/// (the peer would refuse it, and ours is the limit both nodes are configured with).
fn fitting_answer(report: Value, max_frame: usize) -> Vec<u8> {
    let bytes = frame::encode(&PeerMessage::Status { report });
    if bytes.len().saturating_sub(4) <= max_frame {
        return bytes;
    }
    let size = bytes.len() - 4;
    telemetry::limit_hit("peer_frame");
    frame::encode(&PeerMessage::Status {
        report: json!({
            "error": format!("the status report ({size} bytes) exceeds peer_link.max_frame ({max_frame})")
        }),
    })
}

/// Reads the peer's answer from a connection that already carries our hello.
pub async fn read_answer<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_frame: usize,
) -> Result<Value, FetchError> {
    let mut buffer = Vec::new();
    let read = frame::read_message(stream, &mut buffer, max_frame);
    match tokio::time::timeout(ANSWER_WITHIN, read).await {
        Err(_) => Err(FetchError::Timeout(ANSWER_WITHIN)),
        Ok(Ok(PeerMessage::Status { report })) => Ok(report),
        Ok(Ok(_)) => Err(FetchError::Unusable("not a status report".to_owned())),
        Ok(Err(FrameError::Io(error))) => Err(FetchError::Unusable(format!(
            "the connection ended first: {error}"
        ))),
        Ok(Err(error)) => Err(FetchError::Unusable(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(report: Value, delay: Duration) -> StatusSource {
        Arc::new(move || {
            let report = report.clone();
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                report
            })
        })
    }

    async fn ask(source: &StatusSource, max_frame: usize) -> Result<Value, FetchError> {
        let (mut ours, theirs) = tokio::io::duplex(1 << 20);
        let busy = Arc::new(tokio::sync::Semaphore::new(1));
        let source = source.clone();
        tokio::spawn(async move { answer(theirs, &source, &busy, max_frame).await });
        read_answer(&mut ours, max_frame).await
    }

    #[tokio::test]
    async fn the_report_comes_back_as_made() {
        let report = json!({"node": "a", "role": "active", "history": [1, 2, 3]});
        let answered = ask(&source(report.clone(), Duration::ZERO), 64 * 1024).await;
        assert_eq!(answered.expect("answered"), report);
    }

    #[tokio::test]
    async fn a_report_over_the_frame_limit_is_answered_with_an_error() {
        let report = json!({"padding": "x".repeat(4000)});
        let answered = ask(&source(report, Duration::ZERO), 1024).await;
        let error = answered.expect("answered")["error"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(
            error.contains("exceeds peer_link.max_frame (1024)"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_report_not_made_in_time_is_answered_with_an_error() {
        let answered = ask(&source(json!({}), Duration::from_secs(60)), 64 * 1024).await;
        let error = answered.expect("answered")["error"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(error.contains("in time"), "{error}");
    }

    #[tokio::test]
    async fn a_second_request_while_one_is_served_is_closed() {
        let busy = Arc::new(tokio::sync::Semaphore::new(1));
        let _held = busy.clone().try_acquire_owned().expect("permit");
        let (mut ours, theirs) = tokio::io::duplex(1024);
        answer(theirs, &source(json!({}), Duration::ZERO), &busy, 64 * 1024).await;
        let answered = read_answer(&mut ours, 64 * 1024).await;
        assert!(
            matches!(answered, Err(FetchError::Unusable(_))),
            "{answered:?}"
        );
    }

    #[tokio::test]
    async fn a_silent_peer_is_given_up_on() {
        let (mut ours, _theirs) = tokio::io::duplex(1024);
        let answered = read_answer(&mut ours, 64 * 1024).await;
        assert!(
            matches!(answered, Err(FetchError::Timeout(_))),
            "{answered:?}"
        );
    }
}
