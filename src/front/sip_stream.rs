//! SIP over TCP and TLS: one task per connection on the front end's own per-core runtimes,
//! never on the control plane's.
//!
//! Every connection is bounded: admitted only within the listener's and its source's caps;
//! a message must be complete within `first_message_timeout` of its first byte (a client
//! trickling one byte at a time cannot hold a connection); nothing at all for
//! `idle_timeout` closes it; a write that does not finish within `write_timeout` (a client
//! that never reads) closes it; a message over `max_message` closes it. RFC 5626 keep-alives
//! (a double CRLF, answered with one CRLF) are not messages and keep a connection alive.

use super::limits::Admission;
use super::sip::{Action, SipService};
use crate::config::ClientLimits;
use crate::sip::framing::{Frame, Framer};
use crate::sip::proxy::Source;
use crate::sip::Transport;
use crate::telemetry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, debug_span, warn, Instrument};

/// Room a plain TCP read gets: one system call takes whatever has arrived (the buffer is
/// held only until the messages in it are answered).
const TCP_READ_ROOM: usize = 16 * 1024;

/// Room a TLS read gets: rustls holds the decrypted bytes already, so a small buffer costs
/// copies, not system calls, and an idle TLS connection (which holds its buffer while it
/// waits) keeps it small.
const TLS_READ_ROOM: usize = 2 * 1024;

/// How a stream connection reads into its buffer. An idle plain TCP connection holds no
/// buffer at all while it waits (thousands of phones and base stations sit idle on a
/// front end); a TLS one holds a small one, as rustls may have decrypted bytes the socket
/// no longer shows.
pub trait ReadInto {
    /// Reads what has arrived onto the end of `buffer`; 0 at the end of the stream.
    fn read_into(
        &mut self,
        buffer: &mut Vec<u8>,
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send;
}

impl ReadInto for TcpStream {
    async fn read_into(&mut self, buffer: &mut Vec<u8>) -> std::io::Result<usize> {
        loop {
            if buffer.is_empty() {
                *buffer = Vec::new();
            }
            self.readable().await?;
            make_room(buffer, TCP_READ_ROOM);
            match self.try_read_buf(buffer) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                read => return read,
            }
        }
    }
}

impl ReadInto for tokio_rustls::server::TlsStream<TcpStream> {
    async fn read_into(&mut self, buffer: &mut Vec<u8>) -> std::io::Result<usize> {
        if buffer.is_empty() && buffer.capacity() > TLS_READ_ROOM {
            // A large message is gone: give its room back.
            *buffer = Vec::new();
        }
        make_room(buffer, TLS_READ_ROOM);
        self.read_buf(buffer).await
    }
}

/// At least `room` bytes free at the end of `buffer`; a growing message doubles it.
fn make_room(buffer: &mut Vec<u8>, room: usize) {
    if buffer.capacity() - buffer.len() < room {
        buffer.reserve(room.max(buffer.len()));
    }
}

/// What bounds each stream connection of one front end.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Largest message.
    pub max_message: usize,
    /// Caps and timeouts.
    pub limits: ClientLimits,
}

impl StreamSettings {
    /// How long a message (and a TLS handshake) may take from its first byte.
    fn message_timeout(&self) -> Duration {
        self.limits
            .first_message_timeout
            .unwrap_or(Duration::from_secs(10))
    }
}

/// Accepts SIP over TCP, or over TLS with `tls`, until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    service: Arc<SipService>,
    tls: Option<TlsAcceptor>,
    admission: Arc<Admission>,
    settings: Arc<StreamSettings>,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "SIP TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = admission.admit(addr.ip()) else {
            continue;
        };
        let (service, tls, settings) = (service.clone(), tls.clone(), settings.clone());
        let span = debug_span!("sip_stream", client.addr = %addr, transport = transport.via_name());
        tokio::spawn(
            async move {
                let _admitted = admitted;
                let result = match tls {
                    None => serve_connection(stream, addr, transport, &service, &settings).await,
                    // Boxed: its state (rustls's) is larger than a plain connection's, and
                    // every connection's task would otherwise be allocated that large.
                    Some(acceptor) => {
                        Box::pin(async {
                            let limit = settings.message_timeout();
                            match crate::tls::accept_within(&acceptor, stream, limit, "sip_tls")
                                .await
                            {
                                Ok(stream) => {
                                    serve_connection(stream, addr, transport, &service, &settings)
                                        .await
                                }
                                Err(reason) => Err(reason),
                            }
                        })
                        .await
                    }
                };
                if let Err(reason) = result {
                    debug!(%reason, "SIP connection closed");
                }
            }
            .instrument(span),
        );
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + ReadInto + Unpin>(
    stream: S,
    addr: SocketAddr,
    transport: Transport,
    service: &Arc<SipService>,
    settings: &StreamSettings,
) -> Result<(), String> {
    // Redirect mode relays nothing: no queue.
    let (connection, relayed) = service.register().unzip();
    let source = Source {
        addr,
        transport,
        connection,
    };
    // Unregistered however the task ends, a panic included.
    let _registered = Registered {
        service,
        connection,
    };
    let connection_state = Connection {
        stream,
        service,
        settings,
        source,
    };
    connection_state.run(relayed).await
}

/// The next answer relayed to this connection; never, without a queue.
async fn relayed_answer(relayed: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match relayed {
        Some(queue) => queue.recv().await,
        None => std::future::pending().await,
    }
}

/// A stream connection's entry in the proxy's table of connections to relay answers on.
struct Registered<'a> {
    service: &'a Arc<SipService>,
    connection: Option<u64>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.connection {
            self.service.unregister(id);
        }
    }
}

/// One stream connection's loop.
struct Connection<'a, S> {
    stream: S,
    service: &'a Arc<SipService>,
    settings: &'a StreamSettings,
    source: Source,
}

/// Why a connection is closed, counted in `standby_limit_hits_total` where a limit closed it.
fn closed_by(limit: &'static str, reason: &str) -> String {
    telemetry::limit_hit(limit);
    reason.to_owned()
}

impl<S: AsyncRead + AsyncWrite + ReadInto + Unpin> Connection<'_, S> {
    async fn run(mut self, mut relayed: Option<mpsc::Receiver<Vec<u8>>>) -> Result<(), String> {
        let mut responder = self.service.responder();
        let mut reader = Reader {
            buffer: Vec::new(),
            framer: Framer::new(self.settings.max_message),
            keep_alive: KeepAlive::default(),
        };
        // When the message now at the front of the buffer began; None between messages.
        let mut message_began: Option<Instant> = None;
        loop {
            let answered = self.answer_complete(&mut responder, &mut reader).await?;
            let buffer = &mut reader.buffer;
            // The deadline is the message's now at the front: a new one if a message was
            // taken off (a busy trunk's reads rarely end on a message boundary).
            if buffer.is_empty() {
                message_began = None;
            } else if answered || message_began.is_none() {
                message_began = Some(Instant::now());
            }
            let message_deadline =
                message_began.map(|began| began + self.settings.message_timeout());
            tokio::select! {
                read = tokio::time::timeout(self.settings.limits.idle_timeout, self.stream.read_into(buffer)) => {
                    let read = read
                        .map_err(|_| "idle".to_owned())?
                        .map_err(|e| e.to_string())?;
                    if read == 0 {
                        return Ok(());
                    }
                }
                () = sleep_until(message_deadline) => {
                    return Err(closed_by("sip_message_timeout", "message not complete in time"));
                }
                Some(response) = relayed_answer(&mut relayed) => self.write(&response).await?,
            }
        }
    }

    /// Answers every complete message at the front of the reader's buffer and removes it,
    /// and the keep-alives between messages; true when it took at least one message off.
    async fn answer_complete(
        &mut self,
        responder: &mut super::sip::Responder,
        reader: &mut Reader,
    ) -> Result<bool, String> {
        let mut answered = false;
        loop {
            let (pings, taken) = reader.keep_alive.take(&mut reader.buffer);
            if taken {
                reader.framer.reset();
            }
            if pings > 0 {
                // RFC 5626 §4.4.1: a double CRLF is a ping, answered with one CRLF; the
                // pongs of one read go out in one write (one TLS record, not one each).
                self.write(&b"\r\n".repeat(pings)).await?;
            }
            let buffer = &mut reader.buffer;
            let end = match reader.framer.next(buffer) {
                Frame::Complete(end) => end,
                Frame::Incomplete => return Ok(answered),
                Frame::TooLarge => return Err(closed_by("sip_message", "message over the limit")),
                Frame::Unframeable(_) => {
                    // Answer 400 if possible, then give up on the stream, as its message
                    // boundaries are lost.
                    if let Action::Reply(reply) = responder.answer(buffer, self.source) {
                        let reply = reply.to_vec();
                        self.write(&reply).await?;
                    }
                    return Err("unframeable message".to_owned());
                }
            };
            match responder.answer(&buffer[..end], self.source) {
                Action::Nothing => {}
                Action::Reply(reply) => {
                    let reply = reply.to_vec();
                    self.write(&reply).await?;
                }
                Action::Upstream(bytes, to) => self.service.send_upstream(bytes, to),
                Action::Client(bytes, hop) => self.service.relay_from_stream(bytes, hop),
            }
            buffer.drain(..end);
            responder.release_output();
            answered = true;
        }
    }

    /// Writes `bytes` to the client within the write timeout.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        match tokio::time::timeout(
            self.settings.limits.write_timeout,
            self.stream.write_all(bytes),
        )
        .await
        {
            Ok(written) => written.map_err(|e| e.to_string()),
            Err(_) => Err(closed_by("sip_write_timeout", "the client does not read")),
        }
    }
}

/// What a connection has read and not yet answered.
struct Reader {
    buffer: Vec<u8>,
    framer: Framer,
    keep_alive: KeepAlive,
}

/// RFC 5626 keep-alives between messages: CR and LF bytes, where each double CRLF is a
/// ping. How far a ping has come is kept across reads, so one split over two reads (or
/// sent a CRLF at a time) is still answered, and a lone CRLF (which some phones send)
/// starts no message deadline.
#[derive(Debug, Default)]
struct KeepAlive {
    /// How many bytes of "\r\n\r\n" the last blank bytes matched.
    matched: u8,
}

impl KeepAlive {
    /// Takes the CR and LF bytes off the front of `buffer`: the pings they completed, and
    /// whether it took any byte off.
    fn take(&mut self, buffer: &mut Vec<u8>) -> (usize, bool) {
        let blank = buffer
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        let mut pings = 0;
        for &byte in &buffer[..blank] {
            self.matched = match (self.matched, byte) {
                (3, b'\n') => {
                    pings += 1;
                    0
                }
                (0 | 2, b'\r') => self.matched + 1,
                (1, b'\n') => 2,
                (_, b'\r') => 1,
                _ => 0,
            };
        }
        buffer.drain(..blank);
        if !buffer.is_empty() {
            // A message began: a CRLF before it no longer counts towards a ping.
            self.matched = 0;
        }
        (pings, blank > 0)
    }
}

/// Completes at `deadline`, never without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::KeepAlive;

    fn pings(pieces: &[&[u8]]) -> (Vec<usize>, Vec<u8>) {
        let mut keep_alive = KeepAlive::default();
        let mut buffer = Vec::new();
        let mut pings = Vec::new();
        for piece in pieces {
            buffer.extend_from_slice(piece);
            pings.push(keep_alive.take(&mut buffer).0);
        }
        (pings, buffer)
    }

    #[test]
    fn keep_alives_are_taken_off_and_each_double_crlf_is_a_ping() {
        assert_eq!(pings(&[b"\r\n\r\n"]), (vec![1], vec![]));
        assert_eq!(pings(&[b"\r\n\r\n\r\n\r\n"]), (vec![2], vec![]));
        assert_eq!(pings(&[b"\r\nINVITE"]), (vec![0], b"INVITE".to_vec()));
        assert_eq!(pings(&[b"OPTIONS"]), (vec![0], b"OPTIONS".to_vec()));
        assert_eq!(pings(&[b"\n\n\r\r\n"]), (vec![0], vec![]));
    }

    #[test]
    fn a_ping_split_across_reads_is_answered_once() {
        assert_eq!(pings(&[b"\r\n", b"\r\n"]), (vec![0, 1], vec![]));
        assert_eq!(pings(&[b"\r", b"\n\r", b"\n"]), (vec![0, 0, 1], vec![]));
        // A lone CRLF, then a message: no ping.
        assert_eq!(pings(&[b"\r\n", b"INVITE"]).0, vec![0, 0]);
        assert_eq!(pings(&[b"\r\n", b"I", b"\r\n"]).0, vec![0, 0, 0]);
    }
}
