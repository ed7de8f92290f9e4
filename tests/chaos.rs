//! The chaos run: five replicas against a three-member etcd while random
//! faults are injected, one after another, for a set time.
//!
//! ```text
//! cargo test --test chaos -- --nocapture                                  # CI: ~40 s in all
//! ELECTOR_CHAOS_SECS=600 cargo test --release --test chaos -- --nocapture # the long run
//! ```
//!
//! Faults: kill an etcd member (the raft leader half the time) and restart it;
//! freeze a replica (SIGSTOP) and thaw it; SIGKILL a replica and start it
//! again under the same name; partition a replica from every member (each
//! replica reaches etcd through its own proxies); delete the key; revoke a
//! lease (usually the leader's). A replica-targeted fault hits the current
//! leader 60% of the time.
//!
//! Meanwhile a thread per replica probes `/leader` every 5 ms. At the end the
//! run fails on:
//! - two replicas claiming leadership at once, by probe (see
//!   `elector_testkit::observe` for what counts as proof) or by their own logs (the
//!   `became_leader` .. `stepped_down` intervals, wall-clock timestamps on
//!   this one machine, 1 ms tolerance);
//! - no leader for longer than TTL + 2 s outside a fault (from its injection
//!   to its heal; a kill, a delete or a revoke heals at once);
//! - a replica exiting without being killed, or "panicked" in any log;
//! - fencing tokens of consecutive terms that do not grow (the cluster never
//!   loses its data here, so they must).
//!
//! Deleting the key or revoking the leader's lease takes the lock away behind
//! the leader's back: it learns it from its watch, milliseconds later, while
//! a follower may already have won. Overlaps that follow such an operator
//! fault within [`OPERATOR_WINDOW`] are counted and reported separately and
//! fail the run only if longer than [`OPERATOR_BOUND`]; every other overlap
//! fails it.
//!
//! A frozen process answers nothing: the log interval of a leader frozen past
//! its claim deadline (it logs `lease_not_renewed` right after the thaw) is
//! cut at the freeze; what it answers after the thaw is checked by the probes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use elector_testkit::observe::{
    gaps, leader_views, parse_rfc3339_micros, term_overlaps, terms, unix_micros, Probe,
    ProbeRecord, Prober, Term,
};
use elector_testkit::*;

const TTL: u64 = 3;
const REPLICAS: usize = 5;
/// The run's length unless `ELECTOR_CHAOS_SECS` says otherwise.
const DEFAULT_SECS: u64 = 35;
/// How long after a fault heals a leader must be back.
const LEADERLESS_BOUND: Duration = Duration::from_secs(TTL + 2);
/// Overlaps within this long after a delete or revoke are blamed on it.
const OPERATOR_WINDOW: Duration = Duration::from_secs(2);
/// ... as long as they are this short: a watch event's propagation.
const OPERATOR_BOUND: Duration = Duration::from_millis(500);
/// Log timestamps are microseconds of one clock; this absorbs rounding.
const LOG_TOLERANCE_US: i64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    KillMember,
    FreezeReplica,
    KillReplica,
    PartitionReplica,
    DeleteKey,
    RevokeLease,
}

/// Every kind, with its name in the summary.
const KINDS: [(Kind, &str); 6] = [
    (Kind::KillMember, "kill+restart etcd member"),
    (Kind::FreezeReplica, "freeze+thaw replica"),
    (Kind::KillReplica, "SIGKILL+restart replica"),
    (Kind::PartitionReplica, "partition+heal replica"),
    (Kind::DeleteKey, "delete key"),
    (Kind::RevokeLease, "revoke lease"),
];

impl Kind {
    fn name(self) -> &'static str {
        KINDS
            .iter()
            .find(|(k, _)| *k == self)
            .expect("every kind")
            .1
    }
}

#[derive(Debug)]
struct Fault {
    kind: Kind,
    target: String,
    injected: Instant,
    healed: Instant,
}

/// A pause of `lo..=hi` milliseconds.
fn millis(rng: &mut fastrand::Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.u64(lo..=hi))
}

/// One process's life of a replica: its log, and what was done to it.
#[derive(Clone)]
struct Incarnation {
    name: String,
    log: String,
    /// When it was SIGKILLed (Unix µs), if it was.
    killed_at: Option<i64>,
    /// (SIGSTOP, SIGCONT) in Unix µs.
    freezes: Vec<(i64, i64)>,
}

/// A replica: a name, a fixed HTTP address (kept across restarts, so its
/// probe thread carries on), and its own proxy to each etcd member.
struct Replica {
    id: String,
    addr: SocketAddr,
    proxies: Vec<TcpProxy>,
    sidecar: Sidecar,
    /// The current process's freezes (a killed one's go into `past` with it).
    freezes: Vec<(i64, i64)>,
    past: Vec<Incarnation>,
}

impl Replica {
    fn spawn(id: &str, addr: SocketAddr, proxies: &[TcpProxy], key: &str) -> Sidecar {
        let endpoints: Vec<String> = proxies.iter().map(TcpProxy::endpoint).collect();
        Sidecar::builder()
            .on(&endpoints.join(","), key, id)
            .ttl(TTL)
            .listen_elsewhere(addr)
            .env("ELECTOR_LISTEN", &addr.to_string())
            .start()
    }

    /// The current process as an [`Incarnation`], `#n` after `n` kills.
    fn incarnation(&self, killed_at: Option<i64>) -> Incarnation {
        Incarnation {
            name: format!("{}#{}", self.id, self.past.len()),
            log: self.sidecar.logs(),
            killed_at,
            freezes: self.freezes.clone(),
        }
    }

    /// SIGKILL, keeping its log and what was done to it, and a new process
    /// under the same name `pause` later.
    fn kill_and_restart(&mut self, pause: Duration, key: &str) {
        self.sidecar.kill();
        let killed = self.incarnation(Some(unix_micros(Instant::now())));
        self.past.push(killed);
        self.freezes.clear();
        std::thread::sleep(pause);
        self.sidecar = Replica::spawn(&self.id, self.addr, &self.proxies, key);
    }

    fn all_incarnations(&self) -> impl Iterator<Item = Incarnation> + '_ {
        self.past.iter().cloned().chain([self.incarnation(None)])
    }
}

fn current_leader(replicas: &[Replica]) -> Option<usize> {
    (0..replicas.len()).find(|&i| replicas[i].sidecar.is_leader())
}

/// The log terms of every incarnation, closed and adjusted as the module docs
/// say: a killed process's open term ends at the kill; a still-running one's
/// at `end`; a leader frozen past its deadline stopped claiming at the freeze.
fn all_terms(incarnations: &[Incarnation], end: i64) -> Vec<Term> {
    let mut out = Vec::new();
    for inc in incarnations {
        for mut t in terms(&inc.name, &inc.log) {
            if t.end.is_none() {
                t.end = Some(inc.killed_at.unwrap_or(end));
                let why = inc.killed_at.map_or("still leading", |_| "killed");
                t.end_reason = Some(why.into());
            }
            for &(f, thaw) in &inc.freezes {
                let logged = t.end.expect("closed above");
                if t.start < f
                    && t.end_reason.as_deref() == Some("lease_not_renewed")
                    && logged >= thaw
                    && logged - thaw < 1_000_000
                {
                    t.end = Some(f);
                }
            }
            out.push(t);
        }
    }
    out.sort_by_key(|t| t.start);
    out
}

#[test]
fn log_timestamps_parse_as_unix_microseconds() {
    assert_eq!(parse_rfc3339_micros("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        parse_rfc3339_micros("2026-11-27T11:18:51.499328Z"),
        Some(1_795_778_331_499_328)
    );
    assert_eq!(
        parse_rfc3339_micros("2026-11-27T12:18:51.5+01:00"),
        Some(1_795_778_331_500_000)
    );
}

/// The checkers themselves: a handoff (one stops, then the other starts) is
/// no overlap; a second leader while the first still answers 200 is one.
#[test]
fn the_overlap_checks_catch_two_leaders_and_accept_a_handoff() {
    let t0 = Instant::now();
    // Replicas a and b, each probe (sent at ms, status, token) answered a millisecond later.
    let record = |a: &[(u64, u16, i64)], b: &[(u64, u16, i64)]| {
        let probes = |of: &[(u64, u16, i64)]| {
            of.iter()
                .map(|&(sent, status, token)| Probe {
                    sent: t0 + Duration::from_millis(sent),
                    answered: t0 + Duration::from_millis(sent + 1),
                    status: Some(status),
                    token: (status == 200).then_some(token),
                })
                .collect()
        };
        ProbeRecord {
            names: vec!["a".into(), "b".into()],
            probes: vec![probes(a), probes(b)],
        }
    };
    let handoff = record(
        &[(90, 200, 1), (96, 200, 1), (102, 503, 0)],
        &[(92, 503, 0), (98, 503, 0), (104, 200, 2)],
    );
    assert!(handoff.overlaps().is_empty());
    let two_leaders = record(
        &[(90, 200, 1), (96, 200, 1), (102, 200, 1)],
        &[(92, 503, 0), (98, 200, 2), (104, 200, 2)],
    );
    assert_eq!(two_leaders.overlaps().len(), 1);

    let term = |replica: &str, start: i64, end: i64| Term {
        replica: replica.into(),
        fencing_token: None,
        start,
        end: Some(end),
        end_reason: None,
    };
    let apart = [term("a", 0, 100_000), term("b", 100_500, 200_000)];
    assert!(term_overlaps(&apart, LOG_TOLERANCE_US).is_empty());
    let overlapping = [term("a", 0, 100_000), term("b", 98_000, 200_000)];
    assert_eq!(term_overlaps(&overlapping, LOG_TOLERANCE_US).len(), 1);
}

#[test]
fn never_two_leaders_and_soon_a_leader_again_under_random_faults() {
    let secs = std::env::var("ELECTOR_CHAOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SECS);
    // Enough randomness for choosing faults; the seed is printed.
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut world = World::start();
    // Each replica keeps its address across restarts, so its probe thread carries on.
    let prober = Prober::start(
        world.replicas.iter().map(|r| &r.sidecar),
        Duration::from_millis(5),
    );
    let started = Instant::now();
    let mut failures = Vec::new();
    let faults = world.inject_faults(&mut rng, started + Duration::from_secs(secs), &mut failures);
    world.expect_one_leader_at_the_end(&mut failures);
    let ended = Instant::now();
    let mut o = Outcome {
        started,
        faults,
        record: prober.stop(),
        failures,
        operator_overlaps: Vec::new(),
    };
    o.failures.extend(world.exited());
    let lives: Vec<_> = world
        .replicas
        .iter()
        .flat_map(Replica::all_incarnations)
        .collect();
    let all = all_terms(&lives, unix_micros(ended));
    o.check_probe_overlaps();
    o.check_log_overlaps(&all);
    let terms_count = o.check_tokens(&all);
    let (worst, worst_at) = o.check_leaderless();
    o.check_panics(&lives);
    println!("chaos: {secs} s, seed {seed:#x}, TTL {TTL} s, {REPLICAS} replicas, 3 etcd members");
    o.print_summary(terms_count, worst, worst_at);
    assert!(
        o.failures.is_empty(),
        "chaos failures:\n{}",
        o.failures.join("\n")
    );
    assert!(o.faults.len() >= 3, "too few faults to mean anything");
}

/// The etcd cluster and the replicas under test.
struct World {
    cluster: EtcdCluster,
    key: String,
    replicas: Vec<Replica>,
}

impl World {
    /// Three members, [`REPLICAS`] replicas each behind its own proxies, and a first leader.
    fn start() -> World {
        let cluster = EtcdCluster::start(3);
        let key = unique_key("chaos");
        let replicas = (0..REPLICAS)
            .map(|i| {
                let id = format!("r{i}");
                let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
                let members = cluster.members.iter();
                let proxies: Vec<_> = members.map(|m| TcpProxy::start(m.client_addr())).collect();
                let sidecar = Replica::spawn(&id, addr, &proxies, &key);
                Replica {
                    id,
                    addr,
                    proxies,
                    sidecar,
                    freezes: Vec::new(),
                    past: Vec::new(),
                }
            })
            .collect();
        let world = World {
            cluster,
            key,
            replicas,
        };
        assert!(
            wait_until(SOON, || current_leader(&world.replicas).is_some()),
            "a first leader: {:?}",
            world.view()
        );
        world
    }

    /// What every replica's `/leader` says, for failure messages.
    fn view(&self) -> Vec<String> {
        leader_views(self.replicas.iter().map(|r| &r.sidecar))
    }

    /// Replicas that exited without being killed, with their logs' tails.
    fn exited(&mut self) -> Vec<String> {
        let exited = |r: &mut Replica| {
            let status = r.sidecar.try_wait()?;
            let log = tail(&r.sidecar.logs(), 30);
            Some(format!(
                "{} exited on its own ({status}); log:\n{log}",
                r.id
            ))
        };
        self.replicas.iter_mut().filter_map(exited).collect()
    }

    /// Random faults, one after another, until `deadline` or the first failure.
    fn inject_faults(
        &mut self,
        rng: &mut fastrand::Rng,
        deadline: Instant,
        failures: &mut Vec<String>,
    ) -> Vec<Fault> {
        let mut faults = Vec::new();
        while Instant::now() < deadline && failures.is_empty() {
            let kind = KINDS[rng.usize(..KINDS.len())].0;
            faults.push(self.inject(kind, rng));
            // A leader again soon after the heal; the exact figure comes from
            // the probes afterwards, this only stops a hopeless run early.
            let back = wait_until(3 * LEADERLESS_BOUND, || {
                current_leader(&self.replicas).is_some()
            });
            if !back {
                failures.push(format!(
                    "no leader {:?} after healing {:?}: {:?}",
                    3 * LEADERLESS_BOUND,
                    faults.last().expect("just pushed"),
                    self.view()
                ));
            }
            failures.extend(self.exited());
            std::thread::sleep(millis(rng, 200, 1500));
        }
        faults
    }

    /// One fault of `kind`, injected and healed. A replica-targeted fault
    /// hits the current leader 60% of the time.
    fn inject(&mut self, kind: Kind, rng: &mut fastrand::Rng) -> Fault {
        let target_replica = match current_leader(&self.replicas) {
            Some(l) if rng.f64() < 0.6 => l,
            _ => rng.usize(..REPLICAS),
        };
        let injected = Instant::now();
        let mut healed = injected;
        let cluster = &mut self.cluster;
        let target = match kind {
            Kind::KillMember => {
                let raft = (rng.f64() < 0.5).then(|| cluster.raft_leader()).flatten();
                let m = raft.unwrap_or_else(|| rng.usize(..cluster.members.len()));
                cluster.members[m].kill();
                std::thread::sleep(millis(rng, 500, 4000));
                cluster.members[m].launch();
                healed = Instant::now();
                format!(
                    "{}{}",
                    cluster.members[m].name(),
                    if raft.is_some() { " (raft leader)" } else { "" }
                )
            }
            Kind::FreezeReplica => {
                let r = &mut self.replicas[target_replica];
                // Both instants err on the side of a longer claim: taken
                // after the stop is sent, and before the thaw is.
                r.sidecar.signal(Signal::SIGSTOP);
                let stopped = unix_micros(Instant::now());
                std::thread::sleep(millis(rng, 500, (TTL + 2) * 1000));
                healed = Instant::now();
                r.sidecar.signal(Signal::SIGCONT);
                r.freezes.push((stopped, unix_micros(healed)));
                r.id.clone()
            }
            Kind::KillReplica => {
                let r = &mut self.replicas[target_replica];
                r.kill_and_restart(millis(rng, 300, 1500), &self.key);
                r.id.clone()
            }
            Kind::PartitionReplica => {
                let r = &self.replicas[target_replica];
                for p in &r.proxies {
                    p.partition();
                }
                std::thread::sleep(millis(rng, 500, (TTL + 2) * 1000));
                for p in &r.proxies {
                    p.heal();
                }
                healed = Instant::now();
                r.id.clone()
            }
            Kind::DeleteKey => {
                let _ = cluster.etcdctl(&["del", &self.key]);
                "key".to_string()
            }
            Kind::RevokeLease => {
                let lease = if rng.f64() < 0.7 {
                    cluster.get(&self.key).map(|kv| format!("{:x}", kv.lease))
                } else {
                    self.replicas[target_replica]
                        .sidecar
                        .try_get("/status")
                        .ok()
                        .and_then(|r| r.json()["lease_id"].as_str().map(String::from))
                };
                match lease {
                    Some(hex) => {
                        let _ = cluster.etcdctl(&["lease", "revoke", &hex]);
                        format!("lease {hex}")
                    }
                    None => "no lease".to_string(),
                }
            }
        };
        Fault {
            kind,
            target,
            injected,
            healed,
        }
    }

    /// The end: everything healed, exactly one leader; then a moment for the probes.
    fn expect_one_leader_at_the_end(&self, failures: &mut Vec<String>) {
        let final_leader = wait_until(3 * LEADERLESS_BOUND, || {
            self.replicas
                .iter()
                .filter(|r| r.sidecar.is_leader())
                .count()
                == 1
        });
        if !final_leader {
            failures.push(format!("no single leader at the end: {:?}", self.view()));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// What the run did and saw, the checks made on it, and what they found.
struct Outcome {
    started: Instant,
    faults: Vec<Fault>,
    record: ProbeRecord,
    failures: Vec<String>,
    /// Short overlaps right after a key delete or lease revoke: reported, not failed.
    operator_overlaps: Vec<String>,
}

impl Outcome {
    /// Whether `at` is within [`OPERATOR_WINDOW`] after a delete or revoke.
    fn after_operator(&self, at: Instant) -> bool {
        self.faults
            .iter()
            .filter(|f| matches!(f.kind, Kind::DeleteKey | Kind::RevokeLease))
            .any(|f| at >= f.injected && at <= f.injected + OPERATOR_WINDOW)
    }

    /// 1. Overlaps by probe.
    fn check_probe_overlaps(&mut self) {
        for o in self.record.overlaps() {
            let length =
                o.a.last
                    .sent
                    .min(o.b.last.sent)
                    .saturating_duration_since(o.at);
            let text = self.record.describe(&o, self.started);
            if self.after_operator(o.at) && length <= OPERATOR_BOUND {
                self.operator_overlaps.push(format!("probe: {text}"));
            } else {
                self.failures.push(format!("overlap by probe: {text}"));
            }
        }
    }

    /// 2. Overlaps by the replicas' own logs.
    fn check_log_overlaps(&mut self, all: &[Term]) {
        let started_us = unix_micros(self.started);
        for (a, b, overlap_us) in term_overlaps(all, LOG_TOLERANCE_US) {
            let at = self.started + Duration::from_micros((b.start - started_us).max(0) as u64);
            let text = format!(
                "{} (token {:?}, ended {:?}) and {} (token {:?}) overlap {} µs from {} ms",
                a.replica,
                a.fencing_token,
                a.end_reason,
                b.replica,
                b.fencing_token,
                overlap_us,
                (b.start - started_us) / 1000
            );
            let operator_reason = matches!(
                a.end_reason.as_deref(),
                Some("key_deleted" | "lease_gone" | "key_overwritten")
            );
            if operator_reason
                && self.after_operator(at)
                && Duration::from_micros(overlap_us as u64) <= OPERATOR_BOUND
            {
                self.operator_overlaps.push(format!("log: {text}"));
            } else {
                self.failures.push(format!("overlap by logs: {text}"));
            }
        }
    }

    /// 3. Fencing tokens grow from term to term; returns how many terms there were.
    fn check_tokens(&mut self, all: &[Term]) -> usize {
        let mut tokens: Vec<i64> = all.iter().filter_map(|t| t.fencing_token).collect();
        tokens.dedup();
        for w in tokens.windows(2) {
            if w[1] <= w[0] {
                self.failures
                    .push(format!("fencing token went from {} to {}", w[0], w[1]));
            }
        }
        tokens.len()
    }

    /// 4. Time without a leader outside faults: the worst stretch and where it began.
    fn check_leaderless(&mut self) -> (Duration, Instant) {
        // Every 200 (an instant) splits the run into stretches between two
        // of them; the faults cover theirs.
        let answers: Vec<Instant> = self.record.leader_probes().map(|p| p.answered).collect();
        let from = answers.iter().min().copied().unwrap_or(self.started);
        let to = answers.iter().max().copied().unwrap_or(from);
        let covered = answers.iter().map(|a| (*a, *a));
        let covered = covered.chain(self.faults.iter().map(|f| (f.injected, f.healed)));
        let stretches = gaps(from, to, covered).into_iter();
        let (worst, worst_at) = stretches
            .map(|(a, b)| (b - a, a))
            .max()
            .unwrap_or((Duration::ZERO, self.started));
        if worst > LEADERLESS_BOUND {
            self.failures.push(format!(
                "no leader for {} ms outside any fault (from {} ms into the run, after {}); bound {} ms",
                worst.as_millis(),
                self.ms(worst_at),
                self.cause(worst_at),
                LEADERLESS_BOUND.as_millis()
            ));
        }
        (worst, worst_at)
    }

    /// 5. Panics anywhere.
    fn check_panics(&mut self, lives: &[Incarnation]) {
        for inc in lives.iter().filter(|inc| inc.log.contains("panicked")) {
            let log = tail(&inc.log, 20);
            self.failures.push(format!("{} panicked:\n{log}", inc.name));
        }
    }

    /// The last fault injected before `at`, for messages.
    fn cause(&self, at: Instant) -> String {
        self.faults
            .iter()
            .rfind(|f| f.injected <= at + Duration::from_millis(10))
            .map_or("none".to_string(), |f| {
                let at = self.ms(f.injected);
                format!("{} {} at {at} ms", f.kind.name(), f.target)
            })
    }

    /// Milliseconds into the run, for messages.
    fn ms(&self, t: Instant) -> u128 {
        t.saturating_duration_since(self.started).as_millis()
    }

    fn print_summary(&self, terms_count: usize, worst: Duration, worst_at: Instant) {
        // Per kind: how many, and from each heal to the first 200 to a probe sent after it.
        let mut per_kind: BTreeMap<Kind, Vec<_>> = BTreeMap::new();
        for f in &self.faults {
            let after = self.record.leader_probes().filter(|p| p.sent >= f.healed);
            let first = after.map(|p| p.answered).min();
            let recovery = first.map(|at| (at.saturating_duration_since(f.healed), f));
            per_kind.entry(f.kind).or_default().extend(recovery);
        }
        let count = |kind: Kind| self.faults.iter().filter(|f| f.kind == kind).count();
        println!("  faults injected: {}", self.faults.len());
        println!(
            "    {:<26} {:>5}  {:>22}",
            "kind", "count", "leader after heal, ms"
        );
        for (kind, times) in &mut per_kind {
            times.sort_by_key(|(d, _)| *d);
            let median = times.get(times.len() / 2).map_or(0, |(d, _)| d.as_millis());
            let slowest = times.last().map_or(String::new(), |(d, f)| {
                let at = self.ms(f.injected);
                format!("max {:>5} ({} at {at} ms)", d.as_millis(), f.target)
            });
            let (name, n) = (kind.name(), count(*kind));
            println!("    {name:<26} {n:>5}  median {median:>5}, {slowest}");
        }
        println!(
            "  restarts: {} replica, {} etcd member; terms (distinct tokens): {terms_count}; probes: {}",
            count(Kind::KillReplica),
            count(Kind::KillMember),
            self.record.total()
        );
        println!(
            "  overlaps: {} (by probe or log, outside operator faults); after a key delete or lease revoke: {}",
            self.failures.iter().filter(|f| f.starts_with("overlap")).count(),
            self.operator_overlaps.len()
        );
        for o in &self.operator_overlaps {
            println!("    {o}");
        }
        println!(
            "  worst time without a leader outside a fault: {} ms (bound {} ms), after {}",
            worst.as_millis(),
            LEADERLESS_BOUND.as_millis(),
            self.cause(worst_at)
        );
        if !self.failures.is_empty() {
            for f in &self.faults {
                println!(
                    "    {:>7} ms {:<26} {} (healed +{} ms)",
                    self.ms(f.injected),
                    f.kind.name(),
                    f.target,
                    (f.healed - f.injected).as_millis()
                );
            }
        }
    }
}
