//! The tiny service of each dev node: what a real node's OMM or portal would be, answering
//! with the node's name so a person sees where the front ends sent them.
//!
//! - SIP over UDP and TCP: 200 to every request but ACK (INVITE with a Contact naming the
//!   node), with `Server: standby-proxy dev service, node <id>`;
//! - HTTP: `hello from node <id>` and the request line;
//! - TCP: a greeting naming the node, then an echo.
//!
//! Loopback only, for a demo; still, a stream's message is bounded and a client that sends
//! nothing is not waited for forever.

use super::{DevError, DevNode, Ports};
use crate::sip::framing::{Frame, Framer};
use crate::sip::scan::{self, Name, StartLine};
use http_body_util::Full;
use hyper::body::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::debug;

/// Largest SIP message over TCP.
const MAX_MESSAGE: usize = 64 * 1024;
/// A connection with nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(300);

/// Binds the node's three services and serves them in the background.
pub async fn start(node: &DevNode, ports: Ports) -> Result<(), DevError> {
    let listen_error = |address: SocketAddr| {
        let node = node.id.clone();
        move |source| DevError::Listen {
            node,
            address,
            source,
        }
    };
    let sip_at = SocketAddr::new(node.address, ports.service_sip);
    let udp = UdpSocket::bind(sip_at)
        .await
        .map_err(listen_error(sip_at))?;
    let sip_tcp = TcpListener::bind(sip_at)
        .await
        .map_err(listen_error(sip_at))?;
    let http_at = SocketAddr::new(node.address, ports.service_http);
    let http = TcpListener::bind(http_at)
        .await
        .map_err(listen_error(http_at))?;
    let tcp_at = SocketAddr::new(node.address, ports.service_tcp);
    let tcp = TcpListener::bind(tcp_at)
        .await
        .map_err(listen_error(tcp_at))?;
    let id = node.id.clone();
    tokio::spawn(sip_udp(udp, id.clone(), sip_at));
    tokio::spawn(accept_each(sip_tcp, {
        let id = id.clone();
        move |stream| sip_stream(stream, id.clone(), sip_at)
    }));
    tokio::spawn(accept_each(http, {
        let id = id.clone();
        move |stream| http_connection(stream, id.clone())
    }));
    tokio::spawn(accept_each(tcp, move |stream| echo(stream, id.clone())));
    Ok(())
}

/// Serves each accepted connection in a task of its own.
async fn accept_each<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream));
            }
            Err(error) => {
                debug!(%error, "dev service accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The answer of node `id` (reachable at `contact`) to one SIP message, if it gets one.
pub fn sip_answer(id: &str, contact: SocketAddr, message: &[u8]) -> Option<Vec<u8>> {
    let scanned = scan::scan(message).ok()?;
    let StartLine::Request { method, .. } = scanned.start else {
        return None; // a response: nothing to answer
    };
    if method == b"ACK" {
        return None;
    }
    let mut out = b"SIP/2.0 200 OK\r\n".to_vec();
    for line in scan::header_lines(scanned.head).map_while(Result::ok) {
        match Name::of(line.name) {
            Name::Via | Name::From | Name::CallId | Name::CSeq => {
                out.extend_from_slice(line.line);
                out.extend_from_slice(b"\r\n");
            }
            Name::To => {
                out.extend_from_slice(line.line);
                if scan::param(line.value, "tag").is_none() {
                    out.extend_from_slice(format!(";tag=dev-node-{id}").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
    }
    if method == b"INVITE" {
        out.extend_from_slice(format!("Contact: <sip:node-{id}@{contact}>\r\n").as_bytes());
    }
    out.extend_from_slice(
        format!("Server: standby-proxy dev service, node {id}\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    );
    Some(out)
}

async fn sip_udp(socket: UdpSocket, id: String, contact: SocketAddr) {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok((length, from)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        if let Some(answer) = sip_answer(&id, contact, &buffer[..length]) {
            let _ = socket.send_to(&answer, from).await;
        }
    }
}

async fn sip_stream(mut stream: TcpStream, id: String, contact: SocketAddr) {
    let mut buffer = Vec::new();
    let mut framer = Framer::new(MAX_MESSAGE);
    loop {
        match framer.next(&buffer) {
            Frame::Complete(length) => {
                let message: Vec<u8> = buffer.drain(..length).collect();
                if let Some(answer) = sip_answer(&id, contact, &message) {
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Frame::Incomplete => {}
            Frame::TooLarge | Frame::Unframeable(_) => return,
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(IDLE, stream.read(&mut chunk)).await {
            Ok(Ok(read)) if read > 0 => buffer.extend_from_slice(&chunk[..read]),
            _ => return,
        }
    }
}

async fn http_connection(stream: TcpStream, id: String) {
    let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
        let body = format!(
            "hello from node {id}: {} {}\n",
            request.method(),
            request.uri()
        );
        let id = id.clone();
        async move {
            hyper::Response::builder()
                .header("content-type", "text/plain")
                .header("x-standby-node", id)
                .body(Full::new(Bytes::from(body)))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let _ = tokio::time::timeout(IDLE, connection).await;
}

async fn echo(mut stream: TcpStream, id: String) {
    if stream
        .write_all(format!("node {id} echo\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let (mut read, mut write) = stream.split();
    let _ = tokio::time::timeout(IDLE, tokio::io::copy(&mut read, &mut write)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:alice@127.0.0.1:5070 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bKproxy\r\n\
Via: SIP/2.0/UDP 127.0.0.9:5061;branch=z9hG4bKuac\r\n\
From: <sip:bob@127.0.0.9>;tag=1\r\n\
To: <sip:alice@127.0.0.1>\r\n\
Call-ID: c1\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn an_invite_gets_a_200_naming_the_node_with_every_via() {
        let contact: SocketAddr = "127.0.0.1:5070".parse().expect("address");
        let answer = sip_answer("a", contact, INVITE).expect("an answer");
        let text = String::from_utf8(answer).expect("text");
        assert!(text.starts_with("SIP/2.0 200 OK\r\n"), "{text}");
        assert!(text.contains("branch=z9hG4bKproxy\r\nVia: SIP/2.0/UDP 127.0.0.9"));
        assert!(text.contains("To: <sip:alice@127.0.0.1>;tag=dev-node-a\r\n"));
        assert!(text.contains("Contact: <sip:node-a@127.0.0.1:5070>"));
        assert!(text.contains("Server: standby-proxy dev service, node a"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn ack_responses_and_garbage_get_nothing() {
        let contact: SocketAddr = "127.0.0.1:5070".parse().expect("address");
        let ack = [b"ACK".as_slice(), &INVITE[6..]].concat();
        assert!(sip_answer("a", contact, &ack).is_none());
        assert!(sip_answer("a", contact, b"SIP/2.0 200 OK\r\n\r\n").is_none());
        assert!(sip_answer("a", contact, b"\x00\x01garbage").is_none());
    }
}
