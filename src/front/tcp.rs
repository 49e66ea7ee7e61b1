//! TCP forwarding for base stations (RFPs): each connection is copied both ways to the
//! active node's target of the same front-end name.
//!
//! - Half-close is kept: when one side ends its sending, the other side's write half is shut
//!   down, and the other direction goes on until it ends too.
//! - No active node: the client is closed at once, so it retries (and finds one later).
//! - When the active node changes, connections to the old one are closed within one
//!   heartbeat interval, so the stations reconnect and land on the new active node.

use super::limits::{Admission, LimitLabels};
use super::{Context, FrontError};
use crate::config::TcpFrontend;
use crate::idle::Activity;
use crate::telemetry;
use crate::view::{ActiveView, Derived, SharedView};
use metrics::Counter;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, debug_span, warn, Instrument};

/// The copy buffer starts small (most base-station connections carry little) and doubles,
/// up to the largest, whenever a read fills it (bulk transfers: fewer system calls per byte).
/// A direction with nothing to read holds no buffer at all: thousands of idle base-station
/// connections cost only their sockets and tasks.
const COPY_BUFFER_FIRST: usize = 8 * 1024;
const COPY_BUFFER_LARGEST: usize = 256 * 1024;

/// Where connections go now: the active node and its target, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    active: String,
    target: SocketAddr,
}

/// The front end's metric handles, looked up once: a registry lookup per connection cost a
/// measurable share of the connection rate (bench/tcp).
#[derive(Clone)]
struct Metrics {
    forwarded: Counter,
    no_active: Counter,
    connect_failed: Counter,
    closed_on_change: Counter,
    open: metrics::Gauge,
    to_active: Counter,
    to_client: Counter,
}

impl Metrics {
    fn new(name: &str) -> Self {
        let (to_active, to_client) = telemetry::tcp_byte_counters(name);
        Metrics {
            forwarded: telemetry::tcp_connections(name, "forwarded"),
            no_active: telemetry::tcp_connections(name, "no_active"),
            connect_failed: telemetry::tcp_connections(name, "connect_failed"),
            closed_on_change: telemetry::tcp_connections(name, "closed_on_change"),
            open: telemetry::tcp_open(name),
            to_active,
            to_client,
        }
    }
}

fn route_of(view: &ActiveView, name: &str) -> Option<Route> {
    let active = view.active_now()?;
    let target = view.targets.get(name)?;
    match target.parse() {
        Ok(target) => Some(Route {
            active: active.to_string(),
            target,
        }),
        Err(_) => {
            warn!(%target, "the active node advertises an unusable TCP target");
            None
        }
    }
}

/// Starts the TCP forwarding front end `name`: one listener and thread per core.
pub fn start(name: &str, config: &TcpFrontend, context: &Context) -> Result<(), FrontError> {
    let (view, heartbeat_interval) = (&context.view, context.heartbeat_interval);
    let listeners = super::bind_per_core(config.listen, super::threads())
        .map_err(FrontError::bind("TCP front end", config.listen))?;
    let limits = &config.limits;
    let forwarding = Arc::new(Forwarding {
        name: name.to_owned(),
        view: view.clone(),
        connect_timeout: config.connect_timeout,
        idle_timeout: limits.idle_timeout,
        heartbeat_interval,
        admission: Admission::new(
            LimitLabels {
                total: "tcp_connections",
                per_source: "tcp_connections_per_source",
            },
            limits.max_connections,
            limits.max_connections_per_source,
            limits.trusted_networks.clone(),
        ),
    });
    let label = format!("tcp-{name}");
    super::spawn_per_core(
        &label,
        listeners,
        &context.watchdog,
        name,
        move |listener| serve(listener, forwarding.clone()),
    )
    .map_err(FrontError::bind("TCP front end (threads)", config.listen))?;
    tracing::info!(%name, listen = %config.listen, target = %config.target, "TCP front end forwarding to the active node");
    Ok(())
}

/// What every thread of one TCP forwarding front end shares.
pub struct Forwarding {
    /// The front end's name: the target it looks up in the view.
    pub name: String,
    /// Who is active.
    pub view: SharedView,
    /// How long to wait to connect to the active node.
    pub connect_timeout: Duration,
    /// Nothing moved either way for this long: the connection is closed.
    pub idle_timeout: Duration,
    /// Connections to the old active node are closed within one of these after a change.
    pub heartbeat_interval: Duration,
    /// The caps per front end and per source.
    pub admission: Arc<Admission>,
}

/// Forwards connections accepted on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, forwarding: Arc<Forwarding>) {
    let (name, view) = (forwarding.name.clone(), forwarding.view.clone());
    let (connect_timeout, heartbeat_interval) =
        (forwarding.connect_timeout, forwarding.heartbeat_interval);
    // One watcher per front end turns view changes into a notification every connection
    // waits on; checking twice per heartbeat keeps the close within one heartbeat.
    let (route_tx, route_rx) = watch::channel(route_of(&view.load(), &name));
    let watcher = {
        let (view, name) = (view.clone(), name.clone());
        async move {
            let mut tick = tokio::time::interval(heartbeat_interval / 2);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let route = route_of(&view.load(), &name);
                route_tx.send_if_modified(|current| {
                    let changed = *current != route;
                    *current = route;
                    changed
                });
            }
        }
    };
    let watcher = tokio::spawn(watcher.in_current_span());
    let metrics = Metrics::new(&name);
    let mut routes = {
        let name = name.clone();
        Derived::new(view.clone(), move |view| route_of(view, &name))
    };
    loop {
        let (client, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "TCP front end accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The view itself, not the watcher's copy: a connection right after a change
        // goes to the new active node.
        let Some(route) = routes.get().cloned() else {
            metrics.no_active.increment(1);
            drop(client);
            continue;
        };
        let Some(admitted) = forwarding.admission.admit(addr.ip()) else {
            continue;
        };
        let idle_timeout = forwarding.idle_timeout;
        let (metrics, mut route_rx) = (metrics.clone(), route_rx.clone());
        let span = debug_span!("tcp_forward", client.addr = %addr, active = %route.active, target = %route.target);
        tokio::spawn(
            async move {
                let _admitted = admitted;
                let upstream =
                    match tokio::time::timeout(connect_timeout, TcpStream::connect(route.target))
                        .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            debug!(%error, "cannot connect to the active node");
                            metrics.connect_failed.increment(1);
                            return;
                        }
                        Err(_) => {
                            debug!("connecting to the active node timed out");
                            metrics.connect_failed.increment(1);
                            return;
                        }
                    };
                metrics.forwarded.increment(1);
                metrics.open.increment(1.0);
                // The client's TCP_NODELAY comes from the listener (front::bind_per_core).
                upstream.set_nodelay(true).ok();
                let route_changed = async {
                    // Mark the current value seen: only a change after this matters.
                    route_rx.borrow_and_update();
                    loop {
                        if route_rx.changed().await.is_err() {
                            // The front end is shutting down.
                            return;
                        }
                        if route_rx.borrow_and_update().as_ref() != Some(&route) {
                            return;
                        }
                    }
                };
                let activity = Activity::default();
                tokio::select! {
                    () = forward(client, upstream, &metrics, &activity) => debug!("connection ended"),
                    () = activity.idle_for(idle_timeout) => {
                        debug!("nothing moved either way: connection closed");
                        telemetry::limit_hit("tcp_idle");
                    }
                    () = route_changed => {
                        debug!("active node changed: connection closed");
                        metrics.closed_on_change.increment(1);
                    }
                }
                metrics.open.decrement(1.0);
            }
            .instrument(span),
        );
        if watcher.is_finished() {
            warn!("TCP front end watcher ended");
            return;
        }
    }
}

/// Copies both ways until both directions have ended, or one fails.
async fn forward(
    mut client: TcpStream,
    mut upstream: TcpStream,
    metrics: &Metrics,
    activity: &Activity,
) {
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let one_ended = AtomicBool::new(false);
    // An error on either side ends both: the other direction is dropped and both closed.
    if let Err(error) = tokio::try_join!(
        copy_half(
            client_read,
            upstream_write,
            &metrics.to_active,
            &one_ended,
            activity
        ),
        copy_half(
            upstream_read,
            client_write,
            &metrics.to_client,
            &one_ended,
            activity
        ),
    ) {
        debug!(%error, "forwarding ended with an error");
    }
}

/// Copies one direction. At its end it shuts down the write half (half-close), so the other
/// side sees end-of-stream while the opposite direction goes on; when the opposite direction
/// has already ended, closing the sockets says the same, and the system call is saved.
async fn copy_half(
    from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    bytes: &Counter,
    one_ended: &AtomicBool,
    activity: &Activity,
) -> std::io::Result<()> {
    // Not zeroed, and only as large as the traffic needs.
    let mut size = COPY_BUFFER_FIRST;
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        if buffer.capacity() == 0 {
            buffer.reserve_exact(size);
        }
        let read = match from.try_read_buf(&mut buffer) {
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                // Nothing to copy: wait without the buffer.
                buffer = Vec::new();
                from.readable().await?;
                continue;
            }
            Err(error) => return Err(error),
        };
        if read == 0 {
            if one_ended.swap(true, Ordering::Relaxed) {
                return Ok(());
            }
            return to.shutdown().await;
        }
        to.write_all(&buffer).await?;
        activity.touch();
        bytes.increment(read as u64);
        if read == buffer.capacity() && size < COPY_BUFFER_LARGEST {
            size *= 2;
            buffer = Vec::new();
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::view;
    use tokio::io::AsyncReadExt;

    async fn upstream_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        (addr, task)
    }

    async fn forwarder(view: &SharedView) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let forwarding = Forwarding {
            name: "rfp".to_owned(),
            view: view.clone(),
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_millis(20),
            admission: Admission::new(
                LimitLabels {
                    total: "test",
                    per_source: "test",
                },
                16,
                16,
                Vec::new(),
            ),
        };
        tokio::spawn(serve(listener, Arc::new(forwarding)));
        addr
    }

    fn set_active(view: &SharedView, node: Option<&str>, target: SocketAddr) {
        let targets = [("rfp".to_owned(), target.to_string())].into();
        view::publish(view, node.map(Into::into), false, targets);
    }

    #[tokio::test]
    async fn no_active_node_closes_at_once_then_forwards_and_cuts_on_change() {
        let view = view::shared();
        let (echo, _task) = upstream_echo().await;
        let front = forwarder(&view).await;
        // Nobody active: closed without a byte.
        let mut client = TcpStream::connect(front).await.expect("connect");
        let mut buffer = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buffer)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");

        set_active(&view, Some("a"), echo);
        let mut client = TcpStream::connect(front).await.expect("connect");
        client.write_all(b"hello").await.expect("send");
        client.read_exact(&mut buffer[..5]).await.expect("echo");
        assert_eq!(&buffer[..5], b"hello");

        // The active node changes (same address, other node): the connection is cut.
        set_active(&view, Some("b"), echo);
        let read = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buffer)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
}
