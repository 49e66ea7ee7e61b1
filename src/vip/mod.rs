//! Floating service addresses (`[[vip]]`): the active node holds them, and lets go of them
//! before its peer may take over.
//!
//! Addresses are added and removed through netlink (rtnetlink), announced with gratuitous
//! ARP (IPv4) and unsolicited neighbour advertisements (IPv6, the address added with
//! `IFA_F_NODAD` so it is usable at once instead of tentative for about a second). The
//! driver calls [`Vips::take`] when the node becomes active, [`Vips::release`] when it stops
//! being active (it waits for netlink's answer before any heartbeat tells the peer), and
//! [`Vips::announce`] when the peer comes back into contact (after a split heal the winner
//! announces again). A node killed with -9 or frozen leaves its addresses behind, as
//! keepalived does: they are removed at start-up and by `standby-proxy release-vips`
//! (the systemd unit's `ExecStopPost=`).

pub mod announce;

use crate::config::VipConfig;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressHeaderFlags;
use rtnetlink::packet_route::link::LinkAttribute;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// How long a removal may take before the node hands over anyway (logged, counted, shown):
/// holding the peer back for ever would leave nobody active.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

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

/// Interface index and Ethernet address by interface name, looked up once: a role change
/// then costs one netlink round trip per address, not three.
type Links = Arc<Mutex<std::collections::HashMap<String, (u32, announce::Mac)>>>;

/// The floating addresses of this node.
pub struct Vips {
    configs: Vec<VipConfig>,
    netlink: rtnetlink::Handle,
    links: Links,
    status: Arc<Mutex<Vec<VipStatus>>>,
    /// Adding and announcing, while the node is active.
    taking: Option<tokio::task::JoinHandle<()>>,
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
        let (connection, netlink, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
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
            netlink,
            links: Links::default(),
            status: Arc::new(Mutex::new(status)),
            taking: None,
        })
    }

    /// The status of each address.
    pub fn report(&self) -> Vec<VipStatus> {
        lock(&self.status).clone()
    }

    /// Adds every address (it may be there already) and announces it, in the background.
    pub fn take(&mut self) {
        self.start();
    }

    /// Adds the addresses again where they went missing (the kernel drops IPv6 addresses
    /// when a link goes down) and announces them: after a split heal, say.
    pub fn announce(&mut self) {
        if self.taking.as_ref().is_none_or(|task| task.is_finished()) {
            self.start();
        }
    }

    fn start(&mut self) {
        if let Some(task) = self.taking.take() {
            task.abort();
        }
        let (configs, netlink, links, status) = (
            self.configs.clone(),
            self.netlink.clone(),
            self.links.clone(),
            self.status.clone(),
        );
        self.taking = Some(tokio::spawn(async move {
            take_and_announce(configs, (netlink, links), status).await;
        }));
    }

    /// Removes every address and returns once netlink has confirmed it (or after
    /// [`RELEASE_TIMEOUT`]); failures are logged, counted and shown, and the caller goes on.
    pub async fn release(&mut self) {
        if let Some(task) = self.taking.take() {
            task.abort();
        }
        for (index, vip) in self.configs.iter().enumerate() {
            let netlink = (self.netlink.clone(), self.links.clone());
            let removed = tokio::time::timeout(RELEASE_TIMEOUT, remove(&netlink, vip)).await;
            let result = removed.unwrap_or_else(|_| {
                Err(request_error(
                    "remove",
                    vip,
                    "netlink did not answer in time",
                ))
            });
            record(&self.status, index, "remove", result.map(|()| false));
        }
    }

    /// Removes addresses a killed or frozen run of this node left behind.
    pub async fn release_stale(&mut self) {
        self.release().await;
    }
}

/// Adds each address (already there counts as added) and announces it `announcements`
/// times.
async fn take_and_announce(
    configs: Vec<VipConfig>,
    netlink: (rtnetlink::Handle, Links),
    status: Arc<Mutex<Vec<VipStatus>>>,
) {
    let mut links = Vec::new();
    for (index, vip) in configs.iter().enumerate() {
        let link = match link_of(&netlink, vip).await {
            Ok(link) => add_address(&netlink.0, vip, link.0).await.map(|()| link),
            Err(error) => Err(error),
        };
        match link {
            Ok(link) => {
                record(&status, index, "add", Ok(true));
                links.push((vip, link));
            }
            Err(error) => {
                forget_link(&netlink.1, vip);
                record(&status, index, "add", Err(error));
            }
        }
    }
    let rounds = configs
        .iter()
        .map(|vip| vip.announcements)
        .max()
        .unwrap_or(0);
    for round in 0..rounds {
        for (vip, (index, mac)) in &links {
            if round < vip.announcements {
                if let Err(error) = send_announcement(vip, *index, *mac) {
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

/// The interface's index and Ethernet address (looked up once, then cached).
async fn link_of(
    (netlink, links): &(rtnetlink::Handle, Links),
    vip: &VipConfig,
) -> Result<(u32, announce::Mac), VipError> {
    if let Some(link) = lock(links).get(&vip.interface) {
        return Ok(*link);
    }
    let found = netlink
        .link()
        .get()
        .match_name(vip.interface.clone())
        .execute()
        .try_next()
        .await
        .map_err(|error| request_error("find", vip, &error.to_string()))?;
    let Some(link) = found else {
        return Err(request_error("find", vip, "no such interface"));
    };
    let mac = link
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Address(bytes) => <announce::Mac>::try_from(bytes.as_slice()).ok(),
            _ => None,
        })
        .unwrap_or_default();
    let found = (link.header.index, mac);
    lock(links).insert(vip.interface.clone(), found);
    Ok(found)
}

/// Forgets the cached link of `vip`'s interface (it may have been recreated).
fn forget_link(links: &Links, vip: &VipConfig) {
    lock(links).remove(&vip.interface);
}

/// Adds the address; already there counts as done. IPv6 skips duplicate detection.
async fn add_address(
    netlink: &rtnetlink::Handle,
    vip: &VipConfig,
    index: u32,
) -> Result<(), VipError> {
    let mut request = netlink.address().add(index, vip.address, vip.prefix_len);
    if vip.address.is_ipv6() {
        request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
    }
    match request.execute().await {
        Ok(()) => {
            info!(address = %vip.address, interface = %vip.interface, "vip: added");
            Ok(())
        }
        Err(rtnetlink::Error::NetlinkError(message)) if message.raw_code() == -libc::EEXIST => {
            Ok(())
        }
        Err(error) => Err(request_error("add", vip, &error.to_string())),
    }
}

/// Removes the address if the interface holds it: one request, "not there" counts as done.
async fn remove(netlink: &(rtnetlink::Handle, Links), vip: &VipConfig) -> Result<(), VipError> {
    let (index, _) = match link_of(netlink, vip).await {
        Ok(link) => link,
        // No such interface (any more): nothing of ours is on it.
        Err(_) => return Ok(()),
    };
    // The message that names this address is the one that adds it.
    let mut add = netlink.0.address().add(index, vip.address, vip.prefix_len);
    let message = add.message_mut().clone();
    match netlink.0.address().del(message).execute().await {
        Ok(()) => {
            info!(address = %vip.address, interface = %vip.interface, "vip: removed");
            Ok(())
        }
        Err(rtnetlink::Error::NetlinkError(message))
            if message.raw_code() == -libc::EADDRNOTAVAIL =>
        {
            Ok(())
        }
        Err(error) => {
            forget_link(&netlink.1, vip);
            Err(request_error("remove", vip, &error.to_string()))
        }
    }
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
