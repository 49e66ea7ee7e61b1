//! The two tasks of the peer link: accepting the peer's heartbeats, and sending ours; and
//! [`start`], which sets both up from the configuration.

use super::frame::{self, Channel, FrameError, PeerMessage};
use super::replication::{BoxedStream, Dialer};
use super::tls::PeerTls;
use crate::config::{PeerConfig, PeerLinkConfig};
use crate::engine::{Heartbeat, NodeId, ProtocolVersion};
use crate::telemetry;
use crate::tls::TlsError;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, debug_span, info, warn, Instrument};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Inbound connections served at once: the peer needs one; a few more absorb the overlap of
/// reconnects. Anything beyond is closed at once and counted.
const MAX_INBOUND: usize = 8;
/// First and longest wait between attempts to reach the peer.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

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
    pub inbound: mpsc::Receiver<Heartbeat>,
    /// Our newest heartbeat; the sender task writes whatever is newest.
    pub outbound: watch::Sender<Option<Heartbeat>>,
    /// The `seq` of the newest heartbeat on the wire (shutdown waits for the last one).
    pub written: watch::Receiver<u64>,
    /// Replication connections the peer opened, for the store's task.
    pub replication: mpsc::Receiver<BoxedStream>,
    /// Opens a replication connection to the peer, for the store's task.
    pub dialer: Option<Dialer>,
    /// Counters of the link.
    pub stats: Arc<LinkStats>,
}

/// Binds the peer link's listener and starts its tasks: accepting the peer's connections
/// and keeping ours to it. `write_timeout`: a heartbeat write stuck this long means the
/// peer is as good as gone.
pub async fn start(
    own_id: &NodeId,
    pair: Option<(&PeerConfig, &PeerLinkConfig)>,
    write_timeout: Duration,
) -> Result<PeerLink, LinkError> {
    let stats = Arc::new(LinkStats::default());
    let (outbound, outbound_rx) = watch::channel(None::<Heartbeat>);
    let (written_tx, written) = watch::channel(0u64);
    let (inbound_tx, inbound) = mpsc::channel::<Heartbeat>(64);
    let (replication_tx, replication) = mpsc::channel::<BoxedStream>(4);
    let mut link = PeerLink {
        inbound,
        outbound,
        written,
        replication,
        dialer: None,
        stats: stats.clone(),
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
    let accepting = accept_heartbeats(
        listener,
        tls.clone(),
        config.max_frame,
        inbound_tx,
        replication_tx,
        stats.clone(),
    );
    tokio::spawn(accepting.in_current_span());
    let (target, dial_tls, dial_id) = (peer.connect, tls.clone(), own_id.clone());
    link.dialer = Some(Arc::new(move || {
        let (tls, own_id) = (dial_tls.clone(), dial_id.clone());
        Box::pin(dial_replication(target, tls, own_id))
            as std::pin::Pin<
                Box<dyn std::future::Future<Output = std::io::Result<BoxedStream>> + Send>,
            >
    }) as Dialer);
    let sending = send_heartbeats(
        peer.connect,
        tls,
        own_id.clone(),
        outbound_rx,
        written_tx,
        write_timeout,
        stats,
    );
    tokio::spawn(sending.in_current_span());
    Ok(link)
}

/// Accepts the peer's connections and forwards its heartbeats to the engine, until the
/// engine's side of `to_engine` is gone.
pub async fn accept_heartbeats(
    listener: TcpListener,
    tls: PeerTls,
    max_frame: usize,
    to_engine: mpsc::Sender<Heartbeat>,
    to_store: mpsc::Sender<BoxedStream>,
    stats: Arc<LinkStats>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND));
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: keep serving, but do not spin.
                warn!(%error, "peer link: accept failed");
                tokio::time::sleep(BACKOFF_MIN).await;
                continue;
            }
        };
        if to_engine.is_closed() {
            return;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            count(&stats.refused);
            telemetry::limit_hit("peer_connections");
            warn!(client = %addr, "peer link: too many inbound connections; closing one");
            continue;
        };
        let span = debug_span!("peer_in", peer.addr = %addr);
        let (tls, to_engine, stats) = (tls.clone(), to_engine.clone(), stats.clone());
        let to_store = to_store.clone();
        tokio::spawn(
            async move {
                let _slot = slot;
                serve_inbound(stream, tls, max_frame, to_engine, to_store, stats).await;
            }
            .instrument(span),
        );
    }
}

async fn serve_inbound(
    stream: TcpStream,
    tls: PeerTls,
    max_frame: usize,
    to_engine: mpsc::Sender<Heartbeat>,
    to_store: mpsc::Sender<BoxedStream>,
    stats: Arc<LinkStats>,
) {
    stream.set_nodelay(true).ok();
    let mut stream =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                count(&stats.refused);
                telemetry::peer_connection("in", "refused");
                warn!(%error, "peer link: refused a connection (TLS handshake failed)");
                return;
            }
            Err(_) => {
                count(&stats.refused);
                telemetry::peer_connection("in", "refused");
                warn!("peer link: refused a connection (TLS handshake timed out)");
                return;
            }
        };
    if !tls.names_peer(stream.get_ref().1.peer_certificates()) {
        count(&stats.refused);
        telemetry::peer_connection("in", "refused");
        warn!("peer link: refused a connection whose certificate does not name the peer");
        return;
    }
    let mut buffer = Vec::new();
    match frame::read_message(&mut stream, &mut buffer, max_frame).await {
        Ok(PeerMessage::Hello {
            channel: Channel::Control,
            node_id,
            version,
        }) => {
            count(&stats.accepted);
            telemetry::peer_connection("in", "accepted");
            info!(peer = %node_id, %version, "peer link: peer connected");
        }
        Ok(PeerMessage::Hello {
            channel: Channel::Replication,
            ..
        }) => {
            // The store's task takes the connection over.
            let _ = to_store.send(Box::new(stream)).await;
            return;
        }
        Ok(other) => {
            count(&stats.refused);
            telemetry::peer_connection("in", "refused");
            warn!(
                ?other,
                "peer link: refused a connection that did not start with hello"
            );
            return;
        }
        Err(error) => {
            count(&stats.refused);
            telemetry::peer_connection("in", "refused");
            frame_rejected(&error);
            warn!(%error, "peer link: refused a connection with a bad hello");
            return;
        }
    }
    loop {
        match frame::read_message(&mut stream, &mut buffer, max_frame).await {
            Ok(PeerMessage::Heartbeat(heartbeat)) => {
                count(&stats.heartbeats_received);
                telemetry::heartbeat_received();
                if to_engine.send(heartbeat).await.is_err() {
                    return;
                }
            }
            Ok(PeerMessage::Hello { .. } | PeerMessage::Replication(_)) => {
                count(&stats.bad_frames);
                telemetry::peer_frame_rejected("unexpected");
                warn!("peer link: second hello on a connection; closing it");
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

/// Keeps a connection to the peer and writes every new heartbeat on it, reconnecting with
/// backoff. Reports the `seq` of each heartbeat written, so shutdown can wait for the last.
pub async fn send_heartbeats(
    target: SocketAddr,
    tls: PeerTls,
    own_id: NodeId,
    mut heartbeats: watch::Receiver<Option<Heartbeat>>,
    written: watch::Sender<u64>,
    write_timeout: Duration,
    stats: Arc<LinkStats>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut reported_failure = false;
    loop {
        match connect(target, &tls, &own_id, Channel::Control).await {
            Ok(mut stream) => {
                count(&stats.connected);
                telemetry::peer_connection("out", "connected");
                info!(%target, "peer link: connected to the peer");
                backoff = BACKOFF_MIN;
                reported_failure = false;
                // Send the newest heartbeat at once, then every new one.
                heartbeats.mark_changed();
                loop {
                    if heartbeats.changed().await.is_err() {
                        return; // the node is gone
                    }
                    let Some(heartbeat) = heartbeats.borrow_and_update().clone() else {
                        continue;
                    };
                    let seq = heartbeat.seq;
                    let message = PeerMessage::Heartbeat(heartbeat);
                    let write = frame::write_message(&mut stream, &message);
                    match tokio::time::timeout(write_timeout, write).await {
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
            Err(error) => {
                count(&stats.dial_failures);
                telemetry::peer_connection("out", "failed");
                if reported_failure {
                    debug!(%target, %error, "peer link: still cannot reach the peer");
                } else {
                    warn!(%target, %error, "peer link: cannot reach the peer; retrying");
                    reported_failure = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Opens a replication connection to the peer (for the store's task).
pub async fn dial_replication(
    target: SocketAddr,
    tls: PeerTls,
    own_id: NodeId,
) -> std::io::Result<BoxedStream> {
    let stream = connect(target, &tls, &own_id, Channel::Replication).await?;
    Ok(Box::new(stream))
}

async fn connect(
    target: SocketAddr,
    tls: &PeerTls,
    own_id: &NodeId,
    channel: Channel,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let attempt = async {
        let tcp = TcpStream::connect(target).await?;
        tcp.set_nodelay(true).ok();
        let mut stream = tls.connector.connect(tls.peer_name.clone(), tcp).await?;
        let hello = PeerMessage::Hello {
            version: ProtocolVersion::CURRENT,
            node_id: own_id.clone(),
            channel,
        };
        frame::write_message(&mut stream, &hello).await?;
        Ok(stream)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect and handshake timed out",
            ))
        })
}
