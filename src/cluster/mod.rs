//! Cluster mode: any number of nodes, the election arbitrated by etcd (`[cluster]`), instead
//! of a pair deciding between its two nodes alone.
//!
//! [`election`] is the sans-IO core (leases, the leader key, when to act as active); `etcd`
//! (cargo feature `etcd`) makes the few etcd calls it needs, each bounded by a deadline. The
//! node (`node::cluster`) wires them to the front ends, the admin API and the hooks.
//!
//! # Keys, under `<prefix>/<cluster name>/`
//!
//! - `leader`: `{"node": ID, "targets": {...}, "stale_after_ms": N}`, attached to the
//!   leader's lease, created only while absent. Its create revision is the term and the
//!   fencing token. The leader rewrites it every `ttl / 4`; a member that sees no rewrite
//!   for `stale_after_ms` deletes it (`election` says why that is safe).
//! - `members/<ID>`: each member's own state (role, eligibility, address, admin URL), attached
//!   to its lease, so a dead member's entry goes with it.
//! - `handover`: what a resigning leader writes in its deleting transaction ([`Handover`]):
//!   whom a switchover names, and the term given up.
//! - `store/<KEY>`: the configuration store, written only in a transaction that checks the
//!   leader key's create revision is the writer's term (a deposed node's write cannot land).

pub mod election;
#[cfg(feature = "etcd")]
pub mod etcd;

use serde::{Deserialize, Serialize};

/// What a leader publishes in the leader key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderValue {
    /// The leader's node id.
    pub node: String,
    /// Its advertised targets, by front-end name.
    #[serde(default)]
    pub targets: crate::engine::Targets,
    /// How long after its last rewrite of the key the others may delete it as stale: the
    /// leader rewrites it every `ttl / 4` and acts at most `ttl × 3/4` after sending one
    /// (protocol 1.5; absent from an older leader, whose key is left to its lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after_ms: Option<u64>,
}

/// What each member publishes of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// Its node id.
    pub node: String,
    /// `active`, `standby`, `front`, ...
    pub role: String,
    /// Whether it may become active.
    pub eligible: bool,
    /// Its address.
    pub address: String,
    /// The highest term it knows.
    #[serde(default)]
    pub term: u64,
    /// Its `node.priority` is primary (what `prefer-primary` hands back to).
    #[serde(default)]
    pub primary: bool,
}

/// What a resigning leader writes beside deleting its key, in the same transaction (the
/// `handover` key): whom a switchover names, and the term given up, so members that promised
/// the leader of that term not to take over (`keep-if-peers-confirm`) know it let go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The member that should take over, if a switchover named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The term given up (0: written by a version that did not say).
    #[serde(default)]
    pub term: u64,
}
