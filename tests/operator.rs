//! Operator actions with etcdctl: deleting the key, overwriting it, revoking
//! the leader's lease. Each must end with a leader again (any replica),
//! under a live lease, with a larger fencing token; a leader whose key was
//! taken away must step down.

use elector_testkit::observe::leader_views;
use elector_testkit::*;

/// Long enough that recovery inside [`SOON`] can only come from watches and
/// keep-alive answers, never from a lease expiring.
const LONG_TTL: &str = "30";

/// Waits until etcd and the replicas agree on one leader whose key was created
/// after `after_revision`; returns its index.
fn wait_for_new_term(etcd: &Etcd, key: &str, sidecars: &[Sidecar], after_revision: i64) -> usize {
    let found = wait_for(SOON, || {
        let kv = etcd
            .get(key)
            .filter(|kv| kv.create_revision > after_revision)?;
        let leaders: Vec<usize> = (0..sidecars.len())
            .filter(|&i| sidecars[i].is_leader())
            .collect();
        let [i] = leaders[..] else { return None };
        let view = sidecars[i].leader_view();
        (sidecars[i].id() == kv.value && view["fencing_token"] == kv.create_revision).then_some(i)
    });
    found.unwrap_or_else(|| {
        panic!(
            "a new term after revision {after_revision}: key now {:?}, views {:?}",
            etcd.get(key),
            leader_views(sidecars)
        )
    })
}

/// `n` replicas with `ttl`; once one leads, the operator deletes the key or
/// (`revoke`) revokes the leader's lease. A new term follows, with a larger
/// token under a live lease (a new one after a revoke), and the old leader
/// does not lead unless it won that term.
fn new_term_after_operator(test: &str, n: usize, ttl: &str, revoke: bool) {
    let (etcd, key, sidecars) = fresh_replicas(test, n, &["--ttl", ttl]);
    let first = wait_for_one_leader(&sidecars, SOON);
    let before = etcd.get(&key).expect("the leader's key exists");
    let token = sidecars[first].fencing_token().expect("a token");

    if revoke {
        etcd.ctl(&["lease", "revoke", &format!("{:x}", before.lease)]);
    } else {
        etcd.ctl(&["del", &key]);
    }

    let next = wait_for_new_term(&etcd, &key, &sidecars, before.create_revision);
    let after = sidecars[next].fencing_token().expect("a token");
    assert!(after > token, "the token grows: {token} -> {after}");
    let kv = etcd.get(&key).expect("held again");
    assert!(
        matches!(etcd.lease_ttl(kv.lease), Some(t) if t > 0),
        "under a live lease: {kv:?}"
    );
    if revoke {
        assert_ne!(kv.lease, before.lease, "under a new lease");
    }
    if next != first {
        assert!(
            wait_until(SOON, || !sidecars[first].is_leader()),
            "the replica whose key or lease was taken does not lead"
        );
    }
}

#[test]
fn deleting_the_key_elects_a_leader_again_with_a_larger_token() {
    new_term_after_operator("delete_key", 3, LONG_TTL, false);
}

#[test]
fn revoking_the_leader_lease_elects_a_leader_under_a_new_lease() {
    new_term_after_operator("revoke_lease", 3, LONG_TTL, true);
}

/// Its keep-alive is answered with TTL 0 (or its watch sees the delete): it
/// must take a new lease, not keep using the dead one. A TTL of 6 s:
/// keep-alives every 2 s, so learning of the revoke only from the next
/// keep-alive still recovers well inside [`SOON`].
#[test]
fn revoking_the_only_replica_lease_makes_it_lead_again_under_a_new_lease() {
    new_term_after_operator("revoke_only_lease", 1, "6", true);
}

#[test]
fn overwriting_the_key_makes_the_leader_step_down() {
    let (etcd, key, sidecars) = fresh_replicas("overwrite_key", 3, &["--ttl", LONG_TTL]);
    let leader = &sidecars[wait_for_one_leader(&sidecars, SOON)];
    let before = etcd.get(&key).expect("the leader's key exists");

    // A plain put: another value, no lease. The key keeps its create revision,
    // so nobody can win it until it is deleted.
    etcd.ctl(&["put", &key, "intruder"]);

    assert!(
        wait_until(SOON, || !leader.is_leader()),
        "the old leader steps down (503) when its key is overwritten: {}",
        leader.leader_view()
    );
    for s in &sidecars {
        // Each reports the key's new holder.
        s.wait_following("intruder");
        assert!(
            !s.is_leader(),
            "{} does not lead a key it does not hold",
            s.id()
        );
    }
    // Nobody may delete or overwrite a key it does not hold.
    let kv = etcd.get(&key).expect("the intruder's key is left alone");
    assert_eq!(kv.value, "intruder");

    // Once the operator deletes it, the election resumes.
    etcd.ctl(&["del", &key]);
    wait_for_new_term(&etcd, &key, &sidecars, before.create_revision);
}

#[test]
fn a_replica_whose_id_is_on_a_key_it_does_not_hold_never_reports_itself_leader() {
    let (etcd, key) = etcd_and_key("stale_holder");
    // A StatefulSet recreated pod-0 while the old pod-0, cut off, still holds
    // the key under its own live lease.
    let granted = etcd.ctl(&["lease", "grant", "60"]);
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("`lease <hex> granted with TTL(60s)`")
        .to_string();
    etcd.ctl(&["put", "--lease", &lease, &key, "pod-0"]);

    let sidecar = Sidecar::start(&etcd.endpoint(), &key, "pod-0", &["--ttl", LONG_TTL]);
    // The new pod-0 follows.
    sidecar.wait_state("follower");

    // The kubernetes/contrib contract: an app leads when name == its hostname.
    let (code, body) = sidecar.get_json("/");
    assert_eq!((code, &body), (200, &serde_json::json!({"name": ""})));
    let (code, doc) = sidecar.get_json("/leader");
    assert_eq!(code, 503);
    assert_eq!(doc["is_leader"], false);
    assert_eq!(doc["leader"], serde_json::Value::Null, "{doc}");
    let status = sidecar.status();
    assert_eq!(status["stale_holder"]["id"], "pod-0", "{status}");
    // etcdctl pads the hex id with zeros; compare the numbers.
    let hex = |v: &str| i64::from_str_radix(v, 16).expect("a hex lease id");
    assert_eq!(
        status["stale_holder"]["lease_id"].as_str().map(hex),
        Some(hex(&lease)),
        "{status}"
    );
    assert!(
        sidecar.logs().contains("\"stale_holder\""),
        "a warning names the stale holder:\n{}",
        tail(&sidecar.logs(), 20)
    );

    // Once the old lease is revoked, the new pod-0 leads under its own lease.
    etcd.ctl(&["lease", "revoke", &lease]);
    sidecar.wait_leading("pod-0 leads now");
    assert_eq!(sidecar.get_json("/").1["name"], "pod-0");
}
