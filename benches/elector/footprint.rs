//! What one replica costs: binary size, start-up times, and an idle leader and follower
//! watched over a window (RSS, CPU time, etcd requests and bytes).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::handoff::{Group, Way};
use crate::procs::{elector_bin, status, Probes, Window};
use crate::stats::{ms, Goal};
use crate::Ctx;

/// TTL of the idle replicas: the sidecar's default.
const IDLE_TTL: u64 = 10;

pub fn run(ctx: &mut Ctx, starts: usize, window: Duration) {
    let bin = elector_bin();
    let mib = std::fs::metadata(&bin).map_or(0, |m| m.len()) as f64 / 1048576.0;
    ctx.report.rows(
        "footprint",
        "release, stripped",
        &[("binary size", "MiB", &[mib], &bin)],
    );
    startup(ctx, starts);
    idle(ctx, window);
}

/// Start to first HTTP answer, and start to leadership on a free key.
fn startup(ctx: &mut Ctx, starts: usize) {
    let mut first_answer = Vec::new();
    let mut leadership = Vec::new();
    for i in 0..starts {
        let key = format!("/bench/start-{i}-{}", elector_testkit::random_suffix());
        let spec = ctx.spec(key, IDLE_TTL);
        std::thread::sleep(Duration::from_millis(20));
        let t0 = Instant::now();
        let mut sc = spec.spawn(&format!("start{i}"));
        match sc.until_200(Duration::from_secs(10)) {
            Some((answered, led, _)) => {
                first_answer.push(ms(answered - t0));
                leadership.push(ms(led - t0));
            }
            None => ctx.report.anomaly(format!(
                "startup {i}: no answer or no leadership within 10 s"
            )),
        }
        sc.signal(Signal::SIGTERM);
        if sc.wait_exit_within(Duration::from_secs(10)).is_none() {
            ctx.report
                .anomaly(format!("startup {i}: did not exit on SIGTERM"));
        }
    }
    ctx.report.rows("footprint", "", &[
        ("start -> first HTTP answer", "ms", &first_answer,
         "exec, runtime, signal handlers, bind; polled every 0.1 ms on fresh connections"),
        ("start -> leader on a free key", "ms", &leadership,
         "+ etcd connect, lease grant, campaign txn (two etcd round trips with a commit each)"),
    ]);
}

/// An idle leader and follower over `window`.
fn idle(ctx: &mut Ctx, window: Duration) {
    let key = format!("/bench/idle-{}", elector_testkit::random_suffix());
    let spec = ctx.spec(key, IDLE_TTL);
    let Some(group) = Group::start(ctx, spec, 2, "idle: replicas did not settle") else {
        return;
    };
    let leader = match group.holder_slot(&ctx.ctl, Way::Succession) {
        Ok(slot) => slot,
        Err(e) => return ctx.report.anomaly(format!("idle: {e}")),
    };
    let pids = [leader, 1 - leader].map(|slot| group.slots[slot].pid().as_raw());
    // Let start-up allocations and the first keep-alives pass.
    std::thread::sleep(Duration::from_secs(2));
    let w = Window::measure(&ctx.etcd, &pids, window);
    let per_min = 60.0 / w.secs;
    let p = format!("ttl={IDLE_TTL}s window={}s", window.as_secs());
    let mut worst_rss = 0.0f64;
    let mut worst_cpu = 0.0f64;
    for (i, role) in ["leader", "follower"].iter().enumerate() {
        let st = status(pids[i]);
        let kb = |v: Option<u64>| v.unwrap_or(0) as f64 / 1024.0;
        let rss = kb(st.as_ref().and_then(|s| s.vmrss));
        let hwm = kb(st.as_ref().and_then(|s| s.vmhwm));
        let threads = st.map_or(0, |s| s.threads) as f64;
        let cpu_s = w.cpu[i].as_secs_f64() * per_min;
        worst_rss = worst_rss.max(rss);
        worst_cpu = worst_cpu.max(cpu_s);
        let cpu_note = &format!(
            "/proc/PID/task/*/schedstat (ns), checked against utime+stime; {:.4} % of a core",
            cpu_s / 60.0 * 100.0
        );
        for (metric, unit, value, note) in [
            ("idle RSS", "MiB", rss, "VmRSS at the end of the window"),
            ("peak RSS", "MiB", hwm, "VmHWM since start"),
            ("threads", "", threads, ""),
            ("idle CPU", "s/min", cpu_s, cpu_note),
        ] {
            let metric = format!("{metric}, {role}");
            ctx.report
                .rows("footprint", &p, &[(&metric, unit, &[value], note)]);
        }
    }
    // Both replicas send the same thing when idle (one keep-alive per ttl/3 on their own
    // lease); etcd counts for the pair, so a replica is half of it.
    let (total, keepalive) = (w.etcd.total(), w.etcd.keepalive());
    let other = total - keepalive;
    let per_replica = |v: f64| [v / 2.0 * per_min];
    let methods = format!(
        "grpc_server_msg_received_total over the window, leader+follower: {}",
        w.etcd.by_method()
    );
    let r = &mut ctx.report;
    r.rows("footprint", &p, &[
        ("etcd requests per replica", "req/min", &per_replica(total), &methods),
        ("etcd requests other than keep-alives per replica", "req/min", &per_replica(other),
         "polling would show here"),
        ("gRPC bytes to+from etcd per replica", "B/min", &per_replica(w.etcd.bytes),
         "etcd_network_client_grpc_{received,sent}_bytes_total; HTTP/2 pings and TCP not included"),
    ]);
    let allowed = 60.0 / (IDLE_TTL as f64 / 3.0);
    let ka_per_replica = keepalive / 2.0 * per_min;
    r.goals.push(Goal {
        goal: "idle RSS".into(),
        target: "< 10 MiB".into(),
        measured: format!("{worst_rss:.2} MiB (worst of leader, follower)"),
        met: worst_rss < 10.0,
    });
    r.goals.push(Goal {
        goal: "idle CPU".into(),
        target: "< 0.1 % of a core (0.06 s/min)".into(),
        measured: format!(
            "{worst_cpu:.3} s/min = {:.3} % (worst of leader, follower)",
            worst_cpu / 60.0 * 100.0
        ),
        met: worst_cpu < 0.06,
    });
    r.goals.push(Goal {
        goal: "idle etcd traffic".into(),
        target: format!(
            "<= 1 keep-alive per ttl/3 ({allowed:.0}/min at ttl {IDLE_TTL}s), no polling"
        ),
        measured: format!(
            "{ka_per_replica:.1} keep-alives/min, {:.1} other req/min per replica",
            other / 2.0 * per_min
        ),
        // One keep-alive of slack: a window does not start on a keep-alive boundary.
        met: ka_per_replica <= allowed + per_min && other == 0.0,
    });
}
