//! The two tasks of the peer link: accepting the peer's heartbeats, and sending ours; and
//! [`start`], which sets both up from the configuration.

use super::frame::{self, Channel, FrameError, PeerMessage};
use super::replication::{BoxedStream, Dialer};
use super::status::{self, FetchError, StatusFetcher, StatusSource};
use super::tls::PeerTls;
use crate::config::{PeerConfig, PeerLinkConfig};
use crate::engine::{Heartbeat, NodeId, ProtocolVersion};
use crate::lock::lock;
use crate::telemetry;
use crate::tls::TlsError;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, debug_span, info, warn, Instrument};

/// How long an outbound connect, TLS handshake and hello may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an inbound connection may take from accept to a verified hello: the peer needs
/// two round trips; a connection that sends nothing is gone well before it matters.
const INBOUND_AUTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Inbound connections from the peer's address not yet authenticated. When a new one comes
/// and they are all taken, the oldest is closed (not the new one refused): connections that
/// never authenticate cannot keep the real peer out.
const MAX_UNAUTHENTICATED: usize = 8;
/// Authenticated connections served at once (control and replication, and the overlap of
/// a reconnect); a new control connection replaces the older one in any case.
const MAX_AUTHENTICATED: usize = 8;
/// Pause after a failed accept (out of descriptors and the like).
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Counters of the link, for status and metrics.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Inbound connections that passed TLS and identity checks.
    pub accepted: AtomicU64,
    /// Inbound connections refused: failed handshake, wrong certificate, bad hello.
    pub refused: AtomicU64,
    /// Frames that closed a connection: oversized or garbled.
    pub bad_frames: AtomicU64,
    /// Outbound connections established.
    pub connected: AtomicU64,
    /// Outbound attempts that failed.
    pub dial_failures: AtomicU64,
    /// Heartbeats written to the peer.
    pub heartbeats_sent: AtomicU64,
    /// Heartbeats received from the peer.
    pub heartbeats_received: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Counts a frame that closed its connection, by why (an oversized one is a limit hit).
fn frame_rejected(error: &FrameError) {
    match error {
        FrameError::TooLarge { .. } => {
            telemetry::peer_frame_rejected("oversized");
            telemetry::limit_hit("peer_frame");
        }
        FrameError::Garbled(_) => telemetry::peer_frame_rejected("garbled"),
        FrameError::Io(_) => {}
    }
}

/// Why the peer link could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The peer link's certificates are unusable.
    #[error("peer link TLS: {0}")]
    Tls(#[from] TlsError),
    /// The listener could not be bound.
    #[error("cannot listen for the peer link on {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The running peer link, as the node's driver and store task see it. For a single node the
/// channels are closed and there is no dialer.
pub struct PeerLink {
    /// Heartbeats from the peer, for the engine.
    pub inbound: mpsc::Receiver<Received>,
    /// Our newest heartbeat; the sender task writes whatever is newest.
    pub outbound: watch::Sender<Option<Heartbeat>>,
    /// The `seq` of the newest heartbeat on the wire (shutdown waits for the last one).
    pub written: watch::Receiver<u64>,
    /// Replication connections the peer opened, for the store's task.
    pub replication: mpsc::Receiver<BoxedStream>,
    /// Opens a replication connection to the peer, for the store's task.
    pub dialer: Option<Dialer>,
    /// When the peer's connection to us ended, once its host has also refused ours twice:
    /// its process is gone (`Input::PeerGone`).
    pub gone: watch::Receiver<Option<Instant>>,
    /// Counters of the link.
    pub stats: Arc<LinkStats>,
    /// Fetches the peer's own status report (ask only a peer that speaks 1.3 or newer).
    pub status: Option<StatusFetcher>,
}

/// Binds the peer link's listener and starts its tasks: accepting the peer's connections
/// and keeping ours to it. `write_timeout`: a heartbeat write stuck this long means the
/// peer is as good as gone; `redial_every`: how often a new attempt to reach the peer starts
/// while none succeeds (the heartbeat interval); `status_source` makes this node's own
/// status report when the peer asks for it.
pub async fn start(
    own_id: &NodeId,
    own_address: std::net::IpAddr,
    pair: Option<(&PeerConfig, &PeerLinkConfig)>,
    (write_timeout, redial_every): (Duration, Duration),
    status_source: StatusSource,
) -> Result<PeerLink, LinkError> {
    let stats = Arc::new(LinkStats::default());
    let (outbound, outbound_rx) = watch::channel(None::<Heartbeat>);
    let (written_tx, written) = watch::channel(0u64);
    let (inbound_tx, inbound) = mpsc::channel::<Received>(64);
    let (replication_tx, replication) = mpsc::channel::<BoxedStream>(4);
    let (gone_tx, gone) = watch::channel(None);
    let mut link = PeerLink {
        inbound,
        outbound,
        written,
        replication,
        dialer: None,
        gone,
        stats: stats.clone(),
        status: None,
    };
    let Some((peer, config)) = pair else {
        return Ok(link);
    };
    let tls = PeerTls::load(&config.ca, &config.cert, &config.key, &peer.id)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| LinkError::Bind {
            addr: config.listen,
            source,
        })?;
    info!(listen = %config.listen, peer = %peer.id, connect = %peer.connect, "peer link listening");
    let gate = Arc::new(Gate::new(peer.address));
    let inbound = Inbound {
        tls: tls.clone(),
        max_frame: config.max_frame,
        // Heartbeats come every heartbeat interval; silence this long is a dead link.
        read_deadline: write_timeout * 2,
        to_engine: inbound_tx,
        to_store: replication_tx,
        stats: stats.clone(),
        gate: gate.clone(),
        status: status_source,
        status_busy: Arc::new(tokio::sync::Semaphore::new(1)),
    };
    tokio::spawn(accept_heartbeats(listener, inbound).in_current_span());
    let dial = Dial {
        target: peer.connect,
        source: Some(own_address),
        tls,
        own_id: own_id.clone(),
        connect_within: connect_within(redial_every, write_timeout),
        dead_after: write_timeout,
    };
    let (status_dial, max_frame) = (dial.clone(), config.max_frame);
    link.status = Some(Arc::new(move || {
        let dial = status_dial.clone();
        Box::pin(async move { fetch_status(&dial, max_frame).await }) as status::BoxFuture<_>
    }) as StatusFetcher);
    let replication_dial = dial.clone();
    link.dialer = Some(Arc::new(move || {
        let dial = replication_dial.clone();
        Box::pin(async move { dial_replication(&dial).await })
            as std::pin::Pin<
                Box<dyn std::future::Future<Output = std::io::Result<BoxedStream>> + Send>,
            >
    }) as Dialer);
    let outbound = Outbound {
        dial,
        redial_every,
        gate,
        gone: gone_tx,
        stats,
    };
    let sending = send_heartbeats(outbound, outbound_rx, written_tx);
    tokio::spawn(sending.in_current_span());
    Ok(link)
}

/// A heartbeat from the peer, and when it came off the wire (the engine may see it later:
/// whether it came before or after the peer's connection ended decides whether the peer's
/// process is gone).
#[derive(Debug)]
pub struct Received {
    /// When it was read.
    pub at: Instant,
    /// The heartbeat.
    pub heartbeat: Heartbeat,
}

/// What serving the peer's inbound connections needs.
pub struct Inbound {
    /// The link's TLS setup.
    pub tls: PeerTls,
    /// Largest frame.
    pub max_frame: usize,
    /// An authenticated control connection silent this long is closed.
    pub read_deadline: Duration,
    /// Heartbeats, for the engine.
    pub to_engine: mpsc::Sender<Received>,
    /// Replication connections, for the store's task.
    pub to_store: mpsc::Sender<BoxedStream>,
    /// Counters.
    pub stats: Arc<LinkStats>,
    /// Who may connect, and the slots.
    pub gate: Arc<Gate>,
    /// Makes this node's status report for the peer.
    pub status: StatusSource,
    /// One status request answered at a time.
    pub status_busy: Arc<tokio::sync::Semaphore>,
}

/// Who may open connections to the peer link, and what they hold before and after they
/// authenticate.
pub struct Gate {
    /// The only source address accepted (the peer's, canonical form).
    peer_address: std::net::IpAddr,
    /// Unauthenticated connections, oldest first: dropping an entry's sender closes it.
    pending: std::sync::Mutex<std::collections::VecDeque<(u64, oneshot::Sender<()>)>>,
    /// The authenticated control connection: a newer one replaces it.
    control: std::sync::Mutex<Control>,
    /// Authenticated connections served now.
    authenticated: Arc<tokio::sync::Semaphore>,
    next_id: AtomicU64,
}

impl Gate {
    /// A gate that lets in connections from `peer_address` only.
    pub fn new(peer_address: std::net::IpAddr) -> Self {
        Gate {
            peer_address: peer_address.to_canonical(),
            pending: std::sync::Mutex::new(std::collections::VecDeque::new()),
            control: std::sync::Mutex::new(Control::default()),
            authenticated: Arc::new(tokio::sync::Semaphore::new(MAX_AUTHENTICATED)),
            next_id: AtomicU64::new(0),
        }
    }

    /// Whether a connection from `source` may even start a handshake.
    fn admits(&self, source: std::net::IpAddr) -> bool {
        source.to_canonical() == self.peer_address
    }

    /// Takes an unauthenticated slot, closing the oldest holder if all are taken. The
    /// receiver completes when this connection is closed that way.
    fn enter(self: &Arc<Self>) -> (Pending, oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (close, closed) = oneshot::channel();
        let mut pending = lock(&self.pending);
        if pending.len() >= MAX_UNAUTHENTICATED {
            // Dropping the sender closes the oldest.
            pending.pop_front();
            telemetry::limit_hit("peer_unauthenticated");
        }
        pending.push_back((id, close));
        let slot = Pending {
            gate: self.clone(),
            id,
        };
        (slot, closed)
    }

    /// The connection `id` authenticated on the control channel: it replaces the previous
    /// control connection, whose receiver completes.
    fn take_control(&self, id: u64) -> oneshot::Receiver<()> {
        let (close, closed) = oneshot::channel();
        *lock(&self.control) = Control {
            current: Some((id, close)),
            ended_at: None,
        };
        closed
    }

    /// The control connection `id` ended (not replaced by a newer one).
    fn control_ended(&self, id: u64) {
        let mut control = lock(&self.control);
        if control
            .current
            .as_ref()
            .is_some_and(|(current, _)| *current == id)
        {
            *control = Control {
                current: None,
                ended_at: Some(Instant::now()),
            };
        }
    }

    /// When the peer's last control connection ended, if none has come since.
    fn control_ended_at(&self) -> Option<Instant> {
        lock(&self.control).ended_at
    }
}

/// The peer's authenticated control connection, or when the last one ended.
#[derive(Default)]
struct Control {
    current: Option<(u64, oneshot::Sender<()>)>,
    ended_at: Option<Instant>,
}

/// An unauthenticated slot, given back when the connection authenticates or ends.
struct Pending {
    gate: Arc<Gate>,
    id: u64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        lock(&self.gate.pending).retain(|(id, _)| *id != self.id);
    }
}

/// Accepts the peer's connections and forwards its heartbeats to the engine, until the
/// engine's side of `to_engine` is gone.
pub async fn accept_heartbeats(listener: TcpListener, inbound: Inbound) {
    let inbound = Arc::new(inbound);
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: keep serving, but do not spin.
                warn!(%error, "peer link: accept failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        if inbound.to_engine.is_closed() {
            return;
        }
        if !inbound.gate.admits(addr.ip()) {
            // Before TLS: a stranger costs an accept and a close, nothing more.
            count(&inbound.stats.refused);
            telemetry::peer_connection("in", "stranger");
            debug!(client = %addr, "peer link: closed a connection not from the peer's address");
            continue;
        }
        let (pending, evicted) = inbound.gate.enter();
        let span = debug_span!("peer_in", peer.addr = %addr);
        let inbound = inbound.clone();
        tokio::spawn(
            async move { serve_inbound(stream, &inbound, (pending, evicted)).await }
                .instrument(span),
        );
    }
}

/// Why an inbound connection was refused before it authenticated.
fn refused(stats: &LinkStats, why: &str) {
    count(&stats.refused);
    telemetry::peer_connection("in", "refused");
    warn!("peer link: refused a connection ({why})");
}

async fn serve_inbound(
    stream: TcpStream,
    inbound: &Inbound,
    (pending, evicted): (Pending, oneshot::Receiver<()>),
) {
    stream.set_nodelay(true).ok();
    let mut buffer = Vec::new();
    let authenticating = authenticate(stream, inbound, &mut buffer);
    let authenticated = tokio::select! {
        result = tokio::time::timeout(INBOUND_AUTH_TIMEOUT, authenticating) => result,
        _ = evicted => {
            count(&inbound.stats.refused);
            telemetry::peer_connection("in", "evicted");
            debug!("peer link: closed an unauthenticated connection for a newer one");
            return;
        }
    };
    let (mut stream, channel, node_id, version) = match authenticated {
        Ok(Ok(authenticated)) => authenticated,
        Ok(Err(why)) => return refused(&inbound.stats, &why),
        Err(_) => return refused(&inbound.stats, "not authenticated in time"),
    };
    // Out of the unauthenticated slots, into the authenticated ones.
    drop(pending);
    let Ok(_slot) = inbound.gate.authenticated.clone().try_acquire_owned() else {
        telemetry::limit_hit("peer_connections");
        return refused(&inbound.stats, "too many authenticated connections");
    };
    match channel {
        Channel::Replication => {
            // The store's task takes the connection over.
            let _ = inbound.to_store.send(Box::new(stream)).await;
            return;
        }
        Channel::Status => {
            let busy = &inbound.status_busy;
            return status::answer(stream, &inbound.status, busy, inbound.max_frame).await;
        }
        Channel::Control => {}
        // Only between cluster members, on the cluster's own listener.
        Channel::Confirm => {
            return refused(&inbound.stats, "a cluster confirmation on a pair's link")
        }
    }
    count(&inbound.stats.accepted);
    telemetry::peer_connection("in", "accepted");
    info!(peer = %node_id, %version, "peer link: peer connected");
    let id = inbound.gate.next_id.fetch_add(1, Ordering::Relaxed);
    let replaced = inbound.gate.take_control(id);
    tokio::select! {
        () = read_heartbeats(&mut stream, inbound, &mut buffer) => inbound.gate.control_ended(id),
        _ = replaced => debug!("peer link: a newer connection from the peer replaced this one"),
    }
}

/// The TLS handshake, the certificate check and the hello: the channel, the peer's id and
/// version, or why not.
async fn authenticate(
    stream: TcpStream,
    inbound: &Inbound,
    buffer: &mut Vec<u8>,
) -> Result<
    (
        tokio_rustls::server::TlsStream<TcpStream>,
        Channel,
        NodeId,
        ProtocolVersion,
    ),
    String,
> {
    let mut stream = inbound
        .tls
        .acceptor
        .accept(stream)
        .await
        .map_err(|error| format!("TLS handshake failed: {error}"))?;
    if !inbound
        .tls
        .names_peer(stream.get_ref().1.peer_certificates())
    {
        return Err("its certificate does not name the peer".to_owned());
    }
    match frame::read_message(&mut stream, buffer, inbound.max_frame).await {
        Ok(PeerMessage::Hello {
            channel,
            node_id,
            version,
        }) => Ok((stream, channel, node_id, version)),
        Ok(other) => Err(format!("it did not start with hello: {other:?}")),
        Err(error) => {
            frame_rejected(&error);
            Err(format!("bad hello: {error}"))
        }
    }
}

/// Forwards the peer's heartbeats to the engine until the connection ends, goes silent
/// for the read deadline, or sends something else.
async fn read_heartbeats(
    stream: &mut tokio_rustls::server::TlsStream<TcpStream>,
    inbound: &Inbound,
    buffer: &mut Vec<u8>,
) {
    let stats = &inbound.stats;
    loop {
        let read = frame::read_message(stream, buffer, inbound.max_frame);
        let Ok(message) = tokio::time::timeout(inbound.read_deadline, read).await else {
            warn!("peer link: nothing from the peer within the read deadline; closing");
            return;
        };
        match message {
            Ok(PeerMessage::Heartbeat(heartbeat)) => {
                count(&stats.heartbeats_received);
                telemetry::heartbeat_received();
                let received = Received {
                    at: Instant::now(),
                    heartbeat,
                };
                if inbound.to_engine.send(received).await.is_err() {
                    return;
                }
            }
            Ok(
                PeerMessage::Hello { .. }
                | PeerMessage::Replication(_)
                | PeerMessage::Status { .. }
                | PeerMessage::ConfirmAsk { .. }
                | PeerMessage::ConfirmAnswer { .. },
            ) => {
                count(&stats.bad_frames);
                telemetry::peer_frame_rejected("unexpected");
                warn!("peer link: not a heartbeat on the heartbeat connection; closing it");
                return;
            }
            Err(FrameError::Io(error)) => {
                debug!(%error, "peer link: inbound connection closed");
                return;
            }
            Err(error) => {
                count(&stats.bad_frames);
                frame_rejected(&error);
                warn!(%error, "peer link: closing the inbound connection");
                return;
            }
        }
    }
}

/// How this node opens a connection to its peer (heartbeats and replication alike).
#[derive(Clone)]
struct Dial {
    /// The peer's link address (or a relay's).
    target: SocketAddr,
    /// This node's address, to connect from.
    source: Option<std::net::IpAddr>,
    /// The link's TLS setup.
    tls: PeerTls,
    /// This node's id, for the hello.
    own_id: NodeId,
    /// How long the TCP connect may take (a lost SYN is not waited out).
    connect_within: Duration,
    /// `peer_dead_after`: data unacknowledged this long (`TCP_USER_TIMEOUT`), or a heartbeat
    /// write stuck this long, means the peer is as good as gone.
    dead_after: Duration,
}

/// Where and how this node reaches its peer for heartbeats.
struct Outbound {
    dial: Dial,
    /// A new connection attempt starts this often while none has succeeded (the heartbeat
    /// interval): no exponential back-off, so a healed partition is noticed within about
    /// one interval.
    redial_every: Duration,
    /// The inbound side: whether the peer's own connection to us has ended.
    gate: Arc<Gate>,
    /// Where a gone peer is reported.
    gone: watch::Sender<Option<Instant>>,
    /// Counters.
    stats: Arc<LinkStats>,
}

/// At most this many connection attempts at once: one whose SYN was lost waits for TCP's
/// retransmission, and newer ones overlap it rather than queue behind it. Half the peer's
/// unauthenticated slots: on a slow link several attempts may be in their TLS handshake at
/// once, and more than the peer holds would close each other's (the oldest goes first)
/// before any finished; the other half is for the replication connection.
const MAX_DIAL_ATTEMPTS: usize = MAX_UNAUTHENTICATED / 2;
const _: () = assert!(MAX_DIAL_ATTEMPTS >= 1 && MAX_DIAL_ATTEMPTS < MAX_UNAUTHENTICATED);

/// How long a TCP connect to the peer may wait for an answer: four heartbeat intervals, and
/// at least `peer_dead_after` (a link slower than that could not keep the pair anyway). A
/// new attempt starts every interval meanwhile, so with the shipped timings (four
/// intervals, [`MAX_DIAL_ATTEMPTS`] of them) a SYN leaves every interval, partition or not;
/// with a longer `peer_dead_after`, every `peer_dead_after / MAX_DIAL_ATTEMPTS`.
fn connect_within(redial_every: Duration, dead_after: Duration) -> Duration {
    redial_every.saturating_mul(4).max(dead_after)
}

/// Keeps a connection to the peer and writes every new heartbeat on it, reconnecting at
/// once when it is lost (a write fails, or the peer closes it: its process may be gone).
/// Reports the `seq` of each heartbeat written, so shutdown can wait for the last.
async fn send_heartbeats(
    outbound: Outbound,
    mut heartbeats: watch::Receiver<Option<Heartbeat>>,
    written: watch::Sender<u64>,
) {
    let stats = outbound.stats.clone();
    loop {
        let stream = dial_until_connected(&outbound).await;
        count(&stats.connected);
        telemetry::peer_connection("out", "connected");
        info!(target = %outbound.dial.target, "peer link: connected to the peer");
        let (reader, mut writer) = tokio::io::split(stream);
        let closed = closed_by_peer(reader);
        tokio::pin!(closed);
        // Send the newest heartbeat at once, then every new one.
        heartbeats.mark_changed();
        loop {
            tokio::select! {
                changed = heartbeats.changed() => if changed.is_err() {
                    return; // the node is gone
                },
                () = &mut closed => {
                    warn!("peer link: the peer closed our connection");
                    break;
                }
            }
            let Some(heartbeat) = heartbeats.borrow_and_update().clone() else {
                continue;
            };
            let seq = heartbeat.seq;
            let message = PeerMessage::Heartbeat(heartbeat);
            let write = frame::write_message(&mut writer, &message);
            match tokio::time::timeout(outbound.dial.dead_after, write).await {
                Ok(Ok(())) => {
                    count(&stats.heartbeats_sent);
                    telemetry::heartbeat_sent();
                    written.send_replace(seq);
                }
                Ok(Err(error)) => {
                    warn!(%error, "peer link: lost the connection to the peer");
                    break;
                }
                Err(_) => {
                    warn!("peer link: writing to the peer timed out; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Completes when the peer closes or resets the heartbeat connection. The peer never sends
/// on it, so this only waits; anything it did send is read and dropped.
async fn closed_by_peer(mut reader: impl tokio::io::AsyncRead + Unpin) {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 256];
    while let Ok(1..) = reader.read(&mut buffer).await {}
}

/// A refused (or reset) connect is retried this soon, a few times, to confirm that the
/// peer's process is gone (its host answers, nothing listens) without waiting a heartbeat
/// interval.
const REFUSAL_CONFIRM_AFTER: Duration = Duration::from_millis(5);
const FAST_REFUSAL_RETRIES: u32 = 8;

/// Starts a connection attempt at once and another every `redial_every` (up to
/// [`MAX_DIAL_ATTEMPTS`] at once) until one succeeds; the others are dropped. Refusals
/// are retried within milliseconds; see [`Outbound::refused`].
async fn dial_until_connected(outbound: &Outbound) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut attempts = tokio::task::JoinSet::new();
    let mut next_attempt = Instant::now();
    let (mut reported_failure, mut refusals, mut fast_retries) = (false, Refusals::default(), 0u32);
    loop {
        let now = Instant::now();
        if now >= next_attempt && attempts.len() < MAX_DIAL_ATTEMPTS {
            let dial = outbound.dial.clone();
            attempts.spawn(async move { (now, connect(&dial, Channel::Control).await) });
            next_attempt = now + outbound.redial_every;
        }
        // With every slot taken, the next attempt waits for one to end (not a busy loop).
        let room = attempts.len() < MAX_DIAL_ATTEMPTS;
        tokio::select! {
            Some(done) = attempts.join_next() => match done {
                Ok((_, Ok(stream))) => return stream,
                Ok((started, Err(error))) => {
                    count(&outbound.stats.dial_failures);
                    telemetry::peer_connection("out", "failed");
                    let target = outbound.dial.target;
                    if reported_failure {
                        debug!(%target, %error, "peer link: still cannot reach the peer");
                    } else {
                        warn!(%target, %error, "peer link: cannot reach the peer; retrying");
                        reported_failure = true;
                    }
                    // The peer's host answered (refused, or reset a connection its
                    // closing process had queued): try again within milliseconds, a few
                    // times. Only refusals count towards a gone process; silence (a
                    // timeout) starts the count over.
                    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
                    let kind = error.kind();
                    if kind == ConnectionRefused {
                        let inbound_ended = outbound.gate.control_ended_at();
                        if let Some(since) = refusals.refused(started, inbound_ended) {
                            outbound.report_gone(since);
                        }
                    }
                    if matches!(kind, ConnectionRefused | ConnectionReset | ConnectionAborted) {
                        fast_retries = fast_retries.saturating_add(1);
                        if fast_retries <= FAST_REFUSAL_RETRIES {
                            next_attempt = next_attempt.min(Instant::now() + REFUSAL_CONFIRM_AFTER);
                        }
                    } else {
                        (refusals, fast_retries) = (Refusals::default(), 0);
                    }
                }
                Err(error) => warn!(%error, "peer link: a connection attempt failed to run"),
            },
            () = tokio::time::sleep_until(next_attempt), if room => {}
        }
    }
}

/// Refused connects in a row that started after the peer's own connection to us ended.
/// The peer's process is gone at the second of them: a firewall's REJECT refuses as well,
/// but leaves the peer's connection to us alive, and a refusal from before that connection
/// ended says nothing about the process that held it. Only a refused `connect()` counts,
/// never a reset of an established connection (the peer's stranger filter closes those).
#[derive(Debug, Default)]
struct Refusals {
    /// When the inbound connection these count against ended.
    after: Option<Instant>,
    count: u32,
}

impl Refusals {
    /// An attempt started at `started` was refused; `inbound_ended`: when the peer's
    /// connection to us ended (`None`: it is up). Returns when the inbound one ended once
    /// this confirms the process gone.
    fn refused(&mut self, started: Instant, inbound_ended: Option<Instant>) -> Option<Instant> {
        if self.after != inbound_ended {
            *self = Refusals {
                after: inbound_ended,
                count: 0,
            };
        }
        let since = inbound_ended.filter(|&ended| started >= ended)?;
        self.count = self.count.saturating_add(1);
        (self.count >= 2).then_some(since)
    }
}

impl Outbound {
    /// The peer's process is gone: its connection to us ended at `since`.
    fn report_gone(&self, since: Instant) {
        let reported = self.gone.send_if_modified(|gone| {
            let new = *gone != Some(since);
            *gone = Some(since);
            new
        });
        if reported {
            warn!("peer link: the peer's host refuses the link and its connection to us ended: its process is gone");
        }
    }
}

/// Opens a replication connection to the peer (for the store's task).
async fn dial_replication(dial: &Dial) -> std::io::Result<BoxedStream> {
    let stream = connect(dial, Channel::Replication).await?;
    Ok(Box::new(stream))
}

/// Fetches the peer's own status report on a connection of its own.
async fn fetch_status(dial: &Dial, max_frame: usize) -> Result<serde_json::Value, FetchError> {
    let mut stream = connect(dial, Channel::Status)
        .await
        .map_err(FetchError::Connect)?;
    status::read_answer(&mut stream, max_frame).await
}

/// A TCP connection to `dial.target` from `dial.source` (this node's address, which the
/// peer's gate admits; any port), or from wherever the OS picks when the families differ;
/// given up after `dial.connect_within`.
async fn tcp_to_peer(dial: &Dial, channel: Channel) -> std::io::Result<TcpStream> {
    let target = dial.target;
    let socket = match target {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(source) = dial.source.filter(|s| s.is_ipv4() == target.is_ipv4()) {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let tcp = tokio::time::timeout(dial.connect_within, socket.connect(target))
        .await
        .unwrap_or_else(|_| Err(timed_out("no answer to the connect")))?;
    tcp.set_nodelay(true).ok();
    notice_dead_peer(&tcp, channel, dial.dead_after)?;
    Ok(tcp)
}

/// A connection whose peer lost power or dropped off the network gives no error by itself:
/// data we sent stays unacknowledged for ever (heartbeats would queue in the kernel) and an
/// idle one stays open. On the heartbeat connection, which only writes, `TCP_USER_TIMEOUT`
/// ends it once sent data waits `dead_after` for an acknowledgement. Not on a replication
/// connection: a follower busy committing a large install may leave the window shut that
/// long, and the session has its own deadline. Keepalive probes both when idle (at the
/// kernel's one-second granularity).
fn notice_dead_peer(
    tcp: &TcpStream,
    channel: Channel,
    dead_after: Duration,
) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    if channel == Channel::Control {
        socket.set_tcp_user_timeout(Some(dead_after))?;
    }
    let probe_every = dead_after.max(Duration::from_secs(1));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(probe_every)
        .with_interval(probe_every)
        .with_retries(3);
    socket.set_tcp_keepalive(&keepalive)
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_owned())
}

async fn connect(
    dial: &Dial,
    channel: Channel,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let attempt = async {
        let tcp = tcp_to_peer(dial, channel).await?;
        let mut stream = dial
            .tls
            .connector
            .connect(dial.tls.peer_name.clone(), tcp)
            .await?;
        let hello = PeerMessage::Hello {
            version: crate::config::version::spoken_protocol_version(),
            node_id: dial.own_id.clone(),
            channel,
        };
        frame::write_message(&mut stream, &hello).await?;
        Ok(stream)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(timed_out("connect and handshake timed out")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peer_connection_gives_up_on_a_peer_that_stopped_acknowledging() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = listener.local_addr().expect("address");
        let tcp = TcpStream::connect(target).await.expect("connect");
        notice_dead_peer(&tcp, Channel::Control, Duration::from_millis(300)).expect("options");
        let socket = socket2::SockRef::from(&tcp);
        assert_eq!(
            socket.tcp_user_timeout().expect("user timeout"),
            Some(Duration::from_millis(300))
        );
        assert!(socket.keepalive().expect("keepalive"));
        // The kernel counts keepalive in whole seconds: a sub-second dead_after probes each second.
        assert_eq!(
            socket.tcp_keepalive_time().expect("idle"),
            Duration::from_secs(1)
        );
        let replication = TcpStream::connect(target).await.expect("connect");
        notice_dead_peer(
            &replication,
            Channel::Replication,
            Duration::from_millis(300),
        )
        .expect("options");
        let socket = socket2::SockRef::from(&replication);
        assert_eq!(socket.tcp_user_timeout().expect("user timeout"), None);
        assert!(socket.keepalive().expect("keepalive"));
    }

    #[test]
    fn a_connect_waits_four_heartbeats_or_the_dead_time_and_a_syn_leaves_every_heartbeat() {
        let ms = Duration::from_millis;
        assert_eq!(connect_within(ms(100), ms(300)), ms(400));
        assert_eq!(connect_within(ms(100), ms(1000)), ms(1000));
        // Enough overlapping attempts for a SYN every heartbeat with the shipped timings.
        assert!(connect_within(ms(100), ms(300)) <= ms(100) * MAX_DIAL_ATTEMPTS as u32);
    }

    #[test]
    fn only_two_refusals_after_the_peers_connection_ended_mean_its_process_is_gone() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut refusals = Refusals::default();
        // The peer's connection to us is up: a REJECT rule, not a dead process.
        assert_eq!(refusals.refused(at(10), None), None);
        assert_eq!(refusals.refused(at(20), None), None);
        // It ended at 30: attempts started before say nothing of the process that held it.
        assert_eq!(refusals.refused(at(25), Some(at(30))), None);
        assert_eq!(refusals.refused(at(29), Some(at(30))), None);
        assert_eq!(refusals.refused(at(31), Some(at(30))), None);
        assert_eq!(refusals.refused(at(36), Some(at(30))), Some(at(30)));
        // A new connection came and ended again: the count starts over.
        assert_eq!(refusals.refused(at(50), Some(at(45))), None);
        assert_eq!(refusals.refused(at(55), Some(at(45))), Some(at(45)));
    }
}
