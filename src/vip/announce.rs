//! Telling neighbours that a floating address moved: a gratuitous ARP for IPv4, an
//! unsolicited neighbour advertisement for IPv6. The frames are built by pure functions
//! (tested below); the senders only put them on the wire.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An interface's Ethernet address.
pub type Mac = [u8; 6];

const BROADCAST: Mac = [0xff; 6];
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;

/// A gratuitous ARP as a *request* whose sender and target address are both `address`:
/// Linux neighbours update an existing entry from a request at once, where a reply would
/// wait out their `locktime`.
pub fn gratuitous_arp(mac: Mac, address: Ipv4Addr) -> [u8; 42] {
    let mut frame = [0u8; 42];
    frame[0..6].copy_from_slice(&BROADCAST);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet hardware, IPv4 protocol, their lengths, and "request".
    frame[14..16].copy_from_slice(&1u16.to_be_bytes());
    frame[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    frame[18] = 6;
    frame[19] = 4;
    frame[20..22].copy_from_slice(&1u16.to_be_bytes());
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&address.octets());
    // Target hardware address unknown (zero), target address the same as the sender's.
    frame[38..42].copy_from_slice(&address.octets());
    frame
}

/// An unsolicited neighbour advertisement (RFC 4861 §7.2.6) for `address`, with the
/// override flag and the target link-layer address option, as an ICMPv6 message (the
/// kernel fills in the checksum on a raw ICMPv6 socket).
pub fn unsolicited_advertisement(mac: Mac, address: Ipv6Addr) -> [u8; 32] {
    let mut message = [0u8; 32];
    message[0] = 136; // neighbour advertisement
    message[4] = 0x20; // override: replace what neighbours have cached
    message[8..24].copy_from_slice(&address.octets());
    message[24] = 2; // target link-layer address option
    message[25] = 1; // its length in units of 8 bytes
    message[26..32].copy_from_slice(&mac);
    message
}

/// Sends `frame` (Ethernet header included) out of interface `index`.
pub fn send_ethernet(index: u32, frame: &[u8]) -> io::Result<()> {
    let protocol = ETH_P_ARP.to_be();
    // SAFETY: plain system call; the descriptor is owned right after.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all zero is a valid value.
    let mut target: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    target.sll_family = libc::AF_PACKET as u16;
    target.sll_protocol = protocol;
    target.sll_ifindex = i32::try_from(index).map_err(io::Error::other)?;
    target.sll_halen = 6;
    target.sll_addr[..6].copy_from_slice(&BROADCAST);
    let length = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the buffer and the address live across the call, with their true lengths.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::addr_of!(target).cast(),
            length,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `message` from `source` to all nodes on the link of interface `index`, with the
/// hop limit 255 that neighbour discovery requires.
pub fn send_to_all_nodes(index: u32, source: Ipv6Addr, message: &[u8]) -> io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    socket.set_multicast_if_v6(index)?;
    socket.bind(&SocketAddrV6::new(source, 0, 0, 0).into())?;
    let all_nodes = SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index);
    socket.send_to(message, &all_nodes.into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0, 0, 0, 0, 0x0a];

    #[test]
    fn the_gratuitous_arp_is_a_broadcast_request_naming_the_address_twice() {
        let frame = gratuitous_arp(MAC, Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(&frame[0..6], &BROADCAST);
        assert_eq!(&frame[6..12], &MAC);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[20..22], &[0, 1], "a request");
        assert_eq!(&frame[22..28], &MAC, "sender hardware address");
        assert_eq!(&frame[28..32], &[192, 0, 2, 10], "sender address");
        assert_eq!(&frame[32..38], &[0; 6]);
        assert_eq!(&frame[38..42], &[192, 0, 2, 10], "target address");
    }

    #[test]
    fn the_advertisement_overrides_and_carries_the_link_address() {
        let address: Ipv6Addr = "2001:db8::10".parse().expect("ip");
        let message = unsolicited_advertisement(MAC, address);
        assert_eq!(message[0], 136);
        assert_eq!(message[4], 0x20, "override, not solicited, not a router");
        assert_eq!(&message[8..24], &address.octets());
        assert_eq!(&message[24..26], &[2, 1]);
        assert_eq!(&message[26..32], &MAC);
    }
}
