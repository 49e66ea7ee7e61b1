//! systemd readiness and status (`Type=notify`), sent straight to `$NOTIFY_SOCKET`: a unix
//! datagram socket, in the abstract namespace when the path starts with `@`. Without the
//! variable (not under systemd) every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;
use tracing::warn;

/// A connection to systemd's notify socket, if there is one.
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; inert when it is unset or unusable (the latter is logged).
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { socket: None };
        };
        let path = path.to_string_lossy().into_owned();
        let address = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None => SocketAddr::from_pathname(&path),
        };
        match (UnixDatagram::unbound(), address) {
            (Ok(socket), Ok(address)) => Notifier {
                socket: Some((socket, address)),
            },
            (Err(error), _) | (_, Err(error)) => {
                warn!(%path, %error, "cannot use NOTIFY_SOCKET; systemd will not hear from this node");
                Notifier { socket: None }
            }
        }
    }

    fn send(&self, message: &str) {
        if let Some((socket, address)) = &self.socket {
            if let Err(error) = socket.send_to_addr(message.as_bytes(), address) {
                warn!(%error, message, "systemd notify failed");
            }
        }
    }

    /// The node is up: its listeners are bound.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A one-line status for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// Alive (for `WatchdogSec=`).
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// How often to call [`Notifier::watchdog`]: half of `$WATCHDOG_USEC`, if systemd set one
    /// for this process.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        (for_us && usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}
