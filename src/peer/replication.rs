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
use crate::store::replica::{
    Changes, LogBase, Op, ReplMessage, Replica, SnapshotCursor, SnapshotInstall,
};
use crate::store::storage::Storage;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Largest replication frame: a chunk of entries with values up to 64 KiB each.
pub const MAX_REPLICATION_FRAME: usize = 32 * 1024 * 1024;
/// Entries per `Append` or `Upload` message, keys or conflicts per `Snapshot` chunk: 256 of
/// the largest (a 512-byte key, a 64 KiB value, their ids) stay well under the frame limit.
const CHUNK: usize = 256;
/// Messages queued for a session's writer: the store task makes the next chunk only when
/// there is room, so a slow peer holds back its own session and nothing else.
const OUTGOING: usize = 4;
/// Messages read ahead of the store task per session.
const INCOMING: usize = 16;
/// A write waiting for the standby's acknowledgement longer than this is answered as
/// unconfirmed (it stays durable here and will be merged).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// Log entries kept after trimming, and how many more trigger the next trim.
const KEEP_ENTRIES: usize = 10_000;
const TRIM_BATCH: usize = 1_000;
/// A node alone trims beyond what its peer holds only past this many entries.
const MAX_RETAINED_ALONE: usize = 1_000_000;
/// Wait between attempts to open a replication connection, and between the task's checks.
const REDIAL: Duration = Duration::from_millis(200);
/// The first wait before reopening a failed store; it doubles, up to the longest, while
/// a reopened store fails again soon after.
const REOPEN_FIRST: Duration = Duration::from_secs(1);
const REOPEN_LONGEST: Duration = Duration::from_secs(60);

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

/// How a replication session notices a dead peer.
#[derive(Debug, Clone, Copy)]
pub struct SessionTiming {
    /// The leader sends an empty `Append` (the follower answers with an `Ack`) when it sent
    /// nothing for this long, so a healthy idle session always has traffic both ways.
    pub keepalive: Duration,
    /// A session that read and wrote nothing for this long is closed.
    pub dead_after: Duration,
}

impl SessionTiming {
    /// From the election's heartbeat interval and `peer_dead_after`.
    pub fn from_election(heartbeat_interval: Duration, peer_dead_after: Duration) -> Self {
        SessionTiming {
            keepalive: heartbeat_interval,
            dead_after: peer_dead_after.saturating_mul(2),
        }
    }
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
    /// Leader: sending a snapshot at `base`, the next chunk from `next`.
    Snapshotting { base: LogBase, next: SnapshotCursor },
    /// Leader: the follower takes every entry after `sent` (the first `Append` dropping its
    /// log after `truncate`, if set); it holds them up to `acked`.
    Streaming {
        acked: u64,
        sent: u64,
        truncate: Option<u64>,
    },
    /// Follower: probe sent.
    Probing,
    /// Follower: own suffix uploaded, waiting for the leader's log.
    Uploaded,
    /// Follower: receiving a snapshot.
    Installing(SnapshotInstall),
    /// Follower: following the leader's log.
    Following,
}

struct Session {
    id: u64,
    outgoing: mpsc::Sender<ReplMessage>,
    /// Messages waiting for room in `outgoing`.
    outbox: VecDeque<ReplMessage>,
    phase: Phase,
    /// When the reader or the writer last moved a message.
    activity: Arc<Mutex<Instant>>,
    last_sent: Instant,
    tasks: [AbortHandle; 2],
}

impl Drop for Session {
    fn drop(&mut self) {
        // The reader would otherwise hold the connection open until the peer closes it.
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Session {
    fn idle_for(&self, now: Instant) -> Duration {
        let last = *self
            .activity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        now.saturating_duration_since(last)
    }

    /// Queues a message; the follower's acknowledgements collapse into the newest.
    fn queue(&mut self, message: ReplMessage) {
        if let (Some(ReplMessage::Ack { .. }), ReplMessage::Ack { .. }) =
            (self.outbox.back(), &message)
        {
            self.outbox.pop_back();
        }
        self.outbox.push_back(message);
    }
}

fn touch(activity: &Mutex<Instant>) {
    *activity
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
}

enum Event {
    Message(ReplMessage),
    Closed,
}

struct Pending {
    position: u64,
    ack: WriteAck,
    reply: oneshot::Sender<Result<WriteAck, StoreError>>,
    since: Instant,
}

/// A failed store waits this long before the next reopen.
struct Reopen {
    at: Instant,
    wait: Duration,
    last_reopened: Option<Instant>,
}

/// The store's task.
pub struct StoreTask {
    replica: Replica,
    storage: Arc<Storage>,
    timing: SessionTiming,
    role: StoreRole,
    session: Option<Session>,
    next_session: u64,
    pending: Vec<Pending>,
    position: watch::Sender<u64>,
    reopen: Option<Reopen>,
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
    pub fn new(
        replica: Replica,
        storage: Arc<Storage>,
        position: watch::Sender<u64>,
        timing: SessionTiming,
    ) -> Self {
        StoreTask {
            replica,
            storage,
            timing,
            role: StoreRole::default(),
            session: None,
            next_session: 1,
            pending: Vec::new(),
            position,
            reopen: None,
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
        let (events_tx, mut events) = mpsc::channel::<(u64, Event)>(INCOMING);
        // A dial reports its stream, or None when it failed.
        let (dialed_tx, mut dialed) = mpsc::channel::<Option<BoxedStream>>(1);
        let mut dialing = false;
        let mut tick = tokio::time::interval(REDIAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.role = role.borrow_and_update().clone();
        self.report_position();
        loop {
            let room = self.room_to_send();
            tokio::select! {
                request = requests.recv() => match request {
                    Some(request) => self.request(request),
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
                    if self.role.leader && self.role.replication_allowed && !self.storage.failed() {
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
                Some((id, event)) = events.recv() => self.event(id, event),
                Some((id, permit)) = reserve(room) => self.pump(id, permit),
                _ = tick.tick() => {
                    self.check_session();
                    self.expire_pending();
                    self.reopen_if_due();
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

    /// The session's writer queue, when the session has something to send.
    fn room_to_send(&self) -> Option<(u64, mpsc::Sender<ReplMessage>)> {
        let session = self.session.as_ref()?;
        let has_output = !session.outbox.is_empty()
            || match &session.phase {
                Phase::Snapshotting { .. } => true,
                Phase::Streaming { sent, truncate, .. } => {
                    truncate.is_some() || *sent < self.replica.head()
                }
                _ => false,
            };
        has_output.then(|| (session.id, session.outgoing.clone()))
    }

    /// Sends the session's next message into the room `permit` holds: a queued one, else
    /// the next snapshot chunk or the next entries of the log.
    fn pump(&mut self, id: u64, permit: mpsc::OwnedPermit<ReplMessage>) {
        let Some(session) = self.session.as_mut().filter(|s| s.id == id) else {
            return;
        };
        let message = if let Some(message) = session.outbox.pop_front() {
            Some(message)
        } else {
            match &mut session.phase {
                Phase::Snapshotting { base, next } => {
                    let (chunk, following) = self.replica.snapshot_chunk(*base, next, CHUNK);
                    match following {
                        Some(following) => *next = following,
                        None => {
                            let at = base.position;
                            session.phase = Phase::Streaming {
                                acked: 0,
                                sent: at,
                                truncate: None,
                            };
                        }
                    }
                    Some(chunk)
                }
                Phase::Streaming { sent, truncate, .. } => {
                    let entries = self.replica.entries_after(*sent, CHUNK);
                    if let Some(last) = entries.last() {
                        *sent = last.position;
                    }
                    let truncate_after = truncate.take();
                    (truncate_after.is_some() || !entries.is_empty()).then_some(
                        ReplMessage::Append {
                            truncate_after,
                            entries,
                        },
                    )
                }
                _ => None,
            }
        };
        if let Some(message) = message {
            session.last_sent = Instant::now();
            permit.send(message);
        }
    }

    /// Closes a session that moved nothing for `dead_after`; keeps an idle leader's session
    /// alive with an empty `Append`; ends a follower's session once the peer is lost.
    fn check_session(&mut self) {
        let now = Instant::now();
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if session.idle_for(now) > self.timing.dead_after {
            warn!(
                idle_ms = u64::try_from(session.idle_for(now).as_millis()).unwrap_or(u64::MAX),
                "store: the replication session moved nothing; closing it"
            );
            self.close_session("dead");
            return;
        }
        let idle = now.saturating_duration_since(session.last_sent) >= self.timing.keepalive;
        if let (true, true, Phase::Streaming { truncate: None, .. }) =
            (idle, session.outbox.is_empty(), &session.phase)
        {
            session.queue(ReplMessage::Append {
                truncate_after: None,
                entries: Vec::new(),
            });
        }
    }

    /// Keeps the log at about `KEEP_ENTRIES`, trimming only what the peer holds: the
    /// follower's acknowledged position on the leader, the followed position on the
    /// follower. A node alone keeps its whole log, as it may have to upload it.
    fn trim_log(&mut self) {
        if self.replica.retained() <= KEEP_ENTRIES + TRIM_BATCH || self.storage.failed() {
            return;
        }
        let holds = match (&self.session, self.role.leader) {
            (
                Some(Session {
                    phase: Phase::Streaming { acked, .. },
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
        !self.role.leader
            && self.role.peer_in_contact
            && self.role.replication_allowed
            && !self.storage.failed()
    }

    fn report_position(&self) {
        // The follower reports its head only while it follows the leader's log: before
        // that its own suffix may hold entries the leader lacks, and R9/R11 must not count
        // it as caught up. A failed store reports nothing.
        let position = match (&self.session, self.role.leader) {
            _ if self.storage.failed() => 0,
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

    /// Makes `changes` durable. On failure the storage closes itself and reports it (the
    /// engine steps down); what the failed operation changed in memory is never read: the
    /// store answers errors until it is reopened and reloaded from disk.
    fn commit(&mut self, changes: &Changes) -> Result<(), StoreError> {
        // redb's commit blocks on fsync: let the runtime move other tasks off this thread.
        let storage = self.storage.clone();
        let result = tokio::task::block_in_place(|| storage.commit(changes));
        result.map_err(|error| {
            let reason = error.to_string();
            self.store_failed(&reason);
            StoreError::Storage(reason)
        })
    }

    /// The disk failed: no session, no pending write answered as acknowledged, and a reopen
    /// scheduled.
    fn store_failed(&mut self, reason: &str) {
        let wait = match &self.reopen {
            // Already waiting to reopen.
            Some(Reopen {
                last_reopened: None,
                ..
            }) => None,
            // Reopened, and failed again soon after: wait longer this time.
            Some(Reopen { wait, .. }) => Some(wait.saturating_mul(2).min(REOPEN_LONGEST)),
            None => Some(REOPEN_FIRST),
        };
        if let Some(wait) = wait {
            warn!(%reason, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "store: the disk failed; the node steps down until the store is reopened");
            self.reopen = Some(Reopen {
                at: Instant::now() + wait,
                wait,
                last_reopened: None,
            });
        }
        self.close_session("storage failed");
        for pending in self.pending.drain(..) {
            let _ = pending
                .reply
                .send(Err(StoreError::Storage(reason.to_owned())));
        }
        self.report_position();
    }

    /// Reopens a failed store when it is time; on success reloads the replica from disk
    /// (memory may hold what a failed commit changed). A store that fails again soon after
    /// waits twice as long next time.
    fn reopen_if_due(&mut self) {
        let now = Instant::now();
        let waiting = matches!(
            self.reopen,
            Some(Reopen {
                last_reopened: None,
                ..
            })
        );
        if let (Some(reason), false) = (self.storage.failure_reason(), waiting) {
            // The driver's save of the term failed: the storage reported it, not a commit here.
            self.store_failed(&reason);
        }
        let Some(reopen) = &mut self.reopen else {
            return;
        };
        if reopen.last_reopened.is_some() {
            // Reopened and working: forget the back-off once it held long enough.
            if reopen
                .last_reopened
                .is_some_and(|at| now.saturating_duration_since(at) > REOPEN_LONGEST)
            {
                self.reopen = None;
            }
            return;
        }
        if now < reopen.at {
            return;
        }
        let storage = self.storage.clone();
        let node = self.replica.node().to_owned();
        let reopened = tokio::task::block_in_place(|| {
            storage.reopen()?;
            storage.load(&node)
        });
        match reopened {
            Ok(replica) => {
                info!(
                    head = replica.head(),
                    "store: reopened; the disk takes commits again"
                );
                self.replica = replica;
                reopen.last_reopened = Some(now);
                self.report_position();
            }
            Err(error) => {
                debug!(%error, wait_ms = u64::try_from(reopen.wait.as_millis()).unwrap_or(u64::MAX), "store: still cannot reopen");
                reopen.at = now + reopen.wait;
            }
        }
    }

    fn start_session(
        &mut self,
        stream: BoxedStream,
        phase: Phase,
        events: &mpsc::Sender<(u64, Event)>,
    ) {
        let id = self.next_session;
        self.next_session += 1;
        let (mut reader, mut writer) = tokio::io::split(stream);
        let (outgoing, mut queued) = mpsc::channel::<ReplMessage>(OUTGOING);
        let activity = Arc::new(Mutex::new(Instant::now()));
        let (events_in, read_activity) = (events.clone(), activity.clone());
        let read = tokio::spawn(async move {
            let mut buffer = Vec::new();
            loop {
                match frame::read_message(&mut reader, &mut buffer, MAX_REPLICATION_FRAME).await {
                    Ok(PeerMessage::Replication(message)) => {
                        touch(&read_activity);
                        if events_in.send((id, Event::Message(message))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(_) => {
                        let _ = events_in.send((id, Event::Closed)).await;
                        return;
                    }
                }
            }
        });
        let (events_out, write_activity) = (events.clone(), activity.clone());
        let write = tokio::spawn(async move {
            while let Some(message) = queued.recv().await {
                let message = PeerMessage::Replication(message);
                if frame::write_message(&mut writer, &message).await.is_err() {
                    let _ = events_out.send((id, Event::Closed)).await;
                    return;
                }
                touch(&write_activity);
            }
        });
        // A replaced session's tasks end with it (its Drop).
        self.session = Some(Session {
            id,
            outgoing,
            outbox: VecDeque::new(),
            phase,
            activity,
            last_sent: Instant::now(),
            tasks: [read.abort_handle(), write.abort_handle()],
        });
        self.report_position();
    }

    fn send(&mut self, message: ReplMessage) {
        if let Some(session) = &mut self.session {
            session.queue(message);
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
            // Alone: durable here is what acknowledges. A follower that lost the active
            // node no longer claims to follow it (its position would count as caught up).
            self.release_pending(u64::MAX, false);
            self.close_session("peer out of contact");
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
        let now = Instant::now();
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

    /// Reads answer from memory, which matches the disk except after a failed commit: then
    /// they answer the failure until the store is reopened and reloaded.
    fn readable(&self) -> Result<&Replica, StoreError> {
        match self.storage.failure_reason() {
            Some(reason) => Err(StoreError::Storage(reason)),
            None => Ok(&self.replica),
        }
    }

    fn request(&mut self, request: Request) {
        match request {
            Request::Get { key, reply } => {
                let _ = reply.send(self.readable().map(|r| r.get(&key).cloned()));
            }
            Request::List { prefix, reply } => {
                let list = self.readable().map(|r| {
                    r.list(&prefix)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                });
                let _ = reply.send(list);
            }
            Request::Conflicts { reply } => {
                let _ = reply.send(self.readable().map(|r| r.conflicts().cloned().collect()));
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
        if let Err(error) = self.readable() {
            let _ = reply.send(Err(error));
            return;
        }
        let since = Instant::now();
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
        // A streaming session sends it from the log (`pump`).
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

    fn event(&mut self, id: u64, event: Event) {
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
        let Some(phase) = self
            .session
            .as_mut()
            .map(|s| std::mem::replace(&mut s.phase, Phase::AwaitProbe))
        else {
            return;
        };
        match self.step(phase, message) {
            Ok(next) => self.set_phase(next),
            Err(why) => self.close_session(why),
        }
    }

    /// One replication message in `phase`: the next phase, or why the session ends.
    fn step(&mut self, phase: Phase, message: ReplMessage) -> Result<Phase, &'static str> {
        match (phase, message) {
            (Phase::AwaitProbe, ReplMessage::Probe { points, base }) => {
                let common = self.replica.common_point(&points);
                self.send(ReplMessage::Fork { common });
                Ok(Phase::Merging {
                    common,
                    follower_base: base,
                })
            }
            (
                Phase::Merging {
                    common,
                    follower_base,
                },
                ReplMessage::Upload { entries, last },
            ) => self.merge_upload(common, follower_base, &entries, last),
            (
                Phase::Streaming {
                    acked,
                    sent,
                    truncate,
                },
                ReplMessage::Ack { position },
            ) => {
                // The follower cannot hold more than was sent; a larger claim is not trusted.
                let acked = acked.max(position.min(sent));
                self.release_pending(acked, true);
                Ok(Phase::Streaming {
                    acked,
                    sent,
                    truncate,
                })
            }
            (Phase::Probing, ReplMessage::Fork { common }) => {
                for message in self.replica.upload(common, CHUNK) {
                    self.send(message);
                }
                Ok(Phase::Uploaded)
            }
            (
                Phase::Uploaded | Phase::Following,
                ReplMessage::Append {
                    truncate_after,
                    entries,
                },
            ) => self.follow(truncate_after, &entries),
            (
                phase @ (Phase::Uploaded | Phase::Installing(_)),
                ReplMessage::Snapshot {
                    base,
                    keys,
                    conflicts,
                    more,
                },
            ) => {
                let mut install = match phase {
                    Phase::Installing(install) => install,
                    _ => SnapshotInstall::default(),
                };
                match install.add(base, keys, conflicts, more) {
                    Ok(false) => Ok(Phase::Installing(install)),
                    Ok(true) => {
                        info!(
                            position = base.position,
                            received = install.received(),
                            "store: installing the active node's snapshot"
                        );
                        let changes = install.install(&mut self.replica);
                        self.ack_following(&changes)
                    }
                    Err(error) => {
                        warn!(%error, "store: a snapshot chunk does not fit; starting over");
                        Err("snapshot")
                    }
                }
            }
            (_, message) => {
                warn!(
                    kind = message_kind(&message),
                    "store: unexpected replication message; starting over"
                );
                Err("protocol")
            }
        }
    }

    /// Leader: merges a chunk of the follower's upload; after the last, sends it what it
    /// lacks (a snapshot when the entries are trimmed here).
    fn merge_upload(
        &mut self,
        common: u64,
        follower_base: u64,
        entries: &[crate::store::replica::Entry],
        last: bool,
    ) -> Result<Phase, &'static str> {
        let changes = self.replica.merge(entries, now_ms());
        if !changes.entries.is_empty() {
            info!(
                merged = entries.len(),
                appended = changes.entries.len(),
                "store: merged the standby's entries"
            );
        }
        self.commit(&changes).map_err(|_| "storage failed")?;
        self.report_position();
        if !last {
            return Ok(Phase::Merging {
                common,
                follower_base,
            });
        }
        if self.replica.needs_snapshot(common, follower_base) {
            let base = self.replica.snapshot_base();
            info!(
                common,
                base = base.position,
                keys_and_conflicts = self.replica.size(),
                "store: the standby needs a snapshot"
            );
            return Ok(Phase::Snapshotting {
                base,
                next: SnapshotCursor::Keys(None),
            });
        }
        Ok(Phase::Streaming {
            acked: common,
            sent: common,
            truncate: Some(common),
        })
    }

    /// Follower: takes the leader's entries and acknowledges them once durable.
    fn follow(
        &mut self,
        truncate_after: Option<u64>,
        entries: &[crate::store::replica::Entry],
    ) -> Result<Phase, &'static str> {
        match self.replica.append_from_leader(truncate_after, entries) {
            Ok(changes) => self.ack_following(&changes),
            Err(error) => {
                warn!(%error, "store: the active node's entries do not fit; starting over");
                Err("gap")
            }
        }
    }

    /// Follower: makes what the leader sent durable, then acknowledges the new head.
    fn ack_following(&mut self, changes: &Changes) -> Result<Phase, &'static str> {
        self.commit(changes).map_err(|_| "storage failed")?;
        let position = self.replica.head();
        self.send(ReplMessage::Ack { position });
        Ok(Phase::Following)
    }

    fn set_phase(&mut self, phase: Phase) {
        if let Some(session) = &mut self.session {
            session.phase = phase;
        }
        self.report_position();
    }
}

/// Room for one message in a session's writer queue, once there is some.
async fn reserve(
    room: Option<(u64, mpsc::Sender<ReplMessage>)>,
) -> Option<(u64, mpsc::OwnedPermit<ReplMessage>)> {
    match room {
        Some((id, sender)) => sender.reserve_owned().await.ok().map(|permit| (id, permit)),
        None => std::future::pending().await,
    }
}

/// A message's kind for the log (never its contents: values may be large or private).
fn message_kind(message: &ReplMessage) -> &'static str {
    match message {
        ReplMessage::Probe { .. } => "probe",
        ReplMessage::Fork { .. } => "fork",
        ReplMessage::Upload { .. } => "upload",
        ReplMessage::Append { .. } => "append",
        ReplMessage::Snapshot { .. } => "snapshot",
        ReplMessage::Ack { .. } => "ack",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::frame::{self, PeerMessage};
    use crate::store::api::{MAX_KEY, MAX_VALUE};

    /// A store of over 100 MB of the largest keys and values goes from leader to follower in
    /// chunks that each fit a frame, and the follower ends with exactly the leader's keys.
    #[test]
    fn a_100_mb_store_gets_through_in_chunks_under_the_frame_limit() {
        let mut leader = Replica::new("a", 1);
        // The largest value the API takes: a JSON string of MAX_VALUE bytes with its quotes.
        let value = serde_json::Value::String("v".repeat(MAX_VALUE - 2));
        let keys = 1_600;
        for n in 0..keys {
            let key = format!("big/{n:04}/{}", "k".repeat(MAX_KEY - 9));
            leader.write(&key, Some(value.clone()), 1_000 + n);
        }
        let base = leader.snapshot_base();
        let (mut cursor, mut install) =
            (Some(SnapshotCursor::Keys(None)), SnapshotInstall::default());
        let (mut chunks, mut largest, mut total) = (0, 0, 0);
        while let Some(at) = cursor.take() {
            let (chunk, next) = leader.snapshot_chunk(base, &at, CHUNK);
            let bytes = frame::encode(&PeerMessage::Replication(chunk));
            assert!(
                bytes.len() <= MAX_REPLICATION_FRAME,
                "a chunk of {} bytes",
                bytes.len()
            );
            (chunks, largest, total) = (chunks + 1, largest.max(bytes.len()), total + bytes.len());
            let payload = bytes.get(4..).expect("a length prefix");
            let Ok(PeerMessage::Replication(ReplMessage::Snapshot {
                base,
                keys,
                conflicts,
                more,
            })) = frame::decode(payload)
            else {
                panic!("chunk {chunks} is not a snapshot");
            };
            install
                .add(base, keys, conflicts, more)
                .expect("one snapshot");
            cursor = next;
        }
        assert!(total > 100_000_000, "{total} bytes sent");
        // Headroom: the largest chunk (about 17 MB) stays under 60% of the limit.
        assert!(
            largest * 5 < MAX_REPLICATION_FRAME * 3,
            "largest chunk {largest} bytes"
        );
        let mut follower = Replica::new("b", 2);
        install.install(&mut follower);
        assert_eq!(follower.size(), leader.size());
        for n in [0, 799, 1_599] {
            let key = format!("big/{n:04}/{}", "k".repeat(MAX_KEY - 9));
            assert_eq!(follower.get(&key), leader.get(&key), "{key}");
        }
        assert!(chunks >= keys as usize / CHUNK, "{chunks} chunks");
    }
}
