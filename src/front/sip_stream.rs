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
use crate::sip::framing::{self, Frame};
use crate::sip::proxy::Source;
use crate::sip::Transport;
use crate::telemetry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, debug_span, warn, Instrument};

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
                    Some(acceptor) => {
                        let limit = settings.message_timeout();
                        match crate::tls::accept_within(&acceptor, stream, limit, "sip_tls").await {
                            Ok(stream) => {
                                serve_connection(stream, addr, transport, &service, &settings).await
                            }
                            Err(reason) => Err(reason),
                        }
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

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    addr: SocketAddr,
    transport: Transport,
    service: &Arc<SipService>,
    settings: &StreamSettings,
) -> Result<(), String> {
    let registration = service.register();
    let connection = registration.as_ref().map(|(id, _)| *id);
    let (relayed, _keep_queue_open);
    match registration {
        Some((_, receiver)) => (relayed, _keep_queue_open) = (receiver, None),
        None => {
            // Redirect mode relays nothing: a queue that never receives.
            let (sender, receiver) = mpsc::channel(1);
            (relayed, _keep_queue_open) = (receiver, Some(sender));
        }
    }
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

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<'_, S> {
    async fn run(mut self, mut relayed: mpsc::Receiver<Vec<u8>>) -> Result<(), String> {
        let mut responder = self.service.responder();
        let mut buffer: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 16 * 1024];
        // When the message now at the front of the buffer began; None between messages.
        let mut message_began: Option<Instant> = None;
        loop {
            let answered = self.answer_complete(&mut responder, &mut buffer).await?;
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
                read = tokio::time::timeout(self.settings.limits.idle_timeout, self.stream.read(&mut chunk)) => {
                    let read = read
                        .map_err(|_| "idle".to_owned())?
                        .map_err(|e| e.to_string())?;
                    if read == 0 {
                        return Ok(());
                    }
                    buffer.extend_from_slice(&chunk[..read]);
                }
                () = sleep_until(message_deadline) => {
                    return Err(closed_by("sip_message_timeout", "message not complete in time"));
                }
                Some(response) = relayed.recv() => self.write(&response).await?,
            }
        }
    }

    /// Answers every complete message at the front of `buffer` and removes it, and the
    /// keep-alives between messages; true when it took at least one message off.
    async fn answer_complete(
        &mut self,
        responder: &mut super::sip::Responder,
        buffer: &mut Vec<u8>,
    ) -> Result<bool, String> {
        let mut answered = false;
        loop {
            if keep_alive(buffer) {
                // RFC 5626 §4.4.1: a double CRLF is a ping, answered with one CRLF.
                self.write(b"\r\n").await?;
                continue;
            }
            let end = match framing::next(buffer, self.settings.max_message) {
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

/// Takes leading CR and LF bytes off `buffer` when they are all it holds before the next
/// message; true when they held a double CRLF (a keep-alive ping to answer).
fn keep_alive(buffer: &mut Vec<u8>) -> bool {
    let blank = buffer
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    if blank == 0 {
        return false;
    }
    let ping = buffer[..blank].windows(4).any(|w| w == b"\r\n\r\n");
    buffer.drain(..blank);
    ping
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
    use super::keep_alive;

    #[test]
    fn keep_alives_are_taken_off_and_a_double_crlf_is_a_ping() {
        let mut buffer = b"\r\n\r\n".to_vec();
        assert!(keep_alive(&mut buffer));
        assert!(buffer.is_empty());
        let mut buffer = b"\r\nINVITE".to_vec();
        assert!(!keep_alive(&mut buffer));
        assert_eq!(buffer, b"INVITE");
        let mut buffer = b"OPTIONS".to_vec();
        assert!(!keep_alive(&mut buffer));
        assert_eq!(buffer, b"OPTIONS");
    }
}
