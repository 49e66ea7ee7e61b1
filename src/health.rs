//! The local service health check: a TCP connect or an HTTP GET that must answer 2xx, every
//! `interval`, with `rise` consecutive passes or `fall` consecutive failures before the state
//! flips. Only flips are reported, so the engine sees a decision, not every probe.

use crate::config::{HealthCheck, HealthConfig};
use crate::thresholds::Thresholds;
use crate::tls::client_connector as tls_connector;
use rustls::pki_types::ServerName;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

/// Runs one check; `Err` says why it failed. `tls` is needed for `https://` checks.
pub async fn check_once(
    check: &HealthCheck,
    timeout: Duration,
    tls: Option<&TlsConnector>,
) -> Result<(), String> {
    let attempt = async {
        match check {
            HealthCheck::Tcp(authority) => TcpStream::connect(authority)
                .await
                .map(drop)
                .map_err(|e| format!("connect {authority}: {e}")),
            HealthCheck::Http {
                authority,
                path,
                tls: false,
            } => {
                let stream = connect(authority).await?;
                http_get(stream, authority, path).await
            }
            HealthCheck::Http {
                authority,
                path,
                tls: true,
            } => {
                let connector = tls.ok_or("https check without a TLS client")?;
                let host = authority
                    .rsplit_once(':')
                    .map_or(authority.as_str(), |(host, _)| host)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
                let stream = connect(authority).await?;
                let stream = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS with {authority}: {e}"))?;
                crate::tls::count_handshake("health", stream.get_ref().1);
                http_get(stream, authority, path).await
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
        })
}

async fn connect(authority: &str) -> Result<TcpStream, String> {
    TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))
}

/// A minimal HTTP/1.1 GET: only the status line matters.
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    authority: &str,
    path: &str,
) -> Result<(), String> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: standby-proxy\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 64];
    let mut filled = 0;
    // Read until the status code is in (12 bytes: "HTTP/1.1 200").
    while filled < 12 {
        let read = stream
            .read(&mut head[filled..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if read == 0 {
            return Err("connection closed before a status line".to_owned());
        }
        filled += read;
    }
    let line = String::from_utf8_lossy(&head[..filled]);
    let code = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or_default()
            )
        })?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("answered {code}"))
    }
}

/// Checks forever, sending each flip of the state, until the receiver is gone.
pub async fn run(config: HealthConfig, flips: mpsc::Sender<bool>) {
    let tls = match &config.check {
        HealthCheck::Http { tls: true, .. } => match tls_connector(config.ca.as_deref()) {
            Ok(connector) => Some(connector),
            Err(reason) => {
                // Every check fails, so the node reports the service as failed rather than
                // pretending it is healthy.
                warn!(%reason, "https health check has no usable CA");
                None
            }
        },
        _ => None,
    };
    let mut thresholds = Thresholds::new(config.rise, config.fall);
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = check_once(&config.check, config.timeout, tls.as_ref()).await;
        if let Some(healthy) = thresholds.record(result.is_ok()) {
            match &result {
                Ok(()) => info!("service health check passes"),
                Err(reason) => warn!(%reason, "service health check fails"),
            }
            if flips.send(healthy).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::load_certs;
    use std::path::Path;
    use std::sync::Arc;

    #[tokio::test]
    async fn tcp_check_passes_on_a_listener_and_fails_without() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let check = HealthCheck::Tcp(addr.clone());
        assert!(check_once(&check, Duration::from_secs(2), None)
            .await
            .is_ok());
        drop(listener);
        assert!(check_once(&check, Duration::from_secs(2), None)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn http_check_wants_2xx() {
        for (answer, healthy) in [
            ("HTTP/1.1 204 No Content\r\n\r\n", true),
            ("HTTP/1.1 503 Busy\r\n\r\n", false),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let authority = listener.local_addr().expect("addr").to_string();
            tokio::spawn(async move {
                if let Ok((mut socket, _)) = listener.accept().await {
                    let mut request = [0u8; 512];
                    let _ = socket.read(&mut request).await;
                    let _ = socket.write_all(answer.as_bytes()).await;
                }
            });
            let check = HealthCheck::Http {
                authority,
                path: "/health".into(),
                tls: false,
            };
            let result = check_once(&check, Duration::from_secs(2), None).await;
            assert_eq!(result.is_ok(), healthy, "{answer}");
        }
    }

    /// An https check against a server with the pair's front certificate: passes when the
    /// CA is trusted, fails when it is not (the system bundle does not know the test CA).
    #[tokio::test]
    async fn https_check_verifies_the_server_certificate() {
        let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
        let chain = load_certs(&certs.join("front.pem")).expect("front cert");
        let key = crate::tls::load_key(&certs.join("front.key")).expect("front key");
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(socket).await {
                        let mut request = [0u8; 512];
                        let _ = tls.read(&mut request).await;
                        let _ = tls.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        let check = HealthCheck::Http {
            authority: format!("localhost:{port}"),
            path: "/".into(),
            tls: true,
        };
        let trusted = tls_connector(Some(&certs.join("ca.pem"))).expect("connector");
        check_once(&check, Duration::from_secs(2), Some(&trusted))
            .await
            .expect("trusted CA passes");
        let untrusted = tls_connector(Some(&certs.join("a.pem"))).expect("connector");
        let error = check_once(&check, Duration::from_secs(2), Some(&untrusted))
            .await
            .expect_err("an unknown issuer fails");
        assert!(error.contains("TLS"), "{error}");
    }
}
