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
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressHeaderFlags;
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

/// How often an active node checks that it still holds its addresses: an operator's
/// `ip addr del`, or a link that went down and up (Linux drops IPv6 addresses then), is
/// repaired, and a failed add retried, within this.
const REASSERT_EVERY: Duration = Duration::from_secs(2);

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

/// A netlink handle, and the interfaces it looked up by name (so giving the addresses up
/// costs no lookup; taking them looks again, in case an interface was recreated).
#[derive(Clone)]
struct Netlink {
    handle: rtnetlink::Handle,
    links: Arc<Mutex<std::collections::HashMap<String, Link>>>,
}

/// The floating addresses of this node.
pub struct Vips {
    configs: Vec<VipConfig>,
    netlink: Netlink,
    /// The netlink connection's task: should it end (a socket error), the next operation
    /// opens a new one.
    connection: tokio::task::JoinHandle<()>,
    status: Arc<Mutex<Vec<VipStatus>>>,
    /// Adding, announcing and re-asserting, while the node is active.
    holding: Option<tokio::task::JoinHandle<()>>,
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
        let (handle, connection) = connect()?;
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
                handle,
                links: Arc::default(),
            },
            connection,
            status: Arc::new(Mutex::new(status)),
            holding: None,
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
        if let Some(task) = self.holding.take() {
            // What it was doing (adding, announcing) is what the new task does again.
            task.abort();
        }
        self.reconnect_if_lost();
        if fresh_links {
            lock(&self.netlink.links).clear();
        }
        let (configs, netlink, status) = (
            self.configs.clone(),
            self.netlink.clone(),
            self.status.clone(),
        );
        self.holding = Some(tokio::spawn(async move {
            hold(&configs, &netlink, &status).await;
        }));
    }

    /// Removes every address and returns once netlink has confirmed it, or after `within`
    /// (then the caller goes on: holding the peer back for ever would leave nobody active);
    /// failures are logged, counted and shown.
    pub async fn release(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        if let Some(task) = self.holding.take() {
            task.abort();
            // Wait until it has stopped, so no add or announcement of it follows.
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        self.reconnect_if_lost();
        let removals = self.configs.iter().map(|vip| {
            let netlink = &self.netlink;
            async move {
                tokio::time::timeout_at(deadline, remove(netlink, vip))
                    .await
                    .unwrap_or_else(|_| {
                        Err(request_error(
                            "remove",
                            vip,
                            "netlink did not answer in time",
                        ))
                    })
            }
        });
        let results = futures_util::future::join_all(removals).await;
        for (index, result) in results.into_iter().enumerate() {
            record(&self.status, index, "remove", result.map(|()| false));
        }
    }

    /// Removes addresses a killed or frozen run of this node left behind (at start-up, and
    /// by `standby-proxy release-vips`): nobody waits on this node yet, so netlink gets
    /// longer to answer.
    pub async fn release_stale(&mut self) {
        self.release(Duration::from_secs(5)).await;
    }

    /// Opens a new netlink connection if the last one ended.
    fn reconnect_if_lost(&mut self) {
        if !self.connection.is_finished() {
            return;
        }
        match connect() {
            Ok((handle, connection)) => {
                warn!("vip: the netlink connection had ended; opened a new one");
                self.netlink.handle = handle;
                self.connection = connection;
            }
            Err(error) => warn!(%error, "vip: cannot open netlink again"),
        }
    }
}

/// A netlink handle and its connection's task, spawned on the current runtime.
fn connect() -> Result<(rtnetlink::Handle, tokio::task::JoinHandle<()>), VipError> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    Ok((handle, tokio::spawn(connection)))
}

/// While the node is active: adds each address (already there counts as added) and
/// announces it, then checks every [`REASSERT_EVERY`] and adds (and announces) again what
/// went missing; a failed add is retried then too.
async fn hold(configs: &[VipConfig], netlink: &Netlink, status: &Mutex<Vec<VipStatus>>) {
    let mut announced = vec![false; configs.len()];
    loop {
        let mut to_announce = Vec::new();
        for (index, vip) in configs.iter().enumerate() {
            match add(netlink, vip).await {
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
    /// `vip`'s interface (cached), or `None` if there is no such interface.
    async fn link_of(&self, vip: &VipConfig) -> Result<Option<Link>, VipError> {
        if let Some(link) = lock(&self.links).get(&vip.interface) {
            return Ok(Some(*link));
        }
        let found = self
            .handle
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
        .handle
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
    let held: Vec<_> = netlink
        .handle
        .address()
        .get()
        .set_link_index_filter(link.index)
        .set_address_filter(vip.address)
        .execute()
        .try_collect()
        .await
        .map_err(failed)?;
    for message in held {
        let prefix_len = message.header.prefix_len;
        match netlink.handle.address().del(message).execute().await {
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
            warn!(%error, "vip: {operation} failed");
            entry.error = Some(error.to_string());
        }
    }
}

/// A poisoned lock only means a task panicked mid-update; the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
