//! The store's replication and merge logic (sans-IO) under seeded faults: writes on
//! whichever node is active, partitions in which both are, lost messages that end a
//! replication session half-way, and crashes that rebuild a node from what it made durable.
//! After the last heal both nodes must hold the same keys and conflicts, and every
//! acknowledged write must be there, or a newer write of its key, or in the conflict list.
//!
//! `STANDBY_SEED=N` replays one schedule; `STANDBY_SCHEDULES=N` changes the count.

use serde_json::json;
use standby_proxy::store::replica::{
    Changes, Conflict, Entry, EntryId, Hlc, LogBase, ReplMessage, Replica, Saved, SnapshotCursor,
    SnapshotInstall, Versioned,
};
use std::collections::BTreeMap;

/// What a node made durable: the mirror of every `Changes` it produced.
#[derive(Default, Clone)]
struct Disk {
    log: BTreeMap<u64, Entry>,
    keys: BTreeMap<String, Versioned>,
    conflicts: BTreeMap<String, Conflict>,
    hlc: Hlc,
    base: LogBase,
    synced: u64,
}

impl Disk {
    fn store(&mut self, changes: &Changes) {
        if changes.reset {
            self.log.clear();
            self.keys.clear();
            self.conflicts.clear();
        }
        if let Some(through) = changes.trim_through {
            self.log = self.log.split_off(&(through + 1));
        }
        if let Some(base) = changes.base {
            self.base = base;
        }
        if let Some(synced) = changes.synced {
            self.synced = synced;
        }
        if let Some(position) = changes.truncate_after {
            self.log.split_off(&(position + 1));
        }
        for entry in &changes.entries {
            self.log.insert(entry.position, entry.clone());
        }
        for (key, versioned) in &changes.keys {
            self.keys.insert(key.clone(), versioned.clone());
        }
        for (name, conflict) in &changes.conflicts {
            match conflict {
                Some(conflict) => self.conflicts.insert(name.clone(), conflict.clone()),
                None => self.conflicts.remove(name),
            };
        }
        self.hlc = self.hlc.max(changes.hlc);
    }
}

struct Node {
    name: &'static str,
    epoch: u32,
    replica: Replica,
    disk: Disk,
}

impl Node {
    fn new(name: &'static str, epoch: u32) -> Node {
        Node {
            name,
            epoch,
            replica: Replica::new(name, epoch),
            disk: Disk::default(),
        }
    }

    fn crash_and_restart(&mut self) {
        let disk = self.disk.clone();
        self.replica = Replica::load(
            self.name,
            Saved {
                epoch: self.epoch,
                entries: disk.log.into_values().collect(),
                keys: disk.keys.into_iter().collect(),
                conflicts: disk.conflicts.into_iter().collect(),
                hlc: disk.hlc,
                base: disk.base,
                synced: disk.synced,
            },
        );
    }
}

/// SplitMix64, as in tests/random_faults.rs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct World {
    nodes: [Node; 2],
    /// Which node is active; during a split both are.
    leader: usize,
    split: bool,
    /// Whether the follower has completed a session with the leader and follows it.
    synced: bool,
    acked: Vec<(String, EntryId)>,
    /// The version each client write replaced, as its node saw it: a value replaced so was
    /// superseded knowingly, and needs no conflict entry.
    replaced: std::collections::HashSet<EntryId>,
    /// Every client write: its key and value.
    writes: Vec<(EntryId, String, Option<serde_json::Value>)>,
    clock_ms: u64,
    trace: Vec<String>,
}

impl World {
    fn note(&mut self, text: String) {
        self.trace.push(text);
    }

    /// Runs a replication session from the follower, each message lost with `loss` percent.
    /// Returns whether it completed.
    fn session(&mut self, rng: &mut Rng, loss: u64) -> bool {
        let (l, f) = (self.leader, 1 - self.leader);
        let probe = self.nodes[f].replica.probe();
        if rng.chance(loss) {
            return false;
        }
        let ReplMessage::Probe {
            points,
            base: follower_base,
        } = probe
        else {
            unreachable!()
        };
        let common = self.nodes[l].replica.common_point(&points);
        if rng.chance(loss) {
            return false;
        }
        let entries: Vec<Entry> = self.nodes[f]
            .replica
            .upload(common, 3)
            .into_iter()
            .flat_map(|message| match message {
                ReplMessage::Upload { entries, .. } => entries,
                _ => unreachable!(),
            })
            .collect();
        if rng.chance(loss) {
            return false;
        }
        self.clock_ms += 1;
        let changes = self.nodes[l].replica.merge(&entries, self.clock_ms);
        self.nodes[l].disk.store(&changes);
        if rng.chance(loss) {
            return false; // the leader crashed or the link broke before answering
        }
        if self.nodes[l].replica.needs_snapshot(common, follower_base) {
            // In chunks of three, written into while they are sent: the leader's entries
            // after the snapshot's base follow, and replaying them converges.
            let base = self.nodes[l].replica.snapshot_base();
            let mut install = SnapshotInstall::default();
            let mut cursor = Some(SnapshotCursor::Keys(None));
            while let Some(at) = cursor {
                let (chunk, next) = self.nodes[l].replica.snapshot_chunk(base, &at, 3);
                let ReplMessage::Snapshot {
                    keys,
                    conflicts,
                    more,
                    ..
                } = chunk
                else {
                    unreachable!()
                };
                install
                    .add(base, keys, conflicts, more)
                    .expect("chunks of one snapshot");
                cursor = next;
                if rng.chance(30) {
                    let key = format!("k/{}", rng.below(6));
                    self.write(rng, l, key, 0);
                }
            }
            let mut changes = install.install(&mut self.nodes[f].replica);
            let after = self.nodes[l]
                .replica
                .entries_after(base.position, usize::MAX);
            let appended = self.nodes[f]
                .replica
                .append_from_leader(None, &after)
                .expect("the leader's entries after the snapshot fit");
            self.nodes[f].disk.store(&changes);
            changes = appended;
            self.nodes[f].disk.store(&changes);
            self.note(format!(
                "session: common {common}, snapshot at {}",
                base.position
            ));
            return true;
        }
        let entries = self.nodes[l].replica.entries_after(common, usize::MAX);
        let changes = self.nodes[f]
            .replica
            .append_from_leader(Some(common), &entries)
            .expect("a session append fits");
        self.nodes[f].disk.store(&changes);
        self.note(format!(
            "session: common {common}, {} entries",
            entries.len()
        ));
        true
    }

    fn write(&mut self, rng: &mut Rng, on: usize, key: String, loss: u64) {
        self.clock_ms += 1 + rng.below(3);
        let value = json!({ "by": on, "at": self.clock_ms });
        let value = if rng.chance(10) { None } else { Some(value) };
        let (position, changes) = self.nodes[on].replica.write(&key, value, self.clock_ms);
        let written = &changes.entries[0];
        self.trace
            .push(format!("  {} {:?}", written.id, written.op));
        if let standby_proxy::store::replica::Op::Set { key, value, .. } = &written.op {
            self.writes
                .push((written.id.clone(), key.clone(), value.clone()));
        }
        self.nodes[on].disk.store(&changes);
        let id = changes.entries[0].id.clone();
        if let standby_proxy::store::replica::Op::Set {
            prev: Some(prev), ..
        } = &changes.entries[0].op
        {
            self.replaced.insert(prev.clone());
        }
        let replicating = !self.split && self.synced && on == self.leader;
        if !replicating {
            // Alone (or split): acknowledged once durable here.
            self.acked.push((key.clone(), id));
            self.note(format!("write {key} on {on} alone at {position}"));
            return;
        }
        let f = 1 - on;
        if rng.chance(loss) {
            // Lost on the way: not acknowledged; the follower resynchronises later.
            self.synced = false;
            self.note(format!("write {key} on {on}: replication lost"));
            return;
        }
        let entries = self.nodes[on]
            .replica
            .entries_after(position - 1, usize::MAX);
        let changes = self.nodes[f]
            .replica
            .append_from_leader(None, &entries)
            .expect("in-sync append");
        self.nodes[f].disk.store(&changes);
        self.acked.push((key.clone(), id));
        self.note(format!("write {key} on {on} replicated at {position}"));
    }
}

fn run(seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed);
    let mut world = World {
        nodes: [Node::new("a", 1), Node::new("b", 2)],
        leader: 0,
        split: false,
        synced: true,
        acked: Vec::new(),
        replaced: std::collections::HashSet::new(),
        writes: Vec::new(),
        clock_ms: 1_000,
        trace: Vec::new(),
    };
    let keys = 1 + rng.below(6);
    let loss = rng.below(30);
    for _ in 0..(20 + rng.below(60)) {
        match rng.below(100) {
            0..=54 => {
                let key = format!("k/{}", rng.below(keys));
                let on = if world.split {
                    rng.below(2) as usize
                } else {
                    world.leader
                };
                world.write(&mut rng, on, key, loss);
            }
            55..=64 => {
                world.split = true;
                world.synced = false;
                world.note("split".into());
            }
            65..=79 => {
                if world.split || !world.synced {
                    world.split = false;
                    world.leader = rng.below(2) as usize;
                    world.note(format!("heal: {} active", world.leader));
                    world.synced = world.session(&mut rng, loss);
                }
            }
            80..=89 => {
                let node = rng.below(2) as usize;
                world.nodes[node].crash_and_restart();
                world.note(format!("crash {node}"));
                if !world.split {
                    world.synced = false;
                    if node == world.leader && rng.chance(50) {
                        world.leader = 1 - node; // failover
                        world.note(format!("failover to {}", world.leader));
                    }
                }
            }
            90..=94 => {
                // Trimming, within what the peer holds: a follower up to where it followed,
                // the leader up to what an in-sync follower holds.
                let node = rng.below(2) as usize;
                let holds = if !world.split && world.synced && node == world.leader {
                    world.nodes[1 - node].replica.head()
                } else {
                    world.nodes[node].replica.synced()
                };
                // Now and then a node alone too long trims past what its peer holds.
                let holds = if rng.chance(15) { u64::MAX } else { holds };
                let keep = rng.below(4);
                let through = holds
                    .min(world.nodes[node].replica.head())
                    .saturating_sub(keep);
                let changes = world.nodes[node].replica.trim(through);
                world.nodes[node].disk.store(&changes);
                world.note(format!("trim {node} through {through}"));
            }
            95..=96 => {
                // An in-sync standby's disk is replaced: it comes back empty.
                if !world.split && world.synced {
                    let follower = 1 - world.leader;
                    // A new store has a new incarnation.
                    let epoch = rng.next() as u32;
                    world.nodes[follower] = Node::new(world.nodes[follower].name, epoch);
                    world.synced = false;
                    world.note(format!("wipe {follower}"));
                }
            }
            _ => {
                // Clock skew: the other node's clock runs behind or ahead.
                world.clock_ms = world.clock_ms.saturating_sub(rng.below(5)) + rng.below(5);
            }
        }
    }
    // Final heal, and sessions until one completes.
    world.split = false;
    while !world.session(&mut rng, 0) {}
    let [a, b] = &world.nodes;
    let dump = |n: &Node| {
        (
            n.replica
                .list("")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>(),
            n.replica.conflicts().cloned().collect::<Vec<_>>(),
        )
    };
    if dump(a) != dump(b) {
        return Err(format!(
            "the nodes differ:\n a {:?}\n b {:?}\ntrace:\n{}",
            dump(a),
            dump(b),
            world.trace.join("\n")
        ));
    }
    // Every acknowledged write is the key's current version, or was replaced by a write
    // that saw it, or is in the conflict list: nothing acknowledged disappears silently.
    // Two concurrent writes of the same value are one: the merge keeps either, and lists
    // no conflict, as nothing was lost.
    for node in &world.nodes {
        let kept = |id: &EntryId, key: &str| {
            let current = node
                .replica
                .list(key)
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.id.clone());
            current.as_ref() == Some(id)
                || current.is_none() && tombstone_is(node, key, id)
                || world.replaced.contains(id)
                || node.replica.conflicts().any(|c| &c.lost == id)
        };
        for (key, id) in &world.acked {
            let current = node
                .replica
                .list(key)
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.id.clone());
            let value = world
                .writes
                .iter()
                .find(|(w, _, _)| w == id)
                .map(|(_, _, v)| v);
            let equal_kept = world
                .writes
                .iter()
                .any(|(w, k, v)| w != id && k == key && Some(v) == value && kept(w, key));
            if !(kept(id, key) || equal_kept) {
                return Err(format!(
                    "{}: acknowledged {key} {id} is gone (now {current:?})\ntrace:\n{}",
                    node.name,
                    world.trace.join("\n")
                ));
            }
        }
    }
    Ok(())
}

/// Whether a deleted key's tombstone is `id`.
fn tombstone_is(node: &Node, key: &str, id: &EntryId) -> bool {
    node.replica
        .version(key)
        .is_some_and(|v| v.value.is_none() && v.id == *id)
}

#[test]
fn seeded_splits_crashes_and_losses_lose_no_acknowledged_write() {
    if let Ok(seed) = std::env::var("STANDBY_SEED") {
        let seed: u64 = seed.parse().expect("a number");
        let mut result = run(seed);
        if result.is_err() {
            // Replay with the trace.
            let mut rng = Rng(seed);
            let _ = rng.next();
            result = run(seed);
        }
        result.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        return;
    }
    let schedules: u64 = std::env::var("STANDBY_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    for seed in 0..schedules {
        if let Err(error) = run(seed) {
            panic!(
                "seed {seed}: {error}\nreplay: STANDBY_SEED={seed} cargo test --test store_merge"
            );
        }
    }
}

#[test]
fn a_split_write_on_each_side_keeps_the_later_and_lists_the_other() {
    let (mut a, mut b) = (Replica::new("a", 1), Replica::new("b", 2));
    let (_, changes) = a.write("users/1/forwarding", Some(json!("100")), 1_000);
    b.append_from_leader(None, &changes.entries)
        .expect("in sync");
    // Split: both write the same key; b later.
    a.write("users/1/forwarding", Some(json!("200")), 2_000);
    b.write("users/1/forwarding", Some(json!("300")), 3_000);
    // Heal with a active: b probes, uploads, takes a's log.
    let ReplMessage::Probe { points, .. } = b.probe() else {
        unreachable!()
    };
    let common = a.common_point(&points);
    assert_eq!(common, 1);
    let [ReplMessage::Upload {
        entries,
        last: true,
    }] = &b.upload(common, 100)[..]
    else {
        unreachable!()
    };
    a.merge(entries, 4_000);
    b.append_from_leader(Some(common), &a.entries_after(common, usize::MAX))
        .expect("append");
    for node in [&a, &b] {
        assert_eq!(
            node.get("users/1/forwarding").and_then(|v| v.value.clone()),
            Some(json!("300"))
        );
        let conflicts: Vec<&Conflict> = node.conflicts().collect();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].value, Some(json!("200")));
    }
    // A repeated upload changes nothing.
    assert!(a.merge(entries, 5_000).is_empty());
}

#[test]
fn a_batch_with_a_gap_half_way_is_refused_before_anything_changes() {
    let (mut a, mut b) = (Replica::new("a", 1), Replica::new("b", 2));
    let entries: Vec<Entry> = (0..3)
        .flat_map(|n| {
            a.write(&format!("k/{n}"), Some(json!(n)), 1_000 + n)
                .1
                .entries
        })
        .collect();
    // Positions 1 and 3: the second does not follow the first.
    let gapped = [entries[0].clone(), entries[2].clone()];
    assert!(b.append_from_leader(None, &gapped).is_err());
    assert_eq!(b.head(), 0);
    assert!(b.get("k/0").is_none(), "memory changed by a refused batch");
    b.append_from_leader(None, &entries).expect("contiguous");
    assert_eq!(b.head(), 3);
    assert!(b.get("k/2").is_some());
}
