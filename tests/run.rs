//! `etcd-elector run -- COMMAND`: the command runs only while this process
//! holds the lock, in its own process group, and is dead before anyone else
//! can hold the lock: when it exits the lock goes to a waiting run (or the
//! lease is revoked) once its group is dead, and when the lock is lost (deleted,
//! or etcd silent) the whole group gets SIGTERM, then SIGKILL after the grace
//! period, early enough to beat the lease's expiry.
//!
//! The commands are small shell scripts that leave evidence in their working
//! directory (their pid, their environment, a wall-clock timestamp) and wait
//! for a `release` file from the test; see `elector_testkit::job`.

use std::time::{Duration, Instant};

use elector_testkit::job::{
    children_of, keys_under, process_alive, process_group, process_state, stamp, unix_nanos,
    wait_queued, write_file, Etcdctl, Job, JobBuilder, Workdir, WAIT_FOR_RELEASE,
};
use elector_testkit::tls::auth_etcd;
use elector_testkit::*;
use procfs::{process::Status, FromRead};

/// Long enough that a takeover inside a test's bounds can only come from a
/// revoke or a deletion, never from a lease expiring.
const LONG_TTL: u64 = 30;

/// The default `--lost-exit-code`.
const LOST: i32 = 75;

/// A run that loses the lock only when a test takes it.
fn run_on(etcd: &Etcd, key: &str, id: &str) -> JobBuilder {
    Job::builder().on(&etcd.endpoint(), key, id).ttl(LONG_TTL)
}

/// A command that records its environment in `env`, then waits for `release`.
fn env_then_release() -> String {
    format!("{}; {WAIT_FOR_RELEASE}", write_file("env", "env"))
}

/// Lets a command waiting on [`WAIT_FOR_RELEASE`] finish; its run exits 0.
fn release(job: &mut Job) {
    job.touch("release");
    job.assert_exit(0, SOON, "released");
}

/// A command with a grandchild, which write their pids to `pid` and `gc` and wait.
fn family() -> String {
    format!(
        "sleep 300 & {}; {}; wait",
        write_file("gc", "echo $!"),
        write_file("pid", "echo $$")
    )
}

/// [`family`] ignoring SIGTERM (and so does the grandchild: SIG_IGN is inherited).
fn stubborn() -> String {
    format!("trap '' TERM; {}", family())
}

/// A run whose TTL and grace period are the timing its test is about.
fn with_grace(endpoint: &str, key: &str, id: &str, ttl: u64, grace: &str) -> JobBuilder {
    Job::builder()
        .on(endpoint, key, id)
        .ttl(ttl)
        .args(&["--grace-period", grace])
}

/// A run of a [`family`] or [`stubborn`] command, once it runs: (run, command, grandchild).
fn spawn_family(builder: JobBuilder, command: String) -> (Job, i32, i32) {
    let mut job = builder.shell(&command).spawn();
    let pid = job.wait_for_number("pid", SOON);
    let gc = job.wait_for_number("gc", SOON);
    (job, pid, gc)
}

fn all_alive(pids: &[i32]) -> bool {
    pids.iter().all(|&p| process_alive(p))
}

/// None of `pids` is alive: killed, and at most a zombie.
fn all_dead(pids: &[i32]) -> bool {
    !pids.iter().any(|&p| process_alive(p))
}

/// When all of `pids` were first seen dead, as an `Instant` and in [`unix_nanos`].
fn seen_dead(pids: &[i32], timeout: Duration) -> Option<(Instant, i128)> {
    wait_for(timeout, || {
        all_dead(pids).then(|| (Instant::now(), unix_nanos()))
    })
}

/// A run that holds the free key until the test releases it.
fn holder(etcd: &Etcd, key: &str, id: &str) -> Job {
    let mut job = run_on(etcd, key, id).shell(&env_then_release()).spawn();
    job.wait_for_file("env", SOON);
    job
}

/// A run waiting behind `holder` (seen on its `/leader`) whose command stamps
/// `started`, then runs `then`.
fn waiter(builder: JobBuilder, then: &str, holder: &str) -> Job {
    let job = builder
        .listen()
        .shell(&format!("{}; {then}", stamp("started")))
        .spawn();
    let mut last = None;
    assert!(
        wait_until(SOON, || {
            last = job.try_get("/leader").ok().map(|r| r.body);
            last.as_deref()
                .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
                .is_some_and(|v| v["leader"] == holder && v["is_leader"] == false)
        }),
        "{} waits behind {holder}; last /leader: {last:?}\n{}",
        job.name(),
        job.describe()
    );
    job
}

/// A run whose command stamps `term_at` when SIGTERM reaches it, then exits
/// with `code`; returned once the command runs, with the lease holding the key.
fn term_stamper(etcd: &Etcd, key: &str, id: &str, code: i32) -> (Job, i64) {
    let mut job = run_on(etcd, key, id)
        .shell(&format!(
            "trap '{}; exit {code}' TERM; {}; sleep 60 & wait",
            stamp("term_at"),
            write_file("pid", "echo $$")
        ))
        .spawn();
    job.wait_for_file("pid", SOON);
    let held = etcd.get(key);
    let held = held.unwrap_or_else(|| panic!("{id} holds the key\n{}", job.describe()));
    (job, held.lease)
}

/// How long after the [`unix_nanos`] or [`stamp`] `from` the one `to` came (zero if before).
fn nanos_between(from: i128, to: i128) -> Duration {
    Duration::from_nanos((to - from).max(0) as u64)
}

/// Checks that `second`'s command started after `first` stamped `name`, marking `what`.
fn started_after(second: &mut Job, first: &mut Job, name: &str, what: &str) {
    let before: i128 = first.wait_for_number(name, SOON);
    let started: i128 = second.wait_for_number("started", SOON);
    assert!(
        started > before,
        "the second command started {} ms after {what}",
        (started - before) / 1_000_000
    );
}

/// An [`env_then_release`] run with `--protocol election` (a queue of keys
/// under `name/`, as `etcdctl lock` keeps).
fn election_run(etcd: &Etcd, name: &str, id: &str) -> Job {
    run_on(etcd, name, id)
        .args(&["--protocol", "election"])
        .shell(&env_then_release())
        .spawn()
}

/// A `--try` run whose command leaves `ran` behind, so a test can tell it never ran.
fn try_run(endpoint: &str, key: &str, id: &str) -> JobBuilder {
    Job::builder()
        .on(endpoint, key, id)
        .arg("--try")
        .shell("touch ran")
}

/// Runs `tried` (a [`try_run`]) while `holder` holds its key: it gives up at once
/// with `code`, never runs its command, and a log line names the holder.
fn held_off(tried: JobBuilder, code: i32, holder: &str) {
    let started = Instant::now();
    let mut tried = tried.spawn();
    tried.assert_exit(code, SOON, "--try exits with the held exit code");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "--try gives up at once, took {took:?}"
    );
    assert!(!tried.has("ran"), "the command never ran");
    assert!(
        tried.log_events().iter().any(|e| e["holder"] == holder),
        "a log line names the holder {holder}\n{}",
        tried.describe()
    );
}

#[test]
fn try_against_another_run_exits_with_the_held_code_and_names_it() {
    let (etcd, key) = etcd_and_key("try_vs_run");
    let mut holder = holder(&etcd, &key, "job-holder");

    for (extra, code) in [(&[][..], 0), (&["--held-exit-code", "3"][..], 3)] {
        let tried = try_run(&etcd.endpoint(), &key, "job-try").args(extra);
        held_off(tried, code, "job-holder");
    }
    assert!(holder.is_running(), "the holder is undisturbed");
    assert_eq!(etcd.get(&key).expect("held").value, "job-holder");
    release(&mut holder);
}

#[test]
fn try_against_a_plain_client_exits_with_the_held_code_and_runs_once_it_is_gone() {
    let (etcd, key) = etcd_and_key("try_vs_go");
    // The classic transaction, from etcd's own Go client.
    let go = GoLocker::run(&etcd.endpoint(), &key, "go-holder", LONG_TTL);
    assert!(go.held(), "the Go client takes the free key: {}", go.result);

    let tried = try_run(&etcd.endpoint(), &key, "job-try").args(&["--held-exit-code", "1"]);
    held_off(tried, 1, "go-holder");
    let kv = etcd.get(&key).expect("the Go client still holds the key");
    assert_eq!(kv.value, "go-holder", "the Go client still holds the key");

    assert!(go.release().success());
    let mut ran = try_run(&etcd.endpoint(), &key, "job-try")
        .shell("touch ran; exit 4")
        .spawn();
    ran.assert_exit(4, SOON, "with the key free, --try runs the command");
    assert!(ran.has("ran"));
    assert_eq!(etcd.get(&key), None, "and releases the key on exit");
}

#[test]
fn waits_for_the_holder_then_runs_passes_the_exit_code_through_and_releases() {
    let (etcd, key) = etcd_and_key("waits");
    let mut first = run_on(&etcd, &key, "job-first")
        .shell(&format!(
            "touch holding; {WAIT_FOR_RELEASE}; {}; exit 7",
            stamp("done")
        ))
        .spawn();
    first.wait_for_file("holding", SOON);
    let first_kv = etcd.get(&key).expect("the first run holds the key");

    let mut second = waiter(run_on(&etcd, &key, "job-second"), "exit 9", "job-first");
    // Waiting is not polling: nothing changes until the holder lets go.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!second.has("started"), "the command waits for the holder");

    first.touch("release");
    first.assert_exit(7, SOON, "the command's exit code passes through");
    // Right after the exit the old lease no longer holds the key.
    if let Some(kv) = etcd.get(&key) {
        assert_ne!(
            kv.lease, first_kv.lease,
            "the first run's lease was revoked"
        );
        assert_eq!(kv.value, "job-second");
    }
    started_after(&mut second, &mut first, "done", "the first finished");
    second.assert_exit(9, SOON, "the second command's code");
    assert_eq!(etcd.get(&key), None, "the key is gone right after the exit");
}

/// One transaction hands the lock on: the key is never absent (its create revision
/// stays), and the next command gets a larger fencing token and starts only once the
/// whole group of the first is dead (here a grandchild that dies 0.5 s after its SIGTERM).
#[test]
fn a_finished_run_hands_the_lock_to_a_waiting_run_once_its_group_is_dead() {
    let (etcd, key) = etcd_and_key("run_handoff");
    let slow_grandchild = format!(
        "(trap 'sleep 0.5; {}; exit 0' TERM; sleep 300 & wait) &",
        stamp("gc_dead")
    );
    let mut first = run_on(&etcd, &key, "job-first")
        .shell(&format!("{slow_grandchild} {}", env_then_release()))
        .spawn();
    first.wait_for_file("env", SOON);
    let held = etcd.get(&key).expect("the first run holds the key");
    let mut second = waiter(
        run_on(&etcd, &key, "job-second"),
        &env_then_release(),
        "job-first",
    );

    release(&mut first);
    let env = second.wait_for_env("env");
    started_after(
        &mut second,
        &mut first,
        "gc_dead",
        "the first group's last process began to die",
    );
    let now = etcd.get(&key).expect("the key is held");
    assert_eq!(
        (now.value.as_str(), now.create_revision),
        ("job-second", held.create_revision),
        "handed over, never absent"
    );
    assert_ne!(now.lease, held.lease, "under the second run's lease");
    let token = fencing_token(&env);
    assert_eq!(
        token, now.mod_revision,
        "the token is the transfer's revision"
    );
    assert!(token > held.create_revision, "and larger than the first's");
    release(&mut second);
    assert_eq!(etcd.get(&key), None, "nobody waits: the last run revokes");
}

#[test]
fn the_command_runs_in_its_own_process_group_with_stdio_passed_through() {
    let (etcd, key) = etcd_and_key("stdio");
    let mut job = run_on(&etcd, &key, "job-stdio")
        .stdin("hello from stdin\n")
        .shell(&format!(
            "read line; echo \"stdout got: $line\"; echo 'to stderr' >&2; {}; {WAIT_FOR_RELEASE}",
            write_file("pid", "echo $$")
        ))
        .spawn();
    let pid = job.wait_for_number("pid", SOON);
    let run_pid = job.pid().as_raw();
    assert_eq!(
        process_group(pid),
        Some(pid),
        "the command leads a process group of its own"
    );
    assert_ne!(process_group(run_pid), Some(pid), "run is not in it");
    release(&mut job);
    assert!(
        job.stdout().contains("stdout got: hello from stdin"),
        "stdin and stdout are the command's: {:?}",
        job.stdout()
    );
    assert!(
        job.stderr().lines().any(|l| l == "to stderr"),
        "stderr is the command's too\n{}",
        job.describe()
    );
}

/// The command starts with no signal blocked and SIGTERM not ignored: one
/// that inherited a blocked SIGTERM would see only the SIGKILL at the end of its grace
/// period, and a shell's `wait` with SIGCHLD blocked never returns.
#[test]
fn the_command_starts_with_no_signal_blocked() {
    let (etcd, key) = etcd_and_key("sigmask");
    let mut job = run_on(&etcd, &key, "job-sigmask")
        .command(&["cat", "/proc/self/status"])
        .spawn();
    job.assert_exit(0, SOON, "cat exits 0");
    let status = Status::from_read(job.stdout().as_bytes()).expect("cat printed a status");
    assert_eq!(status.sigblk, 0, "nothing blocked");
    // Dispositions come from whoever started the test (`nohup` ignores SIGHUP
    // on purpose), but SIGTERM, the one `run` stops the command with, is live.
    assert_eq!(status.sigign & (1 << (15 - 1)), 0, "SIGTERM is not ignored");
}

#[test]
fn a_command_killed_by_a_signal_exits_128_plus_its_number() {
    let (etcd, key) = etcd_and_key("signalled");
    let mut job = run_on(&etcd, &key, "job-killed")
        .shell("kill -KILL $$")
        .spawn();
    job.assert_exit(128 + 9, SOON, "the command died by SIGKILL");
    assert_eq!(etcd.get(&key), None, "the key is gone right after the exit");
}

#[test]
fn a_grandchild_left_behind_dies_before_the_lock_is_released() {
    let (etcd, key) = etcd_and_key("leftover");
    let mut job = run_on(&etcd, &key, "job-leftover")
        .shell(&format!(
            "sleep 300 & {}; exit 3",
            write_file("gc", "echo $!")
        ))
        .spawn();
    job.assert_exit(3, SOON, "the command's code");
    let gc: i32 = job.wait_for_number("gc", SOON);
    assert!(
        !process_alive(gc),
        "the grandchild {gc} was killed with its group"
    );
    assert_eq!(etcd.get(&key), None, "the key is gone right after the exit");
}

/// What an operator can do to a held lock from outside: each sends the command
/// SIGTERM within a second, and run exits with `--lost-exit-code`, saying why.
#[test]
fn deleting_overwriting_or_revoking_the_lock_sends_sigterm_to_the_command_within_a_second() {
    let etcd = Etcd::start();
    // Each intrusion, and the value left under the key: run leaves a key it no longer holds alone.
    for (intrusion, left) in [
        ("delete", None),
        ("overwrite", Some("intruder")),
        ("revoke", None),
    ] {
        let key = unique_key(intrusion);
        let (mut job, lease) = term_stamper(&etcd, &key, "job-intruded", 0);
        let intruded_at = unix_nanos();
        match intrusion {
            "delete" => etcd.ctl(&["del", &key]),
            "overwrite" => etcd.ctl(&["put", &key, "intruder"]),
            _ => etcd.ctl(&["lease", "revoke", &format!("{lease:x}")]),
        };
        let after = nanos_between(intruded_at, job.wait_for_number("term_at", SOON));
        println!("{intrusion}: SIGTERM reached the command {after:?} later");
        assert!(
            after < Duration::from_secs(1),
            "{intrusion}: the command got SIGTERM within a second: {after:?}"
        );
        job.assert_exit(
            LOST,
            SOON,
            &format!("{intrusion}: a lost lock exits with --lost-exit-code"),
        );
        let lost = job.log_events().into_iter().find(|e| {
            e["level"] == "WARN"
                && e["reason"].is_string()
                && e["message"].as_str().is_some_and(|m| m.contains("lost"))
        });
        assert!(
            lost.is_some(),
            "{intrusion}: a log line says why\n{}",
            job.describe()
        );
        assert_eq!(
            etcd.get(&key).map(|kv| kv.value).as_deref(),
            left,
            "{intrusion}: what is left under the key"
        );
    }
}

#[test]
fn a_command_ignoring_sigterm_and_its_grandchild_are_killed_after_the_grace_period() {
    let (etcd, key) = etcd_and_key("stubborn");
    let grace = Duration::from_secs(2);
    // grace 2 + keep-alive 2 + margin 0.6 < TTL 6.
    // SIG_IGN is inherited: the background sleep ignores SIGTERM too.
    let (mut job, pid, gc) = spawn_family(
        with_grace(&etcd.endpoint(), &key, "job-stubborn", 6, "2"),
        stubborn(),
    );
    assert!(all_alive(&[pid, gc]));

    let deleted = Instant::now();
    etcd.ctl(&["del", &key]);
    std::thread::sleep(grace / 2);
    assert!(
        all_alive(&[pid, gc]),
        "both ignore SIGTERM and live until the grace period ends"
    );
    assert!(
        wait_until(grace + Duration::from_secs(3), || all_dead(&[pid, gc])),
        "the command and its grandchild are killed after the grace period\n{}",
        job.describe()
    );
    let took = deleted.elapsed();
    println!("SIGKILL came {took:?} after the delete (grace period {grace:?})");
    assert!(
        took >= grace - Duration::from_millis(200),
        "SIGKILL waited for the grace period: {took:?}"
    );
    job.assert_exit(LOST, SOON, "the lock was lost");
}

#[test]
fn a_silent_partition_kills_the_command_before_another_run_starts_its_own() {
    let (etcd, key) = etcd_and_key("partition");
    let proxy = TcpProxy::start(etcd.client_addr());
    // TTL 6: keep-alive every 2 s, margin 0.6 s; grace 1 s (the rule needs < 3.4 s).
    // The command ignores SIGTERM, so only the SIGKILL at the end of the grace
    // period stops it: the latest a group can die.
    let (mut first, pid, gc) = spawn_family(
        with_grace(&proxy.endpoint(), &key, "job-partitioned", 6, "1"),
        stubborn(),
    );
    let next = with_grace(&etcd.endpoint(), &key, "job-next", 6, "1");
    let mut second = waiter(next, "true", "job-partitioned");

    let partitioned = Instant::now();
    proxy.partition();
    let (dead, dead_at) = seen_dead(&[pid, gc], Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "the partitioned command is still alive 20 s into the partition\n{}",
            first.describe()
        )
    });
    // The second run takes over once the first lease expires.
    let started: i128 = second.wait_for_number("started", SOON);
    // The orphaned grandchild is reaped by run itself (a child subreaper, as
    // PID 1 would be), not left a zombie, while run is still giving up its
    // lease through the partition.
    let mut run_alive = false;
    let reaped = wait_until(Duration::from_secs(1), || {
        run_alive = first.is_running();
        process_state(gc).is_none()
    });
    assert!(
        reaped,
        "the orphaned grandchild {gc} is still a zombie a second after the kill"
    );
    if !run_alive {
        println!("run exited before its grandchild was seen reaped");
    }
    let margin_ms = (started - dead_at) as f64 / 1e6;
    println!(
        "partition: first command group dead {:?} after the partition; \
         second command started {margin_ms:.0} ms after that",
        dead - partitioned
    );
    assert!(
        started > dead_at,
        "the first command group was dead before the second command started \
         (margin {margin_ms:.0} ms)"
    );
    first.assert_exit(LOST, Duration::from_secs(15), "the lock was lost");
    second.assert_exit(0, SOON, "the second command's code");
}

#[test]
fn sigterm_to_run_is_forwarded_and_a_waiting_run_starts_within_a_second() {
    let (etcd, key) = etcd_and_key("sigterm_run");
    let (mut first, lease) = term_stamper(&etcd, &key, "job-first", 42);
    let mut second = waiter(run_on(&etcd, &key, "job-second"), "exit 0", "job-first");

    let signalled = unix_nanos();
    first.signal(Signal::SIGTERM);
    first.assert_exit(42, SOON, "run exits with the command's code");
    assert!(first.has("term_at"), "the command got the SIGTERM");
    assert_eq!(etcd.lease_ttl(lease), None, "the lease was revoked");
    let after = nanos_between(signalled, second.wait_for_number("started", SOON));
    println!("the waiting run started its command {after:?} after the SIGTERM");
    assert!(
        after < Duration::from_secs(1),
        "the waiting run starts within a second: {after:?}"
    );
    second.assert_exit(0, SOON, "the second command's code");
}

#[test]
fn a_second_signal_kills_the_group_and_exits_at_once_even_while_etcd_does_not_answer() {
    for (second, partitioned) in [(Signal::SIGINT, false), (Signal::SIGTERM, true)] {
        let case = format!("{second:?}, etcd partitioned: {partitioned}");
        let (etcd, key) = etcd_and_key("second_signal");
        let proxy = TcpProxy::start(etcd.client_addr());
        // A long grace period (20 s + keep-alive 20 s + margin 5 s < TTL 60) and shutdown
        // timeout that only the second signal can cut short.
        let (mut job, pid, gc) = spawn_family(
            with_grace(&proxy.endpoint(), &key, "job-impatient", 60, "20")
                .args(&["--shutdown-timeout", "30"]),
            stubborn(),
        );
        if partitioned {
            // etcd stops answering: giving the lease back could take the whole shutdown timeout.
            proxy.partition();
        }
        // Half a second after the first SIGTERM all live on, in the grace period.
        job.signal(Signal::SIGTERM);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            job.is_running() && all_alive(&[pid, gc]),
            "{case}: in the grace period\n{}",
            job.describe()
        );
        let signalled = Instant::now();
        job.signal(second);
        assert!(
            wait_until(Duration::from_secs(1), || all_dead(&[pid, gc])),
            "{case}: the second signal kills the group at once\n{}",
            job.describe()
        );
        // Generous against scheduling, far below the 20 s grace and 30 s shutdown timeout.
        let what = format!("{case}: the command died by SIGKILL");
        job.assert_exit(128 + 9, Duration::from_secs(3), &what);
        let took = signalled.elapsed();
        println!("{case}: run exited {took:?} after the second signal");
        assert!(
            took < Duration::from_secs(3),
            "{case}: run exits at once, took {took:?}"
        );
        if !partitioned {
            assert_eq!(etcd.get(&key), None, "the lease was still given back");
        }
    }
}

#[test]
fn sigterm_before_the_command_starts_exits_143_without_running_it() {
    let (etcd, key) = etcd_and_key("early_sigterm");
    let mut holder = holder(&etcd, &key, "job-holder");
    let mut waiting = waiter(run_on(&etcd, &key, "job-waiting"), "exit 0", "job-holder");

    waiting.signal(Signal::SIGTERM);
    waiting.assert_exit(143, SOON, "128 + SIGTERM");
    assert!(!waiting.has("started"), "the command never ran");
    assert_eq!(etcd.get(&key).expect("held").value, "job-holder");
    release(&mut holder);
}

/// `name` from `env` lines, or a panic naming what the command saw.
fn var(env: &[(String, String)], name: &str) -> String {
    env.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{name} missing from the command's environment: {env:?}"))
}

/// The command's `ELECTOR_FENCING_TOKEN`, which must be a number.
fn fencing_token(env: &[(String, String)]) -> i64 {
    let token = var(env, "ELECTOR_FENCING_TOKEN");
    token
        .parse()
        .unwrap_or_else(|e| panic!("ELECTOR_FENCING_TOKEN {token:?} is not a number: {e}"))
}

#[test]
fn the_fencing_token_is_the_revision_a_run_got_the_key_at_and_grows_from_holder_to_holder() {
    let (etcd, key) = etcd_and_key("fencing");
    let mut tokens = Vec::new();
    let mut previous: Option<Job> = None;
    for id in ["job-a", "job-b", "job-c"] {
        let mut job = run_on(&etcd, &key, id).shell(&env_then_release()).spawn();
        if let Some(mut prev) = previous.take() {
            // Queued behind the previous holder before it lets go.
            std::thread::sleep(Duration::from_millis(300));
            assert!(!job.has("env"), "{id} waits for the holder");
            release(&mut prev);
        }
        let env = job.wait_for_env("env");
        let kv = etcd.get(&key).expect("the running job's key");
        assert_eq!(kv.value, id);
        let token = fencing_token(&env);
        // Created by the first, handed over to the others: the revision of
        // that write either way.
        assert_eq!(
            token, kv.mod_revision,
            "the token is the revision the key became this run's"
        );
        assert_eq!(var(&env, "ETCD_LOCK_REV"), token.to_string());
        assert_eq!(var(&env, "ELECTOR_KEY"), key);
        assert_eq!(var(&env, "ETCD_LOCK_KEY"), key);
        assert_eq!(var(&env, "ELECTOR_ID"), id);
        tokens.push(token);
        previous = Some(job);
    }
    release(&mut previous.expect("the last job"));
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "the fencing token grows from one holder to the next: {tokens:?}"
    );
}

/// `run --endpoints <nothing listening> --key /k ARGS` with bad arguments: exit 2,
/// one line on stderr naming the problem, and the command never runs.
#[test]
fn bad_arguments_are_refused_with_exit_2_and_one_line_naming_the_problem() {
    let dir = test_tempdir("refused");
    let marker = dir.path().join("ran");
    let marker = marker.to_string_lossy();
    let endpoint = dead_endpoint();
    // The arguments, whether a command follows them, and what the line must name.
    let cases: [(&[&str], bool, &[&str]); 7] = [
        // No command after the separator, or no separator at all.
        (&["--"], false, &["command"]),
        (&[], false, &["command"]),
        // A grace period without room inside the TTL: 5 + 2 (keep-alive) + 0.6 (margin) >= 6.
        (
            &["--ttl", "6", "--grace-period", "5"],
            true,
            &["--grace-period", "ttl"],
        ),
        // The default grace period (5 s) does not fit the smallest TTLs either.
        (&["--ttl", "2"], true, &["--grace-period"]),
        (&["--bogus"], true, &["--bogus"]),
        (&["--try-timeout", "3"], true, &["--try-timeout", "--try"]),
        (&["--try", "--try-timeout", "0"], true, &["--try-timeout"]),
    ];
    for (args, with_command, must_name) in cases {
        let mut all = vec!["run", "--endpoints", &endpoint, "--key", "/k"];
        all.extend_from_slice(args);
        if with_command {
            all.extend(["--", "touch", &marker]);
        }
        refused(&all, &[], must_name);
        assert!(
            !dir.path().join("ran").exists(),
            "the command never ran: {all:?}"
        );
    }
}

#[test]
fn with_the_election_protocol_run_queues_with_etcdctl_lock() {
    let (etcd, name) = etcd_and_key("run_election");
    let prefix = format!("{name}/");
    let mut job = election_run(&etcd, &name, "job-elected");
    let env = job.wait_for_env("env");
    let keys = keys_under(&etcd, &prefix);
    assert_eq!(keys.len(), 1, "one candidate key under {prefix}: {keys:?}");
    let (own_key, kv) = &keys[0];
    assert_eq!(kv.value, "job-elected");
    let token = var(&env, "ELECTOR_FENCING_TOKEN");
    assert_eq!(
        token,
        kv.create_revision.to_string(),
        "token = own key's create revision"
    );
    assert_eq!(var(&env, "ETCD_LOCK_REV"), token);
    assert_eq!(
        own_key,
        &format!("{prefix}{:x}", kv.lease),
        "<name>/<lease hex>"
    );

    let mut ctl = Etcdctl::lock_rev(&etcd.endpoint(), &name);
    let tried = try_run(&etcd.endpoint(), &name, "job-try").args(&["--protocol", "election"]);
    held_off(tried, 0, "job-elected");

    ctl.assert_waits("run holds the election");
    release(&mut job);
    // etcdctl lock runs its command once run is done.
    ctl.assert_turn_after(kv.create_revision);
    assert_eq!(
        keys_under(&etcd, &prefix),
        vec![],
        "nothing left under {prefix}"
    );
}

#[test]
fn with_the_election_protocol_etcd_lock_key_names_the_candidate_key_as_etcdctl_lock_does() {
    let (etcd, name) = etcd_and_key("run_election_env");
    let prefix = format!("{name}/");
    // What `etcdctl lock` gives its command, for comparison.
    let mut ctl = Etcdctl::lock_sh(&etcd.endpoint(), &name, &write_file("env", "env"));
    assert!(ctl.wait_exit(SOON).success(), "stderr: {}", ctl.stderr());
    let ctl_key = var(&ctl.wait_for_env("env"), "ETCD_LOCK_KEY");
    assert!(
        ctl_key.starts_with(&prefix),
        "etcdctl exports its own key: {ctl_key}"
    );

    let mut job = election_run(&etcd, &name, "job-elected");
    let env = job.wait_for_env("env");
    let keys = keys_under(&etcd, &prefix);
    let (own_key, kv) = keys.first().expect("run's candidate key");
    assert_eq!(var(&env, "ETCD_LOCK_REV"), kv.create_revision.to_string());
    release(&mut job);
    assert_eq!(
        var(&env, "ETCD_LOCK_KEY"),
        *own_key,
        "like `etcdctl lock` (which exported {ctl_key}), ETCD_LOCK_KEY names the key \
         whose create revision is ETCD_LOCK_REV"
    );
}

#[test]
fn resign_is_refused_while_run_holds_the_lock_and_changes_nothing() {
    let (etcd, key) = etcd_and_key("run_resign");
    let mut job = run_on(&etcd, &key, "job-resign")
        .admin()
        .shell(&format!(
            "{}; {WAIT_FOR_RELEASE}",
            write_file("pid", "echo $$")
        ))
        .spawn();
    let pid = job.wait_for_number("pid", SOON);
    let held = etcd.get(&key).expect("run holds the key");

    let resp = http::simple(job.admin_addr(), "POST", "/resign", b"").expect("POST /resign");
    assert_eq!(
        resp.status,
        409,
        "resign is refused in run mode: {resp:?}\n{}",
        job.describe()
    );
    let body = resp.json();
    assert_eq!(body["resigned"], false);
    let error = body["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("run") && error.contains("SIGTERM"),
        "the body says why and what to do instead: {error:?}"
    );
    // Nothing changed: the lease still holds the key, the command still runs.
    std::thread::sleep(Duration::from_millis(500));
    assert!(process_alive(pid), "the command was left alone");
    assert!(job.is_running(), "run keeps going\n{}", job.describe());
    assert_eq!(
        etcd.get(&key).map(|kv| kv.lease),
        Some(held.lease),
        "the lease still holds the key"
    );
    release(&mut job);
}

#[test]
fn a_run_frozen_past_its_termination_time_still_kills_the_group_by_the_claim_deadline() {
    let (etcd, key) = etcd_and_key("frozen_run");
    let proxy = TcpProxy::start(etcd.client_addr());
    // TTL 15: claim 13.5 s after a keep-alive's send time, keep-alive every 5 s;
    // grace 8 s (8 + 5 + 1.5 < 15). The command ignores SIGTERM, so only the
    // SIGKILL stops it.
    let grace = Duration::from_secs(8);
    let (mut job, pid, gc) = spawn_family(
        with_grace(&proxy.endpoint(), &key, "job-frozen", 15, "8").listen(),
        stubborn(),
    );
    // No renewal reaches etcd from now on: the claim the run holds is its last.
    proxy.partition();
    // The claim deadline run reports: the latest of a few `now + claim_seconds_left`.
    let claim = (0..5)
        .filter_map(|_| {
            let left = job.try_get("/status").ok()?.json()["claim_seconds_left"].as_f64()?;
            let claim = Instant::now() + Duration::from_secs_f64(left.max(0.0));
            std::thread::sleep(Duration::from_millis(20));
            Some(claim)
        })
        .max()
        .unwrap_or_else(|| panic!("run reports its claim in /status\n{}", job.describe()));
    // Frozen (a stalled VM, a throttled container) until it is too late to give
    // the command its whole grace period before the claim ends.
    job.signal(Signal::SIGSTOP);
    let resume_at = claim - grace / 2;
    std::thread::sleep(resume_at.saturating_duration_since(Instant::now()));
    job.signal(Signal::SIGCONT);
    let (dead_at, _) = seen_dead(&[pid, gc], Duration::from_secs(30)).unwrap_or_else(|| {
        panic!(
            "the command group is still alive 30 s after the run resumed\n{}",
            job.describe()
        )
    });
    let late = dead_at.saturating_duration_since(claim);
    println!(
        "resumed {:?} before the claim deadline; group dead {late:?} after it",
        grace / 2
    );
    // SIGKILL is due at the claim deadline; the slack is for polling.
    assert!(
        late < Duration::from_millis(500),
        "the group is dead by the claim deadline, not {late:?} after it\n{}",
        job.describe()
    );
    job.assert_exit(LOST, Duration::from_secs(30), "the lock was lost");
}

#[test]
fn a_killed_run_takes_its_command_and_grandchild_with_it_within_a_second() {
    let (etcd, key) = etcd_and_key("run_killed");
    // Not PID 1: nothing but run itself can see to its command when it dies.
    let (job, pid, gc) = spawn_family(run_on(&etcd, &key, "job-killed-run"), family());
    let run_pid = job.pid().as_raw();
    // Whatever run started to look after the command dies too.
    let helpers = children_of(run_pid);
    assert!(all_alive(&[pid, gc]));

    job.signal(Signal::SIGKILL);
    let killed = Instant::now();
    let all = [&[pid, gc][..], &helpers].concat();
    let gone = wait_until(Duration::from_secs(1), || all_dead(&all));
    let left: Vec<i32> = all.into_iter().filter(|&p| process_alive(p)).collect();
    println!(
        "command {pid}, grandchild {gc} and helpers {helpers:?} dead {:?} after run's SIGKILL",
        killed.elapsed()
    );
    assert!(
        gone,
        "within a second of run's death its command {pid}, grandchild {gc} and helpers \
         {helpers:?} are dead; still alive: {left:?}\n{}",
        job.describe()
    );
}

/// The documented exit code of `--try` when etcd gives no verdict within `--try-timeout`.
const TRY_TIMED_OUT: i32 = 69;

#[test]
fn try_gives_up_with_exit_69_when_etcd_does_not_answer_within_the_try_timeout() {
    // An explicit bound, then the default: one TTL (4 s here; grace 1 + 1.33 + 0.4 < 4).
    for (extra, ttl) in [(&["--try-timeout", "2"][..], "10"), (&[][..], "4")] {
        let started = Instant::now();
        let mut job = try_run(&dead_endpoint(), &unique_key("try_dead"), "job-try-dead")
            .args(&["--ttl", ttl, "--grace-period", "1"])
            .args(extra)
            .spawn();
        let what = format!("--try against a dead endpoint ({extra:?}, TTL {ttl})");
        job.assert_exit(TRY_TIMED_OUT, Duration::from_secs(20), &what);
        println!(
            "extra args {extra:?} (TTL {ttl}): gave up after {:?}",
            started.elapsed()
        );
        assert!(!job.has("ran"), "the command never ran");
        let said = job.log_events().into_iter().any(|e| {
            e["level"] == "ERROR"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("--try-timeout"))
        });
        assert!(said, "an error line says why\n{}", job.describe());
    }
}

#[test]
fn the_etcd_password_never_reaches_the_command() {
    let auth = auth_etcd(60);
    let dir = test_tempdir("run_password");
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{}\n", auth.password)).expect("writing the password file");
    let file = file.display().to_string();
    // The password in the environment, then its file named in the environment.
    for (name, value) in [
        ("ELECTOR_ETCD_PASSWORD", auth.password.as_str()),
        ("ELECTOR_ETCD_PASSWORD_FILE", file.as_str()),
    ] {
        let key = format!("{}run-{}", auth.prefix, random_suffix());
        let mut job = run_on(&auth.etcd, &key, "job-secret")
            .args(&["--etcd-user", &auth.user])
            .env(name, value)
            .shell(&write_file("env", "env"))
            .spawn();
        job.assert_exit(0, SOON, name);
        // The command ran under the lock.
        fencing_token(&job.wait_for_env("env"));
        let env = job
            .read("env")
            .expect("the command recorded its environment");
        assert!(
            !env.contains(&auth.password),
            "{name}: the password is not in the command's environment"
        );
        for secret in ["ELECTOR_ETCD_PASSWORD", "ELECTOR_ETCD_PASSWORD_FILE"] {
            assert!(
                !env.lines().any(|l| l.starts_with(&format!("{secret}="))),
                "{name}: {secret} is removed from the command's environment"
            );
        }
    }
}

/// What `etcdctl lock` running [`env_then_release`] exported, and the create revision
/// of the key it holds (read while it does): then it lets go.
fn etcdctl_lock_record(etcd: &Etcd, ctl: &mut Etcdctl) -> (i64, i64) {
    let env = ctl.wait_for_env("env");
    let held = etcd
        .get(&var(&env, "ETCD_LOCK_KEY"))
        .expect("etcdctl's key");
    ctl.touch("release");
    assert!(ctl.wait_exit(SOON).success(), "stderr: {}", ctl.stderr());
    let rev = var(&env, "ETCD_LOCK_REV").parse().expect("a revision");
    (rev, held.create_revision)
}

#[test]
fn etcd_lock_rev_is_the_create_revision_where_etcdctl_exports_the_revision_it_saw_the_lock_free() {
    let (etcd, name) = etcd_and_key("lock_rev");

    // A free lock: etcdctl exports its transaction's revision, which created its key.
    let mut ctl = Etcdctl::lock_sh(&etcd.endpoint(), &name, &env_then_release());
    let (rev, created) = etcdctl_lock_record(&etcd, &mut ctl);
    assert_eq!(
        rev, created,
        "uncontested, etcdctl's ETCD_LOCK_REV is its key's"
    );

    // A lock it waited for: etcdctl exports the revision at which it saw the lock free,
    // later than its own key's creation.
    let mut job = election_run(&etcd, &name, "job-first");
    job.wait_for_file("env", SOON);
    let mut ctl = Etcdctl::lock_sh(&etcd.endpoint(), &name, &env_then_release());
    wait_queued(&etcd, &format!("{name}/"), 2); // etcdctl queues behind run
    release(&mut job);
    let (rev, created) = etcdctl_lock_record(&etcd, &mut ctl);
    assert!(
        rev > created,
        "after waiting, etcdctl's ETCD_LOCK_REV ({rev}) is later than its key's creation ({created})"
    );

    // run, having waited the same way, exports its key's create revision: the fencing token.
    let mut holder = Etcdctl::lock(&etcd.endpoint(), &name);
    holder.wait_lines(1, SOON);
    let mut job = election_run(&etcd, &name, "job-waited");
    let queued = wait_queued(&etcd, &format!("{name}/"), 2); // run queues behind etcdctl
    let own_created = queued[1].1.create_revision;
    holder.signal(Signal::SIGTERM);
    holder.wait_exit(SOON);
    let env = job.wait_for_env("env");
    assert_eq!(
        var(&env, "ETCD_LOCK_REV"),
        own_created.to_string(),
        "run's ETCD_LOCK_REV is its own key's create revision, even after waiting"
    );
    assert_eq!(
        var(&env, "ETCD_LOCK_REV"),
        var(&env, "ELECTOR_FENCING_TOKEN")
    );
    release(&mut job);
}
