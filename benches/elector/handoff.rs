//! Leadership moving: graceful handoff (SIGTERM) for etcd-elector and for the peer,
//! `etcdctl elect`, with the same candidate counts in the same run; and crash failover
//! (SIGKILL), which must wait for the lease to expire.
//!
//! How a handoff is timed. `t0` is taken just before `kill(2)`. The bench's own etcd watch on
//! the key stamps the key's events as they arrive (the revoke's delete, the transfer's or the
//! new holder's put); two stamps from the same watch give a key-level figure, its delivery
//! delay cancelling out. The bench then asks the replica etcd named (with `--protocol
//! election` nothing is written on a handoff, so it reads the oldest key under the election)
//! `GET /leader` on fresh connections until it answers 200, which ends the end-to-end figure.
//! Asking only that replica keeps the bench off the two cores it shares with etcd and the
//! replicas; the extra read can only make our figure later, never earlier. For `etcdctl elect`
//! the end is the moment the bench reads the line the next peer prints once elected.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use elector_testkit::{wait_for, wait_until, EtcdCounts, Sidecar};
use nix::sys::signal::Signal;

use crate::procs::{Etcdctl, Probes, SidecarSpec};
use crate::stats::{ms, Goal, Summary};
use crate::watch::{Ctl, KeyWatch, Kind};
use crate::Ctx;

/// A bound on anything that should take milliseconds; reaching it is an anomaly.
const SOON: Duration = Duration::from_secs(10);
/// Pause between repetitions, so one handoff's aftermath (the old process exiting, the
/// replacement joining) never overlaps the next measurement, and so the candidate next in line
/// has been running a while, as in production. With 30 ms, a freshly started `etcdctl elect`
/// that came next in line took 10-30 ms to report itself elected in about one handoff in ten
/// (its p99 went from 7 to 34 ms); 300 ms removes that. `ELECTOR_BENCH_SETTLE_MS`.
fn settle() -> Duration {
    Duration::from_millis(crate::env_num("ELECTOR_BENCH_SETTLE_MS").unwrap_or(300))
}

/// N replicas of one election; a stopped one is replaced by a new process (new id).
pub struct Group {
    pub spec: SidecarSpec,
    pub slots: Vec<Sidecar>,
    generation: u64,
    /// Prefix of the replicas' ids, unique in the run, so that every log file stays.
    tag: String,
}

impl Group {
    /// Start `n` replicas of `spec` and wait until they all know the leader; none, and the
    /// anomaly `failure`, if that takes more than a minute.
    pub fn start(ctx: &mut Ctx, spec: SidecarSpec, n: usize, failure: &str) -> Option<Group> {
        static GROUPS: AtomicU32 = AtomicU32::new(0);
        let tag = format!("r{}-", GROUPS.fetch_add(1, Ordering::Relaxed));
        let slots = (0..n)
            .map(|i| spec.spawn(&format!("{tag}s{i}g0")))
            .collect();
        let mut group = Group {
            spec,
            slots,
            generation: 0,
            tag,
        };
        if group.wait_settled(Duration::from_secs(60)) {
            Some(group)
        } else {
            ctx.report.anomaly(failure);
            None
        }
    }

    pub fn slot_of(&self, id: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.id() == id)
    }

    /// The slot of the replica that holds the key, handing over the `way` given.
    pub fn holder_slot(&self, ctl: &Ctl, way: Way) -> Result<usize, String> {
        let id = holder(ctl, &self.spec.key, way).ok_or("no leader key")?;
        self.slot_of(&id)
            .ok_or_else(|| format!("unknown holder {id}"))
    }

    /// Replace the replica in `slot` by a new process (the old one is killed, if it runs).
    pub fn respawn(&mut self, slot: usize) {
        self.generation += 1;
        let id = format!("{}s{slot}g{}", self.tag, self.generation);
        self.slots[slot] = self.spec.spawn(&id);
    }

    /// Wait until every replica knows the leader. A replica that died meanwhile (its port
    /// was taken, say) is replaced. False if that does not happen within `timeout`.
    pub fn wait_settled(&mut self, timeout: Duration) -> bool {
        let mut pending: Vec<usize> = (0..self.slots.len()).collect();
        wait_until(timeout, || {
            pending.retain(|&slot| {
                if self.slots[slot].try_wait().is_some() {
                    self.respawn(slot);
                    return true;
                }
                !self.slots[slot].settled()
            });
            pending.is_empty()
        })
    }
}

/// Samples of one handoff scenario, in milliseconds.
#[derive(Default)]
struct Samples {
    total: Vec<f64>,
    to_delete: Vec<f64>,
    key_level: Vec<f64>,
    to_answer: Vec<f64>,
    beyond_expiry: Vec<f64>,
    revision_gap: Vec<f64>,
    polls: Vec<f64>,
    /// etcd requests other than keep-alives received during one handoff.
    requests: Vec<f64>,
}

impl Samples {
    /// The stamps every handoff has: the signal at `t0`, the key's first event, the new key
    /// when the bench saw it written, and the end (new leader answering, or printing).
    fn stamp(&mut self, t0: Instant, first: Instant, put: Option<Instant>, end: Instant) {
        self.total.push(ms(end - t0));
        self.to_delete.push(ms(first - t0));
        if let Some(put) = put {
            self.key_level
                .push(ms(put.saturating_duration_since(first)));
        }
        // Answering is timed from the new key when there is one, else from the first event.
        let from = put.unwrap_or(first);
        self.to_answer.push(ms(end.saturating_duration_since(from)));
    }
}

/// How leadership moves in a scenario of etcd-elector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// The default: the leader moves the key to a chosen successor in one transaction; the
    /// successor confirms with its own write.
    Succession,
    /// `--no-succession`: the leader revokes (the key is deleted) and every follower races.
    Revoke,
    /// `--protocol election`: the next in line's predecessor key is deleted.
    Election,
    /// SIGKILL to a default replica: the key goes when the lease expires, then followers race.
    Crash,
}

/// Who holds `key`: its value, or with the election protocol (candidates' keys under
/// `<key>/`) the oldest candidate's.
fn holder(ctl: &Ctl, key: &str, way: Way) -> Option<String> {
    match way {
        Way::Election => ctl.first_created(&format!("{key}/")),
        Way::Succession | Way::Revoke | Way::Crash => ctl.get(key),
    }
}

/// `reps` timed handoffs among `n` replicas of a new key with a TTL of `ttl` s, leadership
/// moving the `way` given; `label` starts every anomaly. `None` if they did not settle at start.
fn series(
    ctx: &mut Ctx,
    label: &str,
    n: usize,
    ttl: u64,
    way: Way,
    reps: usize,
) -> Option<Samples> {
    let key = format!("/bench/{way:?}-{n}-{}", elector_testkit::random_suffix());
    // With the election protocol the candidates' keys are under `<key>/`.
    let (extra, watched) = match way {
        Way::Election => (
            vec!["--protocol".into(), "election".into()],
            format!("{key}/"),
        ),
        Way::Revoke => (vec!["--no-succession".into()], key.clone()),
        Way::Succession | Way::Crash => (Vec::new(), key.clone()),
    };
    let spec = SidecarSpec {
        extra,
        ..ctx.spec(key.clone(), ttl)
    };
    let failure = format!("{label}: replicas did not settle at start");
    let mut group = Group::start(ctx, spec, n, &failure)?;
    let watch = ctx.ctl.watch(&watched, way == Way::Election);
    let mut s = Samples::default();
    let mut rng = elector_testkit::fastrand::Rng::new();
    for rep in 0..reps {
        // A crash lands at a random phase of the keep-alive cycle (ttl/3), not locked to it.
        let phase = match way {
            Way::Crash => Duration::from_secs(ttl).mul_f64(rng.f64() / 3.0),
            _ => Duration::ZERO,
        };
        std::thread::sleep(settle() + phase);
        let at = format!("{label} rep {rep}");
        let (old, m0) = match hand_over(ctx, &group, &watch, way, rep, &mut s) {
            Ok(handed) => handed,
            Err(e) => {
                ctx.report.anomaly(format!("{at}: {e}"));
                break;
            }
        };
        if way != Way::Crash {
            let id = group.slots[old].id().to_string();
            match group.slots[old].wait_exit_within(SOON) {
                Some(st) if st.success() => {}
                other => ctx.report.anomaly(format!(
                    "{at}: old leader {id} exit {other:?} (expected 0; log sidecar-{id}.log)"
                )),
            }
            // Let the losers' transactions land before counting (they settle within ~80 ms
            // at 100 candidates), then count everything but keep-alives.
            std::thread::sleep(Duration::from_millis(150));
            let delta = EtcdCounts::scrape(&ctx.etcd).since(&m0);
            s.requests.push(delta.total() - delta.keepalive());
        }
        group.respawn(old);
        if !group.wait_settled(Duration::from_secs(30)) {
            ctx.report
                .anomaly(format!("{at}: replacement did not settle"));
            break;
        }
    }
    Some(s)
}

/// Graceful handoff of etcd-elector with `n` candidates, handing over the `way` given.
/// Returns the end-to-end samples (ms).
pub fn ours(ctx: &mut Ctx, n: usize, reps: usize, way: Way) -> Vec<f64> {
    let Some(s) = series(ctx, &format!("handoff n={n} {way:?}"), n, 10, way, reps) else {
        return Vec::new();
    };
    match way {
        Way::Succession => ctx.report.rows("handoff", &format!("candidates={n}"), &[
            ("SIGTERM -> new leader answers 200", "ms", &s.total,
             "end to end: signal handling + transfer txn + watch to the successor alone (its handoff note) + publish + one probe"),
            ("SIGTERM -> key handed over (transfer committed)", "ms", &s.to_delete,
             "signal to the transfer's raft commit, as the bench's watch sees it; the key is never absent"),
            ("key handed over -> new leader answers 200", "ms", &s.to_answer,
             "the successor's note watch + publish; bench opens a connection and asks"),
            ("etcd requests per handoff", "req", &s.requests,
             "grpc_server_msg_received_total without LeaseKeepAlive: the transfer, the successor's new watch of the key's writes and its announcement, the old leader's revoke; no read, no follower campaigns"),
        ]),
        Way::Election => ctx.report.rows("handoff", &format!("candidates={n}, --protocol election"), &[
            ("SIGTERM -> new leader answers 200", "ms", &s.total,
             "etcdctl elect's protocol in etcd-elector: every waiting candidate gets the event, only the next in line campaigns"),
            ("SIGTERM -> key deleted (revoke committed)", "ms", &s.to_delete, ""),
            ("key deleted -> new leader answers 200", "ms", &s.to_answer,
             "watch to the successor + its read of the election (its key exists: no write) + publish; bench reads the election then asks"),
            ("etcd requests per handoff", "req", &s.requests,
             "grpc_server_msg_received_total without LeaseKeepAlive; includes the revoke and the bench's one read of the election"),
        ]),
        Way::Revoke | Way::Crash => ctx.report.rows("handoff", &format!("candidates={n}, --no-succession"), &[
            ("SIGTERM -> new leader answers 200", "ms", &s.total,
             "end to end: signal handling + revoke commit + watch to followers + campaign txn + publish + one probe"),
            ("SIGTERM -> key deleted (revoke committed)", "ms", &s.to_delete,
             "signal to revoke RPC to raft commit, as the bench's watch sees it"),
            ("key deleted -> new key created", "ms", &s.key_level,
             "key level, both stamps from one etcd watch: watch delivery to followers + campaign txn commit"),
            ("new key created -> new leader answers 200", "ms", &s.to_answer,
             "winner publishes its snapshot; bench opens a connection and asks"),
            ("revisions between delete and create", "rev", &s.revision_gap,
             "1 = no other write in between: the losers' transactions pass through raft but write nothing"),
            ("probes until 200 after the bench saw the new key", "requests", &s.polls,
             "more than 1: the winner published after the bench's watch delivered its key"),
            ("etcd requests per handoff", "req", &s.requests,
             "grpc_server_msg_received_total without LeaseKeepAlive; includes the revoke; every follower's campaign and new watch"),
        ]),
    }
    s.total
}

/// One timed handoff, recorded in `s`: the old leader's slot and etcd's counters just before
/// the signal. A crash is also measured against the leader's own estimate of its lease's
/// expiry. An error is the anomaly that ends the scenario.
fn hand_over(
    ctx: &Ctx,
    group: &Group,
    watch: &KeyWatch,
    way: Way,
    rep: usize,
    s: &mut Samples,
) -> Result<(usize, EtcdCounts), String> {
    let old = group.holder_slot(&ctx.ctl, way)?;
    // The leader's own view of when etcd may expire its lease at the earliest.
    let expiry = (way == Way::Crash)
        .then(|| elector_testkit::http::get(group.slots[old].addr(), "/status").ok())
        .flatten()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
        .and_then(|v| v["lease_seconds_left"].as_f64())
        .map(|left| Instant::now() + Duration::from_secs_f64(left));
    // The first key event: the transfer's put (succession), else the delete, for which a
    // lease may have to expire first.
    let (signal, first) = match way {
        Way::Crash => (Signal::SIGKILL, Kind::Delete),
        Way::Succession => (Signal::SIGTERM, Kind::Put),
        Way::Revoke | Way::Election => (Signal::SIGTERM, Kind::Delete),
    };
    watch.drain();
    let m0 = EtcdCounts::scrape(&ctx.etcd);
    let t0 = Instant::now();
    group.slots[old].signal(signal);
    let bound = SOON + Duration::from_secs(group.spec.ttl_secs);
    let del = watch
        .next(first, bound)
        .ok_or_else(|| format!("no transfer or delete within {bound:?}"))?;
    // Who should answer 200 next: the transfer's put names the successor, a race's winner
    // puts its own key; in the election protocol nothing is written, so read the oldest key
    // (one more round trip for the bench, which can only make our figure later).
    let raced = matches!(way, Way::Revoke | Way::Crash);
    let put = raced.then(|| watch.next(Kind::Put, SOON)).flatten();
    let next_id = match way {
        Way::Election => holder(&ctx.ctl, &group.spec.key, way),
        Way::Succession => Some(del.value.clone()),
        Way::Revoke | Way::Crash => put.as_ref().map(|p| p.value.clone()),
    };
    let new = next_id
        .as_deref()
        .and_then(|id| group.slot_of(id))
        .ok_or_else(|| format!("no known successor ({next_id:?})"))?;
    let (_, t200, polls) = group.slots[new]
        .until_200(SOON)
        .ok_or("new leader never answered 200")?;
    s.polls.push(polls as f64);
    // Wall-clock stamps, to lay beside the replicas' JSON logs (kept with
    // ELECTOR_BENCH_KEEP=1) when looking for where a slow handoff spent its time.
    if std::env::var_os("ELECTOR_BENCH_DEBUG").is_some() {
        let w = elector_testkit::observe::unix_micros;
        eprintln!(
            "debug rep={rep} old={} new={} t0={} del={} put={} t200={}",
            group.slots[old].id(),
            group.slots[new].id(),
            w(t0),
            w(del.at),
            put.as_ref().map(|p| w(p.at)).unwrap_or(0),
            w(t200)
        );
    }
    s.stamp(t0, del.at, put.as_ref().map(|p| p.at), t200);
    if let Some(put) = put {
        s.revision_gap.push((put.revision - del.revision) as f64);
    }
    if let Some(expiry) = expiry {
        // Signed: negative would mean etcd expired the lease before the leader's own
        // estimate, which the send-time rule says cannot happen.
        let late = ms(t200.saturating_duration_since(expiry));
        s.beyond_expiry
            .push(late - ms(expiry.saturating_duration_since(t200)));
    }
    Ok((old, m0))
}

/// The same handoff by `etcdctl elect` peers. Returns the end-to-end samples (ms).
pub fn peer(ctx: &mut Ctx, n: usize, reps: usize) -> Vec<f64> {
    let election = format!("/bench/elect-{n}-{}", elector_testkit::random_suffix());
    let (endpoint, dir) = (ctx.etcd.endpoint(), ctx.dir.clone());
    // The peer in `slot`, its `generation`th process; the proposal names both.
    let spawn = |slot: usize, generation: usize| {
        let proposal = format!("p{n}-{slot}g{generation}");
        Etcdctl::spawn(&endpoint, &election, &proposal, &dir)
    };
    let mut peers: Vec<Etcdctl> = (0..n).map(|i| spawn(i, 0)).collect();
    // Every peer that led is replaced by a new process, so the one elected, other than the
    // leader being stopped, is the next.
    let elected = |peers: &[Etcdctl], not: Option<usize>, timeout: Duration| {
        wait_for(timeout, || {
            (0..n)
                .filter(|&i| Some(i) != not)
                .find_map(|i| Some((i, peers[i].elected_at()?)))
        })
    };
    let prefix = format!("{election}/");
    let queued = |ctl: &Ctl| {
        wait_until(Duration::from_secs(60), || {
            ctl.count_prefix(&prefix) == n as i64
        })
    };
    let Some((mut leader, _)) = elected(&peers, None, Duration::from_secs(30)) else {
        ctx.report
            .anomaly(format!("peer n={n}: no etcdctl elect was elected"));
        return Vec::new();
    };
    if !queued(&ctx.ctl) {
        ctx.report.anomaly(format!(
            "peer n={n}: not every etcdctl elect joined the queue"
        ));
        return Vec::new();
    }
    let watch = ctx.ctl.watch(&prefix, true);
    let mut s = Samples::default();
    for rep in 0..reps {
        std::thread::sleep(settle());
        watch.drain();
        let t0 = Instant::now();
        peers[leader].proc.signal(Signal::SIGTERM);
        let del = watch.next(Kind::Delete, SOON);
        let next = elected(&peers, Some(leader), SOON);
        let (Some(del), Some((next, t_print))) = (del, next) else {
            ctx.report.anomaly(format!(
                "peer n={n} rep {rep}: no resign or no next elected within {SOON:?}"
            ));
            break;
        };
        s.stamp(t0, del.at, None, t_print);
        if peers[leader].proc.wait_exit_within(SOON).is_none() {
            ctx.report
                .anomaly(format!("peer n={n} rep {rep}: old etcdctl did not exit"));
        }
        peers[leader] = spawn(leader, rep + 1);
        leader = next;
        if !queued(&ctx.ctl) {
            ctx.report.anomaly(format!(
                "peer n={n} rep {rep}: replacement did not join the queue"
            ));
            break;
        }
    }
    ctx.report.rows("peer", &format!("candidates={n}"), &[
        ("etcdctl elect: SIGTERM -> next prints elected", "ms", &s.total,
         "end to end for the peer: resign (delete own key) + watch to the next in line + its Get + print"),
        ("etcdctl elect: SIGTERM -> key deleted (resign committed)", "ms", &s.to_delete, ""),
        ("etcdctl elect: key deleted -> next prints elected", "ms", &s.to_answer, ""),
    ]);
    s.total
}

/// Crash failover with 3 candidates and a TTL of `ttl_secs`: SIGKILL to the leader until a
/// follower answers 200, with its goal.
pub fn crash(ctx: &mut Ctx, ttl_secs: u64, reps: usize) {
    let Some(s) = series(ctx, "crash", 3, ttl_secs, Way::Crash, reps) else {
        return;
    };
    ctx.report.rows("crash", &format!("candidates=3 ttl={ttl_secs}s"), &[
        ("SIGKILL -> follower answers 200", "ms", &s.total,
         "bounded by the lease: TTL minus time since the last keep-alive, plus etcd's expiry scan (500 ms period in 3.4)"),
        ("SIGKILL -> key deleted (lease expired)", "ms", &s.to_delete, ""),
        ("key deleted -> new key created", "ms", &s.key_level,
         "after expiry the followers act exactly as in a graceful handoff"),
        ("leader's lease expiry estimate -> follower answers 200", "ms", &s.beyond_expiry,
         "what etcd-elector adds beyond the lease: etcd's expiry scan + watch + campaign"),
    ]);
    if !s.total.is_empty() {
        let p99 = Summary::bare(&s.total).p99;
        let bound = ttl_secs as f64 * 1000.0 + 500.0;
        ctx.report.goals.push(Goal {
            goal: "crash failover".into(),
            target: format!("p99 <= TTL + 500 ms = {bound:.0} ms"),
            measured: format!("p99 {p99:.0} ms"),
            met: p99 <= bound,
        });
    }
}
