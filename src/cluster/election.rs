//! The election in cluster mode, sans IO: inputs and a time value in, actions out. The etcd
//! driver (`cluster::etcd`) carries them out.
//!
//! # The rules
//!
//! - The leader is whoever holds the leader key, created in a transaction that succeeds
//!   only while the key is absent, and attached to the holder's lease. Its create revision
//!   is the fencing token and the term: it only grows.
//! - What the node knows of the leader key is ordered by etcd's revision: an answer older
//!   than what it already knows (a campaign's answer that arrives after the watch saw the key
//!   deleted, say) changes nothing.
//! - The key is ours only if it names this node **and** hangs on this node's current lease:
//!   a key left by an earlier lease (lost, or of a run killed and restarted within the TTL)
//!   goes when that lease expires, so it is waited out, never acted on.
//! - A node acts as active only while it holds the leader key **and** its lease is surely
//!   alive on etcd. etcd counts a lease's time to live from when it handles a keep-alive,
//!   which is after we sent it; so the lease lives at least until `sent + ttl` of the newest
//!   acknowledged keep-alive. We stop acting at `sent + ttl × 3/4`, the rest being margin for
//!   clock rates and a slow step, and renew every `ttl / 4`: one lost keep-alive costs nothing,
//!   and a node cut from etcd stops acting as active before anyone else may start.
//! - The leader also rewrites its key every `ttl / 4` (a transaction guarded by the key's
//!   create revision, so only the same tenure's key is rewritten), and acts no longer than
//!   `ttl × 3/4` after sending the newest rewrite etcd acknowledged. It publishes in the key
//!   how long after that the others may call it gone (`ttl × 7/8`): a member that has seen no
//!   rewrite for that long deletes the key, in a transaction that succeeds only while the
//!   key is still that tenure's and not rewritten since (its mod revision), and the members
//!   campaign. A kill -9 thus costs 5/8 to 7/8 of the TTL instead of the TTL plus etcd's
//!   lease expiry tick. Safe without trusting the deleter's view: the delete succeeding
//!   means no rewrite landed after the one it saw, which the leader sent before it was seen,
//!   so the leader stopped acting `ttl/8` before. A leader that publishes no such time (an
//!   older version) is left to its lease.
//! - A node that may not be active (not eligible, leaving, a front) resigns at once: it deletes
//!   the leader key if its create revision is still ours, so the others need not wait out the
//!   lease.
//! - Nobody holds the key: every eligible member campaigns; the transaction picks one.
//! - `prefer-primary` (as in a pair, R9): a secondary leaves a vacant key to an eligible
//!   primary standby (as the members last published) for one lease time (always when the
//!   key is vacant at start-up), and an active secondary hands over to such a primary, once
//!   it has been ready and known the current term for `preempt_delay`. A member named by a
//!   switchover campaigns at once, secondary or not.
//!   `sticky`: whoever holds the key keeps it.

use std::time::{Duration, Instant};

/// The leader key as last read or watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The holder's node id.
    pub node: String,
    /// The key's create revision: the term and fencing token.
    pub revision: u64,
    /// The lease the key hangs on.
    pub lease: i64,
    /// The holder's advertised targets (JSON object: front-end name → target).
    pub targets: crate::engine::Targets,
    /// The key's mod revision: it changes with each of the holder's rewrites.
    pub written: u64,
    /// How long after the last rewrite the others may call the holder gone and delete the
    /// key (`None`: a holder that does not rewrite it, of an older version).
    pub stale_after: Option<Duration>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A lease was granted (or a keep-alive acknowledged) for a request sent at `sent`.
    LeaseRenewed {
        /// The lease.
        id: i64,
        /// When the grant or keep-alive was sent.
        sent: Instant,
    },
    /// etcd says the lease is gone (expired or revoked).
    LeaseLost,
    /// The leader key as of etcd revision `at`: `None` when absent.
    LeaderIs {
        /// The key.
        leader: Option<Leader>,
        /// The etcd revision this is true at.
        at: i64,
        /// What the resigning leader wrote when it deleted the key (in the same
        /// transaction): a switchover's named member campaigns at once; a member that
        /// promised the leader of that term not to take over is released.
        handover: Option<crate::cluster::Handover>,
    },
    /// Our campaign's transaction answered: the key as of revision `at` (ours if it won).
    Campaigned {
        /// The key.
        leader: Option<Leader>,
        /// The etcd revision of the transaction.
        at: i64,
        /// When the campaign was sent: a won campaign counts as the first rewrite.
        sent: Instant,
        /// The transaction created the key. Never inferred from the key it shows: a lost
        /// campaign's read of our own key, created by an earlier campaign whose answer was
        /// lost, can carry the same revision (a read moves no revision).
        won: bool,
    },
    /// Our campaign got no answer: what the key is, is not known from it.
    CampaignFailed,
    /// Our resignation was answered (or failed): campaigning may start again.
    Resigned,
    /// etcd acknowledged our rewrite of the leader key of `term`, sent at `sent`.
    Rewritten {
        /// The term (the key's create revision) the rewrite was guarded by.
        term: u64,
        /// When it was sent.
        sent: Instant,
    },
    /// A rewrite failed (the key is not ours any more, or etcd did not answer).
    RewriteFailed,
    /// Our delete of a stale leader key answered: the key as of revision `at` (absent if
    /// the delete went through).
    Deposed {
        /// The key.
        leader: Option<Leader>,
        /// The etcd revision of the transaction.
        at: i64,
    },
    /// Our delete of a stale leader key got no answer.
    DeposeFailed,
    /// This node may (or may no longer) be active: registrar, health, maintenance.
    Eligible(bool),
    /// The node is shutting down.
    Leave,
    /// An operator's switchover: the active node stands aside for one lease time, so that
    /// another member (`to`, if named) takes the key.
    Yield {
        /// The member that should take over.
        to: Option<String>,
    },
    /// The members as last read: the first eligible primary on standby other than this
    /// node and the highest term it knows (`None`: there is none).
    PrimaryStandby(Option<(String, u64)>),
    /// Every other member confirmed this node as active in `term` (`keep-if-peers-confirm`),
    /// the shortest promise being `promised`, for a round of asks sent at `sent`.
    PeersConfirmed {
        /// The term asked about.
        term: u64,
        /// When the round was sent.
        sent: Instant,
        /// The shortest time a member promised not to take over.
        promised: Duration,
    },
    /// A round of asks ended without every member's confirmation.
    PeersRefused,
    /// A deadline passed.
    Timeout,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Grant a lease of the configured TTL.
    GrantLease,
    /// Send a keep-alive for the lease.
    RenewLease(i64),
    /// Create the leader key with the lease, in a transaction that succeeds only if absent.
    Campaign(i64),
    /// Delete the leader key if its create revision is this one (ours); with a member named,
    /// say in the same transaction that it should take over.
    Resign(u64, Option<String>),
    /// Rewrite the leader key (with this lease) if its create revision is this term: proof
    /// to the others that the leader still reaches etcd.
    Rewrite(u64, i64),
    /// Delete the leader key of `term` if it was not rewritten since revision `written`: its
    /// holder stopped rewriting it for longer than it said it acts without.
    Depose {
        /// The key's create revision.
        term: u64,
        /// The key's mod revision when last seen.
        written: u64,
    },
    /// Ask every other member to confirm this node as active in this term
    /// (`keep-if-peers-confirm`).
    AskPeers(u64),
    /// The role changed.
    Role {
        /// Acting as the active node now.
        active: bool,
        /// The highest term seen (a leader key's create revision).
        term: u64,
    },
}

/// The election state of one member.
#[derive(Debug)]
pub struct Election {
    node: String,
    ttl: Duration,
    /// Whether this node campaigns at all (a front never does).
    member: bool,
    eligible: bool,
    leaving: bool,
    lease: Option<Lease>,
    leader: Option<Leader>,
    /// Acting as active, and in which term.
    acting: Option<u64>,
    /// A campaign is in flight: do not start another.
    campaigning: bool,
    /// A resignation is in flight: a campaign now could find our own key before it goes.
    resigning: bool,
    /// The etcd revision of what we know of the leader key.
    leader_at: i64,
    /// The highest term (leader key create revision) seen: never goes back.
    term: u64,
    /// After a switchover, this node does not lead before this.
    yield_until: Option<Instant>,
    /// The member a switchover names, until the resignation is sent.
    yield_to: Option<String>,
    /// A switchover named another member: this one campaigns only after this.
    defer_until: Option<Instant>,
    /// The leader key was read at least once: the role is known (standby at least).
    observed: bool,
    /// The role was announced at least once (the first `Role` leaves `starting`).
    announced: bool,
    /// `prefer-primary` on a secondary: how long a primary must be ready before failback.
    secondary: Option<Duration>,
    /// An eligible primary on standby, as the members last published; `None` before a read.
    primary_standby: Option<Option<(String, u64)>>,
    /// When the leader key was last seen to go vacant; cleared a lease time later.
    vacant_since: Option<Instant>,
    /// The key has been vacant since the first read.
    vacant_at_start: bool,
    /// A switchover named this node for the vacant key.
    handed_to_me: bool,
    /// Since when an eligible primary has been on standby while this secondary leads.
    preempt_since: Option<Instant>,
    /// The current yield is a failback (not an operator's switchover).
    failing_back: bool,
    /// `keep-if-peers-confirm`: the confirmations, both ways.
    failsafe: Option<Failsafe>,
    /// The leader's rewrites of its key.
    rewrites: Rewrites,
    /// A follower's view of the leader's rewrites: when the current key was last seen
    /// written (created or rewritten).
    seen_written: Option<Instant>,
    /// A delete of a stale leader key is in flight.
    deposing: bool,
    /// This member's own lease is surely alive: it reaches etcd. Out of touch, it deletes
    /// nothing, and back in touch it gives the leader a whole wait first.
    in_touch: bool,
    actions: Vec<Action>,
}

/// The leader's rewrites of its key, each a proof it still reaches etcd in its term.
#[derive(Debug, Default)]
struct Rewrites {
    /// Act as active in this term only before this: `ttl × 3/4` after the newest
    /// acknowledged rewrite (or the won campaign) was sent.
    until: Option<(u64, Instant)>,
    /// The next rewrite.
    next: Option<Instant>,
    /// A second rewrite goes out then if the first is still unanswered: a call stuck on a
    /// frozen etcd member is not the last chance, and the second one finds another member
    /// (the client's balancer prefers the less loaded).
    hedge_at: Option<Instant>,
    /// When the last one was sent.
    sent: Option<Instant>,
    /// Rewrites under way (two at most).
    in_flight: u8,
}

/// `on_store_loss = "keep-if-peers-confirm"`: the active node may act past its lease while
/// every other member confirms it, each promising not to take over meanwhile (after
/// Patroni's failsafe mode).
///
/// The active node asks every `ttl / 4` while it acts (not only once etcd is gone: its
/// confirmations are then already fresh when etcd goes). A member confirms only the leader it
/// knows, in the term it knows, and not while it acts itself; it then does not campaign for
/// one lease time from when it read the ask. The asker acts on it until `sent + 3/4` of the
/// shorter of its lease time and the promise, `sent` being before the member read it: so the
/// asker stops before any promise it relied on ends. etcd deleting the key of an expired lease
/// does not release a promise; the holder resigning (it wrote the term it gave up in the
/// same transaction) does, so a switchover stays immediate.
#[derive(Debug, Default)]
struct Failsafe {
    /// Acting may go on until this on the others' confirmations.
    confirmed_until: Option<Instant>,
    /// The next round of asks.
    ask_at: Option<Instant>,
    /// A round is under way.
    asking: bool,
    /// This member promised the leader of this term not to campaign before this. At
    /// start-up as if it had promised (term 0): a run killed and restarted forgot promises.
    promise: Option<(u64, Instant)>,
    /// Until when this member vouches for the leader of this term to its clients: no longer
    /// than the leader said it may act, nor than the promise.
    vouch: Option<(u64, Instant)>,
    started: bool,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    id: i64,
    /// Act as active only before this.
    act_until: Instant,
    /// The next keep-alive.
    renew_at: Instant,
}

impl Election {
    /// A member (`member`: campaigns) named `node` with leases of `ttl`, starting now: it asks
    /// for a lease first.
    pub fn new(node: &str, ttl: Duration, member: bool) -> Self {
        Election {
            node: node.to_owned(),
            ttl,
            member,
            eligible: false,
            leaving: false,
            lease: None,
            leader: None,
            acting: None,
            campaigning: false,
            resigning: false,
            leader_at: 0,
            yield_until: None,
            yield_to: None,
            defer_until: None,
            term: 0,
            observed: false,
            announced: false,
            secondary: None,
            primary_standby: None,
            vacant_since: None,
            vacant_at_start: false,
            handed_to_me: false,
            preempt_since: None,
            failing_back: false,
            failsafe: None,
            rewrites: Rewrites::default(),
            seen_written: None,
            deposing: false,
            in_touch: false,
            actions: vec![Action::GrantLease],
        }
    }

    /// The `prefer-primary` policy for a node that is not the primary: it leaves a vacant key
    /// to a primary for a lease time and hands back to one ready for `preempt_delay`.
    pub fn secondary_preferring_primary(mut self, preempt_delay: Duration) -> Self {
        self.secondary = Some(preempt_delay);
        self
    }

    /// `on_store_loss = "keep-if-peers-confirm"`: acts past its lease while every other
    /// member confirms it, and confirms the leader to the others ([`Failsafe`]).
    pub fn keep_if_peers_confirm(mut self) -> Self {
        self.failsafe = Some(Failsafe::default());
        self
    }

    /// How long after its last rewrite of the leader key this node, leading, may be called
    /// gone: it acts at most `ttl × 3/4` after one; an eighth of the TTL is margin.
    pub fn stale_after(&self) -> Duration {
        self.ttl * 7 / 8
    }

    /// The active member `from` asks this one to confirm it in `term`, saying it may act
    /// `asker_left` more: the promise not to take over (one lease time from `now`), or why
    /// not.
    pub fn confirm(
        &mut self,
        now: Instant,
        from: &str,
        term: u64,
        asker_left: Duration,
    ) -> Result<Duration, String> {
        let Some(failsafe) = self.failsafe.as_mut() else {
            return Err(format!(
                "{} does not confirm: its on_store_loss is not keep-if-peers-confirm",
                self.node
            ));
        };
        if let Some(own) = self.acting {
            return Err(format!(
                "{} acts as active itself, in term {own}",
                self.node
            ));
        }
        match &self.leader {
            Some(leader) if leader.node == from && leader.revision == term => {
                let until = now + self.ttl;
                let later = failsafe.promise.map_or(until, |(_, at)| at.max(until));
                failsafe.promise = Some((term, later));
                failsafe.vouch = Some((term, now + asker_left.min(self.ttl)));
                Ok(self.ttl)
            }
            Some(leader) => Err(format!(
                "{} knows {} as the leader in term {}, not {from} in term {term}",
                self.node, leader.node, leader.revision
            )),
            None => Err(format!("{} knows no leader: the key is vacant", self.node)),
        }
    }

    /// Feeds one input at `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        if let Some(failsafe) = self.failsafe.as_mut().filter(|f| !f.started) {
            failsafe.started = true;
            failsafe.promise = Some((0, now + self.ttl));
        }
        match input {
            Input::LeaseRenewed { id, sent } => {
                // Back in touch with etcd after losing it (an etcd outage, say): the leader
                // could not rewrite its key meanwhile either; it gets a whole wait from now
                // before this member deletes its key, rather than a race at etcd's return.
                if !self.in_touch || self.lease.is_none_or(|lease| now >= lease.act_until) {
                    self.in_touch = true;
                    self.seen_written = self.seen_written.map(|seen| seen.max(now));
                }
                let act_until = sent + self.ttl * 3 / 4;
                let renew_at = sent + self.ttl / 4;
                self.lease = Some(Lease {
                    id,
                    act_until,
                    renew_at,
                });
            }
            Input::LeaseLost => {
                self.lease = None;
                self.actions.push(Action::GrantLease);
            }
            Input::LeaderIs {
                leader,
                at,
                handover,
            } => {
                let handover_to = handover.as_ref().and_then(|h| h.to.as_deref());
                let named_me = handover_to == Some(self.node.as_str());
                let named_other = handover_to.is_some() && !named_me;
                if let (Some(failsafe), Some(handover)) = (self.failsafe.as_mut(), &handover) {
                    // The leader we promised let go itself: no reason to wait.
                    // Term 0 is a record that does not say (and the start-up promise's).
                    let released = handover.term != 0;
                    if released
                        && failsafe
                            .promise
                            .is_some_and(|(term, _)| term == handover.term)
                    {
                        failsafe.promise = None;
                    }
                }
                // Named by a switchover: take the key at once, whoever else may be preferred.
                if leader.is_some() {
                    self.handed_to_me = false;
                } else if named_me {
                    self.handed_to_me = true;
                }
                if leader.is_none() && named_other && at >= self.leader_at {
                    // Give the named member one lease time to take the key.
                    self.defer_until = Some(now + self.ttl);
                } else if leader.is_some() {
                    self.defer_until = None;
                }
                self.learn(now, leader, at);
            }
            Input::Campaigned {
                leader,
                at,
                sent,
                won,
            } => {
                self.campaigning = false;
                let ours = leader.as_ref().is_some_and(|l| {
                    l.node == self.node
                        && Some(l.lease) == self.lease()
                        && i64::try_from(l.revision) == Ok(at)
                });
                if let (true, true, Ok(term)) = (won, ours, u64::try_from(at)) {
                    self.rewritten(term, sent);
                    self.rewrites.next = Some(sent + self.ttl / 4);
                }
                self.learn(now, leader, at);
            }
            Input::CampaignFailed => self.campaigning = false,
            Input::Resigned => self.resigning = false,
            Input::Rewritten { term, sent } => {
                self.rewrites.in_flight = self.rewrites.in_flight.saturating_sub(1);
                self.rewrites.hedge_at = None;
                self.rewritten(term, sent);
            }
            Input::RewriteFailed => {
                // None left under way: tried again an eighth of a lease time after the last
                // one was sent, not a quarter.
                self.rewrites.in_flight = self.rewrites.in_flight.saturating_sub(1);
                if self.rewrites.in_flight == 0 {
                    let retry = self.rewrites.sent.map(|sent| sent + self.ttl / 8);
                    self.rewrites.next = self.rewrites.next.zip(retry).map(|(n, r)| n.min(r));
                }
            }
            Input::Deposed { leader, at } => {
                self.deposing = false;
                self.learn(now, leader, at);
                // Failed, the answer shows the key rewritten since; whatever it shows, the
                // wait starts over from now (later, never sooner, is the safe side).
                if self.leader.is_some() {
                    self.seen_written = Some(now);
                }
            }
            Input::DeposeFailed => self.deposing = false,
            Input::Eligible(eligible) => self.eligible = eligible,
            Input::Leave => self.leaving = true,
            Input::Yield { to } => {
                // Not while acting on confirmations only: the resignation could not reach
                // etcd, and nobody could take over.
                if self.acting.is_some() && !self.on_confirmations(now) {
                    self.yield_until = Some(now + self.ttl);
                    self.yield_to = to;
                    self.failing_back = false;
                }
            }
            Input::PrimaryStandby(primary) => self.primary_standby = Some(primary),
            Input::PeersConfirmed {
                term,
                sent,
                promised,
            } => {
                let acting = self.acting;
                if let Some(failsafe) = self.failsafe.as_mut() {
                    failsafe.asking = false;
                    if acting == Some(term) {
                        let until = sent + self.ttl.min(promised) * 3 / 4;
                        let later = failsafe.confirmed_until.map_or(until, |u| u.max(until));
                        failsafe.confirmed_until = Some(later);
                    }
                }
            }
            Input::PeersRefused => {
                if let Some(failsafe) = self.failsafe.as_mut() {
                    failsafe.asking = false;
                }
            }
            Input::Timeout => {}
        }
        self.step(now);
        std::mem::take(&mut self.actions)
    }

    /// The next deadline: a keep-alive, the end of acting as active, or of a yield.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let lease = self.lease?;
        // Acting on confirmations, the lease's own deadline is past: the later one counts.
        let next = match self.act_until() {
            Some(until) => lease.renew_at.min(until),
            None => lease.renew_at,
        };
        // Each is cleared once passed (`step`), so none is ever in the past here.
        let failsafe = self.failsafe.as_ref();
        let later = [
            failsafe.and_then(|f| f.confirmed_until),
            failsafe.filter(|f| !f.asking).and_then(|f| f.ask_at),
            failsafe.and_then(|f| f.promise).map(|(_, until)| until),
            failsafe.and_then(|f| f.vouch).map(|(_, until)| until),
            self.yield_until,
            self.defer_until,
            self.vacant_since.map(|since| since + self.ttl),
            self.preempt_since
                .zip(self.secondary)
                .map(|(since, delay)| since + delay),
            self.rewrites.next.filter(|_| self.rewrites.in_flight < 2),
            self.rewrites
                .hedge_at
                .filter(|_| self.rewrites.in_flight == 1),
            self.depose_at(),
        ];
        Some(later.into_iter().flatten().fold(next, Instant::min))
    }

    /// Until when a front end may serve as the active node (`None`: it may not): the lease's
    /// deadline, or the others' confirmations' if later.
    pub fn act_until(&self) -> Option<Instant> {
        let term = self.acting?;
        let confirmed = self.failsafe.as_ref().and_then(|f| f.confirmed_until);
        [self.own_until(term), confirmed]
            .into_iter()
            .flatten()
            .max()
    }

    /// Until when this node may act in `term` on etcd alone: its lease is alive and its key
    /// recently rewritten, whichever ends first.
    fn own_until(&self, term: u64) -> Option<Instant> {
        let lease = self.lease?.act_until;
        let (rewritten_in, until) = self.rewrites.until?;
        (rewritten_in == term).then_some(lease.min(until))
    }

    /// Acting as active only on the others' confirmations: etcd's own deadline passed.
    pub fn on_confirmations(&self, now: Instant) -> bool {
        let own_passed = self
            .acting
            .is_some_and(|term| self.own_until(term).is_none_or(|until| now >= until));
        self.act_until().is_some_and(|until| now < until) && own_passed
    }

    /// A rewrite of the key of `term` sent at `sent` was acknowledged (or the campaign that
    /// created it won).
    fn rewritten(&mut self, term: u64, sent: Instant) {
        let until = sent + self.ttl * 3 / 4;
        let later = match self.rewrites.until {
            Some((known, at)) if known == term => at.max(until),
            // A late answer of an earlier tenure says nothing of this one.
            Some((known, _)) if known > term => return,
            _ => until,
        };
        self.rewrites.until = Some((term, later));
    }

    /// When this member deletes the leader key as stale, unless it is rewritten before: a
    /// member following a key whose holder publishes how long it acts without rewriting it,
    /// with no promise of its own to keep the key (`keep-if-peers-confirm`) and no delete
    /// already in flight.
    fn depose_at(&self) -> Option<Instant> {
        let leader = self.leader.as_ref()?;
        let ours = leader.node == self.node && Some(leader.lease) == self.lease();
        let promised = self.failsafe.as_ref().is_some_and(|f| f.promise.is_some());
        if ours || promised || self.deposing || !self.member || self.leaving || !self.in_touch {
            return None;
        }
        // Waiting longer than the holder said is always safe: never shorter than our own.
        let stale_after = leader.stale_after?.max(self.stale_after());
        self.seen_written?.checked_add(stale_after)
    }

    /// The leader key as last seen.
    pub fn leader(&self) -> Option<&Leader> {
        self.leader.as_ref()
    }

    /// Acting as active: the term.
    pub fn acting(&self) -> Option<u64> {
        self.acting
    }

    /// Takes what etcd said of the leader key at revision `at`, unless we know newer.
    fn learn(&mut self, now: Instant, leader: Option<Leader>, at: i64) {
        let first = !self.observed;
        self.observed = true;
        if at >= self.leader_at {
            self.leader_at = at;
            // Only a key that goes (or is absent at the first read) starts the wait, so a
            // vacancy read again later does not make a secondary wait once more.
            if leader.is_none() && (first || self.leader.is_some()) {
                self.vacant_since = Some(now);
            }
            if leader.is_some() {
                self.vacant_at_start = false;
            } else if first {
                self.vacant_at_start = true;
            }
            // A primary seen taking the key is no standby, whatever it published before: when
            // its key goes, nobody waits for it (unless it publishes itself ready again, as a
            // restarted one does).
            let written = |l: &Leader| (l.revision, l.written);
            if leader.as_ref().map(written) != self.leader.as_ref().map(written) {
                self.seen_written = leader.as_ref().map(|_| now);
            }
            let taken_by = leader
                .as_ref()
                .filter(|new| self.leader.as_ref().map(|l| l.revision) != Some(new.revision));
            if let (Some(Some((primary, _))), Some(taken_by)) = (&self.primary_standby, taken_by) {
                if *primary == taken_by.node {
                    self.primary_standby = Some(None);
                }
            }
            self.leader = leader;
        }
    }

    /// Until when this node's view of etcd is surely current: its lease was renewed, so it
    /// reached etcd, within the same margin as acting. Followers stop sending clients to a
    /// leader they can no longer vouch for.
    /// Confirming the leader we follow vouches for it as long as it said it may act (etcd
    /// may be gone); acting, as long as we act.
    ///
    /// Acting, exactly as long as it acts: the front ends check this on every request, and
    /// the lease may outlive the key's last rewrite.
    pub fn fresh_until(&self) -> Option<Instant> {
        if self.acting.is_some() {
            return self.act_until();
        }
        let lease = self.lease.map(|lease| lease.act_until)?;
        let leader = self.leader.as_ref().map(|l| l.revision);
        let vouched = self
            .failsafe
            .as_ref()
            .and_then(|f| f.vouch)
            .filter(|(term, _)| Some(*term) == leader)
            .map(|(_, until)| until);
        let later = [vouched, self.act_until()].into_iter().flatten();
        Some(later.fold(lease, Instant::max))
    }

    /// Standing aside after a switchover or a failback.
    pub fn yielding(&self, now: Instant) -> bool {
        self.yield_until.is_some_and(|until| now < until)
    }

    /// Standing aside for a primary (`prefer-primary`), not for an operator.
    pub fn failing_back(&self, now: Instant) -> bool {
        self.failing_back && self.yielding(now)
    }

    /// A secondary leaves a vacant key to a ready primary (or, before the members were
    /// read, to any primary there may be) for one lease time after it went; before the key
    /// was read at all it does not campaign. A key vacant at start-up is left to a primary
    /// for one lease time in any case: one starting alongside may not have published itself
    /// yet, and taking the key only to hand it back moves every client twice.
    fn leaves_key_to_primary(&self, now: Instant) -> bool {
        if self.secondary.is_none() || self.handed_to_me {
            return false;
        }
        if !self.observed {
            return true;
        }
        let primary_may_come = self.vacant_at_start || !matches!(self.primary_standby, Some(None));
        let waiting = self
            .vacant_since
            .is_some_and(|since| now < since + self.ttl);
        primary_may_come && waiting
    }

    /// An active secondary whose primary has been ready for `preempt_delay` hands back. Ready
    /// includes knowing our term: a primary whose view of the key lags (its watch stuck)
    /// would not take the key handed to it, and we would hand it over again and again.
    fn fail_back(&mut self, now: Instant) {
        let lease_live = self.lease.is_some_and(|lease| now < lease.act_until);
        let ready = match (&self.primary_standby, self.secondary, self.acting) {
            // etcd out of reach: a handover could not happen; what the members published
            // is stale too.
            _ if !lease_live => None,
            (Some(Some((primary, known))), Some(delay), Some(term)) if *known >= term => {
                Some((primary.clone(), delay))
            }
            _ => None,
        };
        let Some((primary, delay)) = ready else {
            self.preempt_since = None;
            return;
        };
        let since = *self.preempt_since.get_or_insert(now);
        if now >= since + delay {
            self.preempt_since = None;
            self.yield_until = Some(now + self.ttl);
            self.yield_to = Some(primary);
            self.failing_back = true;
        }
    }

    /// While the key is ours, a rewrite every `ttl / 4`, and a second one if the first is
    /// unanswered after `ttl / 8`; two under way at most.
    fn rewrite(&mut self, now: Instant, ours: Option<u64>) {
        let (Some(term), Some(lease)) = (ours, self.lease()) else {
            self.rewrites.next = None;
            self.rewrites.hedge_at = None;
            return;
        };
        let rewrites = &mut self.rewrites;
        let due = rewrites.in_flight < 2 && rewrites.next.is_none_or(|at| now >= at);
        let hedge = rewrites.in_flight == 1 && rewrites.hedge_at.is_some_and(|at| now >= at);
        if due {
            rewrites.next = Some(now + self.ttl / 4);
            rewrites.hedge_at = Some(now + self.ttl / 8);
        } else if hedge {
            rewrites.hedge_at = None;
        } else {
            return;
        }
        rewrites.in_flight += 1;
        rewrites.sent = Some(now);
        self.actions.push(Action::Rewrite(term, lease));
    }

    /// While acting, a round of asks every `ttl / 4` (`keep-if-peers-confirm`); out of
    /// office, no confirmation carries over.
    fn ask_peers(&mut self, now: Instant, acting: Option<u64>) {
        let ttl = self.ttl;
        let Some(failsafe) = self.failsafe.as_mut() else {
            return;
        };
        let Some(term) = acting else {
            failsafe.confirmed_until = None;
            failsafe.ask_at = None;
            return;
        };
        if !failsafe.asking && failsafe.ask_at.is_none_or(|at| now >= at) {
            failsafe.asking = true;
            failsafe.ask_at = Some(now + ttl / 4);
            self.actions.push(Action::AskPeers(term));
        }
    }

    fn may_lead(&self, now: Instant) -> bool {
        self.member && self.eligible && !self.leaving && !self.yielding(now)
    }

    /// The lease, once granted.
    pub fn lease(&self) -> Option<i64> {
        self.lease.map(|lease| lease.id)
    }

    /// The highest term seen.
    pub fn term(&self) -> u64 {
        self.term
    }

    fn step(&mut self, now: Instant) {
        if let Some(leader) = &self.leader {
            self.term = self.term.max(leader.revision);
        }
        // Passed deadlines go, or `poll_timeout` would wake the driver at once, forever.
        self.yield_until = self.yield_until.filter(|until| now < *until);
        self.defer_until = self.defer_until.filter(|until| now < *until);
        self.vacant_since = self.vacant_since.filter(|since| now < *since + self.ttl);
        self.fail_back(now);
        if let Some(failsafe) = self.failsafe.as_mut() {
            failsafe.confirmed_until = failsafe.confirmed_until.filter(|until| now < *until);
            failsafe.promise = failsafe.promise.filter(|(_, until)| now < *until);
            failsafe.vouch = failsafe.vouch.filter(|(_, until)| now < *until);
        }
        self.rewrites.until = self.rewrites.until.filter(|(_, until)| now < *until);
        let live = self.lease.filter(|lease| now < lease.act_until);
        self.in_touch &= live.is_some();
        let confirmed = self
            .failsafe
            .as_ref()
            .and_then(|f| f.confirmed_until)
            .is_some();
        if let Some(lease) = self.lease.filter(|lease| now >= lease.renew_at) {
            // Renew once per step; the deadline moves only when etcd answers.
            self.lease = Some(Lease {
                renew_at: now + self.ttl / 4,
                ..lease
            });
            self.actions.push(Action::RenewLease(lease.id));
        }
        let lease_id = self.lease.map(|lease| lease.id);
        let ours = self
            .leader
            .as_ref()
            .filter(|leader| leader.node == self.node && Some(leader.lease) == lease_id)
            .map(|leader| leader.revision);
        let rewritten = |term: u64| self.rewrites.until.is_some_and(|(t, _)| t == term);
        let acting = match ours {
            Some(term)
                if ((live.is_some() && rewritten(term)) || confirmed) && self.may_lead(now) =>
            {
                Some(term)
            }
            _ => None,
        };
        if let (Some(term), false) = (ours, self.may_lead(now)) {
            // Give the role up at once rather than make the others wait for the lease.
            self.actions
                .push(Action::Resign(term, self.yield_to.take()));
            self.resigning = true;
            self.leader = None;
        }
        self.rewrite(now, ours.filter(|_| self.may_lead(now)));
        if self.depose_at().is_some_and(|at| now >= at) {
            if let Some(leader) = &self.leader {
                self.deposing = true;
                self.actions.push(Action::Depose {
                    term: leader.revision,
                    written: leader.written,
                });
            }
        }
        self.ask_peers(now, acting);
        if acting != self.acting || (self.observed && !self.announced) {
            self.acting = acting;
            self.announced = true;
            self.actions.push(Action::Role {
                active: acting.is_some(),
                term: self.term,
            });
        }
        let vacant = self.leader.is_none();
        let promised = self.failsafe.as_ref().is_some_and(|f| f.promise.is_some());
        let deferred = self.defer_until.is_some_and(|until| now < until)
            || self.leaves_key_to_primary(now)
            || promised;
        if vacant && self.may_lead(now) && !self.campaigning && !self.resigning && !deferred {
            if let Some(lease) = live {
                self.campaigning = true;
                self.actions.push(Action::Campaign(lease.id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(2);
    /// The lease `member` is granted.
    const LEASE: i64 = 7;

    /// Any instant will do: the election is given every time.
    #[allow(clippy::disallowed_methods)]
    fn start() -> Instant {
        Instant::now()
    }

    fn key(node: &str, revision: u64, lease: i64) -> Option<Leader> {
        Some(Leader {
            node: node.to_owned(),
            revision,
            lease,
            targets: Default::default(),
            written: revision,
            stale_after: None,
        })
    }

    /// The leader key as the watch or a read says it is at revision `at`.
    fn is(leader: Option<Leader>, at: i64) -> Input {
        Input::LeaderIs {
            leader,
            at,
            handover: None,
        }
    }

    /// A campaign sent at `sent` answered.
    fn campaigned(leader: Option<Leader>, at: i64, sent: Instant) -> Input {
        // Only this node's keys hang on `LEASE` in these tests.
        let won = leader.as_ref().is_some_and(|l| l.lease == LEASE);
        Input::Campaigned {
            leader,
            at,
            sent,
            won,
        }
    }

    fn role(active: bool, term: u64) -> Action {
        Action::Role { active, term }
    }

    /// An eligible member with a lease granted at `t0`.
    fn member(t0: Instant) -> Election {
        let mut election = Election::new("a", TTL, true);
        assert_eq!(
            election.handle(t0, Input::Timeout),
            vec![Action::GrantLease]
        );
        election.handle(
            t0,
            Input::LeaseRenewed {
                id: LEASE,
                sent: t0,
            },
        );
        election
    }

    /// A member that won the key at revision 42.
    fn leading(t0: Instant) -> Election {
        let mut election = member(t0);
        election.handle(t0, Input::Eligible(true));
        let won = election.handle(t0, campaigned(key("a", 42, LEASE), 42, t0));
        assert_eq!(won, vec![role(true, 42)]);
        election
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_eligible_member_campaigns_on_a_vacant_key_and_acts_once_it_holds_it() {
        let t0 = start();
        let mut election = member(t0);
        assert_eq!(election.handle(t0, is(None, 10)), vec![role(false, 0)]);
        assert_eq!(
            election.handle(t0, Input::Eligible(true)),
            vec![Action::Campaign(LEASE)]
        );
        // A second input while the campaign is in flight starts no second one.
        assert_eq!(election.handle(t0, Input::Timeout), vec![]);
        let won = election.handle(t0 + ms(5), campaigned(key("a", 42, LEASE), 42, t0 + ms(5)));
        assert_eq!(won, vec![role(true, 42)]);
        assert_eq!(election.act_until(), Some(t0 + TTL * 3 / 4));
    }

    #[test]
    fn a_member_that_lost_the_campaign_stays_standby_and_follows() {
        let t0 = start();
        let mut election = member(t0);
        election.handle(t0, is(None, 10));
        election.handle(t0, Input::Eligible(true));
        let lost = election.handle(t0, campaigned(key("b", 43, 99), 43, t0));
        assert_eq!(lost, vec![]);
        assert_eq!(election.leader().map(|l| l.node.as_str()), Some("b"));
        assert_eq!(election.act_until(), None);
        // b's key goes (its lease expired): campaign again.
        let vacant = election.handle(t0 + ms(10), is(None, 50));
        assert_eq!(vacant, vec![Action::Campaign(LEASE)]);
    }

    #[test]
    fn an_active_node_that_cannot_renew_stops_acting_before_its_lease_can_expire() {
        let t0 = start();
        let mut election = leading(t0);
        // Keep-alives go out every ttl/4; none is answered (etcd unreachable).
        let renew = election.handle(t0 + TTL / 4, Input::Timeout);
        assert_eq!(
            renew,
            vec![Action::RenewLease(LEASE), Action::Rewrite(42, LEASE)]
        );
        let deadline = election.poll_timeout().expect("a deadline");
        assert!(deadline <= t0 + TTL * 3 / 4);
        let at_end = election.handle(t0 + TTL * 3 / 4, Input::Timeout);
        assert!(at_end.contains(&role(false, 42)), "{at_end:?}");
        assert_eq!(election.act_until(), None);
        assert_eq!(election.fresh_until(), Some(t0 + TTL * 3 / 4));
    }

    #[test]
    fn each_acknowledged_keep_alive_and_rewrite_moves_the_deadline_from_when_it_was_sent() {
        let t0 = start();
        let mut election = leading(t0);
        let sent = t0 + TTL / 4;
        let due = election.handle(sent, Input::Timeout);
        assert_eq!(
            due,
            vec![Action::RenewLease(LEASE), Action::Rewrite(42, LEASE)]
        );
        // The answers come late; the deadline counts from the send, and the earlier of the
        // two counts: the won campaign's until the rewrite is acknowledged.
        election.handle(sent + ms(300), Input::LeaseRenewed { id: LEASE, sent });
        assert_eq!(election.act_until(), Some(t0 + TTL * 3 / 4));
        election.handle(sent + ms(301), Input::Rewritten { term: 42, sent });
        assert_eq!(election.act_until(), Some(sent + TTL * 3 / 4));
        // A rewrite of another term moves nothing.
        let later = sent + TTL / 4;
        election.handle(later, renewed(later));
        election.handle(
            later,
            Input::Rewritten {
                term: 41,
                sent: later,
            },
        );
        assert_eq!(election.act_until(), Some(sent + TTL * 3 / 4));
    }

    #[test]
    fn a_failed_rewrite_is_tried_again_an_eighth_of_a_lease_time_after_it_was_sent() {
        let t0 = start();
        let mut election = leading(t0);
        let sent = t0 + TTL / 4;
        let due = election.handle(sent, renewed(sent));
        assert!(due.contains(&Action::Rewrite(42, LEASE)), "{due:?}");
        election.handle(sent + ms(100), Input::RewriteFailed);
        assert_eq!(election.poll_timeout(), Some(sent + TTL / 8));
        let again = election.handle(sent + TTL / 8, Input::Timeout);
        assert_eq!(again, vec![Action::Rewrite(42, LEASE)]);
        // A success keeps the usual pace: the next one a quarter lease time after it.
        let acked = sent + TTL / 8;
        election.handle(
            acked,
            Input::Rewritten {
                term: 42,
                sent: acked,
            },
        );
        let before = election.handle(acked + TTL / 4 - ms(1), Input::Timeout);
        assert!(!before.contains(&Action::Rewrite(42, LEASE)), "{before:?}");
        let then = election.handle(acked + TTL / 4, Input::Timeout);
        assert!(then.contains(&Action::Rewrite(42, LEASE)), "{then:?}");
    }

    #[test]
    fn an_unanswered_rewrite_gets_a_second_one_after_an_eighth_of_a_lease_time_and_no_third() {
        let t0 = start();
        let mut election = leading(t0);
        let sent = t0 + TTL / 4;
        let first = election.handle(sent, renewed(sent));
        assert!(first.contains(&Action::Rewrite(42, LEASE)), "{first:?}");
        assert_eq!(election.poll_timeout(), Some(sent + TTL / 8));
        let second = election.handle(sent + TTL / 8, Input::Timeout);
        assert_eq!(second, vec![Action::Rewrite(42, LEASE)]);
        // Both under way: the next one waits for an answer.
        let third = election.handle(sent + TTL / 4, renewed(sent + TTL / 4));
        assert!(!third.contains(&Action::Rewrite(42, LEASE)), "{third:?}");
        // The second is answered first: it counts from its own send, and the regular one
        // goes out.
        let answered = Input::Rewritten {
            term: 42,
            sent: sent + TTL / 8,
        };
        let regular = election.handle(sent + TTL / 4 + ms(1), answered);
        assert_eq!(regular, vec![Action::Rewrite(42, LEASE)]);
        assert_eq!(election.act_until(), Some(sent + TTL / 8 + TTL * 3 / 4));
    }

    #[test]
    fn a_leader_whose_rewrites_go_unanswered_stops_acting_though_its_lease_lives() {
        let t0 = start();
        let mut election = leading(t0);
        let mut now = t0;
        // Keep-alives are answered (etcd has the lease), rewrites are not (a slow disk, a
        // key lost): acting ends 3/4 of a lease time after the campaign was sent.
        while now < t0 + TTL * 3 / 4 {
            now += TTL / 8;
            let actions = election.handle(now, renewed(now));
            if actions.contains(&Action::Rewrite(42, LEASE)) {
                election.handle(now, Input::RewriteFailed);
            }
        }
        assert_eq!(now, t0 + TTL * 3 / 4);
        assert_eq!(election.acting(), None);
        assert_eq!(election.act_until(), None);
        // One is answered: the node acts again in the same term.
        let next = now + TTL / 4;
        let actions = election.handle(next, renewed(next));
        assert!(actions.contains(&Action::Rewrite(42, LEASE)), "{actions:?}");
        let back = election.handle(
            next,
            Input::Rewritten {
                term: 42,
                sent: next,
            },
        );
        assert_eq!(back, vec![role(true, 42)]);
    }

    #[test]
    fn front_ends_serve_as_active_no_longer_than_the_last_rewrite_allows() {
        let t0 = start();
        let mut election = leading(t0);
        // The lease is renewed later than the key was last rewritten: the front ends'
        // deadline is the earlier one, not the lease's.
        let later = t0 + TTL / 4;
        election.handle(later, renewed(later));
        election.handle(later, Input::RewriteFailed);
        assert_eq!(election.act_until(), Some(t0 + TTL * 3 / 4));
        assert_eq!(election.fresh_until(), election.act_until());
    }

    #[test]
    fn a_campaign_that_lost_but_shows_our_own_key_counts_as_no_rewrite() {
        // An earlier campaign created the key and its answer was lost; the next one fails
        // and shows that key, of the very revision of the (read-only) answer. Acting waits
        // for a rewrite: when the key was created is not known from this answer.
        let t0 = start();
        let mut election = member(t0);
        election.handle(t0, is(None, 41));
        election.handle(t0, Input::Eligible(true));
        election.handle(t0 + TTL / 2, Input::CampaignFailed);
        let shown = Input::Campaigned {
            leader: key("a", 42, LEASE),
            at: 42,
            sent: t0 + TTL / 2,
            won: false,
        };
        let actions = election.handle(t0 + TTL / 2, shown);
        assert_eq!(actions, vec![Action::Rewrite(42, LEASE)]);
        assert_eq!(election.act_until(), None);
        let acked = Input::Rewritten {
            term: 42,
            sent: t0 + TTL / 2,
        };
        assert_eq!(election.handle(t0 + TTL / 2, acked), vec![role(true, 42)]);
    }

    /// Delete the key of term 42 as written at revision `written`.
    fn depose(written: u64) -> Action {
        Action::Depose { term: 42, written }
    }

    /// Keep-alives answered every quarter lease time after `from` and before `to`: every
    /// action they led to.
    fn kept_alive(election: &mut Election, from: Instant, to: Instant) -> Vec<Action> {
        let mut actions = vec![];
        let mut at = from + TTL / 4;
        while at < to {
            actions.extend(election.handle(at, renewed(at)));
            at += TTL / 4;
        }
        actions
    }

    /// A key of `node` at create revision `revision`, rewritten at `written`, whose holder
    /// says it may be called gone 7/8 of a lease time after a rewrite.
    fn rewritten_key(node: &str, revision: u64, written: u64) -> Option<Leader> {
        key(node, revision, 99).map(|leader| Leader {
            written,
            stale_after: Some(TTL * 7 / 8),
            ..leader
        })
    }

    #[test]
    fn a_member_deletes_a_key_not_rewritten_for_the_time_its_holder_published_then_campaigns() {
        let t0 = start();
        let stale = TTL * 7 / 8;
        let mut election = member(t0);
        election.handle(t0, is(rewritten_key("b", 42, 42), 42));
        election.handle(t0, Input::Eligible(true));
        assert_eq!(election.poll_timeout(), Some(t0 + TTL / 4));
        // Each rewrite seen starts the wait over.
        let seen = t0 + ms(500);
        election.handle(seen, renewed(seen));
        assert_eq!(
            election.handle(seen, is(rewritten_key("b", 42, 50), 50)),
            vec![]
        );
        assert!(election.poll_timeout() <= Some(seen + stale));
        let before = seen + stale - ms(1);
        assert_eq!(kept_alive(&mut election, seen, before), vec![]);
        let deposes = election.handle(seen + stale, Input::Timeout);
        assert_eq!(deposes, vec![depose(50)]);
        // One delete at a time.
        assert_eq!(election.handle(seen + stale, Input::Timeout), vec![]);
        // It went through: campaign (the watch reports the same delete later).
        let gone = Input::Deposed {
            leader: None,
            at: 60,
        };
        let later = seen + stale + ms(5);
        election.handle(later, renewed(later));
        assert_eq!(election.handle(later, gone), vec![Action::Campaign(LEASE)]);

        // The holder rewrote the key just before: the answer shows it, the wait starts over.
        let mut raced = member(t0);
        raced.handle(t0, is(rewritten_key("b", 42, 42), 42));
        let at = t0 + stale;
        kept_alive(&mut raced, t0, at);
        let due = raced.handle(at, Input::Timeout);
        assert!(due.contains(&depose(42)), "{due:?}");
        let rewritten = Input::Deposed {
            leader: rewritten_key("b", 42, 55),
            at: 55,
        };
        assert_eq!(raced.handle(at + ms(5), rewritten), vec![]);
        assert_eq!(raced.leader().map(|l| l.written), Some(55));
        assert!(raced.poll_timeout() <= Some(at + ms(5) + TTL / 4));
        kept_alive(&mut raced, at, at + stale);
        let retry = raced.handle(at + ms(5) + stale, Input::Timeout);
        assert!(retry.contains(&depose(55)), "{retry:?}");
        // No answer: tried again (the driver waited before saying so).
        assert_eq!(
            raced.handle(at + ms(6) + stale, Input::DeposeFailed),
            vec![depose(55)]
        );
    }

    #[test]
    fn back_in_touch_with_etcd_a_member_gives_the_leader_a_whole_wait_to_rewrite_its_key() {
        let t0 = start();
        let mut election = member(t0);
        election.handle(t0, is(rewritten_key("b", 42, 42), 42));
        // etcd goes for 3 s: no keep-alive of ours is answered either, and nothing is
        // deleted meanwhile (it could only land once etcd is back, racing the rewrite).
        let out = t0 + TTL * 7 / 8;
        assert_eq!(
            election.handle(out, Input::Timeout),
            vec![Action::RenewLease(LEASE)]
        );
        let back = t0 + ms(3000);
        assert_eq!(election.handle(back, renewed(back)), vec![]);
        let stale = back + TTL * 7 / 8;
        assert_eq!(kept_alive(&mut election, back, stale), vec![]);
        assert_eq!(election.handle(stale, Input::Timeout), vec![depose(42)]);
    }

    #[test]
    fn a_key_is_left_to_its_lease_by_fronts_promised_members_and_when_its_holder_said_nothing() {
        let t0 = start();
        let long_after = t0 + TTL * 10;
        // An older leader that publishes no stale time.
        let mut election = member(t0);
        election.handle(t0, is(key("b", 42, 99), 42));
        assert_eq!(kept_alive(&mut election, t0, long_after), vec![]);
        // A front.
        let mut front = Election::new("f", TTL, false);
        front.handle(t0, renewed(t0));
        front.handle(t0, is(rewritten_key("b", 42, 42), 42));
        assert_eq!(kept_alive(&mut front, t0, long_after), vec![]);
        // Our own key on our lease is rewritten, not deleted; on an earlier lease (a run
        // killed and restarted), it is deleted as anyone else's.
        let mut own = member(t0);
        own.handle(t0, is(rewritten_key("a", 42, 42), 42));
        let due = kept_alive(&mut own, t0, t0 + TTL + ms(1));
        assert_eq!(due, vec![depose(42)]);
        // A member that promised the leader (`keep-if-peers-confirm`) waits the promise out.
        let mut promised = Election::new("b", TTL, true).keep_if_peers_confirm();
        promised.handle(t0, renewed(t0));
        promised.handle(t0, is(rewritten_key("a", 42, 42), 42));
        let asked = t0 + ms(100);
        promised.confirm(asked, "a", 42, TTL).expect("confirmed");
        let kept = asked + TTL;
        assert_eq!(kept_alive(&mut promised, t0, kept), vec![]);
        assert_eq!(promised.handle(kept, Input::Timeout), vec![depose(42)]);
    }

    #[test]
    fn a_leader_that_may_no_longer_lead_resigns_at_once_and_waits_for_it_before_campaigning() {
        let t0 = start();
        for (input, why) in [
            (Input::Eligible(false), "not eligible"),
            (Input::Leave, "leaving"),
        ] {
            let mut election = leading(t0);
            let gone = election.handle(t0 + ms(1), input);
            assert_eq!(
                gone,
                vec![Action::Resign(42, None), role(false, 42)],
                "{why}"
            );
            assert_eq!(election.handle(t0 + ms(2), is(None, 43)), vec![], "{why}");
        }
        // Eligible again before the resignation was answered: no campaign that could find
        // our own key still there and act on it, only after.
        let mut election = leading(t0);
        election.handle(t0 + ms(1), Input::Eligible(false));
        assert_eq!(election.handle(t0 + ms(2), Input::Eligible(true)), vec![]);
        let after = election.handle(t0 + ms(3), Input::Resigned);
        assert_eq!(after, vec![Action::Campaign(LEASE)]);
    }

    #[test]
    fn after_a_switchover_the_old_leader_resigns_and_stands_aside_for_a_lease_time() {
        let t0 = start();
        let mut election = leading(t0);
        let handed = election.handle(t0 + ms(10), Input::Yield { to: None });
        assert_eq!(handed, vec![Action::Resign(42, None), role(false, 42)]);
        election.handle(t0 + ms(11), Input::Resigned);
        // Vacant, but this node stands aside: the others campaign.
        assert_eq!(election.handle(t0 + ms(12), is(None, 43)), vec![]);
        election.handle(t0 + ms(20), is(key("b", 44, 99), 44));
        // b dies later; the yield is over: this node campaigns again.
        let later = t0 + ms(10) + TTL;
        election.handle(
            later,
            Input::LeaseRenewed {
                id: LEASE,
                sent: later,
            },
        );
        assert_eq!(
            election.handle(later, is(None, 60)),
            vec![Action::Campaign(LEASE)]
        );
        // A standby asked to yield does nothing.
        let mut standby = member(t0);
        standby.handle(t0, is(key("b", 5, 99), 5));
        standby.handle(t0, Input::Eligible(true));
        standby.handle(t0, Input::Yield { to: None });
        assert_eq!(
            standby.handle(t0 + ms(1), is(None, 6)),
            vec![Action::Campaign(LEASE)]
        );
    }

    #[test]
    fn a_switchover_to_a_named_member_lets_only_it_campaign_for_a_lease_time() {
        let t0 = start();
        let mut leader = leading(t0);
        let handed = leader.handle(
            t0,
            Input::Yield {
                to: Some("b".to_owned()),
            },
        );
        assert_eq!(handed[0], Action::Resign(42, Some("b".to_owned())));
        // Another member sees the vacancy that names b: it waits.
        let handover = |to: &str| Input::LeaderIs {
            leader: None,
            at: 50,
            handover: Some(crate::cluster::Handover {
                to: Some(to.to_owned()),
                term: 0,
            }),
        };
        let mut other = member(t0);
        other.handle(t0, is(key("a", 42, 99), 42));
        other.handle(t0, Input::Eligible(true));
        assert_eq!(other.handle(t0 + ms(1), handover("b")), vec![]);
        assert!(other
            .poll_timeout()
            .is_some_and(|at| at <= t0 + ms(1) + TTL));
        // b did not take it within a lease time: the others campaign.
        let later = t0 + ms(1) + TTL;
        let renewed = other.handle(
            later,
            Input::LeaseRenewed {
                id: LEASE,
                sent: later,
            },
        );
        assert_eq!(renewed, vec![Action::Campaign(LEASE)]);
        // The named member campaigns at once.
        let mut named = Election::new("b", TTL, true);
        named.handle(t0, Input::LeaseRenewed { id: 3, sent: t0 });
        named.handle(t0, is(key("a", 42, 99), 42));
        named.handle(t0, Input::Eligible(true));
        assert_eq!(
            named.handle(t0 + ms(1), handover("b")),
            vec![Action::Campaign(3)]
        );
    }

    #[test]
    fn a_front_never_campaigns() {
        let t0 = start();
        let mut election = Election::new("f", TTL, false);
        election.handle(t0, Input::LeaseRenewed { id: 9, sent: t0 });
        assert_eq!(election.handle(t0, Input::Eligible(true)), vec![]);
        assert_eq!(election.handle(t0, is(None, 3)), vec![role(false, 0)]);
        election.handle(t0, is(key("b", 5, 99), 5));
        assert_eq!(election.leader().map(|l| l.revision), Some(5));
        assert_eq!(election.fresh_until(), Some(t0 + TTL * 3 / 4));
    }

    #[test]
    fn a_lost_lease_is_asked_for_again_and_nothing_acts_meanwhile() {
        let t0 = start();
        let mut election = leading(t0);
        let lost = election.handle(t0 + ms(100), Input::LeaseLost);
        assert!(lost.contains(&Action::GrantLease), "{lost:?}");
        assert!(lost.contains(&role(false, 42)), "{lost:?}");
        assert_eq!(election.poll_timeout(), None);
        assert_eq!(election.fresh_until(), None);
    }

    #[test]
    fn a_key_on_an_earlier_lease_is_never_acted_on() {
        let t0 = start();
        let mut election = leading(t0);
        // The lease is lost and a new one granted before the watch reports the old key gone.
        election.handle(t0 + ms(100), Input::LeaseLost);
        let renewed = election.handle(
            t0 + ms(110),
            Input::LeaseRenewed {
                id: 8,
                sent: t0 + ms(105),
            },
        );
        assert_eq!(renewed, vec![], "the key still names us, on lease {LEASE}");
        assert_eq!(election.act_until(), None);
        // The old key goes with its lease; then we campaign with the new lease.
        let vacant = election.handle(t0 + ms(120), is(None, 50));
        assert_eq!(vacant, vec![Action::Campaign(8)]);
        // The same for a run restarted within the TTL, finding its predecessor's key.
        let mut restarted = member(t0);
        restarted.handle(t0, Input::Eligible(true));
        let found = restarted.handle(t0, is(key("a", 42, 99), 42));
        assert_eq!(found, vec![role(false, 42)]);
        assert_eq!(restarted.act_until(), None);
    }

    #[test]
    fn an_answer_older_than_what_the_watch_said_changes_nothing() {
        let t0 = start();
        let mut election = member(t0);
        election.handle(t0, is(None, 10));
        election.handle(t0, Input::Eligible(true));
        // The watch saw our key (42), its deletion (51) and b's (52) before our campaign's
        // answer came: that answer, of revision 42, is ignored.
        election.handle(t0, is(key("a", 42, LEASE), 42));
        election.handle(t0, is(None, 51));
        let b = election.handle(t0, is(key("b", 52, 99), 52));
        assert!(
            !b.iter()
                .any(|a| matches!(a, Action::Role { active: true, .. })),
            "{b:?}"
        );
        let late = election.handle(t0, campaigned(key("a", 42, LEASE), 42, t0));
        assert_eq!(late, vec![]);
        assert_eq!(election.leader().map(|l| l.node.as_str()), Some("b"));
        assert_eq!(election.act_until(), None);
        // A failed campaign does not say the key is vacant.
        let mut failed = member(t0);
        failed.handle(t0, is(key("b", 5, 99), 5));
        failed.handle(t0, Input::Eligible(true));
        assert_eq!(failed.handle(t0, Input::CampaignFailed), vec![]);
        assert_eq!(failed.leader().map(|l| l.node.as_str()), Some("b"));
    }

    #[test]
    fn a_passed_yield_or_handover_is_no_deadline() {
        let t0 = start();
        let mut election = leading(t0);
        election.handle(t0 + ms(10), Input::Yield { to: None });
        election.handle(t0 + ms(11), Input::Resigned);
        election.handle(t0 + ms(12), is(key("b", 44, 99), 44));
        let after = t0 + ms(10) + TTL;
        election.handle(after, renewed(after));
        // A deadline in the past would wake the driver at once, in a loop.
        let next = election.poll_timeout().expect("a keep-alive is due");
        assert!(next > after, "{:?} after the yield ended", next - after);
        assert!(!election.yielding(after));
    }

    /// A secondary under `prefer-primary`, with a lease granted at `t0`.
    fn secondary(t0: Instant) -> Election {
        let mut election = Election::new("s", TTL, true).secondary_preferring_primary(ms(500));
        election.handle(t0, renewed(t0));
        election.handle(t0, Input::Eligible(true));
        election
    }

    /// Our lease `LEASE`, renewed by a keep-alive sent at `at`.
    fn renewed(at: Instant) -> Input {
        Input::LeaseRenewed {
            id: LEASE,
            sent: at,
        }
    }

    /// A primary ready on standby that knows every term the tests use.
    fn primary_standby(node: Option<&str>) -> Input {
        Input::PrimaryStandby(node.map(|node| (node.to_owned(), 1000)))
    }

    #[test]
    fn a_secondary_leaves_a_vacant_key_to_a_ready_primary_for_one_lease_time() {
        let t0 = start();
        let mut election = secondary(t0);
        election.handle(t0, primary_standby(Some("p")));
        assert_eq!(election.handle(t0, is(None, 10)), vec![role(false, 0)]);
        assert!(election.poll_timeout().is_some_and(|at| at <= t0 + TTL));
        // The primary did not take it within a lease time: the secondary does.
        let later = t0 + TTL;
        let campaigns = election.handle(later, renewed(later));
        assert_eq!(campaigns, vec![Action::Campaign(LEASE)]);
        // At start-up it waits a lease time even when the members name no primary: one
        // starting alongside may not have published itself yet.
        let mut alone = secondary(t0);
        // Members read before the key: no campaign on a key never read.
        assert_eq!(alone.handle(t0, primary_standby(None)), vec![]);
        assert_eq!(alone.handle(t0, is(None, 10)), vec![role(false, 0)]);
        assert_eq!(alone.handle(t0, primary_standby(None)), vec![]);
        assert_eq!(
            alone.handle(later, renewed(later)),
            vec![Action::Campaign(LEASE)]
        );
        // A key that goes later, with no primary ready: it campaigns at once.
        let mut after = secondary(t0);
        after.handle(t0, is(key("o", 5, 77), 10));
        after.handle(t0, primary_standby(None));
        let gone = after.handle(t0 + ms(1), is(None, 11));
        assert_eq!(gone, vec![Action::Campaign(LEASE)]);
        // The primary took the key (its standby report is older): nobody waits for it.
        let mut stale = secondary(t0);
        stale.handle(t0, primary_standby(Some("p")));
        stale.handle(t0, is(key("p", 5, 77), 10));
        let gone = stale.handle(t0 + ms(1), is(None, 11));
        assert_eq!(gone, vec![Action::Campaign(LEASE)]);
        // Unless it says it is a ready standby again after that (restarted within its lease).
        let mut restarted = secondary(t0);
        restarted.handle(t0, is(key("p", 5, 77), 10));
        restarted.handle(t0, primary_standby(Some("p")));
        let gone = restarted.handle(t0 + ms(1), is(None, 11));
        assert_eq!(gone, vec![]);
        // Sticky: no waiting.
        let mut sticky = member(t0);
        sticky.handle(t0, primary_standby(Some("p")));
        sticky.handle(t0, is(None, 10));
        let eligible = sticky.handle(t0, Input::Eligible(true));
        assert_eq!(eligible, vec![Action::Campaign(LEASE)]);
    }

    #[test]
    fn a_secondary_named_by_a_switchover_takes_the_key_at_once() {
        let t0 = start();
        let mut election = secondary(t0);
        election.handle(t0, primary_standby(Some("p")));
        election.handle(t0, is(key("o", 5, 77), 10));
        let named = election.handle(
            t0 + ms(1),
            Input::LeaderIs {
                leader: None,
                at: 11,
                handover: Some(crate::cluster::Handover {
                    to: Some("s".to_owned()),
                    term: 0,
                }),
            },
        );
        assert_eq!(named, vec![Action::Campaign(LEASE)]);
    }

    #[test]
    fn an_active_secondary_hands_back_to_a_primary_ready_for_the_preempt_delay() {
        let t0 = start();
        let mut election = secondary(t0);
        election.handle(t0, primary_standby(None));
        election.handle(t0, is(None, 10));
        let won = election.handle(t0, campaigned(key("s", 42, LEASE), 42, t0));
        assert_eq!(won, vec![role(true, 42)]);
        // The primary comes back, then goes before the delay is over: nothing.
        election.handle(t0 + ms(100), primary_standby(Some("p")));
        election.handle(t0 + ms(400), primary_standby(None));
        let stays = election.handle(t0 + ms(700), Input::Timeout);
        assert_eq!(
            stays,
            vec![Action::RenewLease(LEASE), Action::Rewrite(42, LEASE)]
        );
        election.handle(
            t0 + ms(700),
            Input::Rewritten {
                term: 42,
                sent: t0 + ms(700),
            },
        );
        // It comes back and stays ready for the delay: hand over to it by name.
        election.handle(t0 + ms(1000), renewed(t0 + ms(1000)));
        election.handle(t0 + ms(1000), primary_standby(Some("p")));
        assert!(election
            .poll_timeout()
            .is_some_and(|at| at <= t0 + ms(1500)));
        let handed = election.handle(t0 + ms(1500), Input::Timeout);
        assert!(
            handed.ends_with(&[Action::Resign(42, Some("p".to_owned())), role(false, 42)]),
            "{handed:?}"
        );
        assert!(election.failing_back(t0 + ms(1500)));
        // Ready but behind our term (its view of the key lags): it would not take the key.
        let mut behind = secondary(t0);
        behind.handle(t0, primary_standby(None));
        behind.handle(t0, is(None, 10));
        behind.handle(t0, campaigned(key("s", 42, LEASE), 42, t0));
        behind.handle(t0, Input::PrimaryStandby(Some(("p".to_owned(), 41))));
        let later = behind.handle(t0 + ms(700), Input::Timeout);
        assert!(
            !later.iter().any(|a| matches!(a, Action::Resign(..))),
            "{later:?}"
        );
        assert!(!behind.yielding(t0 + ms(700)));
        // A primary never hands over to another primary.
        let mut primary = Election::new("p", TTL, true);
        primary.handle(t0, renewed(t0));
        primary.handle(t0, Input::Eligible(true));
        primary.handle(t0, is(None, 10));
        primary.handle(t0, campaigned(key("p", 42, LEASE), 42, t0));
        primary.handle(t0, primary_standby(Some("q")));
        let stays = primary.handle(t0 + ms(600), Input::Timeout);
        assert_eq!(
            stays,
            vec![Action::RenewLease(LEASE), Action::Rewrite(42, LEASE)]
        );
    }

    /// `keep-if-peers-confirm`: a member started at `t0` that won the key at revision 42 once
    /// its start-up promise (one lease time) ended, its lease renewed at `t0 + TTL`.
    fn failsafe_leading(t0: Instant) -> Election {
        failsafe_won(Election::new("a", TTL, true).keep_if_peers_confirm(), t0)
    }

    /// `election` (named "a", "s" or "p", in `keep-if-peers-confirm`) after it won the key
    /// at revision 42, as [`failsafe_leading`] says.
    fn failsafe_won(mut election: Election, t0: Instant) -> Election {
        let node = election.node.clone();
        election.handle(t0, Input::Timeout);
        election.handle(t0, Input::Eligible(true));
        let renewed = Input::LeaseRenewed {
            id: LEASE,
            sent: t0,
        };
        election.handle(t0, renewed);
        // A run restarted may have forgotten a promise: no campaign for one lease time.
        assert_eq!(election.handle(t0, is(None, 10)), vec![role(false, 0)]);
        let later = t0 + TTL;
        let renewed = Input::LeaseRenewed {
            id: LEASE,
            sent: later,
        };
        assert_eq!(
            election.handle(later, renewed),
            vec![Action::Campaign(LEASE)]
        );
        let won = election.handle(later, campaigned(key(&node, 42, LEASE), 42, later));
        assert_eq!(won, vec![Action::AskPeers(42), role(true, 42)]);
        election
    }

    /// Acts on confirmations alone from `from` to `to` (etcd answers nothing): a round
    /// every quarter lease time, every member confirming. Every action on the way.
    fn on_confirmations_alone(election: &mut Election, from: Instant, to: Instant) -> Vec<Action> {
        election.handle(from, confirmed(42, from));
        let mut actions = vec![];
        let mut now = from;
        while now < to {
            now += TTL / 4;
            actions.extend(election.handle(now, Input::Timeout));
            actions.extend(election.handle(now, confirmed(42, now)));
        }
        assert!(election.on_confirmations(now), "{election:?}");
        actions
    }

    #[test]
    fn acting_on_confirmations_alone_it_neither_switches_over_nor_hands_back() {
        // Nobody could take the key while etcd is gone: giving the role up would leave the
        // cluster with no active member, and the resignation could not reach etcd anyway.
        let t0 = start();
        let won = t0 + TTL;
        let mut election = failsafe_leading(t0);
        on_confirmations_alone(&mut election, won, won + TTL * 2);
        let asked = election.handle(won + TTL * 2, Input::Yield { to: None });
        assert!(
            !asked.iter().any(|a| matches!(a, Action::Resign(..))),
            "{asked:?}"
        );
        assert!(!election.yielding(won + TTL * 2));
        assert_eq!(election.acting(), Some(42));
        // A secondary under prefer-primary, its primary ready on standby meanwhile.
        let secondary = Election::new("s", TTL, true)
            .secondary_preferring_primary(ms(500))
            .keep_if_peers_confirm();
        let mut secondary = failsafe_won(secondary, t0);
        on_confirmations_alone(&mut secondary, won, won + TTL * 2);
        secondary.handle(won + TTL * 2, primary_standby(Some("p")));
        let actions = on_confirmations_alone(&mut secondary, won + TTL * 2, won + TTL * 3);
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Resign(..))),
            "{actions:?}"
        );
        assert!(!secondary.failing_back(won + TTL * 3));
        assert_eq!(secondary.acting(), Some(42));
    }

    fn confirmed(term: u64, sent: Instant) -> Input {
        Input::PeersConfirmed {
            term,
            sent,
            promised: TTL,
        }
    }

    #[test]
    fn keep_if_peers_confirm_acts_past_the_lease_while_every_member_confirms_and_no_longer() {
        let t0 = start();
        let mut election = failsafe_leading(t0);
        let lease_end = t0 + TTL + TTL * 3 / 4;
        election.handle(t0 + TTL, confirmed(42, t0 + TTL));
        // etcd is gone: no keep-alive is answered, but a round every ttl/4 is confirmed.
        let mut now = t0 + TTL;
        while now < lease_end + TTL * 3 {
            now += TTL / 4;
            let actions = election.handle(now, Input::Timeout);
            assert!(actions.contains(&Action::AskPeers(42)), "{actions:?}");
            assert!(!actions.contains(&role(false, 42)), "{actions:?}");
            election.handle(now + ms(3), confirmed(42, now));
            assert_eq!(election.act_until(), Some(now + TTL * 3 / 4));
            // The lease's own deadline may be past: the driver is not woken for it.
            assert!(election.poll_timeout() > Some(now + ms(3)));
            // Its own front ends serve as long as it acts.
            assert_eq!(election.fresh_until(), election.act_until());
            assert_eq!(election.on_confirmations(now + ms(3)), now >= lease_end);
        }
        // A member stops confirming: acting ends 3/4 of a lease time after the last round
        // every member confirmed was sent, and no confirmation of another term counts.
        let last = now;
        now += TTL / 4;
        assert!(election
            .handle(now, Input::Timeout)
            .contains(&Action::AskPeers(42)));
        election.handle(now + ms(3), Input::PeersRefused);
        election.handle(now + ms(4), confirmed(41, now));
        assert_eq!(election.act_until(), Some(last + TTL * 3 / 4));
        let ended = election.handle(last + TTL * 3 / 4, Input::Timeout);
        assert!(ended.contains(&role(false, 42)), "{ended:?}");
        assert_eq!(election.act_until(), None);
        // A confirmation arriving after that brings nothing back.
        election.handle(last + TTL, confirmed(42, last + TTL));
        assert_eq!(election.act_until(), None);
        assert!(!election.on_confirmations(last + TTL));
    }

    #[test]
    fn a_shorter_promise_shortens_the_time_acted_on_it() {
        let t0 = start();
        let mut election = failsafe_leading(t0);
        let sent = t0 + TTL + ms(10);
        let short = Input::PeersConfirmed {
            term: 42,
            sent,
            promised: TTL / 2,
        };
        election.handle(sent, short);
        // The lease's deadline is later than 3/4 of that promise.
        assert_eq!(election.act_until(), Some(t0 + TTL + TTL * 3 / 4));
        let after = election.handle(t0 + TTL + TTL * 3 / 4, Input::Timeout);
        assert!(after.contains(&role(false, 42)), "{after:?}");
    }

    /// A standby member (`b`) past its start-up promise, following `a` in term 42.
    fn failsafe_follower(t0: Instant) -> Election {
        let mut election = Election::new("b", TTL, true).keep_if_peers_confirm();
        election.handle(t0, Input::Timeout);
        election.handle(t0, Input::Eligible(true));
        election.handle(t0, is(key("a", 42, 99), 42));
        let renewed = Input::LeaseRenewed {
            id: LEASE,
            sent: t0 + TTL,
        };
        assert_eq!(election.handle(t0 + TTL, renewed), vec![]);
        election
    }

    #[test]
    fn a_member_confirms_only_the_leader_it_knows_and_then_keeps_off_the_key_for_a_lease_time() {
        let t0 = start();
        let now = t0 + TTL + ms(100);
        let mut election = failsafe_follower(t0);
        assert!(election.confirm(now, "a", 41, TTL).is_err());
        assert!(election.confirm(now, "c", 42, TTL).is_err());
        assert_eq!(election.confirm(now, "a", 42, ms(1900)), Ok(TTL));
        // The follower vouches for a as long as a said it may act (its own lease may be
        // stale), not as long as it promised.
        assert_eq!(election.fresh_until(), Some(now + ms(1900)));
        // a's key goes with its lease (etcd deleted it; a did not resign): b waits out the
        // promise before it campaigns.
        assert_eq!(election.handle(now + ms(1), is(None, 50)), vec![]);
        assert!(election.poll_timeout() <= Some(now + TTL));
        let renewed = Input::LeaseRenewed {
            id: LEASE,
            sent: now + TTL,
        };
        assert_eq!(
            election.handle(now + TTL, renewed),
            vec![Action::Campaign(LEASE)]
        );
        // Nobody confirms a vacant key.
        assert!(election.confirm(now + TTL, "a", 42, TTL).is_err());
    }

    #[test]
    fn a_promise_ends_when_its_leader_resigns_so_a_switchover_stays_immediate() {
        let t0 = start();
        let now = t0 + TTL + ms(100);
        let mut election = failsafe_follower(t0);
        election.confirm(now, "a", 42, TTL).expect("confirmed");
        // Another term's resignation releases nothing.
        let other = Input::LeaderIs {
            leader: None,
            at: 50,
            handover: Some(crate::cluster::Handover { to: None, term: 7 }),
        };
        assert_eq!(election.handle(now + ms(1), other), vec![]);
        let resigned = Input::LeaderIs {
            leader: None,
            at: 51,
            handover: Some(crate::cluster::Handover { to: None, term: 42 }),
        };
        assert_eq!(
            election.handle(now + ms(2), resigned),
            vec![Action::Campaign(LEASE)]
        );
    }

    #[test]
    fn an_active_member_or_one_not_in_failsafe_mode_does_not_confirm() {
        let t0 = start();
        let mut active = failsafe_leading(t0);
        let refused = active.confirm(t0 + TTL, "b", 42, TTL);
        assert!(refused.is_err_and(|why| why.contains("acts as active")));
        let mut plain = member(t0);
        plain.handle(t0, is(key("b", 42, 99), 42));
        let refused = plain.confirm(t0, "b", 42, TTL);
        assert!(refused.is_err_and(|why| why.contains("keep-if-peers-confirm")));
    }

    #[test]
    fn a_stale_key_is_deleted_only_after_its_holder_stopped_acting_in_every_seeded_schedule() {
        for seed in 0..4000 {
            a_stale_key_schedule(seed);
        }
    }

    /// What happens next in [`a_stale_key_schedule`].
    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum Step {
        ATimeout,
        BTimeout,
        /// etcd answers `a`: a rewrite sent at this offset went through.
        ARewritten(Duration),
        ARewriteFailed,
        ARenewed(Duration),
        BRenewed(Duration),
        /// etcd tells `b` the key was written at this revision (watch).
        BSees(u64),
        /// etcd answers `b`'s delete: gone, or the key as it is.
        BDeposed(Option<u64>, u64),
        BDeposeFailed,
        /// `a`'s rewrite sent at this offset reaches etcd.
        RewriteLands(Duration),
        /// A keep-alive of `a` (or `b`) sent at this offset reaches etcd.
        RenewLands(bool, Duration),
        /// `b`'s delete of the key as written at this revision reaches etcd.
        DeposeLands(u64),
    }

    /// The faults of [`a_stale_key_schedule`], from a random instant on.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fault {
        Killed,
        /// Frozen, then resumed.
        Frozen,
        /// `a` alone cut from etcd.
        Cut,
        /// etcd gone for everyone, then back.
        Outage,
    }

    /// One schedule, replayed from its seed: `a` leads in term 42 and rewrites its key
    /// through a model of etcd with random delays (0–300 ms) and lost requests or answers
    /// (one in ten); `b` follows, renews its own lease, and deletes the key once stale. From a
    /// random instant on, `a` is killed, frozen (then resumed) or cut from etcd, or etcd is
    /// gone for both (then back). Whenever the delete lands, what `a`'s front ends were last
    /// told (active until when) must have passed; the delete comes soon after a kill or a
    /// cut, after a freeze longer than a lease, and never within a whole wait of etcd's return.
    fn a_stale_key_schedule(seed: u64) {
        use std::cmp::Reverse;
        use std::collections::{BinaryHeap, HashSet};
        let mut rng = crate::sip::TokenSource::seeded(seed);
        let mut random = move |below: u64| rng.next_u64() % below;
        let t0 = start();
        let horizon = ms(16_000);
        let fault_at = ms(random(8000));
        let resume_at = fault_at + ms(random(4000));
        let fault = [Fault::Killed, Fault::Frozen, Fault::Cut, Fault::Outage][(seed % 4) as usize];
        let mut a = leading(t0);
        let mut b = Election::new("b", TTL, true);
        b.handle(t0, renewed(t0));
        b.handle(t0, Input::Eligible(false));
        b.handle(t0, is(rewritten_key("a", 42, 42), 42));
        let (mut written, mut revision, mut deleted) = (42u64, 42u64, None::<Duration>);
        let mut serves_until = a.acting().and(a.fresh_until());
        let (mut a_wakes, mut b_wakes) = (HashSet::new(), HashSet::new());
        let mut queue = BinaryHeap::new();
        let mut order = 0u64;
        let mut push = |queue: &mut BinaryHeap<_>, at: Duration, step: Step| {
            order += 1;
            queue.push(Reverse((at, order, step)));
        };
        push(&mut queue, ms(0), Step::ATimeout);
        push(&mut queue, ms(0), Step::BTimeout);
        while let Some(Reverse((at, _, step))) = queue.pop() {
            if at > horizon {
                break;
            }
            let to_a = matches!(
                step,
                Step::ATimeout | Step::ARewritten(_) | Step::ARewriteFailed | Step::ARenewed(_)
            );
            if to_a && at >= fault_at && fault == Fault::Killed {
                continue;
            }
            if to_a && fault == Fault::Frozen && (fault_at..resume_at).contains(&at) {
                push(&mut queue, resume_at, step); // handled once the process runs again
                continue;
            }
            let a_cut = fault == Fault::Cut && at >= fault_at;
            let etcd_gone = fault == Fault::Outage && (fault_at..resume_at).contains(&at);
            let now = t0 + at;
            let lost = random(10) == 0;
            let delay = ms(random(301));
            let (mut a_actions, mut b_actions) = (vec![], vec![]);
            match step {
                Step::ATimeout => a_actions = a.handle(now, Input::Timeout),
                Step::ARewritten(sent) => {
                    let input = Input::Rewritten {
                        term: 42,
                        sent: t0 + sent,
                    };
                    a_actions = a.handle(now, input);
                }
                Step::ARewriteFailed => a_actions = a.handle(now, Input::RewriteFailed),
                Step::ARenewed(sent) => a_actions = a.handle(now, renewed(t0 + sent)),
                Step::BRenewed(sent) => b_actions = b.handle(now, renewed(t0 + sent)),
                Step::BTimeout => b_actions = b.handle(now, Input::Timeout),
                Step::BSees(w) => {
                    let seen = is(rewritten_key("a", 42, w), i64::try_from(w).unwrap_or(0));
                    b_actions = b.handle(now, seen);
                }
                Step::BDeposed(key, at_revision) => {
                    let leader = key.and_then(|w| rewritten_key("a", 42, w));
                    let at = i64::try_from(at_revision).unwrap_or(0);
                    b_actions = b.handle(now, Input::Deposed { leader, at });
                }
                Step::BDeposeFailed => b_actions = b.handle(now, Input::DeposeFailed),
                Step::RewriteLands(_) if etcd_gone => {
                    push(&mut queue, at + TTL / 2, Step::ARewriteFailed);
                }
                Step::RewriteLands(sent) if deleted.is_none() => {
                    revision += 1;
                    written = revision;
                    push(&mut queue, at + delay, Step::BSees(written));
                    let answer = if lost {
                        Step::ARewriteFailed
                    } else {
                        Step::ARewritten(sent)
                    };
                    push(&mut queue, at + delay, answer);
                }
                Step::RewriteLands(_) => push(&mut queue, at + delay, Step::ARewriteFailed),
                Step::RenewLands(..) if etcd_gone => {}
                Step::RenewLands(true, sent) => push(&mut queue, at + delay, Step::ARenewed(sent)),
                Step::RenewLands(false, sent) => {
                    push(&mut queue, at + delay, Step::BRenewed(sent));
                }
                Step::DeposeLands(_) if etcd_gone => {
                    push(&mut queue, at + TTL / 4 + delay, Step::BDeposeFailed);
                }
                Step::DeposeLands(seen) => {
                    let went = deleted.is_none() && seen == written;
                    if went {
                        revision += 1;
                        deleted = Some(at);
                    }
                    let key = deleted.is_none().then_some(written);
                    let answer = if lost {
                        Step::BDeposeFailed
                    } else {
                        Step::BDeposed(key, revision)
                    };
                    let pause = if lost { TTL / 4 } else { ms(0) };
                    push(&mut queue, at + delay + pause, answer);
                }
            }
            if to_a {
                // What a's front ends were last told: active until then.
                serves_until = a.acting().and(a.fresh_until());
            }
            if let Some(gone) = deleted {
                let until = serves_until.map(|until| until - t0);
                assert!(
                    until.is_none_or(|until| until <= gone),
                    "seed {seed}: a serves as active until {until:?}, its key deleted at {gone:?}"
                );
            }
            for action in a_actions {
                match action {
                    // Unanswered: the call's deadline, half a lease time.
                    Action::Rewrite(..) if a_cut || lost => {
                        push(&mut queue, at + TTL / 2, Step::ARewriteFailed);
                    }
                    Action::Rewrite(..) => push(&mut queue, at + delay, Step::RewriteLands(at)),
                    Action::RenewLease(_) if !a_cut && !lost => {
                        push(&mut queue, at + delay, Step::RenewLands(true, at));
                    }
                    _ => {}
                }
            }
            for action in b_actions {
                match action {
                    Action::Depose { written, .. } => {
                        push(&mut queue, at + delay, Step::DeposeLands(written));
                    }
                    // b's own keep-alives are never lost: the liveness checks below are of
                    // a's faults (a member out of touch gives the leader a whole wait more).
                    Action::RenewLease(_) => {
                        push(&mut queue, at + delay, Step::RenewLands(false, at));
                    }
                    _ => {}
                }
            }
            let (next, timeout) = if to_a {
                (a.poll_timeout(), Step::ATimeout)
            } else if matches!(
                step,
                Step::BTimeout
                    | Step::BSees(_)
                    | Step::BDeposed(..)
                    | Step::BDeposeFailed
                    | Step::BRenewed(_)
            ) {
                (b.poll_timeout(), Step::BTimeout)
            } else {
                (None, Step::BTimeout)
            };
            // One wake per deadline, not one per step.
            let scheduled = if timeout == Step::ATimeout {
                &mut a_wakes
            } else {
                &mut b_wakes
            };
            if let Some(next) = next.filter(|next| scheduled.insert(*next)) {
                push(&mut queue, (next - t0).max(at + ms(1)), timeout);
            }
        }
        let after_fault = deleted.map(|gone| gone.saturating_sub(fault_at));
        match fault {
            // Its last rewrite may land, be seen, and the delete land, 300 ms each, after.
            Fault::Killed | Fault::Cut => assert!(
                after_fault.is_some_and(|took| took <= TTL * 7 / 8 + ms(900)),
                "seed {seed}: a's key deleted {after_fault:?} after the fault"
            ),
            // Its last rewrites may land, be seen, and the delete land, 300 ms each, after.
            Fault::Frozen if resume_at >= fault_at + TTL * 3 / 2 => {
                assert!(deleted.is_some(), "seed {seed}: frozen a's key never deleted");
            }
            // Long enough for b to notice (its own lease's margin passed, and it woke).
            Fault::Outage if resume_at >= fault_at + TTL => assert!(
                deleted.is_none_or(|gone| gone < fault_at || gone >= resume_at + TTL * 7 / 8),
                "seed {seed}: deleted at {deleted:?}, within a wait of etcd's return at {resume_at:?}"
            ),
            Fault::Frozen | Fault::Outage => {}
        }
    }
}
