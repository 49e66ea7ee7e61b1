//! The replicated configuration store's logic, sans-IO: a log of entries and the key/value
//! state they produce, the replication protocol between the active node (leader) and the
//! standby (follower), and the merge after a split. Every operation returns the
//! [`Changes`] the caller must make durable before it acknowledges or sends anything.
//!
//! Protocol, on one replication connection opened by the follower:
//! 1. follower → `Probe` with (position, id) of a few of its entries, going back
//!    exponentially from its head;
//! 2. leader → `Fork { common }`: the highest of them its own log holds too;
//! 3. follower → `Upload` of its entries after `common` (what it wrote while it was active
//!    alone, say), which the leader merges into its log;
//! 4. leader → `Append { truncate_after: Some(common), .. }` with its log after `common`:
//!    the follower drops its own suffix and takes the leader's (which now holds the merged
//!    suffix too), then acknowledges; from then on every new entry follows as `Append`.
//!
//! Merge, per key: an uploaded write whose `prev` is the leader's current version simply
//! succeeds it; otherwise the two were written concurrently and the later by hybrid logical
//! clock wins, the other value going to the conflict list (itself replicated). Entries the
//! leader already holds (by id) are skipped, so an upload may be repeated after any crash.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// A hybrid logical clock stamp: wall-clock milliseconds, and a counter for stamps within
/// the same millisecond or behind a clock that went back.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (or later than any stamp seen).
    pub ms: u64,
    /// Orders stamps within one millisecond.
    pub counter: u32,
}

impl Hlc {
    /// The next stamp after `self` at wall-clock `now_ms`.
    #[must_use]
    pub fn tick(self, now_ms: u64) -> Hlc {
        if now_ms > self.ms {
            Hlc {
                ms: now_ms,
                counter: 0,
            }
        } else {
            Hlc {
                ms: self.ms,
                counter: self.counter.saturating_add(1),
            }
        }
    }
}

/// Who wrote an entry and when: unique across the pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryId {
    /// The stamp; ties between nodes go to the writer's name.
    pub hlc: Hlc,
    /// The node that accepted the write.
    pub writer: String,
    /// The writer's store incarnation (random, made with the store): a node whose store was
    /// replaced never reuses an id, even with its clock behind.
    #[serde(default)]
    pub epoch: u32,
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{}", self.hlc.ms, self.hlc.counter, self.writer)?;
        if self.epoch != 0 {
            write!(f, "~{:08x}", self.epoch)?;
        }
        Ok(())
    }
}

/// A key's current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    /// The value; `None` once deleted (the tombstone keeps the version for merges).
    pub value: Option<Value>,
    /// The write that set it.
    pub id: EntryId,
    /// How many writes the key has had.
    pub revision: u64,
}

/// A value that lost a merge, kept until an operator clears it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The key.
    pub key: String,
    /// The losing value (`None`: a delete lost).
    pub value: Option<Value>,
    /// The losing write.
    pub lost: EntryId,
    /// The write that won.
    pub won: EntryId,
}

impl Conflict {
    /// Its name in the conflict list: the same loser always has the same name.
    pub fn name(&self) -> String {
        format!("{}#{}", self.key, self.lost)
    }
}

/// What one log entry does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Set (or with `value: None`, delete) a key.
    Set {
        /// The key.
        key: String,
        /// The new value.
        value: Option<Value>,
        /// The version it replaced, as the writer saw it.
        prev: Option<EntryId>,
        /// The key's revision after this write.
        revision: u64,
    },
    /// Record a merge loser.
    Conflict(Conflict),
    /// Empty the conflict list.
    ClearConflicts,
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its place in this node's log (1, 2, ...).
    pub position: u64,
    /// Who wrote it, when.
    pub id: EntryId,
    /// A hash of every id up to and including this one: two logs with the same chain at a
    /// position hold the same entries up to it (what the probe compares).
    pub chain: u64,
    /// What it does.
    pub op: Op,
}

/// The chain value after `previous` for an entry with `id` (FNV-1a: stable, not secret).
fn chain(previous: u64, id: &EntryId) -> u64 {
    let mut hash = previous ^ 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(&id.hlc.ms.to_be_bytes());
    feed(&id.hlc.counter.to_be_bytes());
    feed(id.writer.as_bytes());
    hash
}

/// What must be made durable, in this order, before the operation's result is used.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Drop everything first (a snapshot replaces the store).
    pub reset: bool,
    /// Drop every log entry after this position first.
    pub truncate_after: Option<u64>,
    /// Drop every log entry up to and including this position (trimmed).
    pub trim_through: Option<u64>,
    /// The new log base (after a trim or a snapshot).
    pub base: Option<LogBase>,
    /// The new synced position: up to it this log is the leader's.
    pub synced: Option<u64>,
    /// Log entries to store (new, or replacing dropped ones).
    pub entries: Vec<Entry>,
    /// Key versions to store.
    pub keys: Vec<(String, Versioned)>,
    /// Conflicts to store (`Some`) or remove (`None`).
    pub conflicts: Vec<(String, Option<Conflict>)>,
    /// The clock to store, so stamps stay monotonic across restarts.
    pub hlc: Hlc,
}

impl Changes {
    /// Whether there is nothing to store.
    pub fn is_empty(&self) -> bool {
        !self.reset
            && self.trim_through.is_none()
            && self.truncate_after.is_none()
            && self.entries.is_empty()
            && self.keys.is_empty()
            && self.conflicts.is_empty()
    }
}

/// Where the retained log starts: the last trimmed position and its chain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogBase {
    /// The last position no longer in the log (0: nothing trimmed).
    pub position: u64,
    /// The chain value at that position.
    pub chain: u64,
}

/// Messages of the replication protocol. (Tagged `kind`: the peer frame that carries them
/// is tagged `type` already.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReplMessage {
    /// Follower → leader: some of my entries, newest first.
    Probe {
        /// (position, chain) pairs.
        points: Vec<(u64, u64)>,
        /// The follower's log base: it holds no entries up to there, so it needs a
        /// snapshot if the logs part before it.
        #[serde(default)]
        base: u64,
    },
    /// Leader → follower: our logs agree up to here.
    Fork {
        /// The common position (0: nothing in common).
        common: u64,
    },
    /// Follower → leader: my entries after the common position, in chunks.
    Upload {
        /// The entries, oldest first.
        entries: Vec<Entry>,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// Leader → follower: entries to take, contiguous.
    Append {
        /// Drop your log after this position first.
        truncate_after: Option<u64>,
        /// The entries, oldest first.
        entries: Vec<Entry>,
    },
    /// Leader → follower: the whole store, when the follower needs entries the leader
    /// has trimmed from its log, in chunks (keys first, then conflicts) that each fit a
    /// frame. `Append`s from `base.position + 1` follow the last.
    Snapshot {
        /// The position and chain the snapshot stands for.
        base: LogBase,
        /// Every key's version, tombstones included.
        keys: Vec<(String, Versioned)>,
        /// The conflict list.
        conflicts: Vec<Conflict>,
        /// More chunks follow (protocol 1.2; a 1.1 leader sends one whole snapshot, which
        /// reads as the last chunk).
        #[serde(default)]
        more: bool,
    },
    /// Follower → leader: I hold your log up to here, durably.
    Ack {
        /// The position.
        position: u64,
    },
}

/// Where the next chunk of a snapshot starts: after this key (`None`: at the first), then
/// after this conflict name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotCursor {
    /// Keys, after the one named.
    Keys(Option<String>),
    /// Conflicts, after the one named.
    Conflicts(Option<String>),
}

/// Follower: a snapshot arriving in chunks. Nothing of the store changes until the last
/// chunk: then one [`Changes`] replaces it, so a session lost halfway leaves the old store.
#[derive(Debug, Default)]
pub struct SnapshotInstall {
    base: Option<LogBase>,
    keys: Vec<(String, Versioned)>,
    conflicts: Vec<Conflict>,
}

impl SnapshotInstall {
    /// Takes one chunk; `Ok(true)` once the last has arrived.
    pub fn add(
        &mut self,
        base: LogBase,
        keys: Vec<(String, Versioned)>,
        conflicts: Vec<Conflict>,
        more: bool,
    ) -> Result<bool, ReplicaError> {
        match self.base {
            Some(first) if first != base => {
                return Err(ReplicaError::SnapshotBase {
                    first: first.position,
                    got: base.position,
                })
            }
            _ => self.base = Some(base),
        }
        self.keys.extend(keys);
        self.conflicts.extend(conflicts);
        Ok(!more)
    }

    /// Keys and conflicts received so far.
    pub fn received(&self) -> usize {
        self.keys.len() + self.conflicts.len()
    }

    /// Replaces `replica`'s store with the snapshot (call after the last chunk).
    pub fn install(self, replica: &mut Replica) -> Changes {
        replica.install_snapshot(self.base.unwrap_or_default(), self.keys, self.conflicts)
    }
}

/// Why a replication message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// An `Append` does not continue the log where it stands.
    #[error("append at position {got} does not follow {head}")]
    Gap {
        /// The log's head.
        head: u64,
        /// The first position offered.
        got: u64,
    },
    /// A snapshot chunk stands for another position than the first chunk did.
    #[error("a snapshot chunk at position {got} continues one at {first}")]
    SnapshotBase {
        /// The first chunk's position.
        first: u64,
        /// This chunk's position.
        got: u64,
    },
}

/// What a node made durable, to rebuild its [`Replica`] from.
#[derive(Debug, Clone, Default)]
pub struct Saved {
    /// The store's incarnation.
    pub epoch: u32,
    /// The retained log.
    pub entries: Vec<Entry>,
    /// Every key's version, tombstones included.
    pub keys: Vec<(String, Versioned)>,
    /// The conflict list, by name.
    pub conflicts: Vec<(String, Conflict)>,
    /// The clock.
    pub hlc: Hlc,
    /// Where the retained log starts.
    pub base: LogBase,
    /// Up to where the log is a leader's.
    pub synced: u64,
}

/// The store's state on one node.
#[derive(Debug, Clone)]
pub struct Replica {
    node: String,
    epoch: u32,
    log: BTreeMap<u64, Entry>,
    ids: HashMap<EntryId, u64>,
    keys: BTreeMap<String, Versioned>,
    conflicts: BTreeMap<String, Conflict>,
    hlc: Hlc,
    base: LogBase,
    /// Up to here this log is a leader's (it followed it): the follower trims no further,
    /// and probes this position first.
    synced: u64,
}

impl Replica {
    /// An empty store for `node` in incarnation `epoch` (random per store).
    pub fn new(node: &str, epoch: u32) -> Self {
        Replica {
            node: node.to_owned(),
            epoch,
            log: BTreeMap::new(),
            ids: HashMap::new(),
            keys: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            hlc: Hlc::default(),
            base: LogBase::default(),
            synced: 0,
        }
    }

    /// A store rebuilt from what [`Changes`] made durable.
    pub fn load(node: &str, saved: Saved) -> Self {
        let mut replica = Replica::new(node, saved.epoch);
        replica.base = saved.base;
        replica.synced = saved.synced;
        for entry in saved.entries {
            replica.hlc = replica.hlc.max(entry.id.hlc);
            replica.ids.insert(entry.id.clone(), entry.position);
            replica.log.insert(entry.position, entry);
        }
        replica.keys = saved.keys.into_iter().collect();
        replica.conflicts = saved.conflicts.into_iter().collect();
        replica.hlc = replica.hlc.max(saved.hlc);
        replica
    }

    /// The node this store belongs to.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Keys (tombstones included) and conflicts held: what a snapshot carries.
    pub fn size(&self) -> usize {
        self.keys.len() + self.conflicts.len()
    }

    /// The last position in the log (its base when every entry was trimmed).
    pub fn head(&self) -> u64 {
        self.log
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.base.position)
    }

    /// Where the retained log starts.
    pub fn base(&self) -> LogBase {
        self.base
    }

    /// Entries held in the log (not trimmed).
    pub fn retained(&self) -> usize {
        self.log.len()
    }

    fn chain_at(&self, position: u64) -> Option<u64> {
        match self.log.get(&position) {
            Some(entry) => Some(entry.chain),
            None if position == self.base.position => Some(self.base.chain),
            None => None,
        }
    }

    /// Drops the log entries up to `through` (their effect stays in the keys). The caller
    /// picks `through` so the peer holds them: a node never trims what it may still have to
    /// upload.
    pub fn trim(&mut self, through: u64) -> Changes {
        let mut changes = Changes::default();
        let through = through.min(self.head());
        let Some(chain) = self
            .chain_at(through)
            .filter(|_| through > self.base.position)
        else {
            return changes;
        };
        let kept = self.log.split_off(&(through + 1));
        for (_, dropped) in std::mem::replace(&mut self.log, kept) {
            self.ids.remove(&dropped.id);
        }
        self.base = LogBase {
            position: through,
            chain,
        };
        changes.trim_through = Some(through);
        changes.base = Some(self.base);
        changes.hlc = self.hlc;
        changes
    }

    /// Leader: the position and chain a snapshot taken now stands for (its head).
    pub fn snapshot_base(&self) -> LogBase {
        let head = self.head();
        LogBase {
            position: head,
            chain: self.chain_at(head).unwrap_or(self.base.chain),
        }
    }

    /// Leader: the chunk of a snapshot at `base` that starts at `cursor`, at most `limit`
    /// keys or conflicts, and where the next chunk starts (`None`: this was the last).
    ///
    /// The chunks are read from the live store while writes go on, so a later chunk may
    /// hold versions newer than `base`. The leader sends its log from `base.position + 1`
    /// after the last chunk, and replaying an entry over its own effect changes nothing, so
    /// the follower ends with exactly the leader's store.
    pub fn snapshot_chunk(
        &self,
        base: LogBase,
        cursor: &SnapshotCursor,
        limit: usize,
    ) -> (ReplMessage, Option<SnapshotCursor>) {
        let limit = limit.max(1);
        let (keys, conflicts, next) = match cursor {
            SnapshotCursor::Keys(from) => {
                let (keys, last) = page(&self.keys, from, limit);
                let next = match last {
                    Some(last) => SnapshotCursor::Keys(Some(last)),
                    None => SnapshotCursor::Conflicts(None),
                };
                (keys, Vec::new(), Some(next))
            }
            SnapshotCursor::Conflicts(from) => {
                let (conflicts, last) = page(&self.conflicts, from, limit);
                let conflicts = conflicts.into_iter().map(|(_, c)| c).collect();
                (
                    Vec::new(),
                    conflicts,
                    last.map(|l| SnapshotCursor::Conflicts(Some(l))),
                )
            }
        };
        let message = ReplMessage::Snapshot {
            base,
            keys,
            conflicts,
            more: next.is_some(),
        };
        (message, next)
    }

    /// Follower: replaces the whole store with a leader's snapshot.
    pub fn install_snapshot(
        &mut self,
        base: LogBase,
        keys: Vec<(String, Versioned)>,
        conflicts: Vec<Conflict>,
    ) -> Changes {
        self.log.clear();
        self.ids.clear();
        self.base = base;
        self.synced = base.position;
        self.keys = keys.iter().cloned().collect();
        self.conflicts = conflicts.iter().map(|c| (c.name(), c.clone())).collect();
        for version in self.keys.values() {
            self.hlc = self.hlc.max(version.id.hlc);
        }
        Changes {
            reset: true,
            base: Some(base),
            synced: Some(base.position),
            keys,
            conflicts: self
                .conflicts
                .iter()
                .map(|(name, c)| (name.clone(), Some(c.clone())))
                .collect(),
            hlc: self.hlc,
            ..Changes::default()
        }
    }

    /// A key's value, if set.
    pub fn get(&self, key: &str) -> Option<&Versioned> {
        self.keys.get(key).filter(|v| v.value.is_some())
    }

    /// A key's current version, a deletion's tombstone included.
    pub fn version(&self, key: &str) -> Option<&Versioned> {
        self.keys.get(key)
    }

    /// Every set key under `prefix`, in order.
    pub fn list<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Versioned)> {
        self.keys
            .range(prefix.to_owned()..)
            .take_while(move |(key, _)| key.starts_with(prefix))
            .filter(|(_, v)| v.value.is_some())
    }

    /// The conflict list.
    pub fn conflicts(&self) -> impl Iterator<Item = &Conflict> {
        self.conflicts.values()
    }

    /// Entries after `position`, at most `limit`.
    pub fn entries_after(&self, position: u64, limit: usize) -> Vec<Entry> {
        self.log
            .range(position + 1..)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn stamp(&mut self, now_ms: u64) -> EntryId {
        self.hlc = self.hlc.tick(now_ms);
        EntryId {
            hlc: self.hlc,
            writer: self.node.clone(),
            epoch: self.epoch,
        }
    }

    /// Appends `op` with `id` at the head and applies it, recording the changes.
    fn append(&mut self, id: EntryId, op: Op, changes: &mut Changes) -> u64 {
        let position = self.head() + 1;
        let previous = self.chain_at(position - 1).unwrap_or(0);
        let entry = Entry {
            position,
            chain: chain(previous, &id),
            id,
            op,
        };
        self.apply(&entry, changes);
        self.ids.insert(entry.id.clone(), position);
        self.log.insert(position, entry.clone());
        changes.entries.push(entry);
        changes.hlc = self.hlc;
        position
    }

    /// Applies an entry's effect on keys and conflicts (overwriting: the log is the order).
    fn apply(&mut self, entry: &Entry, changes: &mut Changes) {
        self.hlc = self.hlc.max(entry.id.hlc);
        match &entry.op {
            Op::Set {
                key,
                value,
                revision,
                ..
            } => {
                let versioned = Versioned {
                    value: value.clone(),
                    id: entry.id.clone(),
                    revision: *revision,
                };
                self.keys.insert(key.clone(), versioned.clone());
                changes.keys.push((key.clone(), versioned));
            }
            Op::Conflict(conflict) => {
                let name = conflict.name();
                self.conflicts.insert(name.clone(), conflict.clone());
                changes.conflicts.push((name, Some(conflict.clone())));
            }
            Op::ClearConflicts => {
                for name in std::mem::take(&mut self.conflicts).into_keys() {
                    changes.conflicts.push((name, None));
                }
            }
        }
    }

    /// A local write (on the leader): set `key` to `value` (`None` deletes). Returns the
    /// entry's position.
    pub fn write(&mut self, key: &str, value: Option<Value>, now_ms: u64) -> (u64, Changes) {
        let mut changes = Changes::default();
        let current = self.keys.get(key);
        let prev = current.map(|v| v.id.clone());
        let revision = current.map_or(0, |v| v.revision) + 1;
        let id = self.stamp(now_ms);
        let op = Op::Set {
            key: key.to_owned(),
            value,
            prev,
            revision,
        };
        let position = self.append(id, op, &mut changes);
        (position, changes)
    }

    /// Empties the conflict list (on the leader), as a replicated entry.
    pub fn clear_conflicts(&mut self, now_ms: u64) -> (u64, Changes) {
        let mut changes = Changes::default();
        let id = self.stamp(now_ms);
        let position = self.append(id, Op::ClearConflicts, &mut changes);
        (position, changes)
    }

    /// Follower: the probe that opens a replication session.
    pub fn probe(&self) -> ReplMessage {
        let head = self.head();
        let mut points = Vec::new();
        let mut back = 0u64;
        while back < head {
            let position = head - back;
            if let Some(entry) = self.log.get(&position) {
                points.push((position, entry.chain));
            }
            back = if back == 0 { 1 } else { back * 2 };
        }
        // Where it last followed a leader: usually exactly where the logs part.
        if let Some(chain) = self.chain_at(self.synced).filter(|_| self.synced > 0) {
            points.push((self.synced, chain));
        }
        if self.base.position > 0 {
            points.push((self.base.position, self.base.chain));
        }
        ReplMessage::Probe {
            points,
            base: self.base.position,
        }
    }

    /// Leader: where the follower's log and ours agree, from its probe.
    pub fn common_point(&self, points: &[(u64, u64)]) -> u64 {
        points
            .iter()
            .filter(|(position, chain)| self.chain_at(*position) == Some(*chain))
            .map(|(position, _)| *position)
            .max()
            .unwrap_or(0)
    }

    /// Up to where this log is known to be a leader's.
    pub fn synced(&self) -> u64 {
        self.synced
    }

    /// Whether a follower whose probe gave `common` and `follower_base` needs a snapshot:
    /// the entries it lacks are trimmed here, or it trimmed entries where the logs part.
    pub fn needs_snapshot(&self, common: u64, follower_base: u64) -> bool {
        common < self.base.position || common < follower_base
    }

    /// Follower: its entries after the common point, for the leader to merge, in chunks of
    /// at most `chunk` (always at least one message, the last marked).
    pub fn upload(&self, common: u64, chunk: usize) -> Vec<ReplMessage> {
        // When this log was trimmed past the common point, the entries the leader lacks are
        // gone: upload the state instead (every key's version and every conflict), which
        // the merge treats like entries. At worst it lists a stale version as a conflict.
        let entries = if common < self.base.position {
            self.state_as_entries()
        } else {
            self.entries_after(common, usize::MAX)
        };
        let mut messages: Vec<ReplMessage> = entries
            .chunks(chunk.max(1))
            .map(|part| ReplMessage::Upload {
                entries: part.to_vec(),
                last: false,
            })
            .collect();
        match messages.last_mut() {
            Some(ReplMessage::Upload { last, .. }) => *last = true,
            _ => messages.push(ReplMessage::Upload {
                entries: Vec::new(),
                last: true,
            }),
        }
        messages
    }

    fn state_as_entries(&self) -> Vec<Entry> {
        let keys = self.keys.iter().map(|(key, version)| Entry {
            position: 0,
            id: version.id.clone(),
            chain: 0,
            op: Op::Set {
                key: key.clone(),
                value: version.value.clone(),
                prev: None,
                revision: version.revision,
            },
        });
        let conflicts = self.conflicts.values().map(|conflict| Entry {
            position: 0,
            id: conflict.won.clone(),
            chain: 0,
            op: Op::Conflict(conflict.clone()),
        });
        keys.chain(conflicts).collect()
    }

    /// Leader: merges a follower's uploaded entries into the log.
    pub fn merge(&mut self, entries: &[Entry], now_ms: u64) -> Changes {
        let mut changes = Changes::default();
        for entry in entries {
            self.hlc = self.hlc.max(entry.id.hlc);
            match &entry.op {
                // Already ours (a repeated upload, or a common entry): skipped.
                Op::Set { .. } if self.ids.contains_key(&entry.id) => {}
                Op::Set {
                    key, value, prev, ..
                } => self.merge_set(entry, key, value, prev.as_ref(), now_ms, &mut changes),
                Op::Conflict(conflict) => {
                    if !self.conflicts.contains_key(&conflict.name()) {
                        let id = self.stamp(now_ms);
                        self.append(id, entry.op.clone(), &mut changes);
                    }
                }
                // A clear made while split would drop conflicts it never saw: not merged.
                Op::ClearConflicts => {}
            }
        }
        changes
    }

    fn merge_set(
        &mut self,
        entry: &Entry,
        key: &str,
        value: &Option<Value>,
        prev: Option<&EntryId>,
        now_ms: u64,
        changes: &mut Changes,
    ) {
        let current = self.keys.get(key).cloned();
        let revision = current.as_ref().map_or(0, |c| c.revision) + 1;
        let set = |prev: Option<EntryId>| Op::Set {
            key: key.to_owned(),
            value: value.clone(),
            prev,
            revision,
        };
        let Some(current) = current else {
            self.append(entry.id.clone(), set(None), changes);
            return;
        };
        if current.id == entry.id {
            return;
        }
        let successor = prev == Some(&current.id);
        if successor || entry.id > current.id {
            self.append(entry.id.clone(), set(Some(current.id.clone())), changes);
            if !successor && current.value != *value {
                let conflict = Conflict {
                    key: key.to_owned(),
                    value: current.value,
                    lost: current.id,
                    won: entry.id.clone(),
                };
                let id = self.stamp(now_ms);
                self.append(id, Op::Conflict(conflict), changes);
            }
        } else if current.value != *value {
            let conflict = Conflict {
                key: key.to_owned(),
                value: value.clone(),
                lost: entry.id.clone(),
                won: current.id,
            };
            if !self.conflicts.contains_key(&conflict.name()) {
                let id = self.stamp(now_ms);
                self.append(id, Op::Conflict(conflict), changes);
            }
        }
    }

    /// Follower: takes the leader's entries (after dropping its own suffix when asked).
    pub fn append_from_leader(
        &mut self,
        truncate_after: Option<u64>,
        entries: &[Entry],
    ) -> Result<Changes, ReplicaError> {
        let mut changes = Changes::default();
        let head_after_truncate = match truncate_after {
            Some(position) => position.min(self.head()).max(self.base.position),
            None => self.head(),
        };
        // Every position is checked before anything changes: a batch refused half-way
        // would leave memory ahead of the disk.
        for (offset, entry) in entries.iter().enumerate() {
            let head = head_after_truncate.saturating_add(offset as u64);
            if Some(entry.position) != head.checked_add(1) {
                return Err(ReplicaError::Gap {
                    head,
                    got: entry.position,
                });
            }
        }
        if let Some(position) = truncate_after {
            if position < self.head() {
                for (_, dropped) in self.log.split_off(&(position + 1)) {
                    self.ids.remove(&dropped.id);
                }
                changes.truncate_after = Some(position);
            }
        }
        for entry in entries {
            self.apply(entry, &mut changes);
            self.ids.insert(entry.id.clone(), entry.position);
            self.log.insert(entry.position, entry.clone());
            changes.entries.push(entry.clone());
        }
        self.synced = self.head();
        changes.synced = Some(self.synced);
        changes.hlc = self.hlc;
        Ok(changes)
    }
}

/// At most `limit` entries of `map` after the key `from` (from the start without one), and
/// the last one's key when the page is full (more may follow).
fn page<V: Clone>(
    map: &BTreeMap<String, V>,
    from: &Option<String>,
    limit: usize,
) -> (Vec<(String, V)>, Option<String>) {
    use std::ops::Bound::{Excluded, Unbounded};
    let range = match from {
        Some(key) => (Excluded(key.clone()), Unbounded),
        None => (Unbounded, Unbounded),
    };
    let entries: Vec<(String, V)> = map
        .range::<String, _>(range)
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let last = match entries.last() {
        Some((last, _)) if entries.len() == limit => Some(last.clone()),
        _ => None,
    };
    (entries, last)
}
