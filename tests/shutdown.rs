//! Shutdown bounds: `--shutdown-timeout` bounds the whole exit, HTTP drain and
//! stuck blocking work included; a second signal exits at once; the release
//! delay holds only a leader's key; the exit log says what became of the lease.

use std::time::{Duration, Instant};

use elector_testkit::*;
use serde_json::Value;

/// SIGTERMs `sidecar` and waits up to `bound` for the exit: its code and how long it took.
fn sigterm_exit(sidecar: &mut Sidecar, bound: Duration) -> (Option<i32>, Duration) {
    let asked = Instant::now();
    sidecar.signal(Signal::SIGTERM);
    let status = sidecar.wait_exit(bound);
    (status.code(), asked.elapsed())
}

/// The second SIGTERM (the first one's shutdown still running), which must end the
/// process at once; returns its exit code.
fn second_sigterm(sidecar: &mut Sidecar) -> Option<i32> {
    let (code, took) = sigterm_exit(sidecar, Duration::from_secs(5));
    // The promise is 100 ms; the bound only catches a wait on the drain or the revoke.
    assert!(
        took < Duration::from_secs(1),
        "exited at once, took {took:?}"
    );
    code
}

/// The exit lines (`"message": "stopped"`) of a JSON log.
fn exit_lines(logs: &str) -> Vec<Value> {
    let lines = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok());
    lines.filter(|e| e["message"] == "stopped").collect()
}

/// A sidecar whose leader file cannot be written: the temporary file it writes
/// first is a FIFO nobody reads, so the write blocks a blocking-pool thread
/// for ever, as a write to a stuck volume would.
fn sidecar_with_a_stuck_leader_file(
    etcd: &Etcd,
    key: &str,
    shutdown_timeout: &str,
) -> (Sidecar, tempfile::TempDir) {
    let dir = test_tempdir("stuck-leader-file");
    let fifo = dir.path().join(".leader.json.tmp");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let file = dir.path().join("leader.json").display().to_string();
    let sidecar = Sidecar::builder()
        .on(&etcd.endpoint(), key, "stuck")
        .args(&["--ttl", "30", "--shutdown-timeout", shutdown_timeout])
        .args(&["--leader-file", &file])
        .start();
    sidecar.wait_leading("the sidecar leads");
    (sidecar, dir)
}

#[test]
fn a_stuck_blocking_write_cannot_hold_the_exit_past_the_shutdown_timeout() {
    let (etcd, key) = etcd_and_key("stuck_exit");
    let (mut sidecar, _dir) = sidecar_with_a_stuck_leader_file(&etcd, &key, "2");

    let (code, took) = sigterm_exit(&mut sidecar, Duration::from_secs(8));
    assert_eq!(code, Some(0), "a clean exit after the handoff");
    assert!(
        took < Duration::from_millis(2_500),
        "the exit fits the 2 s shutdown timeout (plus scheduling slack), took {took:?}"
    );
    assert_eq!(
        etcd.get(&key),
        None,
        "the lease was revoked: the key is gone"
    );
}

#[test]
fn a_second_signal_exits_at_once_even_with_stuck_blocking_work() {
    let (etcd, key) = etcd_and_key("stuck_second_signal");
    // A long release delay keeps the first signal's handoff busy.
    let mut sidecar = Sidecar::builder()
        .on(&etcd.endpoint(), &key, "slow")
        .args(&["--ttl", "30", "--shutdown-timeout", "20"])
        .args(&["--release-delay", "15"])
        .start();
    sidecar.wait_leading("it leads");

    sidecar.signal(Signal::SIGTERM);
    assert!(
        wait_until(SOON, || sidecar.get("/leader").0 == 503),
        "the first signal ends the claim at once"
    );
    let code = second_sigterm(&mut sidecar);
    assert_eq!(code, Some(130), "the second signal exits 130");
}

#[test]
fn a_second_signal_exits_at_once_while_a_blocking_write_hangs() {
    let (etcd, key) = etcd_and_key("stuck_abort");
    let (mut sidecar, _dir) = sidecar_with_a_stuck_leader_file(&etcd, &key, "20");
    sidecar.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    let code = second_sigterm(&mut sidecar);
    assert!(
        matches!(code, Some(0 | 130)),
        "exits (0 if the handoff already finished, else 130): {code:?}"
    );
}

#[test]
fn an_endpoint_name_that_does_not_resolve_cannot_hold_the_exit() {
    // `.invalid` never resolves (RFC 6761); the client keeps retrying it.
    let unresolvable = |name: &str, shutdown_timeout: &str| {
        let endpoint = "http://etcd-elector-test.invalid:2379";
        let args = ["--ttl", "10", "--shutdown-timeout", shutdown_timeout];
        Sidecar::start(endpoint, &unique_key(name), "lost", &args)
    };
    let mut sidecar = unresolvable("unresolvable", "2");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sidecar.get("/leader").0, 503, "no etcd, no leadership");
    let (code, took) = sigterm_exit(&mut sidecar, Duration::from_secs(8));
    assert_eq!(code, Some(0));
    assert!(
        took < Duration::from_millis(2_500),
        "the exit fits the 2 s shutdown timeout, took {took:?}"
    );

    let mut sidecar = unresolvable("unresolvable_abort", "20");
    sidecar.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    let code = second_sigterm(&mut sidecar);
    assert!(matches!(code, Some(0 | 130)), "{code:?}");
}

#[test]
fn the_release_delay_holds_only_the_leaders_key() {
    let etcd = Etcd::start();
    let name = unique_key("release_delay_follower");
    let args = [
        ["--protocol", "election", "--ttl", "30"],
        ["--release-delay", "8", "--shutdown-timeout", "10"],
    ]
    .concat();
    let leader = Sidecar::start(&etcd.endpoint(), &name, "first", &args);
    leader.wait_leading("first leads");
    let mut next = Sidecar::start(&etcd.endpoint(), &name, "second", &args);
    let prefix = format!("{name}/");
    let candidates = || {
        etcd.ctl(&["get", "--prefix", &prefix, "--print-value-only"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(SOON, || candidates() == ["first", "second"]),
        "second waits next in line: {:?}",
        candidates()
    );

    let (code, took) = sigterm_exit(&mut next, SOON);
    assert_eq!(code, Some(0));
    assert_eq!(candidates(), ["first"], "the follower's key is gone");
    assert!(
        took < Duration::from_secs(4),
        "a follower does not wait out the 8 s release delay, took {took:?}"
    );
}

#[test]
fn the_exit_log_says_when_the_revoke_failed() {
    let (mut etcd, key) = etcd_and_key("revoke_failed");
    let args = ["--ttl", "30", "--shutdown-timeout", "3"];
    let mut sidecar = Sidecar::start(&etcd.endpoint(), &key, "orphan", &args);
    sidecar.wait_leading("it leads");
    etcd.kill();

    assert_eq!(sigterm_exit(&mut sidecar, SOON).0, Some(0));
    let logs = sidecar.logs();
    let stopped = exit_lines(&logs);
    assert_eq!(stopped.len(), 1, "one exit line:\n{}", tail(&logs, 20));
    assert_ne!(
        stopped[0]["lease"], "revoked",
        "etcd is down, so the lease was not revoked: {}",
        stopped[0]
    );
    assert!(
        matches!(
            stopped[0]["lease"].as_str(),
            Some("revoke_failed" | "timed_out")
        ),
        "{}",
        stopped[0]
    );
}

#[test]
fn the_exit_log_says_the_lease_was_revoked_after_a_clean_handoff() {
    let (etcd, key) = etcd_and_key("revoke_ok");
    let mut sidecar = Sidecar::start(&etcd.endpoint(), &key, "clean", &["--ttl", "30"]);
    sidecar.wait_leading("it leads");
    assert_eq!(sigterm_exit(&mut sidecar, SOON).0, Some(0));
    let logs = sidecar.logs();
    assert!(
        exit_lines(&logs).iter().any(|e| e["lease"] == "revoked"),
        "{}",
        tail(&logs, 20)
    );
}
