//! Direct succession (lock protocol): the rules for handing the key to a chosen successor.
//!
//! Every lock-protocol replica registers under its own lease at `<key>.candidates/<lease hex>`
//! (beside the key, never under `<key>/`, which etcd's `concurrency` package and `etcdctl
//! lock`/`elect` would read as candidates of an election), and every replica keeps the
//! registrations current with one watch. A leader that steps down picks a successor
//! ([`choose`]) from that list and hands the key over in one transaction: `Put(key, successor
//! id, successor's lease)` and a note at `<key>.handoff/<successor lease hex>`, guarded by the
//! key's and the registration's mod revisions. The key is never absent. Followers watch the key
//! for deletion only and the note key is watched by its successor alone, so the handoff wakes
//! the successor and nobody else: it leads from the transfer's revision on, then says so in its
//! registration, which is how the other followers learn the new leader. The old leader's
//! registration goes with its lease, revoked right after; the successor drops it from its list.
//! Pure: no I/O and no clock.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An etcd lease id. Defined here, under the machine that uses these rules, so that the
/// imports run one way; the machine passes it on.
pub type LeaseId = i64;

/// This replica's part in succession.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Succession {
    /// The release this replica runs (`--revision`): a leader prefers a successor of another
    /// release, so that a rollout moves leadership once, onto the new release.
    pub revision: String,
    /// How long a stepping-down leader may wait for a replica of another release to register
    /// (`--handoff-wait`, bounded by the shutdown timeout).
    pub handoff_wait: Duration,
}

/// What a replica writes at its registration key (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub id: String,
    #[serde(default)]
    pub revision: String,
    /// Whether the replica's application is healthy (always, without `--app-health`).
    #[serde(default = "healthy")]
    pub healthy: bool,
    /// Unix time (whole seconds) of the registration, for `etcd-elector status`.
    #[serde(default)]
    pub registered_at: u64,
    /// Set while the replica leads: followers, who do not watch the key's writes, learn the
    /// new leader from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leading: Option<Term>,
}

/// A leader's term as the key shows it: the fencing token (the key's mod revision when this
/// holder got it) and the key's create revision. Tokens grow from holder to holder, so the
/// highest one announced is the current leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Term {
    pub fencing_token: i64,
    pub create_revision: i64,
}

/// The note a transfer leaves for its successor (JSON): the key's create revision, which a
/// handoff does not change. The note's own mod revision is the transfer's, the new token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffNote {
    pub create_revision: i64,
}

fn healthy() -> bool {
    true
}

/// A registered candidate, as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The registration key.
    pub key: String,
    pub id: String,
    pub revision: String,
    pub lease: LeaseId,
    /// The registration's create revision: its rank (newest first).
    pub create_revision: i64,
    /// The registration's mod revision: the transfer checks that it is still as seen (not
    /// gone, not re-registered unhealthy).
    pub mod_revision: i64,
    /// The term it announces while it leads.
    pub leading: Option<Term>,
    /// Whether its application is healthy: only a healthy candidate is chosen.
    pub healthy: bool,
    /// Unix time of its registration.
    pub registered_at: u64,
}

/// The prefix under which candidates of `key` register.
pub fn registration_prefix(key: &str) -> String {
    format!("{key}.candidates/")
}

/// The registration key of the candidate with `lease`.
pub fn registration_key(key: &str, lease: LeaseId) -> String {
    format!("{}{lease:x}", registration_prefix(key))
}

/// Where a transfer leaves its note for the candidate with `lease`: watched by that candidate
/// alone.
pub fn handoff_key(key: &str, lease: LeaseId) -> String {
    format!("{key}.handoff/{lease:x}")
}

/// The successor among `candidates` for a leader of `own_revision` holding `own_lease`: a
/// candidate of another release first, then the most recent registration (the replica most
/// likely to stay: in a rollout, the newest pod). Never ourselves, never a candidate whose
/// application is unhealthy.
pub fn choose<'a>(
    candidates: &'a [Candidate],
    own_lease: LeaseId,
    own_revision: &str,
) -> Option<&'a Candidate> {
    candidates
        .iter()
        .filter(|c| c.lease != own_lease && c.healthy)
        .max_by_key(|c| (c.revision != own_revision, c.create_revision))
}

/// A registered, healthy candidate of `/k`, for the tests of the rules here and in the machine.
#[cfg(test)]
pub(crate) fn candidate(
    id: &str,
    revision: &str,
    lease: LeaseId,
    create_revision: i64,
) -> Candidate {
    Candidate {
        key: registration_key("/k", lease),
        id: id.into(),
        revision: revision.into(),
        lease,
        create_revision,
        mod_revision: create_revision,
        healthy: true,
        registered_at: 0,
        leading: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_release_comes_first_then_the_newest_registration() {
        let list = [
            candidate("me", "a", 1, 10),
            candidate("old", "a", 2, 11),
            candidate("new-early", "b", 3, 12),
            candidate("old-late", "a", 4, 13),
        ];
        assert_eq!(
            choose(&list, 1, "a").map(|c| c.id.as_str()),
            Some("new-early")
        );
        let same = [
            candidate("me", "a", 1, 10),
            candidate("x", "a", 2, 11),
            candidate("y", "a", 4, 13),
        ];
        assert_eq!(choose(&same, 1, "a").map(|c| c.id.as_str()), Some("y"));
        assert_eq!(choose(&same[..1], 1, "a"), None, "never ourselves");
        let mut sick = candidate("new-but-sick", "b", 9, 99);
        sick.healthy = false;
        let list = [
            candidate("me", "a", 1, 10),
            candidate("old", "a", 2, 11),
            sick,
        ];
        assert_eq!(
            choose(&list, 1, "a").map(|c| c.id.as_str()),
            Some("old"),
            "never one whose application is unhealthy"
        );
    }

    #[test]
    fn registrations_and_handoff_notes_sit_beside_the_key_not_under_it() {
        let key = registration_key("/jobs/lock", 0x2a);
        assert_eq!(key, "/jobs/lock.candidates/2a");
        assert!(!key.starts_with("/jobs/lock/"));
        let note = handoff_key("/jobs/lock", 0x2a);
        assert_eq!(note, "/jobs/lock.handoff/2a");
        assert!(!note.starts_with("/jobs/lock/"));
        assert!(
            !note.starts_with(&registration_prefix("/jobs/lock")),
            "followers watching the registrations do not wake for a handoff note"
        );
    }
}
