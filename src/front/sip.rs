//! SIP listeners in `redirect` mode: UDP (several `SO_REUSEPORT` sockets with a large
//! receive buffer, each on its own OS thread, so every core serves) and TCP. Each message goes through the sans-IO
//! [`redirect`](crate::sip::redirect) responder; answers go back where the request came from.

use crate::sip::redirect::{self, Destination, Outcome};
use crate::sip::scan::{self, ScanError};
use crate::sip::uri::SipUri;
use crate::sip::Transport;
use crate::telemetry::{self, SipCounters};
use crate::view::SharedView;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, debug_span, warn, Instrument};

/// Receive buffer asked of the kernel for each UDP socket, so bursts are not dropped.
const UDP_RECEIVE_BUFFER: usize = 4 * 1024 * 1024;
/// Threads blocking on each UDP socket (the kernel wakes one per datagram). Two per socket
/// were measured (bench/sip): more CPU per call and no higher ceiling, so one.
pub const THREADS_PER_SOCKET: usize = 1;
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(300);

/// The active node's target for one front end, parsed once per view generation.
struct TargetCache {
    name: String,
    view: SharedView,
    generation: u64,
    target: Option<SipUri>,
}

impl TargetCache {
    fn new(name: String, view: SharedView) -> Self {
        let mut cache = TargetCache {
            name,
            view,
            generation: u64::MAX,
            target: None,
        };
        cache.refresh();
        cache
    }

    /// The current target; re-parsed only when the view changed.
    fn refresh(&mut self) -> Option<&SipUri> {
        let view = self.view.load();
        if view.generation != self.generation {
            self.generation = view.generation;
            self.target = view.targets.get(&self.name).and_then(|text| {
                text.parse()
                    .map_err(
                        |error| warn!(%error, "the active node advertises an unusable SIP target"),
                    )
                    .ok()
            });
        }
        self.target.as_ref()
    }
}

/// One listener's answering state: the active target, the counters, the reply buffer.
struct Responder {
    targets: TargetCache,
    counters: SipCounters,
    out: Vec<u8>,
}

impl Responder {
    fn new(name: String, view: SharedView) -> Self {
        Responder {
            targets: TargetCache::new(name, view),
            counters: SipCounters::default(),
            out: Vec::with_capacity(2048),
        }
    }

    /// Answers one message, counts it, and returns the reply to send, if any.
    fn answer(&mut self, message: &[u8], transport: Transport) -> Option<&[u8]> {
        let destination = Destination {
            target: self.targets.refresh(),
        };
        let (outcome, method) = redirect::respond(message, transport, destination, &mut self.out);
        let method = method.map_or("none", redirect::method_label);
        let response = match outcome {
            Outcome::Respond(code) => status_label(code),
            Outcome::Absorbed => "absorbed",
            Outcome::Dropped(_) => "dropped",
        };
        self.counters.count(method, response);
        matches!(outcome, Outcome::Respond(_)).then_some(self.out.as_slice())
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
pub fn bind_udp(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    (0..count.max(1))
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_reuse_port(true)?;
            // The kernel may grant less; that only costs burst tolerance.
            let _ = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER);
            socket.bind(&addr.into())?;
            Ok(socket.into())
        })
        .collect()
}

/// Serves one UDP socket on its own OS thread, for the life of the process: a blocking
/// receive, the sans-IO responder, a blocking send. The kernel spreads datagrams over the
/// `SO_REUSEPORT` sockets, so each core serves without any wake-up through an async reactor.
pub fn spawn_udp(
    socket: std::net::UdpSocket,
    name: String,
    view: SharedView,
) -> std::io::Result<()> {
    let label = format!("sip-udp-{name}");
    std::thread::Builder::new().name(label).spawn(move || {
        let mut responder = Responder::new(name, view);
        let mut buffer = vec![0u8; 65_535];
        loop {
            let (length, from) = match socket.recv_from(&mut buffer) {
                Ok(received) => received,
                Err(error) => {
                    // ICMP errors from earlier sends surface here; keep serving.
                    debug!(%error, "SIP UDP receive error");
                    continue;
                }
            };
            if let Some(reply) = responder.answer(&buffer[..length], Transport::Udp) {
                if let Err(error) = socket.send_to(reply, from) {
                    debug!(%error, client = %from, "SIP UDP send failed");
                }
            }
        }
    })?;
    Ok(())
}

/// Accepts SIP over TCP until the task is dropped.
pub async fn serve_tcp(
    listener: TcpListener,
    name: String,
    view: SharedView,
    max_connections: usize,
    max_message: usize,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "SIP TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            telemetry::limit_hit("sip_connections");
            continue;
        };
        let responder = Responder::new(name.clone(), view.clone());
        let span = debug_span!("sip_tcp", client.addr = %addr);
        tokio::spawn(
            async move {
                let _slot = slot;
                if let Err(reason) = serve_connection(stream, responder, max_message).await {
                    debug!(%reason, "SIP TCP connection closed");
                }
            }
            .instrument(span),
        );
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    mut responder: Responder,
    max_message: usize,
) -> Result<(), String> {
    stream.set_nodelay(true).ok();
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Answer every complete message at the front of the buffer.
        loop {
            let end = match scan::scan(&buffer) {
                Ok(message) => message.body_offset + message.content_length.unwrap_or(0),
                Err(ScanError::Incomplete) => break,
                Err(_) => {
                    // Unframeable: answer 400 if possible, then give up on the stream, as its
                    // message boundaries are lost.
                    if let Some(reply) = responder.answer(&buffer, Transport::Tcp) {
                        stream.write_all(reply).await.map_err(|e| e.to_string())?;
                    }
                    return Err("unframeable message".to_owned());
                }
            };
            if end > max_message {
                telemetry::limit_hit("sip_message");
                return Err(format!("message of {end} bytes over the limit"));
            }
            if buffer.len() < end {
                break;
            }
            if let Some(reply) = responder.answer(&buffer[..end], Transport::Tcp) {
                stream.write_all(reply).await.map_err(|e| e.to_string())?;
            }
            buffer.drain(..end);
        }
        if buffer.len() > max_message {
            telemetry::limit_hit("sip_message");
            return Err("message head over the limit".to_owned());
        }
        let read = tokio::time::timeout(TCP_IDLE, stream.read(&mut chunk))
            .await
            .map_err(|_| "idle".to_owned())?
            .map_err(|e| e.to_string())?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}
