//! HTTP/2 for the HTTPS front end and the admin API: offered by ALPN on TLS only (plain
//! HTTP stays HTTP/1.1, as browsers do), with the bounds HTTP/2 reopens for a hostile client:
//! concurrent streams, the header list, and streams reset by the client (CVE-2023-44487,
//! "rapid reset"), each counted in `standby_limit_hits_total`.
//!
//! - **Concurrent streams**: at most [`MAX_CONCURRENT_STREAMS`] per connection (nginx's
//!   default); h2 refuses more with `REFUSED_STREAM`. A request that brings its connection to
//!   the limit is counted as `http2_concurrent_streams`.
//! - **Header list**: a request whose header list (RFC 9113 §6.5.2 size) exceeds the limit
//!   gets `431` and is counted as `http2_header_list`. The size advertised to the client, and
//!   enforced by h2 itself (431, uncounted), is twice that, so the count sees every client that
//!   heeds the setting and h2 bounds the memory of those that do not.
//! - **Resets**: h2 ends a connection (GOAWAY `ENHANCE_YOUR_CALM`) on which more than
//!   [`MAX_PENDING_RESETS`] streams were reset before they could be served, or more than
//!   [`MAX_LOCAL_ERROR_RESETS`] streams failed on protocol errors; a connection whose client
//!   cancels more than [`CANCELS_PER_SECOND`] streams a second on average (bursts of twice that)
//!   while they are being served is ended by us. All three count as `http2_reset_flood`.

use crate::idle::Ended;
use hyper::body::{Body, Incoming};
use hyper::header::HeaderMap;
use hyper::server::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

/// The ALPN name of HTTP/2 over TLS (RFC 9113 §3.2).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN names an HTTP server over TLS offers, preferred first.
pub const ALPN_HTTP: &[&[u8]] = &[ALPN_H2, b"http/1.1"];
/// Streams open at once on one connection (nginx: `http2_max_concurrent_streams 128`).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Streams the client reset before the server could take them, at once (h2's own default).
pub const MAX_PENDING_RESETS: usize = 20;
/// Streams that ended on a protocol error of the client's, per connection (hyper's default).
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Streams a client may cancel while they are served, per second on average.
pub const CANCELS_PER_SECOND: u32 = 100;

/// Whether the TLS handshake chose HTTP/2.
pub fn negotiated(alpn: Option<&[u8]>) -> bool {
    alpn == Some(ALPN_H2)
}

/// An HTTP/2 server with the limits above; `max_header_list` is the size counted and answered
/// by [`Streams::begin`].
pub fn server(max_header_list: u32) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(max_header_list.saturating_mul(2))
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS);
    builder
}

/// Counts a connection that h2 ended for a flood of resets; true if it was one.
pub fn count_ended(error: &hyper::Error) -> bool {
    let flood = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<h2::Error>())
        .is_some_and(|error| {
            !error.is_remote() && error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
        });
    if flood {
        crate::telemetry::limit_hit("http2_reset_flood");
    }
    flood
}

/// Serves one HTTP/2 connection on `io` (TLS that chose `h2`): `answer` answers each request,
/// `refused` one whose header list is over `max_header_list` (431). Ends when the connection
/// does, when `watch` says why, or (quietly, counted) when the client cancels too many
/// streams.
pub async fn serve<S, A, F, B>(
    io: S,
    max_header_list: u32,
    watch: impl Future<Output = Ended>,
    answer: A,
    refused: fn() -> Response<B>,
) -> Result<hyper::Result<()>, Ended>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let streams = Streams::new(max_header_list);
    let connection_streams = streams.clone();
    let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (answer, streams) = (answer.clone(), streams.clone());
        async move {
            let Ok(stream) = streams.begin(request.headers()) else {
                return Ok::<_, Infallible>(refused());
            };
            let response = answer(request).await;
            stream.answered();
            Ok(response)
        }
    });
    let connection = server(max_header_list).serve_connection(TokioIo::new(io), handler);
    let result = tokio::select! {
        result = connection => Ok(result),
        ended = watch => Err(ended),
        () = connection_streams.flooded() => {
            tracing::debug!("HTTP/2 client cancels too many streams: connection closed");
            return Ok(Ok(()));
        }
    };
    if let Ok(Err(error)) = &result {
        count_ended(error);
    }
    result
}

/// Why [`Streams::begin`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its header list is over the limit: answer 431.
    HeaderList,
}

/// The streams of one HTTP/2 connection being served, and the client's cancellations.
#[derive(Debug)]
pub struct Streams {
    max_header_list: usize,
    open: AtomicU32,
    cancels: Mutex<CancelBucket>,
    flood: Notify,
}

/// A token bucket of cancellations: [`CANCELS_PER_SECOND`] a second, bursts of twice that.
#[derive(Debug)]
struct CancelBucket {
    tokens: f64,
    at: Option<Instant>,
}

impl CancelBucket {
    const BURST: f64 = 2.0 * CANCELS_PER_SECOND as f64;

    /// Takes one cancellation at `now`; false once the client has cancelled too many.
    fn take(&mut self, now: Instant) -> bool {
        let since = self
            .at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        self.at = Some(now);
        self.tokens =
            (self.tokens + since.as_secs_f64() * f64::from(CANCELS_PER_SECOND)).min(Self::BURST);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

impl Streams {
    /// A connection's streams, with `max_header_list` as the counted header limit.
    pub fn new(max_header_list: u32) -> Arc<Streams> {
        Arc::new(Streams {
            max_header_list: max_header_list as usize,
            open: AtomicU32::new(0),
            cancels: Mutex::new(CancelBucket {
                tokens: CancelBucket::BURST,
                at: None,
            }),
            flood: Notify::new(),
        })
    }

    /// A request begins on this connection: refused if its header list is too large;
    /// otherwise a guard that notices if the client cancels the stream before it is answered.
    pub fn begin(self: &Arc<Self>, headers: &HeaderMap) -> Result<Stream, Refused> {
        if header_list_size(headers) > self.max_header_list {
            crate::telemetry::limit_hit("http2_header_list");
            return Err(Refused::HeaderList);
        }
        let open = self.open.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if open >= MAX_CONCURRENT_STREAMS {
            crate::telemetry::limit_hit("http2_concurrent_streams");
        }
        Ok(Stream {
            streams: self.clone(),
            answered: false,
        })
    }

    /// Resolves once the client has cancelled too many streams: end the connection.
    pub async fn flooded(&self) {
        self.flood.notified().await;
    }

    #[allow(clippy::disallowed_methods)] // the IO layer reads the clock for the bucket
    fn cancelled(&self) {
        let mut bucket = match self.cancels.lock() {
            Ok(bucket) => bucket,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !bucket.take(Instant::now()) {
            crate::telemetry::limit_hit("http2_reset_flood");
            // notify_one keeps the permit if the connection is not waiting yet.
            self.flood.notify_one();
        }
    }
}

/// One request being served on an HTTP/2 connection; dropped unanswered = cancelled.
#[derive(Debug)]
pub struct Stream {
    streams: Arc<Streams>,
    answered: bool,
}

impl Stream {
    /// The answer is ready: dropping the guard now is no cancellation.
    pub fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.streams.open.fetch_sub(1, Ordering::Relaxed);
        if !self.answered {
            self.streams.cancelled();
        }
    }
}

/// The size of a header list as HTTP/2 counts it: name + value + 32 per field.
fn header_list_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| {
            name.as_str()
                .len()
                .saturating_add(value.len())
                .saturating_add(32)
        })
        .fold(0usize, usize::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // any instant will do: the bucket is given its times
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = CancelBucket {
            tokens: CancelBucket::BURST,
            at: None,
        };
        let burst = (0..1000).take_while(|_| bucket.take(start)).count();
        assert_eq!(burst, 2 * CANCELS_PER_SECOND as usize);
        let later = start + Duration::from_millis(100);
        let refilled = (0..1000).take_while(|_| bucket.take(later)).count();
        assert_eq!(refilled, CANCELS_PER_SECOND as usize / 10);
    }

    #[test]
    fn a_header_list_over_the_limit_is_refused_and_cancels_flood() {
        let streams = Streams::new(200);
        let mut headers = HeaderMap::new();
        headers.insert("x-small", "1".parse().expect("value"));
        let stream = streams.begin(&headers).expect("small list");
        stream.answered();
        headers.insert("x-big", "y".repeat(200).parse().expect("value"));
        assert_eq!(streams.begin(&headers).err(), Some(Refused::HeaderList));

        headers.remove("x-big");
        for _ in 0..CancelBucket::BURST as usize {
            drop(streams.begin(&headers).expect("stream"));
        }
        assert_eq!(streams.open.load(Ordering::Relaxed), 0);
        // The next cancellation is one too many: the connection's waiter is told at once.
        drop(streams.begin(&headers).expect("stream"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), streams.flooded())
                .await
                .expect("flood noticed");
        });
    }
}
