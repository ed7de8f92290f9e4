//! The real `etcd-elector` binary as a child process, probed over HTTP.
//!
//! Each sidecar gets a free loopback port for `--listen`, JSON logs, an
//! environment without `ELECTOR_*`/`POD_NAME` (so the developer's shell cannot
//! change a test), and a log file that is printed (its tail) when the test
//! panics. It is SIGKILLed on drop; tests that want a clean exit send a
//! signal and call [`Sidecar::wait_exit`].

use std::fs::{self, File};
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{free_port, http, kill_on_parent_death, tail, test_tempdir, wait_until};

/// How long a sidecar may take to answer `/healthz` after spawn. It should be
/// milliseconds; the bound only turns a hang into a failure.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub const BIN: &str = env!("CARGO_BIN_EXE_etcd-elector");

/// A command for the binary with the variables it reads removed from the
/// inherited environment.
pub(super) fn clean_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("ELECTOR_") || n == "POD_NAME" || n == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// Builds a [`Sidecar`]: `Sidecar::builder().endpoints(..).key(..).id(..).start()`.
#[derive(Default, Clone)]
pub struct SidecarBuilder {
    endpoints: Option<String>,
    key: Option<String>,
    id: Option<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// Where it listens when `--listen` comes from elsewhere (env or file).
    listen_elsewhere: Option<SocketAddr>,
}

impl SidecarBuilder {
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
    /// Do not pass `--listen`: the sidecar gets `addr` from env or a file.
    pub fn listen_elsewhere(mut self, addr: SocketAddr) -> Self {
        self.listen_elsewhere = Some(addr);
        self
    }

    /// Spawns the process without waiting for it.
    pub fn spawn(self) -> Sidecar {
        let dir = test_tempdir("sidecar");
        let log_path = dir.path().join("sidecar.log");
        let log = File::create(&log_path).expect("creating the sidecar log");
        let addr = self
            .listen_elsewhere
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        // The pod-local admin server (POST /resign) defaults to a fixed port,
        // which parallel sidecars would fight over: give each its own.
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = clean_command();
        if self.listen_elsewhere.is_none() {
            cmd.args(["--listen", &addr.to_string()]);
        }
        cmd.args(["--admin-listen", &admin_addr.to_string()]);
        if let Some(e) = &self.endpoints {
            cmd.args(["--endpoints", e]);
        }
        if let Some(k) = &self.key {
            cmd.args(["--key", k]);
        }
        if let Some(i) = &self.id {
            cmd.args(["--id", i]);
        }
        cmd.args(["--log-format", "json"])
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // Debug logs make a failure readable; the file is only shown on panic.
            .env("RUST_LOG", "info,etcd_elector=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning a file handle"))
            .stderr(log);
        kill_on_parent_death(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {BIN}: {e}"));
        Sidecar {
            child: Some(child),
            addr,
            admin_addr,
            id: self.id.clone().unwrap_or_default(),
            key: self.key.clone().unwrap_or_default(),
            log_path,
            exit: None,
            _dir: dir,
        }
    }

    /// Spawns and waits until `/healthz` answers 200. A start that failed
    /// because a port chosen by [`free_port`] was taken meanwhile (by another
    /// test's process, or as the local port of an outgoing connection) is
    /// retried on other ports, as [`super::Etcd::start`] does.
    pub fn start(self) -> Sidecar {
        for _ in 1..PORT_RETRIES {
            let mut s = self.clone().spawn();
            match s.try_ready() {
                Ok(()) => return s,
                Err(e) if s.logs().contains("Address already in use") => {
                    eprintln!(
                        "sidecar {}: a port was taken, retrying with others: {e}",
                        s.id
                    );
                }
                Err(e) => panic!("{e}"),
            }
        }
        let mut s = self.spawn();
        s.wait_ready();
        s
    }
}

/// How often [`SidecarBuilder::start`] tries with fresh ports.
const PORT_RETRIES: usize = 3;

pub struct Sidecar {
    child: Option<Child>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    id: String,
    key: String,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
    _dir: tempfile::TempDir,
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
        self.admin_addr
    }
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn key(&self) -> &str {
        &self.key
    }
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("sidecar was reaped").id() as i32)
    }

    /// The full log so far (stdout and stderr interleaved).
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Polls `/healthz` until 200; panics with the log if the process exits or
    /// the bound passes.
    pub fn wait_ready(&mut self) {
        if let Err(e) = self.try_ready() {
            panic!("{e}");
        }
    }

    /// [`Sidecar::wait_ready`], returning the failure (with the log tail).
    fn try_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(r) = self.try_get("/healthz") {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if let Some(status) = self.try_wait() {
                return Err(format!(
                    "sidecar {} exited before it was ready ({status}); log:\n{}",
                    self.id,
                    tail(&self.logs(), 40)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sidecar {} not ready on {} after {READY_TIMEOUT:?}; log:\n{}",
                    self.id,
                    self.addr,
                    tail(&self.logs(), 40)
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// A raw request; errors are returned, not panicked on.
    pub fn try_request(&self, raw: &[u8]) -> std::io::Result<http::Response> {
        http::request(self.addr, raw)
    }

    pub fn try_get(&self, path: &str) -> std::io::Result<http::Response> {
        http::simple(self.addr, "GET", path, b"")
    }

    /// Sends `raw` and returns the parsed response; panics (with the log) if
    /// the sidecar does not answer.
    pub fn request(&self, raw: &[u8]) -> http::Response {
        self.try_request(raw).unwrap_or_else(|e| {
            panic!(
                "sidecar {} did not answer a request: {e}; log:\n{}",
                self.id,
                tail(&self.logs(), 40)
            )
        })
    }

    pub fn get_response(&self, path: &str) -> http::Response {
        self.try_get(path).unwrap_or_else(|e| {
            panic!(
                "sidecar {} did not answer GET {path}: {e}; log:\n{}",
                self.id,
                tail(&self.logs(), 40)
            )
        })
    }

    /// `GET path` -> (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self.get_response(path);
        (r.status, r.body)
    }

    /// `GET path` with the body parsed as JSON.
    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.get_response(path);
        (r.status, r.json())
    }

    pub fn head(&self, path: &str) -> http::Response {
        self.request(
            format!(
                "HEAD {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.addr
            )
            .as_bytes(),
        )
    }

    pub fn post(&self, path: &str, body: &str) -> http::Response {
        http::simple(self.addr, "POST", path, body.as_bytes()).unwrap_or_else(|e| {
            panic!(
                "sidecar {} did not answer POST {path}: {e}; log:\n{}",
                self.id,
                tail(&self.logs(), 40)
            )
        })
    }

    /// True when `/leader` answers 200; false on 503 or no answer at all.
    pub fn is_leader(&self) -> bool {
        matches!(self.try_get("/leader"), Ok(r) if r.status == 200)
    }

    /// The `/leader` body.
    pub fn leader_view(&self) -> serde_json::Value {
        self.get_json("/leader").1
    }

    /// The fencing token this sidecar reports, if any.
    pub fn fencing_token(&self) -> Option<i64> {
        self.leader_view()["fencing_token"].as_i64()
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap_or_else(|e| panic!("kill({sig}) sidecar {}: {e}", self.id));
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

    /// Waits for the process to exit; panics (after SIGKILL) if it has not
    /// within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if wait_until(timeout, || self.try_wait().is_some()) {
            return self.exit.expect("just observed");
        }
        let _ = self.child.as_mut().map(Child::kill);
        panic!(
            "sidecar {} still running {timeout:?} after being asked to exit; log:\n{}",
            self.id,
            tail(&self.logs(), 40)
        );
    }

    /// SIGKILL (a crash) and reap.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if self.exit.is_none() {
                let _ = child.kill();
                self.exit = child.wait().ok();
            }
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- sidecar {} ({}) log tail ---\n{}",
                self.id,
                self.addr,
                tail(&self.logs(), 30)
            );
        }
    }
}

/// Runs the binary with exactly `args` and `envs` (on a clean environment) to
/// completion, for configuration errors. Panics, after killing it, if it is
/// still running after `timeout`: a bad configuration must exit, not serve.
pub fn run_to_exit(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Output {
    let dir = test_tempdir("run");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = clean_command();
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"));
    kill_on_parent_death(&mut cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {BIN}: {e}"));
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let read = |p: &PathBuf| fs::read(p).unwrap_or_default();
    match status {
        Some(status) => Output {
            status,
            stdout: read(&out_path),
            stderr: read(&err_path),
        },
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`etcd-elector {}` still running after {timeout:?}; expected it to exit.\n\
                 stdout:\n{}\nstderr:\n{}",
                args.join(" "),
                tail(&String::from_utf8_lossy(&read(&out_path)), 20),
                tail(&String::from_utf8_lossy(&read(&err_path)), 20)
            );
        }
    }
}

/// Polls until exactly one of `sidecars` answers 200 on `/leader` in one
/// round, and returns its index. Panics with every log if that does not
/// happen within `timeout`.
pub fn wait_for_one_leader(sidecars: &[Sidecar], timeout: Duration) -> usize {
    let mut found = None;
    let ok = wait_until(timeout, || {
        let leaders: Vec<usize> = (0..sidecars.len())
            .filter(|&i| sidecars[i].is_leader())
            .collect();
        found = (leaders.len() == 1).then(|| leaders[0]);
        found.is_some()
    });
    if !ok {
        let views: Vec<String> = sidecars
            .iter()
            .map(|s| match s.try_get("/leader") {
                Ok(r) => format!("{}: {} {}", s.id(), r.status, r.body),
                Err(e) => format!("{}: no answer ({e})", s.id()),
            })
            .collect();
        panic!(
            "no single leader among {} sidecars within {timeout:?}:\n{}",
            sidecars.len(),
            views.join("\n")
        );
    }
    found.expect("set when ok")
}

/// `n` replicas of one key, ids `replica-0`.., all started and ready.
pub fn replicas(endpoints: &str, key: &str, n: usize, extra_args: &[&str]) -> Vec<Sidecar> {
    (0..n)
        .map(|i| Sidecar::start(endpoints, key, &format!("replica-{i}"), extra_args))
        .collect()
}
