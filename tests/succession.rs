//! Direct succession (lock protocol): a leader that steps down hands the key
//! to a chosen, live successor in one transaction, preferring a replica of
//! another release; the key is never absent, and nobody else campaigns. A
//! successor frozen at the transfer is a frozen leader: the others take over
//! when its lease expires.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use elector_testkit::*;
use etcd_elector::election::succession::registration_key;

/// Long enough that anything inside a test's bounds comes from a handoff,
/// never from a lease expiring.
const LONG_TTL: &str = "30";

/// A replica of release `revision`.
fn replica(etcd: &Etcd, key: &str, id: &str, revision: &str, extra: &[&str]) -> Sidecar {
    let args = [&["--ttl", LONG_TTL, "--revision", revision][..], extra].concat();
    Sidecar::start(&etcd.endpoint(), key, id, &args)
}

/// Every event of `key` after `revision`, as `etcdctl watch --rev` replays
/// them: ("PUT" or "DELETE", value).
fn history(etcd: &Etcd, key: &str, revision: i64) -> Vec<(String, String)> {
    let mut watch = Command::new(elector_testkit::etcd::etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoint(), "watch", key])
        .args(["--rev", &(revision + 1).to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting etcdctl watch");
    std::thread::sleep(Duration::from_millis(700));
    let _ = watch.kill();
    let out = watch.wait_with_output().expect("etcdctl watch output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    // Each event prints as: EVENT, key, value (a delete has no value line).
    let mut events = Vec::new();
    while let Some(line) = lines.next() {
        if line == "PUT" || line == "DELETE" {
            let _key = lines.next();
            let value = if line == "PUT" { lines.next() } else { None };
            events.push((line.to_string(), value.unwrap_or_default().to_string()));
        }
    }
    events
}

#[test]
fn sigterm_hands_the_key_to_a_follower_without_it_ever_being_absent() {
    let (etcd, key) = etcd_and_key("succession_handoff");
    let first = replica(&etcd, &key, "first", "a", &[]);
    first.wait_leading("first leads");
    // Its campaign waited for its registration, so the watch it started from the campaign's
    // next revision was in step with etcd: one behind is caught up only every 100 ms.
    let held = etcd.get(&key).expect("the key");
    let registered = etcd.get(&registration_key(&key, held.lease));
    let registered = registered.expect("first's registration").create_revision;
    assert!(
        registered < held.create_revision,
        "registered at revision {registered}, before campaigning at {}",
        held.create_revision
    );
    let others = vec![
        replica(&etcd, &key, "second", "a", &[]),
        replica(&etcd, &key, "third", "a", &[]),
    ];
    wait_registered(&others);
    let before = etcd.get(&key).expect("the key");
    let campaigns_before: Vec<u64> = others.iter().map(Sidecar::campaigns).collect();

    let mut first = first;
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit(SOON).code(), Some(0));
    let next = wait_for_one_leader(&others, SOON);

    // The newest registration is the successor, and it leads under its own
    // lease with the revision of its own write as the token.
    assert_eq!(others[next].id(), "third");
    let kv = etcd.get(&key).expect("the key");
    assert_eq!(kv.value, "third");
    assert_eq!(others[next].fencing_token(), Some(kv.mod_revision));
    assert!(kv.mod_revision > before.mod_revision);
    assert_eq!(
        kv.create_revision, before.create_revision,
        "the key was never deleted and created again"
    );
    let events = history(&etcd, &key, before.mod_revision);
    assert!(
        events.iter().all(|(kind, _)| kind == "PUT"),
        "no DELETE between the old and the new holder: {events:?}"
    );
    assert_eq!(
        events,
        vec![("PUT".to_string(), "third".to_string())],
        "one write: the transfer, under the successor's lease"
    );
    assert_eq!(
        others[next].status()["lease_id"],
        format!("{:x}", kv.lease),
        "under the successor's lease"
    );
    // The follower that was not chosen never campaigned.
    let other = 1 - next;
    assert_eq!(
        others[other].campaigns(),
        campaigns_before[other],
        "{} did not campaign",
        others[other].id()
    );
    assert_eq!(others[other].leader_view()["leader"], "third");
}

#[test]
fn the_successor_is_of_another_release_when_one_is_registered() {
    let (etcd, key) = etcd_and_key("succession_revision");
    let mut old = replica(&etcd, &key, "old-leader", "a", &[]);
    old.wait_leading("old-leader leads");
    // The new release registers before the last old replica: recency alone
    // would pick the old one.
    let others = vec![
        replica(&etcd, &key, "new", "b", &[]),
        replica(&etcd, &key, "old-follower", "a", &[]),
    ];
    wait_registered(&others);

    old.signal(Signal::SIGTERM);
    assert_eq!(old.wait_exit(SOON).code(), Some(0));
    let next = wait_for_one_leader(&others, SOON);
    assert_eq!(others[next].id(), "new", "the new release leads");
}

/// A successor frozen at the moment of the transfer is a leader that froze: the key is
/// under its lease, nobody else claims, and the others take over once that lease expires
/// (the crash-failover bound), while the frozen one, thawed, never claims.
#[test]
fn a_frozen_successor_holds_the_key_until_its_lease_expires_like_a_frozen_leader() {
    let (etcd, key) = etcd_and_key("succession_frozen");
    let short = |id, revision| {
        let args = ["--ttl", "3", "--revision", revision];
        Sidecar::start(&etcd.endpoint(), &key, id, &args)
    };
    let mut old = short("old", "a");
    old.wait_leading("old leads");
    let spare = short("spare", "a");
    let frozen = short("frozen", "b");
    wait_registered([&spare, &frozen]);
    // Chosen (another release) but frozen.
    frozen.signal(Signal::SIGSTOP);

    let asked = Instant::now();
    old.signal(Signal::SIGTERM);
    assert_eq!(old.wait_exit(SOON).code(), Some(0));
    assert_eq!(
        etcd.get(&key).map(|kv| kv.value).as_deref(),
        Some("frozen"),
        "handed to the frozen successor"
    );
    assert!(!spare.is_leader(), "nobody else claims meanwhile");
    spare.wait_leading("the spare leads once the frozen one's lease expired");
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "not before the lease could expire: {took:?}"
    );

    // Thawed, the frozen one finds its claim ran out and follows.
    frozen.signal(Signal::SIGCONT);
    frozen.wait_following("spare");
    assert!(spare.is_leader() && !frozen.is_leader());
    assert!(
        !frozen.logs().contains("\"became_leader\""),
        "the note read on thawing was no evidence"
    );
}

#[test]
fn a_leader_waits_for_a_new_release_to_register_before_handing_over() {
    let (etcd, key) = etcd_and_key("succession_wait");
    let wait = ["--handoff-wait", "8", "--shutdown-timeout", "12"];
    let mut old = replica(&etcd, &key, "old", "a", &wait);
    old.wait_leading("old leads");
    let old_follower = replica(&etcd, &key, "old-follower", "a", &wait);
    wait_registered([&old_follower]);

    old.signal(Signal::SIGTERM);
    assert!(
        wait_until(SOON, || old.get("/leader").0 == 503),
        "it stops claiming at once"
    );
    std::thread::sleep(Duration::from_millis(500));
    let new = replica(&etcd, &key, "new", "b", &[]);
    new.wait_leading("the new release, registering during the wait, leads");
    assert_eq!(old.wait_exit(SOON).code(), Some(0));
    assert!(
        !old_follower.logs().contains("\"became_leader\""),
        "the old follower never led"
    );
}

#[test]
fn resign_hands_the_key_over_and_the_old_leader_follows() {
    let (etcd, key, sidecars) = fresh_replicas("succession_resign", 3, &["--ttl", LONG_TTL]);
    let leader = wait_for_successors(&sidecars);
    let before = etcd.get(&key).expect("the key");
    let next = resign(&sidecars, leader, SOON);
    assert_eq!(
        etcd.get(&key).map(|kv| kv.create_revision),
        Some(before.create_revision),
        "handed over, not deleted"
    );
    // The resigned leader follows the new one.
    sidecars[leader].wait_following(sidecars[next].id());
}

#[test]
fn a_go_client_never_gets_the_lock_during_transfers() {
    let (etcd, key, sidecars) = fresh_replicas("succession_go", 3, &["--ttl", LONG_TTL]);
    let c = resigns_under_contention(&etcd, &key, &sidecars, 20, {
        let (endpoint, key) = (etcd.endpoint(), key.clone());
        move || GoLocker::run(&endpoint, &key, "go-contender", 5)
    });
    c.assert_never_held("the Go client");
}

/// A leader `first` and `n` followers `w0`.. registered behind it, each having read the
/// others, all with a short TTL: a crash frees the key when its lease expires.
fn before_a_crash(test: &str, n: usize) -> (Etcd, Sidecar, Vec<Sidecar>) {
    let (etcd, key) = etcd_and_key(test);
    let short = |id: &str| Sidecar::start(&etcd.endpoint(), &key, id, &["--ttl", "3"]);
    let first = short("first");
    first.wait_leading("first leads");
    let others: Vec<Sidecar> = (0..n).map(|i| short(&format!("w{i}"))).collect();
    wait_registered(&others);
    // Let every follower read the candidates (registered just now).
    std::thread::sleep(Duration::from_millis(300));
    (etcd, first, others)
}

#[test]
fn after_a_crash_about_one_candidate_campaigns_however_many_wait() {
    let (_etcd, mut first, others) = before_a_crash("succession_crash_order", 5);
    let before: u64 = others.iter().map(Sidecar::campaigns).sum();

    first.kill();
    let next = wait_for_one_leader(&others, SOON);
    let after: u64 = others.iter().map(Sidecar::campaigns).sum();
    println!(
        "crash failover with 5 waiting: {} campaigns, {} leads",
        after - before,
        others[next].id()
    );
    assert_eq!(
        others[next].id(),
        "w4",
        "the newest registration is ranked first and takes over"
    );
    assert!(
        after - before <= 2,
        "about one campaign, not one per follower: {}",
        after - before
    );
}

#[test]
fn after_a_crash_a_frozen_best_candidate_does_not_stop_the_others() {
    let (_etcd, mut first, others) = before_a_crash("succession_crash_frozen", 3);
    // The best-ranked (newest) candidate is frozen: registered, lease alive, but silent.
    others[2].signal(Signal::SIGSTOP);

    first.kill();
    let killed = Instant::now();
    assert!(
        wait_until(SOON, || others[..2].iter().any(Sidecar::is_leader)),
        "a live candidate takes over"
    );
    let took = killed.elapsed();
    others[2].signal(Signal::SIGCONT);
    assert!(
        took < Duration::from_secs(6),
        "within the crash-failover time (TTL 3 s and etcd's expiry scan), took {took:?}"
    );
}

/// A replica's registration changes within a millisecond when its lease is granted just
/// before its application's first health answer. The registration etcd keeps must be the
/// newest: an older one ("unhealthy") left as the last word would make every leader pass
/// this replica over for good.
#[test]
fn the_registration_etcd_keeps_is_the_newest_written() {
    use etcd_elector::election::etcd::write_registrations;
    use etcd_elector::election::machine::Timing;
    use etcd_elector::election::succession::Registration;

    const WRITES: u64 = 200;
    let (etcd, key) = etcd_and_key("registrar");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let lease = runtime.block_on(async {
        let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .expect("connecting");
        let lease = client.lease_grant(30, None).await.expect("a lease").id();
        let (reports, mut errors) = tokio::sync::mpsc::channel(16);
        let (newest, receiver) = tokio::sync::watch::channel(None);
        let (written, settled) = tokio::sync::watch::channel(None);
        let timing = Timing::for_ttl(Duration::from_secs(30));
        tokio::spawn(write_registrations(
            client,
            timing,
            key.clone(),
            receiver,
            written,
            reports,
        ));
        for n in 1..=WRITES {
            let registration = Registration {
                id: "me".into(),
                revision: "a".into(),
                healthy: n % 2 == 0,
                registered_at: n,
                leading: None,
            };
            newest.send_replace(Some((lease, registration)));
            tokio::task::yield_now().await;
        }
        // Every put has landed once etcd's copy has held still for a while.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(errors.try_recv().is_err(), "no put failed");
        assert_eq!(
            *settled.borrow(),
            Some(lease),
            "the registrar says it wrote"
        );
        lease
    });
    let kept = etcd
        .get(&registration_key(&key, lease))
        .expect("registered");
    let kept: Registration = serde_json::from_str(&kept.value).expect("a registration");
    assert_eq!(kept.registered_at, WRITES, "the newest is the last word");
    assert!(kept.healthy);
}
