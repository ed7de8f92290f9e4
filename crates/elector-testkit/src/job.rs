//! Fixtures for `etcd-elector run` (the command-under-the-lock mode), and for
//! etcd's own clients of the same election: `etcdctl lock` and `etcdctl elect`.
//!
//! A [`Job`] is one `etcd-elector run ... -- COMMAND` in a directory of its own,
//! its command's working directory: a test's shell command leaves evidence there
//! (its pid, its environment, a timestamp) and waits for files the test creates.
//! Dropping a `Job` SIGKILLs the run and its command's process group, so a
//! failed test leaves no command behind.

use std::fmt::Display;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::ops::DerefMut;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use procfs::process::Process;

use crate::etcd::{etcdctl_bin, key_value, KeyValue};
use crate::process::Child;
use crate::sidecar::{CommonArgs, ElectorArgs};
use crate::{free_port, http, test_tempdir, wait_until, Etcd, SOON};

/// A shell loop that waits (at most a minute) until the test creates the file
/// `release` in the job's directory.
pub const WAIT_FOR_RELEASE: &str =
    "i=0; while [ ! -e release ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done";

/// Shell that writes the output of `cmd` to `name` atomically (temporary file
/// and rename), so a test polling for `name` never reads half of it.
pub fn write_file(name: &str, cmd: &str) -> String {
    format!("{cmd} > .{name}.tmp && mv .{name}.tmp {name}")
}

/// Shell that records the wall clock (ns since the epoch) in `name`, atomically.
pub fn stamp(name: &str) -> String {
    write_file(name, "date +%s%N")
}

/// Nanoseconds since the Unix epoch, comparable with [`stamp`] files.
pub fn unix_nanos() -> i128 {
    jiff::Timestamp::now().as_nanosecond()
}

/// The state letter of `pid` (`Z` for a zombie); `None` once it has been reaped.
pub fn process_state(pid: i32) -> Option<char> {
    Some(Process::new(pid).ok()?.stat().ok()?.state)
}

/// True while `pid` has not exited: a zombie runs no code and holds nothing.
pub fn process_alive(pid: i32) -> bool {
    process_state(pid).is_some_and(|s| !matches!(s, 'Z' | 'X'))
}

/// The children of every thread of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = Process::new(pid).and_then(|p| p.tasks()) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .flat_map(|t| t.children().unwrap_or_default())
        .map(|c| c as i32)
        .collect()
}

pub fn process_group(pid: i32) -> Option<i32> {
    Some(Process::new(pid).ok()?.stat().ok()?.pgrp)
}

/// Builds a [`Job`]: `Job::builder().endpoints(..).key(..).id(..).shell("..").spawn()`.
#[derive(Default, Clone)]
pub struct JobBuilder {
    common: CommonArgs,
    listen: bool,
    admin: bool,
    stdin: Option<String>,
    command: Vec<String>,
}

impl ElectorArgs for JobBuilder {
    fn common(&mut self) -> &mut CommonArgs {
        &mut self.common
    }
}

impl JobBuilder {
    /// Serve the public HTTP routes on a free loopback port (off by default in `run`).
    pub fn listen(mut self) -> Self {
        self.listen = true;
        self
    }
    /// Serve the admin routes on a free loopback port (off by default in `run`).
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }
    /// Feed `text` to run's standard input (by default it is empty).
    pub fn stdin(mut self, text: &str) -> Self {
        self.stdin = Some(text.to_string());
        self
    }
    /// The command to run under the lock.
    pub fn command(mut self, argv: &[&str]) -> Self {
        self.command = argv.iter().map(|a| a.to_string()).collect();
        self
    }
    /// `sh -c script`, run in the job's directory.
    pub fn shell(self, script: &str) -> Self {
        self.command(&["sh", "-c", script])
    }

    /// Spawns `etcd-elector run` without waiting for anything.
    pub fn spawn(self) -> Job {
        let dir = test_tempdir("job");
        let logs = [dir.path().join("run.stderr"), dir.path().join("run.stdout")];
        let port = |on: bool| on.then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let (addr, admin_addr) = (port(self.listen), port(self.admin));
        let mut cmd = self
            .common
            .command(&["run"], dir.path(), &logs[1], &logs[0]);
        for (flag, a) in [("--listen", addr), ("--admin-listen", admin_addr)] {
            if let Some(a) = a {
                cmd.args([flag, &a.to_string()]);
            }
        }
        cmd.arg("--").args(&self.command);
        if let Some(text) = &self.stdin {
            let path = dir.path().join("run.stdin");
            fs::write(&path, text).expect("writing run.stdin");
            cmd.stdin(File::open(&path).expect("opening run.stdin"));
        }
        let name = format!("run {}", self.common.id());
        Job {
            child: Child::spawn(&mut cmd, &name, &logs),
            addr,
            admin_addr,
            dir,
        }
    }
}

/// What [`Job`] and [`Etcdctl`] share: a process (through `Deref`) that runs in
/// a directory of its own, where its command leaves files.
pub trait Workdir: DerefMut<Target = Child> {
    fn dir(&self) -> &Path;

    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// The file's trimmed contents, if it exists.
    fn read(&self, name: &str) -> Option<String> {
        let text = fs::read_to_string(self.path(name)).ok()?;
        Some(text.trim().to_string())
    }

    fn has(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// Creates the file `name` (e.g. `release`, which [`WAIT_FOR_RELEASE`] waits for).
    fn touch(&self, name: &str) {
        fs::write(self.path(name), b"").expect("creating a file in its directory");
    }

    /// `KEY=VALUE` lines (as `env` prints them) the command writes to `name`, once
    /// it has (within [`SOON`]).
    fn wait_for_env(&mut self, name: &str) -> Vec<(String, String)> {
        let text = self.wait_for_file(name, SOON);
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Waits until the command writes `name` and returns its trimmed contents; panics with
    /// the logs if the process exits first or `timeout` passes (then it is killed first).
    fn wait_for_file(&mut self, name: &str, timeout: Duration) -> String {
        let path = self.path(name);
        let waited = self.wait_ready(timeout, || path.exists());
        // Read even after an exit: the command may have written it just before.
        self.read(name).unwrap_or_else(|| {
            let why = waited.err().unwrap_or_default();
            panic!("{}'s command did not write {name}: {why}", self.name())
        })
    }

    /// A number the command wrote (a pid, a timestamp, a revision).
    fn wait_for_number<T: FromStr<Err: Display>>(&mut self, name: &str, timeout: Duration) -> T {
        let text = self.wait_for_file(name, timeout);
        text.parse().unwrap_or_else(|e| {
            panic!(
                "{}: {name} holds {text:?}, not a number: {e}\n{}",
                self.name(),
                self.describe()
            )
        })
    }
}

/// One `etcd-elector run` process.
pub struct Job {
    child: Child,
    addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    dir: tempfile::TempDir,
}

impl Job {
    pub fn builder() -> JobBuilder {
        JobBuilder::default()
    }

    /// The admin address, when built with [`JobBuilder::admin`].
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr.expect("the job was built without .admin()")
    }

    /// `GET path` on the public port; errors are returned.
    pub fn try_get(&self, path: &str) -> std::io::Result<http::Response> {
        let addr = self.addr.expect("the job was built without .listen()");
        http::simple(addr, "GET", path, b"")
    }

    /// The run's stderr: its JSON log.
    pub fn stderr(&self) -> String {
        self.child.log(0)
    }

    /// The run's stdout: the command's output, passed through.
    pub fn stdout(&self) -> String {
        self.child.log(1)
    }

    /// The log lines that parse as JSON objects.
    pub fn log_events(&self) -> Vec<serde_json::Value> {
        self.stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }

    /// Waits for the exit with `code` (`what` says why); panics with the logs
    /// otherwise, also when a signal killed the run itself.
    pub fn assert_exit(&mut self, code: i32, timeout: Duration, what: &str) {
        let status = self.wait_exit(timeout);
        let described = self.describe();
        assert_eq!(
            status.code(),
            Some(code),
            "{} exited ({status}): {what}\n{described}",
            self.name()
        );
    }

    /// SIGKILL the run and whatever is left of its command's group.
    pub fn kill(&mut self) {
        self.child.kill();
        // The command's pid, from the run's "command started" log line.
        let events = self.log_events();
        let started = events
            .iter()
            .find(|e| e["fencing_token"].is_string() && e["pid"].is_i64());
        if let Some(pid) = started.and_then(|e| e["pid"].as_i64()).map(|p| p as i32) {
            // Only while that pid still leads its own group: the group is ours.
            if process_alive(pid) && process_group(pid) == Some(pid) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

impl Workdir for Job {
    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // The run first; its `Child` prints the logs when it is dropped.
        self.kill();
    }
}

/// A running `etcdctl elect`, `elect -l` or `lock`, with its stdout in a file,
/// in a directory of its own where a command given to `etcdctl lock` can leave
/// files. Dropping it kills it.
pub struct Etcdctl {
    child: Child,
    dir: tempfile::TempDir,
}

impl Etcdctl {
    /// `etcdctl elect NAME PROPOSAL`: campaigns; prints the key and the proposal once elected.
    pub fn elect(endpoints: &str, name: &str, proposal: &str) -> Etcdctl {
        Etcdctl::spawn(endpoints, &["elect", name, proposal])
    }

    /// `etcdctl elect -l NAME`: prints the leader's key and value on every change.
    pub fn observe(endpoints: &str, name: &str) -> Etcdctl {
        Etcdctl::spawn(endpoints, &["elect", "-l", name])
    }

    /// `etcdctl lock NAME`: prints the key once it holds the lock, and holds it until signalled.
    pub fn lock(endpoints: &str, name: &str) -> Etcdctl {
        Etcdctl::spawn(endpoints, &["lock", name])
    }

    /// `etcdctl lock NAME -- sh -c SCRIPT`: runs the script under the lock, in its
    /// directory, and exits (`--`: etcdctl does not read the script's options).
    pub fn lock_sh(endpoints: &str, name: &str, script: &str) -> Etcdctl {
        Etcdctl::spawn(endpoints, &["lock", name, "--", "sh", "-c", script])
    }

    /// `etcdctl lock NAME` whose command writes `$ETCD_LOCK_REV` to `rev`: a lock client
    /// queued behind a holder, for [`Etcdctl::assert_waits`] and [`Etcdctl::assert_turn_after`].
    pub fn lock_rev(endpoints: &str, name: &str) -> Etcdctl {
        Etcdctl::lock_sh(
            endpoints,
            name,
            &write_file("rev", "echo \"$ETCD_LOCK_REV\""),
        )
    }

    /// Checks that a [`Etcdctl::lock_rev`] still has not run its command 1.5 s on, `while` the
    /// lock is held by someone else.
    pub fn assert_waits(&self, while_: &str) {
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!self.has("rev"), "etcdctl lock waits while {while_}");
    }

    /// Checks that a [`Etcdctl::lock_rev`] gets its turn, with a revision later than `token`
    /// (the holder's before it), and exits 0.
    pub fn assert_turn_after(&mut self, token: i64) {
        let rev: i64 = self.wait_for_number("rev", SOON);
        assert!(rev > token, "etcdctl's turn comes later: {rev} > {token}");
        assert!(self.wait_exit(SOON).success());
    }

    fn spawn(endpoints: &str, args: &[&str]) -> Etcdctl {
        let dir = test_tempdir("etcdctl");
        let logs = [dir.path().join("stdout"), dir.path().join("stderr")];
        let log = |i: usize| File::create(&logs[i]).expect("creating etcdctl's log");
        let mut cmd = Command::new(etcdctl_bin());
        cmd.env("ETCDCTL_API", "3")
            .env_remove("ETCDCTL_ENDPOINTS")
            .args(["--endpoints", endpoints])
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log(0))
            .stderr(log(1));
        let name = format!("`etcdctl {}`", args.join(" "));
        Etcdctl {
            child: Child::spawn(&mut cmd, &name, &logs),
            dir,
        }
    }

    /// The lines it printed so far (Go writes each unbuffered, at once).
    pub fn lines(&self) -> Vec<String> {
        let out = self.log(0);
        let complete = out
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'));
        complete.map(str::to_string).collect()
    }

    /// Waits until it printed at least `n` lines and returns all of them.
    pub fn wait_lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        if !wait_until(timeout, || self.lines().len() >= n) {
            panic!(
                "{} printed {:?}, not {n} lines, within {timeout:?}\n{}",
                self.name(),
                self.lines(),
                self.describe()
            );
        }
        self.lines()
    }

    pub fn stderr(&self) -> String {
        self.log(1)
    }
}

impl Workdir for Etcdctl {
    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The process under a [`Job`] or an [`Etcdctl`] (a job's `kill` is its own).
macro_rules! deref_to_child {
    ($($t:ty),*) => {$(
        impl std::ops::Deref for $t {
            type Target = Child;
            fn deref(&self) -> &Child {
                &self.child
            }
        }
        impl std::ops::DerefMut for $t {
            fn deref_mut(&mut self) -> &mut Child {
                &mut self.child
            }
        }
    )*};
}
deref_to_child!(Job, Etcdctl);

/// Every key under `prefix`, oldest create revision first: the queue of an etcd
/// election or lock named `prefix` without its trailing `/`.
pub fn keys_under(etcd: &Etcd, prefix: &str) -> Vec<(String, KeyValue)> {
    let out = etcd.ctl(&["get", prefix, "--prefix", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("etcdctl get --prefix -w json printed {out:?}: {e}"));
    let mut keys: Vec<(String, KeyValue)> = v["kvs"]
        .as_array()
        .map(|kvs| kvs.iter().map(key_value).collect())
        .unwrap_or_default();
    keys.sort_by_key(|(_, kv)| kv.create_revision);
    keys
}

/// Waits until `n` keys are queued under `prefix`; returns them, oldest first.
pub fn wait_queued(etcd: &Etcd, prefix: &str, n: usize) -> Vec<(String, KeyValue)> {
    let mut keys = Vec::new();
    assert!(
        wait_until(SOON, || {
            keys = keys_under(etcd, prefix);
            keys.len() == n
        }),
        "{n} candidates queued under {prefix}; found {keys:?}"
    );
    keys
}
