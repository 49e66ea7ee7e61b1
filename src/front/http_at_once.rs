//! The cheapest answer there is: a plain-HTTP redirect to a client that asks for one request
//! and `Connection: close` (health checks, scripts, many portal clients) is answered in the
//! accept loop, the moment the connection is accepted: accept, one read, one write, close;
//! no task, no HTTP connection state, no registration with epoll. Everything else (a request
//! not yet whole, keep-alive, a body, anything odd) goes on to hyper with the bytes already
//! read, exactly as if they had not been read.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most a request head read at once may be; a longer one goes to hyper (and its limits).
pub const HEAD_AT_ONCE: usize = 4096;

/// A listener whose connections come out of `accept` unregistered with the runtime, so one
/// answered at once never costs an epoll registration.
pub struct Listener {
    socket: AsyncFd<socket2::Socket>,
}

impl Listener {
    /// Takes over a bound, listening, non-blocking socket.
    pub fn new(listener: tokio::net::TcpListener) -> std::io::Result<Listener> {
        let socket = socket2::Socket::from(listener.into_std()?);
        // SAFETY: a socket2::Socket owns its descriptor, open and the same for as long as
        // the AsyncFd holds it.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Listener { socket })
    }

    /// The next connection (non-blocking) and who it comes from.
    pub async fn accept(&self) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.socket.readable().await?;
            let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
            match ready.try_io(|socket| socket.get_ref().accept4(flags)) {
                Ok(Ok((socket, from))) => {
                    let Some(from) = from.as_socket() else {
                        continue;
                    };
                    return Ok((socket.into(), from));
                }
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => continue,
            }
        }
    }
}

/// What became of a connection in the accept loop.
pub enum AtOnce {
    /// Answered and done: close it.
    Answered,
    /// The client already closed it, or it failed.
    Gone,
    /// Serve it as usual, these bytes first (what was read of it).
    Serve(Vec<u8>),
}

/// Reads what the client has sent so far, without waiting; if it is exactly one whole
/// `Connection: close` HTTP/1.1 request without a body, answers it with a redirect to
/// `base` and the request's path (see [`redirect_head`]).
pub fn redirect_at_once(
    stream: &mut std::net::TcpStream,
    base: &str,
    date: &mut HttpDate,
) -> AtOnce {
    let mut head = [0u8; HEAD_AT_ONCE];
    let read = match stream.read(&mut head) {
        Ok(0) => return AtOnce::Gone,
        Ok(read) => read,
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
            return AtOnce::Serve(Vec::new())
        }
        Err(_) => return AtOnce::Gone,
    };
    let received = &head[..read];
    let Some(answer) = redirect_head(received, base, date.now()) else {
        return AtOnce::Serve(received.to_vec());
    };
    // A fresh connection's send buffer takes a few hundred bytes at once; should it not,
    // the connection is closed (nothing to wait for in an accept loop).
    match stream.write(answer.as_bytes()) {
        Ok(written) if written == answer.len() => AtOnce::Answered,
        _ => AtOnce::Gone,
    }
}

/// The whole answer (307, `Location` = `base` + the request's path and query) to `received`
/// if it is exactly one whole HTTP/1.1 request that asks to close the connection and has no
/// body; `None` for anything else.
pub fn redirect_head(received: &[u8], base: &str, date: &str) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(received) {
        Ok(httparse::Status::Complete(length)) if length == received.len() => {}
        _ => return None,
    }
    if request.version != Some(1) {
        return None;
    }
    let mut closes = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("connection") {
            closes |= has_token(header.value, b"close");
        } else if header.name.eq_ignore_ascii_case("transfer-encoding")
            || (header.name.eq_ignore_ascii_case("content-length") && header.value != b"0")
            || header.name.eq_ignore_ascii_case("expect")
            || header.name.eq_ignore_ascii_case("upgrade")
        {
            return None;
        }
    }
    if !closes {
        return None;
    }
    let uri: hyper::Uri = request.path?.parse().ok()?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("{base}{path}");
    // The same check hyper's path makes (it answers 400 to an unusable one).
    hyper::header::HeaderValue::from_str(&location).ok()?;
    Some(format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\nconnection: close\r\ncontent-length: 0\r\ndate: {date}\r\n\r\n"
    ))
}

/// Whether the comma-separated header `value` holds `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&byte| byte == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

/// The `Date` header's value, formatted once a second.
#[derive(Default)]
pub struct HttpDate {
    second: u64,
    text: String,
}

impl HttpDate {
    /// Now, as an HTTP date.
    #[allow(clippy::disallowed_methods)] // the IO layer is where the wall clock is read
    pub fn now(&mut self) -> &str {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now);
        }
        &self.text
    }
}

/// A connection whose first bytes were already read: they are read again first.
pub struct Prefixed<S> {
    first: Vec<u8>,
    offset: usize,
    stream: S,
}

impl<S> Prefixed<S> {
    /// `stream`, `first` read first.
    pub fn new(first: Vec<u8>, stream: S) -> Prefixed<S> {
        Prefixed {
            first,
            offset: 0,
            stream,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.offset < this.first.len() {
            let left = &this.first[this.offset..];
            let taken = left.len().min(buffer.remaining());
            buffer.put_slice(&left[..taken]);
            this.offset += taken;
            if this.offset == this.first.len() {
                this.first = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(context, buffer)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, bytes)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const DATE: &str = "Sat, 05 Dec 2026 10:00:00 GMT";

    #[test]
    fn one_whole_closing_request_is_redirected_at_once() {
        let answer = redirect_head(
            b"GET /portal/a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "http://10.0.0.1:8080",
            DATE,
        )
        .expect("answered");
        assert_eq!(
            answer,
            format!("HTTP/1.1 307 Temporary Redirect\r\nlocation: http://10.0.0.1:8080/portal/a?b=1\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n")
        );
        let absolute = redirect_head(
            b"GET http://proxy.example/a?b HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n",
            "http://10.0.0.1",
            DATE,
        )
        .expect("answered");
        assert!(answer.starts_with("HTTP/1.1 307"));
        assert!(
            absolute.contains("location: http://10.0.0.1/a?b\r\n"),
            "{absolute}"
        );
    }

    #[test]
    fn anything_else_goes_to_hyper() {
        let base = "http://10.0.0.1";
        for received in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nConnection: close\r\n",
            b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n",
            b"POST / HTTP/1.1\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: close\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert_eq!(
                redirect_head(received, base, DATE),
                None,
                "{}",
                String::from_utf8_lossy(received)
            );
        }
    }

    #[tokio::test]
    async fn what_was_read_already_is_read_again_first() {
        let (mut near, far) = tokio::io::duplex(64);
        let mut prefixed = Prefixed::new(b"GET / ".to_vec(), far);
        tokio::io::AsyncWriteExt::write_all(&mut near, b"HTTP/1.1\r\n")
            .await
            .expect("write");
        drop(near);
        let mut all = Vec::new();
        prefixed.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"GET / HTTP/1.1\r\n");
    }
}
