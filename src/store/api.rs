//! How the rest of the node talks to the store's task: requests with a reply channel,
//! the answers, and what makes a key or value acceptable.

use super::replica::{Conflict, EntryId, Versioned};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// Longest key accepted, in bytes.
pub const MAX_KEY: usize = 512;
/// Largest value accepted, as JSON text.
pub const MAX_VALUE: usize = 64 * 1024;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum StoreError {
    /// This node is not active: writes go to the active node.
    #[error("this node is not active; write to the active node ({})", active_node.as_deref().unwrap_or("none known"))]
    NotActive {
        /// The active node, if one is known.
        active_node: Option<String>,
    },
    /// A switchover is in progress: writes wait until it is done.
    #[error("writes are paused for a switchover; retry in a moment")]
    Paused,
    /// The node stopped being active before the standby confirmed the write. It is durable
    /// here and will be merged, but it was not acknowledged.
    #[error("the node stopped being active before the write was confirmed; it may or may not take effect")]
    Unconfirmed,
    /// The key or value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The disk failed.
    #[error("storage failed: {0}")]
    Storage(String),
    /// The store's task is gone (the node is shutting down).
    #[error("the store is shutting down")]
    Closed,
}

/// An acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteAck {
    /// The key.
    pub key: String,
    /// The key's revision after the write.
    pub revision: u64,
    /// The write's id (its hybrid logical clock stamp and writer).
    pub id: EntryId,
    /// Its log position on the active node.
    pub position: u64,
    /// Whether the standby holds it too (false: the node was alone).
    pub replicated: bool,
}

/// A request to the store's task.
#[derive(Debug)]
pub enum Request {
    /// One key.
    Get {
        /// The key.
        key: String,
        /// The answer.
        reply: oneshot::Sender<Result<Option<Versioned>, StoreError>>,
    },
    /// Every key under a prefix.
    List {
        /// The prefix ("" for all).
        prefix: String,
        /// The answer.
        reply: oneshot::Sender<Result<Vec<(String, Versioned)>, StoreError>>,
    },
    /// Set (`Some`) or delete (`None`) a key.
    Write {
        /// The key.
        key: String,
        /// The value.
        value: Option<Value>,
        /// The answer, once acknowledged.
        reply: oneshot::Sender<Result<WriteAck, StoreError>>,
    },
    /// The conflict list.
    Conflicts {
        /// The answer.
        reply: oneshot::Sender<Result<Vec<Conflict>, StoreError>>,
    },
    /// Empty the conflict list.
    ClearConflicts {
        /// The answer, once acknowledged.
        reply: oneshot::Sender<Result<WriteAck, StoreError>>,
    },
}

/// A cheap, cloneable handle to the store's task.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    requests: mpsc::Sender<Request>,
}

impl StoreHandle {
    /// A handle sending to `requests`.
    pub fn new(requests: mpsc::Sender<Request>) -> Self {
        StoreHandle { requests }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)
    }

    /// One key's current version.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        check_key(key)?;
        self.ask(|reply| Request::Get {
            key: key.to_owned(),
            reply,
        })
        .await?
    }

    /// Every key under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.ask(|reply| Request::List {
            prefix: prefix.to_owned(),
            reply,
        })
        .await?
    }

    /// Sets or deletes a key; answers once acknowledged.
    pub async fn write(&self, key: &str, value: Option<Value>) -> Result<WriteAck, StoreError> {
        check_key(key)?;
        if let Some(value) = &value {
            let size = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
            if size > MAX_VALUE {
                return Err(StoreError::Invalid(format!(
                    "the value is {size} bytes of JSON; at most {MAX_VALUE}"
                )));
            }
        }
        self.ask(|reply| Request::Write {
            key: key.to_owned(),
            value,
            reply,
        })
        .await?
    }

    /// The conflict list.
    pub async fn conflicts(&self) -> Result<Vec<Conflict>, StoreError> {
        self.ask(|reply| Request::Conflicts { reply }).await?
    }

    /// Empties the conflict list.
    pub async fn clear_conflicts(&self) -> Result<WriteAck, StoreError> {
        self.ask(|reply| Request::ClearConflicts { reply }).await?
    }
}

/// A key is a path: segments of letters, digits, `-`, `_`, `.`, `@`, `+`, `:` joined by
/// single slashes, with no empty, `.` or `..` segment.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let invalid = |why: &str| Err(StoreError::Invalid(format!("key {key:?}: {why}")));
    if key.is_empty() {
        return invalid("empty");
    }
    if key.len() > MAX_KEY {
        return invalid(&format!("longer than {MAX_KEY} bytes"));
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return invalid("empty path segment (leading, trailing or double slash)");
        }
        if segment == "." || segment == ".." {
            return invalid("`.` and `..` are not segments");
        }
        if let Some(bad) = segment
            .chars()
            .find(|c| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+' | ':')))
        {
            return invalid(&format!(
                "{bad:?} is not allowed (letters, digits, - _ . @ + : and /)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_paths() {
        for good in ["users/1234/forwarding", "a", "sip:trunk/b.c-d_e@f+g"] {
            assert_eq!(check_key(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            "a b",
            "a?b",
            &"x".repeat(600),
        ] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
