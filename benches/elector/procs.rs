//! The processes the bench runs: its own etcd, `etcd-elector` replicas and `etcdctl elect`
//! peers, plus what `/proc` and etcd's `/metrics` say about them.
//!
//! Every child is killed (SIGKILL) when its [`Proc`] is dropped and gets SIGKILL as its
//! parent-death signal, so an interrupted bench leaves nothing running. That signal follows
//! the *thread* that forked the child, so children are only ever spawned from the bench's main
//! thread. Only children the bench started are ever signalled, by pid.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::http;

/// The sidecar binary: as built for this bench by cargo (release profile), or
/// `$ELECTOR_BENCH_BIN`, to measure another build (a proposed change) with the same bench.
pub fn elector_bin() -> String {
    std::env::var("ELECTOR_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_etcd-elector").to_string())
}

/// Next port to try. Ports are handed out below the kernel's ephemeral range (32768 and up),
/// so outgoing connections of this or a parallel test run never take one between our probe
/// and the child's bind.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A loopback port that is free now.
pub fn free_port() -> u16 {
    if NEXT_PORT.load(Ordering::Relaxed) == 0 {
        let base = 20_000 + (std::process::id() % 50) as u16 * 200;
        let _ = NEXT_PORT.compare_exchange(0, base, Ordering::Relaxed, Ordering::Relaxed);
    }
    loop {
        let mut port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        if port >= 32_000 {
            NEXT_PORT.store(20_000, Ordering::Relaxed);
            port = 20_000;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A directory for this run's data and logs: on /dev/shm when present (etcd fsyncs every
/// write; on tmpfs that costs nothing, as the reference figures assume).
pub fn run_dir() -> tempfile::TempDir {
    let mut builder = tempfile::Builder::new();
    builder.prefix("etcd-elector-bench-");
    if Path::new("/dev/shm").is_dir() {
        if let Ok(dir) = builder.tempdir_in("/dev/shm") {
            return dir;
        }
    }
    builder.tempdir().expect("creating a temporary directory")
}

/// The filesystem type holding `path` (longest mount prefix in /proc/mounts).
pub fn fs_type(path: &Path) -> String {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (_dev, mnt, ty) = (it.next()?, it.next()?, it.next()?);
            path.starts_with(mnt).then(|| (mnt.len(), ty.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, ty)| ty)
        .unwrap_or_else(|| "unknown".into())
}

extern "C" {
    /// libc's setpriority(2); std does not wrap it and the crate has no libc dependency.
    fn setpriority(which: i32, who: u32, prio: i32) -> i32;
}

/// Set the nice value of the calling thread (Linux: nice is per thread, and inherited by the
/// threads and processes it creates). False when not permitted (lowering below 0 needs
/// CAP_SYS_NICE).
pub fn set_thread_nice(nice: i32) -> bool {
    // PRIO_PROCESS with who = 0: the calling thread.
    // SAFETY: a plain system call with no pointers.
    unsafe { setpriority(0, 0, nice) == 0 }
}

/// The nice value the bench's own threads run at when allowed (see `main`); children and the
/// simulation's runtime are put back to 0.
pub const OBSERVER_NICE: i32 = -5;

/// A child process, killed on drop.
pub struct Proc {
    child: Child,
    pub name: String,
    reaped: Option<ExitStatus>,
}

impl Proc {
    fn spawn(mut cmd: Command, name: &str) -> Proc {
        // SAFETY: the closure runs between fork and exec and only makes the setpriority(2) and
        // prctl(2) system calls, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // Back to the default priority: only the bench's observers run above it.
                set_thread_nice(0);
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            reaped: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: Signal) {
        if self.reaped.is_none() {
            let _ = kill(Pid::from_raw(self.pid()), sig);
        }
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().ok().flatten();
        }
        self.reaped
    }

    /// Wait up to `timeout` for the process to end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGKILL and reap.
    pub fn kill_now(&mut self) {
        if self.reaped.is_none() {
            let _ = self.child.kill();
            self.reaped = self.child.wait().ok();
        }
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// CPU time (user + system, all threads, including ended ones) from /proc/PID/stat.
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // /proc reports in USER_HZ, which is 100 on Linux whatever the kernel's HZ.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// CPU time of the live threads, in nanoseconds, from /proc/PID/task/*/schedstat: far finer
/// than the 10 ms ticks of [`cpu_time`], which is what an idle process needs. Threads that end
/// inside a window are missed, so callers compare it with [`cpu_time`].
pub fn cpu_time_fine(pid: i32) -> Option<Duration> {
    let mut total = 0u64;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(task) = task else { continue };
        let Ok(text) = fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(Duration::from_nanos(total))
}

/// CPU time of a process: the finer of the two sources unless threads ended meanwhile (then
/// the ticks, which count them, are larger).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuMark {
    ticks: Duration,
    fine: Duration,
}

impl CpuMark {
    pub fn of(pid: i32) -> CpuMark {
        CpuMark {
            ticks: cpu_time(pid).unwrap_or_default(),
            fine: cpu_time_fine(pid).unwrap_or_default(),
        }
    }

    /// CPU used between `self` and `later`.
    pub fn since(self, later: CpuMark) -> Duration {
        let ticks = later.ticks.saturating_sub(self.ticks);
        let fine = later.fine.saturating_sub(self.fine);
        // Ticks are sampled: they may read up to a tick less than the truth. Prefer the fine
        // figure unless the ticks exceed it by more than that rounding.
        if ticks > fine + Duration::from_millis(20) {
            ticks
        } else {
            fine
        }
    }
}

/// CPU used on the whole machine and by this bench's process tree, to tell how much of a
/// scenario's machine was taken by something else (other builds and tests share these cores).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadMark {
    at: Option<Instant>,
    /// Time all CPUs spent in processes (user, nice, system), from /proc/stat.
    busy: Duration,
    /// This process, its reaped children, and its live children.
    own: Duration,
}

impl LoadMark {
    pub fn now() -> LoadMark {
        let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...: only the first three are time
        // charged to processes (interrupt time, loopback traffic's included, is not).
        let busy: u64 = ticks.iter().take(3).sum();
        let me = std::process::id() as i32;
        let mut own = self_and_reaped(me).unwrap_or_default();
        for child in children_of(me) {
            own += cpu_time(child).unwrap_or_default();
        }
        LoadMark {
            at: Some(Instant::now()),
            busy: Duration::from_millis(busy * 10),
            own,
        }
    }

    /// Share of one core used by processes outside this bench between `self` and `later`.
    pub fn foreign_since(self, later: LoadMark) -> f64 {
        let (Some(a), Some(b)) = (self.at, later.at) else {
            return f64::NAN;
        };
        let busy = later.busy.saturating_sub(self.busy);
        let own = later.own.saturating_sub(self.own);
        if std::env::var_os("ELECTOR_BENCH_DEBUG").is_some() {
            eprintln!(
                "load: busy {busy:?} own {own:?} over {:?}; {self:?} -> {later:?}",
                b - a
            );
        }
        busy.saturating_sub(own).as_secs_f64() / (b - a).as_secs_f64()
    }
}

/// utime + stime + cutime + cstime of `pid` (itself and the children it has reaped).
fn self_and_reaped(pid: i32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse().ok())
        .collect();
    Some(Duration::from_millis(fields.iter().sum::<u64>() * 10))
}

/// Live direct children of `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s[s.rfind(')')? + 2..].to_string();
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// A field of /proc/PID/status in kB (VmRSS, VmHWM, ...), or a count (Threads).
pub fn status_field(pid: i32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A single-member etcd on loopback, data on the run directory.
pub struct Etcd {
    pub proc: Proc,
    pub client_port: u16,
    pub data_dir: PathBuf,
}

impl Etcd {
    pub fn start(dir: &Path) -> Etcd {
        for attempt in 1..=3 {
            let client_port = free_port();
            let peer_port = free_port();
            let data_dir = dir.join(format!("etcd-{client_port}"));
            let log = File::create(dir.join(format!("etcd-{client_port}.log"))).expect("etcd log");
            let client = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let mut cmd = Command::new("etcd");
            cmd.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--name", "bench"])
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("bench={peer}")])
                .args(["--initial-cluster-token", &format!("bench-{client_port}")])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            let mut etcd = Etcd {
                proc: Proc::spawn(cmd, "etcd"),
                client_port,
                data_dir,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if etcd.proc.try_exit().is_some() {
                    break;
                }
                if let Ok(r) = http::get_to_eof(etcd.addr(), "/health") {
                    if r.status == 200 && r.body.contains("true") {
                        return etcd;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("bench: etcd did not come up (attempt {attempt}); retrying on other ports");
        }
        panic!("etcd did not start; see the etcd-*.log files in the run directory");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// etcd's own Prometheus counters, by series (`name{labels}` -> value).
    pub fn metrics(&self) -> EtcdMetrics {
        let body = http::get_to_eof(self.addr(), "/metrics")
            .map(|r| r.body)
            .unwrap_or_default();
        let series = body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse::<f64>().ok()?))
            })
            .collect();
        EtcdMetrics { series }
    }
}

/// A scrape of etcd's `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct EtcdMetrics {
    pub series: HashMap<String, f64>,
}

impl EtcdMetrics {
    /// gRPC messages received, per method: one per unary request, one per message on a stream
    /// (each keep-alive on the LeaseKeepAlive stream counts once).
    pub fn grpc_received(&self) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        for (name, v) in &self.series {
            if let Some(labels) = name.strip_prefix("grpc_server_msg_received_total{") {
                if let Some(method) = label(labels, "grpc_method") {
                    *out.entry(method).or_insert(0.0) += v;
                }
            }
        }
        out
    }

    /// The sum of all series called exactly `name` (any labels).
    pub fn sum(&self, name: &str) -> f64 {
        self.series
            .iter()
            .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }
}

fn label(labels: &str, key: &str) -> Option<String> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(labels[start..end].to_string())
}

/// Per-method difference between two [`EtcdMetrics::grpc_received`] maps.
pub fn grpc_delta(before: &EtcdMetrics, after: &EtcdMetrics) -> Vec<(String, f64)> {
    let b = before.grpc_received();
    let mut out: Vec<(String, f64)> = after
        .grpc_received()
        .into_iter()
        .map(|(m, v)| {
            let d = v - b.get(&m).copied().unwrap_or(0.0);
            (m, d)
        })
        .filter(|(_, d)| *d > 0.0)
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// One `etcd-elector` replica.
pub struct Sidecar {
    pub proc: Proc,
    pub id: String,
    pub port: u16,
}

/// How to start replicas of one election.
#[derive(Clone)]
pub struct SidecarSpec {
    pub endpoint: String,
    pub key: String,
    pub ttl_secs: u64,
    pub log_dir: PathBuf,
    /// Run under `taskset -c CPUS`.
    pub cpus: Option<String>,
    /// More flags.
    pub extra: Vec<String>,
}

impl SidecarSpec {
    pub fn spawn(&self, id: &str) -> Sidecar {
        let port = free_port();
        let mut cmd = match &self.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(elector_bin());
                c
            }
            None => Command::new(elector_bin()),
        };
        let log = File::create(self.log_dir.join(format!("{id}.log"))).expect("sidecar log");
        cmd.env_clear();
        if admin_flag() {
            // The admin API defaults to a fixed port; many replicas share this host.
            cmd.args(["--admin-listen", "off"]);
        }
        cmd.args(["--endpoints", &self.endpoint])
            .args(["--key", &self.key])
            .args(["--id", id])
            .args(["--ttl", &self.ttl_secs.to_string()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--log-format", "json"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        Sidecar {
            proc: Proc::spawn(cmd, id),
            id: id.to_string(),
            port,
        }
    }
}

/// Whether this build has a flag (the sidecar grows while the bench is written).
pub fn has_flag(flag: &str) -> bool {
    Command::new(elector_bin())
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

/// Whether this build has `--admin-listen` (a fixed default port, which replicas on one host
/// would fight over).
fn admin_flag() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| has_flag("--admin-listen"))
}

impl Sidecar {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `GET /leader` on a fresh connection.
    pub fn leader(&self) -> std::io::Result<http::Response> {
        http::get_once(self.addr(), "/leader")
    }

    /// True once this replica knows a leader (itself, or the holder it follows).
    pub fn settled(&self) -> bool {
        match self.leader() {
            Ok(r) => serde_json::from_str::<serde_json::Value>(&r.body)
                .map(|v| v["leader"].is_string())
                .unwrap_or(false),
            Err(_) => false,
        }
    }
}

/// A line an `etcdctl elect` wrote, when the bench read it.
pub struct Line {
    pub at: Instant,
    pub slot: usize,
    pub generation: u64,
    pub text: String,
}

/// One `etcdctl elect NAME PROPOSAL` peer. Its stdout is read by a thread that timestamps
/// each line; the first line it prints is the election key, printed once it is elected.
pub struct Etcdctl {
    pub proc: Proc,
}

impl Etcdctl {
    pub fn spawn(
        endpoint: &str,
        election: &str,
        proposal: &str,
        slot: usize,
        generation: u64,
        log_dir: &Path,
        lines: mpsc::Sender<Line>,
    ) -> Etcdctl {
        let log = File::create(log_dir.join(format!("{proposal}.log"))).expect("etcdctl log");
        let mut cmd = Command::new("etcdctl");
        cmd.env_clear()
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint])
            .args(["elect", election, proposal])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut proc = Proc::spawn(cmd, proposal);
        let stdout = proc.take_stdout().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(text) = line else { break };
                let at = Instant::now();
                if lines
                    .send(Line {
                        at,
                        slot,
                        generation,
                        text,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        Etcdctl { proc }
    }
}
