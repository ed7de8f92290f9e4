//! The etcd-elector benchmark (issue 5): how fast leadership moves, what an idle replica costs,
//! how fast probes are answered, and how that grows with the fleet, with `etcdctl elect` as the
//! peer in the same run.
//!
//! `cargo bench --bench elector` runs everything (about 10 minutes on 2 cores); set
//! `ELECTOR_BENCH_QUICK=1` for a smoke run of a few repetitions (about 1.5 minutes). It starts
//! its own etcd on free loopback ports with its data on /dev/shm, and real `etcd-elector` and
//! `etcdctl elect` processes. It prints a markdown table and writes every figure (min, p50,
//! p90, p99, max) to `target/bench/elector.json` (or `$ELECTOR_BENCH_OUT`).
//!
//! Environment:
//! * `ELECTOR_BENCH_QUICK=1`: few repetitions, short windows.
//! * `ELECTOR_BENCH_ONLY=footprint,probe,handoff,crash,scale`: a subset (also accepted as
//!   arguments after `--`). `handoff` includes the `etcdctl elect` peer.
//! * `ELECTOR_BENCH_REPS=N`: handoffs per scenario (default 100 for 3 and 10 candidates, 50
//!   for 100 candidates and for crash failover; 5 when quick).
//! * `ELECTOR_BENCH_CANDIDATES=3,10,100`, `ELECTOR_BENCH_SCALE=10,100,1000`,
//!   `ELECTOR_BENCH_CRASH_TTL=2` (seconds), `ELECTOR_BENCH_IDLE_SECS=60`.
//! * `ELECTOR_BENCH_BIN=PATH`: measure another build of the sidecar (a proposed change)
//!   instead of the one cargo built for this bench.
//! * `ELECTOR_BENCH_NO_PEER=1`, `ELECTOR_BENCH_NO_LOCK=1`, `ELECTOR_BENCH_NO_ELECTION=1`,
//!   `ELECTOR_BENCH_NO_REVOKE=1`: leave out the `etcdctl elect` runs, or etcd-elector's default
//!   (`lock`), `--protocol election` or `--no-succession` runs, of the handoff scenario.
//! * `ELECTOR_BENCH_SETTLE_MS=300`: pause between handoffs (see `handoff::settle`).
//! * `ELECTOR_BENCH_NO_NICE=1`: run the bench's observers at the replicas' priority.
//! * `ELECTOR_BENCH_OUT=PATH`: where the JSON goes (a `.md` copy of the tables beside it).
//! * `ELECTOR_BENCH_KEEP=1`: keep the run directory (logs of every process) after the run; it
//!   is also kept when something went wrong or a goal was missed.
//!   `ELECTOR_BENCH_DEBUG=1` prints each handoff's wall-clock stamps, to lay beside those logs.
//!
//! The process exits 1 when a scenario could not be measured (an anomaly), never because a
//! goal was missed: goals depend on the machine.

mod footprint;
mod handoff;
mod probe;
mod procs;
mod scale;
mod stats;
mod watch;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use elector_testkit::etcd::{etcd_bin, etcdctl_bin};
use elector_testkit::{process::set_thread_nice, test_tempdir, Etcd};
use procs::SidecarSpec;
use stats::{Goal, Report, Summary};
use tokio::runtime::Runtime;
use watch::Ctl;

/// What every scenario works with.
pub struct Ctx<'rt> {
    pub rt: &'rt Runtime,
    pub etcd: Etcd,
    pub ctl: Ctl<'rt>,
    pub dir: PathBuf,
    pub report: Report,
}

impl<'rt> Ctx<'rt> {
    /// Replace etcd by a fresh one, so a scenario never pays for the leases, watchers and
    /// revisions another one left behind.
    pub fn fresh_etcd(&mut self) {
        let data = self.etcd.data_dir();
        // The new one starts before the old one is dropped (killed) and its data removed.
        self.etcd = Etcd::start_in(&self.dir);
        self.ctl = Ctl::connect(self.rt, &self.etcd.endpoint());
        let _ = std::fs::remove_dir_all(data);
    }

    /// How to start replicas of `key` on this run's etcd, logging to its directory: unpinned,
    /// no extra flags (a scenario that wants them sets them over this).
    pub fn spec(&self, key: String, ttl_secs: u64) -> SidecarSpec {
        SidecarSpec {
            endpoint: self.etcd.endpoint(),
            key,
            ttl_secs,
            log_dir: self.dir.clone(),
            cpus: None,
            extra: Vec::new(),
        }
    }
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

pub fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn first_line_of(cmd: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd).args(args).output();
    let stdout = out.map(|o| o.stdout).unwrap_or_default();
    let first = String::from_utf8_lossy(&stdout)
        .lines()
        .next()
        .map(str::to_string);
    first.unwrap_or_else(|| "unknown".into())
}

/// What to run and how much of it, from the environment (see the module docs).
struct Plan {
    quick: bool,
    only: HashSet<String>,
    reps_override: Option<usize>,
    candidates: Vec<usize>,
    scale_counts: Vec<usize>,
    crash_ttl: u64,
    crash_reps: usize,
    idle: Duration,
    probe_secs: Duration,
    starts: usize,
    /// Whole keep-alive intervals (ttl/3 = 10/3 s in the simulation): 3 or 6 of them.
    scale_window: Duration,
    scale_handoffs: usize,
}

impl Plan {
    fn from_env() -> Plan {
        let quick = env_flag("ELECTOR_BENCH_QUICK");
        let only_env = std::env::var("ELECTOR_BENCH_ONLY").unwrap_or_default();
        let only = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .chain(only_env.split(',').map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty())
            .collect();
        let reps_override = env_num("ELECTOR_BENCH_REPS").map(|n| n as usize);
        let pick = |quick_value: u64, full: u64| if quick { quick_value } else { full };
        Plan {
            quick,
            only,
            reps_override,
            candidates: env_list("ELECTOR_BENCH_CANDIDATES", &[3, 10, 100]),
            scale_counts: env_list(
                "ELECTOR_BENCH_SCALE",
                if quick { &[10, 100] } else { &[10, 100, 1000] },
            ),
            crash_ttl: env_num("ELECTOR_BENCH_CRASH_TTL").unwrap_or(2),
            crash_reps: reps_override.unwrap_or(pick(3, 50) as usize),
            idle: Duration::from_secs(env_num("ELECTOR_BENCH_IDLE_SECS").unwrap_or(pick(10, 60))),
            probe_secs: Duration::from_secs(pick(2, 10)),
            starts: pick(5, 50) as usize,
            scale_window: Duration::from_secs(pick(10, 20)),
            scale_handoffs: pick(5, 50) as usize,
        }
    }

    fn want(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.contains(scenario)
    }

    fn reps_for(&self, n: usize) -> usize {
        self.reps_override.unwrap_or(match (self.quick, n) {
            (true, _) => 5,
            (false, n) if n >= 100 => 50,
            _ => 100,
        })
    }
}

/// The bench observes from the same two cores as everything it measures. When 99 replicas
/// wake at once, an observer at the same priority can be scheduled milliseconds late and
/// stamp events late; above them (nice -5, inherited by the bench's threads; children are
/// reset to 0) its stamps follow the events. Without CAP_SYS_NICE this silently stays 0.
fn raise_observer_priority() -> i32 {
    if !env_flag("ELECTOR_BENCH_NO_NICE") && set_thread_nice(procs::OBSERVER_NICE) {
        procs::OBSERVER_NICE
    } else {
        0
    }
}

/// The machine and the settings, at the head of the report.
fn describe_run(report: &mut Report, dir: &Path, plan: &Plan, observer_nice: i32) {
    use procfs::{CpuInfo, Current, Meminfo};
    let cpu = CpuInfo::current().ok();
    let model = cpu.as_ref().and_then(|c| c.model_name(0));
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = Meminfo::current()
        .map(|m| format!("{:.1} GiB", m.mem_total as f64 / (1u64 << 30) as f64))
        .unwrap_or_default();
    let wrk = first_line_of("wrk", &["--version"]);
    report.machine = vec![
        ("CPU", format!("{nproc} x {}", model.unwrap_or("unknown"))),
        ("memory", mem),
        ("kernel", first_line_of("uname", &["-r"])),
        ("etcd", first_line_of(etcd_bin(), &["--version"])),
        ("etcdctl", first_line_of(etcdctl_bin(), &["version"])),
        ("wrk", wrk.split(" [").next().unwrap_or("").to_string()),
        (
            "etcd data",
            format!("{} ({})", dir.display(), procs::fs_type(dir)),
        ),
        ("etcd-elector binary", procs::elector_bin()),
        (
            "bench observer priority",
            format!("nice {observer_nice} (replicas, etcd, etcdctl at 0)"),
        ),
    ];
    let (mode, prefix) = if plan.quick {
        ("quick (ELECTOR_BENCH_QUICK=1)", "ELECTOR_BENCH_QUICK=1 ")
    } else {
        ("full", "")
    };
    report.settings = vec![
        ("mode", mode.into()),
        ("command", format!("{prefix}cargo bench --bench elector")),
    ];
}

/// Runs `scenario`, if the plan wants it, on a fresh etcd (unless it makes its own) and records
/// how much CPU something other than this bench used meanwhile: the bench cannot keep other
/// work off the machine, but it can say when there was some.
fn scenario(ctx: &mut Ctx, plan: &Plan, name: &str, fresh: bool, run: impl FnOnce(&mut Ctx)) {
    if !plan.want(name) {
        return;
    }
    let load = procs::LoadMark::now();
    if fresh {
        ctx.fresh_etcd();
    }
    run(ctx);
    let share = load.foreign_since(procs::LoadMark::now());
    ctx.report.rows(
        "machine",
        name,
        &[(
            "CPU used by other processes during the scenario",
            "% of a core",
            &[share * 100.0],
            "/proc/stat busy time minus this bench and its children; 0 on a quiet machine",
        )],
    );
    if share > 0.1 {
        eprintln!(
            "bench: warning: other processes used {:.0} % of a core during {name}; its figures are disturbed",
            share * 100.0
        );
    }
}

/// Announces one run of the handoff scenario and gives it a fresh etcd.
fn begin_handoffs(ctx: &mut Ctx, n: usize, reps: usize, who: &str) {
    eprintln!("bench: graceful handoff, {n} candidates, {reps} reps: {who}");
    ctx.fresh_etcd();
}

/// Graceful handoffs: ours (lock, and election protocol when this build has it) against
/// `etcdctl elect`, per candidate count.
fn handoffs(ctx: &mut Ctx, plan: &Plan) {
    // Measured too when this build has it: it is the remedy for the lock protocol's
    // thundering herd at large candidate counts.
    let with_election_protocol =
        !env_flag("ELECTOR_BENCH_NO_ELECTION") && procs::has_flag("--protocol");
    for &n in &plan.candidates {
        let reps = plan.reps_for(n);
        let ours = if env_flag("ELECTOR_BENCH_NO_LOCK") {
            Vec::new()
        } else {
            begin_handoffs(ctx, n, reps, "etcd-elector");
            handoff::ours(ctx, n, reps, handoff::Way::Succession)
        };
        let peer = if env_flag("ELECTOR_BENCH_NO_PEER") {
            Vec::new()
        } else {
            begin_handoffs(ctx, n, reps, "etcdctl elect");
            handoff::peer(ctx, n, reps)
        };
        if !ours.is_empty() && !peer.is_empty() {
            let c = handoff::compare(n, &ours, &peer);
            ctx.report.goals.push(Goal {
                goal: format!("handoff, {n} candidates, vs etcdctl elect"),
                target: "p50 <= 0.7 x etcdctl elect's".into(),
                measured: format!(
                    "p50 {:.2} vs {:.2} ms, p99 {:.2} vs {:.2} ms",
                    c.ours_p50_ms, c.peer_p50_ms, c.ours_p99_ms, c.peer_p99_ms
                ),
                met: c.ours_p50_ms <= 0.7 * c.peer_p50_ms,
            });
            ctx.report.comparisons.push(c);
        }
        if with_election_protocol {
            begin_handoffs(ctx, n, reps, "etcd-elector --protocol election");
            handoff::ours(ctx, n, reps, handoff::Way::Election);
        }
        if !env_flag("ELECTOR_BENCH_NO_REVOKE") {
            begin_handoffs(ctx, n, reps, "etcd-elector --no-succession");
            handoff::ours(ctx, n, reps, handoff::Way::Revoke);
        }
        if n == 100 && !ours.is_empty() {
            let s = Summary::bare(&ours);
            ctx.report.goals.push(Goal {
                goal: "handoff, 100 candidates".into(),
                target: "p99 <= 10 ms".into(),
                measured: format!("p99 {:.2} ms", s.p99),
                met: s.p99 <= 10.0,
            });
        }
    }
}

/// Crash failover, with its goal.
fn crash(ctx: &mut Ctx, ttl: u64, reps: usize) {
    let samples = handoff::crash(ctx, ttl, reps);
    if !samples.is_empty() {
        let s = Summary::bare(&samples);
        let bound = ttl as f64 * 1000.0 + 500.0;
        ctx.report.goals.push(Goal {
            goal: "crash failover".into(),
            target: format!("p99 <= TTL + 500 ms = {bound:.0} ms"),
            measured: format!("p99 {:.0} ms", s.p99),
            met: s.p99 <= bound,
        });
    }
}

/// Prints the tables and writes the JSON (and a `.md` copy) to `$ELECTOR_BENCH_OUT` or
/// `target/bench/elector.json`.
fn write_report(report: &Report) {
    let md = report.markdown();
    println!("{md}");
    let out = std::env::var_os("ELECTOR_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
            target.join("bench").join("elector.json")
        });
    if let Some(parent) = out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    // Plain data: serde_json writes even a NaN (as null).
    let json = serde_json::to_string_pretty(report).expect("encoding the report");
    match std::fs::write(&out, json) {
        Ok(()) => eprintln!("bench: wrote {}", out.display()),
        Err(e) => eprintln!("bench: cannot write {}: {e}", out.display()),
    }
    let _ = std::fs::write(out.with_extension("md"), &md);
}

fn main() -> ExitCode {
    let plan = Plan::from_env();
    let observer_nice = raise_observer_priority();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("bench runtime");
    let run_dir = test_tempdir("bench");
    let dir = run_dir.path().to_path_buf();
    let etcd = Etcd::start_in(&dir);
    let ctl = Ctl::connect(&rt, &etcd.endpoint());
    let mut ctx = Ctx {
        rt: &rt,
        etcd,
        ctl,
        dir: dir.clone(),
        report: Report::default(),
    };
    describe_run(&mut ctx.report, &dir, &plan, observer_nice);
    let began = Instant::now();

    scenario(&mut ctx, &plan, "footprint", true, |ctx| {
        eprintln!("bench: footprint ({}s idle window)", plan.idle.as_secs());
        footprint::run(ctx, plan.starts, plan.idle)
    });
    scenario(&mut ctx, &plan, "probe", true, |ctx| {
        eprintln!("bench: probe serving");
        probe::run(ctx, plan.probe_secs)
    });
    scenario(&mut ctx, &plan, "handoff", false, |ctx| {
        handoffs(ctx, &plan)
    });
    scenario(&mut ctx, &plan, "crash", true, |ctx| {
        let (ttl, reps) = (plan.crash_ttl, plan.crash_reps);
        eprintln!("bench: crash failover, ttl {ttl}s, {reps} reps");
        crash(ctx, ttl, reps)
    });
    scenario(&mut ctx, &plan, "scale", false, |ctx| {
        let counts = &plan.scale_counts;
        eprintln!("bench: scale simulation {counts:?} elections x3");
        scale::run(ctx, counts, plan.scale_window, plan.scale_handoffs)
    });

    ctx.report.settings.push((
        "duration",
        format!("{:.0} s", began.elapsed().as_secs_f64()),
    ));
    write_report(&ctx.report);
    let failed = !ctx.report.anomalies.is_empty();
    let missed = ctx.report.goals.iter().any(|g| !g.met);
    drop(ctx);
    if failed || missed || env_flag("ELECTOR_BENCH_KEEP") {
        let kept = run_dir.keep();
        eprintln!("bench: logs kept in {}", kept.display());
    }
    ExitCode::from(u8::from(failed))
}
