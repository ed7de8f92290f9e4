//! Issue 15: a rolling restart of five replicas (revision A) into five new
//! ones (revision B), in the two patterns Kubernetes produces, for the lock
//! and the election protocol. See `support/rollout.rs` for the simulation and
//! what each figure means.
//!
//! Every run must be safe: never two leaders at once (proven by the probes),
//! and exactly one leader at the end, a B. How often leadership moves is only
//! printed for the lock and the election (at least once: every A leaves);
//! bringing it to one move is what direct succession is for, and its test is
//! ignored until it lands.
//!
//! Runs per case: 2, or `ELECTOR_ROLLOUT_RUNS` (20 when set but not a
//! number). The cases run one at a time, so that the figures of one are not
//! the load of another: `cargo test --test rollout -- --nocapture`.

mod support;

use std::sync::Mutex;

use support::rollout::{print_table, runs_from_env, simulate, Pattern, RolloutFigures, Way};

/// Runs per case in CI.
const DEFAULT_RUNS: usize = 2;

/// One simulation at a time (each has eleven processes and a probe thread).
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
        assert!(
            f.overlaps.is_empty(),
            "{} x {} run {} (seed {:#x}): two replicas led at once:\n{}",
            f.pattern,
            f.way,
            f.run,
            f.seed,
            f.overlaps.join("\n")
        );
        assert_eq!(
            f.final_leaders, 1,
            "{} x {} run {} (seed {:#x}): {} replicas answer 200 at the end",
            f.pattern, f.way, f.run, f.seed, f.final_leaders
        );
        let leader = f.final_leader.as_deref().unwrap_or_default();
        assert!(
            leader.starts_with("b-"),
            "{} x {} run {} (seed {:#x}): the final leader {leader:?} is not a B",
            f.pattern,
            f.way,
            f.run,
            f.seed
        );
        assert!(
            f.leaders.last().map(String::as_str) == Some(leader),
            "{} x {} run {} (seed {:#x}): the probes' last leader {:?} is not the final leader {leader:?}",
            f.pattern,
            f.way,
            f.run,
            f.seed,
            f.leaders.last()
        );
        assert!(
            f.leader_changes >= 1,
            "{} x {} run {} (seed {:#x}): every A left, yet leadership never moved ({:?})",
            f.pattern,
            f.way,
            f.run,
            f.seed,
            f.leaders
        );
    }
}

#[test]
fn one_at_a_time_lock() {
    assert_safe(&run(Pattern::OneAtATime, Way::Lock));
}

#[test]
fn one_at_a_time_election() {
    assert_safe(&run(Pattern::OneAtATime, Way::Election));
}

#[test]
fn all_at_once_lock() {
    assert_safe(&run(Pattern::AllAtOnce, Way::Lock));
}

#[test]
fn all_at_once_election() {
    assert_safe(&run(Pattern::AllAtOnce, Way::Election));
}

/// Direct succession's promise: in every run, leadership moves exactly once,
/// from the A that led to a B.
#[test]
#[ignore = "until direct succession lands"]
fn succession_moves_leadership_once() {
    // Both patterns first, so that a failure shows both tables.
    let figures: Vec<RolloutFigures> = Pattern::ALL
        .into_iter()
        .flat_map(|pattern| run(pattern, Way::Succession))
        .collect();
    assert_safe(&figures);
    for f in &figures {
        assert_eq!(
            f.leader_changes,
            1,
            "{} x succession run {} (seed {:#x}): leadership went {}",
            f.pattern,
            f.run,
            f.seed,
            f.leaders.join(" > ")
        );
    }
}
