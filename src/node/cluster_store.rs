//! The configuration store in cluster mode: the same requests as the pair's store task
//! (`store::api`), answered from etcd. Every write is a transaction fenced by the leader
//! key: it lands only while the key's create revision is the writer's term, so a deposed
//! node's write fails rather than overwrite its successor's. etcd orders every write, so
//! there are no splits to merge and no conflicts.

use crate::cluster::etcd::{Etcd, EtcdError, StoredValue};
use crate::store::api::{check_key, Request, StoreError, WriteAck, MAX_VALUE};
use crate::store::replica::{EntryId, Hlc, Versioned};
use tokio::sync::{mpsc, watch};
use tracing::{debug, Instrument};

/// What a write needs to know of the election: the term while this node acts as active,
/// and who leads otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Fence {
    /// This node's term while it acts as the active node.
    pub term: Option<u64>,
    /// The leader as last seen.
    pub leader: Option<String>,
}

/// Answers store requests from etcd, each in its own task (a slow etcd delays only that
/// request), until the request channel closes.
pub(super) async fn serve(
    etcd: Etcd,
    mut requests: mpsc::Receiver<Request>,
    fence: watch::Receiver<Fence>,
    node: String,
) {
    while let Some(request) = requests.recv().await {
        let (etcd, fence, node) = (etcd.clone(), fence.borrow().clone(), node.clone());
        tokio::spawn(answer(etcd, request, fence, node).in_current_span());
    }
}

async fn answer(etcd: Etcd, request: Request, fence: Fence, node: String) {
    match request {
        Request::Get { key, reply } => {
            let answer = match check_key(&key) {
                Ok(()) => etcd
                    .store_get(&key)
                    .await
                    .map(|v| v.map(versioned))
                    .map_err(read_error),
                Err(error) => Err(error),
            };
            let _ = reply.send(answer);
        }
        Request::List { prefix, reply } => {
            let answer = etcd
                .store_list(&prefix)
                .await
                .map_err(read_error)
                .map(|list| {
                    list.into_iter()
                        .map(|(key, value)| (key, versioned(value)))
                        .collect()
                });
            let _ = reply.send(answer);
        }
        Request::Write { key, value, reply } => {
            let _ = reply.send(write(&etcd, &key, value, &fence, &node).await);
        }
        // etcd orders every write: nothing is ever merged, so nothing conflicts.
        Request::Conflicts { reply } => {
            let _ = reply.send(Ok(Vec::new()));
        }
        Request::ClearConflicts { reply } => {
            let _ = reply.send(Err(StoreError::Invalid(
                "there are no conflicts in cluster mode: etcd orders every write".to_owned(),
            )));
        }
    }
}

async fn write(
    etcd: &Etcd,
    key: &str,
    value: Option<serde_json::Value>,
    fence: &Fence,
    node: &str,
) -> Result<WriteAck, StoreError> {
    check_key(key)?;
    if let Some(value) = &value {
        let size = serde_json::to_vec(value).map_or(usize::MAX, |bytes| bytes.len());
        if size > MAX_VALUE {
            return Err(StoreError::Invalid(format!(
                "value of {size} bytes exceeds {MAX_VALUE}"
            )));
        }
    }
    let Some(term) = fence.term else {
        return Err(StoreError::NotActive {
            active_node: fence.leader.clone(),
        });
    };
    let at_unix_ms = super::driver::unix_ms();
    match etcd.store_write(key, value, (node, at_unix_ms, term)).await {
        Ok(Some(stored)) => Ok(WriteAck {
            key: key.to_owned(),
            revision: stored.version,
            id: entry_id(&stored),
            position: stored.mod_revision,
            replicated: true,
        }),
        Ok(None) => {
            debug!(
                term,
                key, "store write fenced off: this node no longer leads"
            );
            Err(StoreError::NotActive { active_node: None })
        }
        // The transaction may have landed before the answer was lost.
        Err(EtcdError::Timeout(_)) => Err(StoreError::Unconfirmed),
        Err(error) => Err(StoreError::Storage(error.to_string())),
    }
}

fn read_error(error: EtcdError) -> StoreError {
    StoreError::Storage(error.to_string())
}

fn entry_id(stored: &StoredValue) -> EntryId {
    EntryId {
        hlc: Hlc {
            ms: stored.at_unix_ms,
            counter: 0,
        },
        writer: stored.writer.clone(),
        epoch: 0,
    }
}

fn versioned(stored: StoredValue) -> Versioned {
    Versioned {
        id: entry_id(&stored),
        revision: stored.version,
        value: Some(stored.value),
    }
}
