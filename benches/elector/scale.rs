//! Scale by simulation: many elections of three candidates each against one etcd, to see what
//! a fleet costs etcd and whether handoffs slow down as it grows. Every candidate is a full
//! [`Election`] with its own etcd connection, lease, keep-alive stream and watch, as in a
//! sidecar; only the processes are folded into this one (a two-worker runtime, like the
//! sidecar's), and leadership is read from the snapshots as `/leader` does, without HTTP.

use std::time::Duration;

use etcd_elector::config::Parsed;
use etcd_elector::election::machine::Role;
use etcd_elector::election::{etcd::ConnectError, Election, Release};
use etcd_elector::leadership::Receiver;
use etcd_elector::metrics::Metrics;
use futures_util::future::{join_all, try_join_all};
use tokio::runtime::Runtime;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::procs::{status, CpuMark, Window};
use crate::stats::ms;
use crate::watch::Kind;
use crate::Ctx;

const TTL: Duration = Duration::from_secs(10);
const SOON: Duration = Duration::from_secs(10);

struct Candidate {
    rx: Receiver,
    token: CancellationToken,
    task: JoinHandle<Result<Release, ConnectError>>,
}

/// A candidate of `key` running on the current runtime.
fn candidate(endpoint: &str, key: &str, id: &str) -> Candidate {
    // Through the sidecar's own parser, so the simulated candidates get exactly the defaults
    // (shutdown timeout, release delay, key protocol) the binary would.
    let ttl = TTL.as_secs();
    let args = format!("etcd-elector --endpoints {endpoint} --key {key} --id {id} --ttl {ttl}");
    let cfg = match etcd_elector::config::parse(args.split_whitespace()) {
        Ok(Parsed::Sidecar(cfg)) => *cfg,
        Ok(_) => panic!("simulated candidate: the parser printed instead of configuring"),
        Err(e) => panic!("simulated candidate: {e}"),
    };
    let election = Election::new(cfg.election, cfg.etcd, Metrics::new());
    let rx = election.subscribe();
    let token = CancellationToken::new();
    let task = tokio::spawn(election.run(token.clone()));
    Candidate { rx, token, task }
}

fn is_leader(rx: &Receiver) -> bool {
    rx.borrow().is_leader_at(Instant::now())
}

/// Cancels the leader of `cands`: its slot, and the snapshots of the others to wait on.
fn cancel_leader(cands: &[Candidate]) -> Option<(usize, Vec<Receiver>)> {
    let old = cands.iter().position(|c| is_leader(&c.rx))?;
    let others = cands
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != old)
        .map(|(_, c)| c.rx.clone())
        .collect();
    cands[old].token.cancel();
    Some((old, others))
}

/// When the first of `rxs` claimed leadership; `None` after `timeout`.
async fn first_leader(rxs: Vec<Receiver>, timeout: Duration) -> Option<Instant> {
    let mut waiting = JoinSet::new();
    for mut rx in rxs {
        waiting.spawn(async move {
            rx.wait_for(|s| s.is_leader_at(Instant::now())).await.ok()?;
            Some(Instant::now())
        });
    }
    let first = async {
        while let Some(done) = waiting.join_next().await {
            if let Ok(Some(at)) = done {
                return Some(at);
            }
        }
        None
    };
    tokio::time::timeout(timeout, first).await.ok().flatten()
}

pub fn run(ctx: &mut Ctx, counts: &[usize], window: Duration, handoffs: usize) {
    for &count in counts {
        ctx.fresh_etcd();
        one(ctx, count, window, handoffs);
    }
}

fn one(ctx: &mut Ctx, count: usize, window: Duration, handoffs: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // The simulated candidates are the measured party, not observers: default priority.
        .on_thread_start(|| {
            elector_testkit::process::set_thread_nice(0);
        })
        .enable_all()
        .build()
        .expect("simulation runtime");
    let endpoint = ctx.etcd.endpoint();
    let suffix = elector_testkit::random_suffix();
    let key = |e: usize| format!("/bench/scale-{suffix}/{e}");
    let p = format!("elections={count} x3, ttl={}s", TTL.as_secs());
    let started = Instant::now();
    let mut elections: Vec<Vec<Candidate>> = rt.block_on(async {
        let handles = (0..count).map(|e| {
            let (endpoint, key) = (endpoint.clone(), key(e));
            tokio::spawn(async move {
                let id = |c: usize| format!("e{e}c{c}g0");
                (0..3).map(|c| candidate(&endpoint, &key, &id(c))).collect()
            })
        });
        try_join_all(handles).await.expect("candidate start")
    });
    // Every election led, and every other candidate following.
    let deadline = Instant::now() + Duration::from_secs(60);
    let all_led = loop {
        let done = elections.iter().all(|cands| {
            cands.iter().filter(|c| is_leader(&c.rx)).count() == 1
                && cands
                    .iter()
                    .all(|c| matches!(c.rx.borrow().view.role, Role::Leader | Role::Follower))
        });
        if done {
            break Some(started.elapsed());
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let Some(all_led) = all_led else {
        ctx.report.anomaly(format!(
            "scale {count}: not every election got a leader in 60 s"
        ));
        shutdown(&rt, elections);
        return;
    };
    ctx.report.rows(
        "scale",
        &p,
        &[(
            "start -> every election led",
            "ms",
            &[ms(all_led)],
            "connect + grant + campaign for every candidate at once",
        )],
    );

    // Keep-alives beat from each candidate's grant, between `started` and `all_led`.
    idle_window(ctx, &p, count, window, started + all_led / 2);

    // One handoff at a time, on elections in turn: does the fleet's idle load slow it?
    let mut rng = elector_testkit::fastrand::Rng::new();
    let mut seq = Vec::new();
    for rep in 0..handoffs {
        let e = rng.usize(..count);
        let cands = &mut elections[e];
        let t0 = Instant::now();
        let Some((old, others)) = cancel_leader(cands) else {
            ctx.report.anomaly(format!(
                "scale {count} rep {rep}: election {e} without a leader"
            ));
            continue;
        };
        match rt.block_on(first_leader(others, SOON)) {
            Some(at) => seq.push(ms(at - t0)),
            None => ctx.report.anomaly(format!(
                "scale {count} rep {rep}: no new leader in {SOON:?}"
            )),
        }
        let ok = rt.block_on(async {
            let id = format!("e{e}c{old}g{}", rep + 1);
            let old_task = std::mem::replace(&mut cands[old], candidate(&endpoint, &key(e), &id));
            let _ = tokio::time::timeout(SOON, old_task.task).await;
            let follows = cands[old].rx.wait_for(|s| s.view.role == Role::Follower);
            matches!(tokio::time::timeout(SOON, follows).await, Ok(Ok(_)))
        });
        if !ok {
            ctx.report.anomaly(format!(
                "scale {count} rep {rep}: replacement never followed"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ctx.report.rows(
        "scale",
        &p,
        &[(
            "graceful handoff, one at a time",
            "ms",
            &seq,
            "cancel -> another candidate's snapshot says leader (in process, no HTTP)",
        )],
    );

    // Every leader stops at once: a node drain or a rolling restart of the whole fleet. The
    // bench's own watch on every key sees each handoff's transfer commit; etcd's CPU over the
    // whole burst says what a fleet-wide handoff costs it.
    let prefix = format!("/bench/scale-{suffix}/");
    let watch = ctx.ctl.watch(&prefix, true);
    let etcd_pid = ctx.etcd.child().expect("etcd runs").pid().as_raw();
    let etcd_cpu0 = CpuMark::of(etcd_pid);
    let t0 = Instant::now();
    let waiters: Vec<_> = elections
        .iter()
        .filter_map(|cands| cancel_leader(cands))
        .map(|(_, others)| rt.spawn(first_leader(others, SOON * 3)))
        .collect();
    // Each waiter's new leader, if it found one: a failed task or a timeout is none.
    let led = rt.block_on(join_all(waiters)).into_iter().flatten();
    let mass: Vec<f64> = led.flatten().map(|at| ms(at - t0)).collect();
    let etcd_cpu = etcd_cpu0.since(CpuMark::of(etcd_pid));
    if mass.len() < count {
        ctx.report.anomaly(format!(
            "scale {count}: mass handoff: {} of {count} elections found no new leader",
            count - mass.len()
        ));
    }
    // Per lock key, the first write after t0 as the bench's watch saw it: the transfer to the
    // successor (the key is never deleted). The registrations and handoff notes beside the
    // keys (`<key>.candidates/`, `<key>.handoff/`) are under the same prefix: left out.
    let mut handed = std::collections::HashMap::new();
    let t0_std = t0.into_std();
    while let Ok(ev) = watch.rx.recv_timeout(Duration::from_millis(200)) {
        let lock_key = ev
            .key
            .strip_prefix(&prefix)
            .is_some_and(|e| !e.contains(['/', '.']));
        if ev.at >= t0_std && lock_key && matches!(ev.kind, Kind::Put) {
            handed.entry(ev.key).or_insert(ev.at);
        }
    }
    drop(watch);
    let to_transfer: Vec<f64> = handed.values().map(|&at| ms(at - t0_std)).collect();
    let cpu_note = format!(
        "{:.0} ms of etcd CPU for the burst: a transfer, the successor's watch and \
         announcement and the old lease's revoke each, with their watch fan-out",
        ms(etcd_cpu)
    );
    ctx.report.rows("scale", &p, &[
        ("graceful handoff, all leaders at once", "ms", &mass,
         "every election's leader cancelled in the same instant; time to each election's new leader"),
        ("all at once: cancel -> key handed over (transfer committed)", "ms", &to_transfer,
         "the transfers queue in etcd"),
        ("all at once: etcd CPU per handoff", "ms", &[ms(etcd_cpu) / count as f64], &cpu_note),
    ]);
    shutdown(&rt, elections);
}

/// etcd's and this process's load while every election idles.
fn idle_window(ctx: &mut Ctx, p: &str, count: usize, window: Duration, phase: Instant) {
    // Candidates started together, so their keep-alives (every ttl/3) are in step: start the
    // window half an interval off that beat, after at least one full interval, so a window of
    // k intervals sees exactly k keep-alives per candidate.
    let interval = TTL / 3;
    let mut start = phase + interval + interval / 2;
    while start < Instant::now() + Duration::from_millis(200) {
        start += interval;
    }
    std::thread::sleep(start - Instant::now());
    let me = std::process::id() as i32;
    let etcd_pid = ctx.etcd.child().expect("etcd runs").pid().as_raw();
    let w = Window::measure(&ctx.etcd, &[me, etcd_pid], window);
    let (secs, elections) = (w.secs, count as f64);
    let (requests, bytes) = (w.etcd.total() / secs, w.etcd.bytes / secs);
    let keepalives = w.etcd.keepalive() / secs;
    let [own, etcd] = [0, 1].map(|i| w.cpu[i].as_secs_f64() / secs * 100.0);
    let rss = status(etcd_pid).and_then(|s| s.vmrss).unwrap_or(0) as f64 / 1024.0;
    let req_note = &format!(
        "{:.3} req/s per election; {}",
        requests / elections,
        w.etcd.by_method()
    );
    let ka_note = &format!(
        "expected 3 candidates x 3/ttl = {:.2}/s per election",
        9.0 / TTL.as_secs_f64()
    );
    let b_note = &format!(
        "{:.0} B/s per election; HTTP/2 pings not included",
        bytes / elections
    );
    let cpu_note = &format!(
        "all {} candidates in one process (plus the bench, idle)",
        count * 3
    );
    let pct_core = "% of a core";
    ctx.report.rows(
        "scale",
        p,
        &[
            ("etcd requests, idle", "req/s", &[requests], req_note),
            ("keep-alives, idle", "msg/s", &[keepalives], ka_note),
            ("gRPC bytes to+from etcd, idle", "B/s", &[bytes], b_note),
            ("etcd CPU, idle", pct_core, &[etcd], ""),
            ("etcd RSS", "MiB", &[rss], ""),
            ("simulating process CPU, idle", pct_core, &[own], cpu_note),
        ],
    );
}

fn shutdown(rt: &Runtime, elections: Vec<Vec<Candidate>>) {
    let candidates: Vec<Candidate> = elections.into_iter().flatten().collect();
    for c in &candidates {
        c.token.cancel();
    }
    let ended = candidates
        .into_iter()
        .map(|c| tokio::time::timeout(SOON, c.task));
    // The timeouts need the runtime's clock: they are made inside it.
    rt.block_on(async { join_all(ended).await });
}
