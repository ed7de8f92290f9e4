//! The leadership snapshot that the election task publishes and everyone else reads.
//!
//! The election task is the only writer (a `tokio::sync::watch` sender); HTTP handlers and the
//! metrics endpoint hold receivers. A snapshot carries its own claim deadline, so a reader
//! decides "leader or not" against the clock at the moment it answers
//! ([`Snapshot::is_leader_at`]): a stalled or frozen election task can never keep `/leader` at
//! 200 past the deadline.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::election::machine::{Role, View};

/// Everything readers may know about this replica's election.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// This replica's id.
    pub identity: String,
    /// The lock key.
    pub key: String,
    /// What the state machine knows.
    pub view: View,
    /// Leadership transitions (became leader or stepped down) since start.
    pub transitions: u64,
    /// The last etcd error, for `/status`; never contains secrets.
    pub last_error: Option<String>,
    /// Set once shutdown began: from then on this replica never claims leadership.
    pub stopping: bool,
}

/// The `/leader` document, also used for the SSE stream and the leader file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderDoc<'a> {
    pub is_leader: bool,
    pub identity: &'a str,
    pub leader: Option<&'a str>,
    pub fencing_token: Option<i64>,
    pub key: &'a str,
}

/// The `/status` document.
#[derive(Debug, Clone, Serialize)]
pub struct StatusDoc<'a> {
    pub state: &'static str,
    pub is_leader: bool,
    pub identity: &'a str,
    pub key: &'a str,
    pub leader: Option<&'a str>,
    pub fencing_token: Option<i64>,
    /// Hex, as `etcdctl lease` prints it.
    pub lease_id: Option<String>,
    /// Seconds until etcd may expire the lease, at the earliest.
    pub lease_seconds_left: Option<f64>,
    /// Seconds until this replica stops claiming leadership unless the lease is renewed.
    pub claim_seconds_left: Option<f64>,
    /// Unix time, seconds, when this replica became leader.
    pub leader_since: Option<f64>,
    /// Set when the key holds our own id under a lease that is not ours: an older instance
    /// of this replica (say a StatefulSet pod recreated while the old one is cut off) still
    /// holds it. We do not lead, and `leader` is then null.
    pub stale_holder: Option<StaleHolder<'a>>,
    /// With `--app-health`: whether the application answers 2xx (null without the flag).
    pub app_healthy: Option<bool>,
    /// Leading with an unhealthy application because no replica with a healthy one is
    /// registered.
    pub no_healthy_successor: bool,
    pub transitions: u64,
    pub last_error: Option<&'a str>,
    pub version: &'static str,
}

/// The holder of the key that carries our id but not our lease.
#[derive(Debug, Clone, Serialize)]
pub struct StaleHolder<'a> {
    pub id: &'a str,
    /// Hex, as `etcdctl lease revoke` takes it.
    pub lease_id: Option<String>,
}

impl Snapshot {
    /// A snapshot before the election has started.
    pub fn initial(identity: String, key: String, view: View) -> Self {
        Snapshot {
            identity,
            key,
            view,
            transitions: 0,
            last_error: None,
            stopping: false,
        }
    }

    /// True when this replica may claim leadership at `now`.
    pub fn is_leader_at(&self, now: Instant) -> bool {
        !self.stopping
            && self.view.role == Role::Leader
            && self.view.claim_until.is_some_and(|until| now < until)
    }

    /// The leader as far as this replica knows at `now`; `None` when unknown. Our own id only
    /// while we lead: never once our claim has ended, and never for a key that holds our id
    /// under another lease, so an application that compares the leader with its own name
    /// (as the kubernetes/contrib elector's users do) never believes it leads when it does not.
    pub fn leader_at(&self, now: Instant) -> Option<&str> {
        match self.view.role {
            Role::Leader if !self.is_leader_at(now) => None,
            Role::Stopping => None,
            Role::Follower if self.stale_holder().is_some() => None,
            _ => self.view.leader.as_deref(),
        }
    }

    /// Our own id on a key we do not hold.
    fn stale_holder(&self) -> Option<StaleHolder<'_>> {
        match (self.view.role, self.view.leader.as_deref()) {
            (Role::Follower, Some(holder)) if holder == self.identity => Some(StaleHolder {
                id: holder,
                lease_id: self.view.holder_lease.map(|id| format!("{id:x}")),
            }),
            _ => None,
        }
    }

    /// The `/leader` document at `now`.
    pub fn leader_doc(&self, now: Instant) -> LeaderDoc<'_> {
        let is_leader = self.is_leader_at(now);
        LeaderDoc {
            is_leader,
            identity: &self.identity,
            leader: self.leader_at(now),
            fencing_token: if self.leader_at(now).is_some() {
                self.view.fencing_token
            } else {
                None
            },
            key: &self.key,
        }
    }

    /// The `/status` document at `now`.
    pub fn status_doc(&self, now: Instant) -> StatusDoc<'_> {
        let secs_until = |t: Instant| t.saturating_duration_since(now).as_secs_f64();
        let wall_now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let state = if self.stopping {
            Role::Stopping
        } else {
            self.view.role
        };
        StatusDoc {
            state: state.as_str(),
            is_leader: self.is_leader_at(now),
            identity: &self.identity,
            key: &self.key,
            leader: self.leader_at(now),
            fencing_token: self.view.fencing_token,
            lease_id: self.view.lease_id.map(|id| format!("{id:x}")),
            lease_seconds_left: self.view.lease_expires_at.map(secs_until),
            claim_seconds_left: self.view.claim_until.map(secs_until),
            leader_since: self.view.leader_since.map(|since| {
                wall_now
                    .saturating_sub(now.saturating_duration_since(since))
                    .as_secs_f64()
            }),
            stale_holder: self.stale_holder(),
            app_healthy: self.view.app_healthy,
            no_healthy_successor: self.view.no_healthy_successor,
            transitions: self.transitions,
            last_error: self.last_error.as_deref(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// The reading side, cheap to clone.
pub type Receiver = watch::Receiver<Arc<Snapshot>>;

/// The writing side, owned by the election task.
#[derive(Debug)]
pub struct Publisher {
    tx: watch::Sender<Arc<Snapshot>>,
}

impl Publisher {
    /// A publisher with its first snapshot, and a receiver for readers.
    pub fn new(initial: Snapshot) -> (Publisher, Receiver) {
        let (tx, rx) = watch::channel(Arc::new(initial));
        (Publisher { tx }, rx)
    }

    /// Publish `next`, waking readers only if something changed.
    pub fn publish(&self, next: Snapshot) {
        self.tx.send_if_modified(|current| {
            if **current == next {
                false
            } else {
                *current = Arc::new(next);
                true
            }
        });
    }

    /// The snapshot currently published.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A new receiver.
    pub fn subscribe(&self) -> Receiver {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader_view(now: Instant) -> View {
        View {
            role: Role::Leader,
            leader: Some("me".into()),
            holder_lease: None,
            fencing_token: Some(4),
            claim_until: Some(now + Duration::from_secs(1)),
            leader_since: Some(now),
            lease_id: Some(0x2a),
            lease_expires_at: Some(now + Duration::from_secs(2)),
            lease_ttl: Some(Duration::from_secs(3)),
            app_healthy: None,
            no_healthy_successor: false,
        }
    }

    #[test]
    fn leader_claim_ends_at_its_deadline_whatever_the_publisher_does() {
        let now = Instant::now();
        let snap = Snapshot::initial("me".into(), "/k".into(), leader_view(now));
        assert!(snap.is_leader_at(now));
        let later = now + Duration::from_secs(1);
        assert!(!snap.is_leader_at(later));
        let doc = snap.leader_doc(later);
        assert!(!doc.is_leader);
        assert_eq!(doc.leader, None);
        assert_eq!(doc.fencing_token, None);
    }

    #[test]
    fn stopping_never_claims() {
        let now = Instant::now();
        let mut snap = Snapshot::initial("me".into(), "/k".into(), leader_view(now));
        snap.stopping = true;
        assert!(!snap.is_leader_at(now));
        assert_eq!(snap.status_doc(now).state, "stopping");
    }

    #[test]
    fn status_shows_lease_in_hex_and_time_left() {
        let now = Instant::now();
        let snap = Snapshot::initial("me".into(), "/k".into(), leader_view(now));
        let status = snap.status_doc(now);
        assert_eq!(status.lease_id.as_deref(), Some("2a"));
        assert_eq!(status.lease_seconds_left, Some(2.0));
        assert_eq!(status.state, "leader");
    }

    #[test]
    fn a_key_with_our_id_under_another_lease_is_never_reported_as_our_leadership() {
        let now = Instant::now();
        let view = View {
            role: Role::Follower,
            leader: Some("me".into()),
            holder_lease: Some(0x99),
            fencing_token: Some(3),
            claim_until: None,
            leader_since: None,
            lease_id: Some(0x2a),
            lease_expires_at: Some(now + Duration::from_secs(2)),
            lease_ttl: Some(Duration::from_secs(3)),
            app_healthy: None,
            no_healthy_successor: false,
        };
        let snap = Snapshot::initial("me".into(), "/k".into(), view);
        let doc = snap.leader_doc(now);
        assert!(!doc.is_leader);
        assert_eq!(doc.leader, None);
        let status = snap.status_doc(now);
        let stale = status.stale_holder.expect("named in /status");
        assert_eq!((stale.id, stale.lease_id.as_deref()), ("me", Some("99")));
    }
}
