//! SIP and SIPS URIs as far as routing needs them: scheme, host, port, `transport=`.

use super::Transport;
use std::fmt;
use std::net::IpAddr;

/// The host part of a URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IPv4 or IPv6 literal: no DNS.
    Ip(IpAddr),
    /// A domain name.
    Domain(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Domain(name) => f.write_str(name),
        }
    }
}

/// A parsed `sip:` or `sips:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// `sips:` requires TLS.
    pub secure: bool,
    /// The user part, if any.
    pub user: Option<String>,
    /// The host.
    pub host: Host,
    /// An explicit port.
    pub port: Option<u16>,
    /// The `transport=` parameter.
    pub transport: Option<Transport>,
}

/// Why a URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{uri:?} is not a usable SIP URI: {reason}")]
pub struct UriError {
    /// The text.
    pub uri: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl std::str::FromStr for SipUri {
    type Err = UriError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason| UriError {
            uri: text.to_owned(),
            reason,
        };
        let (secure, rest) = if let Some(rest) = strip_prefix_ci(text, "sips:") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ci(text, "sip:") {
            (false, rest)
        } else {
            return Err(error("it must start with sip: or sips:"));
        };
        // Headers (`?`) play no part in routing.
        let rest = rest.split('?').next().unwrap_or_default();
        let (hostport, params) = match rest.find(';') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, ""),
        };
        let (user, hostport) = match hostport.rfind('@') {
            Some(at) => (Some(hostport[..at].to_owned()), &hostport[at + 1..]),
            None => (None, hostport),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| error("unclosed [ in an IPv6 host"))?;
            let ip: IpAddr = v6[..end].parse().map_err(|_| error("bad IPv6 address"))?;
            let port = match &v6[end + 1..] {
                "" => None,
                p => Some(
                    parse_port(p.strip_prefix(':').ok_or_else(|| error("junk after ]"))?)
                        .ok_or_else(|| error("bad port"))?,
                ),
            };
            (Host::Ip(ip), port)
        } else {
            let (host, port) = match hostport.rsplit_once(':') {
                Some((host, port)) => (
                    host,
                    Some(parse_port(port).ok_or_else(|| error("bad port"))?),
                ),
                None => (hostport, None),
            };
            if host.is_empty() {
                return Err(error("no host"));
            }
            let host = match host.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_)
                    if host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')) =>
                {
                    Host::Domain(host.to_ascii_lowercase())
                }
                Err(_) => return Err(error("bad host name")),
            };
            (host, port)
        };
        let mut transport = None;
        for param in params.split(';') {
            if let Some(value) = strip_prefix_ci(param, "transport=") {
                transport = Some(
                    Transport::from_param(value)
                        .ok_or_else(|| error("transport must be udp, tcp or tls"))?,
                );
            }
        }
        if secure && matches!(transport, Some(Transport::Udp)) {
            return Err(error("sips: cannot use transport=udp"));
        }
        Ok(SipUri {
            secure,
            user,
            host,
            port,
            transport,
        })
    }
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.get(..prefix.len())
        .filter(|head| head.eq_ignore_ascii_case(prefix))
        .map(|_| &text[prefix.len()..])
}

fn parse_port(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|&p| p != 0)
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        if let Some(transport) = self.transport {
            write!(
                f,
                ";transport={}",
                transport.via_name().to_ascii_lowercase()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> SipUri {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_the_forms_routing_needs() {
        let u = uri("sip:registrar.example.net");
        assert_eq!((u.secure, u.port, u.transport), (false, None, None));
        assert_eq!(u.host, Host::Domain("registrar.example.net".into()));
        let u = uri("SIPS:alice@Example.NET:5081;transport=TCP;lr");
        assert!(u.secure);
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.host, Host::Domain("example.net".into()));
        assert_eq!((u.port, u.transport), (Some(5081), Some(Transport::Tcp)));
        let u = uri("sip:[2001:db8::1]:5070");
        assert_eq!(u.host, Host::Ip("2001:db8::1".parse().expect("ip")));
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.to_string(), "sip:[2001:db8::1]:5070");
        assert_eq!(
            uri("sip:127.0.0.1;transport=udp").host,
            Host::Ip("127.0.0.1".parse().expect("ip"))
        );
    }

    #[test]
    fn refuses_what_cannot_be_routed() {
        for bad in [
            "tel:+123",
            "sip:",
            "sip:host:0",
            "sip:host:99999",
            "sip:[::1",
            "sip:ho st",
            "sips:h;transport=udp",
            "sip:h;transport=sctp",
        ] {
            assert!(bad.parse::<SipUri>().is_err(), "{bad}");
        }
    }
}
