//! The election rules, and nothing else.
//!
//! [`Machine::step`] takes one [`Event`] and the current time and returns the [`Action`]s the
//! caller must perform; the caller feeds the results of those actions back as further events.
//! This file never does I/O and never reads a clock: time arrives as an argument, so every rule
//! here, the self-fencing deadline and the retry backoff included, is unit-tested exactly.
//!
//! # Safety model
//! A replica claims leadership only while all of these hold:
//! * etcd showed it the lock key under its own lease and with its own id (the winning
//!   transaction, or a read of the key), never because the value merely equals its id;
//! * the lease is known to be alive: the claim ends at
//!   `send time of the last acknowledged keep-alive + granted TTL - margin`. etcd cannot expire
//!   the lease before `send time + TTL`, because it restarts the countdown only when the request
//!   arrives, so the claim always ends first. Readers check the deadline against the clock on
//!   every question ([`crate::leadership::Snapshot::is_leader_at`]), so a frozen process answers
//!   "not leader" on its first question after it thaws;
//! * nothing since has said otherwise: a deleted or overwritten key, a lost watch, a keep-alive
//!   reply with TTL 0, or shutdown all end the claim at once.

use std::time::Duration;

use tokio::time::Instant;

pub use super::succession::LeaseId;
use super::succession::{choose, handoff_key, Candidate, Succession, Term};
use crate::backoff::Backoff;

/// After a crash (the key deleted by lease expiry), candidates campaign in the order of their
/// rank, the newest registration first: the best-ranked at once, the one ranked `r` after `r`
/// steps (at most [`MAX_DEFER`]), unless a write of the key shows up first. So a failover
/// costs about one campaign however many wait, and a best-ranked candidate that is dead or cut
/// off delays the others by at most `MAX_DEFER`.
pub const RANK_STEP: Duration = Duration::from_millis(10);
/// The longest a candidate defers its campaign after a crash.
pub const MAX_DEFER: Duration = Duration::from_millis(100);

/// How many leases whose revoke failed are remembered for another try. More than one only
/// happens when outages come and go faster than a grant succeeds; the oldest is then the
/// likeliest to have expired already.
const MAX_UNREVOKED: usize = 8;

/// Timing derived from the TTL; see [`Timing::for_ttl`] for the reasoning behind each value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The TTL asked of etcd.
    pub ttl: Duration,
    /// How often the keep-alive is sent: ttl/3, so two renewals may fail before the claim ends.
    pub keepalive_interval: Duration,
    /// Subtracted from the lease deadline before the claim ends.
    pub margin: Duration,
    /// First retry delay after an etcd failure.
    pub backoff_base: Duration,
    /// Longest retry delay; at most ttl/3 so that a recovered etcd is noticed within a renewal.
    pub backoff_cap: Duration,
    /// Bound on one etcd request (grant, transaction, revoke, one keep-alive round trip).
    pub request_timeout: Duration,
    /// After resigning, how long to wait before campaigning again, so that waiting
    /// candidates (who react in milliseconds) take over.
    pub resign_holdoff: Duration,
}

impl Timing {
    /// The timing for a TTL.
    ///
    /// The margin is a tenth of the TTL, at least 250 ms and at most 5 s. It has to cover what
    /// separates "our deadline" from "etcd's deadline" that the send-time rule does not: the
    /// clock-rate difference between this host and etcd's leader (ppm, so a tenth is generous)
    /// and the time between a probe being answered and the kubelet acting on it.
    #[must_use]
    pub fn for_ttl(ttl: Duration) -> Self {
        let margin = (ttl / 10).clamp(Duration::from_millis(250), Duration::from_secs(5));
        let keepalive_interval = ttl / 3;
        let request_timeout =
            keepalive_interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
        Timing {
            ttl,
            keepalive_interval,
            margin,
            backoff_base: Duration::from_millis(100),
            backoff_cap: keepalive_interval,
            request_timeout,
            resign_holdoff: keepalive_interval.min(Duration::from_millis(500)),
        }
    }
}

/// The holder of the lock key, as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The key's value: the holder's id.
    pub value: String,
    /// The lease the key is attached to (0 when none).
    pub lease: LeaseId,
    /// The key's create revision (the fencing token in the election protocol).
    pub create_revision: i64,
    /// The key's mod revision: the revision of its last write (the fencing token of a lock
    /// holder under succession: the key is written when a holder gets it, by its campaign or by
    /// the transfer to it, and not after).
    pub mod_revision: i64,
}

/// What an election-protocol campaign read besides the leader: the election's prefix, the
/// candidates queued before ours, oldest (the leader) first, and our own key's create revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    pub prefix: String,
    pub ahead: Vec<(Vec<u8>, Holder)>,
    /// Fixed for our lease's life while the key stands, so the next campaign under the same
    /// lease need not write the key again (the edge keeps it; the rules here do not use it).
    pub own: i64,
}

/// What to watch: decided by the machine from what the campaign read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchTarget {
    /// The key whose deletion or overwrite matters: the lock key, or our own election key
    /// while leading. With `ahead`, the election's prefix (`<name>/`).
    pub key: String,
    /// A waiting candidate in the election protocol: the candidates queued before it.
    pub ahead: Option<Ahead>,
    /// Whether writes of the key matter, or only its deletion: a follower under succession
    /// learns the leader from registrations, so that a handoff wakes only its successor.
    pub puts: bool,
    /// Under succession: our handoff note key, watched beside the lock key on the same stream,
    /// so that a handoff to us wakes us alone (see [`super::succession`]).
    pub handoff: Option<String>,
}

impl WatchTarget {
    /// One key, for puts and deletion.
    pub fn key(key: impl Into<String>) -> Self {
        WatchTarget {
            key: key.into(),
            ahead: None,
            puts: true,
            handoff: None,
        }
    }
}

/// The candidates queued before ours in the election protocol, oldest (the leader) first, as
/// read by our campaign.
///
/// A key created after ours can never come before it, so this list only ever shrinks, and one
/// watch on the election's prefix keeps it exact without another request: a handoff costs a
/// waiting candidate one watch event and nothing else, however long the queue. Only the
/// deletion of our predecessor (the last entry) makes us campaign, so a handoff still makes
/// one candidate campaign; the deletion or rewrite (Proclaim) of the first entry only changes
/// whom we follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ahead {
    keys: Vec<(Vec<u8>, Holder)>,
}

impl Ahead {
    /// What the deletion of `key` means to us.
    pub fn deleted(&mut self, key: &[u8]) -> Option<Event> {
        let at = self.keys.iter().position(|(k, _)| k.as_slice() == key)?;
        self.keys.remove(at);
        if at == self.keys.len() {
            // Our predecessor left: campaign, as `concurrency.Election` does.
            return Some(Event::KeyDeleted);
        }
        self.leader_changed(at)
    }

    /// What a write of `key` means to us: a new value of a candidate ahead (the leader's
    /// Proclaim when it is the first); keys behind ours (newcomers, our own) do not matter.
    pub fn put(&mut self, key: &[u8], holder: Holder) -> Option<Event> {
        let at = self.keys.iter().position(|(k, _)| k.as_slice() == key)?;
        if let Some((_, known)) = self.keys.get_mut(at) {
            *known = holder;
        }
        self.leader_changed(at)
    }

    /// After a change at position `at`: the leader, if that was the leader's position.
    fn leader_changed(&self, at: usize) -> Option<Event> {
        match self.keys.first() {
            Some((_, holder)) if at == 0 => Some(Event::LeaderChanged {
                holder: holder.clone(),
            }),
            _ => None,
        }
    }
}

/// Something that happened, fed into [`Machine::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The process started; ask for a lease.
    Start,
    /// A lease was granted. `sent_at` is when the request was sent.
    LeaseGranted {
        lease: LeaseId,
        ttl: Duration,
        sent_at: Instant,
    },
    /// The grant failed; retry after a backoff.
    LeaseGrantFailed,
    /// A keep-alive was answered. A `ttl` of zero means the lease no longer exists in etcd.
    KeepAliveAcked {
        lease: LeaseId,
        ttl: Duration,
        sent_at: Instant,
    },
    /// The campaign transaction (or re-read) completed: `holder` is who holds the key at
    /// `revision`.
    CampaignDone {
        lease: LeaseId,
        holder: Holder,
        revision: i64,
        /// The key the campaign wrote: the lock key, or our own election key.
        key: String,
        /// In the election protocol: who is queued before us.
        queue: Option<Queue>,
    },
    /// The campaign transaction failed. `lease_gone` when etcd said the lease does not exist.
    CampaignFailed { lease: LeaseId, lease_gone: bool },
    /// The watched key was deleted.
    KeyDeleted,
    /// The watched key was written.
    KeyPut { holder: Holder },
    /// A waiting candidate learnt that someone else now leads (the leader handed over to the
    /// next in line, or rewrote its value). Only updates whom a follower follows: it is never
    /// a reason to campaign or to step down.
    LeaderChanged { holder: Holder },
    /// The watch ended (stream error, cancelled, compacted): events may have been missed.
    WatchFailed,
    /// Nothing happened, but a deadline may have passed; see [`Machine::next_wakeup`].
    Tick,
    /// Give leadership up and campaign again at the back of the line (`POST /resign`).
    Resign,
    /// Give leadership up and stop: SIGTERM, SIGINT or an API call.
    Shutdown,
    /// The lease revoke finished (either way); the process may exit.
    Revoked,
    /// A revoke sent while running (not the one for exit) failed, say during an outage. The
    /// lease may still hold a key, so it is revoked again once etcd answers a grant.
    RevokeFailed { lease: LeaseId },
    /// The registered candidates, read at `revision` (succession).
    Candidates {
        candidates: Vec<Candidate>,
        revision: i64,
    },
    /// The candidates could not be read: hand over nothing.
    CandidatesFailed,
    /// A candidate registered (or re-registered) while we watched (succession).
    CandidateRegistered { candidate: Candidate },
    /// The registration at `key` went (its replica stopped, or its lease expired).
    CandidateGone { key: String },
    /// The watch of the registrations ended (etcd unreachable, compacted): the list may miss
    /// changes, announcements of a new leader included.
    CandidatesWatchEnded,
    /// The transfer transaction finished: `succeeded` when the key is the successor's.
    TransferDone { succeeded: bool },
    /// The key was handed to us: our handoff note was written with the key, under our lease,
    /// in the term `term`.
    HandedOver { term: Term },
    /// The application's health changed (`--app-health`).
    AppHealth { healthy: bool },
}

/// Work for the caller. Results come back as events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Grant a new lease of the configured TTL.
    GrantLease,
    /// Keep this lease alive until told to stop (replaces any earlier keep-alive).
    KeepAlive { lease: LeaseId },
    /// Stop keeping any lease alive.
    StopKeepAlive,
    /// Run the campaign transaction with this lease.
    Campaign { lease: LeaseId },
    /// Watch this target from this revision (replaces any earlier watch).
    Watch {
        target: WatchTarget,
        from_revision: i64,
    },
    /// Stop watching.
    StopWatch,
    /// Revoke this lease; deletes the key if we hold it. `then_exit` when shutting down.
    Revoke { lease: LeaseId, then_exit: bool },
    /// Write our registration under this lease (succession), saying whether our application
    /// is healthy (only a healthy candidate is anybody's successor) and, while we lead, our
    /// term (how followers learn the leader).
    Register {
        lease: LeaseId,
        healthy: bool,
        leading: Option<Term>,
    },
    /// Read the registered candidates; answered by [`Event::Candidates`].
    ReadCandidates,
    /// Report candidates registering from this revision on.
    WatchCandidates { from_revision: i64 },
    /// Stop that.
    StopWatchCandidates,
    /// `If ModRevision(key) == held.fencing_token AND ModRevision(to.key) == to.mod_revision
    /// Then Put(key, to.id, to.lease), Put(handoff note of to, held.create_revision,
    /// to.lease)`: hand the key to `to`.
    Transfer { to: Candidate, held: Term },
    /// All done: the caller may exit.
    Exit,
}

/// Why a leader stopped claiming leadership; logged and shown in `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDownReason {
    /// The key was deleted by someone else.
    KeyDeleted,
    /// The key was written by someone else.
    KeyOverwritten,
    /// etcd answered a keep-alive with TTL 0: the lease expired or was revoked.
    LeaseGone,
    /// No keep-alive was acknowledged in time: the lease may be about to expire.
    LeaseNotRenewed,
    /// The watch on our key ended, so a deletion could go unseen.
    WatchLost,
    /// We were asked to resign.
    Resigned,
    /// We were asked to stop.
    Shutdown,
    /// Our application stayed unhealthy: leadership went to a replica whose application is
    /// healthy.
    AppUnhealthy,
}

impl StepDownReason {
    /// A short stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StepDownReason::KeyDeleted => "key_deleted",
            StepDownReason::KeyOverwritten => "key_overwritten",
            StepDownReason::LeaseGone => "lease_gone",
            StepDownReason::LeaseNotRenewed => "lease_not_renewed",
            StepDownReason::WatchLost => "watch_lost",
            StepDownReason::Resigned => "resigned",
            StepDownReason::Shutdown => "shutdown",
            StepDownReason::AppUnhealthy => "app_unhealthy",
        }
    }
}

/// A change worth a log line and a metric, reported by [`Machine::step`] beside the actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Sending the campaign transaction.
    Campaigning,
    /// Won: the key is ours under our lease.
    BecameLeader { fencing_token: i64 },
    /// Stopped claiming leadership.
    SteppedDown { reason: StepDownReason },
    /// Someone else holds the key (or it changed hands).
    LeaderObserved { leader: String, fencing_token: i64 },
    /// Our lease is gone or abandoned; a new one will be granted.
    LeaseLost { lease: LeaseId },
    /// Our application is unhealthy, and no replica with a healthy one is registered: we
    /// keep leading.
    NoHealthySuccessor,
}

/// The output of one step.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Step {
    pub actions: Vec<Action>,
    pub transitions: Vec<Transition>,
}

impl Step {
    /// True when this step gave leadership up because it was asked to resign. A resign that
    /// comes after the claim ran out resigns nothing: the step then reports
    /// [`StepDownReason::LeaseNotRenewed`] instead.
    pub fn resigned(&self) -> bool {
        self.transitions.contains(&Transition::SteppedDown {
            reason: StepDownReason::Resigned,
        })
    }
}

/// A coarse public view of the state, for the HTTP API and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Starting,
    Campaigning,
    Follower,
    Leader,
    Stopping,
    /// Our application is unhealthy: not campaigning (`--app-health`).
    Standby,
}

impl Role {
    /// The name used in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Campaigning => "campaigning",
            Role::Follower => "follower",
            Role::Leader => "leader",
            Role::Stopping => "stopping",
            Role::Standby => "standby",
        }
    }
}

/// The lease we hold and how long it is known to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    id: LeaseId,
    /// The TTL etcd granted or last returned, never more than asked.
    ttl: Duration,
    /// Send time of the newest acknowledged grant or keep-alive.
    renewed_at: Instant,
}

/// Each state carries only what is valid in it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before [`Event::Start`].
    Idle,
    /// No lease. `retry_at` is `None` while a grant is in flight.
    NeedLease { retry_at: Option<Instant> },
    /// Lease held, campaign transaction in flight (`retry_at` is `None`) or waiting to retry.
    Campaigning { retry_at: Option<Instant> },
    /// Someone else holds the key; watching it for deletion.
    Following { leader: Holder },
    /// We hold the key under our lease: created at `create_revision`, last written by us at
    /// `mod_revision`.
    Leading {
        fencing_token: i64,
        since: Instant,
        create_revision: i64,
        mod_revision: i64,
    },
    /// Lease held, but our application is unhealthy: no campaign until it recovers.
    Benched,
    /// The key went, and a better-ranked candidate should take it: we campaign at `until`
    /// unless its write shows up on our watch first (see [`RANK_STEP`]).
    /// `after` is the token of the holder whose key went: a newer term announced ends it.
    Deferring { until: Instant, after: i64 },
    /// A leader stepping down by handing the key to a successor; never claims.
    Handing(Handoff),
    /// Shutting down: `revoke_at` is when the lease revoke is sent (after the release delay),
    /// `None` once sent; `grant_pending` while a lease grant may still arrive to be revoked.
    /// `hand_over` (the key as we hold it) when the key is to be handed over after the delay.
    Stopping {
        revoke_at: Option<Instant>,
        grant_pending: bool,
        hand_over: Option<Term>,
    },
    /// Done.
    Stopped,
}

/// What the machine knows of the application's health (`--app-health`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct AppHealth {
    /// Unknown counts as unhealthy: an application that never answered is not ready to lead.
    healthy: bool,
    /// Since when it has been as it is; `None` before the first report.
    since: Option<Instant>,
    /// How long a leader's application may stay unhealthy before leadership moves.
    unhealthy_after: Duration,
    /// While leading with an unhealthy application: a look for a successor is in flight.
    looking: bool,
    /// No healthy successor was found; when to look again.
    retry_at: Option<Instant>,
}

/// A handoff in progress, see [`super::succession`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Handoff {
    phase: Phase,
    /// What follows: exit (shutdown) or campaign again (resign).
    then: After,
    /// Whether the candidates were read during this handoff (a transfer that fails on a list
    /// kept by the watch is retried once on a fresh read).
    reread: bool,
    /// Until when to wait for a candidate of another release.
    wait_until: Instant,
    /// The key as we hold it: the transfer's guard.
    held: Term,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Reading the candidates (only when none were known yet).
    Reading,
    /// No candidate of another release yet; `best` is the best of the others.
    Waiting { best: Option<Candidate> },
    /// The transfer transaction is in flight.
    Transferring,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Exit,
    Rejoin,
}

/// What a handoff reacts to; see [`Machine::on_handoff_event`].
enum HandoffEvent {
    Candidates { list: Vec<Candidate> },
    Failed,
    Registered(Candidate),
    Transferred { succeeded: bool },
    KeyDeleted,
    Tick,
}

/// Where a handoff goes after an event.
enum Next {
    Stay,
    Phase(Phase),
    Transfer(Candidate),
    /// Read the candidates again (once), then decide anew.
    Reread,
    Finish,
}

/// The election state machine for one candidate.
#[derive(Debug)]
pub struct Machine {
    id: String,
    timing: Timing,
    release_delay: Duration,
    state: State,
    lease: Option<Lease>,
    /// Retry delays after failures; reset by any success.
    backoff: Backoff,
    /// Direct succession (lock-protocol sidecars); `None`: give the key up by revoking.
    succession: Option<Succession>,
    /// The application's health, with `--app-health`; `None`: always eligible.
    app: Option<AppHealth>,
    /// Under succession: the registered candidates, kept current by a watch, for the campaign
    /// order after a crash and for the successor a leader hands the key to without reading
    /// first. `None` until read.
    known: Option<Vec<Candidate>>,
    /// What our last campaign asked to watch (the handoff note's key included).
    watched: Option<WatchTarget>,
    /// Leases we gave up whose revoke failed: revoked again once etcd grants a lease, so a
    /// key left under one is released then instead of a whole TTL later (etcd renews every
    /// lease to its full TTL when it regains a leader after an outage).
    unrevoked: Vec<LeaseId>,
}

/// What readers may know about the machine; see [`crate::leadership::Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub role: Role,
    /// Known leader's id: ourselves when leading, the holder when following.
    pub leader: Option<String>,
    /// The lease the holder's key is under, when following.
    pub holder_lease: Option<LeaseId>,
    pub fencing_token: Option<i64>,
    /// While leading: the instant the claim ends unless a keep-alive is acknowledged.
    pub claim_until: Option<Instant>,
    pub leader_since: Option<Instant>,
    pub lease_id: Option<LeaseId>,
    /// When etcd may expire the lease at the earliest (send time + TTL).
    pub lease_expires_at: Option<Instant>,
    /// The lease's TTL as etcd granted it or last returned it (never more than asked).
    pub lease_ttl: Option<Duration>,
    /// The application's health with `--app-health` (unknown counts as unhealthy).
    pub app_healthy: Option<bool>,
    /// Leading with an unhealthy application, and no replica with a healthy one registered.
    pub no_healthy_successor: bool,
}

impl Machine {
    /// A machine for candidate `id`. `seed` feeds the backoff jitter.
    #[must_use]
    pub fn new(id: impl Into<String>, timing: Timing, release_delay: Duration, seed: u64) -> Self {
        Machine {
            id: id.into(),
            timing,
            release_delay,
            state: State::Idle,
            lease: None,
            backoff: Backoff::new(timing.backoff_base, timing.backoff_cap, seed),
            succession: None,
            app: None,
            known: None,
            watched: None,
            unrevoked: Vec::new(),
        }
    }

    /// Hand the key to a successor instead of dropping it (lock protocol; see
    /// [`super::succession`]). The fencing token is then the key's mod revision at the moment
    /// a holder got it, which equals the create revision for a holder that created it.
    #[must_use]
    pub fn with_succession(mut self, succession: Succession) -> Self {
        self.succession = Some(succession);
        self
    }

    /// Follow the application's health (`--app-health`): a replica whose application is
    /// unhealthy does not campaign and is nobody's successor, and a leader whose application
    /// stays unhealthy for `unhealthy_after` hands leadership to one whose application is
    /// healthy (direct succession), or keeps it when there is none.
    #[must_use]
    pub fn with_app_health(mut self, unhealthy_after: Duration) -> Self {
        self.app = Some(AppHealth {
            healthy: false,
            since: None,
            unhealthy_after,
            looking: false,
            retry_at: None,
        });
        self
    }

    /// May this replica lead? Without `--app-health`, always.
    fn eligible(&self) -> bool {
        self.app.as_ref().is_none_or(|a| a.healthy)
    }

    /// The fencing token of `holder`: its key's mod revision under succession (a holder writes
    /// the key when it gets it, and not after), else its create revision.
    fn token_of(&self, holder: &Holder) -> i64 {
        if self.succession.is_some() {
            holder.mod_revision
        } else {
            holder.create_revision
        }
    }

    /// True once the machine has nothing left to do.
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// The earliest instant at which a [`Event::Tick`] could change something.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let timer = match &self.state {
            State::NeedLease { retry_at } | State::Campaigning { retry_at } => *retry_at,
            State::Deferring { until, .. } => Some(*until),
            State::Stopping { revoke_at, .. } => *revoke_at,
            State::Handing(Handoff {
                phase: Phase::Waiting { .. },
                wait_until,
                ..
            }) => Some(*wait_until),
            _ => None,
        };
        let fence = match self.state {
            State::Stopping { .. } | State::Stopped | State::Idle | State::Handing(_) => None,
            _ => self.lease.map(|l| self.claim_deadline(l)),
        };
        let health = match self.state {
            State::Leading { .. } => self.health_handoff_at(),
            _ => None,
        };
        [timer, fence, health].into_iter().flatten().min()
    }

    /// The current view for readers.
    pub fn view(&self) -> View {
        let (role, leader, fencing_token, claim_until, leader_since) = match &self.state {
            State::Idle => (Role::Starting, None, None, None, None),
            State::NeedLease { .. } | State::Campaigning { .. } => {
                (Role::Campaigning, None, None, None, None)
            }
            State::Following { leader } => (
                Role::Follower,
                Some(leader.value.clone()),
                Some(self.token_of(leader)),
                None,
                None,
            ),
            State::Benched => (Role::Standby, None, None, None, None),
            State::Deferring { .. } => (Role::Campaigning, None, None, None, None),
            State::Handing(Handoff {
                then: After::Rejoin,
                ..
            }) => (Role::Campaigning, None, None, None, None),
            State::Handing(_) => (Role::Stopping, None, None, None, None),
            State::Leading {
                fencing_token,
                since,
                ..
            } => (
                Role::Leader,
                Some(self.id.clone()),
                Some(*fencing_token),
                self.lease.map(|l| self.claim_deadline(l)),
                Some(*since),
            ),
            State::Stopping { .. } | State::Stopped => (Role::Stopping, None, None, None, None),
        };
        let holder_lease = match &self.state {
            State::Following { leader } => Some(leader.lease),
            _ => None,
        };
        View {
            role,
            leader,
            holder_lease,
            fencing_token,
            claim_until,
            leader_since,
            lease_id: self.lease.map(|l| l.id),
            lease_expires_at: self.lease.map(|l| l.renewed_at + l.ttl),
            lease_ttl: self.lease.map(|l| l.ttl),
            app_healthy: self.app.as_ref().map(|a| a.healthy),
            no_healthy_successor: matches!(self.state, State::Leading { .. })
                && self
                    .app
                    .as_ref()
                    .is_some_and(|a| !a.healthy && a.retry_at.is_some()),
        }
    }

    /// Apply one event at time `now`.
    pub fn step(&mut self, event: Event, now: Instant) -> Step {
        let mut out = Step::default();
        // A lease past its claim deadline is abandoned before anything else is considered, so
        // no event can be read as evidence for a lease that may have expired in etcd.
        self.check_lease_deadline(now, &mut out);
        match event {
            Event::Start => {
                if self.state == State::Idle {
                    self.state = State::NeedLease { retry_at: None };
                    out.actions.push(Action::GrantLease);
                }
            }
            Event::LeaseGranted {
                lease,
                ttl,
                sent_at,
            } => self.on_lease_granted(lease, ttl, sent_at, now, &mut out),
            Event::LeaseGrantFailed => self.on_lease_grant_failed(now, &mut out),
            Event::KeepAliveAcked {
                lease,
                ttl,
                sent_at,
            } => self.on_keepalive(lease, ttl, sent_at, &mut out),
            Event::CampaignDone {
                lease,
                holder,
                revision,
                key,
                queue,
            } => {
                let target = Self::watch_target(key, queue);
                self.on_campaign_done(lease, holder, revision, target, now, &mut out);
            }
            Event::CampaignFailed { lease, lease_gone } => {
                self.on_campaign_failed(lease, lease_gone, now, &mut out)
            }
            Event::KeyDeleted => match self.state {
                State::Leading { .. } => {
                    self.record_step_down(StepDownReason::KeyDeleted, &mut out);
                    self.campaign(&mut out);
                }
                State::Following { .. } => self.campaign_in_rank(now, &mut out),
                State::Handing(_) => self.on_handoff_event(HandoffEvent::KeyDeleted, now, &mut out),
                _ => {}
            },
            Event::KeyPut { holder } => self.on_key_put(holder, now, &mut out),
            Event::LeaderChanged { holder } => {
                if let State::Following { .. } = self.state {
                    self.follow(holder, &mut out);
                }
            }
            Event::WatchFailed => match self.state {
                State::Leading { .. } => {
                    self.record_step_down(StepDownReason::WatchLost, &mut out);
                    self.retry_campaign_later(now, &mut out);
                }
                State::Following { .. } | State::Deferring { .. } => {
                    self.retry_campaign_later(now, &mut out)
                }
                // A handoff without its watch still ends: the transfer's guard makes it safe.
                _ => {}
            },
            Event::Resign => self.on_resign(now, &mut out),
            Event::Tick => self.on_tick(now, &mut out),
            Event::Shutdown => self.on_shutdown(now, &mut out),
            Event::Revoked => {
                if let State::Stopping { .. } = self.state {
                    self.state = State::Stopped;
                    out.actions.push(Action::Exit);
                }
            }
            Event::Candidates {
                candidates,
                revision,
            } => self.on_candidates(candidates, revision, now, &mut out),
            Event::CandidatesFailed if self.looking_for_healthy_successor() => {
                self.on_healthy_candidates(None, now, &mut out)
            }
            Event::CandidatesFailed => self.on_handoff_event(HandoffEvent::Failed, now, &mut out),
            Event::CandidateRegistered { candidate } => {
                self.on_candidate_registered(candidate, now, &mut out)
            }
            Event::CandidateGone { key } => self.on_candidate_gone(&key),
            Event::CandidatesWatchEnded if self.keeps_candidates() => {
                // Read again and watch from there; a failed read leaves the list unknown, and
                // the next campaign reads it.
                self.known = None;
                out.actions.push(Action::ReadCandidates);
            }
            Event::CandidatesWatchEnded => {}
            Event::TransferDone { succeeded } => {
                self.on_handoff_event(HandoffEvent::Transferred { succeeded }, now, &mut out)
            }
            Event::HandedOver { term } => self.on_handed_over(term, now, &mut out),
            Event::AppHealth { healthy } => self.on_app_health(healthy, now, &mut out),
            Event::RevokeFailed { lease } => self.on_revoke_failed(lease),
        }
        out
    }

    /// A grant failed: retry after a backoff, or, stopping, stop waiting for it.
    fn on_lease_grant_failed(&mut self, now: Instant, out: &mut Step) {
        if let State::NeedLease { retry_at: None } = self.state {
            let at = now + self.backoff.next_delay();
            self.state = State::NeedLease { retry_at: Some(at) };
        } else if let State::Stopping {
            revoke_at,
            hand_over,
            ..
        } = self.state
        {
            self.state = State::Stopping {
                revoke_at,
                grant_pending: false,
                hand_over,
            };
            self.finish_stopping_if_idle(out);
        }
    }

    /// A campaign failed: a lease etcd no longer has is dropped, anything else is retried
    /// after a backoff.
    fn on_campaign_failed(
        &mut self,
        lease: LeaseId,
        lease_gone: bool,
        now: Instant,
        out: &mut Step,
    ) {
        if self.lease.map(|l| l.id) != Some(lease)
            || self.state != (State::Campaigning { retry_at: None })
        {
            return;
        }
        if lease_gone {
            self.drop_lease(None, out);
        } else {
            let at = now + self.backoff.next_delay();
            self.state = State::Campaigning { retry_at: Some(at) };
        }
    }

    /// `POST /resign`: hand the key to a successor, or revoke and stay out for a while.
    fn on_resign(&mut self, now: Instant, out: &mut Step) {
        if let (Some(key), Some(_), Some(_)) = (self.held_key(), self.lease, &self.succession) {
            self.record_step_down(StepDownReason::Resigned, out);
            self.start_handoff(After::Rejoin, key, now, out);
        } else if matches!(self.state, State::Leading { .. }) {
            if let Some(lease) = self.lease.take() {
                // Revoking deletes our key, so a waiting candidate wins within a round
                // trip; we only ask for a new lease after `resign_holdoff`, so we do
                // not race the candidates we are handing over to.
                self.record_step_down(StepDownReason::Resigned, out);
                out.actions.extend([
                    Action::StopWatch,
                    Action::StopKeepAlive,
                    Action::Revoke {
                        lease: lease.id,
                        then_exit: false,
                    },
                ]);
                self.state = State::NeedLease {
                    retry_at: Some(now + self.timing.resign_holdoff),
                };
            }
        }
    }

    /// A replica registered or re-registered (its health or leadership changed).
    fn on_candidate_registered(&mut self, candidate: Candidate, now: Instant, out: &mut Step) {
        if let Some(known) = self.known.as_mut() {
            known.retain(|c| c.key != candidate.key);
            known.push(candidate.clone());
        }
        self.follow_announced(&candidate, out);
        if candidate.healthy && self.waiting_for_healthy_successor() {
            // A leader whose application is unhealthy hands over as soon as a replica
            // with a healthy one registers, not at its next look.
            if let Some(app) = self.app.as_mut() {
                app.looking = true;
            }
            let known = self.known.clone();
            self.on_healthy_candidates(known, now, out);
        }
        self.on_handoff_event(HandoffEvent::Registered(candidate), now, out)
    }

    /// A registration went with its lease: forget it, also as a waiting handoff's best choice.
    fn on_candidate_gone(&mut self, key: &str) {
        if let Some(known) = self.known.as_mut() {
            known.retain(|c| c.key != key);
        }
        if let State::Handing(Handoff {
            phase: Phase::Waiting { best },
            ..
        }) = &mut self.state
        {
            if best.as_ref().is_some_and(|b| b.key == key) {
                *best = None;
            }
        }
    }

    /// A revoke failed: keep the lease to revoke it again later.
    fn on_revoke_failed(&mut self, lease: LeaseId) {
        // A lease we hold again is not ours to revoke; a full list drops its oldest.
        if self.lease.map(|l| l.id) != Some(lease) && !self.unrevoked.contains(&lease) {
            if self.unrevoked.len() == MAX_UNREVOKED {
                self.unrevoked.remove(0);
            }
            self.unrevoked.push(lease);
        }
    }

    /// Revoke again every lease whose earlier revoke failed; a failure comes back as
    /// [`Event::RevokeFailed`].
    fn retry_revokes(&mut self, out: &mut Step) {
        for lease in self.unrevoked.drain(..) {
            out.actions.push(Action::Revoke {
                lease,
                then_exit: false,
            });
        }
    }

    fn on_lease_granted(
        &mut self,
        lease: LeaseId,
        ttl: Duration,
        sent_at: Instant,
        now: Instant,
        out: &mut Step,
    ) {
        match self.state {
            State::NeedLease { retry_at: None } => {
                self.backoff.reset();
                let granted = Lease {
                    id: lease,
                    ttl: ttl.min(self.timing.ttl),
                    renewed_at: sent_at,
                };
                if now >= self.claim_deadline(granted) {
                    // Granted so slowly that the lease may already be gone: start over.
                    out.actions.push(Action::Revoke {
                        lease,
                        then_exit: false,
                    });
                    let at = now + self.backoff.next_delay();
                    self.state = State::NeedLease { retry_at: Some(at) };
                    return;
                }
                self.lease = Some(granted);
                // etcd answers again: release what an outage kept us from releasing.
                self.retry_revokes(out);
                out.actions.push(Action::KeepAlive { lease });
                if self.succession.is_some() {
                    out.actions.push(self.register(lease));
                }
                self.campaign(out);
            }
            State::Stopping {
                revoke_at,
                hand_over,
                ..
            } => {
                // Shutdown began while the grant was in flight: give the lease straight back.
                self.state = State::Stopping {
                    revoke_at,
                    grant_pending: false,
                    hand_over,
                };
                out.actions.push(Action::Revoke {
                    lease,
                    then_exit: true,
                });
            }
            _ => {}
        }
    }

    fn on_keepalive(&mut self, lease: LeaseId, ttl: Duration, sent_at: Instant, out: &mut Step) {
        let Some(current) = self.lease.as_mut().filter(|l| l.id == lease) else {
            return;
        };
        if matches!(self.state, State::Stopping { .. } | State::Stopped) {
            return;
        }
        if ttl.is_zero() {
            if matches!(self.state, State::Leading { .. }) {
                self.record_step_down(StepDownReason::LeaseGone, out);
            }
            self.drop_lease(None, out);
            return;
        }
        current.ttl = ttl.min(self.timing.ttl);
        current.renewed_at = current.renewed_at.max(sent_at);
    }

    /// What to watch after a campaign: the key it wrote (the lock key; our own election key
    /// while we lead the election), or, behind others in the election queue, the election's
    /// prefix, read through the queue so that only our predecessor's deletion makes us
    /// campaign (see [`Ahead`]).
    fn watch_target(key: String, queue: Option<Queue>) -> WatchTarget {
        match queue {
            Some(Queue { prefix, ahead, .. }) if !ahead.is_empty() => WatchTarget {
                key: prefix,
                ahead: Some(Ahead { keys: ahead }),
                puts: true,
                handoff: None,
            },
            _ => WatchTarget::key(key),
        }
    }

    fn on_campaign_done(
        &mut self,
        lease: LeaseId,
        holder: Holder,
        revision: i64,
        target: WatchTarget,
        now: Instant,
        out: &mut Step,
    ) {
        if self.state != (State::Campaigning { retry_at: None }) {
            return;
        }
        let Some(ours) = self.lease.filter(|l| l.id == lease) else {
            return;
        };
        self.backoff.reset();
        let from_revision = revision + 1;
        let token = self.token_of(&holder);
        if holder.lease == ours.id && holder.value == self.id {
            // Evidence from etcd: the key is under our own lease, which is alive until the
            // claim deadline (checked at the top of `step`).
            self.state = State::Leading {
                fencing_token: token,
                since: now,
                create_revision: holder.create_revision,
                mod_revision: holder.mod_revision,
            };
            out.transitions.push(Transition::BecameLeader {
                fencing_token: token,
            });
        } else {
            out.transitions.push(Transition::LeaderObserved {
                leader: holder.value.clone(),
                fencing_token: token,
            });
            self.state = State::Following { leader: holder };
        }
        if self.succession.is_some() && self.known.is_none() {
            out.actions.push(Action::ReadCandidates);
        }
        let leading = matches!(self.state, State::Leading { .. });
        if leading && self.succession.is_some() {
            out.actions.push(self.register(ours.id));
        }
        let target = match (&self.succession, target) {
            // A lock-protocol follower watches only the key's deletion, and its handoff note:
            // a handoff wakes its successor alone. A leader watches the key's writes too (and
            // so sees a transfer to it, should it step down and be chosen).
            (
                Some(_),
                WatchTarget {
                    key, ahead: None, ..
                },
            ) => WatchTarget {
                handoff: (!leading).then(|| handoff_key(&key, ours.id)),
                key,
                ahead: None,
                puts: leading,
            },
            (_, target) => target,
        };
        self.watched = Some(target.clone());
        out.actions.push(Action::Watch {
            target,
            from_revision,
        });
    }

    fn on_key_put(&mut self, holder: Holder, now: Instant, out: &mut Step) {
        let ours = self.lease.map(|l| l.id);
        match &self.state {
            State::Leading {
                create_revision, ..
            } => {
                let still_ours = Some(holder.lease) == ours
                    && holder.value == self.id
                    && holder.create_revision == *create_revision;
                if !still_ours {
                    self.record_step_down(StepDownReason::KeyOverwritten, out);
                    out.transitions.push(Transition::LeaderObserved {
                        leader: holder.value.clone(),
                        fencing_token: self.token_of(&holder),
                    });
                    self.state = State::Following { leader: holder };
                    // Followers learn leaders from registrations: say we no longer lead, so
                    // that they read the key again.
                    if let (Some(_), Some(lease)) = (&self.succession, self.lease) {
                        out.actions.push(self.register(lease.id));
                    }
                }
            }
            // Handed to us, seen on a watch of the key's writes (we led before): the same
            // evidence as our note.
            State::Following { .. }
                if self.succession.is_some()
                    && Some(holder.lease) == ours
                    && holder.value == self.id =>
            {
                let term = Term {
                    fencing_token: holder.mod_revision,
                    create_revision: holder.create_revision,
                };
                self.on_handed_over(term, now, out);
            }
            State::Following { .. } => self.follow(holder, out),
            // A write during a handoff (our own transfer, or an operator's): the transfer's
            // guard decides.
            // A better-ranked candidate won while we deferred: follow, no campaign.
            State::Deferring { .. } => {
                out.transitions.push(Transition::LeaderObserved {
                    leader: holder.value.clone(),
                    fencing_token: self.token_of(&holder),
                });
                self.state = State::Following { leader: holder };
            }
            _ => {}
        }
    }

    /// The key was handed to us: the transfer wrote it under our own lease, with our id, in
    /// the same transaction as our note. That is evidence from etcd, like a won campaign: we
    /// lead from the transfer's revision on (the claim deadline, checked at the top of `step`,
    /// still comes from our own keep-alives). Then we watch the key's writes too, and say so in
    /// our registration, which is how the other followers learn it.
    fn on_handed_over(&mut self, term: Term, now: Instant, out: &mut Step) {
        let (State::Following { leader }, Some(lease)) = (&self.state, self.lease) else {
            // Not following: stopping (our revoke deletes the key), or our lease ran out
            // (then etcd refused the transfer, or the key goes with the lease).
            return;
        };
        // The leader stepping down keeps its registration until its lease is revoked, a
        // moment after: it is nobody's successor.
        let stepping_down = leader.lease;
        if let Some(known) = self.known.as_mut() {
            known.retain(|c| c.lease != stepping_down);
        }
        self.state = State::Leading {
            fencing_token: term.fencing_token,
            since: now,
            create_revision: term.create_revision,
            mod_revision: term.fencing_token,
        };
        out.transitions.push(Transition::BecameLeader {
            fencing_token: term.fencing_token,
        });
        if let Some(target) = self.watched.clone() {
            let target = WatchTarget {
                puts: true,
                handoff: None,
                ..target
            };
            self.watched = Some(target.clone());
            out.actions.push(Action::Watch {
                target,
                from_revision: term.fencing_token + 1,
            });
        }
        out.actions.push(self.register(lease.id));
    }

    /// A registration announcing a newer term than the leader we know: follow it (and stop
    /// deferring a campaign: the better-ranked candidate won).
    fn follow_announced(&mut self, candidate: &Candidate, out: &mut Step) {
        let Some(term) = candidate.leading else {
            // The leader we follow says it no longer leads (someone overwrote the key): read
            // the key again to learn who holds it now.
            if let State::Following { leader } = &self.state {
                if leader.lease == candidate.lease {
                    self.campaign(out);
                }
            }
            return;
        };
        let known = match &self.state {
            State::Following { leader } => self.token_of(leader),
            State::Deferring { after, .. } => *after,
            _ => return,
        };
        if term.fencing_token <= known {
            return;
        }
        let holder = Holder {
            value: candidate.id.clone(),
            lease: candidate.lease,
            create_revision: term.create_revision,
            mod_revision: term.fencing_token,
        };
        out.transitions.push(Transition::LeaderObserved {
            leader: holder.value.clone(),
            fencing_token: term.fencing_token,
        });
        self.state = State::Following { leader: holder };
    }

    /// Our registration as it should read now.
    fn register(&self, lease: LeaseId) -> Action {
        Action::Register {
            lease,
            healthy: self.eligible(),
            leading: self.held_key(),
        }
    }

    /// While following: follow `holder` from now on, noting a new leader or value.
    fn follow(&mut self, holder: Holder, out: &mut Step) {
        let State::Following { leader } = &self.state else {
            return;
        };
        if *leader == holder {
            return;
        }
        if leader.value != holder.value || leader.create_revision != holder.create_revision {
            out.transitions.push(Transition::LeaderObserved {
                leader: holder.value.clone(),
                fencing_token: self.token_of(&holder),
            });
        }
        self.state = State::Following { leader: holder };
    }

    fn on_tick(&mut self, now: Instant, out: &mut Step) {
        match self.state {
            State::NeedLease { retry_at: Some(at) } if now >= at => {
                self.state = State::NeedLease { retry_at: None };
                out.actions.push(Action::GrantLease);
            }
            State::Campaigning { retry_at: Some(at) } if now >= at => self.campaign(out),
            State::Stopping {
                revoke_at: Some(at),
                grant_pending,
                hand_over,
            } if now >= at => match hand_over {
                Some(key) => self.start_handoff(After::Exit, key, now, out),
                None => {
                    self.state = State::Stopping {
                        revoke_at: None,
                        grant_pending,
                        hand_over: None,
                    };
                    self.revoke_for_exit(out);
                }
            },
            State::Handing(_) => self.on_handoff_event(HandoffEvent::Tick, now, out),
            State::Deferring { until, .. } if now >= until => self.campaign(out),
            State::Leading { .. } if self.health_handoff_due(now) => {
                if let Some(app) = self.app.as_mut() {
                    app.looking = true;
                    app.retry_at = None;
                }
                match self.known.clone() {
                    Some(list) => self.on_healthy_candidates(Some(list), now, out),
                    None => out.actions.push(Action::ReadCandidates),
                }
            }
            _ => {}
        }
    }

    fn on_shutdown(&mut self, now: Instant, out: &mut Step) {
        match &mut self.state {
            State::Stopping { .. } | State::Stopped => return,
            State::Handing(handoff) => {
                // Asked to stop while handing over after a resign: finish it, then exit.
                handoff.then = After::Exit;
                return;
            }
            _ => {}
        }
        // The key as we hold it while we lead: the transfer's guard.
        let leading = self.held_key();
        if leading.is_some() {
            self.record_step_down(StepDownReason::Shutdown, out);
        }
        let hand_over = leading.filter(|_| self.succession.is_some() && self.lease.is_some());
        if hand_over.is_none() {
            self.forget_candidates(out);
        }
        let grant_pending = self.state == State::NeedLease { retry_at: None };
        if hand_over.is_none() {
            out.actions.push(Action::StopWatch);
        }
        // Best effort: the process may exit before these finish.
        self.retry_revokes(out);
        if leading.is_some() && self.lease.is_some() && !self.release_delay.is_zero() {
            // Keep the key (and the keep-alive) for the release delay, answering "not leader",
            // so that endpoint removal propagates before a successor can win. Only a leader
            // waits: a follower's key (next in line, in the election protocol) would only
            // delay the handoff.
            self.state = State::Stopping {
                revoke_at: Some(now + self.release_delay),
                grant_pending,
                hand_over,
            };
        } else if let Some(key) = hand_over {
            self.start_handoff(After::Exit, key, now, out);
        } else {
            self.state = State::Stopping {
                revoke_at: None,
                grant_pending,
                hand_over: None,
            };
            self.revoke_for_exit(out);
        }
    }

    /// Our term, while leading: the key as we hold it.
    fn held_key(&self) -> Option<Term> {
        match self.state {
            State::Leading {
                create_revision,
                mod_revision,
                ..
            } => Some(Term {
                fencing_token: mod_revision,
                create_revision,
            }),
            _ => None,
        }
    }

    /// Stop claiming and look for a successor among the candidates we know (read them first
    /// if we know none yet).
    fn start_handoff(&mut self, then: After, held: Term, now: Instant, out: &mut Step) {
        let wait = self
            .succession
            .as_ref()
            .map_or(Duration::ZERO, |s| s.handoff_wait);
        self.state = State::Handing(Handoff {
            phase: Phase::Reading,
            then,
            wait_until: now + wait,
            held,
            reread: false,
        });
        match self.known.clone() {
            Some(list) => self.on_handoff_event(HandoffEvent::Candidates { list }, now, out),
            None => self.read_for_handoff(out),
        }
    }

    fn read_for_handoff(&mut self, out: &mut Step) {
        if let State::Handing(handoff) = &mut self.state {
            handoff.phase = Phase::Reading;
            handoff.reread = true;
            out.actions.push(Action::ReadCandidates);
        }
    }

    /// Candidates read: keep them current from here on, and use them where they were asked for.
    fn on_candidates(&mut self, list: Vec<Candidate>, revision: i64, now: Instant, out: &mut Step) {
        if !self.keeps_candidates() {
            return;
        }
        self.known = Some(list.clone());
        out.actions.push(Action::WatchCandidates {
            from_revision: revision + 1,
        });
        if self.looking_for_healthy_successor() {
            self.on_healthy_candidates(Some(list), now, out);
        } else {
            self.on_handoff_event(HandoffEvent::Candidates { list }, now, out);
        }
    }

    /// The rules of a handoff in progress, one event at a time.
    fn on_handoff_event(&mut self, event: HandoffEvent, now: Instant, out: &mut Step) {
        let (own_lease, own_revision) = self.own_registration();
        let State::Handing(handoff) = &mut self.state else {
            return;
        };
        let held = handoff.held;
        let next = match (&handoff.phase, event) {
            (Phase::Reading, HandoffEvent::Candidates { list }) => {
                match choose(&list, own_lease, &own_revision).cloned() {
                    Some(to) if to.revision != own_revision => Next::Transfer(to),
                    best if now < handoff.wait_until => Next::Phase(Phase::Waiting { best }),
                    Some(to) => Next::Transfer(to),
                    None => Next::Finish,
                }
            }
            (Phase::Reading, HandoffEvent::Failed) => Next::Finish,
            (Phase::Waiting { best }, HandoffEvent::Registered(candidate)) => {
                if candidate.lease == own_lease || !candidate.healthy {
                    Next::Stay
                } else if candidate.revision != own_revision {
                    Next::Transfer(candidate)
                } else {
                    let newer = best
                        .as_ref()
                        .is_none_or(|b| candidate.create_revision > b.create_revision);
                    if newer {
                        Next::Phase(Phase::Waiting {
                            best: Some(candidate),
                        })
                    } else {
                        Next::Stay
                    }
                }
            }
            (Phase::Waiting { best }, HandoffEvent::Tick) if now >= handoff.wait_until => {
                match best.clone() {
                    Some(to) => Next::Transfer(to),
                    None => Next::Finish,
                }
            }
            // The key is the successor's from the transfer on: nothing to wait for.
            (Phase::Transferring, HandoffEvent::Transferred { succeeded: true }) => Next::Finish,
            // The successor went, or our list was stale: read it once more.
            (Phase::Transferring, HandoffEvent::Transferred { succeeded: false })
                if !handoff.reread =>
            {
                Next::Reread
            }
            (Phase::Transferring, HandoffEvent::Transferred { succeeded: false }) => Next::Finish,
            // The key is gone (expired with our lease, or deleted by an operator): there is
            // nothing left to hand over; the others campaign.
            (_, HandoffEvent::KeyDeleted) => Next::Finish,
            _ => Next::Stay,
        };
        match next {
            Next::Stay => {}
            Next::Phase(phase) => handoff.phase = phase,
            Next::Transfer(to) => {
                handoff.phase = Phase::Transferring;
                out.actions.push(Action::Transfer { to, held });
            }
            Next::Reread => self.read_for_handoff(out),
            Next::Finish => self.finish_handoff(now, out),
        }
    }

    /// The handoff is over, one way or the other: give our lease back, then exit or campaign
    /// again at the back of the line. When the key was not handed over, the revoke deletes it
    /// and the others campaign, as without succession.
    fn finish_handoff(&mut self, now: Instant, out: &mut Step) {
        let State::Handing(Handoff { then, .. }) = self.state else {
            return;
        };
        out.actions.push(Action::StopWatch);
        match then {
            After::Exit => {
                self.forget_candidates(out);
                self.state = State::Stopping {
                    revoke_at: None,
                    grant_pending: false,
                    hand_over: None,
                };
                self.revoke_for_exit(out);
            }
            After::Rejoin => {
                out.actions.push(Action::StopKeepAlive);
                if let Some(lease) = self.lease.take() {
                    out.actions.push(Action::Revoke {
                        lease: lease.id,
                        then_exit: false,
                    });
                }
                self.state = State::NeedLease {
                    retry_at: Some(now + self.timing.resign_holdoff),
                };
            }
        }
    }

    fn revoke_for_exit(&mut self, out: &mut Step) {
        out.actions.push(Action::StopKeepAlive);
        match self.lease.take() {
            Some(lease) => out.actions.push(Action::Revoke {
                lease: lease.id,
                then_exit: true,
            }),
            None => self.finish_stopping_if_idle(out),
        }
    }

    fn finish_stopping_if_idle(&mut self, out: &mut Step) {
        if let State::Stopping {
            revoke_at: None,
            grant_pending: false,
            ..
        } = self.state
        {
            if self.lease.is_none() {
                self.state = State::Stopped;
                out.actions.push(Action::Exit);
            }
        }
    }

    /// Abandon the lease if its claim deadline has passed: etcd may expire it any moment, so
    /// nothing learnt under it can be trusted any more.
    fn check_lease_deadline(&mut self, now: Instant, out: &mut Step) {
        let Some(lease) = self.lease else { return };
        // Nothing is claimed while stopping or handing over, and a handoff ends on its own
        // (a lease that expires takes our key with it: `KeyDeleted` finishes it).
        if matches!(
            self.state,
            State::Stopping { .. } | State::Stopped | State::Handing(_)
        ) {
            return;
        }
        if now < self.claim_deadline(lease) {
            return;
        }
        if matches!(self.state, State::Leading { .. }) {
            self.record_step_down(StepDownReason::LeaseNotRenewed, out);
        }
        // Revoke it in case it is still alive, so a key it holds is released now rather than
        // at expiry; failure is harmless.
        self.drop_lease(Some(lease.id), out);
    }

    /// Forget the current lease and ask for a new one at once.
    fn drop_lease(&mut self, revoke: Option<LeaseId>, out: &mut Step) {
        if let Some(lease) = self.lease.take() {
            out.transitions
                .push(Transition::LeaseLost { lease: lease.id });
        }
        out.actions.push(Action::StopWatch);
        out.actions.push(Action::StopKeepAlive);
        if let Some(lease) = revoke {
            out.actions.push(Action::Revoke {
                lease,
                then_exit: false,
            });
        }
        self.state = State::NeedLease { retry_at: None };
        out.actions.push(Action::GrantLease);
    }

    /// Record that leadership ended; the caller moves to the next state.
    fn record_step_down(&mut self, reason: StepDownReason, out: &mut Step) {
        out.transitions.push(Transition::SteppedDown { reason });
    }

    /// The application's health changed.
    fn on_app_health(&mut self, healthy: bool, now: Instant, out: &mut Step) {
        let Some(app) = self.app.as_mut() else { return };
        if app.healthy == healthy && app.since.is_some() {
            return;
        }
        app.healthy = healthy;
        app.since = Some(now);
        app.retry_at = None;
        let lease = self.lease.map(|l| l.id);
        let withdrawn = matches!(
            self.state,
            State::Stopping { .. } | State::Stopped | State::Handing(_)
        );
        if let (Some(lease), Some(_), false) = (lease, &self.succession, withdrawn) {
            // A replica whose application is unhealthy is nobody's successor: say so where
            // the leaders (and `etcd-elector status`) read it.
            out.actions.push(self.register(lease));
        }
        if healthy && self.state == State::Benched {
            self.campaign(out);
        }
    }

    /// When a leader whose application is unhealthy looks for a successor: once it has been
    /// unhealthy for `unhealthy_after`, and again after a look that found nobody.
    fn health_handoff_at(&self) -> Option<Instant> {
        let app = self.app.as_ref()?;
        if app.healthy || app.looking || self.succession.is_none() {
            return None;
        }
        let due = app.since? + app.unhealthy_after;
        Some(app.retry_at.map_or(due, |at| at.max(due)))
    }

    fn health_handoff_due(&self, now: Instant) -> bool {
        self.health_handoff_at().is_some_and(|at| now >= at)
    }

    /// Leading with an unhealthy application after a look that found nobody healthy.
    fn waiting_for_healthy_successor(&self) -> bool {
        matches!(self.state, State::Leading { .. })
            && self
                .app
                .as_ref()
                .is_some_and(|a| !a.healthy && !a.looking && a.retry_at.is_some())
    }

    fn looking_for_healthy_successor(&self) -> bool {
        matches!(self.state, State::Leading { .. }) && self.app.as_ref().is_some_and(|a| a.looking)
    }

    /// The candidates read for a leader whose application is unhealthy (`None`: the read
    /// failed). Registered candidates are the ones whose applications are healthy. With one,
    /// step down and hand the key over; with none, keep leading and say so.
    fn on_healthy_candidates(
        &mut self,
        list: Option<Vec<Candidate>>,
        now: Instant,
        out: &mut Step,
    ) {
        let (own_lease, own_revision) = self.own_registration();
        let best = list
            .as_deref()
            .and_then(|list| choose(list, own_lease, &own_revision).cloned());
        let Some(app) = self.app.as_mut() else { return };
        app.looking = false;
        let (
            Some(to),
            State::Leading {
                mod_revision,
                create_revision,
                ..
            },
        ) = (best, &self.state)
        else {
            if list.is_some() {
                out.transitions.push(Transition::NoHealthySuccessor);
            }
            app.retry_at = Some(now + app.unhealthy_after);
            return;
        };
        let held = Term {
            fencing_token: *mod_revision,
            create_revision: *create_revision,
        };
        self.record_step_down(StepDownReason::AppUnhealthy, out);
        self.state = State::Handing(Handoff {
            phase: Phase::Transferring,
            then: After::Rejoin,
            wait_until: now,
            held,
            reread: true,
        });
        out.actions.push(Action::Transfer { to, held });
    }

    /// Our lease and release, as a successor choice compares candidates with them.
    fn own_registration(&self) -> (LeaseId, String) {
        let revision = self.succession.as_ref().map(|s| s.revision.clone());
        (self.lease.map_or(0, |l| l.id), revision.unwrap_or_default())
    }

    /// Under succession every running replica keeps the candidate list: a follower to know its
    /// rank after a crash, a leader to hand the key over without reading first.
    fn keeps_candidates(&self) -> bool {
        self.succession.is_some()
            && !matches!(
                self.state,
                State::Idle | State::Stopping { .. } | State::Stopped
            )
    }

    /// On the way out the list is of no more use.
    fn forget_candidates(&mut self, out: &mut Step) {
        if self.known.take().is_some() {
            out.actions.push(Action::StopWatchCandidates);
        }
    }

    /// The key went while we followed: campaign at once when we are the best-ranked healthy
    /// candidate (or know no better), else defer by our rank (see [`RANK_STEP`]).
    fn campaign_in_rank(&mut self, now: Instant, out: &mut Step) {
        let (rank, after) = match (&self.state, &self.known, self.lease) {
            (State::Following { leader }, Some(known), Some(ours)) => {
                let mut ranked: Vec<&Candidate> = known
                    .iter()
                    .filter(|c| c.healthy && c.lease != leader.lease)
                    .collect();
                ranked.sort_by_key(|c| std::cmp::Reverse(c.create_revision));
                let rank = ranked.iter().position(|c| c.lease == ours.id).unwrap_or(0);
                (rank, self.token_of(leader))
            }
            _ => (0, 0),
        };
        if rank == 0 || !self.eligible() {
            self.campaign(out);
            return;
        }
        let wait = RANK_STEP
            .saturating_mul(u32::try_from(rank).unwrap_or(u32::MAX))
            .min(MAX_DEFER);
        // A better-ranked candidate's announced term ends the wait.
        self.state = State::Deferring {
            until: now + wait,
            after,
        };
    }

    fn campaign(&mut self, out: &mut Step) {
        let Some(lease) = self.lease else {
            self.state = State::NeedLease { retry_at: None };
            out.actions.push(Action::GrantLease);
            return;
        };
        if !self.eligible() {
            // Not while our application is unhealthy: wait on the bench, lease kept.
            self.state = State::Benched;
            out.actions.push(Action::StopWatch);
            return;
        }
        self.state = State::Campaigning { retry_at: None };
        out.actions.push(Action::StopWatch);
        out.actions.push(Action::Campaign { lease: lease.id });
        out.transitions.push(Transition::Campaigning);
    }

    fn retry_campaign_later(&mut self, now: Instant, out: &mut Step) {
        out.actions.push(Action::StopWatch);
        let at = now + self.backoff.next_delay();
        self.state = State::Campaigning { retry_at: Some(at) };
    }

    /// When the claim on `lease` ends unless renewed.
    fn claim_deadline(&self, lease: Lease) -> Instant {
        lease.renewed_at + lease.ttl.saturating_sub(self.timing.margin)
    }
}

#[cfg(test)]
mod tests {
    use super::super::succession::candidate;
    use super::*;

    const TTL: Duration = Duration::from_secs(10);
    const LEASE: LeaseId = 7;
    const KEY: &str = "/k";

    fn machine() -> (Machine, Instant) {
        (
            Machine::new("me", Timing::for_ttl(TTL), Duration::ZERO, 42),
            Instant::now(),
        )
    }

    fn ours(rev: i64) -> Holder {
        Holder {
            value: "me".into(),
            lease: LEASE,
            create_revision: rev,
            mod_revision: rev,
        }
    }

    fn other(rev: i64) -> Holder {
        Holder {
            value: "other".into(),
            lease: 99,
            create_revision: rev,
            mod_revision: rev,
        }
    }

    /// The answer of a plain lock campaign under `LEASE`, the event most tests feed in.
    fn campaign_done(holder: Holder, revision: i64) -> Event {
        Event::CampaignDone {
            lease: LEASE,
            holder,
            revision,
            key: KEY.into(),
            queue: None,
        }
    }

    /// The watch of the lock key, puts and deletion, that a plain campaign asks for.
    fn watch_key(from_revision: i64) -> Action {
        Action::Watch {
            target: WatchTarget::key(KEY),
            from_revision,
        }
    }

    /// The revoke of our lease `LEASE` (for exit or not) that a dozen assertions look for.
    fn revoke(then_exit: bool) -> Action {
        Action::Revoke {
            lease: LEASE,
            then_exit,
        }
    }

    /// Our registration under `LEASE` (succession), which most succession tests look for.
    fn register(healthy: bool, leading: Option<Term>) -> Action {
        Action::Register {
            lease: LEASE,
            healthy,
            leading,
        }
    }

    /// The answer to `ReadCandidates` (`known`, read at `revision`) that six steps feed in.
    fn candidates_read(known: Vec<Candidate>, revision: i64) -> Event {
        Event::Candidates {
            candidates: known,
            revision,
        }
    }

    /// Start, get a lease at `t0`, and return the step that followed the grant.
    fn granted(m: &mut Machine, t0: Instant) -> Step {
        assert_eq!(m.step(Event::Start, t0).actions, vec![Action::GrantLease]);
        m.step(
            Event::LeaseGranted {
                lease: LEASE,
                ttl: TTL,
                sent_at: t0,
            },
            t0,
        )
    }

    fn leading(m: &mut Machine, t0: Instant) {
        granted(m, t0);
        m.step(campaign_done(ours(5), 5), t0);
        assert_eq!(m.view().role, Role::Leader);
    }

    /// Start, get a lease and lose the campaign to `other(3)`.
    fn following(m: &mut Machine, t0: Instant) {
        granted(m, t0);
        m.step(campaign_done(other(3), 3), t0);
        assert_eq!(m.view().role, Role::Follower);
    }

    fn is_leader(m: &Machine, now: Instant) -> bool {
        let v = m.view();
        v.role == Role::Leader && v.claim_until.is_some_and(|d| now < d)
    }

    #[test]
    fn grant_starts_keepalive_and_campaign() {
        let (mut m, t0) = machine();
        let step = granted(&mut m, t0);
        assert_eq!(
            step.actions,
            vec![
                Action::KeepAlive { lease: LEASE },
                Action::StopWatch,
                Action::Campaign { lease: LEASE }
            ]
        );
        assert_eq!(m.view().role, Role::Campaigning);
    }

    #[test]
    fn winning_transaction_makes_leader_with_create_revision_as_token() {
        let (mut m, t0) = machine();
        granted(&mut m, t0);
        let step = m.step(campaign_done(ours(12), 12), t0);
        assert_eq!(step.actions, vec![watch_key(13)]);
        assert_eq!(
            step.transitions,
            vec![Transition::BecameLeader { fencing_token: 12 }]
        );
        let v = m.view();
        assert_eq!(v.fencing_token, Some(12));
        assert_eq!(v.leader.as_deref(), Some("me"));
        assert!(is_leader(&m, t0));
    }

    #[test]
    fn losing_transaction_follows_holder_and_watches_after_read() {
        let (mut m, t0) = machine();
        granted(&mut m, t0);
        let step = m.step(campaign_done(other(3), 20), t0);
        assert_eq!(step.actions, vec![watch_key(21)]);
        let v = m.view();
        assert_eq!(v.role, Role::Follower);
        assert_eq!(v.leader.as_deref(), Some("other"));
        assert!(!is_leader(&m, t0));
    }

    #[test]
    fn key_with_our_id_under_another_lease_is_not_adopted() {
        let (mut m, t0) = machine();
        granted(&mut m, t0);
        let stale = Holder {
            value: "me".into(),
            lease: 1234,
            create_revision: 4,
            mod_revision: 4,
        };
        m.step(campaign_done(stale, 9), t0);
        assert_eq!(m.view().role, Role::Follower);
        assert!(!is_leader(&m, t0));
    }

    #[test]
    fn follower_campaigns_at_once_when_key_is_deleted() {
        let (mut m, t0) = machine();
        following(&mut m, t0);
        let step = m.step(Event::KeyDeleted, t0);
        assert_eq!(
            step.actions,
            vec![Action::StopWatch, Action::Campaign { lease: LEASE }]
        );
    }

    #[test]
    fn leader_steps_down_and_campaigns_when_key_is_deleted() {
        let (mut m, t0) = machine();
        leading(&mut m, t0);
        let step = m.step(Event::KeyDeleted, t0);
        assert!(step.transitions.contains(&Transition::SteppedDown {
            reason: StepDownReason::KeyDeleted
        }));
        assert!(step.actions.contains(&Action::Campaign { lease: LEASE }));
        assert!(!is_leader(&m, t0));
    }

    #[test]
    fn leader_steps_down_when_key_is_overwritten() {
        let (mut m, t0) = machine();
        leading(&mut m, t0);
        let step = m.step(
            Event::KeyPut {
                holder: Holder {
                    value: "intruder".into(),
                    lease: 0,
                    create_revision: 5,
                    mod_revision: 5,
                },
            },
            t0,
        );
        assert!(step.transitions.contains(&Transition::SteppedDown {
            reason: StepDownReason::KeyOverwritten
        }));
        assert_eq!(m.view().leader.as_deref(), Some("intruder"));
        assert!(!is_leader(&m, t0));
    }

    #[test]
    fn keepalive_with_zero_ttl_steps_down_and_grants_a_new_lease() {
        let (mut m, t0) = machine();
        leading(&mut m, t0);
        let step = m.step(
            Event::KeepAliveAcked {
                lease: LEASE,
                ttl: Duration::ZERO,
                sent_at: t0,
            },
            t0,
        );
        assert!(step.transitions.contains(&Transition::SteppedDown {
            reason: StepDownReason::LeaseGone
        }));
        assert_eq!(step.actions.last(), Some(&Action::GrantLease));
        assert!(step.actions.contains(&Action::StopKeepAlive));
        assert!(!is_leader(&m, t0));
        assert_eq!(m.view().lease_id, None);
    }

    #[test]
    fn claim_ends_at_send_time_plus_ttl_minus_margin() {
        let (mut m, t0) = machine();
        leading(&mut m, t0);
        let margin = Timing::for_ttl(TTL).margin;
        assert_eq!(margin, Duration::from_secs(1));
        let deadline = t0 + TTL - margin;
        assert_eq!(m.view().claim_until, Some(deadline));
        assert!(is_leader(&m, deadline - Duration::from_millis(1)));
        assert!(!is_leader(&m, deadline));
        assert_eq!(m.next_wakeup(), Some(deadline));
    }

    #[test]
    fn acknowledged_keepalive_extends_the_claim_from_its_send_time() {
        let (mut m, t0) = machine();
        leading(&mut m, t0);
        let sent = t0 + Duration::from_secs(3);
        // The reply arrives late; the deadline still counts from the send.
        m.step(
            Event::KeepAliveAcked {
                lease: LEASE,
                ttl: TTL,
                sent_at: sent,
            },
            sent + Duration::from_secs(2),
        );
        assert_eq!(m.view().claim_until, Some(sent + Duration::from_secs(9)));
    }

    #[test]
    fn shorter_ttl_from_etcd_is_used_and_longer_is_not() {
        let (mut m, t0) = machine();
        leading(&mut m, t0);
        m.step(
            Event::KeepAliveAcked {
                lease: LEASE,
                ttl: Duration::from_secs(4),
                sent_at: t0,
            },
            t0,
        );
        assert_eq!(m.view().claim_until, Some(t0 + Duration::from_secs(3)));
        m.step(
            Event::KeepAliveAcked {
                lease: LEASE,
                ttl: Duration::from_secs(60),
                sent_at: t0,
            },
            t0,
        );
        assert_eq!(m.view().claim_until, Some(t0 + Duration::from_secs(9)));
    }

    #[test]
    fn unrenewed_leader_steps_down_at_the_deadline_and_abandons_the_lease() {
        let (mut m, t0) = machine();
        leading(&mut m, t0);
        let step = m.step(Event::Tick, t0 + Duration::from_secs(9));
        assert!(step.transitions.contains(&Transition::SteppedDown {
            reason: StepDownReason::LeaseNotRenewed
        }));
        assert!(step.actions.contains(&revoke(false)));
        assert_eq!(step.actions.last(), Some(&Action::GrantLease));
        assert_eq!(m.view().role, Role::Campaigning);
    }

    #[test]
    fn a_late_event_cannot_make_an_expired_lease_leader() {
        let (mut m, t0) = machine();
        granted(&mut m, t0);
        // The transaction answer arrives after the claim deadline (e.g. the process was frozen).
        let late = t0 + Duration::from_secs(30);
        m.step(campaign_done(ours(5), 5), late);
        assert!(!is_leader(&m, late));
        assert_eq!(m.view().role, Role::Campaigning);
    }

    #[test]
    fn stale_events_for_an_old_lease_are_ignored() {
        let (mut m, t0) = machine();
        leading(&mut m, t0);
        m.step(
            Event::KeepAliveAcked {
                lease: 1,
                ttl: Duration::ZERO,
                sent_at: t0,
            },
            t0,
        );
        assert!(is_leader(&m, t0));
    }

    #[test]
    fn watch_loss_ends_the_claim_and_rereads_after_backoff() {
        let (mut m, t0) = machine();
        leading(&mut m, t0);
        let step = m.step(Event::WatchFailed, t0);
        assert!(step.transitions.contains(&Transition::SteppedDown {
            reason: StepDownReason::WatchLost
        }));
        assert!(!is_leader(&m, t0));
        let at = m.next_wakeup().expect("retry scheduled");
        assert!(at > t0 && at <= t0 + Timing::for_ttl(TTL).backoff_cap);
        let step = m.step(Event::Tick, at);
        assert!(step.actions.contains(&Action::Campaign { lease: LEASE }));
        // The re-read shows the key still under our lease: leader again, same token.
        m.step(campaign_done(ours(5), 8), at);
        assert!(is_leader(&m, at));
        assert_eq!(m.view().fencing_token, Some(5));
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let (mut m, t0) = machine();
        m.step(Event::Start, t0);
        let cap = Timing::for_ttl(TTL).backoff_cap;
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..10 {
            m.step(Event::LeaseGrantFailed, now);
            let at = m.next_wakeup().expect("retry scheduled");
            delays.push(at - now);
            now = at;
            assert_eq!(m.step(Event::Tick, now).actions, vec![Action::GrantLease]);
        }
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= cap));
        assert!(delays[9] >= cap / 2);
    }

    #[test]
    fn campaign_failure_with_lease_gone_grants_a_new_lease() {
        let (mut m, t0) = machine();
        granted(&mut m, t0);
        let step = m.step(
            Event::CampaignFailed {
                lease: LEASE,
                lease_gone: true,
            },
            t0,
        );
        assert_eq!(step.actions.last(), Some(&Action::GrantLease));
        assert_eq!(m.view().lease_id, None);
    }

    #[test]
    fn shutdown_stops_claiming_at_once_and_revokes() {
        let (mut m, t0) = machine();
        leading(&mut m, t0);
        let step = m.step(Event::Shutdown, t0);
        assert!(!is_leader(&m, t0));
        assert_eq!(m.view().role, Role::Stopping);
        assert!(step.actions.contains(&revoke(true)));
        assert_eq!(m.step(Event::Revoked, t0).actions, vec![Action::Exit]);
        assert!(m.is_stopped());
    }

    #[test]
    fn release_delay_keeps_the_key_but_not_the_claim() {
        let delay = Duration::from_secs(2);
        let mut m = Machine::new("me", Timing::for_ttl(TTL), delay, 1);
        let t0 = Instant::now();
        leading(&mut m, t0);
        let step = m.step(Event::Shutdown, t0);
        assert!(!is_leader(&m, t0));
        assert!(!step
            .actions
            .iter()
            .any(|a| matches!(a, Action::Revoke { .. })));
        assert_eq!(m.next_wakeup(), Some(t0 + delay));
        let step = m.step(Event::Tick, t0 + delay);
        assert!(step.actions.contains(&revoke(true)));
    }

    #[test]
    fn resign_revokes_the_lease_and_campaigns_with_a_new_one() {
        let (mut m, t0) = machine();
        leading(&mut m, t0);
        let step = m.step(Event::Resign, t0);
        assert!(step.transitions.contains(&Transition::SteppedDown {
            reason: StepDownReason::Resigned
        }));
        assert!(step.actions.contains(&revoke(false)));
        assert!(!step.actions.contains(&Action::GrantLease));
        assert!(!is_leader(&m, t0));
        let holdoff = Timing::for_ttl(TTL).resign_holdoff;
        assert_eq!(m.next_wakeup(), Some(t0 + holdoff));
        assert_eq!(
            m.step(Event::Tick, t0 + holdoff).actions,
            vec![Action::GrantLease]
        );
    }

    #[test]
    fn resign_is_ignored_by_a_follower() {
        let (mut m, t0) = machine();
        following(&mut m, t0);
        assert_eq!(m.step(Event::Resign, t0), Step::default());
    }

    #[test]
    fn shutdown_without_a_lease_exits_at_once() {
        let (mut m, t0) = machine();
        m.step(Event::Start, t0);
        m.step(Event::LeaseGrantFailed, t0);
        let step = m.step(Event::Shutdown, t0);
        assert_eq!(step.actions.last(), Some(&Action::Exit));
    }

    #[test]
    fn lease_granted_during_shutdown_is_revoked() {
        let (mut m, t0) = machine();
        m.step(Event::Start, t0);
        let step = m.step(Event::Shutdown, t0);
        assert!(!step.actions.contains(&Action::Exit));
        let step = m.step(
            Event::LeaseGranted {
                lease: LEASE,
                ttl: TTL,
                sent_at: t0,
            },
            t0,
        );
        assert_eq!(step.actions, vec![revoke(true)]);
    }

    #[test]
    fn follower_tracks_a_new_holder() {
        let (mut m, t0) = machine();
        following(&mut m, t0);
        let next = Holder {
            value: "third".into(),
            lease: 55,
            create_revision: 9,
            mod_revision: 9,
        };
        let step = m.step(Event::KeyPut { holder: next }, t0);
        assert_eq!(
            step.transitions,
            vec![Transition::LeaderObserved {
                leader: "third".into(),
                fencing_token: 9
            }]
        );
        assert_eq!(m.view().leader.as_deref(), Some("third"));
    }

    #[test]
    fn resign_after_the_claim_ran_out_resigns_nothing() {
        let (mut m, t0) = machine();
        leading(&mut m, t0);
        // The loop was frozen past the deadline: the view it last saw still says leader.
        assert_eq!(m.view().role, Role::Leader);
        let late = t0 + TTL;
        let step = m.step(Event::Resign, late);
        assert!(!step.resigned(), "nothing was resigned: {step:?}");
        assert!(step.transitions.contains(&Transition::SteppedDown {
            reason: StepDownReason::LeaseNotRenewed
        }));
        let step = {
            let (mut m, t0) = machine();
            leading(&mut m, t0);
            m.step(Event::Resign, t0)
        };
        assert!(step.resigned());
    }

    #[test]
    fn release_delay_applies_to_the_leader_only() {
        let delay = Duration::from_secs(2);
        let mut m = Machine::new("me", Timing::for_ttl(TTL), delay, 1);
        let t0 = Instant::now();
        following(&mut m, t0);
        let step = m.step(Event::Shutdown, t0);
        assert!(
            step.actions.contains(&revoke(true)),
            "a follower gives its lease back at once: {step:?}"
        );
    }

    #[test]
    fn an_abandoned_lease_whose_revoke_failed_is_revoked_after_the_next_grant() {
        let (mut m, t0) = machine();
        leading(&mut m, t0);
        let late = t0 + TTL;
        let step = m.step(Event::Tick, late);
        assert!(step.actions.contains(&revoke(false)));
        m.step(Event::RevokeFailed { lease: LEASE }, late);
        m.step(Event::LeaseGrantFailed, late);
        let retry = m.next_wakeup().expect("a grant retry");
        let step = m.step(Event::Tick, retry);
        assert_eq!(step.actions, vec![Action::GrantLease]);
        let step = m.step(
            Event::LeaseGranted {
                lease: 8,
                ttl: TTL,
                sent_at: retry,
            },
            retry,
        );
        assert!(
            step.actions.contains(&revoke(false)),
            "etcd answers again, so the old lease is revoked again: {step:?}"
        );
        // Revoked once more only if that fails too.
        let step = m.step(
            Event::CampaignDone {
                lease: 8,
                holder: other(3),
                revision: 3,
                key: KEY.into(),
                queue: None,
            },
            retry,
        );
        assert!(!step
            .actions
            .iter()
            .any(|a| matches!(a, Action::Revoke { .. })));
    }

    #[test]
    fn shutdown_also_revokes_leases_whose_revoke_failed() {
        let (mut m, t0) = machine();
        following(&mut m, t0);
        m.step(Event::RevokeFailed { lease: 3 }, t0);
        let step = m.step(Event::Shutdown, t0);
        assert!(step.actions.contains(&Action::Revoke {
            lease: 3,
            then_exit: false
        }));
    }

    #[test]
    fn the_view_reports_the_ttl_etcd_granted() {
        let (mut m, t0) = machine();
        m.step(Event::Start, t0);
        m.step(
            Event::LeaseGranted {
                lease: LEASE,
                ttl: Duration::from_secs(4),
                sent_at: t0,
            },
            t0,
        );
        assert_eq!(m.view().lease_ttl, Some(Duration::from_secs(4)));
    }

    #[test]
    fn leader_change_updates_whom_a_follower_follows_without_campaigning() {
        let (mut m, t0) = machine();
        following(&mut m, t0);
        let next = Holder {
            value: "next".into(),
            lease: 56,
            create_revision: 4,
            mod_revision: 4,
        };
        let step = m.step(Event::LeaderChanged { holder: next }, t0);
        assert_eq!(step.actions, vec![]);
        assert_eq!(
            step.transitions,
            vec![Transition::LeaderObserved {
                leader: "next".into(),
                fencing_token: 4
            }]
        );
        let v = m.view();
        assert_eq!(v.role, Role::Follower);
        assert_eq!(v.leader.as_deref(), Some("next"));
        assert_eq!(v.fencing_token, Some(4));
    }

    #[test]
    fn a_proclaimed_value_is_followed() {
        let (mut m, t0) = machine();
        following(&mut m, t0);
        let proclaimed = Holder {
            value: "new value".into(),
            ..other(3)
        };
        let step = m.step(Event::LeaderChanged { holder: proclaimed }, t0);
        assert_eq!(step.actions, vec![]);
        assert_eq!(m.view().leader.as_deref(), Some("new value"));
        assert_eq!(m.view().fencing_token, Some(3));
        // The same news twice is no news.
        let again = Holder {
            value: "new value".into(),
            ..other(3)
        };
        assert_eq!(
            m.step(Event::LeaderChanged { holder: again }, t0),
            Step::default()
        );
    }

    #[test]
    fn leader_change_never_touches_a_leader_or_a_campaign() {
        let (mut m, t0) = machine();
        leading(&mut m, t0);
        assert_eq!(
            m.step(Event::LeaderChanged { holder: other(9) }, t0),
            Step::default()
        );
        assert!(is_leader(&m, t0));
        let (mut m, t0) = machine();
        granted(&mut m, t0);
        assert_eq!(
            m.step(Event::LeaderChanged { holder: other(9) }, t0),
            Step::default()
        );
        assert_eq!(m.view().role, Role::Campaigning);
    }

    fn holder(value: &str, rev: i64) -> Holder {
        Holder {
            value: value.into(),
            lease: rev * 10,
            create_revision: rev,
            mod_revision: rev,
        }
    }

    /// Three candidates ahead of ours: `a` leads, `c` is our predecessor.
    fn queue() -> Ahead {
        Ahead {
            keys: vec![
                (b"e/a".to_vec(), holder("a", 2)),
                (b"e/b".to_vec(), holder("b", 3)),
                (b"e/c".to_vec(), holder("c", 4)),
            ],
        }
    }

    #[test]
    fn the_leaders_deletion_names_the_next_one_without_campaigning() {
        let mut q = queue();
        assert_eq!(
            q.deleted(b"e/a"),
            Some(Event::LeaderChanged {
                holder: holder("b", 3)
            })
        );
        assert_eq!(
            q.deleted(b"e/b"),
            Some(Event::LeaderChanged {
                holder: holder("c", 4)
            })
        );
        // Now our predecessor leads; its deletion is our turn.
        assert_eq!(q.deleted(b"e/c"), Some(Event::KeyDeleted));
    }

    #[test]
    fn only_the_predecessors_deletion_means_campaign() {
        let mut q = queue();
        assert_eq!(q.deleted(b"e/c"), Some(Event::KeyDeleted));
        let mut q = queue();
        assert_eq!(q.deleted(b"e/b"), None, "a candidate in between left");
        assert_eq!(
            q.deleted(b"e/a"),
            Some(Event::LeaderChanged {
                holder: holder("c", 4)
            })
        );
    }

    #[test]
    fn a_proclaim_by_the_leader_is_reported_and_other_writes_are_not() {
        let mut q = queue();
        assert_eq!(
            q.put(b"e/a", holder("a2", 2)),
            Some(Event::LeaderChanged {
                holder: holder("a2", 2)
            })
        );
        assert_eq!(q.put(b"e/b", holder("b2", 3)), None);
        assert_eq!(q.put(b"e/new", holder("new", 9)), None, "a newcomer");
        assert_eq!(q.deleted(b"e/new"), None);
        assert_eq!(
            q.deleted(b"e/a"),
            Some(Event::LeaderChanged {
                holder: holder("b2", 3)
            }),
            "the value written while waiting is the one shown"
        );
    }

    #[test]
    fn the_machine_decides_what_to_watch_from_what_the_campaign_read() {
        let (mut m, t0) = machine();
        granted(&mut m, t0);
        let ahead = vec![(b"/e/1".to_vec(), other(3))];
        let step = m.step(
            Event::CampaignDone {
                lease: LEASE,
                holder: other(3),
                revision: 4,
                key: "/e/7".into(),
                queue: Some(Queue {
                    prefix: "/e/".into(),
                    ahead: ahead.clone(),
                    own: 4,
                }),
            },
            t0,
        );
        assert_eq!(
            step.actions,
            vec![Action::Watch {
                target: WatchTarget {
                    key: "/e/".into(),
                    ahead: Some(Ahead { keys: ahead }),
                    puts: true,
                    handoff: None,
                },
                from_revision: 5
            }],
            "behind others: the election's prefix, read through the queue"
        );
        let (mut m, t0) = machine();
        granted(&mut m, t0);
        let step = m.step(
            Event::CampaignDone {
                lease: LEASE,
                holder: ours(4),
                revision: 4,
                key: "/e/7".into(),
                queue: Some(Queue {
                    prefix: "/e/".into(),
                    ahead: Vec::new(),
                    own: 4,
                }),
            },
            t0,
        );
        assert_eq!(
            step.actions,
            vec![Action::Watch {
                target: WatchTarget::key("/e/7"),
                from_revision: 5
            }],
            "leading the election: our own key"
        );
    }

    // --- direct succession ---

    fn succeeding(wait: Duration) -> (Machine, Instant) {
        let m = Machine::new("me", Timing::for_ttl(TTL), Duration::ZERO, 42).with_succession(
            Succession {
                revision: "a".into(),
                handoff_wait: wait,
            },
        );
        (m, Instant::now())
    }

    fn handed(value: &str, lease: LeaseId, mod_revision: i64) -> Holder {
        Holder {
            value: value.into(),
            lease,
            create_revision: 5,
            mod_revision,
        }
    }

    /// The key as `leading_with` holds it.
    const HELD: Term = Term {
        fencing_token: 5,
        create_revision: 5,
    };

    /// A leader (key created at 5) that read the candidates `known` (at 41) and watches them.
    fn leading_with(known: Vec<Candidate>, wait: Duration) -> (Machine, Instant) {
        let (mut m, t0) = succeeding(wait);
        let step = granted(&mut m, t0);
        assert!(step.actions.contains(&register(true, None)));
        let step = m.step(campaign_done(ours(5), 5), t0);
        assert!(is_leader(&m, t0));
        assert!(
            step.actions.contains(&Action::ReadCandidates),
            "a leader keeps the candidates too: {step:?}"
        );
        assert!(
            step.actions.contains(&register(true, Some(HELD))),
            "a winner announces its term: {step:?}"
        );
        let step = m.step(candidates_read(known, 41), t0);
        assert_eq!(
            step.actions,
            vec![Action::WatchCandidates { from_revision: 42 }]
        );
        (m, t0)
    }

    fn transfer(to: Candidate) -> Action {
        Action::Transfer { to, held: HELD }
    }

    #[test]
    fn a_stepping_down_leader_hands_the_key_to_another_release_first() {
        let other_release = candidate("new", "b", 20, 30);
        let (mut m, t0) = leading_with(
            vec![
                candidate("me", "a", LEASE, 6),
                candidate("same", "a", 30, 40),
                other_release.clone(),
            ],
            Duration::ZERO,
        );
        let step = m.step(Event::Shutdown, t0);
        assert!(!is_leader(&m, t0), "no claim from the first moment");
        assert_eq!(
            step.actions,
            vec![transfer(other_release)],
            "no read first, the key watch kept"
        );
    }

    #[test]
    fn a_transfer_ends_with_the_lease_revoked_and_exit() {
        let (mut m, t0) = leading_with(vec![candidate("next", "a", 20, 30)], Duration::ZERO);
        m.step(Event::Shutdown, t0);
        let step = m.step(Event::TransferDone { succeeded: true }, t0);
        assert!(
            step.actions.contains(&revoke(true)),
            "nothing to wait for: the key is the successor's"
        );
        assert_eq!(m.step(Event::Revoked, t0).actions, vec![Action::Exit]);
    }

    #[test]
    fn without_a_successor_or_a_transfer_the_lease_is_revoked_as_before() {
        let (mut m, t0) = leading_with(vec![candidate("me", "a", LEASE, 6)], Duration::ZERO);
        let step = m.step(Event::Shutdown, t0);
        assert!(step.actions.contains(&revoke(true)));
        // A transfer that fails on the list the watch kept is retried once on a fresh read.
        let (mut m, t0) = leading_with(vec![candidate("gone", "a", 20, 30)], Duration::ZERO);
        m.step(Event::Shutdown, t0);
        let failed = Event::TransferDone { succeeded: false };
        assert_eq!(
            m.step(failed.clone(), t0).actions,
            vec![Action::ReadCandidates]
        );
        let next = candidate("next", "a", 21, 43);
        let step = m.step(candidates_read(vec![next.clone()], 44), t0);
        assert_eq!(
            step.actions,
            vec![
                Action::WatchCandidates { from_revision: 45 },
                transfer(next)
            ]
        );
        let step = m.step(failed, t0);
        assert!(step.actions.contains(&revoke(true)));
    }

    #[test]
    fn a_leader_that_knows_no_candidates_yet_reads_them_when_it_hands_over() {
        let (mut m, t0) = succeeding(Duration::ZERO);
        leading(&mut m, t0);
        assert_eq!(
            m.step(Event::Shutdown, t0).actions,
            vec![Action::ReadCandidates]
        );
        let next = candidate("next", "a", 20, 30);
        let step = m.step(candidates_read(vec![next.clone()], 41), t0);
        assert_eq!(
            step.actions,
            vec![
                Action::WatchCandidates { from_revision: 42 },
                transfer(next)
            ]
        );
    }

    #[test]
    fn a_leader_waits_for_another_release_then_takes_the_best_it_has() {
        let wait = Duration::from_secs(3);
        let same = candidate("same", "a", 20, 30);
        let (mut m, t0) = leading_with(vec![same.clone()], wait);
        assert_eq!(
            m.step(Event::Shutdown, t0).actions,
            vec![],
            "waiting, on the watch it already has"
        );
        assert_eq!(m.next_wakeup(), Some(t0 + wait));
        // Another old replica registering changes nothing but the fallback.
        let later_same = candidate("later", "a", 21, 45);
        assert_eq!(
            m.step(
                Event::CandidateRegistered {
                    candidate: later_same.clone()
                },
                t0
            )
            .actions,
            vec![]
        );
        // A new release registering is taken at once.
        let new = candidate("new", "b", 22, 46);
        let step = m.step(
            Event::CandidateRegistered {
                candidate: new.clone(),
            },
            t0,
        );
        assert_eq!(step.actions, vec![transfer(new)]);
        // Had none come, the newest old one would have been taken at the deadline.
        let (mut m, t0) = leading_with(vec![same], wait);
        m.step(Event::Shutdown, t0);
        m.step(
            Event::CandidateRegistered {
                candidate: later_same.clone(),
            },
            t0,
        );
        let step = m.step(Event::Tick, t0 + wait);
        assert_eq!(step.actions, vec![transfer(later_same)]);
    }

    #[test]
    fn a_follower_watches_only_the_keys_deletion_and_its_handoff_note() {
        let (mut m, t0) = succeeding(Duration::ZERO);
        granted(&mut m, t0);
        let step = m.step(campaign_done(other(3), 3), t0);
        assert!(step.actions.contains(&Action::Watch {
            target: WatchTarget {
                key: KEY.into(),
                ahead: None,
                puts: false,
                handoff: Some("/k.handoff/7".into()),
            },
            from_revision: 4
        }));
        let (mut m, t0) = succeeding(Duration::ZERO);
        granted(&mut m, t0);
        let step = m.step(campaign_done(ours(5), 5), t0);
        assert!(
            step.actions.contains(&watch_key(6)),
            "a leader watches writes, which show a transfer to it too: {step:?}"
        );
    }

    #[test]
    fn a_key_handed_to_us_makes_us_leader_from_the_transfers_revision() {
        let (mut m, t0) = succeeding(Duration::ZERO);
        following(&mut m, t0);
        let term = Term {
            fencing_token: 9,
            create_revision: 3,
        };
        let step = m.step(Event::HandedOver { term }, t0);
        assert_eq!(
            step.transitions,
            vec![Transition::BecameLeader { fencing_token: 9 }]
        );
        assert!(is_leader(&m, t0));
        assert_eq!(m.view().fencing_token, Some(9));
        assert_eq!(
            step.actions,
            vec![watch_key(10), register(true, Some(term))],
            "now it watches the key's writes, and announces its term"
        );
        // The transfer's own write, replayed by the new watch, is ours.
        let transferred = Holder {
            value: "me".into(),
            lease: LEASE,
            create_revision: 3,
            mod_revision: 9,
        };
        assert_eq!(
            m.step(
                Event::KeyPut {
                    holder: transferred
                },
                t0
            ),
            Step::default()
        );
    }

    #[test]
    fn a_former_leader_sees_a_transfer_to_it_on_its_watch_of_the_keys_writes() {
        let (mut m, t0) = succeeding(Duration::ZERO);
        leading(&mut m, t0);
        m.step(Event::KeyPut { holder: other(8) }, t0);
        assert!(!is_leader(&m, t0), "overwritten: it follows");
        let step = m.step(
            Event::KeyPut {
                holder: handed("me", LEASE, 9),
            },
            t0,
        );
        assert_eq!(
            step.transitions,
            vec![Transition::BecameLeader { fencing_token: 9 }]
        );
        assert!(is_leader(&m, t0));
    }

    #[test]
    fn an_overwritten_leader_says_so_and_its_followers_read_the_key_again() {
        let (mut m, t0) = succeeding(Duration::ZERO);
        leading(&mut m, t0);
        let step = m.step(Event::KeyPut { holder: other(8) }, t0);
        assert!(step.actions.contains(&register(true, None)));
        // A follower of that leader (lease 99) sees its registration lose the mark.
        let (mut f, t0) = following_with(vec![candidate("other", "a", 99, 2)]);
        let step = f.step(
            Event::CandidateRegistered {
                candidate: candidate("other", "a", 99, 2),
            },
            t0,
        );
        assert!(step.actions.contains(&Action::Campaign { lease: LEASE }));
    }

    #[test]
    fn a_lost_watch_of_the_registrations_is_replaced_after_a_fresh_read() {
        let (mut m, t0) = following_with(vec![candidate("me", "a", LEASE, 10)]);
        let step = m.step(Event::CandidatesWatchEnded, t0);
        assert_eq!(step.actions, vec![Action::ReadCandidates]);
        let step = m.step(
            candidates_read(vec![candidate("me", "a", LEASE, 10)], 30),
            t0,
        );
        assert_eq!(
            step.actions,
            vec![Action::WatchCandidates { from_revision: 31 }]
        );
    }

    #[test]
    fn a_handoff_note_is_no_evidence_once_our_claim_ran_out() {
        let (mut m, t0) = succeeding(Duration::ZERO);
        following(&mut m, t0);
        // Frozen past the claim deadline: the note, read on thawing, proves nothing about a
        // lease that may have expired.
        let late = t0 + TTL;
        let step = m.step(
            Event::HandedOver {
                term: Term {
                    fencing_token: 9,
                    create_revision: 3,
                },
            },
            late,
        );
        assert!(!is_leader(&m, late));
        assert!(step.actions.contains(&Action::GrantLease), "{step:?}");
    }

    #[test]
    fn followers_learn_the_new_leader_from_its_registration() {
        let (mut m, t0) = succeeding(Duration::ZERO);
        following(&mut m, t0);
        let mut next = candidate("next", "a", 20, 30);
        next.leading = Some(Term {
            fencing_token: 12,
            create_revision: 3,
        });
        let step = m.step(
            Event::CandidateRegistered {
                candidate: next.clone(),
            },
            t0,
        );
        assert_eq!(
            step.transitions,
            vec![Transition::LeaderObserved {
                leader: "next".into(),
                fencing_token: 12
            }]
        );
        assert!(step.actions.is_empty(), "no campaign: {step:?}");
        assert_eq!(m.view().leader.as_deref(), Some("next"));
        assert_eq!(m.view().holder_lease, Some(20));
        // An older term (a stale registration) changes nothing.
        let mut old = candidate("old", "a", 21, 31);
        old.leading = Some(Term {
            fencing_token: 11,
            create_revision: 3,
        });
        assert_eq!(
            m.step(Event::CandidateRegistered { candidate: old }, t0),
            Step::default()
        );
        assert_eq!(m.view().leader.as_deref(), Some("next"));
    }

    #[test]
    fn a_successor_never_hands_the_key_back_to_the_leader_it_took_it_from() {
        // The old leader (`other(3)`, lease 99) keeps its registration until its lease is
        // revoked, a moment after the transfer.
        let (mut m, t0) = following_with(vec![
            candidate("other", "a", 99, 8),
            candidate("me", "a", LEASE, 9),
            candidate("third", "a", 30, 7),
        ]);
        m.step(
            Event::HandedOver {
                term: Term {
                    fencing_token: 50,
                    create_revision: 3,
                },
            },
            t0,
        );
        assert!(is_leader(&m, t0));
        let step = m.step(Event::Shutdown, t0);
        assert_eq!(
            step.actions,
            vec![Action::Transfer {
                to: candidate("third", "a", 30, 7),
                held: Term {
                    fencing_token: 50,
                    create_revision: 3
                },
            }],
            "the newer registration of the old leader is passed over"
        );
    }

    #[test]
    fn under_succession_a_followers_token_is_the_holders_last_write() {
        let (mut m, t0) = succeeding(Duration::ZERO);
        following(&mut m, t0);
        m.step(
            Event::KeyPut {
                holder: handed("next", 20, 12),
            },
            t0,
        );
        assert_eq!(m.view().fencing_token, Some(12));
        assert_eq!(m.view().leader.as_deref(), Some("next"));
    }

    #[test]
    fn the_release_delay_comes_before_the_handoff() {
        let delay = Duration::from_secs(2);
        let mut m =
            Machine::new("me", Timing::for_ttl(TTL), delay, 42).with_succession(Succession {
                revision: "a".into(),
                handoff_wait: Duration::ZERO,
            });
        let t0 = Instant::now();
        leading(&mut m, t0);
        let step = m.step(Event::Shutdown, t0);
        assert!(!step.actions.contains(&Action::ReadCandidates));
        assert!(!is_leader(&m, t0));
        let step = m.step(Event::Tick, t0 + delay);
        assert_eq!(step.actions, vec![Action::ReadCandidates]);
    }

    // --- application health ---

    fn watching_the_app() -> (Machine, Instant) {
        let (m, t0) = succeeding(Duration::ZERO);
        (m.with_app_health(Duration::from_secs(3)), t0)
    }

    #[test]
    fn an_unknown_or_unhealthy_app_stands_by_without_campaigning_or_registering() {
        let (mut m, t0) = watching_the_app();
        let step = granted(&mut m, t0);
        assert!(step.actions.contains(&register(false, None)));
        assert!(!step
            .actions
            .iter()
            .any(|a| matches!(a, Action::Campaign { .. })));
        assert_eq!(m.view().role, Role::Standby);
        let step = m.step(Event::AppHealth { healthy: true }, t0);
        assert!(step.actions.contains(&register(true, None)));
        assert!(step.actions.contains(&Action::Campaign { lease: LEASE }));
        assert_eq!(m.view().app_healthy, Some(true));
    }

    #[test]
    fn a_follower_whose_app_fails_registers_as_unhealthy() {
        let (mut m, t0) = watching_the_app();
        granted(&mut m, t0);
        m.step(Event::AppHealth { healthy: true }, t0);
        m.step(campaign_done(other(3), 3), t0);
        let step = m.step(Event::AppHealth { healthy: false }, t0);
        assert_eq!(step.actions, vec![register(false, None)]);
        // The key going away is no reason to campaign now.
        m.step(Event::KeyDeleted, t0);
        assert_eq!(m.view().role, Role::Standby);
    }

    #[test]
    fn a_leader_whose_app_stays_unhealthy_hands_over_or_keeps_leading_and_says_so() {
        let (mut m, t0) = watching_the_app();
        granted(&mut m, t0);
        m.step(Event::AppHealth { healthy: true }, t0);
        m.step(campaign_done(ours(5), 5), t0);
        assert!(is_leader(&m, t0));
        m.step(Event::AppHealth { healthy: false }, t0);
        let after = Duration::from_secs(3);
        assert_eq!(m.next_wakeup(), Some(t0 + after));
        let step = m.step(Event::Tick, t0 + after);
        assert!(step.actions.contains(&Action::ReadCandidates));
        assert!(is_leader(&m, t0 + after), "still leading while it looks");
        // Nobody healthy: keep leading, say so, look again later.
        let step = m.step(candidates_read(vec![], 9), t0 + after);
        assert_eq!(step.transitions, vec![Transition::NoHealthySuccessor]);
        assert!(is_leader(&m, t0 + after));
        assert!(m.view().no_healthy_successor);
        let again = t0 + after * 2;
        assert_eq!(m.next_wakeup(), Some(again));
        // An unhealthy candidate registering changes nothing; a healthy one is handed the
        // key at once, without waiting for the next look (the list is kept by the watch).
        let mut sick = candidate("sick", "a", 21, 31);
        sick.healthy = false;
        let step = m.step(Event::CandidateRegistered { candidate: sick }, t0 + after);
        assert_eq!(step, Step::default());
        let to = candidate("healthy", "a", 20, 30);
        let step = m.step(
            Event::CandidateRegistered {
                candidate: to.clone(),
            },
            t0 + after,
        );
        assert!(step.transitions.contains(&Transition::SteppedDown {
            reason: StepDownReason::AppUnhealthy
        }));
        assert_eq!(
            step.actions,
            vec![Action::Transfer {
                to,
                held: Term {
                    fencing_token: 5,
                    create_revision: 5
                },
            }]
        );
        let again = t0 + after;
        assert!(!is_leader(&m, again));
    }

    // --- campaign order after a crash ---

    /// A follower (succession) of `other(3)` that read the candidates `known`.
    fn following_with(known: Vec<Candidate>) -> (Machine, Instant) {
        let (mut m, t0) = succeeding(Duration::ZERO);
        granted(&mut m, t0);
        let step = m.step(campaign_done(other(3), 3), t0);
        assert!(step.actions.contains(&Action::ReadCandidates));
        let step = m.step(candidates_read(known, 20), t0);
        assert_eq!(
            step.actions,
            vec![Action::WatchCandidates { from_revision: 21 }]
        );
        (m, t0)
    }

    #[test]
    fn after_a_crash_the_newest_healthy_registration_campaigns_at_once() {
        let (mut m, t0) = following_with(vec![
            candidate("dead-holder", "a", 99, 30),
            candidate("older", "a", 20, 10),
            candidate("me", "a", LEASE, 12),
        ]);
        let step = m.step(Event::KeyDeleted, t0);
        assert!(step.actions.contains(&Action::Campaign { lease: LEASE }));
    }

    #[test]
    fn a_lower_ranked_candidate_defers_and_follows_the_winner_without_campaigning() {
        let (mut m, t0) = following_with(vec![
            candidate("me", "a", LEASE, 10),
            candidate("newer", "a", 20, 12),
            candidate("newest-but-sick", "a", 21, 13),
        ]);
        // The sick one does not count: "newer" is first, we are second.
        let mut sick = candidate("newest-but-sick", "a", 21, 14);
        sick.healthy = false;
        m.step(Event::CandidateRegistered { candidate: sick }, t0);
        let step = m.step(Event::KeyDeleted, t0);
        assert!(!step
            .actions
            .iter()
            .any(|a| matches!(a, Action::Campaign { .. })));
        assert_eq!(m.next_wakeup(), Some(t0 + RANK_STEP));
        // The winner's term shows up in its registration (followers do not watch writes).
        let mut newer = candidate("newer", "a", 20, 12);
        newer.leading = Some(Term {
            fencing_token: 40,
            create_revision: 40,
        });
        let step = m.step(Event::CandidateRegistered { candidate: newer }, t0);
        assert!(step.actions.is_empty(), "no campaign: {step:?}");
        assert_eq!(m.view().leader.as_deref(), Some("newer"));
    }

    #[test]
    fn a_deferring_candidate_campaigns_when_the_better_one_does_not_show_up() {
        let (mut m, t0) = following_with(vec![
            candidate("me", "a", LEASE, 10),
            candidate("newer", "a", 20, 12),
        ]);
        m.step(Event::KeyDeleted, t0);
        let step = m.step(Event::Tick, t0 + RANK_STEP);
        assert!(step.actions.contains(&Action::Campaign { lease: LEASE }));
        // A candidate that went no longer ranks above us.
        let (mut m, t0) = following_with(vec![
            candidate("me", "a", LEASE, 10),
            candidate("newer", "a", 20, 12),
        ]);
        m.step(
            Event::CandidateGone {
                key: candidate("newer", "a", 20, 12).key,
            },
            t0,
        );
        let step = m.step(Event::KeyDeleted, t0);
        assert!(step.actions.contains(&Action::Campaign { lease: LEASE }));
    }

    #[test]
    fn a_handoff_for_shutdown_is_not_abandoned_when_the_lease_runs_out() {
        let (mut m, t0) = leading_with(vec![candidate("next", "a", 20, 30)], Duration::ZERO);
        m.step(Event::Shutdown, t0);
        let late = t0 + TTL;
        let step = m.step(Event::Tick, late);
        assert!(
            !step.actions.contains(&Action::GrantLease),
            "no new lease, no campaign while stopping: {step:?}"
        );
        assert_eq!(m.view().role, Role::Stopping);
        // The key went with the lease: nothing to hand over, give up and exit.
        let step = m.step(Event::KeyDeleted, late);
        assert!(step.actions.contains(&revoke(true)));
    }
}
