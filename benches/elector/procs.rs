//! The processes the bench runs besides the kit's etcd (`etcd-elector` replicas, `etcdctl
//! elect` peers), and what `/proc` and etcd's `/metrics` say about them. Every child is the
//! kit's [`Child`], so it is spawned from the bench's main thread only (see its docs).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use elector_testkit::etcd::etcdctl_bin;
use elector_testkit::{Child, ElectorArgs, Etcd, EtcdCounts, Sidecar};
use procfs::process::{Process, Status};
use procfs::{CurrentSI, KernelStats};

/// The sidecar as cargo built it for this bench, or `$ELECTOR_BENCH_BIN` (a proposed change).
pub fn elector_bin() -> String {
    std::env::var("ELECTOR_BENCH_BIN")
        .unwrap_or_else(|_| elector_testkit::elector_bin().display().to_string())
}

/// The filesystem type holding `path` (longest mount prefix in /proc/mounts).
pub fn fs_type(path: &Path) -> String {
    let path = path.to_string_lossy();
    procfs::mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| path.starts_with(&m.fs_file))
        .max_by_key(|m| m.fs_file.len())
        .map_or_else(|| "unknown".into(), |m| m.fs_vfstype)
}

/// The nice value of the bench's own threads when allowed (see `main`); children and the
/// simulation's runtime run at 0.
pub const OBSERVER_NICE: i32 = -5;

/// CPU time of `pid` (all threads, ended ones too) from /proc/PID/stat, plus that of the
/// children it has reaped when `reaped`.
fn cpu_time(pid: i32, reaped: bool) -> Option<Duration> {
    let s = Process::new(pid).ok()?.stat().ok()?;
    let children = if reaped { s.cutime + s.cstime } else { 0 };
    Some(ticks(s.utime + s.stime + children.max(0) as u64))
}

/// A count of /proc's clock ticks (USER_HZ) as a duration.
fn ticks(n: u64) -> Duration {
    Duration::from_millis(n * 1000 / procfs::ticks_per_second())
}

/// CPU time of the live threads from /proc/PID/task/*/schedstat (ns): far finer than the
/// 10 ms ticks, which is what an idle process needs, but blind to threads that ended.
fn cpu_time_fine(pid: i32) -> Option<Duration> {
    let tasks = Process::new(pid).ok()?.tasks().ok()?;
    let total = tasks
        .flatten()
        .filter_map(|t| t.schedstat().ok())
        .map(|s| s.sum_exec_runtime)
        .sum();
    Some(Duration::from_nanos(total))
}

/// CPU time of a process, from both sources.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    ticks: Duration,
    fine: Duration,
}

impl CpuMark {
    pub fn of(pid: i32) -> CpuMark {
        CpuMark {
            ticks: cpu_time(pid, false).unwrap_or_default(),
            fine: cpu_time_fine(pid).unwrap_or_default(),
        }
    }

    /// CPU used between `self` and `later`.
    pub fn since(self, later: CpuMark) -> Duration {
        let ticks = later.ticks.saturating_sub(self.ticks);
        let fine = later.fine.saturating_sub(self.fine);
        // Ticks are sampled: they may read up to a tick less than the truth. Prefer the fine
        // figure unless the ticks exceed it by more than that rounding (threads ended).
        if ticks > fine + Duration::from_millis(20) {
            ticks
        } else {
            fine
        }
    }
}

/// CPU used on the whole machine and by this bench's process tree, to tell how much of a
/// scenario's machine was taken by something else (other builds and tests share these cores).
#[derive(Debug, Clone, Copy)]
pub struct LoadMark {
    at: Instant,
    /// Time all CPUs spent in processes (user, nice, system), from /proc/stat.
    busy: Duration,
    /// This process, its reaped children, and its live children.
    own: Duration,
}

impl LoadMark {
    pub fn now() -> LoadMark {
        // user nice system idle iowait irq softirq steal ...: only the first three are time
        // charged to processes (interrupt time, loopback traffic's included, is not).
        let busy =
            KernelStats::current().map_or(0, |k| k.total.user + k.total.nice + k.total.system);
        let me = std::process::id() as i32;
        let mut own = cpu_time(me, true).unwrap_or_default();
        for child in elector_testkit::job::children_of(me) {
            own += cpu_time(child, false).unwrap_or_default();
        }
        LoadMark {
            at: Instant::now(),
            busy: ticks(busy),
            own,
        }
    }

    /// Share of one core used by processes outside this bench between `self` and `later`.
    pub fn foreign_since(self, later: LoadMark) -> f64 {
        let busy = later.busy.saturating_sub(self.busy);
        let own = later.own.saturating_sub(self.own);
        if std::env::var_os("ELECTOR_BENCH_DEBUG").is_some() {
            eprintln!(
                "load: busy {busy:?} own {own:?} over {:?}; {self:?} -> {later:?}",
                later.at - self.at
            );
        }
        busy.saturating_sub(own).as_secs_f64() / (later.at - self.at).as_secs_f64()
    }
}

/// /proc/PID/status (VmRSS, VmHWM in kB; Threads).
pub fn status(pid: i32) -> Option<Status> {
    Process::new(pid).ok()?.status().ok()
}

/// What etcd and some processes did over an idle window.
pub struct Window {
    pub secs: f64,
    /// CPU used by each of the processes, in the order given.
    pub cpu: Vec<Duration>,
    pub etcd: EtcdCounts,
}

impl Window {
    /// Watch `pids` and etcd for `length` (this thread sleeps through it).
    pub fn measure(etcd: &Etcd, pids: &[i32], length: Duration) -> Window {
        let m0 = EtcdCounts::scrape(etcd);
        let cpu0: Vec<CpuMark> = pids.iter().map(|&p| CpuMark::of(p)).collect();
        let t0 = Instant::now();
        std::thread::sleep(length);
        let cpu1: Vec<CpuMark> = pids.iter().map(|&p| CpuMark::of(p)).collect();
        let m1 = EtcdCounts::scrape(etcd);
        Window {
            secs: t0.elapsed().as_secs_f64(),
            cpu: cpu0.iter().zip(cpu1).map(|(a, b)| a.since(b)).collect(),
            etcd: m1.since(&m0),
        }
    }
}

/// How to start replicas of one election: the kit's [`Sidecar`] at the binary's own log level
/// (its debug logs would be measured too), without an admin server, logging to the run's
/// directory.
#[derive(Clone)]
pub struct SidecarSpec {
    pub endpoint: String,
    pub key: String,
    pub ttl_secs: u64,
    pub log_dir: PathBuf,
    /// Run under `taskset -c CPUS`.
    pub cpus: Option<String>,
    pub extra: Vec<String>,
}

impl SidecarSpec {
    pub fn spawn(&self, id: &str) -> Sidecar {
        let taskset = self.cpus.iter().flat_map(|cpus| ["taskset", "-c", cpus]);
        let program: Vec<String> = taskset.map(str::to_string).chain([elector_bin()]).collect();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        Sidecar::builder()
            .on(&self.endpoint, &self.key, id)
            .ttl(self.ttl_secs)
            .program(&program)
            .empty_env()
            .env("RUST_LOG", "info")
            .no_admin()
            .log_in(&self.log_dir)
            .args(&extra)
            .spawn()
    }
}

/// What the bench asks a replica.
pub trait Probes {
    /// Asks `/leader` on fresh connections every 0.1 ms until it answers 200: when it first
    /// answered at all, when it answered 200, and after how many requests; `None` if not
    /// within `timeout`.
    fn until_200(&self, timeout: Duration) -> Option<(Instant, Instant, usize)>;
    /// True once this replica knows a leader (itself, or the holder it follows).
    fn settled(&self) -> bool;
}

impl Probes for Sidecar {
    fn until_200(&self, timeout: Duration) -> Option<(Instant, Instant, usize)> {
        let deadline = Instant::now() + timeout;
        let (mut first, mut polls) = (None, 0);
        loop {
            polls += 1;
            if let Ok(r) = self.try_get("/leader") {
                let now = Instant::now();
                let first = *first.get_or_insert(now);
                if r.status == 200 {
                    return Some((first, now, polls));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn settled(&self) -> bool {
        let body = self.try_get("/leader").map(|r| r.body).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v["leader"].is_string())
    }
}

/// One `etcdctl elect NAME PROPOSAL` peer, logging to `log_dir`. A thread of its own reads
/// its stdout and stamps the first line, which etcdctl prints once elected: the moment it
/// knew. (The kit's `job::Etcdctl` keeps stdout in a file, without the moment of each line.)
pub struct Etcdctl {
    pub proc: Child,
    elected: Arc<OnceLock<Instant>>,
}

impl Etcdctl {
    pub fn spawn(endpoint: &str, election: &str, proposal: &str, log_dir: &Path) -> Etcdctl {
        let log_path = log_dir.join(format!("{proposal}.log"));
        let log = File::create(&log_path).expect("etcdctl log");
        let mut cmd = Command::new(etcdctl_bin());
        cmd.env_clear()
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint])
            .args(["elect", election, proposal])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut proc = Child::spawn(&mut cmd, proposal, &[log_path]);
        let stdout = proc.take_stdout().expect("piped stdout");
        let elected = Arc::new(OnceLock::new());
        let stamp = elected.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !line.trim().is_empty() {
                    let _ = stamp.set(Instant::now());
                }
            }
        });
        Etcdctl { proc, elected }
    }

    /// When it printed that it was elected, if it has.
    pub fn elected_at(&self) -> Option<Instant> {
        self.elected.get().copied()
    }
}
