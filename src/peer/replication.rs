//! The store's task: owns the [`Replica`] and its [`Storage`], answers the admin API's
//! requests, and runs replication with the peer over a `Channel::Replication` connection of
//! the peer link. Only bytes and time move here; every decision is the replica's.
//!
//! - The active node (leader) accepts writes. A write is answered once it is durable here
//!   and, while the peer is in contact, once the standby acknowledged it; alone, once
//!   durable here (counted as unreplicated).
//! - The standby (follower) dials the active node and runs the session described in
//!   [`crate::store::replica`]: probe, upload of its own suffix, then the leader's log.

use super::frame::{self, PeerMessage};
use crate::store::api::{Request, StoreError, WriteAck};
use crate::store::replica::{Changes, Op, ReplMessage, Replica};
use crate::store::storage::Storage;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// Largest replication frame: a chunk of entries with values up to 64 KiB each.
pub const MAX_REPLICATION_FRAME: usize = 32 * 1024 * 1024;
/// Entries per `Append` or `Upload` message.
const CHUNK: usize = 256;
/// A write waiting for the standby's acknowledgement longer than this is answered as
/// unconfirmed (it stays durable here and will be merged).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// Log entries kept after trimming, and how many more trigger the next trim.
const KEEP_ENTRIES: usize = 10_000;
const TRIM_BATCH: usize = 1_000;
/// A node alone trims beyond what its peer holds only past this many entries.
const MAX_RETAINED_ALONE: usize = 1_000_000;
/// Wait between attempts to open a replication connection.
const REDIAL: Duration = Duration::from_millis(200);

/// What the store needs to know of the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreRole {
    /// This node is active: it takes writes and leads replication.
    pub leader: bool,
    /// Writes are accepted now (not paused for a switchover).
    pub accepting_writes: bool,
    /// The peer is in contact (heard within `peer_dead_after`).
    pub peer_in_contact: bool,
    /// Same protocol major version: replication may run (R13).
    pub replication_allowed: bool,
    /// The active node, if known (for "write there instead").
    pub active_node: Option<String>,
}

/// A replication connection, whichever way it was opened.
pub trait ReplicationStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ReplicationStream for T {}

/// Boxed stream.
pub type BoxedStream = Box<dyn ReplicationStream>;

/// Opens a replication connection to the peer.
pub type Dialer = Arc<
    dyn Fn() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<BoxedStream>> + Send>,
        > + Send
        + Sync,
>;

enum Phase {
    /// Leader: waiting for the follower's probe.
    AwaitProbe,
    /// Leader: merging the follower's upload.
    Merging { common: u64, follower_base: u64 },
    /// Leader: the follower takes every new entry.
    Streaming { acked: u64 },
    /// Follower: probe sent.
    Probing,
    /// Follower: own suffix uploaded, waiting for the leader's log.
    Uploaded,
    /// Follower: following the leader's log.
    Following,
}

struct Session {
    id: u64,
    to_peer: mpsc::UnboundedSender<ReplMessage>,
    phase: Phase,
}

enum Event {
    Message(ReplMessage),
    Closed,
}

struct Pending {
    position: u64,
    ack: WriteAck,
    reply: oneshot::Sender<Result<WriteAck, StoreError>>,
    since: tokio::time::Instant,
}

/// The store's task.
pub struct StoreTask {
    replica: Replica,
    storage: Arc<Storage>,
    role: StoreRole,
    session: Option<Session>,
    next_session: u64,
    pending: Vec<Pending>,
    position: watch::Sender<u64>,
    broken: Option<String>,
}

/// Wall-clock milliseconds, for hybrid logical clock stamps.
#[allow(clippy::disallowed_methods)] // the IO layer is where the wall clock is read
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl StoreTask {
    /// A task over a loaded replica; it reports its store position on `position`.
    pub fn new(replica: Replica, storage: Arc<Storage>, position: watch::Sender<u64>) -> Self {
        StoreTask {
            replica,
            storage,
            role: StoreRole::default(),
            session: None,
            next_session: 1,
            pending: Vec::new(),
            position,
            broken: None,
        }
    }

    /// Runs until `requests` closes (the node is shutting down).
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut role: watch::Receiver<StoreRole>,
        mut inbound: mpsc::Receiver<BoxedStream>,
        dialer: Option<Dialer>,
    ) {
        let (events_tx, mut events) = mpsc::unbounded_channel::<(u64, Event)>();
        // A dial reports its stream, or None when it failed.
        let (dialed_tx, mut dialed) = mpsc::channel::<Option<BoxedStream>>(1);
        let mut dialing = false;
        let mut redial = tokio::time::interval(REDIAL);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.role = role.borrow_and_update().clone();
        self.report_position();
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(request) => self.request(request).await,
                    None => return,
                },
                changed = role.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let new = role.borrow_and_update().clone();
                    self.role_changed(new);
                }
                Some(stream) = inbound.recv() => {
                    if self.role.leader && self.role.replication_allowed {
                        self.start_session(stream, Phase::AwaitProbe, &events_tx);
                        info!("store: the standby opened replication");
                    } else {
                        debug!("store: refused a replication connection (not active)");
                    }
                }
                Some(stream) = dialed.recv() => {
                    dialing = false;
                    if let (Some(stream), true) = (stream, self.wants_to_follow() && self.session.is_none()) {
                        self.start_session(stream, Phase::Probing, &events_tx);
                        let probe = self.replica.probe();
                        self.send(probe);
                    }
                }
                Some((id, event)) = events.recv() => self.event(id, event).await,
                _ = redial.tick() => {
                    self.expire_pending();
                    self.trim_log();
                    if let (Some(dialer), false) = (&dialer, dialing) {
                        if self.wants_to_follow() && self.session.is_none() {
                            dialing = true;
                            let (dialer, dialed_tx) = (dialer.clone(), dialed_tx.clone());
                            tokio::spawn(async move {
                                let stream = dialer()
                                    .await
                                    .map_err(|error| debug!(%error, "store: cannot open replication to the active node"))
                                    .ok();
                                let _ = dialed_tx.send(stream).await;
                            });
                        }
                    }
                }
            }
        }
    }

    /// Keeps the log at about `KEEP_ENTRIES`, trimming only what the peer holds: the
    /// follower's acknowledged position on the leader, the followed position on the
    /// follower. A node alone keeps its whole log, as it may have to upload it.
    fn trim_log(&mut self) {
        if self.replica.retained() <= KEEP_ENTRIES + TRIM_BATCH {
            return;
        }
        let holds = match (&self.session, self.role.leader) {
            (
                Some(Session {
                    phase: Phase::Streaming { acked },
                    ..
                }),
                true,
            ) => *acked,
            (_, false) => self.replica.synced(),
            // Alone for very long: bound the disk anyway. A later upload then sends the
            // state instead of the trimmed entries (nothing is lost; a stale version may be
            // listed as a conflict).
            _ if self.replica.retained() > MAX_RETAINED_ALONE => u64::MAX,
            _ => return,
        };
        let through = holds.min(self.replica.head().saturating_sub(KEEP_ENTRIES as u64));
        let changes = self.replica.trim(through);
        if !changes.is_empty() && self.commit(&changes).is_ok() {
            info!(through, "store: log trimmed");
        }
    }

    fn wants_to_follow(&self) -> bool {
        !self.role.leader && self.role.peer_in_contact && self.role.replication_allowed
    }

    fn report_position(&self) {
        // The follower reports its head only while it follows the leader's log: before
        // that its own suffix may hold entries the leader lacks, and R9/R11 must not count
        // it as caught up.
        let position = match (&self.session, self.role.leader) {
            (_, true) => self.replica.head(),
            (
                Some(Session {
                    phase: Phase::Following,
                    ..
                }),
                false,
            ) => self.replica.head(),
            _ => 0,
        };
        self.position.send_if_modified(|current| {
            let changed = *current != position;
            *current = position;
            changed
        });
    }

    fn commit(&mut self, changes: &Changes) -> Result<(), StoreError> {
        if let Some(reason) = &self.broken {
            return Err(StoreError::Storage(reason.clone()));
        }
        // redb's commit blocks on fsync: let the runtime move other tasks off this thread.
        let storage = self.storage.clone();
        let result = tokio::task::block_in_place(|| storage.commit(changes));
        result.map_err(|error| {
            let reason = error.to_string();
            warn!(%reason, "store: the disk failed; no further writes are accepted");
            self.broken = Some(reason.clone());
            StoreError::Storage(reason)
        })
    }

    fn start_session(
        &mut self,
        stream: BoxedStream,
        phase: Phase,
        events: &mpsc::UnboundedSender<(u64, Event)>,
    ) {
        let id = self.next_session;
        self.next_session += 1;
        let (mut reader, mut writer) = tokio::io::split(stream);
        let (to_peer, mut outgoing) = mpsc::unbounded_channel::<ReplMessage>();
        let events_in = events.clone();
        tokio::spawn(async move {
            let mut buffer = Vec::new();
            loop {
                match frame::read_message(&mut reader, &mut buffer, MAX_REPLICATION_FRAME).await {
                    Ok(PeerMessage::Replication(message)) => {
                        if events_in.send((id, Event::Message(message))).is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(_) => {
                        let _ = events_in.send((id, Event::Closed));
                        return;
                    }
                }
            }
        });
        let events_out = events.clone();
        tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                let message = PeerMessage::Replication(message);
                if frame::write_message(&mut writer, &message).await.is_err() {
                    let _ = events_out.send((id, Event::Closed));
                    return;
                }
            }
        });
        self.session = Some(Session { id, to_peer, phase });
        self.report_position();
    }

    fn send(&mut self, message: ReplMessage) {
        if let Some(session) = &self.session {
            if session.to_peer.send(message).is_err() {
                self.session = None;
            }
        }
    }

    fn close_session(&mut self, why: &str) {
        if self.session.take().is_some() {
            debug!(why, "store: replication session closed");
            self.report_position();
        }
    }

    fn role_changed(&mut self, new: StoreRole) {
        let old = std::mem::replace(&mut self.role, new);
        if old.leader != self.role.leader {
            self.close_session("role changed");
            if !self.role.leader {
                for pending in self.pending.drain(..) {
                    let _ = pending.reply.send(Err(StoreError::Unconfirmed));
                }
            }
        }
        if !self.role.peer_in_contact || !self.role.replication_allowed {
            // Alone: durable here is what acknowledges.
            self.release_pending(u64::MAX, false);
            if self.role.leader {
                self.close_session("peer out of contact");
            }
        }
        self.report_position();
    }

    fn release_pending(&mut self, up_to: u64, replicated: bool) {
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.position <= up_to);
        self.pending = waiting;
        for mut pending in done {
            pending.ack.replicated = replicated;
            crate::telemetry::store_write(replicated, pending.since.elapsed());
            let _ = pending.reply.send(Ok(pending.ack));
        }
    }

    fn expire_pending(&mut self) {
        let now = tokio::time::Instant::now();
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| now.duration_since(p.since) > CONFIRM_TIMEOUT);
        self.pending = waiting;
        for pending in expired {
            warn!(
                position = pending.position,
                "store: the standby did not confirm a write in time"
            );
            let _ = pending.reply.send(Err(StoreError::Unconfirmed));
        }
    }

    async fn request(&mut self, request: Request) {
        match request {
            Request::Get { key, reply } => {
                let _ = reply.send(self.replica.get(&key).cloned());
            }
            Request::List { prefix, reply } => {
                let list = self
                    .replica
                    .list(&prefix)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let _ = reply.send(list);
            }
            Request::Conflicts { reply } => {
                let _ = reply.send(self.replica.conflicts().cloned().collect());
            }
            Request::Write { key, value, reply } => self.write(Some((key, value)), reply),
            Request::ClearConflicts { reply } => self.write(None, reply),
        }
    }

    /// A write (or, with `None`, a conflict-list clear) on the leader.
    fn write(
        &mut self,
        set: Option<(String, Option<serde_json::Value>)>,
        reply: oneshot::Sender<Result<WriteAck, StoreError>>,
    ) {
        if !self.role.leader {
            let _ = reply.send(Err(StoreError::NotActive {
                active_node: self.role.active_node.clone(),
            }));
            return;
        }
        if !self.role.accepting_writes {
            let _ = reply.send(Err(StoreError::Paused));
            return;
        }
        let since = tokio::time::Instant::now();
        let (position, changes) = match &set {
            Some((key, value)) => self.replica.write(key, value.clone(), now_ms()),
            None => self.replica.clear_conflicts(now_ms()),
        };
        if let Err(error) = self.commit(&changes) {
            let _ = reply.send(Err(error));
            return;
        }
        let Some(entry) = changes.entries.first() else {
            let _ = reply.send(Err(StoreError::Storage("no entry written".to_owned())));
            return;
        };
        let (key, revision) = match &entry.op {
            Op::Set { key, revision, .. } => (key.clone(), *revision),
            _ => (String::new(), 0),
        };
        let ack = WriteAck {
            key,
            revision,
            id: entry.id.clone(),
            position,
            replicated: false,
        };
        self.report_position();
        let streaming = matches!(
            self.session,
            Some(Session {
                phase: Phase::Streaming { .. },
                ..
            })
        );
        if streaming {
            self.send(ReplMessage::Append {
                truncate_after: None,
                entries: changes.entries.clone(),
            });
        }
        if self.role.peer_in_contact && self.role.replication_allowed {
            self.pending.push(Pending {
                position,
                ack,
                reply,
                since,
            });
        } else {
            crate::telemetry::store_write(false, since.elapsed());
            let _ = reply.send(Ok(ack));
        }
    }

    async fn event(&mut self, id: u64, event: Event) {
        if self.session.as_ref().map(|s| s.id) != Some(id) {
            return; // an old session's last words
        }
        let message = match event {
            Event::Closed => {
                self.close_session("connection closed");
                return;
            }
            Event::Message(message) => message,
        };
        let phase = self.session.as_ref().map(|s| &s.phase);
        match (phase, message) {
            (Some(Phase::AwaitProbe), ReplMessage::Probe { points, base }) => {
                let common = self.replica.common_point(&points);
                self.set_phase(Phase::Merging {
                    common,
                    follower_base: base,
                });
                self.send(ReplMessage::Fork { common });
            }
            (
                Some(Phase::Merging {
                    common,
                    follower_base,
                }),
                ReplMessage::Upload { entries, last },
            ) => {
                let (common, follower_base) = (*common, *follower_base);
                let changes = self.replica.merge(&entries, now_ms());
                if !changes.entries.is_empty() {
                    info!(
                        merged = entries.len(),
                        appended = changes.entries.len(),
                        "store: merged the standby's entries"
                    );
                }
                if self.commit(&changes).is_err() {
                    self.close_session("storage failed");
                    return;
                }
                self.report_position();
                if last && self.replica.needs_snapshot(common, follower_base) {
                    let snapshot = self.replica.snapshot();
                    info!(
                        common,
                        base = self.replica.base().position,
                        "store: the standby needs a snapshot"
                    );
                    self.send(snapshot);
                    self.set_phase(Phase::Streaming { acked: 0 });
                } else if last {
                    let entries = self.replica.entries_after(common, usize::MAX);
                    let mut truncate_after = Some(common);
                    let mut chunks = entries.chunks(CHUNK).peekable();
                    if chunks.peek().is_none() {
                        self.send(ReplMessage::Append {
                            truncate_after,
                            entries: Vec::new(),
                        });
                    }
                    for chunk in chunks {
                        self.send(ReplMessage::Append {
                            truncate_after: truncate_after.take(),
                            entries: chunk.to_vec(),
                        });
                    }
                    self.set_phase(Phase::Streaming { acked: common });
                }
            }
            (Some(Phase::Streaming { acked }), ReplMessage::Ack { position }) => {
                let acked = (*acked).max(position);
                self.set_phase(Phase::Streaming { acked });
                self.release_pending(acked, true);
            }
            (Some(Phase::Probing), ReplMessage::Fork { common }) => {
                for message in self.replica.upload(common, CHUNK) {
                    self.send(message);
                }
                self.set_phase(Phase::Uploaded);
            }
            (
                Some(Phase::Uploaded | Phase::Following),
                ReplMessage::Append {
                    truncate_after,
                    entries,
                },
            ) => match self.replica.append_from_leader(truncate_after, &entries) {
                Ok(changes) => {
                    if self.commit(&changes).is_err() {
                        self.close_session("storage failed");
                        return;
                    }
                    self.set_phase(Phase::Following);
                    let position = self.replica.head();
                    self.send(ReplMessage::Ack { position });
                }
                Err(error) => {
                    warn!(%error, "store: the active node's entries do not fit; starting over");
                    self.close_session("gap");
                }
            },
            (_, message) => {
                warn!(
                    ?message,
                    "store: unexpected replication message; starting over"
                );
                self.close_session("protocol");
            }
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        if let Some(session) = &mut self.session {
            session.phase = phase;
        }
        self.report_position();
    }
}
