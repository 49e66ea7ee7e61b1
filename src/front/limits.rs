//! What one client may take of a front end: connections per listener and per source address,
//! and, for SIP over UDP, requests per second per source (Kamailio's pike does the same).
//! Shared by every thread of a front end. An SBC or a NAT carries many users from one
//! address: sources in the trusted networks are exempt from the per-source limits.
//!
//! Sources are counted by address, IPv6 ones by their /64 (one host usually holds a whole
//! /64, so counting single addresses would give it 2^64 allowances). IPv4-mapped IPv6
//! addresses count as the IPv4 address they are.

use crate::cidr::canonical;
pub use crate::cidr::Cidr;
use crate::lock::lock;
use crate::telemetry;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a source is counted as: its address, or for IPv6 its /64.
fn source_key(address: IpAddr) -> IpAddr {
    match canonical(address) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// The `standby_limit_hits_total` labels of one kind of front end.
#[derive(Debug, Clone, Copy)]
pub struct LimitLabels {
    /// The listener's cap.
    pub total: &'static str,
    /// The per-source cap.
    pub per_source: &'static str,
}

/// Connection admission for one front end, shared by its threads.
#[derive(Debug)]
pub struct Admission {
    labels: LimitLabels,
    max_total: usize,
    max_per_source: usize,
    trusted: Vec<Cidr>,
    open: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    /// The counted source; `None` for a trusted one.
    source: Option<IpAddr>,
}

impl Admission {
    /// At most `max_total` connections, and `max_per_source` from one untrusted source.
    pub fn new(
        labels: LimitLabels,
        max_total: usize,
        max_per_source: usize,
        trusted: Vec<Cidr>,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            labels,
            max_total,
            max_per_source,
            trusted,
            open: AtomicUsize::new(0),
            per_source: Mutex::new(HashMap::new()),
        })
    }

    fn trusted(&self, address: IpAddr) -> bool {
        self.trusted.iter().any(|network| network.contains(address))
    }

    /// Admits a connection from `address`, or refuses it (counted) when either cap is full.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Option<Admitted> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            telemetry::limit_hit(self.labels.total);
            return None;
        }
        let source = (!self.trusted(address)).then(|| source_key(address));
        if let Some(source) = source {
            let mut counts = lock(&self.per_source);
            let count = counts.entry(source).or_insert(0);
            if *count >= self.max_per_source {
                drop(counts);
                self.open.fetch_sub(1, Ordering::AcqRel);
                telemetry::limit_hit(self.labels.per_source);
                return None;
            }
            *count += 1;
        }
        Some(Admitted {
            admission: self.clone(),
            source,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(source) = self.source {
            let mut counts = lock(&self.admission.per_source);
            if let Some(count) = counts.get_mut(&source) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(&source);
                }
            }
        }
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Requests per second per source for SIP over UDP: above the rate a source's requests are
/// dropped (counted, logged once per window per front end) until the next window, so the
/// front end cannot be used to reflect 302s at a spoofed address in volume.
#[derive(Debug)]
pub struct RateGuard {
    per_second: u32,
    trusted: Vec<Cidr>,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    counts: HashMap<IpAddr, u32>,
    logged: bool,
}

/// Sources remembered per window at most: a flood from spoofed addresses cannot grow the
/// table without bound; past it, new sources share one count.
const MAX_SOURCES: usize = 65_536;

impl RateGuard {
    /// At most `per_second` requests from one untrusted source per second (0: no limit),
    /// counting from `now`.
    pub fn new(per_second: u32, trusted: Vec<Cidr>, now: Instant) -> RateGuard {
        RateGuard {
            per_second,
            trusted,
            window: Mutex::new(Window {
                started: now,
                counts: HashMap::new(),
                logged: false,
            }),
        }
    }

    /// Whether a request from `address` may be answered now. A trusted source, or no limit,
    /// costs no clock read and no lock.
    pub fn allow(&self, address: IpAddr) -> bool {
        self.exempt(address) || self.allow_at(address, tokio::time::Instant::now().into_std())
    }

    fn exempt(&self, address: IpAddr) -> bool {
        self.per_second == 0 || self.trusted.iter().any(|n| n.contains(address))
    }

    /// Whether a request from `address` at `now` may be answered.
    pub fn allow_at(&self, address: IpAddr, now: Instant) -> bool {
        if self.exempt(address) {
            return true;
        }
        let mut window = lock(&self.window);
        if now.saturating_duration_since(window.started) >= Duration::from_secs(1) {
            window.started = now;
            window.counts.clear();
            window.logged = false;
        }
        // A source already counted this second keeps its own count; past the table's size
        // new sources share one, so a spoofed flood cannot grow the table.
        let source = source_key(address);
        let key = if window.counts.len() < MAX_SOURCES || window.counts.contains_key(&source) {
            source
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        let count = window.counts.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        if *count <= self.per_second {
            return true;
        }
        telemetry::limit_hit("sip_udp_rate_per_source");
        if !window.logged {
            window.logged = true;
            tracing::warn!(source = %address, limit = self.per_second, "SIP over UDP: a source is over its request rate; its requests are dropped for the rest of the second (logged once per second)");
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELS: LimitLabels = LimitLabels {
        total: "test_total",
        per_source: "test_per_source",
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn one_source_gets_its_share_and_others_still_get_in() {
        let admission = Admission::new(LABELS, 3, 2, Vec::new());
        let first = admission.admit(ip("192.0.2.1")).expect("1st");
        let second = admission.admit(ip("192.0.2.1")).expect("2nd");
        assert!(
            admission.admit(ip("192.0.2.1")).is_none(),
            "3rd from one source"
        );
        assert!(
            admission.admit(ip("::ffff:192.0.2.1")).is_none(),
            "v4-mapped is the same"
        );
        let other = admission.admit(ip("192.0.2.2")).expect("another source");
        drop(first);
        let again = admission
            .admit(ip("192.0.2.1"))
            .expect("a place was given back");
        assert!(
            admission.admit(ip("192.0.2.3")).is_none(),
            "the listener is full"
        );
        drop((second, other, again));
        assert_eq!(admission.open.load(Ordering::Relaxed), 0);
        assert!(lock(&admission.per_source).is_empty());
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        let admission = Admission::new(LABELS, 10, 1, Vec::new());
        let _one = admission.admit(ip("2001:db8:0:1::1")).expect("first");
        assert!(admission.admit(ip("2001:db8:0:1::2")).is_none());
        assert!(admission.admit(ip("2001:db8:0:2::1")).is_some());
    }

    #[test]
    fn trusted_networks_have_no_per_source_cap_but_the_listener_cap() {
        let admission = Admission::new(LABELS, 3, 1, vec!["10.0.0.0/8".parse().expect("cidr")]);
        let held: Vec<_> = (0..3)
            .map(|_| admission.admit(ip("10.0.0.5")).expect("trusted"))
            .collect();
        assert!(admission.admit(ip("10.0.0.5")).is_none(), "listener cap");
        drop(held);
    }

    #[test]
    fn the_rate_guard_drops_a_flooding_source_for_the_rest_of_the_second() {
        let start = tokio::time::Instant::now().into_std();
        let guard = RateGuard::new(3, vec!["10.0.0.0/8".parse().expect("cidr")], start);
        let flood = ip("192.0.2.1");
        let passed = (0..10).filter(|_| guard.allow_at(flood, start)).count();
        assert_eq!(passed, 3);
        assert!(guard.allow_at(ip("192.0.2.2"), start), "others unaffected");
        assert!(
            (0..10).all(|_| guard.allow_at(ip("10.1.1.1"), start)),
            "trusted"
        );
        assert!(
            guard.allow_at(flood, start + Duration::from_secs(1)),
            "next window"
        );
        assert!(
            RateGuard::new(0, Vec::new(), start).allow_at(flood, start),
            "0 is off"
        );
    }
}
