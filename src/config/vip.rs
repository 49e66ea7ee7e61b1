//! `[[vip]]`: floating service addresses the active node holds.

use super::value::duration;
use super::ConfigError;
use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;

/// One floating address: added on `interface` while this node is active, removed before
/// the peer may take over, and announced (gratuitous ARP, unsolicited neighbour
/// advertisements) so neighbours move to this node at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipConfig {
    /// The address.
    pub address: IpAddr,
    /// Its prefix length on the interface (`/24`, `/64`).
    pub prefix_len: u8,
    /// The interface that holds it.
    pub interface: String,
    /// How many announcements follow taking it (and a split heal won).
    pub announcements: u32,
    /// The pause between two announcements.
    pub announce_every: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    address: String,
    interface: String,
    #[serde(default = "default_announcements")]
    announcements: u32,
    #[serde(default = "default_announce_every", deserialize_with = "duration")]
    announce_every: Duration,
}

fn default_announcements() -> u32 {
    3
}

fn default_announce_every() -> Duration {
    Duration::from_millis(100)
}

/// The longest interface name Linux takes (IFNAMSIZ less the terminating zero).
const MAX_INTERFACE_NAME: usize = 15;

pub(super) fn validate(raw: Vec<RawVip>, errors: &mut Vec<ConfigError>) -> Vec<VipConfig> {
    let mut vips: Vec<VipConfig> = Vec::new();
    for (index, raw) in raw.into_iter().enumerate() {
        let key = |name: &str| format!("vip[{index}].{name}");
        let Some((address, prefix_len)) = parse_prefix(&raw.address) else {
            errors.push(ConfigError::new(
                key("address"),
                format!(
                    "{:?} is not a floating address with its prefix: write \"192.0.2.10/24\" or \"2001:db8::10/64\" (prefix from 1; no loopback, multicast, link-local IPv6 or IPv4-mapped address)",
                    raw.address
                ),
            ));
            continue;
        };
        let plain = raw
            .interface
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/');
        if raw.interface.is_empty() || raw.interface.len() > MAX_INTERFACE_NAME || !plain {
            errors.push(ConfigError::new(
                key("interface"),
                format!(
                    "{:?} is not an interface name (1 to 15 characters, no '/' or spaces)",
                    raw.interface
                ),
            ));
        }
        if !(1..=100).contains(&raw.announcements) {
            errors.push(ConfigError::new(key("announcements"), "must be 1 to 100"));
        }
        if raw.announce_every < Duration::from_millis(10)
            || raw.announce_every > Duration::from_secs(10)
        {
            errors.push(ConfigError::new(
                key("announce_every"),
                "must be 10ms to 10s",
            ));
        }
        if vips.iter().any(|vip| vip.address == address) {
            errors.push(ConfigError::new(
                key("address"),
                format!("{address} is listed twice"),
            ));
        }
        vips.push(VipConfig {
            address,
            prefix_len,
            interface: raw.interface,
            announcements: raw.announcements,
            announce_every: raw.announce_every,
        });
    }
    vips
}

/// `address/prefix`, the prefix from 1 to the family's width (a /0 would claim every
/// address on the link); a unicast address clients can reach by itself: not link-local IPv6
/// (it needs a zone), not an IPv4 address written as IPv6, not the IPv4 broadcast.
fn parse_prefix(text: &str) -> Option<(IpAddr, u8)> {
    let (address, prefix) = text.trim().split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let width = if address.is_ipv4() { 32 } else { 128 };
    let special = match address {
        IpAddr::V4(v4) => v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unicast_link_local() || v6.to_ipv4_mapped().is_some(),
    };
    let usable =
        !(address.is_unspecified() || address.is_multicast() || address.is_loopback() || special);
    ((1..=width).contains(&prefix) && usable).then_some((address, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_a_prefix_within_their_family() {
        assert_eq!(
            parse_prefix("192.0.2.10/24"),
            Some(("192.0.2.10".parse().expect("ip"), 24))
        );
        assert_eq!(
            parse_prefix("2001:db8::10/64"),
            Some(("2001:db8::10".parse().expect("ip"), 64))
        );
        for bad in [
            "192.0.2.10",
            "192.0.2.10/33",
            "2001:db8::1/129",
            "0.0.0.0/0",
            "192.0.2.10/0",
            "2001:db8::1/0",
            "fe80::10/64",
            "::ffff:192.0.2.10/120",
            "255.255.255.255/32",
            "224.0.0.1/4",
            "127.0.0.5/8",
            "x/24",
        ] {
            assert_eq!(parse_prefix(bad), None, "{bad}");
        }
    }
}
