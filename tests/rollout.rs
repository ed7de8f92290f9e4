//! Issue 15: a rolling restart of five replicas (revision A) into five new
//! ones (revision B), in the patterns Kubernetes produces, for direct
//! succession, the lock protocol without it and the election protocol (the
//! simulation and its figures: `crates/elector-testkit/src/rollout.rs`).
//!
//! Every run must be safe: never two leaders at once (proven by the probes),
//! and exactly one leader at the end, a B. Direct succession must move
//! leadership exactly once; for the others how often it moves is printed:
//! `cargo test --test rollout -- --nocapture` (`ELECTOR_ROLLOUT_RUNS` for more runs).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use elector_testkit::observe::Probe;
use elector_testkit::rollout::{
    analyse, print_table, runs_from_env, simulate, Pattern, RolloutFigures, Round, Way, TTL_SECS,
};

/// Runs per case in CI.
const DEFAULT_RUNS: usize = 2;

/// One simulation at a time (each has eleven processes and a probe thread), so
/// that the figures of one are not the load of another.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run(pattern: Pattern, way: Way) -> Vec<RolloutFigures> {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let figures = simulate(pattern, way, runs_from_env(DEFAULT_RUNS));
    print_table(&figures);
    figures
}

/// What every way must guarantee in every run.
fn assert_safe(figures: &[RolloutFigures]) {
    for f in figures {
        let run = f.label();
        assert!(
            f.overlaps.is_empty(),
            "{run}: two replicas led at once:\n{}",
            f.overlaps.join("\n")
        );
        assert_eq!(
            f.final_leaders, 1,
            "{run}: {} replicas answer 200 at the end",
            f.final_leaders
        );
        let leader = f.final_leader.as_deref().unwrap_or_default();
        assert!(
            leader.starts_with("b-"),
            "{run}: the final leader {leader:?} is not a B"
        );
        assert!(
            f.leaders.last().map(String::as_str) == Some(leader),
            "{run}: the probes' last leader {:?} is not the final leader {leader:?}",
            f.leaders.last()
        );
        assert!(
            f.leader_changes >= 1,
            "{run}: every A left, yet leadership never moved ({:?})",
            f.leaders
        );
    }
}

/// Direct succession's promise: leadership moved exactly once in every run.
fn assert_moved_once(figures: &[RolloutFigures]) {
    for f in figures {
        let went = f.leaders.join(" > ");
        assert_eq!(f.leader_changes, 1, "{}: leadership went {went}", f.label());
    }
}

/// The probes' reading, on made-up rounds: two 200s in one round are an
/// overlap only when the first one is confirmed, same token, after the other.
#[test]
fn probe_rounds_prove_overlaps_not_handoffs() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let probe = |ms, status, token| Probe {
        sent: at(ms),
        answered: at(ms) + Duration::from_micros(300),
        status: Some(status),
        token: Some(token),
    };
    let names = vec!["a-0".to_string(), "b-0".to_string()];
    // A round at `ms`: targets 0 and 1 asked at ms and ms + 1, then `confirm` from ms + 2 on.
    let round = |ms: u64, first: [(u16, i64); 2], confirm: &[(usize, u16, i64)]| Round {
        start: at(ms),
        first: (first.iter().zip(ms..))
            .map(|(&(status, token), at)| probe(at, status, token))
            .collect(),
        confirm: (confirm.iter().zip(ms + 2..))
            .map(|(&(target, status, token), at)| (target, probe(at, status, token)))
            .collect(),
    };
    let rounds = [
        // a-0 leads.
        round(0, [(200, 1), (503, 1)], &[(0, 200, 1)]),
        // A handoff inside the round: a-0 no longer leads when asked again.
        round(10, [(200, 1), (200, 2)], &[(0, 503, 2), (1, 200, 2)]),
        // Nobody.
        round(20, [(503, 2), (503, 2)], &[]),
        // a-0 leads again and still does after b-0's 200: proven.
        round(30, [(200, 3), (200, 2)], &[(0, 200, 3), (1, 200, 2)]),
    ];
    let f = analyse(&rounds, &names, at(40));
    assert_eq!(f.leaders, ["a-0", "b-0", "a-0", "b-0"]);
    assert_eq!(f.handoffs_within_a_round, 1);
    assert_eq!(f.overlaps.len(), 1, "{:?}", f.overlaps);
    assert_eq!(f.leaderless, Duration::from_millis(10));
    assert_eq!(TTL_SECS.to_string(), Way::Lock.args(Pattern::OneAtATime)[1]);
}

/// Without direct succession, both patterns are safe all the same; how often leadership
/// moves is printed.
#[test]
fn every_rollout_with_the_lock_or_the_election_protocol_is_safe() {
    // Every case first, so that a failure shows every table.
    let mut figures = Vec::new();
    for pattern in Pattern::ALL {
        for way in [Way::Lock, Way::Election] {
            figures.extend(run(pattern, way));
        }
    }
    assert_safe(&figures);
}

/// Direct succession's promise: in every run, leadership moves exactly once,
/// from the A that led to a B.
#[test]
fn succession_moves_leadership_once() {
    // Both patterns first, so that a failure shows both tables.
    let figures: Vec<RolloutFigures> = Pattern::ALL
        .into_iter()
        .flat_map(|pattern| run(pattern, Way::Succession))
        .collect();
    assert_safe(&figures);
    assert_moved_once(&figures);
}

/// `--handoff-wait`'s trade-off, when the new pods start late: without it the leader hands
/// over to another old pod about to stop, and leadership moves several times; with it the
/// leader keeps the key (answering 503) until a new pod registers, and moves it once, at the
/// price of that time without a leader. Both tables are printed.
#[test]
fn the_handoff_wait_trades_time_without_a_leader_for_fewer_leader_changes() {
    let waiting = run(Pattern::SlowStart, Way::Succession);
    let not_waiting = run(Pattern::SlowStart, Way::SuccessionNoWait);
    assert_safe(&waiting);
    assert_safe(&not_waiting);
    assert_moved_once(&waiting);
}
