//! Probe serving: `/leader` latency at a fixed 1,000 requests per second, and the rate one
//! core serves.
//!
//! The fixed rate is an open-loop client on its own thread (timer slack 1 ns): request i is due
//! at `start + i ms`, and its latency counts from when it could have been sent, the later of
//! its due time and the previous answer, so a server stall shows in every request it holds up
//! (no coordinated omission), while a late wake-up of the bench's own thread (sharing two cores,
//! on vCPUs that can be descheduled) is reported on its own. It runs on one kept-alive
//! connection, and with a new connection per request as a kubelet probe does. The maximum rate
//! is `wrk` (closed loop) pinned to CPU 1 against a replica pinned to CPU 0.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::handoff::Group;
use crate::procs::{CpuMark, SidecarSpec};
use crate::stats::{us, Goal, Summary};
use crate::Ctx;
use elector_testkit::http::{get as get_once, Conn};

pub fn run(ctx: &mut Ctx, duration: Duration) {
    let key = format!("/bench/probe-{}", elector_testkit::random_suffix());
    let spec = ctx.spec(key, 10);
    let Some(group) = Group::start(ctx, spec, 1, "probe: replica did not become leader") else {
        return;
    };
    let addr = group.slots[0].addr();
    let n = duration.as_millis() as usize;
    let mut p99_worst = 0.0f64;
    for (mode, keepalive) in [
        ("kept-alive connection", true),
        ("new connection each", false),
    ] {
        let t = fixed_rate(addr, n, Duration::from_millis(1), keepalive);
        p99_worst = p99_worst.max(Summary::bare(&t.latency).p99);
        ctx.report.rows("probe", &format!("1000 req/s, {mode}"), &[
            ("/leader latency", "us", &t.latency,
             "open loop: from when it could be sent (due time, or the previous answer if later)"),
            ("/leader service time", "us", &t.service, "write to last byte read"),
            ("bench sender lateness", "us", &t.sender_late,
             "how late the bench's own thread sent: the client's error, left out above"),
        ]);
        if t.latency.len() < n {
            ctx.report.anomaly(format!(
                "probe {mode}: {} of {n} requests failed",
                n - t.latency.len()
            ));
        }
    }
    ctx.report.goals.push(Goal {
        goal: "/leader p99 at 1,000 req/s".into(),
        target: "< 1 ms".into(),
        measured: format!("{p99_worst:.0} us (worst of kept-alive and new-connection runs)"),
        met: p99_worst < 1000.0,
    });
    drop(group);
    max_rate(ctx, duration);
}

/// Samples of [`fixed_rate`], in microseconds (see the rows' notes).
#[derive(Default)]
struct Timed {
    latency: Vec<f64>,
    service: Vec<f64>,
    sender_late: Vec<f64>,
}

/// `n` requests, one due every `period`.
fn fixed_rate(addr: std::net::SocketAddr, n: usize, period: Duration, keepalive: bool) -> Timed {
    let load = std::thread::spawn(move || {
        let _ = nix::sys::prctl::set_timerslack(1);
        let mut conn = if keepalive {
            Conn::connect(addr, "/leader").ok()
        } else {
            None
        };
        let mut t = Timed::default();
        let start = Instant::now() + Duration::from_millis(10);
        let mut previous_done = start;
        for i in 0..n {
            let due = start + period * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let could_send = due.max(previous_done);
            let sent = Instant::now();
            let answer = match conn.as_mut() {
                Some(c) => c.get(),
                None => get_once(addr, "/leader"),
            };
            let ok = answer.is_ok_and(|r| r.status == 200);
            let done = Instant::now();
            previous_done = done;
            if ok {
                let late = sent.saturating_duration_since(could_send);
                t.latency.push(us(done - could_send - late));
                t.service.push(us(done - sent));
                t.sender_late.push(us(late));
            } else if keepalive {
                conn = Conn::connect(addr, "/leader").ok();
            }
        }
        t
    });
    load.join().expect("load thread")
}

/// `wrk` against a replica pinned to one CPU.
fn max_rate(ctx: &mut Ctx, duration: Duration) {
    let secs = duration.as_secs().max(2);
    if Command::new("wrk").arg("--version").output().is_err() {
        ctx.report.anomaly(
            "probe: wrk is missing: install it with `scripts/deps.sh bench` (Debian package wrk)",
        );
        return;
    }
    let key = format!("/bench/probe-pinned-{}", elector_testkit::random_suffix());
    let spec = SidecarSpec {
        cpus: Some("0".into()),
        ..ctx.spec(key, 10)
    };
    let failure = "probe: pinned replica did not become leader";
    let Some(group) = Group::start(ctx, spec, 1, failure) else {
        return;
    };
    let url = format!("http://{}/leader", group.slots[0].addr());
    let pid = group.slots[0].pid().as_raw();
    for (mode, extra) in [
        ("kept-alive connections", None),
        ("Connection: close", Some("Connection: close")),
    ] {
        let cpu0 = CpuMark::of(pid);
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "1", "wrk", "-t1", "-c16", "--latency"])
            .arg(format!("-d{secs}s"));
        if let Some(h) = extra {
            cmd.args(["-H", h]);
        }
        let t0 = Instant::now();
        let out = match cmd.arg(&url).output() {
            Ok(o) => o,
            Err(e) => {
                ctx.report.anomaly(format!("probe: running wrk: {e}"));
                return;
            }
        };
        let cpu = cpu0.since(CpuMark::of(pid)).as_secs_f64() / t0.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(rate) = wrk_field(&text, "Requests/sec:").and_then(|v| v.parse().ok()) else {
            ctx.report
                .anomaly(format!("probe: wrk output not understood: {text}"));
            continue;
        };
        let p = format!("wrk -t1 -c16, {mode}, replica on CPU 0, wrk on CPU 1");
        let non_2xx = wrk_field(&text, "Non-2xx or 3xx responses:").unwrap_or("0");
        let note = format!(
            "replica used {:.0} % of its core; non-2xx: {non_2xx}",
            cpu * 100.0
        );
        ctx.report.rows(
            "probe",
            &p,
            &[("max rate, one core", "req/s", &[rate], &note)],
        );
        // wrk's own percentiles, not samples: no n, min or max.
        let q = |label| wrk_field(&text, label).and_then(wrk_us).unwrap_or(f64::NAN);
        let mut s = Summary::of("probe", "latency at max rate (closed loop)", &p, "us", &[]);
        (s.p50, s.p90, s.p99) = (q("50%"), q("90%"), q("99%"));
        s.note =
            "wrk's own percentiles (50/90/99); queueing at saturation, not service time".into();
        if s.p50.is_finite() {
            ctx.report.figures.push(s);
        }
    }
}

/// The value wrk prints after `label` on a line of its own.
fn wrk_field<'t>(text: &'t str, label: &str) -> Option<&'t str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
}

/// A duration as wrk prints it (`131.00us`, `5.31ms`, `1.02s`), in microseconds.
fn wrk_us(v: &str) -> Option<f64> {
    let (num, scale) = [("us", 1.0), ("ms", 1e3), ("s", 1e6)]
        .into_iter()
        .find_map(|(unit, scale)| Some((v.strip_suffix(unit)?, scale)))?;
    Some(num.parse::<f64>().ok()? * scale)
}
