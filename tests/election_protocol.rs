//! `--protocol election`: etcd's own election protocol (`concurrency.Election`
//! and `concurrency.Mutex`), so sidecars queue on one name together with
//! `etcdctl elect` and `etcdctl lock`: each candidate owns `<name>/<lease hex>`,
//! the lowest create revision leads, and only the deletion of the key just
//! before a waiter's own makes it campaign, so a handoff makes one candidate
//! campaign however many wait; the others learn the new leader (and a
//! Proclaim) from their watch, at no request.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use elector_testkit::job::{keys_under, wait_queued, Etcdctl};
use elector_testkit::locker::assert_none_leads;
use elector_testkit::*;

/// Long enough that every takeover in these tests comes from a release, never
/// from a lease expiring (etcdctl's own sessions use 60 s, `lock` 10 s).
const LONG_TTL: &str = "30";

/// A fresh etcd, an election name for `test`, and the prefix its candidates'
/// keys go under.
fn election(test: &str) -> (Etcd, String, String) {
    let name = unique_key(test);
    let prefix = format!("{name}/");
    (Etcd::start(), name, prefix)
}

/// A sidecar on `name` with the election protocol, ready and campaigned (its
/// key exists), so that candidates started one after the other queue in order.
fn candidate(etcd: &Etcd, name: &str, id: &str, ttl: &str) -> Sidecar {
    let args = ["--protocol", "election", "--ttl", ttl];
    let s = Sidecar::start(&etcd.endpoint(), name, id, &args);
    s.wait_campaigned();
    s
}

/// Starts `ids` one after the other behind the `ahead` candidates queued on
/// `name`, checking that each joins the queue before the next starts.
fn join_queue(etcd: &Etcd, name: &str, ahead: usize, ids: &[impl AsRef<str>]) -> Vec<Sidecar> {
    let prefix = format!("{name}/");
    let mut joined = Vec::new();
    for id in ids {
        joined.push(candidate(etcd, name, id.as_ref(), LONG_TTL));
        wait_queued(etcd, &prefix, ahead + joined.len());
    }
    joined
}

/// Gives up with `sig` and checks for a clean exit: every candidate here
/// leaves gracefully, so its successor takes over at once.
fn stop_cleanly(c: &mut Child, sig: Signal) {
    c.signal(sig);
    let status = c.wait_exit(SOON);
    assert!(
        status.success(),
        "{} exits cleanly on {sig}: {status}",
        c.name()
    );
}

/// Stops the leader at the head of `queue` with SIGTERM and waits for the
/// next in line to lead; returns the old leader (its log, should a later
/// check fail).
fn hand_over(queue: &mut Vec<Sidecar>) -> Sidecar {
    let mut old = queue.remove(0);
    stop_cleanly(&mut old, Signal::SIGTERM);
    let (next, was) = (queue[0].id(), old.id());
    queue[0].wait_leading(&format!("the next in line ({next}) takes over from {was}"));
    old
}

/// A member of a mixed queue.
enum Candidate {
    Sidecar(Sidecar),
    /// `etcdctl elect NAME PROPOSAL` with its proposal, or `etcdctl lock NAME`
    /// (no command: it holds until signalled) with "", what a mutex's key holds.
    Etcdctl(Etcdctl, String),
}

impl Candidate {
    fn label(&self) -> String {
        match self {
            Candidate::Sidecar(s) => format!("sidecar {}", s.id()),
            Candidate::Etcdctl(c, _) => c.name().to_string(),
        }
    }

    /// What its key holds.
    fn value(&self) -> &str {
        match self {
            Candidate::Sidecar(s) => s.id(),
            Candidate::Etcdctl(_, value) => value,
        }
    }

    /// Whether it says it leads: a sidecar's `/leader` is 200; etcdctl prints
    /// its key once it leads (or holds the lock) and holds until signalled.
    fn leads(&self) -> bool {
        match self {
            Candidate::Sidecar(s) => s.is_leader(),
            Candidate::Etcdctl(c, _) => !c.lines().is_empty(),
        }
    }

    /// Gives up with `sig` and waits for a clean exit; returns when the signal was sent.
    fn stop(&mut self, sig: Signal) -> Instant {
        let signalled = Instant::now();
        match self {
            Candidate::Sidecar(s) => stop_cleanly(s, sig),
            Candidate::Etcdctl(c, _) => stop_cleanly(c, sig),
        }
        signalled
    }
}

/// Checks that no candidate queued behind the one whose `turn` it is claims
/// to lead (`when`: the moment of the turn, for the message).
fn assert_none_behind_leads(queue: &[Candidate], turn: usize, when: &str) {
    for (j, other) in queue.iter().enumerate().skip(turn + 1) {
        assert!(
            !other.leads(),
            "{} (#{j}) leads while {} (#{turn}) has the turn ({when})",
            other.label(),
            queue[turn].label()
        );
    }
}

#[test]
fn sidecars_and_etcdctl_clients_take_turns_in_create_revision_order_one_at_a_time() {
    let (etcd, name, prefix) = election("mixed_queue");
    let ep = etcd.endpoint();

    let mut queue: Vec<Candidate> = Vec::new();
    let join = |queue: &mut Vec<Candidate>, c: Candidate| {
        queue.push(c);
        wait_queued(&etcd, &prefix, queue.len());
    };
    let elect = |p: &str| Candidate::Etcdctl(Etcdctl::elect(&ep, &name, p), p.into());
    let sidecar = |id: &str| Candidate::Sidecar(candidate(&etcd, &name, id, LONG_TTL));
    join(&mut queue, elect("ctl-elect-1"));
    join(&mut queue, sidecar("sc-1"));
    let lock = Candidate::Etcdctl(Etcdctl::lock(&ep, &name), String::new());
    join(&mut queue, lock);
    join(&mut queue, sidecar("sc-2"));
    join(&mut queue, elect("ctl-elect-2"));
    join(&mut queue, sidecar("sc-3"));
    let order: Vec<String> = queue.iter().map(|c| c.value().to_string()).collect();

    // etcd's own observer, as a witness of the succession.
    let mut observer = Etcdctl::observe(&ep, &name);
    observer.wait_lines(2, SOON);

    let keys = keys_under(&etcd, &prefix);
    let values: Vec<&str> = keys.iter().map(|(_, kv)| kv.value.as_str()).collect();
    assert_eq!(
        values, order,
        "the queue is in start (create revision) order"
    );
    // A sidecar that joins behind another client reports that client's proposal.
    for c in &queue {
        if let Candidate::Sidecar(s) = c {
            let view = s.leader_view();
            assert_eq!(view["leader"], "ctl-elect-1", "{}: {view}", s.id());
            assert_eq!(view["is_leader"], false);
        }
    }

    let signals = [Signal::SIGTERM, Signal::SIGINT];
    let mut previous_stopped: Option<Instant> = None;
    for turn in 0..queue.len() {
        // From now until the turn ends, exactly this candidate leads: no
        // later one ever claims, and this one does within the bound.
        let leading = wait_until(SOON, || {
            assert_none_behind_leads(&queue, turn, "before it leads");
            queue[turn].leads()
        });
        assert!(leading, "{} leads on its turn", queue[turn].label());
        let led_after = previous_stopped.map(|at| at.elapsed());
        let keys = keys_under(&etcd, &prefix);
        let (_, first) = keys.first().expect("the leader's key");
        assert_eq!(
            first.value,
            queue[turn].value(),
            "etcd agrees on the leader"
        );
        if let Candidate::Sidecar(s) = &queue[turn] {
            assert_eq!(s.fencing_token(), Some(first.create_revision));
        }
        if let Some(after) = led_after {
            println!(
                "turn {turn}: {} leads {after:?} after the previous leader was signalled",
                queue[turn].label()
            );
        }
        // A moment of steady state, still one leader.
        std::thread::sleep(Duration::from_millis(200));
        assert_none_behind_leads(&queue, turn, "beside it");
        assert!(queue[turn].leads(), "{} still leads", queue[turn].label());
        previous_stopped = Some(queue[turn].stop(signals[turn % 2]));
    }
    let seen = observer.wait_lines(2 * queue.len(), SOON);
    let leaders: Vec<&str> = seen.iter().skip(1).step_by(2).map(String::as_str).collect();
    assert_eq!(
        leaders, order,
        "`etcdctl elect -l` saw each candidate lead once, in queue order"
    );
    assert_eq!(
        keys_under(&etcd, &prefix),
        vec![],
        "every candidate removed its key"
    );
}

#[test]
fn etcdctl_elect_listen_shows_the_sidecar_leader() {
    let (etcd, name, prefix) = election("observe");
    let mut first = candidate(&etcd, &name, "sc-first", LONG_TTL);
    let second = candidate(&etcd, &name, "sc-second", LONG_TTL);
    assert!(first.is_leader());
    let lease = first.status()["lease_id"].take();
    let lease = lease.as_str().expect("the leader's lease");

    let mut observer = Etcdctl::observe(&etcd.endpoint(), &name);
    let lines = observer.wait_lines(2, SOON);
    assert_eq!(
        lines[..2],
        [format!("{prefix}{lease}"), "sc-first".to_string()]
    );

    stop_cleanly(&mut first, Signal::SIGTERM);
    let lines = observer.wait_lines(4, SOON);
    assert_eq!(
        lines[3], "sc-second",
        "the observer follows the handoff: {lines:?}"
    );
    // etcdctl sees the key order change; the sidecar claims once its own
    // watch has told it, a moment later.
    second.wait_leading("sc-second leads");
}

#[test]
fn etcdctl_lock_waits_while_a_sidecar_leads() {
    let (etcd, name, prefix) = election("ctl_lock_waits");
    let mut leader = candidate(&etcd, &name, "sc-leader", LONG_TTL);
    assert!(leader.is_leader());
    let token = leader.fencing_token().expect("the leader's token");

    let mut ctl = Etcdctl::lock_rev(&etcd.endpoint(), &name);
    wait_queued(&etcd, &prefix, 2);
    ctl.assert_waits("the sidecar leads");
    assert!(leader.is_leader());

    stop_cleanly(&mut leader, Signal::SIGTERM);
    // etcdctl lock runs its command once the sidecar has gone.
    ctl.assert_turn_after(token);
}

#[test]
fn a_sidecar_waits_while_etcdctl_lock_holds() {
    let (etcd, name, prefix) = election("sidecar_waits");
    let mut ctl = Etcdctl::lock(&etcd.endpoint(), &name);
    let printed = ctl.wait_lines(1, SOON);
    let keys = wait_queued(&etcd, &prefix, 1);
    assert_eq!(printed[0], keys[0].0, "etcdctl holds {}", keys[0].0);
    let lock_rev = keys[0].1.create_revision;

    let sidecar = candidate(&etcd, &name, "sc-waiting", LONG_TTL);
    let (status, view) = sidecar.get_json("/leader");
    assert_eq!(status, 503, "{view}");
    assert_eq!(
        view["leader"], "",
        "a mutex holder's value is empty: {view}"
    );
    assert_eq!(view["fencing_token"], lock_rev, "{view}");
    let alone = std::slice::from_ref(&sidecar);
    let ctl_holds = "while etcdctl holds the lock";
    assert_none_leads(alone, Duration::from_millis(1500), ctl_holds);

    let released = Instant::now();
    ctl.signal(Signal::SIGINT);
    sidecar.wait_leading("the sidecar leads once etcdctl unlocks");
    println!(
        "the sidecar led {:?} after etcdctl was told to unlock",
        released.elapsed()
    );
    assert!(ctl.wait_exit(SOON).success(), "etcdctl unlocks and exits 0");
    let token = sidecar.fencing_token().expect("a token");
    assert!(token > lock_rev, "{token} > {lock_rev}");
}

/// Waits until every sidecar in `followers` answers 503 and names `leader`
/// in `/leader` and `/` (the SSE stream and the leader file publish the same
/// snapshot); panics naming those that do not.
fn assert_all_follow(followers: &[Sidecar], leader: &str, why: &str) {
    let stale = |s: &Sidecar| {
        let (status, view) = s.get_json("/leader");
        let (_, root) = s.get_json("/");
        !(status == 503
            && view["leader"] == leader
            && view["is_leader"] == false
            && root["name"] == leader)
    };
    if !wait_until(SOON, || !followers.iter().any(stale)) {
        let views: Vec<String> = followers
            .iter()
            .filter(|s| stale(s))
            .map(|s| format!("{}: {}", s.id(), s.leader_view()))
            .collect();
        panic!(
            "{why}: every follower names {leader:?}; these do not:\n{}",
            views.join("\n")
        );
    }
}

#[test]
fn every_follower_names_the_current_leader_after_handoffs_and_a_proclaim() {
    let (etcd, name, prefix) = election("leader_field");
    // sc-1 leads, then an `etcdctl elect` client, then four more sidecars:
    // only sc-2 is next in line of the etcdctl client, and sc-3.. sit further back.
    let mut first = candidate(&etcd, &name, "sc-1", LONG_TTL);
    wait_queued(&etcd, &prefix, 1);
    let mut ctl = Etcdctl::elect(&etcd.endpoint(), &name, "ctl-proposal");
    wait_queued(&etcd, &prefix, 2);
    let back = join_queue(&etcd, &name, 2, &["sc-2", "sc-3", "sc-4", "sc-5"]);
    assert!(first.is_leader());
    assert_all_follow(&back, "sc-1", "at the start");
    let joined: Vec<u64> = back.iter().map(Sidecar::campaigns).collect();

    // A handoff to a client that is nobody's predecessor among the sidecars
    // except sc-2's: the deleted key was no sidecar's predecessor at all.
    stop_cleanly(&mut first, Signal::SIGTERM);
    ctl.wait_lines(2, SOON);
    assert_all_follow(&back, "ctl-proposal", "after sc-1 handed over to etcdctl");

    // A Proclaim: the leader rewrites its own key's value under the same lease,
    // as Go's `concurrency.Election.Proclaim` does.
    let keys = keys_under(&etcd, &prefix);
    let (ctl_key, ctl_kv) = &keys[0];
    assert_eq!(ctl_kv.value, "ctl-proposal");
    etcd.ctl(&["put", ctl_key, "ctl-proclaimed", "--ignore-lease"]);
    assert_eq!(
        etcd.get(ctl_key).map(|kv| kv.lease),
        Some(ctl_kv.lease),
        "the proclaim kept the lease"
    );
    assert_all_follow(&back, "ctl-proclaimed", "after the leader proclaimed");

    // A handoff from the etcdctl client to sc-2: sc-3.. learn it too.
    stop_cleanly(&mut ctl, Signal::SIGINT);
    back[0].wait_leading("sc-2 leads");
    let rest = &back[1..];
    assert_all_follow(rest, "sc-2", "after etcdctl handed over to sc-2");
    let token = back[0].fencing_token();
    for s in rest {
        assert_eq!(
            s.fencing_token(),
            token,
            "{} shows the leader's token",
            s.id()
        );
    }
    // Only sc-2, for its turn: nobody further back campaigned for any of this.
    for (s, then) in back.iter().zip(&joined).skip(1) {
        assert_eq!(s.campaigns(), *then, "{} campaigned", s.id());
    }
}

/// A waiting candidate's key deleted by an operator: the candidate behind it moves up, and
/// when the deleted one's turn comes its campaign, which otherwise only reads (its key was
/// created under its lease when it joined), finds the key gone, queues again under the same
/// lease, at the back, and follows.
#[test]
fn a_candidate_whose_key_was_deleted_queues_again_at_the_back_when_its_turn_comes() {
    let (etcd, name, prefix) = election("own_key_deleted");
    let mut queue = join_queue(&etcd, &name, 0, &["sc-0", "sc-1", "sc-2"]);
    let keys = keys_under(&etcd, &prefix);
    let (deleted, was) = &keys[1];
    assert_eq!(was.value, "sc-1");
    etcd.ctl(&["del", deleted]);
    wait_queued(&etcd, &prefix, 2);

    let mut first = queue.remove(0);
    stop_cleanly(&mut first, Signal::SIGTERM);
    queue[1].wait_leading("sc-2, whose predecessor's key was deleted, takes over from sc-0");
    assert_all_follow(&queue[..1], "sc-2", "sc-1, its key deleted while it waited");
    let keys = wait_queued(&etcd, &prefix, 2);
    let values: Vec<&str> = keys.iter().map(|(_, kv)| kv.value.as_str()).collect();
    assert_eq!(values, ["sc-2", "sc-1"], "sc-1 queued again, behind sc-2");
    assert_eq!(keys[1].1.lease, was.lease, "under the same lease");
}

/// Requests etcd receives for one graceful handoff among `n` queued sidecars,
/// counted from the SIGTERM until every follower names the new leader, plus a
/// moment for stragglers: the total, the per-method breakdown, and the raft
/// proposals etcd committed meanwhile.
fn requests_for_one_handoff(n: usize) -> (u64, BTreeMap<String, u64>, f64) {
    const COMMITTED: &str = "etcd_server_proposals_committed_total";
    let (etcd, name, _) = election(&format!("requests_{n}"));
    let ids: Vec<String> = (0..n).map(|i| format!("sc-{i}")).collect();
    let mut sidecars = join_queue(&etcd, &name, 0, &ids);
    assert_all_follow(&sidecars[1..], "sc-0", &format!("n={n}, at the start"));

    let (before, committed) = (EtcdCounts::scrape(&etcd), etcd.metric(COMMITTED));
    let _old = hand_over(&mut sidecars);
    assert_all_follow(&sidecars[1..], "sc-1", &format!("n={n}, after the handoff"));
    // Anything a follower would still send after updating its answer.
    std::thread::sleep(Duration::from_millis(500));
    let by_method = EtcdCounts::scrape(&etcd).since(&before).requests();
    let committed = etcd.metric(COMMITTED) - committed;
    (by_method.values().sum(), by_method, committed)
}

/// The next in line created its key under its lease when it joined; its turn
/// only reads (a create transaction would go through raft even with the key
/// there), so the one write of a handoff is the old leader's revoke.
#[test]
fn a_handoff_costs_the_same_requests_at_3_and_10_and_commits_only_the_revoke() {
    let (small, small_by, small_committed) = requests_for_one_handoff(3);
    let (large, large_by, large_committed) = requests_for_one_handoff(10);
    println!("etcd requests per handoff: n=3 {small} {small_by:?}; n=10 {large} {large_by:?}");
    assert!(
        large <= small + 1,
        "requests per handoff grow with the queue: n=3 {small} {small_by:?}, n=10 {large} {large_by:?}"
    );
    assert!(
        small <= 6,
        "n=3: {small} requests for one handoff {small_by:?}"
    );
    assert_eq!(
        (small_committed, large_committed),
        (1.0, 1.0),
        "raft proposals committed for one handoff at n=3 and n=10"
    );
}

/// The watch events etcd sent so far, from its own `/metrics`.
fn watch_events(etcd: &Etcd) -> u64 {
    etcd.metric("etcd_debugging_mvcc_events_total") as u64
}

#[test]
fn a_handoff_among_50_queued_sidecars_makes_one_candidate_campaign() {
    const CANDIDATES: usize = 50;
    let (etcd, name, prefix) = election("fifty");
    // Started one after the other, so they queue in this order.
    let started = Instant::now();
    let mut sidecars: Vec<Sidecar> = (0..CANDIDATES)
        .map(|i| candidate(&etcd, &name, &format!("sc-{i:02}"), "10"))
        .collect();
    println!("{CANDIDATES} sidecars queued in {:?}", started.elapsed());
    let keys = wait_queued(&etcd, &prefix, CANDIDATES);
    assert_eq!(keys[0].1.value, "sc-00");
    assert!(sidecars[0].is_leader());

    let before: HashMap<String, u64> = sidecars[1..]
        .iter()
        .map(|s| (s.id().to_string(), s.campaigns()))
        .collect();
    // Every waiting candidate watches the prefix, so each join was an event
    // for all before it: let the last ones be delivered before counting.
    let mut events_before = watch_events(&etcd);
    assert!(
        wait_until(SOON, || {
            std::thread::sleep(Duration::from_millis(200));
            let now = watch_events(&etcd);
            std::mem::replace(&mut events_before, now) == now
        }),
        "etcd's watch events settle before the handoff"
    );

    let stopped = Instant::now();
    let _old = hand_over(&mut sidecars);
    println!("sc-01 led {:?} after sc-00 was stopped", stopped.elapsed());
    // Give any other candidate that was (wrongly) woken time to campaign.
    std::thread::sleep(Duration::from_secs(1));

    let woken: Vec<(String, u64)> = sidecars
        .iter()
        .map(|s| (s.id().to_string(), s.campaigns() - before[s.id()]))
        .filter(|(_, n)| *n > 0)
        .collect();
    let total: u64 = woken.iter().map(|(_, n)| n).sum();
    let events = watch_events(&etcd) - events_before;
    println!(
        "one handoff among {CANDIDATES}: {total} campaign(s) by {woken:?}, {events} watch event(s) sent by etcd"
    );
    assert!(
        total <= 2 && woken.iter().all(|(id, _)| id == "sc-01"),
        "only the next in line campaigned: {woken:?}"
    );
    // Telling every follower who leads now costs etcd one watch event per
    // waiting candidate (the old leader's deletion: 49), and no request; the
    // old leader's watch on its own key may still be open when its revoke
    // commits (one more), and one more is slack.
    assert!(
        events <= CANDIDATES as u64 + 1,
        "etcd sent {events} watch events for one handoff among {CANDIDATES}"
    );
    for s in &sidecars[1..] {
        assert!(!s.is_leader(), "{} leads beside sc-01", s.id());
    }
    assert_all_follow(&sidecars[1..], "sc-01", "after the handoff among 50");
}
