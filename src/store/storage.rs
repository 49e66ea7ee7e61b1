//! Durable storage of the store in redb: each [`Changes`] is one write transaction,
//! committed with redb's default (immediate, fsync) durability before anything is
//! acknowledged or sent. On start the whole store is loaded back into a [`Replica`]: a
//! configuration store is small.

use super::replica::{Changes, Conflict, Entry, Hlc, LogBase, Replica, Saved, Versioned};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const CONFLICTS: TableDefinition<&str, &[u8]> = TableDefinition::new("conflicts");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// redb failed (disk full, corruption, ...).
    #[error("store database: {0}")]
    Database(#[from] redb::Error),
    /// A stored record does not decode.
    #[error("store database: a record does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    /// An earlier operation failed; nothing is read or written until [`Storage::reopen`]
    /// succeeds (redb answers every later call of a database that failed with an error).
    #[error("store database failed earlier ({0}); waiting to reopen it")]
    Failed(String),
}

macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for StorageError {
            fn from(error: $error) -> Self {
                StorageError::Database(error.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Small values kept beside the store (the engine's term, the maintenance flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct NodeState {
    /// The highest election term this node knew.
    pub term: u64,
    /// Whether an operator put the node in maintenance.
    pub maintenance: bool,
    /// The term is a cluster term (cluster mode saved it), not a pair's: a move from pair
    /// mode needs the cluster's terms strictly above it, a restart in cluster mode only as
    /// high.
    #[serde(default)]
    pub cluster: bool,
}

/// A random incarnation for a new store (from the process's random hash keys: no crate).
fn random_epoch() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    (hasher.finish() >> 32) as u32
}

/// The store's database file. A failed operation closes it and every later one answers
/// [`StorageError::Failed`] until [`Storage::reopen`] succeeds; [`Storage::failure`]
/// reports the state, so the engine steps down while the store is broken.
pub struct Storage {
    path: PathBuf,
    db: Mutex<Option<Database>>,
    failure: watch::Sender<Option<String>>,
}

impl Storage {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let db = open_database(path)?;
        Ok(Storage {
            path: path.to_owned(),
            db: Mutex::new(Some(db)),
            failure: watch::Sender::new(None),
        })
    }

    /// Why the store is broken (`None`: it works), as it changes.
    pub fn failure(&self) -> watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }

    /// Why the store is broken, if it is.
    pub fn failure_reason(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Whether an operation failed and the database waits to be reopened.
    pub fn failed(&self) -> bool {
        self.failure.borrow().is_some()
    }

    /// Closes the database and opens it again, then proves it takes a commit; on success
    /// the store works again (the caller reloads what it holds in memory from it).
    pub fn reopen(&self) -> Result<(), StorageError> {
        let mut db = self.lock();
        // redb holds a lock on the file: the old handle goes first.
        *db = None;
        let reopened = open_database(&self.path)?;
        let txn = reopened.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let count = match meta.get("reopened")? {
                Some(value) => serde_json::from_slice::<u64>(value.value())?,
                None => 0,
            };
            meta.insert(
                "reopened",
                serde_json::to_vec(&count.saturating_add(1))?.as_slice(),
            )?;
        }
        txn.commit()?;
        *db = Some(reopened);
        self.failure.send_replace(None);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Option<Database>> {
        // A panic while holding the lock leaves the handle as it was; carry on with it.
        self.db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `operation` on the open database; its failure closes it (see [`Storage`]).
    fn with_db<T>(
        &self,
        operation: impl FnOnce(&Database) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut db = self.lock();
        let Some(open) = db.as_ref() else {
            let reason = self.failure.borrow().clone().unwrap_or_default();
            return Err(StorageError::Failed(reason));
        };
        let result = operation(open);
        if let Err(error) = &result {
            *db = None;
            self.failure.send_replace(Some(error.to_string()));
        }
        result
    }

    /// Loads everything back as the store of `node`.
    pub fn load(&self, node: &str) -> Result<Replica, StorageError> {
        self.with_db(|db| load(db, node))
    }

    /// Makes `changes` durable: one transaction, committed with fsync.
    pub fn commit(&self, changes: &Changes) -> Result<(), StorageError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.with_db(|db| commit(db, changes))
    }

    /// The node's saved term and maintenance flag.
    pub fn node_state(&self) -> Result<NodeState, StorageError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            Ok(match txn.open_table(META)?.get("node")? {
                Some(value) => serde_json::from_slice(value.value())?,
                None => NodeState::default(),
            })
        })
    }

    /// Saves the node's term and maintenance flag.
    pub fn save_node_state(&self, state: NodeState) -> Result<(), StorageError> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            txn.open_table(META)?
                .insert("node", serde_json::to_vec(&state)?.as_slice())?;
            txn.commit()?;
            Ok(())
        })
    }
}

fn open_database(path: &Path) -> Result<Database, StorageError> {
    let db = Database::create(path)?;
    // Create the tables, so reads of a fresh store find them, and give a new store its
    // incarnation.
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(KEYS)?;
    txn.open_table(CONFLICTS)?;
    {
        let mut meta = txn.open_table(META)?;
        if meta.get("epoch")?.is_none() {
            let epoch = random_epoch();
            meta.insert("epoch", serde_json::to_vec(&epoch)?.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(db)
}

/// Every row of a table keyed by name, its value decoded.
fn named_rows<V: serde::de::DeserializeOwned>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
) -> Result<Vec<(String, V)>, StorageError> {
    let mut rows = Vec::new();
    for row in txn.open_table(table)?.iter()? {
        let (name, value) = row?;
        rows.push((
            name.value().to_owned(),
            serde_json::from_slice::<V>(value.value())?,
        ));
    }
    Ok(rows)
}

fn load(db: &Database, node: &str) -> Result<Replica, StorageError> {
    let txn = db.begin_read()?;
    let mut entries = Vec::new();
    for row in txn.open_table(LOG)?.iter()? {
        let (_, value) = row?;
        entries.push(serde_json::from_slice::<Entry>(value.value())?);
    }
    let keys = named_rows::<Versioned>(&txn, KEYS)?;
    let conflicts = named_rows::<Conflict>(&txn, CONFLICTS)?;
    let meta = txn.open_table(META)?;
    let hlc = match meta.get("hlc")? {
        Some(value) => serde_json::from_slice::<Hlc>(value.value())?,
        None => Hlc::default(),
    };
    let base = match meta.get("base")? {
        Some(value) => serde_json::from_slice::<LogBase>(value.value())?,
        None => LogBase::default(),
    };
    let synced = match meta.get("synced")? {
        Some(value) => serde_json::from_slice::<u64>(value.value())?,
        None => 0,
    };
    let epoch = match meta.get("epoch")? {
        Some(value) => serde_json::from_slice::<u32>(value.value())?,
        None => 0,
    };
    Ok(Replica::load(
        node,
        Saved {
            epoch,
            entries,
            keys,
            conflicts,
            hlc,
            base,
            synced,
        },
    ))
}

fn commit(db: &Database, changes: &Changes) -> Result<(), StorageError> {
    let txn = db.begin_write()?;
    if changes.reset {
        // A snapshot replaces the store (the node's own state in META stays).
        txn.delete_table(LOG)?;
        txn.delete_table(KEYS)?;
        txn.delete_table(CONFLICTS)?;
    }
    {
        let mut log = txn.open_table(LOG)?;
        if let Some(through) = changes.trim_through {
            let dropped: Vec<u64> = log
                .range(..=through)?
                .map(|row| row.map(|(key, _)| key.value()))
                .collect::<Result<_, _>>()?;
            for key in dropped {
                log.remove(key)?;
            }
        }
        if let Some(position) = changes.truncate_after {
            let dropped: Vec<u64> = log
                .range(position + 1..)?
                .map(|row| row.map(|(key, _)| key.value()))
                .collect::<Result<_, _>>()?;
            for key in dropped {
                log.remove(key)?;
            }
        }
        for entry in &changes.entries {
            log.insert(entry.position, serde_json::to_vec(entry)?.as_slice())?;
        }
        let mut keys = txn.open_table(KEYS)?;
        for (key, versioned) in &changes.keys {
            keys.insert(key.as_str(), serde_json::to_vec(versioned)?.as_slice())?;
        }
        let mut conflicts = txn.open_table(CONFLICTS)?;
        for (name, conflict) in &changes.conflicts {
            match conflict {
                Some(conflict) => {
                    conflicts.insert(name.as_str(), serde_json::to_vec(conflict)?.as_slice())?;
                }
                None => {
                    conflicts.remove(name.as_str())?;
                }
            }
        }
        let mut meta = txn.open_table(META)?;
        meta.insert("hlc", serde_json::to_vec(&changes.hlc)?.as_slice())?;
        if let Some(base) = changes.base {
            meta.insert("base", serde_json::to_vec(&base)?.as_slice())?;
        }
        if let Some(synced) = changes.synced {
            meta.insert("synced", serde_json::to_vec(&synced)?.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_is_committed_loads_back_after_a_reopen() {
        let dir = std::env::temp_dir().join(format!("standby-storage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("store.redb");
        let _ = std::fs::remove_file(&path);
        let mut replica = Replica::new("a", 1);
        {
            let storage = Storage::open(&path).expect("open");
            for (index, key) in ["users/1", "users/2", "users/1"].iter().enumerate() {
                let (_, changes) = replica.write(key, Some(json!(index)), 1_000 + index as u64);
                storage.commit(&changes).expect("commit");
            }
            let (_, changes) = replica.write("users/2", None, 2_000);
            storage.commit(&changes).expect("commit");
            // A follower's truncation drops the log's tail.
            let mut changes = Changes {
                truncate_after: Some(3),
                hlc: replica.entries_after(0, 10)[3].id.hlc,
                ..Changes::default()
            };
            changes.keys.clear();
            storage.commit(&changes).expect("truncate");
            storage
                .save_node_state(NodeState {
                    cluster: false,
                    term: 7,
                    maintenance: true,
                })
                .expect("node state");
        }
        let storage = Storage::open(&path).expect("reopen");
        let loaded = storage.load("a").expect("load");
        assert_eq!(loaded.head(), 3);
        assert_eq!(
            loaded.get("users/1").map(|v| v.value.clone()),
            Some(Some(json!(2)))
        );
        assert_eq!(loaded.get("users/1").map(|v| v.revision), Some(2));
        assert!(loaded.get("users/2").is_none(), "deleted");
        assert_eq!(
            storage.node_state().expect("state"),
            NodeState {
                cluster: false,
                term: 7,
                maintenance: true
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn trims_and_snapshots_survive_a_reopen() {
        let dir = std::env::temp_dir().join(format!("standby-storage-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("store.redb");
        let _ = std::fs::remove_file(&path);
        let mut leader = Replica::new("a", 1);
        {
            let storage = Storage::open(&path).expect("open");
            for index in 0..5u64 {
                let (_, changes) =
                    leader.write(&format!("k/{index}"), Some(json!(index)), 1_000 + index);
                storage.commit(&changes).expect("commit");
            }
            storage.commit(&leader.trim(3)).expect("trim");
        }
        let storage = Storage::open(&path).expect("reopen");
        let loaded = storage.load("a").expect("load");
        assert_eq!(
            (loaded.head(), loaded.base().position, loaded.retained()),
            (5, 3, 2)
        );
        assert_eq!(
            loaded.get("k/0").and_then(|v| v.value.clone()),
            Some(json!(0))
        );
        // A follower with other data takes the leader's snapshot: its store is replaced.
        drop(storage);
        let follower_path = dir.join("follower.redb");
        let _ = std::fs::remove_file(&follower_path);
        let storage = Storage::open(&follower_path).expect("open follower");
        assert!(!storage.failed());
        let mut follower = Replica::new("b", 2);
        let (_, changes) = follower.write("only/here", Some(json!(true)), 900);
        storage.commit(&changes).expect("commit");
        // In chunks of two keys: nothing changes on the follower until the last.
        let base = loaded.snapshot_base();
        let mut install = crate::store::replica::SnapshotInstall::default();
        let mut cursor = Some(crate::store::replica::SnapshotCursor::Keys(None));
        while let Some(at) = cursor {
            let (chunk, next) = loaded.snapshot_chunk(base, &at, 2);
            let crate::store::replica::ReplMessage::Snapshot {
                base,
                keys,
                conflicts,
                more,
            } = chunk
            else {
                panic!("a snapshot chunk");
            };
            assert!(keys.len() <= 2);
            let last = install.add(base, keys, conflicts, more).expect("chunk");
            assert_eq!(last, next.is_none());
            cursor = next;
        }
        storage
            .commit(&install.install(&mut follower))
            .expect("install");
        let reloaded = storage.load("b").expect("load");
        assert_eq!(reloaded.head(), 5);
        assert!(reloaded.get("only/here").is_none());
        assert_eq!(reloaded.list("k/").count(), 5);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
