//! Handoff: on SIGTERM or SIGINT the leader stops claiming at once (503),
//! hands the key to a follower (direct succession; see tests/succession.rs),
//! revokes its lease and exits 0; the follower leads long before the TTL could
//! have expired.

use std::time::Duration;

use elector_testkit::*;

/// Long enough that a takeover inside [`SOON`] can only come from the revoke,
/// never from the lease expiring.
const LONG_TTL: &str = "30";

/// Stops the current leader with `sig` and checks the whole handoff; returns
/// the new leader's index in `sidecars` (the stopped one is removed).
fn hand_off(etcd: &Etcd, key: &str, sidecars: &mut Vec<Sidecar>, sig: Signal) -> usize {
    let leader = wait_for_one_leader(sidecars, SOON);
    let before = etcd.get(key).expect("the leader's key exists");
    let mut old = sidecars.remove(leader);
    assert_eq!(before.value, old.id());

    old.signal(sig);
    let status = old.wait_exit(SOON);
    assert_eq!(
        status.code(),
        Some(0),
        "the leader exits 0 on {sig}: {status}"
    );

    // The key was handed over (or, without a successor, the lease revoked) before the exit:
    // it is gone or held under another lease.
    if let Some(kv) = etcd.get(key) {
        assert_ne!(
            kv.lease, before.lease,
            "the old lease no longer holds the key"
        );
        assert_ne!(
            kv.value,
            old.id(),
            "the stopped replica no longer holds the key"
        );
    }

    let next = wait_for_one_leader(sidecars, SOON);
    let kv = etcd.get(key).expect("the new leader's key exists");
    assert_eq!(kv.value, sidecars[next].id());
    assert!(
        kv.mod_revision > before.mod_revision,
        "the new holder wrote the key when it got it: {kv:?} after {before:?}"
    );
    next
}

#[test]
fn sigterm_to_the_leader_exits_0_and_a_follower_takes_over() {
    let (etcd, key, mut sidecars) = fresh_replicas("sigterm_handoff", 3, &["--ttl", LONG_TTL]);
    hand_off(&etcd, &key, &mut sidecars, Signal::SIGTERM);
}

#[test]
fn sigint_hands_off_like_sigterm() {
    let (etcd, key, mut sidecars) = fresh_replicas("sigint_handoff", 2, &["--ttl", LONG_TTL]);
    hand_off(&etcd, &key, &mut sidecars, Signal::SIGINT);
}

#[test]
fn leader_answers_503_while_shutting_down() {
    let (etcd, key) = etcd_and_key("503_while_shutting_down");
    // --release-delay keeps the process (and the key) around after the
    // signal, long enough to observe what it answers meanwhile.
    let mut leader = Sidecar::builder()
        .on(&etcd.endpoint(), &key, "draining")
        .args(&["--ttl", LONG_TTL, "--release-delay", "3"])
        .args(&["--shutdown-timeout", "10"])
        .start();
    leader.wait_leading("the only replica leads");

    leader.signal(Signal::SIGTERM);
    let mut answer = None;
    assert!(
        wait_until(SOON, || {
            answer = leader.try_get("/leader").ok();
            matches!(&answer, Some(r) if r.status == 503)
        }),
        "the leader turns 503 after SIGTERM; last answer {answer:?}"
    );
    // It answered, so it is still running; and the key is still there, so the
    // 503 came before the revoke, as a readiness probe needs it to.
    let kv = etcd.get(&key);
    assert!(
        matches!(&kv, Some(kv) if kv.value == "draining"),
        "503 came while the key was still held (release delay): {kv:?}"
    );
    let body = answer.expect("set above").json();
    assert_eq!(body["is_leader"], false);

    let status = leader.wait_exit(Duration::from_secs(15));
    assert_eq!(
        status.code(),
        Some(0),
        "exit 0 after the release delay: {status}"
    );
    assert_eq!(etcd.get(&key), None, "the key is gone after the revoke");
}

#[test]
fn fencing_token_grows_across_terms() {
    let (etcd, key, mut sidecars) = fresh_replicas("token_grows", 3, &["--ttl", LONG_TTL]);

    let mut tokens = Vec::new();
    for _ in 0..3 {
        let leader = wait_for_one_leader(&sidecars, SOON);
        let token = sidecars[leader]
            .fencing_token()
            .expect("the leader reports a fencing token");
        assert_eq!(
            Some(token),
            etcd.get(&key).map(|kv| kv.mod_revision),
            "the token is the key's mod revision when this holder got it"
        );
        tokens.push(token);
        if sidecars.len() > 1 {
            hand_off(&etcd, &key, &mut sidecars, Signal::SIGTERM);
        }
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens strictly increase across terms: {tokens:?}"
    );
}
