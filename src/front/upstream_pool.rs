//! The reverse proxy's idle connections to the active node, shared by every client of one
//! front-end thread: a client that closes its connection after each request (as many
//! portal clients and load balancers' health checks do) costs the active node no new
//! connection, and no socket sits in TIME_WAIT for each request.
//!
//! Bounded: at most [`MAX_IDLE`] idle connections per front end (split between its
//! threads), each kept at most [`IDLE_EXPIRY`]. A connection goes back to the pool only once
//! its response body has been read to the end (a half-read one is closed, never reused).
//! Each is filed under its route (the active node and its base URL): when the active node
//! changes, no new request takes an old node's connection, and the old node's idle ones are
//! closed at the next sweep (every half heartbeat) or request. Requests in flight on them
//! finish or fail as the old node decides.

use crate::engine::NodeId;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// Idle upstream connections kept per front end, over all its threads (nginx's
/// `keepalive` is per worker; 64 is a common setting there).
pub const MAX_IDLE: usize = 64;

/// How long an idle upstream connection is kept: short of the 60 s many servers allow, so
/// the active node rarely closes one just as a request goes out on it (if it does, the
/// request, not yet sent, is sent again on a new connection).
pub const IDLE_EXPIRY: Duration = Duration::from_secs(30);

/// Where an upstream connection goes: the active node, and the base URL it advertised.
/// Another node advertising the same URL (a floating address) is another route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The active node.
    pub node: NodeId,
    /// Its base URL for this front end.
    pub base: String,
}

struct Idle {
    route: Route,
    sender: SendRequest<Incoming>,
    since: Instant,
}

/// One front-end thread's idle upstream connections, most recently used last.
pub struct UpstreamPool {
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
}

impl UpstreamPool {
    /// A pool holding at most `max_idle` connections (at least one).
    pub fn new(max_idle: usize) -> Arc<UpstreamPool> {
        Arc::new(UpstreamPool {
            idle: Mutex::new(VecDeque::new()),
            max_idle: max_idle.max(1),
        })
    }

    /// The most recently used idle connection to `route`, if any; closes those to any other
    /// route and those idle too long or closed by the far end.
    pub fn checkout(&self, route: &Route) -> Option<SendRequest<Incoming>> {
        let mut idle = lock(&self.idle);
        keep_usable(&mut idle, route, Instant::now());
        idle.pop_back().map(|idle| idle.sender)
    }

    /// Closes every idle connection not to `route` (none when there is no active node),
    /// idle too long, or closed by the far end.
    pub fn sweep(&self, route: Option<&Route>) {
        let mut idle = lock(&self.idle);
        if idle.is_empty() {
            return;
        }
        match route {
            Some(route) => keep_usable(&mut idle, route, Instant::now()),
            None => idle.clear(),
        }
    }

    /// Keeps `sender` for the next request to `route`; the oldest goes when the pool is full.
    fn check_in(&self, route: Route, sender: SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        idle.push_back(Idle {
            route,
            sender,
            since: Instant::now(),
        });
        if idle.len() > self.max_idle {
            idle.pop_front();
        }
    }

    /// How many idle connections it holds.
    pub fn len(&self) -> usize {
        lock(&self.idle).len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops (and so closes) the connections not to `route`, idle longer than [`IDLE_EXPIRY`] or
/// closed by the far end.
fn keep_usable(idle: &mut VecDeque<Idle>, route: &Route, now: Instant) {
    idle.retain(|entry| {
        entry.route == *route
            && now.saturating_duration_since(entry.since) < IDLE_EXPIRY
            && !entry.sender.is_closed()
    });
}

/// A poisoned lock only means a task panicked mid-update; the queue is still whole.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The active node's response body, streamed to the client; once read to the end, its
/// connection goes back to the pool.
pub struct PooledBody {
    inner: Incoming,
    home: Option<(Arc<UpstreamPool>, Route, SendRequest<Incoming>)>,
}

impl PooledBody {
    /// `inner`, whose connection `sender` returns to `pool` under `route` at its end.
    pub fn new(
        inner: Incoming,
        pool: Arc<UpstreamPool>,
        route: Route,
        sender: SendRequest<Incoming>,
    ) -> PooledBody {
        PooledBody {
            inner,
            home: Some((pool, route, sender)),
        }
    }

    /// `inner`, whose connection is not reused.
    pub fn unpooled(inner: Incoming) -> PooledBody {
        PooledBody { inner, home: None }
    }

    fn go_home(&mut self) {
        if let Some((pool, route, sender)) = self.home.take() {
            pool.check_in(route, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(context);
        match &polled {
            Poll::Ready(None) => self.go_home(),
            // The connection is broken: never reuse it.
            Poll::Ready(Some(Err(_))) => self.home = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    /// The server stops polling a body of known length once it has it all: read to the end
    /// counts as done. Dropped half-read (the client went away), the connection closes.
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.go_home();
        }
    }
}
