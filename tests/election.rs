//! Election: among replicas of one key exactly one leads, and etcd shows it —
//! its id as the key's value, attached to its live lease, the key's create
//! revision as its fencing token.

use std::time::Duration;

use elector_testkit::*;

#[test]
fn exactly_one_of_three_replicas_leads() {
    let (_etcd, _key, sidecars) = fresh_replicas("exactly_one_of_three", 3, &[]);

    let leader = wait_for_one_leader(&sidecars, SOON);

    // A steady state: the same single leader, round after round.
    for _ in 0..20 {
        let leaders: Vec<&str> = sidecars
            .iter()
            .filter(|s| s.is_leader())
            .map(Sidecar::id)
            .collect();
        assert_eq!(
            leaders,
            vec![sidecars[leader].id()],
            "exactly one, stable leader"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_key_holds_the_leader_id_under_its_live_lease() {
    let (etcd, key, sidecars) = fresh_replicas("key_holds_leader_id", 3, &[]);
    let leader = &sidecars[wait_for_one_leader(&sidecars, SOON)];

    let kv = etcd.get(&key).expect("the leader's key exists");
    assert_eq!(
        kv.value,
        leader.id(),
        "the key's value is exactly the leader's id"
    );
    assert_ne!(kv.lease, 0, "the key is attached to a lease: {kv:?}");
    let ttl = etcd.lease_ttl(kv.lease);
    assert!(
        matches!(ttl, Some(t) if t > 0),
        "the key's lease {:x} is alive (timetolive says {ttl:?})",
        kv.lease
    );

    // /status names that same lease, in hex as etcdctl prints it.
    assert_eq!(
        leader.status()["lease_id"],
        format!("{:x}", kv.lease),
        "/status lease_id is the key's lease"
    );
}

#[test]
fn followers_report_the_leader_id() {
    let (_etcd, key, sidecars) = fresh_replicas("followers_report_leader", 3, &[]);
    let leader = wait_for_one_leader(&sidecars, SOON);
    let leader_id = sidecars[leader].id().to_string();

    for follower in sidecars.iter().filter(|s| s.id() != leader_id) {
        // A follower learns the leader from its read or its watch; allow it a moment.
        follower.wait_following(&leader_id);
        let (status, view) = follower.get_json("/leader");
        assert_eq!(status, 503, "a follower answers 503");
        assert_eq!(view["is_leader"], false);
        assert_eq!(view["identity"], follower.id());
        assert_eq!(view["key"], key.as_str());
    }
}

#[test]
fn fencing_token_is_the_create_revision_of_the_key() {
    let (etcd, key) = etcd_and_key("fencing_token_is_create_rev");
    // Another key written first, so the create revision is not a trivial 2.
    etcd.ctl(&["put", &format!("{key}-unrelated"), "x"]);
    let sidecars = replicas(&etcd.endpoint(), &key, 3, &[]);
    let leader = &sidecars[wait_for_one_leader(&sidecars, SOON)];

    let kv = etcd.get(&key).expect("the leader's key exists");
    assert_eq!(
        leader.fencing_token(),
        Some(kv.create_revision),
        "the leader's fencing token is the key's create revision ({kv:?})"
    );
}

/// A pod restarted under the same name must not take the key that its previous
/// incarnation left under a lease that is still alive: the value matching its
/// id is no evidence of leadership, only its own lease is.
#[test]
fn a_restarted_replica_does_not_adopt_its_old_key() {
    let (etcd, key) = etcd_and_key("restarted_does_not_adopt");
    let ttl = 6;
    let mut first = Sidecar::start(&etcd.endpoint(), &key, "same-name", &["--ttl", "6"]);
    first.wait_leading("the only replica leads");
    let old = etcd.get(&key).expect("its key exists");
    first.kill(); // SIGKILL: no revoke, the old lease lives on for up to a TTL

    let second = Sidecar::start(&etcd.endpoint(), &key, "same-name", &["--ttl", "6"]);
    // While etcd still holds the key under the old lease, the new process must
    // answer 503. Ask the sidecar first and etcd second: if the key is still
    // under the old lease afterwards, it was so when the sidecar answered.
    let mut checks = 0;
    let expired = wait_until(Duration::from_secs(ttl + 10), || {
        let claimed = second.is_leader();
        let still_old = etcd.get(&key).is_some_and(|kv| kv.lease == old.lease);
        if still_old {
            assert!(
                !claimed,
                "the restarted replica claimed leadership of a key held by its predecessor's lease"
            );
            checks += 1;
        }
        !still_old
    });
    assert!(expired, "the old lease expires within its TTL");
    assert!(
        checks > 0,
        "the restarted replica was ready only after the old lease expired; nothing was checked"
    );

    // Once the old lease is gone the restarted replica wins, under a new lease.
    second.wait_leading("the restarted replica leads");
    let kv = etcd.get(&key).expect("the key is held again");
    assert_eq!(kv.value, "same-name");
    assert_ne!(kv.lease, old.lease, "under a new lease");
    assert!(kv.create_revision > old.create_revision);
}
