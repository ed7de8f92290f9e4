//! As PID 1 in a container: the kernel gives PID 1 no default action for SIGTERM, so only
//! our own handlers make it stop, and orphans are re-parented to PID 1, which must reap them.
//! `unshare --fork --pid` makes the binary PID 1 of a new PID namespace, as a container
//! runtime does.

use std::process::{Command, Stdio};
use std::time::Duration;

use elector_testkit::job::{children_of, process_state};
use elector_testkit::*;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Start `etcd-elector FLAGS COMMAND` (`flags` split at spaces) as PID 1 of a new PID
/// namespace; returns the `unshare` child (its log is etcd-elector's output), the host pid
/// of etcd-elector, and the directory of the log.
fn spawn_as_pid1(flags: &str, command: &[&str]) -> (Child, i32, tempfile::TempDir) {
    let dir = test_tempdir("pid1");
    let log = dir.path().join("elector.log");
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut cmd = Command::new("unshare");
    cmd.args(["--fork", "--pid", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_etcd-elector"))
        .args(flags.split(' '))
        .args(command)
        .env_remove("POD_NAME")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = Child::spawn(&mut cmd, "unshare (util-linux)", &[log]);
    let unshare_pid = child.pid().as_raw();
    let inner = wait_for(SOON, || children_of(unshare_pid).first().copied());
    (child, inner.expect("unshare starts a child"), dir)
}

#[test]
fn sidecar_as_pid1_hands_over_and_exits_0_on_sigterm() {
    let (etcd, key) = etcd_and_key("pid1_sidecar");
    let flags = format!(
        "--endpoints {} --key {key} --id pid-one --ttl 30 --listen 127.0.0.1:{} --admin-listen off",
        etcd.endpoint(),
        free_port()
    );
    let (mut unshare, pid, _dir) = spawn_as_pid1(&flags, &[]);
    assert!(
        wait_until(SOON, || etcd
            .get(&key)
            .is_some_and(|kv| kv.value == "pid-one")),
        "PID 1 never took the key; log:\n{}",
        unshare.log(0)
    );
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("signal PID 1");
    // PID 1 heeds SIGTERM: it exits (`wait_exit` panics with its log if not), with 0.
    let status = unshare.wait_exit(SOON);
    assert_eq!(status.code(), Some(0), "exit status of PID 1");
    assert!(
        etcd.get(&key).is_none(),
        "the lease was revoked, so the key is gone"
    );
}

#[test]
fn run_as_pid1_reaps_orphans_of_its_command() {
    let (etcd, key) = etcd_and_key("pid1_run");
    // The subshell starts a sleeper in a session of its own and exits at once: the sleeper is
    // orphaned, re-parented to PID 1, and exits 0.3 s later while the command still runs.
    let script = "(setsid sleep 0.3 &); sleep 3";
    let flags = format!(
        "run --endpoints {} --key {key} --ttl 10 --grace-period 1",
        etcd.endpoint()
    );
    let (mut unshare, pid, _dir) = spawn_as_pid1(&flags, &["--", "sh", "-c", script]);
    // Wait until the orphan has been re-parented to us and has had time to exit.
    std::thread::sleep(Duration::from_millis(1500));
    let zombies: Vec<i32> = children_of(pid)
        .into_iter()
        .filter(|c| process_state(*c) == Some('Z'))
        .collect();
    assert!(
        zombies.is_empty(),
        "PID 1 left zombies {zombies:?}; log:\n{}",
        unshare.log(0)
    );
    let status = unshare.wait_exit(SOON);
    assert_eq!(status.code(), Some(0), "the command's exit code");
}
