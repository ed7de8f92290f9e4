//! A three-member etcd cluster on loopback, the engine users run in
//! production. Replicas are given all three client URLs and must fail over
//! between members; losing a member (any member, or the raft leader) must
//! leave exactly one leader; losing quorum must end every claim by its
//! self-fencing deadline, and regaining it must bring exactly one leader back.
//! Every replica's `/leader` is probed continuously throughout.

use std::time::{Duration, Instant};

use elector_testkit::observe::Prober;
use elector_testkit::*;

const TTL: u64 = 3;
/// clamp(ttl/10, 250 ms, 5 s) for [`TTL`].
const MARGIN: Duration = Duration::from_millis(300);
/// Raft needs about an election timeout (1 s by default) to replace a lost
/// leader member; a replica may then have to wait out a lease. Generous.
const RECOVERY: Duration = Duration::from_secs(3 * TTL + 10);

fn start(name: &str) -> (EtcdCluster, String, Vec<Sidecar>, Prober) {
    let cluster = EtcdCluster::start(3);
    let key = unique_key(name);
    let ttl = TTL.to_string();
    let sidecars = replicas(&cluster.endpoints(), &key, 3, &["--ttl", &ttl]);
    wait_for_one_leader(&sidecars, SOON);
    let prober = Prober::start(&sidecars, Duration::from_millis(5));
    (cluster, key, sidecars, prober)
}

/// Exactly one leader, and etcd (read through the surviving members) agrees.
fn assert_one_leader_held(cluster: &EtcdCluster, key: &str, sidecars: &[Sidecar]) -> usize {
    let leader = wait_for_one_leader(sidecars, RECOVERY);
    let mut kv = None;
    assert!(
        wait_until(SOON, || {
            kv = cluster.get(key);
            kv.as_ref()
                .is_some_and(|kv| kv.value == sidecars[leader].id())
        }),
        "etcd holds the key for {}: {kv:?}",
        sidecars[leader].id()
    );
    leader
}

/// What became of the term of `before` (its token `token`) once `after` leads, for the report.
fn fared(sidecars: &[Sidecar], before: usize, token: Option<i64>, after: usize) -> String {
    if after == before && sidecars[after].fencing_token() == token {
        return "same leader, same term".into();
    }
    let (from, to) = (sidecars[before].id(), sidecars[after].id());
    format!("leader {from} -> {to}, new term")
}

#[test]
fn one_leader_remains_when_each_member_is_killed_in_turn() {
    let (mut cluster, key, sidecars, prober) = start("member_killed");
    let origin = Instant::now();
    let mut report = Vec::new();
    for i in 0..3 {
        let before = assert_one_leader_held(&cluster, &key, &sidecars);
        let token = sidecars[before].fencing_token();
        cluster.members[i].kill();
        // Longer than a claim: a replica that could not reach the surviving
        // members would have stepped down by now.
        std::thread::sleep(Duration::from_secs(TTL));
        let after = assert_one_leader_held(&cluster, &key, &sidecars);
        let fate = fared(&sidecars, before, token, after);
        report.push(format!("{} down: {fate}", cluster.members[i].name()));
        cluster.members[i].launch();
    }
    assert_one_leader_held(&cluster, &key, &sidecars);
    prober.stop_checked(origin);
    println!("each member killed in turn: {}", report.join("; "));
}

#[test]
fn one_leader_remains_when_the_raft_leader_member_is_killed() {
    let (mut cluster, key, sidecars, prober) = start("raft_leader_killed");
    let origin = Instant::now();
    let before = assert_one_leader_held(&cluster, &key, &sidecars);
    let token = sidecars[before].fencing_token();
    let raft = wait_for(SOON, || cluster.raft_leader()).expect("the cluster has a raft leader");
    let killed = Instant::now();
    cluster.members[raft].kill();

    let successor = wait_for(RECOVERY, || cluster.raft_leader().filter(|&s| s != raft))
        .expect("the two survivors elect a new raft leader");
    std::thread::sleep(Duration::from_secs(TTL));
    let after = assert_one_leader_held(&cluster, &key, &sidecars);
    let elected = killed.elapsed();
    cluster.members[raft].launch();
    std::thread::sleep(Duration::from_millis(500));
    prober.stop_checked(origin);
    println!(
        "raft leader {} killed: raft leader now {}; elector: {}; checked {} ms after the kill",
        cluster.members[raft].name(),
        cluster.members[successor].name(),
        fared(&sidecars, before, token, after),
        elected.as_millis()
    );
}

#[test]
fn no_replica_claims_leadership_while_quorum_is_lost() {
    let (mut cluster, key, sidecars, prober) = start("quorum_lost");
    let before = assert_one_leader_held(&cluster, &key, &sidecars);
    let token = sidecars[before].fencing_token().expect("a token");
    // Lose quorum: the raft leader and one more. The survivor is a follower
    // that cannot renew a lease or commit anything.
    let raft = cluster.raft_leader().unwrap_or(0);
    let other = (raft + 1) % 3;
    let lost = Instant::now();
    cluster.members[raft].kill();
    cluster.members[other].kill();

    // A claim ends at most TTL - margin after the last renewal was sent, and
    // none can have been acknowledged after quorum was lost.
    let deadline = lost + Duration::from_secs(TTL) - MARGIN;
    let slack = Duration::from_secs(1);
    std::thread::sleep((deadline + slack).saturating_duration_since(Instant::now()));
    let quiet_from = Instant::now();
    // Stay without quorum for several more TTLs: nobody may claim, whatever
    // it retries meanwhile.
    let quiet = Duration::from_secs(2 * TTL);
    throughout(quiet, Duration::from_millis(100), || {
        for s in &sidecars {
            let (status, body) = s.get("/leader");
            assert_eq!(
                status,
                503,
                "{} claims leadership without quorum: {body}",
                s.id()
            );
        }
    });
    let regained = Instant::now();
    cluster.members[raft].launch();
    cluster.members[other].launch();

    let after = assert_one_leader_held(&cluster, &key, &sidecars);
    let back = regained.elapsed();
    let new_token = sidecars[after].fencing_token().expect("a token");
    std::thread::sleep(Duration::from_millis(500));
    let record = prober.stop_checked(lost);

    let last_claim = record
        .leader_probes()
        .filter(|p| p.sent < regained)
        .map(|p| p.answered)
        .max()
        .expect("there was a leader before");
    assert!(
        last_claim < deadline + slack,
        "the last 200 came {} ms after quorum was lost, past the claim deadline ({} ms) plus slack",
        (last_claim - lost).as_millis(),
        (deadline - lost).as_millis()
    );
    assert!(
        !record
            .leader_probes()
            .any(|p| p.sent >= quiet_from && p.answered <= regained),
        "no probe saw a leader while quorum was lost"
    );
    assert!(
        new_token >= token,
        "the data survived, so the token does not go back: {token} -> {new_token}"
    );
    println!(
        "quorum lost: last claim answered {} ms after the loss (deadline bound {} ms); \
         one leader again {} ms after quorum returned (token {token} -> {new_token})",
        (last_claim - lost).as_millis(),
        (deadline - lost).as_millis(),
        back.as_millis()
    );
}
