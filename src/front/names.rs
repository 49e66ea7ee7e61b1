//! Host names in the active node's targets, resolved on the control plane with hickory (as
//! the registrar prober does; it caches every answer by its TTL), so no front-end thread
//! ever waits on DNS. A front end asks for a name it has no address for and goes on; the
//! address is there for the next message or within the request's connect timeout. Known
//! names are looked up again every [`REFRESH`] (answered from hickory's cache until their
//! TTL runs out).
//!
//! hickory reads `/etc/hosts` and `/etc/resolv.conf` itself: names that only NSS knows
//! (LDAP, mDNS, systemd-resolved's synthesized names) are not found.

use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How often known names are looked up again.
const REFRESH: Duration = Duration::from_secs(10);
/// Names waiting to be resolved at most; more requests are dropped (and asked again).
const QUEUE: usize = 64;
/// Names remembered at most: targets are a handful; this bounds a misconfiguration.
const MAX_NAMES: usize = 256;

/// Addresses of host names, shared by every front end and thread.
#[derive(Debug)]
pub struct Names {
    resolved: arc_swap::ArcSwap<HashMap<String, IpAddr>>,
    wanted: mpsc::Sender<String>,
    /// Names asked for and not answered yet: each is queued once, however often it is asked.
    pending: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Names {
    /// Starts the resolving task on the current (control-plane) runtime.
    pub fn start(resolver: TokioResolver) -> Arc<Names> {
        let (wanted, requests) = mpsc::channel(QUEUE);
        let names = Arc::new(Names {
            resolved: arc_swap::ArcSwap::from_pointee(HashMap::new()),
            wanted,
            pending: std::sync::Mutex::new(std::collections::HashSet::new()),
        });
        tokio::spawn(resolve_task(resolver, requests, Arc::downgrade(&names)));
        names
    }

    /// The address of `name` if known; otherwise asks for it and returns `None` at once.
    pub fn lookup(&self, name: &str) -> Option<IpAddr> {
        if let Some(address) = self.resolved.load().get(name) {
            return Some(*address);
        }
        let mut pending = self.pending();
        if !pending.contains(name) && self.wanted.try_send(name.to_owned()).is_ok() {
            pending.insert(name.to_owned());
        }
        None
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The address of `name`, waiting for it up to `patience` (for a connection about to be
    /// made, which waits its connect timeout anyway).
    pub async fn wait_for(&self, name: &str, patience: Duration) -> Option<IpAddr> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(address) = self.lookup(name) {
                return Some(address);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn resolve_task(
    resolver: TokioResolver,
    mut requests: mpsc::Receiver<String>,
    names: std::sync::Weak<Names>,
) {
    let mut refresh = tokio::time::interval(REFRESH);
    loop {
        let wanted: Vec<String> = tokio::select! {
            Some(name) = requests.recv() => vec![name],
            _ = refresh.tick() => match names.upgrade() {
                Some(names) => names.resolved.load().keys().cloned().collect(),
                None => return,
            },
            else => return,
        };
        for name in wanted {
            let address = match resolver.lookup_ip(name.as_str()).await {
                Ok(lookup) => lookup.iter().next(),
                Err(error) => {
                    warn!(%name, %error, "cannot resolve a target's host name");
                    None
                }
            };
            let Some(names) = names.upgrade() else {
                return;
            };
            names.pending().remove(&name);
            // A failed lookup keeps the last address: the name's service has not moved
            // because DNS is briefly away.
            let Some(address) = address else {
                continue;
            };
            let current = names.resolved.load();
            if current.get(&name) == Some(&address)
                || (current.len() >= MAX_NAMES && !current.contains_key(&name))
            {
                continue;
            }
            debug!(%name, %address, "target host name resolved");
            let mut next = HashMap::clone(&current);
            next.insert(name, address);
            names.resolved.store(Arc::new(next));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_in_the_hosts_file_is_resolved_without_blocking_the_asker() {
        let resolver = crate::sip::resolve::resolver(None).expect("system resolver");
        let names = Names::start(resolver);
        // The first ask returns at once, without an address; asking again queues nothing more.
        assert_eq!(names.lookup("localhost"), None);
        for _ in 0..1000 {
            let _ = names.lookup("localhost");
        }
        assert!(names.pending().len() <= 1);
        let address = names
            .wait_for("localhost", Duration::from_secs(5))
            .await
            .expect("localhost is in /etc/hosts");
        assert!(address.is_loopback(), "{address}");
        assert_eq!(names.lookup("localhost"), Some(address));
        assert_eq!(
            names
                .wait_for("no-such-host.invalid", Duration::from_millis(300))
                .await,
            None
        );
    }
}
