//! Floating service addresses (`[[vip]]`): the active node holds them, and lets go of them
//! before its peer may take over.
//!
//! Addresses are added and removed through netlink (rtnetlink), announced with gratuitous
//! ARP (IPv4) and unsolicited neighbour advertisements (IPv6, the address added with
//! `IFA_F_NODAD` so it is usable at once instead of tentative for about a second). The
//! driver calls [`Vips::take`] when the node becomes active (the addresses are then checked
//! every few seconds and added again if they went missing), [`Vips::release`] when it stops
//! being active (it waits for netlink's answer, at most a heartbeat interval, before any
//! heartbeat tells the peer), and [`Vips::announce`] when the peer comes back into contact
//! (after a split heal the winner announces again). A node killed with -9 or frozen leaves its addresses behind, as
//! keepalived does: they are removed at start-up and by `standby-proxy release-vips`
//! (the systemd unit's `ExecStopPost=`).

pub mod announce;

use crate::config::VipConfig;
use crate::lock::lock;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

/// How often an active node checks that it still holds its addresses: an operator's
/// `ip addr del`, or a link that went down and up (Linux drops IPv6 addresses then), is
/// repaired, and a failed add retried, within this.
const REASSERT_EVERY: Duration = Duration::from_secs(2);

/// How long one netlink request may take: the kernel answers in microseconds, so a request
/// without an answer by then failed (and is tried again at the next round).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Linux capability numbers (`linux/capability.h`).
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

/// Why floating addresses cannot be managed.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// The process lacks a capability it needs.
    #[error("[[vip]] needs CAP_NET_ADMIN (to add and remove addresses) and CAP_NET_RAW (to announce them); this process lacks {0}: run as root or grant them (the systemd unit does)")]
    Capability(&'static str),
    /// The netlink socket could not be opened.
    #[error("netlink: {0}")]
    Netlink(#[from] std::io::Error),
    /// A netlink request failed.
    #[error("{operation} {address} on {interface}: {reason}")]
    Request {
        /// add, remove or announce.
        operation: &'static str,
        /// The address.
        address: IpAddr,
        /// The interface.
        interface: String,
        /// What the kernel said.
        reason: String,
    },
}

/// What the status reports of one floating address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VipStatus {
    /// `address/prefix`.
    pub address: String,
    /// The interface.
    pub interface: String,
    /// Whether this node holds it now.
    pub held: bool,
    /// The last failure to add, remove or announce it, if any since it last worked.
    pub error: Option<String>,
}

/// An interface: its index, and its Ethernet address if it has one (announcements need it;
/// a tunnel or loopback device has none).
#[derive(Debug, Clone, Copy)]
struct Link {
    index: u32,
    mac: Option<announce::Mac>,
}

/// A netlink connection (reopened by the next request should it end, on a socket error),
/// and the interfaces it looked up by name (so giving the addresses up costs no lookup;
/// taking them looks again, in case an interface was recreated).
#[derive(Clone)]
struct Netlink {
    connection: Arc<Mutex<Connection>>,
    links: Arc<Mutex<std::collections::HashMap<String, Link>>>,
}

/// A netlink handle and the task that runs its socket.
struct Connection {
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

/// The floating addresses of this node.
pub struct Vips {
    configs: Vec<VipConfig>,
    netlink: Netlink,
    status: Arc<Mutex<Vec<VipStatus>>>,
    /// While the node is active: adding, announcing and re-asserting. After a release that
    /// netlink did not confirm in time: removing again until it is done.
    background: Option<tokio::task::JoinHandle<()>>,
}

/// Whether this process has the capabilities that `[[vip]]` needs.
pub fn check_capabilities() -> Result<(), VipError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|bits| u64::from_str_radix(bits.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    match (has(CAP_NET_ADMIN), has(CAP_NET_RAW)) {
        (true, true) => Ok(()),
        (false, _) => Err(VipError::Capability("CAP_NET_ADMIN")),
        (_, false) => Err(VipError::Capability("CAP_NET_RAW")),
    }
}

impl Vips {
    /// Opens netlink (its connection runs on the current runtime) for `configs`.
    pub fn open(configs: Vec<VipConfig>) -> Result<Vips, VipError> {
        check_capabilities()?;
        let connection = connect()?;
        let status = configs
            .iter()
            .map(|vip| VipStatus {
                address: format!("{}/{}", vip.address, vip.prefix_len),
                interface: vip.interface.clone(),
                held: false,
                error: None,
            })
            .collect();
        Ok(Vips {
            configs,
            netlink: Netlink {
                connection: Arc::new(Mutex::new(connection)),
                links: Arc::default(),
            },
            status: Arc::new(Mutex::new(status)),
            background: None,
        })
    }

    /// The status of each address.
    pub fn report(&self) -> Vec<VipStatus> {
        lock(&self.status).clone()
    }

    /// Adds every address (it may be there already), announces it, and from then on checks
    /// every [`REASSERT_EVERY`] that it is still there, in the background, until
    /// [`Vips::release`].
    pub fn take(&mut self) {
        self.hold(true);
    }

    /// Announces the addresses again (adding any that went missing): after a split heal,
    /// neighbours that listened to the other node in between learn who holds them.
    pub fn announce(&mut self) {
        self.hold(false);
    }

    fn hold(&mut self, fresh_links: bool) {
        if let Some(task) = self.background.take() {
            // What it was doing (adding, announcing, or removing) is undone or done again by
            // the new task.
            task.abort();
        }
        if fresh_links {
            lock(&self.netlink.links).clear();
        }
        let (configs, netlink, status) = (
            self.configs.clone(),
            self.netlink.clone(),
            self.status.clone(),
        );
        self.background = Some(tokio::spawn(async move {
            hold(&configs, &netlink, &status).await;
        }));
    }

    /// Removes every address and returns once netlink has confirmed it, or after `within`
    /// (then the caller goes on: holding the peer back for ever would leave nobody active,
    /// and the removal goes on in the background, retried every [`REASSERT_EVERY`] until it
    /// is done or the node takes the addresses again); failures are logged, counted and shown.
    pub async fn release(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        if let Some(task) = self.background.take() {
            task.abort();
            // Wait until it has stopped, so no add or announcement of it follows.
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        let (first_round, first_round_done) = tokio::sync::oneshot::channel();
        let (configs, netlink, status) = (
            self.configs.clone(),
            self.netlink.clone(),
            self.status.clone(),
        );
        self.background = Some(tokio::spawn(async move {
            remove_until_done(&configs, &netlink, &status, first_round).await;
        }));
        if tokio::time::timeout_at(deadline, first_round_done)
            .await
            .is_err()
        {
            crate::telemetry::vip_error("remove");
            warn!(
                ?within,
                "vip: netlink did not confirm the removal in time; the peer may take over now, and the removal goes on"
            );
            let reason = format!("netlink did not confirm the removal within {within:?}");
            for entry in lock(&self.status).iter_mut().filter(|entry| entry.held) {
                entry.error = Some(reason.clone());
            }
        }
    }

    /// Removes addresses a killed or frozen run of this node left behind (at start-up, and
    /// by `standby-proxy release-vips`): nobody waits on this node yet, so netlink gets
    /// longer to answer.
    pub async fn release_stale(&mut self) {
        self.release(Duration::from_secs(5)).await;
    }
}

/// A netlink connection, its socket's task spawned on the current runtime.
fn connect() -> Result<Connection, VipError> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    Ok(Connection {
        handle,
        task: tokio::spawn(connection),
    })
}

/// `request` on `vip`, failed if netlink has not answered within [`REQUEST_TIMEOUT`].
async fn answered<T>(
    operation: &'static str,
    vip: &VipConfig,
    request: impl std::future::Future<Output = Result<T, VipError>>,
) -> Result<T, VipError> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| {
            Err(request_error(
                operation,
                vip,
                "netlink did not answer in time",
            ))
        })
}

/// While the node is active: adds each address (already there counts as added) and
/// announces it, then checks every [`REASSERT_EVERY`] and adds (and announces) again what
/// went missing; a failed add is retried then too.
async fn hold(configs: &[VipConfig], netlink: &Netlink, status: &Mutex<Vec<VipStatus>>) {
    let mut announced = vec![false; configs.len()];
    loop {
        let mut to_announce = Vec::new();
        for (index, vip) in configs.iter().enumerate() {
            match answered("add", vip, add(netlink, vip)).await {
                Ok((added, link)) => {
                    if added && announced[index] {
                        warn!(address = %vip.address, interface = %vip.interface,
                            "vip: the address had gone from the interface; added it again");
                    }
                    record(status, index, "add", Ok(true));
                    if added || !announced[index] {
                        announced[index] = true;
                        to_announce.push((vip, link));
                    }
                }
                Err(error) => {
                    netlink.forget_link(vip);
                    record(status, index, "add", Err(error));
                }
            }
        }
        announce_all(&to_announce).await;
        tokio::time::sleep(REASSERT_EVERY).await;
    }
}

/// Removes every address; what failed is tried again every [`REASSERT_EVERY`] until it is
/// gone. `first_round` hears when the first attempt on each has an outcome.
async fn remove_until_done(
    configs: &[VipConfig],
    netlink: &Netlink,
    status: &Mutex<Vec<VipStatus>>,
    first_round: tokio::sync::oneshot::Sender<()>,
) {
    let mut first_round = Some(first_round);
    let mut pending: Vec<usize> = (0..configs.len()).collect();
    loop {
        let removals = pending.iter().map(|&index| async move {
            let vip = &configs[index];
            (index, answered("remove", vip, remove(netlink, vip)).await)
        });
        let results = futures_util::future::join_all(removals).await;
        pending.clear();
        for (index, result) in results {
            if result.is_err() {
                pending.push(index);
            }
            record(status, index, "remove", result.map(|()| false));
        }
        if let Some(first_round) = first_round.take() {
            let _ = first_round.send(());
        }
        if pending.is_empty() {
            return;
        }
        tokio::time::sleep(REASSERT_EVERY).await;
    }
}

/// Announces each address `announcements` times, `announce_every` apart.
async fn announce_all(links: &[(&VipConfig, Link)]) {
    let rounds = links
        .iter()
        .map(|(vip, _)| vip.announcements)
        .max()
        .unwrap_or(0);
    for round in 0..rounds {
        for (vip, link) in links {
            let Some(mac) = link.mac else {
                debug!(address = %vip.address, interface = %vip.interface,
                    "vip: the interface has no Ethernet address; nothing to announce");
                continue;
            };
            if round < vip.announcements {
                if let Err(error) = send_announcement(vip, link.index, mac) {
                    crate::telemetry::vip_error("announce");
                    warn!(address = %vip.address, %error, "vip: announcement failed");
                }
            }
        }
        let pause = links.iter().map(|(vip, _)| vip.announce_every).min();
        if let (Some(pause), true) = (pause, round + 1 < rounds) {
            tokio::time::sleep(pause).await;
        }
    }
}

fn send_announcement(vip: &VipConfig, index: u32, mac: announce::Mac) -> std::io::Result<()> {
    match vip.address {
        IpAddr::V4(address) => {
            announce::send_ethernet(index, &announce::gratuitous_arp(mac, address))
        }
        IpAddr::V6(address) => announce::send_to_all_nodes(
            index,
            address,
            &announce::unsolicited_advertisement(mac, address),
        ),
    }
}

impl Netlink {
    /// The netlink handle; a new connection first if the last one ended.
    fn handle(&self) -> rtnetlink::Handle {
        let mut connection = lock(&self.connection);
        if connection.task.is_finished() {
            match connect() {
                Ok(reopened) => {
                    warn!("vip: the netlink connection had ended; opened a new one");
                    *connection = reopened;
                }
                Err(error) => warn!(%error, "vip: cannot open netlink again"),
            }
        }
        connection.handle.clone()
    }

    /// `vip`'s interface (cached), or `None` if there is no such interface.
    async fn link_of(&self, vip: &VipConfig) -> Result<Option<Link>, VipError> {
        if let Some(link) = lock(&self.links).get(&vip.interface) {
            return Ok(Some(*link));
        }
        let found = self
            .handle()
            .link()
            .get()
            .match_name(vip.interface.clone())
            .execute()
            .try_next()
            .await;
        let message = match found {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(None),
            Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -libc::ENODEV => {
                return Ok(None)
            }
            Err(error) => return Err(request_error("find", vip, &error.to_string())),
        };
        let ethernet = message.header.link_layer_type == LinkLayerType::Ether;
        let mac = message
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::Address(bytes) => <announce::Mac>::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
            .filter(|mac| ethernet && *mac != [0; 6]);
        let link = Link {
            index: message.header.index,
            mac,
        };
        lock(&self.links).insert(vip.interface.clone(), link);
        Ok(Some(link))
    }

    /// Forgets the cached link of `vip`'s interface (it may have been recreated).
    fn forget_link(&self, vip: &VipConfig) {
        lock(&self.links).remove(&vip.interface);
    }
}

/// Adds the address; whether it was missing (already there counts as done). IPv6 skips
/// duplicate detection.
async fn add(netlink: &Netlink, vip: &VipConfig) -> Result<(bool, Link), VipError> {
    let Some(link) = netlink.link_of(vip).await? else {
        return Err(request_error("add", vip, "no such interface"));
    };
    let mut request = netlink
        .handle()
        .address()
        .add(link.index, vip.address, vip.prefix_len);
    if vip.address.is_ipv6() {
        request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
    }
    match request.execute().await {
        Ok(()) => {
            info!(address = %vip.address, interface = %vip.interface, "vip: added");
            Ok((true, link))
        }
        Err(rtnetlink::Error::NetlinkError(message)) if message.raw_code() == -libc::EEXIST => {
            Ok((false, link))
        }
        Err(error) => Err(request_error("add", vip, &error.to_string())),
    }
}

/// Removes the address from its interface, whatever prefix it was added with (an earlier
/// run may have had another): the kernel's own entries are listed and deleted. "Not there"
/// (no such address, no such interface) counts as done.
async fn remove(netlink: &Netlink, vip: &VipConfig) -> Result<(), VipError> {
    let Some(link) = netlink.link_of(vip).await? else {
        return Ok(());
    };
    let failed = |error: rtnetlink::Error| {
        netlink.forget_link(vip);
        request_error("remove", vip, &error.to_string())
    };
    let handle = netlink.handle();
    let on_link: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(link.index)
        .execute()
        .try_collect()
        .await
        .map_err(failed)?;
    let held = on_link
        .into_iter()
        .filter(|message| local_address(message) == Some(vip.address));
    for message in held {
        let prefix_len = message.header.prefix_len;
        match handle.address().del(message).execute().await {
            Ok(()) => {
                info!(address = %vip.address, prefix_len, interface = %vip.interface, "vip: removed");
            }
            Err(rtnetlink::Error::NetlinkError(message))
                if message.raw_code() == -libc::EADDRNOTAVAIL => {}
            Err(error) => return Err(failed(error)),
        }
    }
    Ok(())
}

/// The node's own address in an address message: `IFA_LOCAL` where the kernel gives one
/// (on a point-to-point link `IFA_ADDRESS` is the far end, which is not ours to remove),
/// else `IFA_ADDRESS`.
fn local_address(message: &AddressMessage) -> Option<IpAddr> {
    let attribute = |wanted: fn(&AddressAttribute) -> Option<IpAddr>| {
        message.attributes.iter().find_map(wanted)
    };
    attribute(|attribute| match attribute {
        AddressAttribute::Local(address) => Some(*address),
        _ => None,
    })
    .or_else(|| {
        attribute(|attribute| match attribute {
            AddressAttribute::Address(address) => Some(*address),
            _ => None,
        })
    })
}

fn request_error(operation: &'static str, vip: &VipConfig, reason: &str) -> VipError {
    VipError::Request {
        operation,
        address: vip.address,
        interface: vip.interface.clone(),
        reason: reason.to_owned(),
    }
}

/// Records the outcome of an operation on address `index`: whether it is held now, or the
/// failure (logged and counted).
fn record(
    status: &Mutex<Vec<VipStatus>>,
    index: usize,
    operation: &'static str,
    outcome: Result<bool, VipError>,
) {
    let mut status = lock(status);
    let Some(entry) = status.get_mut(index) else {
        return;
    };
    match outcome {
        Ok(held) => {
            entry.held = held;
            entry.error = None;
            crate::telemetry::vip_held(&entry.address, held);
        }
        Err(error) => {
            crate::telemetry::vip_error(operation);
            let error = error.to_string();
            // A failure that persists is retried every few seconds: say it once.
            if entry.error.as_ref() == Some(&error) {
                debug!(%error, "vip: {operation} failed again");
            } else {
                warn!(%error, "vip: {operation} failed");
                entry.error = Some(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(attributes: Vec<AddressAttribute>) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.attributes = attributes;
        message
    }

    #[test]
    fn the_own_address_is_the_local_one_not_the_far_end_of_a_point_to_point_link() {
        let ours: IpAddr = "10.0.0.1".parse().unwrap();
        let far_end: IpAddr = "10.0.0.2".parse().unwrap();
        let point_to_point = message(vec![
            AddressAttribute::Address(far_end),
            AddressAttribute::Local(ours),
        ]);
        assert_eq!(local_address(&point_to_point), Some(ours));
        let ipv6 = message(vec![AddressAttribute::Address("fd00::1".parse().unwrap())]);
        assert_eq!(local_address(&ipv6), Some("fd00::1".parse().unwrap()));
        assert_eq!(local_address(&message(Vec::new())), None);
    }
}
