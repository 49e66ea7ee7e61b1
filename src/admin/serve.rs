//! The admin listener's own accept loop: plain HTTP/1.1 or TLS, with a cap on concurrent
//! connections and on the size of a request head. Each refusal is logged and counted
//! (`standby_limit_hits_total{limit=...}`), and the node keeps serving.

use crate::telemetry;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, debug_span, warn, Instrument};

/// Limits of the admin listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Largest request head (request line and headers); larger ones get 431.
    pub max_header_bytes: usize,
}

/// How long a client may take to send its request head, or its TLS handshake.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener could not be bound.
    #[error("cannot listen for the admin API on {addr}: {source}")]
    Bind {
        /// Where.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The HTTPS certificate or key is unusable.
    #[error("admin API TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Binds the admin listener of `config` and serves `router` on it.
pub async fn start(config: &crate::config::AdminConfig, router: Router) -> Result<(), StartError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let tls = match &config.tls {
        Some((cert, key)) => Some(crate::tls::server_acceptor(
            cert,
            key,
            crate::http2::ALPN_HTTP,
        )?),
        None => None,
    };
    tracing::info!(listen = %config.listen, tls = tls.is_some(), "admin API listening");
    crate::telemetry::admin_token_in_clear(config.token_in_clear());
    if config.token_in_clear() {
        tracing::warn!(
            listen = %config.listen,
            "THE ADMIN TOKEN CROSSES THE NETWORK IN CLEAR: the admin API takes a token on a non-loopback address without TLS; set admin.tls_cert and admin.tls_key, or listen on 127.0.0.1"
        );
    }
    let limits = Limits {
        max_connections: config.max_connections,
        max_header_bytes: config.max_header_bytes,
    };
    tokio::spawn(serve(listener, router, limits, tls).in_current_span());
    Ok(())
}

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // hyper refuses buffers under 8 KiB.
    let max_header_bytes = limits.max_header_bytes.max(8192);
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "admin API: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            telemetry::limit_hit("admin_connections");
            warn!(client = %addr, limit = limits.max_connections, "admin API: too many connections; closing one");
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        let span = debug_span!("admin", client.addr = %addr);
        tokio::spawn(
            async move {
                let _slot = slot;
                let mut http = hyper::server::conn::http1::Builder::new();
                http.max_buf_size(max_header_bytes)
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT);
                let result = match tls {
                    Some(acceptor) => {
                        match crate::tls::accept_within(&acceptor, stream, HEAD_TIMEOUT, "admin")
                            .await
                        {
                            Ok(stream)
                                if crate::http2::negotiated(stream.get_ref().1.alpn_protocol()) =>
                            {
                                serve_http2(stream, service, max_header_bytes).await
                            }
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(reason) => {
                                debug!(%reason, "admin API: connection refused");
                                return;
                            }
                        }
                    }
                    None => http.serve_connection(TokioIo::new(stream), service).await,
                };
                if let Err(error) = result {
                    if error.is_parse_too_large() {
                        telemetry::limit_hit("admin_header_size");
                        warn!("admin API: request head too large; answered 431");
                    } else {
                        debug!(%error, "admin API: connection ended with an error");
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Serves one HTTP/2 admin connection (TLS that chose `h2`): a connection with no request
/// running and nothing moving for [`HEAD_TIMEOUT`] is closed, as an idle HTTP/1.1 one is.
async fn serve_http2<S>(
    stream: S,
    service: TowerToHyperService<Router>,
    max_header_bytes: usize,
) -> hyper::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (stream, activity) = crate::idle::track(stream);
    let requests = Arc::new(crate::idle::Requests::default());
    let watched = requests.clone();
    let watch =
        async move { crate::idle::watch(&activity, &watched, HEAD_TIMEOUT, HEAD_TIMEOUT).await };
    let answer = move |request: Request<Incoming>| {
        let (service, requests) = (service.clone(), requests.clone());
        async move {
            let _running = requests.begin();
            match hyper::service::Service::call(&service, request).await {
                Ok(response) => response,
                Err(infallible) => match infallible {},
            }
        }
    };
    let refused = || {
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        response
    };
    let max_header_list = u32::try_from(max_header_bytes).unwrap_or(u32::MAX);
    crate::http2::serve(stream, max_header_list, watch, answer, refused)
        .await
        .unwrap_or(Ok(()))
}
