//! Fixtures for `etcd-elector run` (the command-under-the-lock mode), and for
//! etcd's own clients of the same election: `etcdctl lock` and `etcdctl elect`.
//!
//! A [`Job`] is one `etcd-elector run ... -- COMMAND` process. It runs in a
//! directory of its own, which is also its command's working directory, so a
//! test's shell command leaves evidence there (its pid, its environment, a
//! timestamp) and waits for files the test creates (`release`). The run's
//! stdout (the command's, passed through) and stderr (the JSON log) go to
//! files in that directory; their tails are printed when a test panics.
//!
//! Dropping a `Job` SIGKILLs the run and then the command's process group (the
//! pid from the run's own "command started" log line, checked to still lead
//! its group), so a failed test leaves no command behind.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::etcd::{base64_decode, etcdctl_bin, KeyValue};
use super::sidecar::{clean_command, BIN};
use super::{free_port, http, kill_on_parent_death, tail, test_tempdir, wait_until, Etcd};

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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default()
}

/// True while `pid` exists and has not exited: a zombie (exited, not yet
/// reaped) counts as dead, since it runs no code and holds nothing.
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name in parentheses.
        Ok(stat) => match stat.rsplit_once(')') {
            Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')),
            None => false,
        },
        Err(_) => false,
    }
}

/// True while `pid` has a process table entry, a zombie included: false once
/// it has been reaped.
pub fn process_exists(pid: i32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

/// The children of `pid` (of every thread of it), from /proc.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut children = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return children;
    };
    for task in tasks.flatten() {
        let list = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    children
}

/// The process group of `pid`, if it exists.
pub fn process_group(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // Fields after the name: state, ppid, pgrp.
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Builds a [`Job`]: `Job::builder().endpoints(..).key(..).id(..).shell("..").spawn()`.
#[derive(Default, Clone)]
pub struct JobBuilder {
    endpoints: Option<String>,
    key: Option<String>,
    id: Option<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    listen: bool,
    admin: bool,
    stdin: Option<String>,
    command: Vec<String>,
}

impl JobBuilder {
    pub fn endpoints(mut self, endpoints: &str) -> Self {
        self.endpoints = Some(endpoints.to_string());
        self
    }
    pub fn key(mut self, key: &str) -> Self {
        self.key = Some(key.to_string());
        self
    }
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.to_string());
        self
    }
    pub fn ttl(self, secs: u64) -> Self {
        self.args(&["--ttl", &secs.to_string()])
    }
    pub fn grace_period(self, secs: &str) -> Self {
        self.args(&["--grace-period", secs])
    }
    /// `--try`: one attempt.
    pub fn try_once(self) -> Self {
        self.arg("--try")
    }
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.to_string(), value.to_string()));
        self
    }
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
        let stdout = File::create(dir.path().join("run.stdout")).expect("creating run.stdout");
        let stderr = File::create(dir.path().join("run.stderr")).expect("creating run.stderr");
        let stdin = match &self.stdin {
            Some(text) => {
                let path = dir.path().join("run.stdin");
                fs::write(&path, text).expect("writing run.stdin");
                Stdio::from(File::open(&path).expect("opening run.stdin"))
            }
            None => Stdio::null(),
        };
        let addr = self
            .listen
            .then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let admin_addr = self
            .admin
            .then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let mut cmd = clean_command();
        cmd.arg("run").args(["--log-format", "json"]);
        if let Some(a) = addr {
            cmd.args(["--listen", &a.to_string()]);
        }
        if let Some(a) = admin_addr {
            cmd.args(["--admin-listen", &a.to_string()]);
        }
        if let Some(e) = &self.endpoints {
            cmd.args(["--endpoints", e]);
        }
        if let Some(k) = &self.key {
            cmd.args(["--key", k]);
        }
        if let Some(i) = &self.id {
            cmd.args(["--id", i]);
        }
        cmd.args(&self.args)
            .arg("--")
            .args(&self.command)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // Debug logs make a failure readable; they are only shown on panic.
            .env("RUST_LOG", "info,etcd_elector=debug")
            .current_dir(dir.path())
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr);
        kill_on_parent_death(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {BIN} run: {e}"));
        Job {
            child: Some(child),
            id: self.id.unwrap_or_default(),
            key: self.key.unwrap_or_default(),
            addr,
            admin_addr,
            exit: None,
            dir,
        }
    }
}

/// One `etcd-elector run` process. See the module docs.
pub struct Job {
    child: Option<Child>,
    id: String,
    key: String,
    addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    exit: Option<ExitStatus>,
    dir: tempfile::TempDir,
}

impl Job {
    pub fn builder() -> JobBuilder {
        JobBuilder::default()
    }

    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn key(&self) -> &str {
        &self.key
    }
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("run was reaped").id() as i32)
    }
    /// The public HTTP address, when built with [`JobBuilder::listen`].
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the job was built without .listen()")
    }
    /// The admin address, when built with [`JobBuilder::admin`].
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr.expect("the job was built without .admin()")
    }

    /// `GET path` on the public port; errors are returned.
    pub fn try_get(&self, path: &str) -> std::io::Result<http::Response> {
        http::simple(self.addr(), "GET", path, b"")
    }

    /// A file in the job's (and its command's) directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The file's contents, trimmed, if it exists.
    pub fn read(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.path(name))
            .ok()
            .map(|s| s.trim().to_string())
    }

    pub fn has(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// Creates the file `name` (e.g. `release`, which [`WAIT_FOR_RELEASE`] waits for).
    pub fn touch(&self, name: &str) {
        fs::write(self.path(name), b"").expect("creating a file in the job's directory");
    }

    /// Waits until the command writes `name` and returns its trimmed contents;
    /// panics with the logs if the run exits first or `timeout` passes.
    pub fn wait_for_file(&mut self, name: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(text) = self.read(name) {
                return text;
            }
            if let Some(status) = self.try_wait() {
                // The command may have written it just before the run exited.
                if let Some(text) = self.read(name) {
                    return text;
                }
                panic!(
                    "run {} exited ({status}) without its command writing {name}\n{}",
                    self.id,
                    self.describe()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "run {}: its command did not write {name} within {timeout:?}\n{}",
                    self.id,
                    self.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A number the command wrote to `name` (a pid, a timestamp, a revision).
    pub fn wait_for_number(&mut self, name: &str, timeout: Duration) -> i128 {
        let text = self.wait_for_file(name, timeout);
        text.parse().unwrap_or_else(|e| {
            panic!(
                "run {}: {name} holds {text:?}, not a number: {e}\n{}",
                self.id,
                self.describe()
            )
        })
    }

    /// `KEY=VALUE` lines (as `env` prints them) from the file `name`.
    pub fn read_env(&self, name: &str) -> Vec<(String, String)> {
        self.read(name)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The run's stderr: its JSON log.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.path("run.stderr")).unwrap_or_default()
    }

    /// The run's stdout: the command's output, passed through.
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.path("run.stdout")).unwrap_or_default()
    }

    /// The log lines that parse as JSON objects.
    pub fn log_events(&self) -> Vec<serde_json::Value> {
        self.stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }

    /// The pid of the command, from the run's "command started" log line.
    pub fn command_pid(&self) -> Option<i32> {
        self.log_events()
            .iter()
            .find(|e| e["fencing_token"].is_string() && e["pid"].is_i64())
            .and_then(|e| e["pid"].as_i64())
            .map(|p| p as i32)
    }

    /// The log tails, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "--- run {} stderr (tail) ---\n{}\n--- run {} stdout (tail) ---\n{}",
            self.id,
            tail(&self.stderr(), 25),
            self.id,
            tail(&self.stdout(), 10)
        )
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap_or_else(|e| panic!("kill({sig}) run {}: {e}", self.id));
    }

    /// The exit status if it has exited (reaping it), else `None`.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let child = self.child.as_mut()?;
        if let Ok(Some(status)) = child.try_wait() {
            self.exit = Some(status);
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits for the run to exit; panics with its logs if it has not within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if wait_until(timeout, || self.try_wait().is_some()) {
            return self.exit.expect("just observed");
        }
        panic!(
            "run {} still running {timeout:?} after it was expected to exit\n{}",
            self.id,
            self.describe()
        );
    }

    /// Waits for the exit and returns the exit code; panics if a signal killed the run itself.
    pub fn exit_code(&mut self, timeout: Duration) -> i32 {
        let status = self.wait_exit(timeout);
        status.code().unwrap_or_else(|| {
            panic!(
                "run {} was killed by a signal ({status}), it should exit with a code\n{}",
                self.id,
                self.describe()
            )
        })
    }

    /// SIGKILL the run and whatever is left of its command's group.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if self.exit.is_none() {
                let _ = child.kill();
                self.exit = child.wait().ok();
            }
        }
        if let Some(pid) = self.command_pid() {
            // Only while that pid still leads its own group: the group is ours.
            if process_alive(pid) && process_group(pid) == Some(pid) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
    }
}

/// A running `etcdctl elect`, `etcdctl elect -l` or `etcdctl lock` against one
/// etcd. Its stdout lines are collected by a thread (etcdctl prints the key and
/// the value once it leads or holds the lock, and `elect -l` prints every
/// leader change without exiting). It runs in a directory of its own, where a
/// command given to `etcdctl lock` can leave files. Dropping it kills it.
pub struct Etcdctl {
    child: Child,
    what: String,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    exit: Option<ExitStatus>,
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

    /// `etcdctl lock NAME [COMMAND...]`: without a command it prints the key once it holds
    /// the lock and holds it until signalled; with one it runs it under the lock and exits.
    pub fn lock(endpoints: &str, name: &str, command: &[&str]) -> Etcdctl {
        let mut args = vec!["lock", name];
        if !command.is_empty() {
            // So that etcdctl does not read the command's options as its own.
            args.push("--");
            args.extend_from_slice(command);
        }
        Etcdctl::spawn(endpoints, &args)
    }

    fn spawn(endpoints: &str, args: &[&str]) -> Etcdctl {
        let dir = test_tempdir("etcdctl");
        let stderr = File::create(dir.path().join("stderr")).expect("creating etcdctl's stderr");
        let mut cmd = Command::new(etcdctl_bin());
        cmd.env("ETCDCTL_API", "3")
            .env_remove("ETCDCTL_ENDPOINTS")
            .args(["--endpoints", endpoints])
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        kill_on_parent_death(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", etcdctl_bin().display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock()
                    .expect("lines lock")
                    .push((Instant::now(), line));
            }
        });
        Etcdctl {
            child,
            what: format!("etcdctl {}", args.join(" ")),
            lines,
            exit: None,
            dir,
        }
    }

    /// What it printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .expect("lines lock")
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// When it printed its first line, if it has.
    pub fn first_line_at(&self) -> Option<Instant> {
        self.lines
            .lock()
            .expect("lines lock")
            .first()
            .map(|(at, _)| *at)
    }

    /// True once it printed something: for `elect` and `lock` without a command, that it
    /// leads or holds the lock.
    pub fn has_printed(&self) -> bool {
        !self.lines.lock().expect("lines lock").is_empty()
    }

    /// Waits until it printed at least `n` lines and returns all of them; panics with its
    /// stderr after `timeout`.
    pub fn wait_lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        if !wait_until(timeout, || self.lines().len() >= n) {
            panic!(
                "`{}` printed {:?}, not {n} lines, within {timeout:?}; stderr:\n{}",
                self.what,
                self.lines(),
                self.stderr()
            );
        }
        self.lines()
    }

    /// A file in its directory (the working directory of a command given to `lock`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.path(name))
            .ok()
            .map(|s| s.trim().to_string())
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.path("stderr")).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig)
            .unwrap_or_else(|e| panic!("kill({sig}) `{}`: {e}", self.what));
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if wait_until(timeout, || self.try_wait().is_some()) {
            return self.exit.expect("just observed");
        }
        panic!(
            "`{}` still running {timeout:?} after it was expected to exit; stderr:\n{}",
            self.what,
            self.stderr()
        );
    }
}

impl Drop for Etcdctl {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- `{}` stdout ---\n{}\n--- stderr ---\n{}",
                self.what,
                self.lines().join("\n"),
                tail(&self.stderr(), 10)
            );
        }
    }
}

/// Every key under `prefix` with what etcd stores, oldest create revision first:
/// the queue of an etcd election or lock named `prefix` without its trailing `/`.
pub fn keys_under(etcd: &Etcd, prefix: &str) -> Vec<(String, KeyValue)> {
    let out = etcd.ctl(&["get", prefix, "--prefix", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("etcdctl get --prefix -w json printed {out:?}: {e}"));
    let mut keys: Vec<(String, KeyValue)> = v
        .get("kvs")
        .and_then(|k| k.as_array())
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    let int = |field: &str| kv.get(field).and_then(|x| x.as_i64()).unwrap_or(0);
                    let text = |field: &str| {
                        let bytes =
                            base64_decode(kv.get(field).and_then(|x| x.as_str()).unwrap_or(""));
                        String::from_utf8_lossy(&bytes).into_owned()
                    };
                    (
                        text("key"),
                        KeyValue {
                            value: text("value"),
                            create_revision: int("create_revision"),
                            mod_revision: int("mod_revision"),
                            version: int("version"),
                            lease: int("lease"),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    keys.sort_by_key(|(_, kv)| kv.create_revision);
    keys
}
