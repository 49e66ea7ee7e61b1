//! The client entry point: listeners that send every client to the active node.
//!
//! They read only the shared [`ActiveView`](crate::view::ActiveView) (who is active and
//! where its services are), never the engine. Whichever node's listener a client reaches,
//! it ends up at the active node.

pub mod http;
pub mod http_at_once;
pub mod limits;
pub mod names;
pub mod sip;
pub mod sip_stream;
pub mod tcp;
pub mod upstream_pool;
pub mod watchdog;

use crate::config::{FrontendConfig, FrontendKind};
use crate::view::SharedView;
use socket2::{Domain, Protocol, Socket, Type};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a front end could not start.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// A listener (or its serving threads) could not be set up.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The front end's TLS files (or the reverse proxy's CA) are unusable.
    #[error("frontend {name:?} TLS: {reason}")]
    Tls {
        /// The front end.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

impl FrontError {
    /// A `Bind` error for `what` at `addr`, as a closure for `map_err`.
    fn bind(what: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> FrontError {
        move |source| FrontError::Bind { what, addr, source }
    }

    /// A `Tls` error of front end `name`, as a closure for `map_err`.
    fn tls<E: ToString>(name: &str) -> impl FnOnce(E) -> FrontError + '_ {
        move |error| FrontError::Tls {
            name: name.to_owned(),
            reason: error.to_string(),
        }
    }
}

/// What every front end gets from the node besides its own configuration.
#[derive(Clone)]
pub struct Context {
    /// Who is active and where its services are.
    pub view: SharedView,
    /// The election's heartbeat: connections to a node that is no longer active are closed
    /// within one.
    pub heartbeat_interval: Duration,
    /// The SIP proxy's route keys, kept current with the pair's key by the node.
    pub route_keys: sip::SharedRouteKeys,
    /// Where every front-end thread stamps its heartbeat for the control plane.
    pub watchdog: watchdog::Watchdog,
    /// Addresses of host names in targets, resolved on the control plane; `None` when the
    /// system's resolver configuration is unusable (then only IP targets work).
    pub names: Option<std::sync::Arc<names::Names>>,
}

/// Binds one front end's listeners and starts serving them; a listener that cannot be bound
/// is an error here, at start-up, not later.
pub fn start(frontend: &FrontendConfig, context: &Context) -> Result<(), FrontError> {
    match &frontend.kind {
        FrontendKind::Sip(config) => sip::start(&frontend.name, config, context),
        FrontendKind::Http(config) => http::start(&frontend.name, config, context),
        FrontendKind::Tcp(config) => tcp::start(&frontend.name, config, context),
    }
}

/// Pending connections the kernel queues per listening socket.
const LISTEN_BACKLOG: i32 = 4096;

/// How many serving threads a front end gets: one per core.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The floating addresses (`[[vip]]`): a front end may listen on one on both nodes, though
/// only the active node holds it. Set once, before the front ends start.
static FLOATING: std::sync::OnceLock<Vec<std::net::IpAddr>> = std::sync::OnceLock::new();

/// Tells the front ends which addresses float (see [`FLOATING`]).
pub fn set_floating_addresses(addresses: Vec<std::net::IpAddr>) {
    let _ = FLOATING.set(addresses);
}

/// Binds `socket` to `addr`; a floating address is bound with `IP_FREEBIND`, so the
/// listener is ready on the standby too and serves the moment the address arrives.
pub(crate) fn bind_maybe_floating(socket: &Socket, addr: SocketAddr) -> std::io::Result<()> {
    if FLOATING
        .get()
        .is_some_and(|floating| floating.contains(&addr.ip()))
    {
        match addr {
            SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
            SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
        }
    }
    socket.bind(&addr.into())
}

/// Binds `threads` TCP listeners to `addr` with `SO_REUSEPORT`, so the kernel spreads new
/// connections over them. Binding happens here, so a taken port is reported at start-up.
pub fn bind_per_core(
    addr: SocketAddr,
    threads: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    (0..threads.max(1))
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            // Accepted connections inherit it (Linux copies the listener's TCP state), which
            // saves a system call per connection.
            socket.set_tcp_nodelay(true)?;
            bind_maybe_floating(&socket, addr)?;
            socket.listen(LISTEN_BACKLOG)?;
            socket.set_nonblocking(true)?;
            Ok(socket.into())
        })
        .collect()
}

/// Serves each listener on its own OS thread with a single-threaded tokio runtime, as nginx
/// runs one event loop per worker: no connection ever moves between threads, so there is no
/// cross-thread wake-up or work stealing on the hot path (bench/http, bench/tcp).
///
/// Each thread stamps `watchdog` from its runtime, so a runtime that stops getting to its
/// tasks is seen by the control plane.
pub fn spawn_per_core<F, Fut>(
    label: &str,
    listeners: Vec<std::net::TcpListener>,
    watchdog: &watchdog::Watchdog,
    frontend: &str,
    serve: F,
) -> std::io::Result<()>
where
    F: Fn(tokio::net::TcpListener) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    for (index, listener) in listeners.into_iter().enumerate() {
        let serve = serve.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let span = tracing::Span::current();
        let name = format!("{label}-{index}");
        let stamp = watchdog.register(frontend, &name);
        std::thread::Builder::new().name(name).spawn(move || {
            let _span = span.entered();
            runtime.block_on(async move {
                tokio::spawn(watchdog::Watchdog::stamp_runtime(stamp));
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener).await,
                    Err(error) => tracing::error!(%error, "front end listener unusable"),
                }
            });
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn accepted_connections_inherit_nodelay_from_the_listener() {
        let listeners =
            super::bind_per_core("127.0.0.1:0".parse().expect("addr"), 1).expect("bind");
        let listener = &listeners[0];
        listener.set_nonblocking(false).expect("blocking");
        let addr = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        assert!(accepted.nodelay().expect("nodelay"));
    }
}
