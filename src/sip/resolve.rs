//! RFC 3263: which transport, address and port to use for a SIP URI.
//!
//! - an IP literal needs no DNS;
//! - an explicit port means A/AAAA only;
//! - otherwise NAPTR (services `SIP+D2U`, `SIP+D2T`, `SIPS+D2T`, in order and preference),
//!   then SRV (`_sip._udp`, `_sip._tcp`, `_sips._tcp` when there is no NAPTR), ordered by
//!   priority and, within a priority, randomly by weight (RFC 2782); each SRV target's
//!   addresses in turn; last, A/AAAA of the host on the default port.
//!
//! The result is every candidate in the order to try them, so the prober can move on to the
//! next when one fails. The resolver caches by TTL, so resolving before every probe
//! re-resolves exactly when records expire.

use super::uri::{Host, SipUri};
use super::{TokenSource, Transport};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use std::net::{IpAddr, SocketAddr};

/// One place to send a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// How.
    pub transport: Transport,
    /// Where.
    pub addr: SocketAddr,
    /// The name to verify a TLS certificate against (the URI's host).
    pub server_name: String,
}

/// Why a URI could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The resolver could not be set up (e.g. no usable /etc/resolv.conf).
    #[error("DNS resolver: {0}")]
    Setup(String),
    /// No NAPTR, SRV or address record gave a usable target.
    #[error("{name}: no usable NAPTR, SRV or A/AAAA records ({detail})")]
    NotFound {
        /// The name.
        name: String,
        /// The last lookup error, or why the records found were unusable.
        detail: String,
    },
}

/// A resolver using `nameserver` (UDP and TCP on its port), or the system's configuration.
pub fn resolver(nameserver: Option<SocketAddr>) -> Result<TokioResolver, ResolveError> {
    let setup = |e: &dyn std::fmt::Display| ResolveError::Setup(e.to_string());
    match nameserver {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                TokioRuntimeProvider::default(),
            )
            .build()
            .map_err(|e| setup(&e))
        }
        None => Resolver::builder_tokio()
            .map_err(|e| setup(&e))?
            .build()
            .map_err(|e| setup(&e)),
    }
}

/// The transports a URI allows, in RFC 3263's default preference.
fn allowed(uri: &SipUri) -> Vec<Transport> {
    match (uri.transport, uri.secure) {
        (Some(transport), _) => vec![transport],
        (None, true) => vec![Transport::Tls],
        (None, false) => vec![Transport::Udp, Transport::Tcp, Transport::Tls],
    }
}

/// The transport to use where DNS does not say (RFC 3263 §4.1).
fn default_transport(uri: &SipUri) -> Transport {
    uri.transport.unwrap_or(if uri.secure {
        Transport::Tls
    } else {
        Transport::Udp
    })
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

/// Every candidate for `uri`, in the order to try them.
pub async fn resolve(
    uri: &SipUri,
    resolver: &TokioResolver,
    tokens: &mut TokenSource,
) -> Result<Vec<Candidate>, ResolveError> {
    let domain = match &uri.host {
        Host::Ip(ip) => {
            let transport = default_transport(uri);
            let port = uri.port.unwrap_or(transport.default_port());
            return Ok(vec![Candidate {
                transport,
                addr: SocketAddr::new(*ip, port),
                server_name: ip.to_string(),
            }]);
        }
        Host::Domain(domain) => domain.clone(),
    };
    let server_name = domain.clone();
    let mut last_error = String::from("no records");

    if let Some(port) = uri.port {
        let transport = default_transport(uri);
        let addrs = addresses(resolver, &domain, &mut last_error).await;
        return found(
            &domain,
            last_error,
            addrs.into_iter().map(|ip| Candidate {
                transport,
                addr: SocketAddr::new(ip, port),
                server_name: server_name.clone(),
            }),
        );
    }

    let allowed = allowed(uri);
    // NAPTR: which SRV names to look at, for which transport.
    let mut srv_names: Vec<(Transport, String)> = Vec::new();
    if uri.transport.is_none() {
        match resolver.lookup(fqdn(&domain), RecordType::NAPTR).await {
            Ok(lookup) => {
                let mut records: Vec<_> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::NAPTR(naptr) => Some(naptr.clone()),
                        _ => None,
                    })
                    .collect();
                records.sort_by_key(|naptr| (naptr.order, naptr.preference));
                for naptr in records {
                    if !naptr.flags.eq_ignore_ascii_case(b"s") {
                        continue;
                    }
                    let transport = match naptr.services.to_ascii_uppercase().as_slice() {
                        b"SIP+D2U" if !uri.secure => Transport::Udp,
                        b"SIP+D2T" if !uri.secure => Transport::Tcp,
                        b"SIPS+D2T" => Transport::Tls,
                        _ => continue,
                    };
                    if allowed.contains(&transport) {
                        srv_names.push((transport, naptr.replacement.to_ascii()));
                    }
                }
            }
            Err(error) => last_error = format!("NAPTR: {error}"),
        }
    }
    if srv_names.is_empty() {
        for transport in &allowed {
            let prefix = match transport {
                Transport::Udp => "_sip._udp",
                Transport::Tcp => "_sip._tcp",
                Transport::Tls => "_sips._tcp",
            };
            srv_names.push((*transport, format!("{prefix}.{domain}")));
        }
    }

    let mut candidates = Vec::new();
    for (transport, name) in srv_names {
        let mut targets = match resolver.lookup(fqdn(&name), RecordType::SRV).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::SRV(srv) => {
                        Some((srv.priority, srv.weight, srv.port, srv.target.to_ascii()))
                    }
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Err(error) => {
                last_error = format!("SRV {name}: {error}");
                continue;
            }
        };
        order_srv(&mut targets, tokens);
        for (_, _, port, target) in targets {
            // "." as target means: the service is decidedly not available here.
            if target == "." {
                continue;
            }
            for ip in addresses(resolver, &target, &mut last_error).await {
                candidates.push(Candidate {
                    transport,
                    addr: SocketAddr::new(ip, port),
                    server_name: server_name.clone(),
                });
            }
        }
        if !candidates.is_empty() {
            // Once a NAPTR/SRV-chosen service has targets, those are the candidates; other
            // transports only serve when this one has none.
            return Ok(candidates);
        }
    }

    let transport = default_transport(uri);
    let addrs = addresses(resolver, &domain, &mut last_error).await;
    found(
        &domain,
        last_error,
        addrs.into_iter().map(|ip| Candidate {
            transport,
            addr: SocketAddr::new(ip, transport.default_port()),
            server_name: server_name.clone(),
        }),
    )
}

fn found(
    name: &str,
    last_error: String,
    candidates: impl Iterator<Item = Candidate>,
) -> Result<Vec<Candidate>, ResolveError> {
    let candidates: Vec<Candidate> = candidates.collect();
    if candidates.is_empty() {
        Err(ResolveError::NotFound {
            name: name.to_owned(),
            detail: last_error,
        })
    } else {
        Ok(candidates)
    }
}

async fn addresses(resolver: &TokioResolver, name: &str, last_error: &mut String) -> Vec<IpAddr> {
    match resolver.lookup_ip(fqdn(name)).await {
        Ok(lookup) => lookup.iter().collect(),
        Err(error) => {
            *last_error = format!("A/AAAA {name}: {error}");
            Vec::new()
        }
    }
}

/// RFC 2782 order: by priority; within one priority, a weighted random permutation.
pub fn order_srv(targets: &mut Vec<(u16, u16, u16, String)>, tokens: &mut TokenSource) {
    targets.sort_by_key(|t| t.0);
    let mut ordered = Vec::with_capacity(targets.len());
    let mut rest: Vec<_> = std::mem::take(targets);
    while !rest.is_empty() {
        let priority = rest[0].0;
        let mut group: Vec<_> = Vec::new();
        rest.retain(|t| {
            if t.0 == priority {
                group.push(t.clone());
                false
            } else {
                true
            }
        });
        // Zero weights first, as RFC 2782 asks, so they get a small chance.
        group.sort_by_key(|t| t.1 != 0);
        while !group.is_empty() {
            let total: u64 = group.iter().map(|t| u64::from(t.1)).sum();
            let pick = if total == 0 {
                0
            } else {
                let mut roll = tokens.next_u64() % (total + 1);
                group
                    .iter()
                    .position(|t| {
                        let weight = u64::from(t.1);
                        if roll <= weight {
                            true
                        } else {
                            roll -= weight;
                            false
                        }
                    })
                    .unwrap_or(group.len() - 1)
            };
            ordered.push(group.remove(pick));
        }
    }
    *targets = ordered;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_order_is_by_priority_then_weighted() {
        let mut tokens = TokenSource::new();
        let mut first_heavy = 0;
        for _ in 0..1000 {
            let mut targets = vec![
                (20, 0, 5060, "backup".to_owned()),
                (10, 90, 5060, "heavy".to_owned()),
                (10, 10, 5060, "light".to_owned()),
            ];
            order_srv(&mut targets, &mut tokens);
            assert_eq!(targets[2].3, "backup", "priority 20 comes last");
            if targets[0].3 == "heavy" {
                first_heavy += 1;
            }
        }
        // 90:10 weights: heavy first in about 90% of orders.
        assert!((820..=970).contains(&first_heavy), "{first_heavy}");
    }

    #[tokio::test]
    async fn ip_literals_need_no_dns() {
        // A nameserver that does not exist: any DNS query would fail.
        let resolver = resolver(Some("127.0.0.1:9".parse().expect("addr"))).expect("resolver");
        let mut tokens = TokenSource::new();
        for (uri, transport, port) in [
            ("sip:127.0.0.1", Transport::Udp, 5060),
            ("sips:127.0.0.1", Transport::Tls, 5061),
            ("sip:127.0.0.1:5070;transport=tcp", Transport::Tcp, 5070),
        ] {
            let uri: SipUri = uri.parse().expect("uri");
            let found = resolve(&uri, &resolver, &mut tokens)
                .await
                .expect("resolves");
            assert_eq!(found.len(), 1);
            assert_eq!(found[0].transport, transport, "{uri}");
            assert_eq!(found[0].addr.port(), port, "{uri}");
        }
    }
}
