//! Direct succession (lock protocol): the rules for handing the key to a chosen successor.
//!
//! Every lock-protocol replica registers under its own lease at `<key>.candidates/<lease hex>`
//! (beside the key, never under `<key>/`, which etcd's `concurrency` package and `etcdctl
//! lock`/`elect` would read as candidates of an election). Every replica keeps the
//! registrations current with one watch. A leader that steps down picks a successor
//! ([`choose`]) and offers it the key: one transaction writes `<key>.handoff/<lease hex>` under
//! the successor's lease. Only the successor watches that key, so only it wakes; it takes the
//! key with its own guarded write, which every follower then sees as the new holder. The old
//! leader's registration goes with its lease, revoked right after (deleting it in the offer
//! would wake every follower's registration watch); the successor drops it from its list. The old leader keeps the key until then, so the key is never
//! absent, and a successor that never takes it costs one confirm window, after which the old
//! leader revokes as without succession. Pure: no I/O and no clock.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::machine::LeaseId;

/// This replica's part in succession.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Succession {
    /// The release this replica runs (`--revision`): a leader prefers a successor of another
    /// release, so that a rollout moves leadership once, onto the new release.
    pub revision: String,
    /// How long a stepping-down leader may wait for a replica of another release to register
    /// (`--handoff-wait`, bounded by the shutdown timeout).
    pub handoff_wait: Duration,
    /// How long a successor has to take the key it was offered (one guarded write under its
    /// own lease) before the old leader gives up and revokes, so the others campaign. A live
    /// successor takes it within a round trip or two; one frozen or cut off at the wrong moment
    /// would otherwise cost the shutdown timeout. One request's bound, within a quarter of what
    /// the shutdown timeout leaves after the release delay (see `config`).
    pub confirm_window: Duration,
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
    /// The registration's create revision: the transfer checks that it still exists as seen.
    pub create_revision: i64,
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

/// Where the key is offered to the candidate with `lease`: watched by that candidate alone.
pub fn offer_key(key: &str, lease: LeaseId) -> String {
    format!("{key}.handoff/{lease:x}")
}

/// What an offer says (JSON): the key as the old leader holds it. The successor's write is
/// guarded by `key_revision`, so it takes the key only if nobody changed it since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The key's mod revision as the old leader holds it.
    pub key_revision: i64,
    /// The key's create revision (unchanged by a handoff).
    pub create_revision: i64,
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
        healthy: true,
        registered_at: 0,
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
    fn registrations_and_offers_sit_beside_the_key_not_under_it() {
        let key = registration_key("/jobs/lock", 0x2a);
        assert_eq!(key, "/jobs/lock.candidates/2a");
        assert!(!key.starts_with("/jobs/lock/"));
        let offer = offer_key("/jobs/lock", 0x2a);
        assert_eq!(offer, "/jobs/lock.handoff/2a");
        assert!(!offer.starts_with("/jobs/lock/"));
        assert!(
            !offer.starts_with(&registration_prefix("/jobs/lock")),
            "followers watching the registrations do not wake for an offer"
        );
    }
}
