//! The etcd calls of cluster mode, each bounded by a deadline: a call that etcd does not
//! answer in time is an error, never a wait that holds the election up.

use super::election::Leader;
use super::{Handover, LeaderValue, MemberState};
use crate::config::ClusterConfig;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions, WatchStream,
};
use std::future::Future;
use std::time::Duration;

/// Why an etcd call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// The TLS files could not be read.
    #[error("etcd TLS file {path}: {reason}")]
    Tls {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The call failed.
    #[error("etcd: {0}")]
    Call(String),
    /// The call was not answered in time.
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// etcd says the lease does not exist (expired or revoked).
    #[error("etcd: the lease is gone")]
    LeaseGone,
    /// A value under our prefix is not what we write there.
    #[error("etcd key {key}: {reason}")]
    Garbled {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<etcd_client::Error> for EtcdError {
    fn from(error: etcd_client::Error) -> Self {
        EtcdError::Call(error.to_string())
    }
}

/// A connected etcd client and this cluster's keys.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    folder: String,
    ttl: Duration,
    /// The deadline of every call.
    within: Duration,
}

/// A stored value and its version, as the store API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredValue {
    /// The value.
    pub value: serde_json::Value,
    /// Who wrote it, and when (ms since the Unix epoch).
    pub writer: String,
    /// When.
    pub at_unix_ms: u64,
    /// Writes the key has had since it was created.
    pub version: u64,
    /// etcd's revision of the write.
    pub mod_revision: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredJson {
    value: serde_json::Value,
    writer: String,
    at_unix_ms: u64,
}

/// Deadline of a call: a quarter of the lease, at least 200 ms.
fn call_deadline(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_millis(200))
}

/// Runs one etcd call named `name` within `within`, counting it (`standby_etcd_*`).
async fn bounded<T>(
    name: &'static str,
    within: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    let started = tokio::time::Instant::now();
    let (answer, result) = match tokio::time::timeout(within, call).await {
        Ok(Ok(value)) => (Ok(value), "ok"),
        Ok(Err(error)) => (Err(EtcdError::from(error)), "error"),
        Err(_) => (Err(EtcdError::Timeout(within)), "timeout"),
    };
    crate::telemetry::etcd_call(name, result, started.elapsed());
    answer
}

fn positive(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

/// A term or revision as etcd compares it (beyond i64, no key has it).
fn revision(term: u64) -> i64 {
    i64::try_from(term).unwrap_or(i64::MAX)
}

/// The leader key as the `get` of a transaction's other branch read it.
fn leader_read(key: &str, answer: &etcd_client::TxnResponse) -> Result<Option<Leader>, EtcdError> {
    let read = answer
        .op_responses()
        .into_iter()
        .find_map(|response| match response {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| leader_of(key, kv)),
            _ => None,
        });
    read.transpose()
}

impl Etcd {
    /// Connects (lazily: the first call finds out whether etcd answers).
    pub async fn connect(config: &ClusterConfig) -> Result<Etcd, EtcdError> {
        let within = call_deadline(config.lease_ttl);
        let mut options = ConnectOptions::new()
            .with_connect_timeout(within)
            .with_timeout(within)
            .with_keep_alive(Duration::from_secs(1), within)
            .with_keep_alive_while_idle(true)
            // A member cut off from etcd's quorum must not be served a stale read.
            .with_require_leader(true);
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        let client = bounded(
            "connect",
            within * 4,
            Client::connect(&config.endpoints, Some(options)),
        )
        .await?;
        Ok(Etcd {
            client,
            folder: config.key_folder(),
            ttl: config.lease_ttl,
            within,
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.folder)
    }

    /// The leader key.
    pub fn leader_key(&self) -> String {
        self.key("leader")
    }

    /// Grants a lease of the configured TTL.
    pub async fn grant(&self) -> Result<i64, EtcdError> {
        let secs = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let mut client = self.client.clone();
        Ok(
            bounded("grant", self.within, client.lease_grant(secs, None))
                .await?
                .id(),
        )
    }

    /// Revokes a lease (its keys go with it).
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let mut client = self.client.clone();
        bounded("revoke", self.within, client.lease_revoke(lease))
            .await
            .map(drop)
    }

    /// Opens the keep-alive stream of a lease (which renews it once); [`EtcdError::LeaseGone`]
    /// if etcd no longer has it.
    pub async fn keeper(&self, lease: i64) -> Result<Keeper, EtcdError> {
        let mut client = self.client.clone();
        let opened = bounded("keeper", self.within, client.lease_keep_alive(lease)).await;
        let (keeper, stream) = match opened {
            Ok(opened) => opened,
            // etcd-client's words when etcd answers the first keep-alive with TTL 0.
            Err(EtcdError::Call(why)) if why.contains("lease not found") => {
                return Err(EtcdError::LeaseGone)
            }
            Err(error) => return Err(error),
        };
        Ok(Keeper {
            lease,
            keeper,
            stream,
            within: self.within,
        })
    }

    /// The leader key now, and the revision of that read (watch from the next one).
    pub async fn leader(&self) -> Result<(Option<Leader>, i64), EtcdError> {
        let mut client = self.client.clone();
        let key = self.leader_key();
        let answer = bounded("leader", self.within, client.get(key.as_str(), None)).await?;
        let revision = answer.header().map_or(0, |h| h.revision());
        let leader = answer
            .kvs()
            .first()
            .map(|kv| leader_of(&key, kv))
            .transpose()?;
        Ok((leader, revision))
    }

    /// Watches the leader key from `revision` on.
    pub async fn watch_leader(&self, revision: i64) -> Result<WatchStream, EtcdError> {
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_start_revision(revision);
        bounded(
            "watch",
            self.within,
            client.watch(self.leader_key(), Some(options)),
        )
        .await
    }

    /// Creates the leader key with `lease` if it is absent; the key as it is afterwards, the
    /// etcd revision of the answer, and whether this transaction created it.
    pub async fn campaign(
        &self,
        lease: i64,
        value: &LeaderValue,
    ) -> Result<(Option<Leader>, i64, bool), EtcdError> {
        let key = self.leader_key();
        let json = serde_json::to_vec(value).unwrap_or_default();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                json,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let mut client = self.client.clone();
        let answer = bounded("campaign", self.within, client.txn(txn)).await?;
        let at = answer.header().map_or(0, |h| h.revision());
        if answer.succeeded() {
            let leader = Leader {
                node: value.node.clone(),
                revision: positive(at),
                lease,
                targets: value.targets.clone(),
                written: positive(at),
                stale_after: value.stale_after_ms.map(Duration::from_millis),
            };
            return Ok((Some(leader), at, true));
        }
        Ok((leader_read(&key, &answer)?, at, false))
    }

    /// Rewrites the leader key with `value` on `lease` if its create revision is `term`:
    /// `Ok(false)` when it is not (the key went, or is another tenure's).
    pub async fn rewrite(
        &self,
        term: u64,
        lease: i64,
        value: &LeaderValue,
    ) -> Result<bool, EtcdError> {
        let key = self.leader_key();
        let json = serde_json::to_vec(value).unwrap_or_default();
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                revision(term),
            )])
            .and_then([TxnOp::put(
                key.as_str(),
                json,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let mut client = self.client.clone();
        // Twice the usual deadline: an answer extends acting until 3/4 of a lease time after
        // the send, so a late one still counts, and the election sends a second rewrite
        // meanwhile if this one is slow (a slow etcd is not a dead leader).
        let answer = bounded("rewrite", self.within * 2, client.txn(txn)).await?;
        Ok(answer.succeeded())
    }

    /// Deletes the leader key of `term` if its mod revision is still `written` (its holder
    /// did not rewrite it since); the key as it is afterwards, and the etcd revision of the
    /// answer.
    pub async fn depose(
        &self,
        term: u64,
        written: u64,
    ) -> Result<(Option<Leader>, i64), EtcdError> {
        let key = self.leader_key();
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.as_str(), CompareOp::Equal, revision(term)),
                Compare::mod_revision(key.as_str(), CompareOp::Equal, revision(written)),
            ])
            .and_then([TxnOp::delete(key.as_str(), None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let mut client = self.client.clone();
        let answer = bounded("depose", self.within, client.txn(txn)).await?;
        let at = answer.header().map_or(0, |h| h.revision());
        Ok((leader_read(&key, &answer)?, at))
    }

    /// The key a switchover to a named member writes in its resigning transaction.
    pub fn handover_key(&self) -> String {
        self.key("handover")
    }

    /// What a resigning member wrote beside its delete: `revision`, the one written at that
    /// revision (the delete a watch reported), read as of then; `None`, whatever is there now
    /// (a fresh read of a vacant key; a named member's record lives one lease time).
    pub async fn handover(&self, revision: Option<i64>) -> Result<Option<Handover>, EtcdError> {
        let mut client = self.client.clone();
        let key = self.handover_key();
        // As of the delete's revision: a resigning member that shuts down revokes its lease,
        // and with it the record, right after.
        let options = revision.map(|at| GetOptions::new().with_revision(at));
        let answer = bounded("handover", self.within, client.get(key.as_str(), options)).await?;
        Ok(answer
            .kvs()
            .first()
            .filter(|kv| revision.is_none_or(|at| kv.mod_revision() == at))
            .and_then(|kv| serde_json::from_slice::<Handover>(kv.value()).ok()))
    }

    /// Deletes the leader key if its create revision is `term` (ours), writing in the same
    /// transaction the handover key: the term given up and, with `to`, which member should
    /// take over. A named member's record has a lease of its own, so it goes after one lease
    /// time; otherwise it hangs on ours (`own_lease`) and goes with it.
    pub async fn resign(
        &self,
        term: u64,
        to: Option<&str>,
        own_lease: Option<i64>,
    ) -> Result<(), EtcdError> {
        let key = self.leader_key();
        // Without a lease for the record, the switchover still happens, only to whoever
        // campaigns first.
        let (handover_lease, to) = match to {
            Some(to) => match self.grant().await {
                Ok(lease) => (Some(lease), Some(to)),
                // On our own lease the record could outlive the switchover by far: it only
                // says the term then.
                Err(_) => (own_lease, None),
            },
            None => (own_lease, None),
        };
        let delete = TxnOp::delete(key.as_str(), None);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                revision(term),
            )])
            .and_then(match handover_lease {
                Some(lease) => {
                    let handover = Handover {
                        to: to.map(str::to_owned),
                        term,
                    };
                    let handover = serde_json::to_vec(&handover).unwrap_or_default();
                    let options = PutOptions::new().with_lease(lease);
                    vec![
                        delete,
                        TxnOp::put(self.handover_key(), handover, Some(options)),
                    ]
                }
                None => vec![delete],
            });
        let mut client = self.client.clone();
        bounded("resign", self.within, client.txn(txn))
            .await
            .map(drop)
    }

    /// Settles the cluster's term floor for a node whose saved term is `saved`: terms are
    /// reported as floor + the leader key's create revision, so the floor must be at least
    /// `saved` minus the revision every term from now on will have at least (the current
    /// leader key's, or etcd's revision when the key is vacant: a later key is created later).
    /// A term saved in pair mode (`cluster` false) belonged to another tenure than the
    /// current leader's: the floor goes one higher. Raised in a compare-and-swap on the key's
    /// version, retried when another member raced us; the floor now.
    pub async fn settle_term_floor(&self, saved: u64, cluster: bool) -> Result<u64, EtcdError> {
        let key = self.key("term_floor");
        for _ in 0..8 {
            let (floor, version) = self.read_floor().await?;
            let (leader, at) = self.leader().await?;
            let needed = match leader {
                None => saved.saturating_sub(positive(at)),
                Some(leader) if cluster => saved.saturating_sub(leader.revision),
                Some(leader) => saved.saturating_add(1).saturating_sub(leader.revision),
            };
            if floor >= needed {
                return Ok(floor);
            }
            let txn = Txn::new()
                .when([Compare::version(key.as_str(), CompareOp::Equal, version)])
                .and_then([TxnOp::put(key.as_str(), needed.to_string(), None)]);
            let mut client = self.client.clone();
            let answer = bounded("term_floor", self.within, client.txn(txn)).await?;
            if answer.succeeded() {
                return Ok(needed);
            }
        }
        Err(EtcdError::Call(
            "the term floor kept changing under us".to_owned(),
        ))
    }

    /// The floor and the key's version (0: absent).
    async fn read_floor(&self) -> Result<(u64, i64), EtcdError> {
        let key = self.key("term_floor");
        let mut client = self.client.clone();
        let answer = bounded("term_floor", self.within, client.get(key.as_str(), None)).await?;
        let Some(kv) = answer.kvs().first() else {
            return Ok((0, 0));
        };
        // A term beyond etcd's own revisions (i64) would leave no room to grow.
        let floor = std::str::from_utf8(kv.value())
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .filter(|floor| i64::try_from(*floor).is_ok())
            .ok_or_else(|| {
                EtcdError::Call(format!(
                    "{key} does not hold a term (0 to 2^63-1); delete it to let the members set it again"
                ))
            })?;
        Ok((floor, kv.version()))
    }

    /// Publishes this member's state, attached to its lease.
    pub async fn publish_member(&self, lease: i64, state: &MemberState) -> Result<(), EtcdError> {
        let key = self.key(&format!("members/{}", state.node));
        let json = serde_json::to_vec(state).unwrap_or_default();
        let mut client = self.client.clone();
        let options = PutOptions::new().with_lease(lease);
        bounded("publish", self.within, client.put(key, json, Some(options)))
            .await
            .map(drop)
    }

    /// Every member's published state.
    pub async fn members(&self) -> Result<Vec<MemberState>, EtcdError> {
        let prefix = self.key("members/");
        let mut client = self.client.clone();
        let options = GetOptions::new().with_prefix();
        let answer = bounded(
            "members",
            self.within,
            client.get(prefix.as_str(), Some(options)),
        )
        .await?;
        Ok(answer
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    /// One key of the configuration store.
    pub async fn store_get(&self, key: &str) -> Result<Option<StoredValue>, EtcdError> {
        let full = self.key(&format!("store/{key}"));
        let mut client = self.client.clone();
        let answer = bounded("store_get", self.within, client.get(full.as_str(), None)).await?;
        answer
            .kvs()
            .first()
            .map(|kv| stored_of(&full, kv))
            .transpose()
    }

    /// Every key of the store under `prefix`, with the key's name in the store.
    pub async fn store_list(&self, prefix: &str) -> Result<Vec<(String, StoredValue)>, EtcdError> {
        let folder = self.key("store/");
        let full = format!("{folder}{prefix}");
        let mut client = self.client.clone();
        let options = GetOptions::new().with_prefix();
        let answer = bounded(
            "store_list",
            self.within,
            client.get(full.as_str(), Some(options)),
        )
        .await?;
        answer
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let value = stored_of(&key, kv)?;
                Ok((key.strip_prefix(&folder).unwrap_or(&key).to_owned(), value))
            })
            .collect()
    }

    /// Writes (`Some`) or deletes (`None`) a store key, only while the leader key's create
    /// revision is `term`: a node deposed meanwhile writes nothing. `Ok(None)`: fenced off.
    pub async fn store_write(
        &self,
        key: &str,
        value: Option<serde_json::Value>,
        (writer, at_unix_ms, term): (&str, u64, u64),
    ) -> Result<Option<StoredValue>, EtcdError> {
        let full = self.key(&format!("store/{key}"));
        let fence = Compare::create_revision(self.leader_key(), CompareOp::Equal, revision(term));
        let operation = match &value {
            Some(value) => {
                let json = StoredJson {
                    value: value.clone(),
                    writer: writer.to_owned(),
                    at_unix_ms,
                };
                TxnOp::put(
                    full.as_str(),
                    serde_json::to_vec(&json).unwrap_or_default(),
                    None,
                )
            }
            None => TxnOp::delete(full.as_str(), None),
        };
        let txn = Txn::new()
            .when([fence])
            .and_then([operation, TxnOp::get(full.as_str(), None)]);
        let mut client = self.client.clone();
        let answer = bounded("store_write", self.within, client.txn(txn)).await?;
        if !answer.succeeded() {
            return Ok(None);
        }
        let revision = positive(answer.header().map_or(0, |h| h.revision()));
        let written = answer
            .op_responses()
            .into_iter()
            .find_map(|response| match response {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| stored_of(&full, kv)),
                _ => None,
            });
        match written.transpose()? {
            Some(stored) => Ok(Some(stored)),
            // A delete: nothing to read back.
            None => Ok(Some(StoredValue {
                value: serde_json::Value::Null,
                writer: writer.to_owned(),
                at_unix_ms,
                version: 0,
                mod_revision: revision,
            })),
        }
    }
}

/// A lease's keep-alive stream.
pub struct Keeper {
    lease: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    within: Duration,
}

impl Keeper {
    /// The lease.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Sends one keep-alive and waits for its answer: `Ok(true)` renewed, `Ok(false)` the
    /// lease is gone.
    pub async fn renew(&mut self) -> Result<bool, EtcdError> {
        bounded("keep_alive", self.within, self.keeper.keep_alive()).await?;
        match bounded("keep_alive_answer", self.within, self.stream.message()).await? {
            Some(answer) => Ok(answer.ttl() > 0),
            None => Err(EtcdError::Call("the keep-alive stream ended".to_owned())),
        }
    }
}

/// What a watch event says of the leader key, and the etcd revision it is true at (a
/// delete event's key carries the revision of the delete).
pub fn leader_event(
    key: &str,
    event: &etcd_client::Event,
) -> Result<(Option<Leader>, i64), EtcdError> {
    let at = event.kv().map_or(0, KeyValue::mod_revision);
    match (event.event_type(), event.kv()) {
        (EventType::Put, Some(kv)) => Ok((Some(leader_of(key, kv)?), at)),
        _ => Ok((None, at)),
    }
}

fn leader_of(key: &str, kv: &KeyValue) -> Result<Leader, EtcdError> {
    let value: LeaderValue =
        serde_json::from_slice(kv.value()).map_err(|e| EtcdError::Garbled {
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(Leader {
        node: value.node,
        revision: positive(kv.create_revision()),
        lease: kv.lease(),
        targets: value.targets,
        written: positive(kv.mod_revision()),
        stale_after: value.stale_after_ms.map(Duration::from_millis),
    })
}

fn stored_of(key: &str, kv: &KeyValue) -> Result<StoredValue, EtcdError> {
    let json: StoredJson = serde_json::from_slice(kv.value()).map_err(|e| EtcdError::Garbled {
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(StoredValue {
        value: json.value,
        writer: json.writer,
        at_unix_ms: json.at_unix_ms,
        version: positive(kv.version()),
        mod_revision: positive(kv.mod_revision()),
    })
}

fn tls_options(tls: &crate::config::EtcdTls) -> Result<TlsOptions, EtcdError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| EtcdError::Tls {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        options = options.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(options)
}
