//! The local service health check: a TCP connect or an HTTP GET that must answer 2xx, every
//! `interval`, with `rise` consecutive passes or `fall` consecutive failures before the state
//! flips. Only flips are reported, so the engine sees a decision, not every probe.

use crate::config::{HealthCheck, HealthConfig};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Runs one check; `Err` says why it failed.
pub async fn check_once(check: &HealthCheck, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        match check {
            HealthCheck::Tcp(authority) => TcpStream::connect(authority)
                .await
                .map(drop)
                .map_err(|e| format!("connect {authority}: {e}")),
            HealthCheck::Http { authority, path } => http_get(authority, path).await,
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

/// A minimal HTTP/1.1 GET: only the status line matters.
async fn http_get(authority: &str, path: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
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

/// Counts consecutive results and says when the state flips.
#[derive(Debug, Clone)]
pub struct Thresholds {
    rise: u32,
    fall: u32,
    state: Option<bool>,
    streak: u32,
    streak_of: bool,
}

impl Thresholds {
    /// Needs `rise` passes to become healthy and `fall` failures to become failed. The first
    /// state needs its threshold too.
    pub fn new(rise: u32, fall: u32) -> Self {
        Thresholds {
            rise,
            fall,
            state: None,
            streak: 0,
            streak_of: false,
        }
    }

    /// Records one result; returns the new state if it flipped.
    pub fn record(&mut self, passed: bool) -> Option<bool> {
        if self.streak_of == passed {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.streak_of = passed;
            self.streak = 1;
        }
        let needed = if passed { self.rise } else { self.fall };
        if self.streak >= needed && self.state != Some(passed) {
            self.state = Some(passed);
            return Some(passed);
        }
        None
    }
}

/// Checks forever, sending each flip of the state, until the receiver is gone.
pub async fn run(config: HealthConfig, flips: mpsc::Sender<bool>) {
    let mut thresholds = Thresholds::new(config.rise, config.fall);
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = check_once(&config.check, config.timeout).await;
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

    #[test]
    fn state_flips_only_after_its_threshold() {
        let mut t = Thresholds::new(2, 3);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a pass resets the failure streak");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
    }

    #[tokio::test]
    async fn tcp_check_passes_on_a_listener_and_fails_without() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let check = HealthCheck::Tcp(addr.clone());
        assert!(check_once(&check, Duration::from_secs(2)).await.is_ok());
        drop(listener);
        assert!(check_once(&check, Duration::from_secs(2)).await.is_err());
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
            };
            assert_eq!(
                check_once(&check, Duration::from_secs(2)).await.is_ok(),
                healthy,
                "{answer}"
            );
        }
    }
}
