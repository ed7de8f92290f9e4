//! A rolling restart as a simulation (issue 15): `REPLICAS` sidecars of
//! revision A are replaced by as many of revision B, the way Kubernetes does
//! it, while every replica's `/leader` is probed; the figures are how often
//! leadership moved, how long nobody led, how many requests etcd served, and
//! whether two replicas ever led at once.
//!
//! # The patterns
//! * [`Pattern::OneAtATime`] (`maxSurge: 1, maxUnavailable: 0`): start one B,
//!   wait until it is ready and registered (`/status` state `follower` or
//!   `leader`), then stop one A and wait until it is gone. The A stopped is
//!   the leader when an A leads (adversarial for a random successor: leadership
//!   has to move at every such step), otherwise a random A.
//! * [`Pattern::AllAtOnce`] (leader-only readiness, `maxUnavailable: 100%`):
//!   spawn every B without waiting, and stop every A within [`STOP_SPREAD`].
//! * [`Pattern::SlowStart`]: the same, with the Bs [`SLOW_START`] late (an
//!   image pull, a slow application): what `--handoff-wait` is for.
//!
//! "Stop" is what a native sidecar sees: the app container stops first, and
//! the elector gets SIGTERM after the app's drain, uniformly random
//! 0..[`MAX_DRAIN`]. Signals and spawns come from the test thread (children
//! die when the thread that spawned them ends, see the crate docs); the one
//! helper thread, the [`Observer`], only does HTTP. The randomness is one
//! `fastrand::Rng` per [`simulate`] call, seeded at random or from
//! `ELECTOR_ROLLOUT_SEED`; the seed is printed.
//!
//! # What is measured
//! The observer polls every replica's `GET /leader` in rounds, every
//! [`PROBE_PERIOD`], on kept-alive connections: a first pass over all
//! replicas, then a confirming pass over those that answered 200.
//! * Leader changes: how often the identity answering 200 changes, in the
//!   order of the first-pass 200s.
//! * Time without a leader: from the first round that saw a leader to the end
//!   of the settle time, the stretches of rounds where nobody answered 200.
//!   Correct to about one round (the figures give the rounds made), so a
//!   handoff between two rounds counts 0; the logs give a finer figure, the
//!   time no replica's term (`became_leader` .. `stepped_down`) covers.
//! * Overlap, proven: two 200s in one round's first pass, and the one asked
//!   first still answered 200 with the same fencing token in the confirming
//!   pass, so its claim covered the other's 200 (see `observe.rs` on why one
//!   200 each proves nothing: a handoff takes milliseconds). Without that
//!   confirmation it is a handoff seen inside one round, counted apart.
//! * Overlap from the logs: the largest between terms of different replicas.
//!   Log lines are written a little after their change: reported, not asserted.
//! * etcd requests: [`EtcdCounts::requests`] (every method but
//!   `LeaseKeepAlive`) from before the first B starts to after the settle time,
//!   as the bench counts them.

use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fastrand::Rng;

use super::observe::{self, leader_views, unix_micros, Probe};
use super::{
    unique_key, wait_until, with_port_retries, ElectorArgs, Etcd, EtcdCounts, Sidecar,
    SidecarBuilder, Signal, SOON,
};

/// Replicas per revision.
pub const REPLICAS: usize = 5;
/// Lease TTL (`--ttl` in every way's arguments): long enough that a wait for an
/// expiry would show as seconds without a leader.
pub const TTL_SECS: u64 = 10;
/// How often the observer starts a round of probes.
pub const PROBE_PERIOD: Duration = Duration::from_millis(10);
/// The longest app drain before an A's elector gets SIGTERM.
pub const MAX_DRAIN: Duration = Duration::from_secs(2);
/// In [`Pattern::AllAtOnce`], every A starts stopping within this of the Bs' spawn.
pub const STOP_SPREAD: Duration = Duration::from_millis(100);
/// In [`Pattern::SlowStart`], how much later than the As' stop the Bs start.
pub const SLOW_START: Duration = Duration::from_millis(1500);
/// Probing goes on this long after the last A is gone and one B leads.
pub const SETTLE: Duration = Duration::from_millis(500);
/// The bound on an A's exit after SIGTERM: `--shutdown-timeout` plus slack.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Runs per (pattern, way) when `ELECTOR_ROLLOUT_RUNS` is set but not a number.
pub const MANY_RUNS: usize = 20;

/// Every way's: the TTL above, time to give the lease back, and no release
/// delay (there are no endpoints to drain).
const COMMON_ARGS: &str = "--ttl 10 --shutdown-timeout 10 --release-delay 0";

/// How Kubernetes replaces the replicas; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    OneAtATime,
    AllAtOnce,
    SlowStart,
}

impl Pattern {
    /// The two patterns the chart's readiness modes produce.
    pub const ALL: [Pattern; 2] = [Pattern::OneAtATime, Pattern::AllAtOnce];
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pattern::OneAtATime => "one-at-a-time",
            Pattern::AllAtOnce => "all-at-once",
            Pattern::SlowStart => "all-at-once, new pods 1.5 s late",
        })
    }
}

/// Which sidecar behaviour the replicas run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// `--no-succession`: on release the leader revokes and a random follower wins.
    Lock,
    /// `--protocol election`: etcd's concurrency.Election queue.
    Election,
    /// Direct succession, with the chart's `--handoff-wait` for the pattern.
    Succession,
    /// Direct succession with `--handoff-wait 0`.
    SuccessionNoWait,
}

impl Way {
    /// The sidecar's arguments for this way in this pattern (besides endpoints, key and id).
    pub fn args(self, pattern: Pattern) -> Vec<&'static str> {
        // The chart's wait per readiness mode: 3 s for leader-only (every old pod stops
        // while the new ones start), none for healthy (a new pod registers first).
        let chart_wait = match pattern {
            Pattern::AllAtOnce | Pattern::SlowStart => "3",
            Pattern::OneAtATime => "0",
        };
        let mut args: Vec<&str> = COMMON_ARGS.split(' ').collect();
        match self {
            Way::Lock => args.push("--no-succession"),
            Way::Election => args.extend(["--protocol", "election"]),
            Way::Succession => args.extend(["--handoff-wait", chart_wait]),
            Way::SuccessionNoWait => args.extend(["--handoff-wait", "0"]),
        }
        args
    }
}

impl fmt::Display for Way {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Way::Lock => "lock",
            Way::Election => "election",
            Way::Succession => "succession",
            Way::SuccessionNoWait => "succession, --handoff-wait 0",
        })
    }
}

/// `ELECTOR_ROLLOUT_RUNS` if a number, [`MANY_RUNS`] if set otherwise, else `default`.
pub fn runs_from_env(default: usize) -> usize {
    match std::env::var("ELECTOR_ROLLOUT_RUNS") {
        Ok(v) => v.trim().parse().unwrap_or(MANY_RUNS).max(1),
        Err(_) => default,
    }
}

/// `ELECTOR_ROLLOUT_SEED` (decimal or 0x-hex) if set, else a random seed.
fn seed() -> u64 {
    let from_env = std::env::var("ELECTOR_ROLLOUT_SEED").ok().and_then(|s| {
        let s = s.trim();
        match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        }
    });
    from_env.unwrap_or_else(|| fastrand::u64(..))
}

/// Uniform in `[0, max]`, to the microsecond.
fn up_to(rng: &mut Rng, max: Duration) -> Duration {
    Duration::from_micros(rng.u64(..=max.as_micros() as u64))
}

/// What one rollout showed. Times are from the probes unless named `log_`.
#[derive(Debug, Clone)]
pub struct RolloutFigures {
    pub pattern: Pattern,
    pub way: Way,
    /// The [`simulate`] call's seed and this run's index in it.
    pub seed: u64,
    pub run: usize,
    /// Identities in the order they answered 200 (consecutive repeats merged).
    pub leaders: Vec<String>,
    /// `leaders.len() - 1`.
    pub leader_changes: usize,
    /// Sum of the stretches without any 200, first leader .. end of settle.
    pub leaderless: Duration,
    /// The longest of those stretches.
    pub longest_leaderless: Duration,
    /// etcd gRPC messages received during the rollout, `LeaseKeepAlive` aside.
    pub etcd_requests: u64,
    /// The same, per method.
    pub etcd_requests_by_method: Vec<(String, u64)>,
    /// Proven overlaps (see the module docs), described.
    pub overlaps: Vec<String>,
    /// Rounds with two first-pass 200s not proven to overlap: handoffs faster
    /// than a round.
    pub handoffs_within_a_round: usize,
    /// Pairs of log terms of different replicas that overlap at all.
    pub log_overlaps: usize,
    /// The largest overlap of two replicas' log terms (negative: the
    /// smallest gap between a term's end and the next one's start).
    pub log_max_overlap: Option<f64>,
    /// The time no replica's log term covers, first B's start .. end of settle.
    pub log_leaderless: Duration,
    /// Replicas answering 200 at the end, with the leader's identity if one.
    pub final_leaders: usize,
    pub final_leader: Option<String>,
    /// Probe rounds made, and the time they spanned (A's start .. end of
    /// settle): their rate is the resolution of the times above.
    pub rounds: usize,
    pub observed: Duration,
    /// The rollout's length: first B .. end of settle.
    pub duration: Duration,
}

impl RolloutFigures {
    /// Which run this is, for failure messages: pattern, way, run and seed.
    pub fn label(&self) -> String {
        format!(
            "{} x {} run {} (seed {:#x})",
            self.pattern, self.way, self.run, self.seed
        )
    }

    /// The run's line in the printed table.
    pub fn line(&self) -> String {
        format!(
            "  run {:>2}: changes {} ({}), without a leader {:.0} ms (longest {:.0} ms; by the logs {:.1} ms), \
             etcd requests {} ({}), overlaps {} (handoffs within a round {}), log terms: {} overlapping, \
             max overlap {}, final leader {:?} of {}, {:.1} s ({} probe rounds in {:.1} s)",
            self.run,
            self.leader_changes,
            self.leaders.join(" > "),
            ms(self.leaderless),
            ms(self.longest_leaderless),
            ms(self.log_leaderless),
            self.etcd_requests,
            self.etcd_requests_by_method
                .iter()
                .map(|(m, n)| format!("{m} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.overlaps.len(),
            self.handoffs_within_a_round,
            self.log_overlaps,
            self.log_max_overlap
                .map_or("n/a".to_string(), |m| format!("{m:.1} ms")),
            self.final_leader,
            self.final_leaders,
            self.duration.as_secs_f64(),
            self.rounds,
            self.observed.as_secs_f64(),
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `runs` rollouts on one fresh etcd (a new key each run) from the calling
/// thread, printing each run's figures; panics, with the logs, when a step fails.
pub fn simulate(pattern: Pattern, way: Way, runs: usize) -> Vec<RolloutFigures> {
    let seed = seed();
    println!(
        "rollout {pattern} x {way}: {runs} runs, seed {seed:#x} (ELECTOR_ROLLOUT_SEED to repeat)"
    );
    let mut rng = Rng::with_seed(seed);
    let etcd = Etcd::start();
    (0..runs)
        .map(|run| {
            let f = run_once(&etcd, pattern, way, &mut rng, seed, run);
            println!("{}", f.line());
            f
        })
        .collect()
}

/// Prints the summary of one (pattern, way): leader changes min/median/max,
/// time without a leader p50/max, etcd requests median, overlaps.
pub fn print_table(figures: &[RolloutFigures]) {
    let Some(first) = figures.first() else {
        return;
    };
    let changes = spread(figures, |f| f.leader_changes as f64);
    let leaderless = spread(figures, |f| ms(f.leaderless));
    let log_leaderless = spread(figures, |f| ms(f.log_leaderless));
    let requests = spread(figures, |f| f.etcd_requests as f64);
    let overlaps: usize = figures.iter().map(|f| f.overlaps.len()).sum();
    let within: usize = figures.iter().map(|f| f.handoffs_within_a_round).sum();
    let log_overlaps: usize = figures.iter().map(|f| f.log_overlaps).sum();
    let log_max = figures
        .iter()
        .filter_map(|f| f.log_max_overlap)
        .reduce(f64::max);
    let longest = figures
        .iter()
        .map(|f| f.longest_leaderless)
        .max()
        .unwrap_or_default();
    println!("| pattern       | way        | runs | changes min/med/max | no leader p50/max ms | (by logs) p50/max ms | etcd req med | overlap |  log overlap (max) |");
    println!(
        "| {:<13} | {:<10} | {:>4} | {:>19} | {:>20} | {:>20} | {:>12} | {:>7} | {:>18} |",
        first.pattern.to_string(),
        first.way.to_string(),
        figures.len(),
        format!("{:.0}/{}/{:.0}", changes.0, changes.1, changes.2),
        format!("{:.0}/{:.0}", leaderless.1, leaderless.2),
        format!("{:.1}/{:.1}", log_leaderless.1, log_leaderless.2),
        requests.1,
        overlaps,
        format!(
            "{log_overlaps} ({})",
            log_max.map_or("n/a".into(), |m| format!("{m:.1} ms"))
        ),
    );
    println!(
        "  longest single stretch without a leader: {:.0} ms; handoffs seen within one probe round: {within}",
        ms(longest)
    );
}

/// (min, median, max) of `of` over the runs (a median of the middle two's
/// mean for an even count; whole or half figures print as they are).
fn spread(figures: &[RolloutFigures], of: impl Fn(&RolloutFigures) -> f64) -> (f64, f64, f64) {
    let mut v: Vec<f64> = figures.iter().map(of).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (v[0], (v[(n - 1) / 2] + v[n / 2]) / 2.0, v[n - 1])
}

/// One replica of the rollout; replica `j` of a [`World`] is the observer's target `j`.
struct Replica {
    sidecar: Sidecar,
    builder: SidecarBuilder,
}

/// One run: the replicas so far (the As, then the Bs), and the observer probing them.
struct World {
    /// Every replica's settings but its id and revision.
    base: SidecarBuilder,
    observer: Observer,
    replicas: Vec<Replica>,
}

impl World {
    /// Spawns replica `i` of `revision`, without waiting, and adds it to the
    /// observer's targets; returns its index.
    fn launch(&mut self, revision: char, i: usize) -> usize {
        let builder = self
            .base
            .clone()
            .id(&format!("{}-{i}", revision.to_ascii_lowercase()))
            // Which release the replica runs (the chart passes the pod-template-hash).
            .env("ELECTOR_REVISION", &revision.to_string());
        let sidecar = builder.clone().spawn();
        self.observer.add(sidecar.addr());
        self.replicas.push(Replica { sidecar, builder });
        self.replicas.len() - 1
    }

    /// Waits for replica `j`'s `/healthz`, respawning it on other ports if a
    /// port it was given was taken meanwhile (as `SidecarBuilder::start` does).
    fn ensure_up(&mut self, j: usize) {
        let (r, observer) = (&mut self.replicas[j], &self.observer);
        let mut respawn = false;
        with_port_retries(|| {
            if std::mem::replace(&mut respawn, true) {
                r.sidecar = r.builder.clone().spawn();
                observer.replace(j, r.sidecar.addr());
            }
            r.sidecar.wait_healthy()
        })
    }

    /// The Bs that answer 200.
    fn leading_bs(&self) -> Vec<String> {
        let leading = self.replicas[REPLICAS..]
            .iter()
            .filter(|r| r.sidecar.is_leader());
        leading.map(|r| r.sidecar.id().to_string()).collect()
    }

    /// Every replica's `/leader`, for failure messages.
    fn views(&self) -> String {
        leader_views(self.replicas.iter().map(|r| &r.sidecar)).join("\n")
    }
}

fn run_once(
    etcd: &Etcd,
    pattern: Pattern,
    way: Way,
    rng: &mut Rng,
    seed: u64,
    run: usize,
) -> RolloutFigures {
    let mut w = World {
        base: Sidecar::builder()
            .endpoints(&etcd.endpoint())
            .key(&unique_key(&format!("rollout-{pattern}-{way}")))
            .args(&way.args(pattern)),
        observer: Observer::start(),
        replicas: Vec::new(),
    };
    // Revision A, settled: one leader, every replica registered.
    for i in 0..REPLICAS {
        let j = w.launch('A', i);
        w.ensure_up(j);
    }
    for j in 0..REPLICAS {
        w.replicas[j].sidecar.wait_campaigned();
    }
    assert!(
        wait_until(SOON, || w.observer.has_seen_leader()),
        "no A led within {SOON:?} of their start:\n{}",
        w.views()
    );

    let before = EtcdCounts::scrape(etcd);
    let t_start = Instant::now();
    let start_wall = unix_micros(t_start);
    match pattern {
        Pattern::OneAtATime => one_at_a_time(&mut w, rng),
        Pattern::AllAtOnce => all_at_once(&mut w, rng, Duration::ZERO),
        Pattern::SlowStart => all_at_once(&mut w, rng, SLOW_START),
    }

    // Every A is gone: exactly one B must lead.
    let mut leaders = Vec::new();
    let settled = wait_until(SOON, || {
        leaders = w.leading_bs();
        leaders.len() == 1
    });
    assert!(
        settled,
        "{pattern} x {way}: no single B leader within {SOON:?} after the last A left (leading: {leaders:?}):\n{}",
        w.views()
    );
    thread::sleep(SETTLE);
    let after = EtcdCounts::scrape(etcd);
    let t_end = Instant::now();
    let rounds = w.observer.stop();
    let final_view = w.leading_bs();

    let names: Vec<String> = w.replicas.iter().map(|r| r.sidecar.id().into()).collect();
    let probes = analyse(&rounds, &names, t_end);
    let end_wall = unix_micros(t_end);
    let mut terms = Vec::new();
    for r in w.replicas.iter_mut() {
        let log = r.sidecar.logs();
        // A term still open ends now, or at the last line of a process that exited.
        let exited = !r.sidecar.is_running();
        let last_line = observe::json_lines(&log).last().filter(|_| exited);
        let end = last_line.map_or(end_wall, |(at, _)| at);
        for mut term in observe::terms(r.sidecar.id(), &log) {
            term.end.get_or_insert(end);
            terms.push(term);
        }
    }
    // Every pair, to report the closest two came when none overlapped.
    let pairs = observe::term_overlaps(&terms, i64::MIN);
    let log_overlaps = pairs.iter().filter(|(_, _, us)| *us > 0).count();
    let log_max_overlap = pairs
        .iter()
        .map(|(_, _, us)| *us as f64 / 1e3)
        .reduce(f64::max);
    let log_gaps = observe::gaps(
        start_wall,
        end_wall,
        terms.iter().map(|t| (t.start, t.end.unwrap_or(end_wall))),
    );
    let log_leaderless =
        Duration::from_micros(log_gaps.iter().map(|(a, b)| b - a).sum::<i64>() as u64);

    let by_method: Vec<(String, u64)> = after.since(&before).requests().into_iter().collect();

    RolloutFigures {
        pattern,
        way,
        seed,
        run,
        leader_changes: probes.leaders.len().saturating_sub(1),
        leaders: probes.leaders,
        leaderless: probes.leaderless,
        longest_leaderless: probes.longest_leaderless,
        etcd_requests: by_method.iter().map(|(_, d)| d).sum(),
        etcd_requests_by_method: by_method,
        overlaps: probes.overlaps,
        handoffs_within_a_round: probes.handoffs_within_a_round,
        log_overlaps,
        log_max_overlap,
        log_leaderless,
        final_leaders: final_view.len(),
        final_leader: (final_view.len() == 1).then(|| final_view[0].clone()),
        rounds: rounds.len(),
        observed: rounds
            .last()
            .map_or(Duration::ZERO, |r| r.start - rounds[0].start),
        duration: t_end - t_start,
    }
}

/// Maxsurge 1, maxUnavailable 0: one B up and registered, then one A down.
fn one_at_a_time(w: &mut World, rng: &mut Rng) {
    let mut running: Vec<usize> = (0..REPLICAS).collect();
    for i in 0..REPLICAS {
        let b = w.launch('B', i);
        w.ensure_up(b);
        w.replicas[b].sidecar.wait_campaigned();

        // The A to stop: the leader if an A leads, else a random A.
        let leading = running
            .iter()
            .position(|&j| w.replicas[j].sidecar.is_leader());
        let victim = running.remove(leading.unwrap_or_else(|| rng.usize(..running.len())));

        // The app container stops first; the elector gets SIGTERM after its drain.
        thread::sleep(up_to(rng, MAX_DRAIN));
        let a = &mut w.replicas[victim].sidecar;
        a.signal(Signal::SIGTERM);
        a.wait_exit(EXIT_TIMEOUT);
    }
}

/// maxUnavailable 100%: the As stop within [`STOP_SPREAD`], each SIGTERM after its own
/// drain, while every B is spawned at once, `late`.
fn all_at_once(w: &mut World, rng: &mut Rng, late: Duration) {
    let t0 = Instant::now();
    // `None` spawns the Bs; `Some(j)` stops A number j.
    let mut schedule = vec![(t0 + late, None)];
    for j in 0..REPLICAS {
        let stop = up_to(rng, STOP_SPREAD) + up_to(rng, MAX_DRAIN);
        schedule.push((t0 + stop, Some(j)));
    }
    schedule.sort();
    for (at, step) in schedule {
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        match step {
            Some(j) => w.replicas[j].sidecar.signal(Signal::SIGTERM),
            None => {
                for i in 0..REPLICAS {
                    w.launch('B', i);
                }
            }
        }
    }
    for b in REPLICAS..w.replicas.len() {
        w.ensure_up(b);
    }
    for a in w.replicas[..REPLICAS].iter_mut() {
        a.sidecar.wait_exit(EXIT_TIMEOUT);
    }
}

/// One round: every target once, in order (`first[i]` is target `i`), then
/// again those that answered 200 (target, probe).
#[derive(Debug, Clone)]
pub struct Round {
    pub start: Instant,
    pub first: Vec<Probe>,
    pub confirm: Vec<(usize, Probe)>,
}

/// What the observer's thread shares with the test thread.
#[derive(Default)]
struct Shared {
    targets: Mutex<Vec<SocketAddr>>,
    stop: AtomicBool,
    seen_leader: AtomicBool,
}

/// Polls every target's `/leader` in rounds from one thread that does nothing
/// but HTTP; the test thread adds targets as replicas start.
pub struct Observer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Vec<Round>>>,
}

impl Observer {
    pub fn start() -> Observer {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let thread = thread::Builder::new()
            .name("rollout-observer".into())
            .spawn(move || observe(&theirs))
            .expect("spawning the observer thread");
        Observer {
            shared,
            thread: Some(thread),
        }
    }

    pub fn add(&self, addr: SocketAddr) {
        self.shared
            .targets
            .lock()
            .expect("observer targets")
            .push(addr);
    }

    /// Points target `i` at a new address (a respawned replica).
    pub fn replace(&self, i: usize, addr: SocketAddr) {
        self.shared.targets.lock().expect("observer targets")[i] = addr;
    }

    /// Whether any round has seen a 200.
    pub fn has_seen_leader(&self) -> bool {
        self.shared.seen_leader.load(Ordering::SeqCst)
    }

    /// Stops the thread and returns its rounds.
    pub fn stop(&mut self) -> Vec<Round> {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .expect("the observer thread panicked")
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn observe(shared: &Shared) -> Vec<Round> {
    let mut conns: Vec<Option<(SocketAddr, TcpStream)>> = Vec::new();
    let mut rounds = Vec::new();
    let mut next = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        let addrs = shared.targets.lock().expect("observer targets").clone();
        conns.resize_with(addrs.len(), || None);
        let start = Instant::now();
        let first: Vec<Probe> = (0..addrs.len())
            .map(|i| probe(addrs[i], &mut conns[i]))
            .collect();
        let confirm: Vec<(usize, Probe)> = (0..addrs.len())
            .filter(|&i| first[i].is_leader())
            .map(|i| (i, probe(addrs[i], &mut conns[i])))
            .collect();
        if !confirm.is_empty() {
            shared.seen_leader.store(true, Ordering::SeqCst);
        }
        rounds.push(Round {
            start,
            first,
            confirm,
        });
        next += PROBE_PERIOD;
        let now = Instant::now();
        match next.checked_duration_since(now) {
            Some(wait) => thread::sleep(wait),
            // Behind (a slow round): start the next one now, on a fresh schedule.
            None => next = now,
        }
    }
    rounds
}

/// `GET /leader` on the target's kept-alive connection; a failure on a reused
/// connection is retried once on a new one (the server may have closed it).
fn probe(addr: SocketAddr, conn: &mut Option<(SocketAddr, TcpStream)>) -> Probe {
    let sent = Instant::now();
    let (connect, io) = (Duration::from_millis(500), Duration::from_secs(2));
    // The connection is kept per target address (a replaced replica gets a new one).
    let mut stream = conn.take().filter(|(a, _)| *a == addr).map(|(_, s)| s);
    let reused = stream.is_some();
    let mut result = observe::probe_once(addr, &mut stream, connect, io);
    if result.is_none() && reused {
        stream = None;
        result = observe::probe_once(addr, &mut stream, connect, io);
    }
    if result.is_some() {
        *conn = stream.map(|s| (addr, s));
    }
    let (status, token) = result.unwrap_or((None, None));
    Probe {
        sent,
        answered: Instant::now(),
        status,
        token,
    }
}

/// What the rounds say.
pub struct ProbeFigures {
    pub leaders: Vec<String>,
    pub leaderless: Duration,
    pub longest_leaderless: Duration,
    pub overlaps: Vec<String>,
    pub handoffs_within_a_round: usize,
}

/// Reads the rounds (see the module docs); `names[i]` is target `i`, `end`
/// closes a stretch without a leader still open at the last round.
pub fn analyse(rounds: &[Round], names: &[String], end: Instant) -> ProbeFigures {
    let name = |i: usize| names.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
    let mut leaders: Vec<String> = Vec::new();
    let mut overlaps = Vec::new();
    let mut within = 0;
    let origin = rounds.first().map_or(end, |r| r.start);
    let at = |t: Instant| ms(t.saturating_duration_since(origin));

    for round in rounds {
        let first = round.first.iter().enumerate();
        let mut led: Vec<(usize, &Probe)> = first.filter(|(_, p)| p.is_leader()).collect();
        led.sort_by_key(|(_, p)| p.answered);
        leaders.extend(led.iter().map(|&(target, _)| name(target)));
        if led.len() >= 2 {
            let mut proven = false;
            for (k, &(pt, p)) in led.iter().enumerate() {
                let confirmed = round
                    .confirm
                    .iter()
                    .any(|&(ct, c)| ct == pt && c.is_leader() && c.token == p.token);
                if !confirmed {
                    continue;
                }
                for &(qt, q) in &led[k + 1..] {
                    proven = true;
                    overlaps.push(format!(
                        "{} (token {:?}) led from its 200 at {:.1} ms through its confirming 200, \
                         and {} (token {:?}) answered 200 at {:.1}..{:.1} ms in between",
                        name(pt),
                        p.token,
                        at(p.answered),
                        name(qt),
                        q.token,
                        at(q.sent),
                        at(q.answered)
                    ));
                }
            }
            if !proven {
                within += 1;
            }
        }
    }
    leaders.dedup();
    // A round with a leader covers the time until the next round starts.
    let starts: Vec<Instant> = rounds.iter().map(|r| r.start).chain([end]).collect();
    let led_rounds = (0..rounds.len()).filter(|&k| rounds[k].first.iter().any(Probe::is_leader));
    let covered: Vec<(Instant, Instant)> = led_rounds.map(|k| (starts[k], starts[k + 1])).collect();
    let from = covered.first().map_or(end, |(start, _)| *start);
    let gaps: Vec<Duration> = observe::gaps(from, end, covered)
        .iter()
        .map(|(a, b)| *b - *a)
        .collect();
    ProbeFigures {
        leaders,
        leaderless: gaps.iter().sum(),
        longest_leaderless: gaps.iter().max().copied().unwrap_or_default(),
        overlaps,
        handoffs_within_a_round: within,
    }
}
