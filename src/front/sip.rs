//! SIP listeners: UDP (several `SO_REUSEPORT` sockets with a large receive buffer, each on its
//! own OS thread, so every core serves), TCP and TLS. Each message goes through the sans-IO
//! [`redirect`](crate::sip::redirect) responder or [`proxy`](crate::sip::proxy); this module
//! only moves the bytes: answers back where the request came from, forwarded requests to the
//! active node over UDP, relayed responses to the client (over its own connection for TCP/TLS).

use super::limits::{Admission, LimitLabels, RateGuard};
use super::names::Names;
use super::sip_stream::{self, StreamSettings};
use super::watchdog::{self, Watchdog};
use super::{Context, FrontError};
use crate::config::{FrontMode, SipFrontend};
use crate::lock::lock;
use crate::sip::proxy::{self, Hop, Identity, ProxyOutcome, RouteKeys, Source, Upstream};
use crate::sip::redirect::{self, Destination, Outcome};
use crate::sip::uri::{Host, SipUri};
use crate::sip::Transport;
use crate::telemetry::{self, SipCounters};
use crate::view::{Derived, SharedView};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

/// Receive buffer asked of the kernel for each UDP socket, so bursts are not dropped.
const UDP_RECEIVE_BUFFER: usize = 4 * 1024 * 1024;
/// Threads blocking on each UDP socket (the kernel wakes one per datagram). Two per socket
/// were measured (bench/sip): more CPU per call and no higher ceiling, so one.
pub const THREADS_PER_SOCKET: usize = 1;

/// Responses queued for one TCP/TLS client before further ones are dropped (SIP retransmits).
const CONNECTION_QUEUE: usize = 64;

/// The proxy's route keys, swapped when the pair's key arrives from the store.
pub type SharedRouteKeys = Arc<arc_swap::ArcSwap<RouteKeys>>;

/// One SIP front end, shared by its UDP workers and TCP/TLS connections.
pub struct SipService {
    name: String,
    view: SharedView,
    proxy: Option<ProxyShared>,
    /// Addresses of host-name targets, resolved on the control plane.
    names: Option<Arc<Names>>,
}

/// What the proxy mode shares between listeners.
struct ProxyShared {
    /// Our Via sent-by (`10.0.0.1:5060`): the UDP listener, where answers come back.
    sent_by: String,
    /// The pair's keys for the MAC in our Via branch.
    keys: SharedRouteKeys,
    /// A clone of a listener socket, for sending to the active node and UDP clients from
    /// TCP/TLS connections.
    upstream: UdpSocket,
    /// Open TCP/TLS client connections by number, to relay responses on.
    connections: Mutex<HashMap<u64, mpsc::Sender<Vec<u8>>>>,
    next_connection: AtomicU64,
}

impl SipService {
    /// A front end in `mode`. Proxy mode needs one of the bound UDP sockets (`upstream`).
    pub fn new(
        name: String,
        view: SharedView,
        mode: FrontMode,
        listen: SocketAddr,
        upstream: Option<&UdpSocket>,
        keys: SharedRouteKeys,
        names: Option<Arc<Names>>,
    ) -> std::io::Result<Arc<Self>> {
        let proxy = match (mode, upstream) {
            (FrontMode::Proxy, Some(socket)) => Some(ProxyShared {
                sent_by: listen.to_string(),
                keys,
                upstream: socket.try_clone()?,
                connections: Mutex::new(HashMap::new()),
                next_connection: AtomicU64::new(1),
            }),
            (FrontMode::Proxy, None) => {
                return Err(std::io::Error::other(
                    "the SIP proxy mode needs a UDP socket to forward from",
                ))
            }
            (FrontMode::Redirect, _) => None,
        };
        Ok(Arc::new(SipService {
            name,
            view,
            proxy,
            names,
        }))
    }

    pub(super) fn responder(self: &Arc<Self>) -> Responder {
        Responder {
            service: self.clone(),
            targets: target_cache(self.name.clone(), self.view.clone()),
            counters: SipCounters::new(&self.name),
            out: Vec::new(),
        }
    }

    /// Registers a stream connection for relayed responses: its number and its queue.
    pub(super) fn register(&self) -> Option<(u64, mpsc::Receiver<Vec<u8>>)> {
        let proxy = self.proxy.as_ref()?;
        let id = proxy.next_connection.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(CONNECTION_QUEUE);
        lock(&proxy.connections).insert(id, sender);
        Some((id, receiver))
    }

    pub(super) fn unregister(&self, id: u64) {
        if let Some(proxy) = &self.proxy {
            lock(&proxy.connections).remove(&id);
        }
    }

    /// Forwards a request from a stream client to the active node over UDP.
    pub(super) fn send_upstream(&self, bytes: &[u8], to: SocketAddr) {
        if let Some(proxy) = &self.proxy {
            if let Err(error) = proxy.upstream.send_to(bytes, to) {
                debug!(%error, %to, "SIP UDP send to the active node failed");
            }
        }
    }

    /// Relays a response that arrived on a stream connection to its client.
    pub(super) fn relay_from_stream(&self, bytes: &[u8], hop: Hop) {
        if let Some(proxy) = &self.proxy {
            self.relay(bytes, hop, &proxy.upstream);
        }
    }

    /// Sends a relayed response to a client that is not on the current connection: over UDP
    /// from the listener, or into the queue of its TCP/TLS connection.
    fn relay(&self, bytes: &[u8], hop: Hop, udp: &UdpSocket) {
        if hop.transport == Transport::Udp {
            if let Err(error) = udp.send_to(bytes, hop.addr) {
                debug!(%error, client = %hop.addr, "SIP UDP send failed");
            }
            return;
        }
        let sender = hop.connection.and_then(|id| {
            let proxy = self.proxy.as_ref()?;
            lock(&proxy.connections).get(&id).cloned()
        });
        match sender.map(|s| s.try_send(bytes.to_vec())) {
            Some(Ok(())) => {}
            // The client will retransmit, or its transaction times out: a stateless proxy
            // opens no connection back (RFC 3261 §18.2.2 asks that of stateful elements).
            Some(Err(_)) | None => {
                telemetry::limit_hit("sip_relay_connection_gone");
                debug!(client = %hop.addr, "response for a closed or busy client connection dropped");
            }
        }
    }
}

/// The active node's targets for one front end, parsed (and for the proxy, resolved) once
/// per view change.
struct ActiveTarget {
    /// Its SIP service (UDP/TCP).
    uri: SipUri,
    /// Its SIP-over-TLS service; `None` from a node of protocol 1.0, which advertised none
    /// (TLS clients then get `uri` with `transport=tls`, as 1.0 did).
    tls_uri: Option<SipUri>,
    /// Where `uri` is, for the proxy.
    host: TargetHost,
}

/// Where a proxy-mode target is: an address, or a host name resolved on the control plane.
enum TargetHost {
    Address(SocketAddr),
    Name(String, u16),
}

impl ActiveTarget {
    /// The address requests go to; `None` while a host name is not resolved yet (it has
    /// been asked for; the client retransmits).
    fn address(&self, names: Option<&Names>) -> Option<SocketAddr> {
        match &self.host {
            TargetHost::Address(addr) => Some(*addr),
            TargetHost::Name(name, port) => Some(SocketAddr::new(names?.lookup(name)?, *port)),
        }
    }
}

type TargetCache = Derived<ActiveTarget>;

fn target_cache(name: String, view: SharedView) -> TargetCache {
    let tls_key = crate::view::tls_target_key(&name);
    Derived::new(view, move |view| {
        let parse = |text: &String| {
            text.parse::<SipUri>()
                .map_err(|error| warn!(%error, "the active node advertises an unusable SIP target"))
                .ok()
        };
        let uri = view.targets.get(&name).and_then(parse)?;
        let tls_uri = view.targets.get(&tls_key).and_then(parse);
        let port = uri.port.unwrap_or(Transport::Udp.default_port());
        let host = match &uri.host {
            Host::Ip(ip) => TargetHost::Address(SocketAddr::new(*ip, port)),
            Host::Domain(name) => TargetHost::Name(name.clone(), port),
        };
        Some(ActiveTarget { uri, tls_uri, host })
    })
}

/// What to do with one message's result.
pub(super) enum Action<'a> {
    /// Nothing to send.
    Nothing,
    /// Answer the sender.
    Reply(&'a [u8]),
    /// Forward to the active node over UDP.
    Upstream(&'a [u8], SocketAddr),
    /// Relay a response to a client.
    Client(&'a [u8], Hop),
}

/// One listener's answering state: the active target, the counters, the output buffer.
pub(super) struct Responder {
    service: Arc<SipService>,
    targets: TargetCache,
    counters: SipCounters,
    out: Vec<u8>,
}

impl Responder {
    /// Gives the output buffer's memory back: a stream connection calls this after each
    /// message, so an idle one holds none (a UDP socket keeps its buffer for the next).
    pub(super) fn release_output(&mut self) {
        self.out = Vec::new();
    }

    /// Handles one message, counts it, and says what to send.
    pub(super) fn answer(&mut self, message: &[u8], source: Source) -> Action<'_> {
        let target = self.targets.get();
        let Some(proxy) = &self.service.proxy else {
            let destination = Destination {
                target: target.map(|active| &active.uri),
                tls_target: target.and_then(|active| active.tls_uri.as_ref()),
            };
            let (outcome, method) =
                redirect::respond(message, source.transport, destination, &mut self.out);
            return self.local(outcome, method.map_or("none", redirect::method_label));
        };
        let names = self.service.names.as_deref();
        let upstream = target.and_then(|active| {
            Some(Upstream {
                uri: &active.uri,
                addr: active.address(names)?,
            })
        });
        let keys = proxy.keys.load();
        let identity = Identity {
            listener: &proxy.sent_by,
            keys: &keys,
        };
        let (outcome, method) = proxy::handle(message, source, identity, upstream, &mut self.out);
        let method = method.map_or("none", redirect::method_label);
        match outcome {
            ProxyOutcome::Local(outcome) => self.local(outcome, method),
            ProxyOutcome::ToUpstream(addr) => {
                self.counters.count(method, "forwarded");
                Action::Upstream(&self.out, addr)
            }
            ProxyOutcome::ToClient(hop) => {
                self.counters.count("response", "relayed");
                Action::Client(&self.out, hop)
            }
            ProxyOutcome::Dropped(reason) => {
                debug!(reason, "SIP message dropped");
                telemetry::sip_dropped(drop_label(reason));
                self.counters.count(method, "dropped");
                Action::Nothing
            }
        }
    }

    fn local(&mut self, outcome: Outcome, method: &'static str) -> Action<'_> {
        let response = match outcome {
            Outcome::Respond(code) => status_label(code),
            Outcome::Absorbed => "absorbed",
            Outcome::Dropped(_) => "dropped",
        };
        self.counters.count(method, response);
        match outcome {
            Outcome::Respond(_) => Action::Reply(&self.out),
            _ => Action::Nothing,
        }
    }
}

/// A short label for why the proxy dropped a message (`standby_sip_dropped_total`).
fn drop_label(reason: &'static str) -> &'static str {
    match reason {
        "bad_mac" => "bad_mac",
        "response whose top Via is not ours" => "not_ours",
        _ if reason.starts_with("response") => "unroutable_response",
        _ => "unroutable_request",
    }
}

fn status_label(code: u16) -> &'static str {
    match code {
        200 => "200",
        302 => "302",
        400 => "400",
        483 => "483",
        503 => "503",
        _ => "other",
    }
}

/// Binds `count` blocking UDP sockets to `addr` with `SO_REUSEPORT`.
pub fn bind_udp(addr: SocketAddr, count: usize) -> std::io::Result<Vec<UdpSocket>> {
    (0..count.max(1))
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_reuse_port(true)?;
            // The kernel may grant less; that only costs burst tolerance.
            let _ = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER);
            super::bind_maybe_floating(&socket, addr)?;
            Ok(socket.into())
        })
        .collect()
}

/// Serves one UDP socket on its own OS thread, for the life of the process: a blocking
/// receive, the sans-IO responder or proxy, a blocking send. The kernel spreads datagrams
/// over the `SO_REUSEPORT` sockets, so each core serves without any wake-up through an
/// async reactor. A request from a source over its rate is dropped before any work; a
/// panic while handling one datagram costs that datagram only (counted), not the worker.
pub fn spawn_udp(
    socket: UdpSocket,
    service: Arc<SipService>,
    guard: Arc<RateGuard>,
    watchdog: &Watchdog,
) -> std::io::Result<()> {
    let label = format!("sip-udp-{}", service.name);
    let stamp = watchdog.register(&service.name, &label);
    // Waking up now and then even without traffic keeps the watchdog's stamp fresh.
    socket.set_read_timeout(Some(watchdog::STAMP_EVERY))?;
    std::thread::Builder::new().name(label).spawn(move || {
        let mut responder = service.responder();
        let mut buffer = vec![0u8; 65_535];
        loop {
            stamp.beat();
            let (length, from) = match socket.recv_from(&mut buffer) {
                Ok(received) => received,
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(error) => {
                    // ICMP errors from earlier sends surface here; keep serving.
                    debug!(%error, "SIP UDP receive error");
                    continue;
                }
            };
            let datagram = &buffer[..length];
            // Responses come from the active node (proxy mode) and are checked by the proxy.
            let request = !datagram.starts_with(b"SIP/2.0 ");
            if request && !guard.allow(from.ip()) {
                continue;
            }
            let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                answer_datagram(&mut responder, &service, &socket, datagram, from)
            }));
            if handled.is_err() {
                telemetry::front_panic(&service.name);
                // Whatever the responder held may be half-changed: start afresh.
                responder = service.responder();
            }
        }
    })?;
    Ok(())
}

/// Handles one datagram from `from` and sends what it calls for.
fn answer_datagram(
    responder: &mut Responder,
    service: &SipService,
    socket: &UdpSocket,
    datagram: &[u8],
    from: SocketAddr,
) {
    let source = Source {
        addr: from,
        transport: Transport::Udp,
        connection: None,
    };
    let (bytes, to) = match responder.answer(datagram, source) {
        Action::Nothing => return,
        Action::Reply(bytes) => (bytes, from),
        Action::Upstream(bytes, to) => (bytes, to),
        Action::Client(bytes, hop) => {
            service.relay(bytes, hop, socket);
            return;
        }
    };
    if let Err(error) = socket.send_to(bytes, to) {
        debug!(%error, to = %to, "SIP UDP send failed");
    }
}

/// Starts the SIP front end `name`: its UDP workers, and its TCP and TLS listeners on
/// per-core runtimes of their own (the data plane), sharing one admission control.
pub fn start(name: &str, config: &SipFrontend, context: &Context) -> Result<(), FrontError> {
    let listen = config.listen;
    let sockets = if config.udp {
        bind_udp(listen, config.udp_sockets).map_err(FrontError::bind("SIP over UDP", listen))?
    } else {
        Vec::new()
    };
    let service = SipService::new(
        name.to_owned(),
        context.view.clone(),
        config.mode,
        listen,
        sockets.first(),
        context.route_keys.clone(),
        context.names.clone(),
    )
    .map_err(FrontError::bind("SIP front end", listen))?;
    let limits = &config.limits;
    let guard = Arc::new(RateGuard::new(
        config.udp_rate_per_source,
        limits.trusted_networks.clone(),
        tokio::time::Instant::now().into_std(),
    ));
    // SO_REUSEPORT spreads flows over the sockets by hash; each socket gets
    // THREADS_PER_SOCKET blocking workers.
    for socket in sockets {
        for _ in 0..THREADS_PER_SOCKET {
            socket
                .try_clone()
                .and_then(|clone| {
                    spawn_udp(clone, service.clone(), guard.clone(), &context.watchdog)
                })
                .map_err(FrontError::bind("SIP over UDP (worker thread)", listen))?;
        }
    }
    let admission = Admission::new(
        LimitLabels {
            total: "sip_connections",
            per_source: "sip_connections_per_source",
        },
        limits.max_connections,
        limits.max_connections_per_source,
        limits.trusted_networks.clone(),
    );
    let settings = Arc::new(StreamSettings {
        max_message: config.max_message,
        limits: limits.clone(),
    });
    let stream = |what: &'static str, at: SocketAddr, tls: Option<TlsAcceptor>| {
        let listeners =
            super::bind_per_core(at, super::threads()).map_err(FrontError::bind(what, at))?;
        let (service, admission, settings) = (service.clone(), admission.clone(), settings.clone());
        let (label, watchdog) = (format!("sip-{name}"), &context.watchdog);
        super::spawn_per_core(&label, listeners, watchdog, name, move |listener| {
            sip_stream::serve(
                listener,
                service.clone(),
                tls.clone(),
                admission.clone(),
                settings.clone(),
            )
        })
        .map_err(FrontError::bind(what, at))
    };
    if config.tcp {
        stream("SIP over TCP", listen, None)?;
    }
    if let Some((tls_listen, files)) = &config.tls {
        let acceptor = crate::tls::server_acceptor(&files.cert, &files.key, &[])
            .map_err(FrontError::tls(name))?;
        stream("SIP over TLS", *tls_listen, Some(acceptor))?;
    }
    tracing::info!(%name, %listen, mode = ?config.mode, udp = config.udp, tcp = config.tcp, tls = ?config.tls.as_ref().map(|(addr, _)| addr), target = %config.target, "SIP front end");
    Ok(())
}
