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

/// How often bytes moved on a connection: a counter, not a clock, so the hot path reads no
/// time at all.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    moves: Arc<AtomicU64>,
}

impl Activity {
    /// Records that bytes moved.
    pub fn touch(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for a whole `period` (so after between one and two
    /// periods of silence).
    pub async fn idle_for(&self, period: Duration) {
        let mut seen = self.moves.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(period).await;
            let now = self.moves.load(Ordering::Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
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
            self.activity.touch();
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
}
