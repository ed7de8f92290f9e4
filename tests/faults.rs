//! Faults that happen in real clusters, end to end against a real etcd, with
//! every replica's `/leader` probed continuously from threads so that two
//! replicas claiming leadership at once cannot slip between two polls (see
//! `elector_testkit::observe` for how probes prove an overlap).
//!
//! Covered elsewhere: operator deletes, overwrites and revokes
//! (`operator.rs`); etcd killed, restarted with its data, or absent at start
//! (`etcd_outage.rs`); SIGTERM handoff (`handoff.rs`). Here: a freeze, the
//! margin by which a partitioned leader steps down before another wins, a
//! partitioned follower, etcd losing its data, crashes, a slow etcd, and the
//! order of a shutdown with `--release-delay`.

use std::time::{Duration, Instant};

use elector_testkit::observe::{terms, Prober};
use elector_testkit::*;

/// Short, so faults that wait out a lease are cheap.
const TTL: u64 = 3;
/// The self-fencing margin for [`TTL`]: clamp(ttl/10, 250 ms, 5 s).
const MARGIN: Duration = Duration::from_millis(300);
/// How often each replica is probed.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// A takeover that has to wait for a lease to expire: the TTL, etcd's lease
/// expiry check (every 500 ms), and generous slack for a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(TTL + 7);

/// Starts `id` on `endpoint` (etcd, or a proxy to it) and waits until it
/// leads: the replica each fault is done to.
fn leading(endpoint: &str, key: &str, id: &str, args: &[&str]) -> Sidecar {
    let s = Sidecar::start(endpoint, key, id, args);
    s.wait_leading(&format!("{id} leads first"));
    s
}

/// Starts `id` on `endpoint` and waits until it follows `leader`.
fn following(endpoint: &str, key: &str, id: &str, args: &[&str], leader: &str) -> Sidecar {
    let s = Sidecar::start(endpoint, key, id, args);
    s.wait_following(leader);
    s
}

/// `other-0` and `other-1` on etcd itself, both following `leader`: the
/// candidates to succeed it.
fn two_others(etcd: &Etcd, key: &str, args: &[&str], leader: &str) -> [Sidecar; 2] {
    ["other-0", "other-1"].map(|id| following(&etcd.endpoint(), key, id, args, leader))
}

fn since(origin: Instant, t: Instant) -> u128 {
    t.saturating_duration_since(origin).as_millis()
}

/// A frozen leader (SIGSTOP past its TTL) is replaced. It cannot even run a
/// timer, so its deadline must be checked when a request is answered: after
/// the thaw it answers 503 first, on its kept connection and on every new one
/// queued meanwhile, and at no moment did it and its successor both answer 200.
#[test]
fn a_frozen_leader_answers_503_after_thawing_and_never_overlaps_its_successor() {
    let (etcd, key) = etcd_and_key("frozen_no_overlap");
    let args = ["--ttl", &TTL.to_string()];
    let frozen = leading(&etcd.endpoint(), &key, "frozen", &args);
    let others = two_others(&etcd, &key, &args, "frozen");
    let prober = Prober::start([&frozen, &others[0], &others[1]], PROBE_EVERY);
    std::thread::sleep(Duration::from_millis(300));

    let stopped = Instant::now();
    let frozen_at = frozen.freeze();
    let next = wait_for_one_leader(&others, TAKEOVER);
    let took_over = wait_for(SOON, || {
        prober.first_leader_since(stopped).map(|(_, at)| at)
    })
    .expect("a probe saw the successor");
    // New connections while it is frozen: the kernel accepts and buffers
    // them, and the process answers them first thing after SIGCONT, racing
    // its own election task.
    let addr = frozen.addr();
    let queued: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || http::simple(addr, "GET", "/leader", b"")))
        .collect();
    // Stay frozen a while longer, with requests queueing in its backlog.
    std::thread::sleep(Duration::from_millis(700));
    let thawed = Instant::now();
    frozen.signal(Signal::SIGCONT);
    for answer in queued {
        let answer = answer.join().expect("probe thread");
        let answer = answer.expect("the thawed replica answers");
        assert_eq!(
            answer.status,
            503,
            "a request queued during the freeze, while {} leads: {}",
            others[next].id(),
            answer.body
        );
    }

    frozen.wait_following(others[next].id());
    assert_eq!(
        wait_for_one_leader(&others, SOON),
        next,
        "the same successor"
    );
    std::thread::sleep(Duration::from_millis(500));
    let record = prober.stop_checked(stopped);

    // Requests it could read only after the thaw (an answer computed just
    // before the stop may still arrive after it: it was true when computed).
    let after_thaw: Vec<_> = record.probes[0]
        .iter()
        .filter(|p| p.answered > thawed && p.sent > frozen_at)
        .collect();
    let first = after_thaw.first().expect("the thawed replica answered");
    assert_eq!(
        first.status,
        Some(503),
        "its first answer after the thaw (request sent {} ms before) is 503",
        since(first.sent, thawed)
    );
    assert!(
        after_thaw.iter().all(|p| !p.is_leader()),
        "it never answers 200 again"
    );
    let stepped = terms("frozen", &frozen.logs());
    assert_eq!(
        stepped.first().and_then(|t| t.end_reason.as_deref()),
        Some("lease_not_renewed"),
        "it logs why it stepped down: {stepped:?}"
    );
    println!(
        "frozen leader: successor led {} ms after SIGSTOP (TTL {} s); thawed at {} ms; {} probes, no overlap",
        since(stopped, took_over),
        TTL,
        since(stopped, thawed),
        record.total()
    );
}

/// A silent partition between the leader and etcd (connections open, nothing flows): the
/// leader stops claiming before another replica can win. The gap between the two claims is
/// measured from the probes and from the logs and printed; after the heal the cut-off replica
/// follows.
#[test]
fn a_partitioned_leader_steps_down_a_margin_before_another_wins() {
    let (etcd, key) = etcd_and_key("partition_margin");
    let args = ["--ttl", &TTL.to_string()];
    let proxy = TcpProxy::start(etcd.client_addr());
    let cut_off = leading(&proxy.endpoint(), &key, "cut-off", &args);
    let others = two_others(&etcd, &key, &args, "cut-off");
    let prober = Prober::start([&cut_off, &others[0], &others[1]], PROBE_EVERY);
    std::thread::sleep(Duration::from_millis(300));

    let partitioned = Instant::now();
    proxy.partition();
    let next = wait_for_one_leader(&others, TAKEOVER);
    let held = etcd.get(&key).map(|kv| kv.value);
    assert_eq!(
        held.as_deref(),
        Some(others[next].id()),
        "the key is the successor's"
    );
    std::thread::sleep(Duration::from_millis(300));
    proxy.heal();
    cut_off.wait_following_within(others[next].id(), TAKEOVER);
    assert_eq!(
        wait_for_one_leader(&others, SOON),
        next,
        "the same successor"
    );
    let record = prober.stop_checked(partitioned);

    // From the probes: the old claim ended before its first 503 arrived; the
    // new one began after the new leader's last non-200 was sent.
    let old = &record.probes[0];
    let last_200 = old.iter().rfind(|p| p.is_leader()).expect("cut-off led");
    let old_first_503 = record
        .first_answer(0, last_200.sent, 503)
        .expect("cut-off answered 503 after leading");
    let new = &record.probes[1 + next];
    let new_first_200 = new
        .iter()
        .find(|p| p.is_leader())
        .expect("the successor led");
    let new_last_not_200 = new
        .iter()
        .rfind(|p| p.sent < new_first_200.sent && !p.is_leader())
        .expect("the successor was probed before it led");
    let probe_gap = new_last_not_200
        .sent
        .saturating_duration_since(old_first_503);
    assert!(
        new_last_not_200.sent > old_first_503,
        "cut-off stopped claiming before the successor started"
    );

    // From the logs, on the shared wall clock.
    let old_end = terms("cut-off", &cut_off.logs())
        .first()
        .and_then(|t| t.end.zip(t.end_reason.clone()))
        .expect("cut-off logged stepping down");
    let new_start = terms(others[next].id(), &others[next].logs())
        .first()
        .map(|t| t.start)
        .expect("the successor logged becoming leader");
    // Whichever it notices first: the broken watch (HTTP/2 pings time out
    // after about a keep-alive interval) or the claim deadline.
    assert!(
        ["watch_lost", "lease_not_renewed"].contains(&old_end.1.as_str()),
        "it stepped down for the silence, not something else: {}",
        old_end.1
    );
    let log_gap_ms = (new_start - old_end.0) as f64 / 1e3;
    assert!(log_gap_ms > 0.0, "the logs agree: {log_gap_ms} ms");

    println!(
        "partitioned leader (TTL {TTL} s, margin {} ms): last 200 at +{} ms, first 503 at +{} ms after the partition; \
         successor first 200 at +{} ms; gap between the claims >= {} ms by probes, {:.1} ms by logs; \
         step-down reason {}",
        MARGIN.as_millis(),
        since(partitioned, last_200.answered),
        since(partitioned, old_first_503),
        since(partitioned, new_first_200.answered),
        probe_gap.as_millis(),
        log_gap_ms,
        old_end.1
    );
}

/// A follower cut off from etcd changes nothing for the leader, never claims
/// leadership itself, and after the heal names whoever leads by then, even
/// though the leader changed while it was away.
#[test]
fn a_partitioned_follower_leaves_the_leader_alone_and_catches_up() {
    let (etcd, key) = etcd_and_key("partitioned_follower");
    let args = ["--ttl", &TTL.to_string()];
    let mut leader = leading(&etcd.endpoint(), &key, "leader", &args);
    let heir = following(&etcd.endpoint(), &key, "heir", &args, "leader");
    let proxy = TcpProxy::start(etcd.client_addr());
    let away = following(&proxy.endpoint(), &key, "away", &args, "leader");
    let token = leader.fencing_token().expect("a token");
    let prober = Prober::start([&leader, &heir, &away], PROBE_EVERY);

    let partitioned = Instant::now();
    proxy.partition();
    // Two TTLs: long enough for the follower's own lease to lapse.
    std::thread::sleep(Duration::from_secs(2 * TTL));
    let undisturbed_until = Instant::now();
    assert_eq!(leader.fencing_token(), Some(token), "the same term");

    // The leader changes while the follower is away.
    leader.signal(Signal::SIGTERM);
    assert_eq!(leader.wait_exit(SOON).code(), Some(0));
    heir.wait_leading("heir takes over");
    std::thread::sleep(Duration::from_secs(1));
    let healed = Instant::now();
    proxy.heal();
    away.wait_following_within("heir", TAKEOVER);
    std::thread::sleep(Duration::from_millis(500));
    let record = prober.stop_checked(partitioned);

    let during: Vec<_> = record.probes[0]
        .iter()
        .filter(|p| p.sent >= partitioned && p.answered <= undisturbed_until)
        .collect();
    assert!(!during.is_empty());
    assert!(
        during
            .iter()
            .all(|p| p.is_leader() && p.token == Some(token)),
        "the leader answered 200 with token {token} throughout the follower's partition"
    );
    assert!(
        record.probes[2].iter().all(|p| !p.is_leader()),
        "the partitioned follower never claimed leadership"
    );
    let (_, status) = away.get_json("/status");
    assert_eq!(status["state"], "follower", "{status}");
    println!(
        "partitioned follower: leader kept token {token} for {} ms; caught up {} ms after the heal",
        since(partitioned, undisturbed_until),
        since(healed, Instant::now())
    );
}

/// etcd restarted empty (its data lost): revisions start over, the old lease
/// is unknown. Exactly one leader again, holding the new key under a live
/// lease; fencing tokens grow again from there on.
#[test]
fn a_leader_is_elected_again_after_etcd_loses_its_data() {
    let (mut etcd, key) = etcd_and_key("data_lost");
    let args = ["--ttl", &TTL.to_string()];
    let mut sidecars = replicas(&etcd.endpoint(), &key, 3, &args);
    wait_for_one_leader(&sidecars, SOON);
    let before = etcd.get(&key).expect("the leader's key");
    let prober = Prober::start(&sidecars, PROBE_EVERY);

    let wiped = Instant::now();
    etcd.restart_empty();
    let leader = wait_for_one_leader(&sidecars, TAKEOVER);
    let kv = etcd.get(&key).expect("the key exists again");
    assert_eq!(kv.value, sidecars[leader].id());
    assert_ne!(kv.lease, before.lease, "under a lease of the new etcd");
    assert!(matches!(etcd.lease_ttl(kv.lease), Some(t) if t > 0));
    // Revisions restarted: the new token may well be smaller than the old
    // one. It must be the new key's create revision, nothing stale.
    assert_eq!(sidecars[leader].fencing_token(), Some(kv.create_revision));
    let recovered = Instant::now();

    // Within the new data's lifetime tokens grow again.
    let mut old = sidecars.remove(leader);
    old.signal(Signal::SIGTERM);
    assert_eq!(old.wait_exit(SOON).code(), Some(0));
    let next = wait_for_one_leader(&sidecars, SOON);
    let after = etcd.get(&key).expect("held again");
    assert_eq!(after.value, sidecars[next].id());
    // Handed over (direct succession): the token is the key's mod revision.
    assert_eq!(sidecars[next].fencing_token(), Some(after.mod_revision));
    assert!(
        after.mod_revision > kv.mod_revision,
        "the token grows within one data lifetime: {} -> {}",
        kv.mod_revision,
        after.mod_revision
    );
    prober.stop_checked(wiped);
    println!(
        "etcd data lost: token {} before the wipe, {} after (revisions restarted), {} after the next handoff; \
         leader again {} ms after the wipe",
        before.create_revision,
        kv.create_revision,
        after.mod_revision,
        since(wiped, recovered)
    );
}

/// SIGKILL of the leader: no revoke, so a follower wins when the lease
/// expires, within the TTL plus a bound; fencing tokens strictly increase
/// across the terms.
#[test]
fn a_follower_wins_within_the_ttl_when_the_leader_is_killed() {
    let (etcd, key) = etcd_and_key("leader_killed");
    let args = ["--ttl", &TTL.to_string()];
    let mut sidecars = replicas(&etcd.endpoint(), &key, 4, &args);
    let prober = Prober::start(&sidecars, PROBE_EVERY);
    let origin = Instant::now();
    let mut tokens = Vec::new();
    let mut takeovers = Vec::new();
    for _ in 0..2 {
        let leader = wait_for_one_leader(&sidecars, TAKEOVER);
        let held = etcd.get(&key).expect("the leader's key");
        tokens.push(held.create_revision);
        // Let a keep-alive or two go by, so the kill lands mid-lease.
        std::thread::sleep(Duration::from_millis(700));
        let killed = Instant::now();
        sidecars[leader].kill();
        // While etcd still holds the dead leader's key, nobody claims it.
        let ok = wait_until(TAKEOVER, || {
            let claimed: Vec<usize> = (0..sidecars.len())
                .filter(|&i| i != leader && sidecars[i].is_leader())
                .collect();
            let still_old = etcd
                .get(&key)
                .is_some_and(|kv| kv.create_revision == held.create_revision);
            assert!(
                !still_old || claimed.is_empty(),
                "{} claimed leadership while the killed leader's key was still in etcd",
                sidecars[claimed[0]].id()
            );
            !still_old && claimed.len() == 1
        });
        assert!(ok, "a follower wins after the leader was killed");
        let took = prober
            .first_leader_since(killed)
            .map(|(_, at)| at - killed)
            .expect("a probe saw the new leader");
        assert!(
            took <= Duration::from_secs(TTL) + Duration::from_secs(2),
            "takeover in {} ms: more than TTL {TTL} s + 2 s",
            took.as_millis()
        );
        takeovers.push(took.as_millis());
    }
    let leader = wait_for_one_leader(&sidecars, SOON);
    tokens.push(sidecars[leader].fencing_token().expect("a token"));
    prober.stop_checked(origin);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens strictly increase across terms: {tokens:?}"
    );
    println!("leader killed: takeovers in {takeovers:?} ms (TTL {TTL} s); tokens {tokens:?}");
}

/// etcd slows down for the leader (a proxy adds latency to every packet).
/// Moderately slow: it keeps leading. Slow near the TTL: its renewals cannot
/// be confirmed in time, so it steps down and another replica wins, without
/// the two ever overlapping.
#[test]
fn a_slow_etcd_makes_the_leader_step_down_rather_than_overlap() {
    // Twice the others' TTL: a request timeout of TTL/3 = 2 s, so that the
    // moderate phase measures latency, not a busy test machine's scheduling.
    const SLOW_TTL: u64 = 6;
    let (etcd, key) = etcd_and_key("slow_etcd");
    let ttl = SLOW_TTL.to_string();
    let args = ["--ttl", ttl.as_str()];
    let proxy = TcpProxy::start(etcd.client_addr());
    let slow = leading(&proxy.endpoint(), &key, "slow", &args);
    let others = two_others(&etcd, &key, &args, "slow");
    let token = slow.fencing_token().expect("a token");
    let prober = Prober::start([&slow, &others[0], &others[1]], PROBE_EVERY);
    let origin = Instant::now();

    // 150 ms each way: keep-alive round trips of a few hundred ms, well
    // inside the request timeout (TTL/3 = 2 s) and the claim (TTL - margin
    // = 5.4 s after each renewal is sent). A round trip approaching the
    // request timeout is another matter: the sidecar warns about it, and
    // loses leadership on the next hiccup (seen with TTL 3 s at 300 ms each
    // way, where the proxy's per-chunk delays make round trips of ~900 ms).
    proxy.set_latency(Duration::from_millis(150));
    std::thread::sleep(Duration::from_secs(SLOW_TTL + 1));
    assert!(
        slow.is_leader(),
        "moderate latency does not cost leadership; log:\n{}",
        tail(&slow.logs(), 10)
    );
    assert_eq!(slow.fencing_token(), Some(token), "the same term");

    // 2 s each way: a round trip of two thirds of the TTL, twice the request
    // timeout. Keep-alives still reach etcd, late, and keep the lease alive
    // there for a while after the leader has given up on them.
    let slowed = Instant::now();
    proxy.set_latency(Duration::from_secs(SLOW_TTL / 3));
    let next = wait_for_one_leader(&others, Duration::from_secs(5 * SLOW_TTL));
    assert!(!slow.is_leader());
    std::thread::sleep(Duration::from_secs(1));
    proxy.set_latency(Duration::ZERO);
    let fast_again = Duration::from_secs(3 * SLOW_TTL);
    slow.wait_following_within(others[next].id(), fast_again);
    let record = prober.stop_checked(origin);
    let steps = terms("slow", &slow.logs());
    let reason = steps.first().and_then(|t| t.end_reason.clone());
    assert!(
        matches!(reason.as_deref(), Some("lease_not_renewed" | "watch_lost")),
        "it stepped down because etcd was too slow to confirm its lease or watch: {steps:?}"
    );
    let successor = record.first_answer(1 + next, slowed, 200);
    println!(
        "slow etcd (TTL {SLOW_TTL} s): leader stepped down ({}) and {} led {} ms after the latency reached {} s each way",
        reason.unwrap_or_default(),
        others[next].id(),
        successor.map_or(0, |t| since(slowed, t)),
        SLOW_TTL / 3
    );
}

/// Shutdown in a pod with `--release-delay`: the leader answers 503 at once,
/// keeps the key (so nobody else leads yet) for the delay while endpoint
/// removal propagates, then revokes, so the successor wins in milliseconds,
/// and exits 0 within the shutdown timeout.
#[test]
fn release_delay_orders_the_shutdown_503_then_revoke_then_exit() {
    let (etcd, key) = etcd_and_key("release_delay_order");
    let delay = Duration::from_secs(2);
    let timeout = Duration::from_secs(5);
    let args = [
        "--ttl",
        "30",
        "--release-delay",
        "2",
        "--shutdown-timeout",
        "5",
    ];
    let mut leader = leading(&etcd.endpoint(), &key, "draining", &args);
    let heir = following(&etcd.endpoint(), &key, "heir", &args, "draining");
    let prober = Prober::start([&leader, &heir], PROBE_EVERY);
    std::thread::sleep(Duration::from_millis(200));

    let signalled = Instant::now();
    leader.signal(Signal::SIGTERM);
    // During the delay the key stays: check it for most of the delay.
    let mut checks = 0;
    while signalled.elapsed() < delay - Duration::from_millis(400) {
        let kv = etcd.get(&key);
        assert!(
            matches!(&kv, Some(kv) if kv.value == "draining"),
            "the key is still held {} ms into the release delay: {kv:?}",
            signalled.elapsed().as_millis()
        );
        checks += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(checks > 0);
    let status = leader.wait_exit(timeout + Duration::from_secs(2));
    let exited = Instant::now();
    assert_eq!(status.code(), Some(0), "exit 0: {status}");
    heir.wait_leading("heir leads after the revoke");
    std::thread::sleep(Duration::from_millis(200));
    let record = prober.stop_checked(signalled);

    let first_503 = record
        .first_answer(0, signalled, 503)
        .expect("the leader answered 503 after SIGTERM");
    let heir_leads = record.first_answer(1, signalled, 200).expect("heir led");
    assert!(
        first_503 - signalled < Duration::from_millis(500),
        "503 at once: {} ms after SIGTERM",
        since(signalled, first_503)
    );
    assert!(
        heir_leads - signalled >= delay,
        "nobody leads during the release delay: heir led {} ms after SIGTERM",
        since(signalled, heir_leads)
    );
    assert!(
        heir_leads - signalled < delay + Duration::from_secs(2),
        "the revoke right after the delay hands over in milliseconds, not a 30 s TTL: {} ms",
        since(signalled, heir_leads)
    );
    assert!(
        exited - signalled < timeout + Duration::from_millis(500),
        "exit within the shutdown timeout: {} ms",
        since(signalled, exited)
    );
    let revoked = leader.logs().contains("lease revoked");
    assert!(revoked, "it revoked its lease before exiting");
    println!(
        "release delay 2 s: 503 after {} ms, heir led after {} ms, exit (status 0) after {} ms",
        since(signalled, first_503),
        since(signalled, heir_leads),
        since(signalled, exited)
    );
}
