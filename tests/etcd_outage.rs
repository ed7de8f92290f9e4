//! etcd unavailable: killed, or absent at start (silently cut off: `faults.rs`).
//! Replicas never exit and never claim leadership without etcd's word for it;
//! the liveness probe stays green; once etcd is back, one of them leads again.

use std::time::{Duration, Instant};

use elector_testkit::*;

/// Short, so the tests can wait a whole TTL (the fencing deadline) cheaply.
const TTL: u64 = 2;

/// After etcd is gone, a replica may claim leadership for at most one TTL
/// (less the self-fencing margin) after its last acknowledged keep-alive. This
/// slack on top only absorbs scheduling noise on a loaded test machine.
const SLACK: Duration = Duration::from_secs(1);

/// How long a re-election may take once etcd is back: reconnect backoff (capped
/// at ttl/3), plus the old lease expiring in the restarted etcd (one TTL).
const RECOVERY: Duration = Duration::from_secs(20);

fn assert_alive_and_not_leading(sidecars: &mut [Sidecar]) {
    for s in sidecars.iter_mut() {
        let id = s.id().to_string();
        assert!(s.is_running(), "{id} keeps running while etcd is down");
        let (status, body) = s.get("/leader");
        assert_eq!(status, 503, "{id} claims leadership without etcd: {body}");
        let health = s.get("/healthz").0;
        assert_eq!(health, 200, "{id} /healthz stays 200 while etcd is down");
    }
}

/// Killed, then restarted with its data: as soon as nobody leads (the replicas still in their
/// first reconnect backoff), or after a long outage past the leader's fencing deadline.
#[test]
fn replicas_stop_claiming_while_etcd_is_killed_and_elect_a_leader_again_when_it_restarts() {
    for long_outage in [false, true] {
        let case = if long_outage {
            "long outage"
        } else {
            "quick restart"
        };
        let ttl = TTL.to_string();
        let (mut etcd, key, mut sidecars) = fresh_replicas("etcd_killed", 3, &["--ttl", &ttl]);
        wait_for_one_leader(&sidecars, SOON);

        etcd.kill();
        let killed = Instant::now();
        if long_outage {
            // Past the leader's fencing deadline nobody answers 200 ...
            std::thread::sleep(
                (killed + Duration::from_secs(TTL) + SLACK)
                    .saturating_duration_since(Instant::now()),
            );
            assert_alive_and_not_leading(&mut sidecars);
            // ... and that stays so for several more TTLs of retrying.
            throughout(
                Duration::from_secs(3 * TTL),
                Duration::from_millis(100),
                || assert_alive_and_not_leading(&mut sidecars),
            );
            for s in &sidecars {
                let status = s.status();
                assert_ne!(status["state"], "leader", "{}: /status {status}", s.id());
            }
        } else {
            assert!(
                wait_until(SOON, || sidecars.iter().all(|s| !s.is_leader())),
                "{case}: nobody leads while etcd is down"
            );
            assert_alive_and_not_leading(&mut sidecars);
        }

        etcd.restart();

        let leader = wait_for_one_leader(&sidecars, RECOVERY);
        let kv = etcd.get(&key).expect("the key is held again");
        assert_eq!(kv.value, sidecars[leader].id(), "{case}");
        assert!(
            matches!(etcd.lease_ttl(kv.lease), Some(t) if t > 0),
            "{case}: under a live lease: {kv:?}"
        );
        let token = sidecars[leader].fencing_token();
        assert_eq!(token, Some(kv.create_revision), "{case}");
        // Still exactly one a moment later (no replica adopting a stale view).
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            wait_for_one_leader(&sidecars, SOON),
            leader,
            "{case}: the same single leader"
        );
    }
}

#[test]
fn a_leader_is_elected_once_etcd_starts_late() {
    let mut etcd = Etcd::not_started();
    let key = unique_key("etcd_starts_late");
    let ttl = TTL.to_string();
    // Ready (healthz 200) with etcd absent: `replicas` waits for that.
    let mut sidecars = replicas(&etcd.endpoint(), &key, 3, &["--ttl", &ttl]);

    throughout(Duration::from_secs(2), Duration::from_millis(100), || {
        assert_alive_and_not_leading(&mut sidecars)
    });

    etcd.launch();

    let leader = wait_for_one_leader(&sidecars, RECOVERY);
    let kv = etcd.get(&key).expect("the key is held");
    assert_eq!(kv.value, sidecars[leader].id());
}

#[test]
fn a_lease_abandoned_during_an_outage_is_revoked_once_etcd_is_back() {
    let (mut etcd, key) = etcd_and_key("abandoned_revoke");
    // A TTL long enough that "revoked after the restart" and "expired after
    // the restart" (etcd renews every lease to its full TTL when it regains a
    // leader) are seconds apart.
    let mut sidecar = Sidecar::start(&etcd.endpoint(), &key, "old", &["--ttl", "10"]);
    sidecar.wait_leading("it leads");
    let old_lease = etcd.get(&key).expect("the leader's key").lease;

    etcd.kill();
    // The claim ends at the last renewal + TTL - margin; the lease is then
    // abandoned and its revoke fails, etcd being down.
    let abandoned = || sidecar.logs().contains("\"lease_lost\"");
    assert!(
        wait_until(Duration::from_secs(15), abandoned),
        "the lease is abandoned at its claim deadline:\n{}",
        tail(&sidecar.logs(), 20)
    );
    etcd.restart();
    let back = Instant::now();
    // Expiry would take the whole TTL (10 s) from the restart.
    assert!(
        wait_until(Duration::from_secs(6), || etcd.lease_ttl(old_lease).is_none()),
        "the abandoned lease is revoked once etcd answers again, not left to expire; ttl {:?} after {:?}\n{}",
        etcd.lease_ttl(old_lease),
        back.elapsed(),
        tail(&sidecar.logs(), 30)
    );
    assert!(
        wait_until(RECOVERY, || sidecar.is_leader()),
        "it leads again under a new lease"
    );
    assert!(sidecar.is_running());
}
