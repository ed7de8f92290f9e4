//! The real `etcd-elector` binary as a child process, probed over HTTP.
//!
//! Each sidecar gets a free loopback port for `--listen`, JSON logs, an
//! environment without `ELECTOR_*`/`POD_NAME` (so the developer's shell cannot
//! change a test), and a log file that is printed (its tail) when the test
//! panics. It is SIGKILLed on drop; tests that want a clean exit send a
//! signal and call [`Child::wait_exit`](crate::Child::wait_exit) (a `Sidecar`
//! derefs to its `Child`).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::process::Child;
use crate::Etcd;
use crate::{
    elector_bin, free_port, http, tail, test_tempdir, wait_until, with_port_retries, SOON,
};

/// How long a sidecar may take to answer `/healthz` after spawn. It should be
/// milliseconds; the bound only turns a hang into a failure.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A command for `program` (the built binary when empty) with the variables the binary
/// reads removed from the inherited environment, or with none of it (`empty_env`).
fn clean_command(program: &[String], empty_env: bool) -> Command {
    let mut cmd = match program.split_first() {
        Some((first, rest)) => {
            let mut cmd = Command::new(first);
            cmd.args(rest);
            cmd
        }
        None => Command::new(elector_bin()),
    };
    if empty_env {
        cmd.env_clear();
        return cmd;
    }
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("ELECTOR_") || n == "POD_NAME" || n == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// What every `etcd-elector` command line has, in either mode (the sidecar,
/// or `run`): set through [`ElectorArgs`].
#[derive(Default, Clone)]
pub struct CommonArgs {
    endpoints: Option<String>,
    key: Option<String>,
    id: Option<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// What runs instead of the built binary, with its arguments (see [`ElectorArgs::program`]).
    program: Vec<String>,
    /// Nothing inherited from the environment (see [`ElectorArgs::empty_env`]).
    empty_env: bool,
}

impl CommonArgs {
    /// A clean command with these flags, JSON logs and debug log levels, run
    /// in `dir` with stdout and stderr appended to the files given.
    pub fn command(&self, mode: &[&str], dir: &Path, stdout: &Path, stderr: &Path) -> Command {
        let mut cmd = clean_command(&self.program, self.empty_env);
        cmd.args(mode).args(["--log-format", "json"]);
        for (flag, value) in [
            ("--endpoints", &self.endpoints),
            ("--key", &self.key),
            ("--id", &self.id),
        ] {
            if let Some(v) = value {
                cmd.args([flag, v]);
            }
        }
        let append = |p: &Path| {
            File::options()
                .create(true)
                .append(true)
                .open(p)
                .expect("opening a log file")
        };
        // Debug logs make a failure readable; the logs are only shown on failure.
        cmd.env("RUST_LOG", "info,etcd_elector=debug")
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(append(stdout))
            .stderr(append(stderr));
        cmd
    }

    pub fn id(&self) -> String {
        self.id.clone().unwrap_or_default()
    }

    pub fn key(&self) -> String {
        self.key.clone().unwrap_or_default()
    }
}

/// The setters both builders share ([`SidecarBuilder`], [`crate::job::JobBuilder`]).
pub trait ElectorArgs: Sized {
    fn common(&mut self) -> &mut CommonArgs;

    /// `--endpoints`, `--key` and `--id` at once: the usual start.
    fn on(self, endpoints: &str, key: &str, id: &str) -> Self {
        self.endpoints(endpoints).key(key).id(id)
    }
    fn endpoints(mut self, endpoints: &str) -> Self {
        self.common().endpoints = Some(endpoints.to_string());
        self
    }
    fn key(mut self, key: &str) -> Self {
        self.common().key = Some(key.to_string());
        self
    }
    fn id(mut self, id: &str) -> Self {
        self.common().id = Some(id.to_string());
        self
    }
    fn ttl(self, secs: u64) -> Self {
        self.args(&["--ttl", &secs.to_string()])
    }
    fn arg(self, arg: &str) -> Self {
        self.args(&[arg])
    }
    fn args(mut self, args: &[&str]) -> Self {
        self.common()
            .args
            .extend(args.iter().map(|a| a.to_string()));
        self
    }
    fn env(mut self, name: &str, value: &str) -> Self {
        self.common()
            .envs
            .push((name.to_string(), value.to_string()));
        self
    }
    /// Runs `argv` followed by the elector's arguments instead of the built binary: the
    /// bench's `ELECTOR_BENCH_BIN` build, or the binary under `taskset`.
    fn program(mut self, argv: &[String]) -> Self {
        self.common().program = argv.to_vec();
        self
    }
    /// Starts from an empty environment: the bench's, so that nothing in its shell
    /// (`MALLOC_*`, `LD_PRELOAD`) changes what it measures.
    fn empty_env(mut self) -> Self {
        self.common().empty_env = true;
        self
    }
}

/// Builds a [`Sidecar`]: `Sidecar::builder().endpoints(..).key(..).id(..).start()`.
#[derive(Default, Clone)]
pub struct SidecarBuilder {
    common: CommonArgs,
    /// Where it listens when `--listen` comes from elsewhere (env or file).
    listen_elsewhere: Option<SocketAddr>,
    /// No admin server (`--admin-listen off`): the bench's many replicas need none.
    no_admin: bool,
    /// Where its log goes (`sidecar-ID.log`) instead of a temporary directory of its own.
    log_dir: Option<PathBuf>,
}

impl ElectorArgs for SidecarBuilder {
    fn common(&mut self) -> &mut CommonArgs {
        &mut self.common
    }
}

impl SidecarBuilder {
    /// Do not pass `--listen`: the sidecar gets `addr` from env or a file.
    pub fn listen_elsewhere(mut self, addr: SocketAddr) -> Self {
        self.listen_elsewhere = Some(addr);
        self
    }

    /// Without an admin server.
    pub fn no_admin(mut self) -> Self {
        self.no_admin = true;
        self
    }

    /// Logs to `dir/sidecar-ID.log`, which outlives the sidecar (the bench keeps a failed run's).
    pub fn log_in(mut self, dir: &Path) -> Self {
        self.log_dir = Some(dir.to_path_buf());
        self
    }

    /// Spawns the process without waiting for it.
    pub fn spawn(self) -> Sidecar {
        let id = self.common.id();
        let (dir, temp) = match &self.log_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = test_tempdir("sidecar");
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let log = dir.join(format!("sidecar-{id}.log"));
        let addr = self
            .listen_elsewhere
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        // The pod-local admin server (POST /resign) defaults to a fixed port,
        // which parallel sidecars would fight over: give each its own.
        let admin_addr = (!self.no_admin).then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let admin = admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
        let listen = addr.to_string();
        let mut mode = vec!["--admin-listen", &admin];
        if self.listen_elsewhere.is_none() {
            mode.extend(["--listen", &listen]);
        }
        let mut cmd = self.common.command(&mode, &dir, &log, &log);
        Sidecar {
            child: Child::spawn(&mut cmd, &format!("sidecar {id} ({addr})"), &[log]),
            addr,
            admin_addr,
            id,
            key: self.common.key(),
            _dir: temp,
        }
    }

    /// Spawns and waits until `/healthz` answers 200, on other ports if one
    /// was taken meanwhile (as [`crate::Etcd::start`] does).
    pub fn start(self) -> Sidecar {
        with_port_retries(|| {
            let mut s = self.clone().spawn();
            s.wait_healthy().map(|()| s)
        })
    }
}

pub struct Sidecar {
    child: Child,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    id: String,
    key: String,
    _dir: Option<tempfile::TempDir>,
}

impl Sidecar {
    pub fn builder() -> SidecarBuilder {
        SidecarBuilder::default()
    }

    /// The common case: one replica of `key` with identity `id` on `endpoints`.
    pub fn start(endpoints: &str, key: &str, id: &str, extra_args: &[&str]) -> Sidecar {
        Sidecar::builder()
            .endpoints(endpoints)
            .key(key)
            .id(id)
            .args(extra_args)
            .start()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The pod-local admin server (`--admin-listen`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr.expect("a sidecar with an admin server")
    }
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Waits until `/healthz` answers 200; if it exits first or does not soon (then it is
    /// killed), says why, with the log tail (a taken port shows there: see `start`).
    pub fn wait_healthy(&mut self) -> Result<(), String> {
        let addr = self.addr;
        let healthy = || http::get(addr, "/healthz").is_ok_and(|r| r.status == 200);
        self.child.wait_ready(READY_TIMEOUT, healthy)
    }

    /// The full log so far (stdout and stderr interleaved).
    pub fn logs(&self) -> String {
        self.child.log(0)
    }

    pub fn try_get(&self, path: &str) -> std::io::Result<http::Response> {
        http::get(self.addr, path)
    }

    /// `METHOD path`; panics (with the log) if the sidecar does not answer.
    fn answer(&self, method: &str, path: &str, body: &str) -> http::Response {
        http::simple(self.addr, method, path, body.as_bytes()).unwrap_or_else(|e| {
            panic!(
                "sidecar {} did not answer {method} {path}: {e}; log:\n{}",
                self.id,
                tail(&self.logs(), 40)
            )
        })
    }

    pub fn get_response(&self, path: &str) -> http::Response {
        self.answer("GET", path, "")
    }

    /// `GET path` -> (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self.get_response(path);
        (r.status, r.body)
    }

    /// `GET path` with the body parsed as JSON.
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.get_response(path);
        (r.status, r.json())
    }

    pub fn head(&self, path: &str) -> http::Response {
        self.answer("HEAD", path, "")
    }

    pub fn post(&self, path: &str, body: &str) -> http::Response {
        self.answer("POST", path, body)
    }

    /// True when `/leader` answers 200; false on 503 or no answer at all.
    pub fn is_leader(&self) -> bool {
        matches!(self.try_get("/leader"), Ok(r) if r.status == 200)
    }

    /// The `/leader` body.
    pub fn leader_view(&self) -> Value {
        self.get_json("/leader").1
    }

    /// The `/status` body.
    pub fn status(&self) -> Value {
        self.get_json("/status").1
    }

    /// Waits until `/leader` answers 200; panics with `why` (what leading
    /// means in the test), `/status` and the log tail if it does not soon.
    pub fn wait_leading(&self, why: &str) {
        self.wait_soon(why, Sidecar::is_leader);
    }

    /// Waits until `/leader` answers 503 naming `leader`; panics if it does not soon.
    pub fn wait_following(&self, leader: &str) {
        self.wait_following_within(leader, SOON);
    }

    /// [`Sidecar::wait_following`] with its own bound.
    pub fn wait_following_within(&self, leader: &str, within: Duration) {
        let why = format!("{} follows {leader}", self.id);
        self.wait_within(within, &why, |s| {
            let (status, view) = s.get_json("/leader");
            status == 503 && view["leader"] == leader
        });
    }

    /// Waits until `/status` says `state`; panics if it does not soon.
    pub fn wait_state(&self, state: &str) {
        let why = format!("{} is {state}", self.id);
        self.wait_soon(&why, |s| s.state().as_deref() == Some(state));
    }

    /// Waits until it has campaigned: `/status` says leader or follower.
    pub fn wait_campaigned(&self) {
        let why = format!("{} campaigned", self.id);
        self.wait_soon(&why, |s| {
            matches!(s.state().as_deref(), Some("leader" | "follower"))
        });
    }

    /// `/status`'s state; `None` while it does not answer (it may be starting).
    fn state(&self) -> Option<String> {
        let status: Value = serde_json::from_str(&self.try_get("/status").ok()?.body).ok()?;
        status["state"].as_str().map(str::to_string)
    }

    fn wait_soon(&self, why: &str, cond: impl Fn(&Sidecar) -> bool) {
        self.wait_within(SOON, why, cond);
    }

    fn wait_within(&self, within: Duration, why: &str, cond: impl Fn(&Sidecar) -> bool) {
        let show = |path| {
            self.try_get(path)
                .map_or_else(|e| e.to_string(), |r| r.body)
        };
        assert!(
            wait_until(within, || cond(self)),
            "{why} (within {within:?}); /leader {}; /status {}; log:\n{}",
            show("/leader"),
            show("/status"),
            tail(&self.logs(), 20)
        );
    }

    /// The fencing token this sidecar reports, if any.
    pub fn fencing_token(&self) -> Option<i64> {
        self.leader_view()["fencing_token"].as_i64()
    }

    /// The value of `series` (see [`crate::metric`]) in `/metrics` (which must answer 200).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "{}'s /metrics", self.id());
        crate::metric(&text, series)
    }

    /// `elector_campaigns_total`: campaign transactions sent since start.
    pub fn campaigns(&self) -> u64 {
        self.metric("elector_campaigns_total")
            .unwrap_or_else(|| panic!("no elector_campaigns_total in {}'s metrics", self.id()))
            as u64
    }
}

/// The process: `pid`, `signal`, `try_wait`, `wait_exit`, `kill`.
impl std::ops::Deref for Sidecar {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Sidecar {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// Runs the binary with exactly `args` and `envs` (on a clean environment) to
/// completion, for configuration errors. Panics, after killing it, if it is
/// still running after `timeout`: a bad configuration must exit, not serve.
pub fn run_to_exit(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Output {
    let dir = test_tempdir("run");
    let logs = [dir.path().join("stdout"), dir.path().join("stderr")];
    let mut cmd = clean_command(&[], false);
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(File::create(&logs[0]).expect("stdout file"))
        .stderr(File::create(&logs[1]).expect("stderr file"));
    let mut child = Child::spawn(
        &mut cmd,
        &format!("`etcd-elector {}`", args.join(" ")),
        &logs,
    );
    let status = child.wait_exit(timeout);
    Output {
        status,
        stdout: std::fs::read(&logs[0]).unwrap_or_default(),
        stderr: std::fs::read(&logs[1]).unwrap_or_default(),
    }
}

/// A bad configuration must be refused at once; this only catches a binary that started
/// serving instead.
const REFUSED_WITHIN: Duration = Duration::from_secs(5);

/// Runs the binary with bad input and checks the contract for it: exit code 2 and one line on
/// stderr that names each of `must_name`, never a panic. Returns the line.
pub fn refused(args: &[&str], envs: &[(&str, &str)], must_name: &[&str]) -> String {
    let out = run_to_exit(args, envs, REFUSED_WITHIN);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let context = format!("args {args:?} env {envs:?}\nstderr:\n{stderr}\nstdout:\n{stdout}");
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code 2 for a config error; {context}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "a config error is not a panic; {context}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr; {context}");
    let line = lines[0].to_string();
    for needle in must_name {
        assert!(
            line.to_lowercase().contains(&needle.to_lowercase()),
            "the message names {needle:?}; {context}"
        );
    }
    line
}

/// Waits until each of `followers` follows (it has campaigned and registered as a
/// candidate), then until a leader's watch of the registrations has delivered them: a watch
/// that starts behind etcd's revision is caught up by etcd's sync loop, every 100 ms. A
/// resign hands over only to a registered successor, and a replica that resigned registers
/// anew only after its hold-off.
pub fn wait_registered<'a>(followers: impl IntoIterator<Item = &'a Sidecar>) {
    followers.into_iter().for_each(|s| s.wait_state("follower"));
    std::thread::sleep(Duration::from_millis(200));
}

/// One leader among `sidecars`, once every other one is registered behind it (see
/// [`wait_registered`]): what a resign needs to hand the key over. Returns its index.
pub fn wait_for_successors(sidecars: &[Sidecar]) -> usize {
    let leader = wait_for_one_leader(sidecars, SOON);
    wait_registered(
        sidecars
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != leader)
            .map(|(_, s)| s),
    );
    leader
}

/// Polls until exactly one of `sidecars` answers 200 on `/leader` in one round, and returns
/// its index. Panics with every replica's `/leader` answer if that does not happen within
/// `timeout`.
pub fn wait_for_one_leader(sidecars: &[Sidecar], timeout: Duration) -> usize {
    let found = crate::wait_for(timeout, || {
        let leaders: Vec<usize> = (0..sidecars.len())
            .filter(|&i| sidecars[i].is_leader())
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    });
    found.unwrap_or_else(|| {
        panic!(
            "no single leader among {} sidecars within {timeout:?}:\n{}",
            sidecars.len(),
            crate::observe::leader_views(sidecars).join("\n")
        )
    })
}

/// `POST /resign` on the leader `old`'s admin port, which it accepts and stops claiming at
/// once; waits up to `within` for another replica to lead, and returns it.
pub fn resign(sidecars: &[Sidecar], old: usize, within: Duration) -> usize {
    let resp = http::simple(sidecars[old].admin_addr(), "POST", "/resign", b"")
        .expect("POST /resign answered");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["resigned"], true, "{resp:?}");
    assert!(
        !sidecars[old].is_leader(),
        "the resigned leader stops claiming at once"
    );
    let others = || (0..sidecars.len()).find(|&i| i != old && sidecars[i].is_leader());
    crate::wait_for(within, others)
        .unwrap_or_else(|| panic!("another replica leads within {within:?} of the resign"))
}

/// A fresh etcd, a key named after `test`, and `n` [`replicas`] of it.
pub fn fresh_replicas(test: &str, n: usize, extra_args: &[&str]) -> (Etcd, String, Vec<Sidecar>) {
    let (etcd, key) = crate::etcd_and_key(test);
    let sidecars = replicas(&etcd.endpoint(), &key, n, extra_args);
    (etcd, key, sidecars)
}

/// `n` replicas of one key, ids `replica-0`.., all started and ready.
pub fn replicas(endpoints: &str, key: &str, n: usize, extra_args: &[&str]) -> Vec<Sidecar> {
    (0..n)
        .map(|i| Sidecar::start(endpoints, key, &format!("replica-{i}"), extra_args))
        .collect()
}
