//! The etcd-elector benchmark (issue 5): how fast leadership moves (beside `etcdctl elect`),
//! what an idle replica costs, how fast probes are answered, and how that grows with the fleet.
//!
//! `cargo bench --bench elector` runs everything (about 13 minutes on 2 cores) against its own
//! etcd (data on /dev/shm) and real `etcd-elector` and `etcdctl elect` processes, prints
//! markdown tables and writes every figure to `target/bench/elector.json`. Environment:
//! * `ELECTOR_BENCH_QUICK=1`: a smoke run, few repetitions and short windows (1.5 minutes).
//! * `ELECTOR_BENCH_ONLY=footprint,probe,handoff,crash,scale`: a subset (also accepted as
//!   arguments after `--`). `handoff` includes the `etcdctl elect` peer.
//! * `ELECTOR_BENCH_REPS=N`: handoffs per scenario (default 100 for 3 and 10 candidates, 50
//!   for 100 candidates and for crash failover; 5 when quick).
//! * `ELECTOR_BENCH_CANDIDATES=3,10,100`, `ELECTOR_BENCH_SCALE=10,100,1000`,
//!   `ELECTOR_BENCH_CRASH_TTL=2` (seconds), `ELECTOR_BENCH_IDLE_SECS=60`.
//! * `ELECTOR_BENCH_BIN=PATH`: measure another build of the sidecar (a proposed change); it
//!   must know `--admin-listen off`, `--protocol election` and `--no-succession`.
//! * `ELECTOR_BENCH_NO_PEER=1`, `ELECTOR_BENCH_NO_LOCK=1`, `ELECTOR_BENCH_NO_ELECTION=1`,
//!   `ELECTOR_BENCH_NO_REVOKE=1`: leave out the `etcdctl elect` runs, or etcd-elector's default
//!   (`lock`), `--protocol election` or `--no-succession` runs, of the handoff scenario.
//! * `ELECTOR_BENCH_SETTLE_MS=300`: pause between handoffs (see `handoff::settle`).
//! * `ELECTOR_BENCH_NO_NICE=1`: run the bench's observers at the replicas' priority.
//! * `ELECTOR_BENCH_OUT=PATH`: where the JSON goes (a `.md` copy of the tables beside it).
//! * `ELECTOR_BENCH_KEEP=1`: keep the run directory (every process's log), as is done anyway
//!   when something went wrong or a goal was missed; `ELECTOR_BENCH_DEBUG=1` prints each
//!   handoff's wall-clock stamps, to lay beside those logs.
//!
//! It exits 1 when a scenario could not be measured (an anomaly), never because a goal was
//! missed: goals depend on the machine.

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
use stats::{Comparison, Goal, Report, Summary};
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
    /// revisions another one left behind. (It starts before the old one is dropped.)
    pub fn fresh_etcd(&mut self) {
        let data = self.etcd.data_dir();
        self.etcd = Etcd::start_in(&self.dir);
        self.ctl = Ctl::connect(self.rt, &self.etcd.endpoint());
        let _ = std::fs::remove_dir_all(data);
    }

    /// Replicas of `key` on this run's etcd, logging to its directory, unpinned, no extra flags.
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
    /// 3 or 6 whole keep-alive intervals (ttl/3 = 10/3 s in the simulation).
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

/// Runs `scenario`, if the plan wants it, on a fresh etcd (unless it makes its own), and records
/// how much CPU other processes used meanwhile: the bench cannot keep them off the machine, but
/// it can say when there were some.
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

/// Graceful handoffs per candidate count: ours, each way, against `etcdctl elect`.
fn handoffs(ctx: &mut Ctx, plan: &Plan) {
    use handoff::Way;
    for &n in &plan.candidates {
        let reps = plan.reps_for(n);
        let (mut ours, mut peer) = (Vec::new(), Vec::new());
        // `--protocol election` too: the remedy for the lock protocol's thundering herd at
        // large candidate counts.
        for (skip, who, way) in [
            (
                "ELECTOR_BENCH_NO_LOCK",
                "etcd-elector",
                Some(Way::Succession),
            ),
            ("ELECTOR_BENCH_NO_PEER", "etcdctl elect", None),
            (
                "ELECTOR_BENCH_NO_ELECTION",
                "etcd-elector --protocol election",
                Some(Way::Election),
            ),
            (
                "ELECTOR_BENCH_NO_REVOKE",
                "etcd-elector --no-succession",
                Some(Way::Revoke),
            ),
        ] {
            if env_flag(skip) {
                continue;
            }
            eprintln!("bench: graceful handoff, {n} candidates, {reps} reps: {who}");
            ctx.fresh_etcd();
            match way {
                Some(Way::Succession) => ours = handoff::ours(ctx, n, reps, Way::Succession),
                Some(way) => _ = handoff::ours(ctx, n, reps, way),
                None => peer = handoff::peer(ctx, n, reps),
            }
        }
        if !ours.is_empty() && !peer.is_empty() {
            let (o, p) = (Summary::bare(&ours), Summary::bare(&peer));
            ctx.report.goals.push(Goal {
                goal: format!("handoff, {n} candidates, vs etcdctl elect"),
                target: "p50 <= 0.7 x etcdctl elect's".into(),
                // The sample counts, because a quick run's 5 decide little on a shared machine.
                measured: format!(
                    "p50 {:.2} vs {:.2} ms, p99 {:.2} vs {:.2} ms ({} and {} handoffs)",
                    o.p50,
                    p.p50,
                    o.p99,
                    p.p99,
                    ours.len(),
                    peer.len()
                ),
                met: o.p50 <= 0.7 * p.p50,
            });
            ctx.report.comparisons.push(Comparison {
                candidates: n,
                ours_p50_ms: o.p50,
                peer_p50_ms: p.p50,
                ratio_p50: o.p50 / p.p50,
                ours_p99_ms: o.p99,
                peer_p99_ms: p.p99,
                ratio_p99: o.p99 / p.p99,
            });
        }
        if n == 100 && !ours.is_empty() {
            let s = Summary::bare(&ours);
            ctx.report.goals.push(Goal {
                goal: "handoff, 100 candidates".into(),
                target: "p99 <= 10 ms".into(),
                measured: format!("p99 {:.2} ms ({} handoffs)", s.p99, ours.len()),
                met: s.p99 <= 10.0,
            });
        }
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
        handoff::crash(ctx, ttl, reps)
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
