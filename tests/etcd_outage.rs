//! etcd unavailable: killed, absent at start, or silently cut off. Replicas
//! never exit and never claim leadership without etcd's word for it; the
//! liveness probe stays green; once etcd is back, one of them leads again.

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
        assert!(
            s.is_running(),
            "{} keeps running while etcd is down",
            s.id()
        );
        let (status, body) = s.get("/leader");
        assert_eq!(
            status,
            503,
            "{} claims leadership without etcd: {body}",
            s.id()
        );
        let (health, _) = s.get("/healthz");
        assert_eq!(
            health,
            200,
            "{} /healthz stays 200 while etcd is down",
            s.id()
        );
    }
}

#[test]
fn replicas_stop_claiming_but_stay_alive_when_etcd_is_killed() {
    let ttl = TTL.to_string();
    let (mut etcd, _key, mut sidecars) = fresh_replicas("etcd_killed", 3, &["--ttl", &ttl]);
    wait_for_one_leader(&sidecars, SOON);

    etcd.kill();
    let killed = Instant::now();

    // Past the leader's fencing deadline nobody answers 200 ...
    std::thread::sleep(
        (killed + Duration::from_secs(TTL) + SLACK).saturating_duration_since(Instant::now()),
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
}

#[test]
fn a_leader_is_elected_again_when_etcd_restarts_with_its_data() {
    let ttl = TTL.to_string();
    let (mut etcd, key, mut sidecars) = fresh_replicas("etcd_restarted", 3, &["--ttl", &ttl]);
    wait_for_one_leader(&sidecars, SOON);

    etcd.kill();
    assert!(
        wait_until(SOON, || sidecars.iter().all(|s| !s.is_leader())),
        "nobody leads while etcd is down"
    );
    assert_alive_and_not_leading(&mut sidecars);

    etcd.restart();

    let leader = wait_for_one_leader(&sidecars, RECOVERY);
    let kv = etcd.get(&key).expect("the key is held again");
    assert_eq!(kv.value, sidecars[leader].id());
    assert!(
        matches!(etcd.lease_ttl(kv.lease), Some(t) if t > 0),
        "under a live lease: {kv:?}"
    );
    assert_eq!(sidecars[leader].fencing_token(), Some(kv.create_revision));
    // Still exactly one a moment later (no replica adopting a stale view).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        wait_for_one_leader(&sidecars, SOON),
        leader,
        "the same single leader"
    );
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

/// A silent partition between the leader and etcd (connections open, nothing
/// flows): the leader must stop answering 200 before another replica can win,
/// and follow the new leader once the partition heals.
#[test]
fn a_partitioned_leader_stops_claiming_before_another_replica_wins() {
    let (etcd, key) = etcd_and_key("partitioned_leader");
    let ttl = "3";
    let proxy = TcpProxy::start(etcd.client_addr());
    let cut_off = Sidecar::start(&proxy.endpoint(), &key, "cut-off", &["--ttl", ttl]);
    cut_off.wait_leading("the first replica leads");
    let others = replicas(&etcd.endpoint(), &key, 2, &["--ttl", ttl]);
    for s in &others {
        s.wait_following("cut-off");
    }

    proxy.partition();

    // Ask the others first, then the cut-off leader: if one of them already
    // leads and the cut-off one still answers 200 afterwards, two replicas
    // claimed leadership at the same moment.
    let mut new_leader = None;
    let mut rounds_after_takeover = 0;
    let ok = wait_until(RECOVERY, || {
        let leading: Vec<&Sidecar> = others.iter().filter(|s| s.is_leader()).collect();
        if !leading.is_empty() {
            assert!(
                !cut_off.is_leader(),
                "overlap: {} leads and the partitioned replica still answers 200",
                leading[0].id()
            );
            new_leader = Some(leading[0].id().to_string());
            rounds_after_takeover += 1;
        }
        rounds_after_takeover >= 20
    });
    assert!(
        ok,
        "another replica wins once the partitioned leader's lease expires"
    );
    let new_leader = new_leader.expect("set when ok");
    assert_eq!(etcd.get(&key).map(|kv| kv.value), Some(new_leader.clone()));

    proxy.heal();

    assert!(
        wait_until(RECOVERY, || {
            let (status, view) = cut_off.get_json("/leader");
            status == 503 && view["leader"] == new_leader.as_str()
        }),
        "after the heal the cut-off replica follows {new_leader}: {}",
        cut_off.leader_view()
    );
    assert_eq!(
        wait_for_one_leader(&others, SOON),
        others.iter().position(|s| s.id() == new_leader).unwrap()
    );
}

/// A leader frozen (SIGSTOP) for longer than its TTL is cut off as surely as a
/// partitioned one, but cannot even run a background timer. Its leadership
/// deadline must be checked when a request is answered, so the first answer
/// after it thaws is 503, even though no task has yet noticed anything.
#[test]
fn a_frozen_leader_answers_503_on_its_first_request_after_thawing() {
    let (etcd, key) = etcd_and_key("frozen_leader");
    let ttl = "3";
    let frozen = Sidecar::start(&etcd.endpoint(), &key, "frozen", &["--ttl", ttl]);
    frozen.wait_leading("the first replica leads");
    let others = replicas(&etcd.endpoint(), &key, 2, &["--ttl", ttl]);

    frozen.signal(Signal::SIGSTOP);
    // Its lease expires in etcd; a follower wins through its watch.
    let next = wait_for_one_leader(&others, RECOVERY);

    // Probes sent while it is still frozen: the kernel accepts and buffers
    // them, and the process answers them first thing after SIGCONT, racing
    // its own election task; every one of them must be 503.
    let addr = frozen.addr();
    let probes: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || http::simple(addr, "GET", "/leader", b"")))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    frozen.signal(Signal::SIGCONT);
    for probe in probes {
        let answer = probe
            .join()
            .expect("probe thread")
            .expect("the thawed replica answers");
        assert_eq!(
            answer.status,
            503,
            "an answer right after the freeze, while {} leads: {}",
            others[next].id(),
            answer.body
        );
    }

    // The thawed replica follows the new leader.
    frozen.wait_following(others[next].id());
    assert_eq!(wait_for_one_leader(&others, SOON), next);
    assert!(!frozen.is_leader());
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
    assert!(
        wait_until(Duration::from_secs(15), || sidecar
            .logs()
            .contains("\"lease_lost\"")),
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
