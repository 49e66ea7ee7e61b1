//! The HTTP(S) front end (hyper, HTTP/1.1; TLS with the front certificate).
//!
//! - `redirect`: `307 Temporary Redirect` to the active node's base URL plus the original
//!   path and query (307 keeps the method and body, unlike 302).
//! - `proxy`: a reverse proxy to the active node. Bodies are streamed both ways, never
//!   buffered; `Forwarded` (RFC 7239), `X-Forwarded-For` and `X-Forwarded-Proto` are added;
//!   hop-by-hop headers are dropped; a WebSocket (any `Upgrade`) is passed through once the
//!   active node answers 101. Upstream connections are kept alive whatever the client does,
//!   in a pool shared by the clients of each front-end thread (see [`super::upstream_pool`]).
//! - No active node: `503` with `Retry-After`.

use super::http_at_once::{redirect_at_once, AtOnce, HttpDate, Listener, Prefixed};
use super::limits::{Admission, Admitted, LimitLabels};
use super::upstream_pool::{Home, PooledBody, RequestBody, Route, Sender, Upstream, UpstreamPool};
use super::{Context, FrontError};
use crate::config::ClientLimits;
use crate::config::{FrontMode, HttpFrontend};
use crate::idle::Ended;
use crate::sip::redirect::RETRY_AFTER_SECONDS;
use crate::view::SharedView;
use http_body_util::{Either, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use metrics::Counter;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, debug_span, warn, Instrument};

/// A response body: the active node's, streamed, or empty for our own answers.
pub type Body = Either<PooledBody, Empty<Bytes>>;

/// How long a request head or a TLS handshake may take when the configuration has no
/// `first_message_timeout` (it always has one for HTTP; see config::frontend).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP front end.
pub struct HttpService {
    name: String,
    view: SharedView,
    mode: FrontMode,
    connect_timeout: Duration,
    /// For `https://` targets in proxy mode.
    upstream_tls: Option<UpstreamTls>,
    /// `standby_http_requests_total` by status code, made on first use.
    counters: Vec<OnceLock<Counter>>,
    /// Timeouts (the caps are the admission's).
    limits: ClientLimits,
    /// How often an upgraded tunnel checks that its node is still the active one.
    route_check: Duration,
    /// Addresses of host-name targets, resolved on the control plane.
    names: Option<Arc<super::names::Names>>,
}

impl HttpService {
    /// How long a request head (and a TLS handshake) may take.
    fn first_message_timeout(&self) -> Duration {
        self.limits.first_message_timeout.unwrap_or(HEAD_TIMEOUT)
    }

    fn count(&self, status: StatusCode) {
        let code = status.as_u16();
        if let Some(slot) = self.counters.get(usize::from(code)) {
            slot.get_or_init(|| crate::telemetry::http_requests(&self.name, code))
                .increment(1);
        }
    }

    /// The current view (who is active and where), without a lock.
    fn view(&self) -> arc_swap::Guard<Arc<crate::view::ActiveView>> {
        self.view.load()
    }

    /// The active node and its base URL for this front end, if there is one.
    fn route(&self) -> Option<Route> {
        route_in(&self.view(), &self.name)
    }
}

/// What a client connection keeps between its requests.
struct ClientConnection {
    addr: SocketAddr,
    tls: bool,
    /// This thread's idle connections to the active node.
    pool: Arc<UpstreamPool>,
    /// The connection's place in the admission caps, held by an upgraded tunnel too.
    admitted: Arc<Admitted>,
    /// Its requests, for the head deadline.
    requests: crate::idle::Requests,
}

/// Starts the HTTP(S) front end `name`: one listener and thread per core.
/// An upgraded tunnel checks every half heartbeat that its node is still the active one, as
/// the TCP forwarder does.
pub fn start(name: &str, config: &HttpFrontend, context: &Context) -> Result<(), FrontError> {
    let (view, route_check) = (&context.view, context.heartbeat_interval / 2);
    let tls = match &config.tls {
        Some(files) => Some(
            crate::tls::server_acceptor(&files.cert, &files.key, crate::http2::ALPN_HTTP)
                .map_err(FrontError::tls(name))?,
        ),
        None => None,
    };
    let service = Arc::new(HttpService {
        name: name.to_owned(),
        view: view.clone(),
        mode: config.mode,
        connect_timeout: config.connect_timeout,
        upstream_tls: upstream_tls(name, config)?,
        counters: (0..600).map(|_| OnceLock::new()).collect(),
        limits: config.limits.clone(),
        route_check,
        names: context.names.clone(),
    });
    let admission = Admission::new(
        LimitLabels {
            total: "http_connections",
            per_source: "http_connections_per_source",
        },
        config.limits.max_connections,
        config.limits.max_connections_per_source,
        config.limits.trusted_networks.clone(),
    );
    let listeners = super::bind_per_core(config.listen, super::threads())
        .map_err(FrontError::bind("HTTP front end", config.listen))?;
    let label = format!("http-{name}");
    super::spawn_per_core(
        &label,
        listeners,
        &context.watchdog,
        name,
        move |listener| serve(listener, service.clone(), tls.clone(), admission.clone()),
    )
    .map_err(FrontError::bind("HTTP front end (threads)", config.listen))?;
    tracing::info!(%name, listen = %config.listen, mode = ?config.mode, https = config.tls.is_some(), target = %config.target, "HTTP front end");
    Ok(())
}

/// TLS clients towards an https active node: one that asks for HTTP/1.1 only (for requests
/// that upgrade, such as WebSocket), one that offers HTTP/2 first.
struct UpstreamTls {
    http1: TlsConnector,
    any: TlsConnector,
}

/// The reverse proxy's TLS client for `https://` targets. Needed only for those: fatal when
/// this node's target is one or a CA was named, a warning otherwise.
fn upstream_tls(name: &str, config: &HttpFrontend) -> Result<Option<UpstreamTls>, FrontError> {
    if config.mode != FrontMode::Proxy {
        return Ok(None);
    }
    let ca = config.ca.as_deref();
    let both = crate::tls::client_connector(ca).and_then(|http1| {
        let any = crate::tls::client_connector_offering(ca, crate::http2::ALPN_HTTP)?;
        Ok(UpstreamTls { http1, any })
    });
    match both {
        Ok(connectors) => Ok(Some(connectors)),
        Err(reason) if config.ca.is_some() || config.target.starts_with("https:") => {
            Err(FrontError::tls(name)(reason))
        }
        Err(reason) => {
            warn!(%name, %reason, "no TLS client: an https target of the peer would fail");
            Ok(None)
        }
    }
}

/// Serves `listener` (over TLS with `tls`) until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    service: Arc<HttpService>,
    tls: Option<TlsAcceptor>,
    admission: Arc<Admission>,
) {
    let listener = match Listener::new(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "HTTP front end: listener unusable");
            return;
        }
    };
    let mut date = HttpDate::default();
    let pool = UpstreamPool::new(super::upstream_pool::max_idle_per_thread(super::threads()));
    let mut sweep = tokio::time::interval(service.route_check);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = sweep.tick() => {
                // The old node's idle connections close soon after it stops being active,
                // requests or not.
                if !pool.is_empty() {
                    pool.sweep(service.route().as_ref());
                }
                continue;
            }
        };
        let (mut stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "HTTP front end: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = admission.admit(addr.ip()) else {
            continue;
        };
        let first = if tls.is_none() && service.mode == FrontMode::Redirect {
            let view = service.view();
            let base = view
                .active_now()
                .and_then(|_| view.targets.get(&service.name));
            match base.map(|base| redirect_at_once(&mut stream, base, &mut date)) {
                Some(AtOnce::Answered) => {
                    service.count(StatusCode::TEMPORARY_REDIRECT);
                    continue;
                }
                Some(AtOnce::Gone) => continue,
                Some(AtOnce::Serve(first)) => first,
                None => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => Prefixed::new(first, stream),
            Err(error) => {
                debug!(%error, "HTTP connection unusable");
                continue;
            }
        };
        let (service, tls, pool) = (service.clone(), tls.clone(), pool.clone());
        let span = debug_span!("http_front", client.addr = %addr);
        tokio::spawn(
            async move {
                // TCP_NODELAY comes from the listener (front::bind_per_core).
                let client = Arc::new(ClientConnection {
                    addr,
                    tls: tls.is_some(),
                    pool,
                    admitted: Arc::new(admitted),
                    requests: crate::idle::Requests::default(),
                });
                let (stream, activity) = crate::idle::track(stream);
                let (idle, head) = (service.limits.idle_timeout, service.first_message_timeout());
                let watched = client.clone();
                let watch = async move {
                    crate::idle::watch(&activity, &watched.requests, idle, head).await
                };
                let result = match tls {
                    None => serve_client(stream, service, client, watch).await,
                    Some(acceptor) => {
                        match crate::tls::accept_within(&acceptor, stream, head, "https").await {
                            Ok(stream)
                                if crate::http2::negotiated(stream.get_ref().1.alpn_protocol()) =>
                            {
                                serve_http2(stream, service, client, watch).await
                            }
                            Ok(stream) => serve_client(stream, service, client, watch).await,
                            Err(reason) => {
                                debug!(%reason, "HTTPS connection refused");
                                return;
                            }
                        }
                    }
                };
                match result {
                    Ok(Err(error)) => debug!(%error, "HTTP connection ended with an error"),
                    Ok(Ok(())) => {}
                    Err(Ended::Idle) => debug!("HTTP connection idle: closed"),
                    Err(Ended::SlowHead) => {
                        crate::telemetry::limit_hit("http_head_timeout");
                        debug!("HTTP request head not complete in time: closed");
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Serves one client connection (plain or TLS) until it ends, or until its watch ends it.
async fn serve_client<S>(
    stream: S,
    service: Arc<HttpService>,
    client: Arc<ClientConnection>,
    watch: impl std::future::Future<Output = Ended>,
) -> Result<hyper::Result<()>, Ended>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handler = hyper::service::service_fn(move |request| {
        let answered = answer(service.clone(), client.clone(), request);
        async move { Ok::<_, std::convert::Infallible>(answered.await) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // One flat write per response: measured faster for short answers. No header timer:
    // the connection's watch ends a trickled head with one timer per connection.
    http.writev(false);
    let connection = http
        .serve_connection(TokioIo::new(stream), handler)
        .with_upgrades();
    tokio::select! {
        result = connection => Ok(result),
        ended = watch => Err(ended),
    }
}

/// Serves one HTTP/2 client connection (TLS, chosen by ALPN) until it ends, or its watch or
/// its limits end it (see [`crate::http2`]).
async fn serve_http2<S>(
    stream: S,
    service: Arc<HttpService>,
    client: Arc<ClientConnection>,
    watch: impl std::future::Future<Output = Ended>,
) -> Result<hyper::Result<()>, Ended>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let answer = move |request: Request<Incoming>| answer(service.clone(), client.clone(), request);
    let refused = || local(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &[]);
    crate::http2::serve(stream, HTTP2_HEADER_LIST, watch, answer, refused).await
}

/// The header list an HTTP/2 request may bring (nginx allows four 8 KiB header buffers).
const HTTP2_HEADER_LIST: u32 = 32 * 1024;

/// Answers one request of `client`'s, counted as running (for the head deadline) meanwhile.
async fn answer(
    service: Arc<HttpService>,
    client: Arc<ClientConnection>,
    request: Request<Incoming>,
) -> Response<Body> {
    let _running = client.requests.begin();
    handle(&service, &client, request).await
}

/// Answers one request: redirect, proxy, or 503.
async fn handle(
    service: &Arc<HttpService>,
    client: &ClientConnection,
    request: Request<Incoming>,
) -> Response<Body> {
    let view = service.view();
    let base = view
        .active_now()
        .and_then(|_| view.targets.get(&service.name));
    let response = match (base, service.mode) {
        (None, _) => unavailable(),
        (Some(base), FrontMode::Redirect) => redirect(base, request.uri()),
        (Some(_), FrontMode::Proxy) => match route_in(&view, &service.name) {
            Some(route) => {
                drop(view);
                proxy(service, client, route, request).await
            }
            None => unavailable(),
        },
    };
    service.count(response.status());
    response
}

/// The active node and its base URL for front end `name` in `view`.
fn route_in(view: &crate::view::ActiveView, name: &str) -> Option<Route> {
    let node = view.active_now()?.clone();
    let base = view.targets.get(name)?.clone();
    Some(Route { node, base })
}

/// No active node: try again shortly.
fn unavailable() -> Response<Body> {
    local(
        StatusCode::SERVICE_UNAVAILABLE,
        &[(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS))],
    )
}

fn local(status: StatusCode, headers: &[(HeaderName, HeaderValue)]) -> Response<Body> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = status;
    for (name, value) in headers {
        response.headers_mut().insert(name, value.clone());
    }
    response
}

/// 307 to the same path and query on the active node.
fn redirect(base: &str, uri: &Uri) -> Response<Body> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut location = String::with_capacity(base.len() + path.len());
    location.push_str(base);
    location.push_str(path);
    match HeaderValue::from_str(&location) {
        Ok(location) => local(
            StatusCode::TEMPORARY_REDIRECT,
            &[(header::LOCATION, location)],
        ),
        Err(_) => local(StatusCode::BAD_REQUEST, &[]),
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded as they are.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes the hop-by-hop headers, and those the Connection header names; keeps the
/// Upgrade pair when `upgrade` (hyper needs them to pass the upgrade on).
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if !upgrade {
        headers.remove(header::UPGRADE);
    } else {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Adds who the client is (RFC 7239 `Forwarded`, and the de-facto X-Forwarded-*), after
/// what earlier proxies added.
fn add_forwarded(headers: &mut HeaderMap, client: &ClientConnection, host: Option<HeaderValue>) {
    let ip = client.addr.ip();
    let proto = if client.tls { "https" } else { "http" };
    let for_value = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut forwarded = format!("for={for_value};proto={proto}");
    if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
        forwarded.push_str(";host=\"");
        forwarded.push_str(&host.replace(['"', '\\'], ""));
        forwarded.push('"');
    }
    let append = |headers: &mut HeaderMap, name: HeaderName, value: String| {
        let joined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {value}"),
            None => value,
        };
        if let Ok(value) = HeaderValue::from_str(&joined) {
            headers.insert(name, value);
        }
    };
    append(headers, header::FORWARDED, forwarded);
    append(
        headers,
        HeaderName::from_static("x-forwarded-for"),
        ip.to_string(),
    );
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if client.tls { "https" } else { "http" }),
    );
}

/// Why the active node could not be reached.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("unusable target {0:?}")]
    Target(String),
    #[error("connecting timed out")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("https target but no TLS client")]
    NoTls,
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// Opens a connection to `base` (`http://host:port` or `https://host:port`): HTTP/2 if
/// `http2` may be offered and an https node chooses it, HTTP/1.1 otherwise.
async fn connect(service: &HttpService, base: &str, http2: bool) -> Result<Sender, UpstreamError> {
    let uri: Uri = base
        .parse()
        .map_err(|_| UpstreamError::Target(base.to_owned()))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .ok_or_else(|| UpstreamError::Target(base.to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    // A host name is resolved on the control plane, never by a blocking call here.
    let address = match host.parse::<std::net::IpAddr>() {
        Ok(address) => address,
        Err(_) => match &service.names {
            Some(names) => names
                .wait_for(&host, service.connect_timeout)
                .await
                .ok_or(UpstreamError::Timeout)?,
            None => return Err(UpstreamError::Target(base.to_owned())),
        },
    };
    let stream = tokio::time::timeout(
        service.connect_timeout,
        TcpStream::connect(SocketAddr::new(address, port)),
    )
    .await
    .map_err(|_| UpstreamError::Timeout)??;
    stream.set_nodelay(true).ok();
    if !https {
        return handshake(stream).await;
    }
    let connectors = service.upstream_tls.as_ref().ok_or(UpstreamError::NoTls)?;
    let connector = if http2 {
        &connectors.any
    } else {
        &connectors.http1
    };
    let name = rustls_pki_types::ServerName::try_from(host)
        .map_err(|_| UpstreamError::Target(base.to_owned()))?;
    let stream = tokio::time::timeout(service.connect_timeout, connector.connect(name, stream))
        .await
        .map_err(|_| UpstreamError::Timeout)??;
    crate::tls::count_handshake("http_upstream", stream.get_ref().1);
    if crate::http2::negotiated(stream.get_ref().1.alpn_protocol()) {
        handshake_http2(stream).await
    } else {
        handshake(stream).await
    }
}

async fn handshake<S>(stream: S) -> Result<Sender, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(
        async move {
            if let Err(error) = connection.with_upgrades().await {
                debug!(%error, "upstream connection ended with an error");
            }
        }
        .in_current_span(),
    );
    Ok(Sender::Http1(sender))
}

async fn handshake_http2<S>(stream: S) -> Result<Sender, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let executor = hyper_util::rt::TokioExecutor::new();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(executor, TokioIo::new(stream)).await?;
    tokio::spawn(
        async move {
            if let Err(error) = connection.await {
                debug!(%error, "upstream HTTP/2 connection ended with an error");
            }
        }
        .in_current_span(),
    );
    Ok(Sender::Http2(sender))
}

/// Forwards one request to the active node and streams its answer back.
async fn proxy(
    service: &Arc<HttpService>,
    client: &ClientConnection,
    route: Route,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let upgrade = wants_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    // An HTTP/2 client names the host in `:authority` (the URI), the node wants `Host`.
    if !parts.headers.contains_key(header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            // Without any user info (RFC 9113 §8.3.1 forbids it; a client may still send it).
            let host = authority.as_str().rsplit('@').next().unwrap_or_default();
            if let Ok(host) = HeaderValue::from_str(host) {
                parts.headers.insert(header::HOST, host);
            }
        }
    }
    // Origin form towards the active node; Host stays what the client asked for.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
    parts.version = hyper::Version::HTTP_11;
    let host = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    add_forwarded(&mut parts.headers, client, host);
    let authenticates_connection = super::upstream_pool::authenticates_connection(&parts.headers);
    let (body, request_sent) = RequestBody::new(body);
    let upstream_request = Request::from_parts(parts, body);

    let (upstream, mut response) = match send(
        service,
        &client.pool,
        &route,
        upstream_request,
        upgrade,
    )
    .await
    {
        Ok(sent) => sent,
        Err(error) => {
            warn!(%error, target = %route.base, "reverse proxy: the active node is unreachable");
            let status = match error {
                UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            return local(status, &[]);
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // 101 without being asked: nothing sane to pass on.
            return local(StatusCode::BAD_GATEWAY, &[]);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let tunnel = Tunnel {
            service: service.clone(),
            route,
            _admitted: client.admitted.clone(),
        };
        tokio::spawn(
            async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => tunnel.run(client, upstream).await,
                    Err(error) => debug!(%error, "upgrade failed"),
                }
            }
            .in_current_span(),
        );
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Either::Right(Empty::new()));
    }
    let (mut parts, body) = response.into_parts();
    let shared =
        !upgrade && super::upstream_pool::reusable(authenticates_connection, &parts.headers);
    strip_hop_by_hop(&mut parts.headers, false);
    let body = if shared {
        let home = Home {
            pool: client.pool.clone(),
            route,
            upstream,
            request_sent,
        };
        PooledBody::new(body, home)
    } else {
        // A declined upgrade, or a connection that belongs to this client: closed after.
        PooledBody::unpooled(body)
    };
    Response::from_parts(parts, Either::Left(body))
}

/// How long an idle connection of the pool may take to be ready: it was idle, so it is at
/// once unless something is wrong with it (then it is closed and the next one tried).
const READY_WITHIN: Duration = Duration::from_millis(20);

/// Sends `request` to the active node on an idle connection of the pool, or a new one; a
/// request that an idle connection closed before it went out (the node timed it out just
/// then) is sent once more on a new connection.
async fn send(
    service: &HttpService,
    pool: &UpstreamPool,
    route: &Route,
    request: Request<RequestBody>,
    upgrade: bool,
) -> Result<(Upstream, Response<Incoming>), UpstreamError> {
    // An upgrade needs a connection of its own (HTTP/1.1); anything else goes on the
    // thread's HTTP/2 connection to the node if it has one.
    let multiplexed = if upgrade {
        None
    } else {
        pool.multiplexed(route)
    };
    let idle = match multiplexed {
        Some(upstream) => Some(upstream),
        None => ready_idle(pool, route).await,
    };
    let request = match idle {
        Some(mut upstream) => {
            upstream.requests = upstream.requests.saturating_add(1);
            match upstream.sender.try_send_request(request).await {
                Ok(response) => return Ok((upstream, response)),
                Err(mut failed) => match failed.take_message() {
                    Some(request) => {
                        debug!(error = %failed.error(), "idle upstream connection closed: sending on a new one");
                        request
                    }
                    None => return Err(UpstreamError::Http(failed.into_error())),
                },
            }
        }
        None => request,
    };
    let mut sender = connect(service, &route.base, !upgrade).await?;
    if let Sender::Http2(shared) = &sender {
        pool.share(route, shared);
    }
    let response = sender.send_request(request).await?;
    Ok((
        Upstream {
            sender,
            requests: 1,
        },
        response,
    ))
}

/// An idle connection of the pool to `route` that is ready for a request.
async fn ready_idle(pool: &UpstreamPool, route: &Route) -> Option<Upstream> {
    while let Some(mut upstream) = pool.checkout(route) {
        if let Ok(Ok(())) = tokio::time::timeout(READY_WITHIN, upstream.sender.ready()).await {
            return Some(upstream);
        }
    }
    None
}

/// A WebSocket (or other upgraded) connection passed through: it keeps its place in the
/// admission caps, idles out like any connection, and is cut when the active node changes,
/// as TCP forwarding is.
struct Tunnel {
    service: Arc<HttpService>,
    /// The active node when the tunnel opened, and its base URL it goes to.
    route: Route,
    _admitted: Arc<Admitted>,
}

impl Tunnel {
    async fn run(self, client: hyper::upgrade::Upgraded, upstream: hyper::upgrade::Upgraded) {
        let (mut client, activity) = crate::idle::track(TokioIo::new(client));
        let mut upstream = TokioIo::new(upstream);
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                if let Err(error) = copied {
                    debug!(%error, "upgraded connection ended with an error");
                }
            }
            () = activity.idle_for(self.service.limits.idle_timeout) => {
                debug!("upgraded connection idle: closed");
            }
            () = self.active_node_changed() => {
                debug!(target = %self.route.base, "active node changed: upgraded connection closed");
            }
        }
    }

    async fn active_node_changed(&self) {
        loop {
            tokio::time::sleep(self.service.route_check).await;
            let view = self.service.view();
            // Another node, even one advertising the same base URL, ends the tunnel.
            if route_in(&view, &self.service.name).as_ref() != Some(&self.route) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redirect_keeps_path_and_query() {
        let uri: Uri = "/portal/login?next=%2Fhome&x=1".parse().expect("uri");
        let response = redirect("https://10.0.0.2:8443", &uri);
        assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            response.headers()[header::LOCATION],
            "https://10.0.0.2:8443/portal/login?next=%2Fhome&x=1"
        );
        let absolute: Uri = "http://proxy.example/a?b".parse().expect("uri");
        assert_eq!(
            redirect("http://10.0.0.1", &absolute).headers()[header::LOCATION],
            "http://10.0.0.1/a?b"
        );
    }

    #[test]
    fn hop_by_hop_headers_go_and_the_upgrade_pair_stays_for_websockets() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        let mut plain = headers.clone();
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 1, "{plain:?}");
        assert!(plain.contains_key(header::COOKIE));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        assert!(wants_upgrade(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[header::CONNECTION], "upgrade");
    }

    #[test]
    fn forwarded_headers_append_to_earlier_proxies() {
        let addr: SocketAddr = "[2001:db8::5]:40000".parse().expect("addr");
        let labels = LimitLabels {
            total: "test",
            per_source: "test",
        };
        let admission = Admission::new(labels, 1, 1, Vec::new());
        let client = ClientConnection {
            addr,
            tls: true,
            pool: UpstreamPool::new(1),
            admitted: Arc::new(admission.admit(addr.ip()).expect("admitted")),
            requests: crate::idle::Requests::default(),
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        add_forwarded(
            &mut headers,
            &client,
            Some(HeaderValue::from_static("omm.example")),
        );
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1, 2001:db8::5");
        assert_eq!(
            headers[header::FORWARDED],
            "for=\"[2001:db8::5]\";proto=https;host=\"omm.example\""
        );
        assert_eq!(headers["x-forwarded-proto"], "https");
    }
}
