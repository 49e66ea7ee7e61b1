//! An idle timeout for client connections that costs one timer per connection, not one per
//! request: hyper's per-request header timer cost 15% of the redirect throughput
//! (bench/http). A connection on which no byte moved either way for one to two periods is
//! closed.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How often bytes moved on a connection: counters, not a clock, so the hot path reads no
/// time at all.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Reads and writes that moved bytes.
    moves: AtomicU64,
    /// Reads that brought bytes.
    reads: AtomicU64,
}

impl Activity {
    /// Records that bytes moved.
    pub fn touch(&self) {
        self.counts.moves.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that bytes arrived.
    fn touch_read(&self) {
        self.counts.reads.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// Resolves once nothing has moved for a whole `period` (so after between one and two
    /// periods of silence).
    pub async fn idle_for(&self, period: Duration) {
        let mut seen = self.counts.moves.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(period).await;
            let now = self.counts.moves.load(Ordering::Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
    }
}

/// The requests a connection's handler has begun, and how many are running, so that a
/// connection's watch can tell bytes of a request head from bytes a handler is reading.
#[derive(Debug, Default)]
pub struct Requests {
    begun: AtomicU64,
    running: AtomicU64,
}

/// A request being handled: counted as running until dropped.
#[derive(Debug)]
pub struct Running<'a>(&'a Requests);

impl Requests {
    /// A request's handler begins.
    pub fn begin(&self) -> Running<'_> {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.running.fetch_add(1, Ordering::Relaxed);
        Running(self)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why [`watch`] ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Nothing moved either way for `idle`.
    Idle,
    /// Bytes kept arriving for a whole `head` with no request begun and none running: a
    /// client trickling a request head.
    SlowHead,
}

/// One timer per connection for both the idle timeout and the request-head deadline (hyper's
/// own head timer costs one timer per request, 15% of the redirect throughput). It looks
/// every half `head`: a connection is idle after `idle` to `idle` + `head`/2 of silence, and
/// a request head that is not whole (no request begun) between `head` and 1.5 × `head`
/// after its first byte is ended, however slowly its bytes come.
pub async fn watch(
    activity: &Activity,
    requests: &Requests,
    idle: Duration,
    head: Duration,
) -> Ended {
    let tick = (head / 2).min(idle).max(Duration::from_millis(1));
    let counts = &activity.counts;
    let (mut moves, mut reads) = (
        counts.moves.load(Ordering::Relaxed),
        counts.reads.load(Ordering::Relaxed),
    );
    let mut begun = requests.begun.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    // How long a request head has been arriving: from the look that first saw its bytes,
    // through silent looks too (a byte every `head` must not restart it), until a request
    // begins or runs.
    let mut head_for: Option<Duration> = None;
    loop {
        tokio::time::sleep(tick).await;
        let (now_moves, now_reads) = (
            counts.moves.load(Ordering::Relaxed),
            counts.reads.load(Ordering::Relaxed),
        );
        let now_begun = requests.begun.load(Ordering::Relaxed);
        quiet = if now_moves == moves {
            quiet + tick
        } else {
            Duration::ZERO
        };
        if quiet >= idle {
            return Ended::Idle;
        }
        head_for = if now_begun != begun || requests.running.load(Ordering::Relaxed) > 0 {
            None
        } else if let Some(arriving) = head_for {
            Some(arriving + tick)
        } else if now_reads != reads {
            Some(Duration::ZERO)
        } else {
            None
        };
        // The first look came up to a tick after the first byte: ended between `head` and
        // 1.5 × `head` after it.
        if head_for.is_some_and(|arriving| arriving >= head) {
            return Ended::SlowHead;
        }
        (moves, reads, begun) = (now_moves, now_reads, now_begun);
    }
}

/// A stream that records its activity.
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    activity: Activity,
}

/// Wraps `stream`; the [`Activity`] tells when it went quiet.
pub fn track<S>(stream: S) -> (Tracked<S>, Activity) {
    let activity = Activity::default();
    (
        Tracked {
            inner: stream,
            activity: activity.clone(),
        },
        activity,
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch_read();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn quiet_connections_are_noticed_busy_ones_are_not() {
        let (client, server) = tokio::io::duplex(64);
        let (mut server, activity) = track(server);
        let mut client = client;
        let watch = activity.clone();
        let idle = tokio::spawn(async move { watch.idle_for(Duration::from_millis(100)).await });
        // Traffic every 40 ms keeps it open past several periods.
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            client.write_all(b"x").await.expect("write");
            let mut byte = [0u8; 1];
            server.read_exact(&mut byte).await.expect("read");
            assert!(!idle.is_finished());
        }
        // Silence: noticed within two periods.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(idle.is_finished());
    }

    #[tokio::test]
    async fn a_trickled_head_is_ended_a_handled_request_and_a_quiet_client_are_not() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut server, activity) = track(server);
        let requests = Arc::new(Requests::default());
        let (idle, head) = (Duration::from_millis(400), Duration::from_millis(100));
        let watched = {
            let (activity, requests) = (activity.clone(), requests.clone());
            tokio::spawn(async move { watch(&activity, &requests, idle, head).await })
        };
        let mut byte = [0u8; 1];
        // A request begun every 40 ms while bytes flow: served, not a slow head.
        for _ in 0..8 {
            client.write_all(b"x").await.expect("write");
            server.read_exact(&mut byte).await.expect("read");
            drop(requests.begin());
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        // A running request reading its body slowly: not a slow head either.
        let running = requests.begin();
        for _ in 0..6 {
            client.write_all(b"x").await.expect("write");
            server.read_exact(&mut byte).await.expect("read");
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        drop(running);
        assert!(!watched.is_finished());
        // A byte every 20 ms and no request: ended within 1.5 heads and a look.
        for _ in 0..10 {
            client.write_all(b"x").await.expect("write");
            server.read_exact(&mut byte).await.expect("read");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(watched.await.expect("watch"), Ended::SlowHead);
        // A byte every whole head period (every other look sees nothing): still ended.
        let (mut dripping, dripped) = tokio::io::duplex(64);
        let (mut dripped, drip_activity) = track(dripped);
        let drip_requests = Arc::new(Requests::default());
        let drip_watch = {
            let (activity, requests) = (drip_activity.clone(), drip_requests.clone());
            tokio::spawn(async move { watch(&activity, &requests, idle, head).await })
        };
        for _ in 0..4 {
            dripping.write_all(b"x").await.expect("write");
            dripped.read_exact(&mut byte).await.expect("read");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(drip_watch.is_finished());
        assert_eq!(drip_watch.await.expect("watch"), Ended::SlowHead);
        // Silence alone: idle, never a slow head.
        let watched = tokio::spawn(async move { watch(&activity, &requests, idle, head).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!watched.is_finished());
        assert_eq!(watched.await.expect("watch"), Ended::Idle);
    }
}
