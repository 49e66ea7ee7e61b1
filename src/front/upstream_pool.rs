//! The reverse proxy's idle connections to the active node, shared by every client of one
//! front-end thread: a client that closes its connection after each request (as many
//! portal clients and load balancers' health checks do) costs the active node no new
//! connection, and no socket sits in TIME_WAIT for each request.
//!
//! Bounded: at most [`MAX_IDLE`] idle connections per front end (shared by its threads, at
//! least one each), each kept at most [`IDLE_EXPIRY`] idle and used for at most
//! [`MAX_REQUESTS`]. A connection goes back to the pool only once the request went out whole
//! and the response was read to the end: a backend that answers before reading an upload,
//! or a client that goes away half-way, leaves a connection no other client may inherit, and
//! it is closed. Nor does one whose framing or authentication belongs to one client: a
//! response with both Transfer-Encoding and Content-Length, NTLM or Negotiate (which
//! authenticate the connection, not the request).
//!
//! Each is filed under its route (the active node and its base URL): when the active node
//! changes, no new request takes an old node's connection, and the old node's idle ones are
//! closed at the next sweep (every half heartbeat) or request. Requests in flight on them
//! finish or fail as the old node decides.
//!
//! An https node that offers HTTP/2 (ALPN) gets one connection per front-end thread, shared
//! by all its requests at once; requests that ask to upgrade (WebSocket) still take an
//! HTTP/1.1 one.

use crate::engine::NodeId;
use crate::lock::lock;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2, TrySendError};
use hyper::header::{self, HeaderMap};
use hyper::{Request, Response};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// Idle upstream connections kept per front end, over all its threads (nginx's
/// `keepalive` is per worker; 64 is a common setting there).
pub const MAX_IDLE: usize = 64;

/// How long an idle upstream connection is kept: short of the 5 s that Apache and Node keep
/// one, so the active node rarely closes one just as a request goes out on it (if it does
/// before hyper wrote the request, it is sent again on a new connection).
pub const IDLE_EXPIRY: Duration = Duration::from_secs(4);

/// Requests per upstream connection, as nginx's `keepalive_requests`: a busy connection is
/// renewed now and then (a host-name target is resolved again for its successor).
pub const MAX_REQUESTS: u32 = 1000;

/// The idle connections one of `threads` threads keeps: [`MAX_IDLE`] shared, at least one.
pub fn max_idle_per_thread(threads: usize) -> usize {
    (MAX_IDLE / threads.max(1)).max(1)
}

/// Where an upstream connection goes: the active node, and the base URL it advertised.
/// Another node advertising the same URL (a floating address) is another route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The active node.
    pub node: NodeId,
    /// Its base URL for this front end.
    pub base: String,
}

/// The request side of a connection to the active node: HTTP/1.1, one request at a time,
/// or HTTP/2 (an https node that chose it by ALPN), shared by every request of the thread.
pub enum Sender {
    /// HTTP/1.1: this request's alone until it goes back to the pool.
    Http1(http1::SendRequest<RequestBody>),
    /// HTTP/2: one of the clones of the thread's multiplexed connection.
    Http2(http2::SendRequest<RequestBody>),
}

impl Sender {
    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(sender) => sender.is_closed(),
            Sender::Http2(sender) => sender.is_closed(),
        }
    }

    /// Waits until a request can go out on it.
    pub async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::Http1(sender) => sender.ready().await,
            Sender::Http2(sender) => sender.ready().await,
        }
    }

    /// Sends `request`; if it could not go out at all (the connection closed just then), it
    /// comes back with the error.
    pub async fn try_send_request(
        &mut self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<RequestBody>>> {
        match self {
            Sender::Http1(sender) => sender.try_send_request(request).await,
            Sender::Http2(sender) => sender.try_send_request(for_http2(request)).await,
        }
    }

    /// Sends `request`.
    pub async fn send_request(
        &mut self,
        request: Request<RequestBody>,
    ) -> hyper::Result<Response<Incoming>> {
        match self {
            Sender::Http1(sender) => sender.send_request(request).await,
            Sender::Http2(sender) => sender.send_request(for_http2(request)).await,
        }
    }
}

/// `request` (origin form, with `Host`) as HTTP/2 sends it: `:scheme` https and
/// `:authority` the host the client asked for, in the URI.
fn for_http2(request: Request<RequestBody>) -> Request<RequestBody> {
    let (mut parts, body) = request.into_parts();
    parts.version = hyper::Version::HTTP_2;
    let authority = parts
        .headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .and_then(|host| host.parse::<hyper::http::uri::Authority>().ok());
    if let Some(authority) = authority {
        let mut uri = hyper::http::uri::Parts::from(parts.uri.clone());
        uri.scheme = Some(hyper::http::uri::Scheme::HTTPS);
        uri.authority = Some(authority);
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(hyper::http::uri::PathAndQuery::from_static("/"));
        }
        if let Ok(absolute) = hyper::Uri::from_parts(uri) {
            parts.uri = absolute;
        }
    }
    Request::from_parts(parts, body)
}

/// A connection to the active node, and how many requests it has carried.
pub struct Upstream {
    /// Its request side.
    pub sender: Sender,
    /// Requests sent on it so far.
    pub requests: u32,
}

struct Idle {
    route: Route,
    upstream: Upstream,
    since: Instant,
}

/// One front-end thread's idle upstream connections, most recently used last, and its
/// HTTP/2 connection to the active node if that node speaks it.
pub struct UpstreamPool {
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    multiplexed: Mutex<Option<(Route, http2::SendRequest<RequestBody>)>>,
}

impl UpstreamPool {
    /// A pool holding at most `max_idle` connections (at least one).
    pub fn new(max_idle: usize) -> Arc<UpstreamPool> {
        Arc::new(UpstreamPool {
            idle: Mutex::new(VecDeque::new()),
            max_idle: max_idle.max(1),
            multiplexed: Mutex::new(None),
        })
    }

    /// The most recently used idle connection to `route`, if any; closes those to any other
    /// route and those idle too long or closed by the far end.
    pub fn checkout(&self, route: &Route) -> Option<Upstream> {
        let mut idle = lock(&self.idle);
        keep_usable(&mut idle, route, Instant::now());
        idle.pop_back().map(|idle| idle.upstream)
    }

    /// The thread's HTTP/2 connection to `route`, if it has one open; one to another route
    /// is let go (it closes once its requests in flight are done).
    pub fn multiplexed(&self, route: &Route) -> Option<Upstream> {
        let mut multiplexed = lock(&self.multiplexed);
        keep_multiplexed(&mut multiplexed, Some(route));
        let sender = multiplexed.as_ref()?.1.clone();
        Some(Upstream {
            sender: Sender::Http2(sender),
            requests: 0,
        })
    }

    /// Shares `sender`, a new HTTP/2 connection to `route`, with the thread's next requests.
    pub fn share(&self, route: &Route, sender: &http2::SendRequest<RequestBody>) {
        *lock(&self.multiplexed) = Some((route.clone(), sender.clone()));
    }

    /// Closes every idle connection not to `route` (all when there is no active node), idle
    /// too long, or closed by the far end.
    pub fn sweep(&self, route: Option<&Route>) {
        keep_multiplexed(&mut lock(&self.multiplexed), route);
        let mut idle = lock(&self.idle);
        match route {
            Some(route) => keep_usable(&mut idle, route, Instant::now()),
            None => idle.clear(),
        }
    }

    /// Keeps `upstream` for the next request to `route`, unless it is closed or has carried
    /// its share; the oldest goes when the pool is full.
    fn check_in(&self, route: Route, upstream: Upstream) {
        let closed = upstream.sender.is_closed() || upstream.requests >= MAX_REQUESTS;
        // An HTTP/2 connection stays shared; its clone has nothing to give back.
        if closed || matches!(upstream.sender, Sender::Http2(_)) {
            return;
        }
        let mut idle = lock(&self.idle);
        idle.push_back(Idle {
            route,
            upstream,
            since: Instant::now(),
        });
        if idle.len() > self.max_idle {
            idle.pop_front();
        }
    }

    /// Whether it holds no idle connection.
    pub fn is_empty(&self) -> bool {
        lock(&self.idle).is_empty() && lock(&self.multiplexed).is_none()
    }
}

/// Drops (and so closes) the connections not to `route`, idle longer than [`IDLE_EXPIRY`] or
/// closed by the far end.
fn keep_usable(idle: &mut VecDeque<Idle>, route: &Route, now: Instant) {
    idle.retain(|entry| {
        entry.route == *route
            && now.saturating_duration_since(entry.since) < IDLE_EXPIRY
            && !entry.upstream.sender.is_closed()
    });
}

/// Lets go of the HTTP/2 connection if it is closed or not to `route`.
fn keep_multiplexed(
    multiplexed: &mut Option<(Route, http2::SendRequest<RequestBody>)>,
    route: Option<&Route>,
) {
    let usable = multiplexed
        .as_ref()
        .is_some_and(|(to, sender)| Some(to) == route && !sender.is_closed());
    if !usable {
        *multiplexed = None;
    }
}

/// Whether a request with these headers authenticates the connection it goes on (NTLM,
/// Negotiate), which must then not carry another client's requests.
pub fn authenticates_connection(request: &HeaderMap) -> bool {
    connection_auth(request, header::AUTHORIZATION)
}

/// Whether a connection whose response came with `response` headers may carry another
/// client's request, after a request that `authenticated_connection` or not.
pub fn reusable(authenticated_connection: bool, response: &HeaderMap) -> bool {
    let ambiguous_length = response.contains_key(header::TRANSFER_ENCODING)
        && response.contains_key(header::CONTENT_LENGTH);
    !ambiguous_length
        && !authenticated_connection
        && !connection_auth(response, header::WWW_AUTHENTICATE)
}

/// Whether header `name` names NTLM or Negotiate.
fn connection_auth(headers: &HeaderMap, name: header::HeaderName) -> bool {
    headers.get_all(name).iter().any(|value| {
        let scheme = value
            .as_bytes()
            .split(|&byte| byte == b' ')
            .next()
            .unwrap_or_default();
        scheme.eq_ignore_ascii_case(b"NTLM") || scheme.eq_ignore_ascii_case(b"Negotiate")
    })
}

/// The client's request body on its way to the active node, noting when it went out whole.
pub struct RequestBody {
    inner: Incoming,
    sent: Arc<AtomicBool>,
}

impl RequestBody {
    /// `inner`, and the flag that says it was sent whole.
    pub fn new(inner: Incoming) -> (RequestBody, Arc<AtomicBool>) {
        let sent = Arc::new(AtomicBool::new(false));
        let body = RequestBody {
            inner,
            sent: sent.clone(),
        };
        (body, sent)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(context);
        if let Poll::Ready(None) = polled {
            self.sent.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // hyper asks before it polls, and does not poll a body that says it is done.
        let end = self.inner.is_end_stream();
        if end {
            self.sent.store(true, Ordering::Release);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a response body's connection goes when the body is done.
pub struct Home {
    /// The pool of the thread that sent the request.
    pub pool: Arc<UpstreamPool>,
    /// The active node it went to.
    pub route: Route,
    /// The connection.
    pub upstream: Upstream,
    /// Set once the request went out whole.
    pub request_sent: Arc<AtomicBool>,
}

/// The active node's response body, streamed to the client; once read to the end, its
/// connection goes back to the pool if the request went out whole.
pub struct PooledBody {
    inner: Incoming,
    home: Option<Home>,
}

impl PooledBody {
    /// `inner`, whose connection goes `home` at its end.
    pub fn new(inner: Incoming, home: Home) -> PooledBody {
        PooledBody {
            inner,
            home: Some(home),
        }
    }

    /// `inner`, whose connection is not reused.
    pub fn unpooled(inner: Incoming) -> PooledBody {
        PooledBody { inner, home: None }
    }

    fn go_home(&mut self) {
        if let Some(home) = self.home.take() {
            // Still sending the request (the node answered before reading it all): the
            // next request would wait behind it, or be read as part of it.
            if home.request_sent.load(Ordering::Acquire) {
                home.pool.check_in(home.route, home.upstream);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_static(value)))
            .collect()
    }

    #[test]
    fn connections_that_belong_to_one_client_are_not_shared() {
        let none = HeaderMap::new();
        assert!(reusable(false, &none));
        let basic = headers(&[(header::AUTHORIZATION, "Basic dTpw")]);
        assert!(
            !authenticates_connection(&basic),
            "Basic authenticates each request"
        );
        let ntlm = headers(&[(header::AUTHORIZATION, "NTLM TlRMTVNTUAAB")]);
        assert!(authenticates_connection(&ntlm));
        assert!(!reusable(true, &none));
        let negotiate = headers(&[(header::WWW_AUTHENTICATE, "negotiate")]);
        assert!(!reusable(false, &negotiate));
        let both_lengths = headers(&[
            (header::TRANSFER_ENCODING, "chunked"),
            (header::CONTENT_LENGTH, "5"),
        ]);
        assert!(!reusable(false, &both_lengths));
    }

    #[test]
    fn the_idle_connections_of_a_front_end_are_shared_by_its_threads() {
        assert_eq!(max_idle_per_thread(1), 64);
        assert_eq!(max_idle_per_thread(2), 32);
        assert_eq!(max_idle_per_thread(3), 21);
        assert_eq!(max_idle_per_thread(100), 1);
        assert_eq!(max_idle_per_thread(0), 64);
    }
}
