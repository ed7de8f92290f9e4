//! `etcd-elector run -- COMMAND`: run a command only while holding the lock.
//!
//! The same election as the sidecar decides; this module only supervises the command:
//! * it starts once the snapshot says we lead, in its own process group, with the fencing
//!   token in its environment and without the etcd password ([`SECRET_ENV`]);
//! * it starts only while at least the grace period is left on the claim, so it can always
//!   be given its grace period before the claim ends;
//! * it is terminated (SIGTERM to the group, SIGKILL after the grace period) as soon as we stop
//!   leading, and at the latest at `claim deadline - grace period`; whatever the reason, the
//!   SIGKILL comes no later than the claim deadline, which is at least one margin before etcd
//!   can expire the lease and let another holder start;
//! * when it exits by itself, once its whole group is dead, the lock is handed to a waiting
//!   `run` (or the lease revoked when none waits), so the next waiter starts within
//!   milliseconds.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::app::{prepare, AppError, FrontEnds, Listeners};
use crate::config::{Config, Protocol, RunConfig, SECRET_ENV};
use crate::election::etcd::ConnectError;
use crate::election::machine::Role;
use crate::election::Release;
use crate::http::Resign;
use crate::leadership::{Receiver, Snapshot};
use crate::metrics::Metrics;
use crate::process::{Job, Reaper, SpawnError};

/// Exit code when a signal stopped us before the command started (128 + SIGTERM).
const SIGNALLED_BEFORE_START: u8 = 143;

/// Exit code of `--try` when no verdict came within `--try-timeout` (etcd unreachable, the
/// campaign failing): `EX_UNAVAILABLE` from sysexits.h, so a CronJob pod ends instead of
/// piling up behind an outage.
pub const TRY_TIMED_OUT: u8 = 69;

/// Why `POST /resign` is refused here: a resign revokes the lease at once, but the command's
/// group may live for its grace period after its SIGTERM, so another holder could start its
/// command beside ours. SIGTERM to `run` does it in the safe order.
const RESIGN_REFUSED: &str = "refused under `etcd-elector run`: the lock is released only \
    after the command's process group is dead; send SIGTERM to etcd-elector run instead";

/// Run the command under the lock; returns the process exit code.
pub async fn run_job(
    cfg: Config,
    run: RunConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
    abort: CancellationToken,
) -> Result<u8, AppError> {
    // As PID 1, or with a command that double-forks, orphans must come to us to be reaped.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::debug!(error = %e, "cannot become a child subreaper");
    }
    let reaper = Reaper::install().map_err(AppError::system("installing the SIGCHLD handler"))?;
    let mut lock = Lock::campaign(&cfg, listeners);
    let key = cfg.election.key.as_str();
    tracing::info!(
        key,
        id = cfg.election.id.as_str(),
        try_once = run.try_once,
        "waiting for the lock"
    );
    let try_bound = run.try_bound(cfg.election.timing.ttl);
    let give_up_at = run.try_once.then(|| Instant::now() + try_bound);
    let wait = wait_for_lock(
        &mut lock.leadership,
        run.try_once,
        run.grace_period,
        give_up_at,
        &shutdown,
    )
    .await;
    let code = match wait {
        Wait::Leader(snapshot) => {
            let holding = Holding {
                cfg: &cfg,
                run: &run,
                snapshot: &snapshot,
                shutdown: &shutdown,
                abort: &abort,
            };
            holding.run(reaper, &mut lock.leadership).await
        }
        Wait::Held(holder) => {
            tracing::info!(
                key,
                holder = holder.as_str(),
                "lock is held elsewhere; not running the command"
            );
            Ok(run.held_exit_code)
        }
        Wait::TimedOut(last_error) => {
            tracing::error!(
                key,
                try_timeout = try_bound.as_secs_f64(),
                last_error = last_error.as_deref().unwrap_or(""),
                "no verdict from etcd within --try-timeout; not running the command"
            );
            Ok(TRY_TIMED_OUT)
        }
        Wait::Signalled => Ok(SIGNALLED_BEFORE_START),
    };
    // The lock goes back only now, whatever happened: the command's group is dead by here.
    lock.release(&abort).await?;
    code
}

/// The election `run` campaigns in, with the front ends that show it.
struct Lock {
    leadership: Receiver,
    stop: CancellationToken,
    election: JoinHandle<Result<Release, ConnectError>>,
    front_ends: FrontEnds,
}

impl Lock {
    /// Start campaigning for `cfg`'s key, and the front ends `cfg` asks for.
    fn campaign(cfg: &Config, listeners: Listeners) -> Lock {
        let metrics = Metrics::new();
        let election = prepare(cfg, &metrics);
        let leadership = election.subscribe();
        let resign = Resign::Refused(RESIGN_REFUSED);
        let front_ends = FrontEnds::start(&election, cfg, metrics, listeners, resign);
        let stop = CancellationToken::new();
        Lock {
            leadership,
            election: tokio::spawn(election.run(stop.clone())),
            stop,
            front_ends,
        }
    }

    /// Stop the election (revoking the lease or handing the key over) and the front ends; an
    /// etcd client that could not be configured comes back as a configuration error. After a
    /// second signal the release gets only [`ABORT_RELEASE_BOUND`].
    async fn release(self, abort: &CancellationToken) -> Result<(), AppError> {
        let Lock {
            stop,
            election,
            front_ends,
            ..
        } = self;
        let stopping = async {
            stop.cancel();
            let result = match election.await {
                Ok(Err(e)) => Err(AppError::Connect(e)),
                Ok(Ok(_)) => Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "election task failed");
                    Ok(())
                }
            };
            front_ends.stop().await;
            result
        };
        tokio::pin!(stopping);
        tokio::select! {
            result = &mut stopping => result,
            _ = abort.cancelled() => match tokio::time::timeout(ABORT_RELEASE_BOUND, stopping).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("second signal: exiting without giving the lease back; it expires by its TTL");
                    Ok(())
                }
            },
        }
    }
}

/// One term of holding the lock: the command runs in it, and is dead when it ends.
struct Holding<'a> {
    cfg: &'a Config,
    run: &'a RunConfig,
    /// The snapshot that said we lead.
    snapshot: &'a Snapshot,
    shutdown: &'a CancellationToken,
    abort: &'a CancellationToken,
}

impl Holding<'_> {
    /// Start the command, supervise it while we lead, and end its group; returns its exit code
    /// (or `--lost-exit-code`, or the shell's codes when it cannot start).
    async fn run(&self, reaper: Reaper, leadership: &mut Receiver) -> Result<u8, AppError> {
        let key = self.cfg.election.key.as_str();
        let token = self
            .snapshot
            .view
            .fencing_token
            .unwrap_or_default()
            .to_string();
        let mut job = match reaper
            .spawn(&self.run.command, &self.env(&token), SECRET_ENV)
            .await
        {
            Ok(job) => job,
            Err(SpawnError::Command(e)) => {
                tracing::error!(command = self.run.command[0].as_str(), error = %e, "cannot start the command");
                // 127: the shell's code for "command not found"; 126 for other start failures.
                return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                });
            }
            Err(e @ SpawnError::Shim(_)) => return Err(AppError::Spawn(e)),
        };
        tracing::info!(
            key,
            fencing_token = token.as_str(),
            pid = job.pid(),
            "lock held; command started"
        );
        let grace = self.run.grace_period;
        let mut claim_until = self.snapshot.view.claim_until;
        let term = Term::of(self.snapshot);
        let outcome = supervise(
            &mut job,
            term,
            leadership,
            grace,
            &mut claim_until,
            self.shutdown,
            self.abort,
        )
        .await;
        let kill_at = kill_deadline(grace, claim_until);
        let code = match outcome {
            Outcome::Exited(code) => {
                tracing::info!(key, code, "command exited; releasing the lock");
                // Whatever it left in its group must be gone before the lock is released.
                job.terminate_group(kill_at, self.abort).await;
                code
            }
            Outcome::Lost(reason) => {
                tracing::warn!(
                    key,
                    reason,
                    "lock lost while the command ran; terminating it"
                );
                job.terminate_group(kill_at, self.abort).await;
                i32::from(self.run.lost_exit_code)
            }
            Outcome::Signalled => {
                tracing::info!(key, "forwarding SIGTERM to the command");
                job.terminate_group(kill_at, self.abort).await;
                job_exit_code(&mut job).await
            }
            Outcome::Aborted => {
                job.kill_group().await;
                job_exit_code(&mut job).await
            }
        };
        Ok(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
    }

    /// What the command finds in its environment about the lock; `token` is the fencing token.
    fn env(&self, token: &str) -> [(&'static str, String); 5] {
        let election = &self.cfg.election;
        // What `etcdctl lock` exports as ETCD_LOCK_KEY: the key we hold. In the election
        // protocol that is our own candidate key, `<name>/<lease hex>`, not the name.
        let lock_key = match (election.protocol, self.snapshot.view.lease_id) {
            (Protocol::Election, Some(lease)) => format!("{}/{lease:x}", election.key),
            _ => election.key.clone(),
        };
        [
            ("ELECTOR_FENCING_TOKEN", token.to_string()),
            ("ELECTOR_KEY", election.key.clone()),
            ("ELECTOR_ID", election.id.clone()),
            ("ETCD_LOCK_KEY", lock_key),
            // The fencing token: the create revision, or the transfer's revision for a key
            // handed over. `etcdctl lock` exports the revision of the response that showed it
            // the lock: the same number for a free lock, a later one after waiting. Both grow
            // from holder to holder; README says so.
            ("ETCD_LOCK_REV", token.to_string()),
        ]
    }
}

/// How long the lease's release may take after a second signal. The promise of that signal
/// is an exit at once; a release that etcd does not answer in time only means the lease
/// expires by its TTL, after the group is already dead.
const ABORT_RELEASE_BOUND: Duration = Duration::from_millis(500);

/// When the group must be dead: at the end of its grace period, but never after the claim
/// ends, since from then on etcd may expire the lease and another holder may start.
fn kill_deadline(grace: Duration, claim_until: Option<Instant>) -> Instant {
    let after_grace = Instant::now() + grace;
    claim_until.map_or(after_grace, |claim| claim.min(after_grace))
}

/// The command's exit code once it has been reaped (bounded wait).
async fn job_exit_code(job: &mut Job) -> i32 {
    match tokio::time::timeout(Duration::from_secs(5), job.wait()).await {
        Ok(code) => code,
        Err(_) => job.exit_code().unwrap_or(137),
    }
}

enum Wait {
    Leader(Box<Snapshot>),
    Held(String),
    /// `--try` got no verdict in time; the last etcd error, if any.
    TimedOut(Option<String>),
    Signalled,
}

/// Wait until we lead with at least `grace` left on the claim; with `try_once`, give up at
/// the first sign of another holder, and at `give_up_at` without a verdict. A claim with less left (won after the keep-alive stalled)
/// is not enough: the command could not be given its grace period before the claim ends, so
/// we wait for the renewal that extends it.
async fn wait_for_lock(
    leadership: &mut Receiver,
    try_once: bool,
    grace: Duration,
    give_up_at: Option<Instant>,
    shutdown: &CancellationToken,
) -> Wait {
    let give_up = async {
        match give_up_at {
            Some(at) => sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(give_up);
    loop {
        let snapshot = leadership.borrow_and_update().as_ref().clone();
        let now = Instant::now();
        if snapshot.is_leader_at(now) {
            if snapshot
                .view
                .claim_until
                .is_some_and(|until| now + grace < until)
            {
                return Wait::Leader(Box::new(snapshot));
            }
            tracing::debug!("leading, but less than the grace period is left on the claim; waiting for a renewal");
        }
        if try_once && snapshot.view.role == Role::Follower {
            return Wait::Held(snapshot.view.leader.unwrap_or_default());
        }
        tokio::select! {
            changed = leadership.changed() => if changed.is_err() { return Wait::Signalled },
            _ = shutdown.cancelled() => return Wait::Signalled,
            _ = &mut give_up => {
                return Wait::TimedOut(leadership.borrow().last_error.clone());
            }
        }
    }
}

/// What identifies one term of holding the lock: the key's create revision (the fencing
/// token) under one lease. The same pair means the key was never deleted in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Term {
    fencing_token: Option<i64>,
    lease: Option<i64>,
}

impl Term {
    fn of(snapshot: &Snapshot) -> Self {
        Term {
            fencing_token: snapshot.view.fencing_token,
            lease: snapshot.view.lease_id,
        }
    }
}

enum Outcome {
    Exited(i32),
    Lost(&'static str),
    Signalled,
    Aborted,
}

/// Watch the command and the lock until one of them ends; `claim_until` follows the claim
/// deadline of the term while it is renewed.
async fn supervise(
    job: &mut Job,
    term: Term,
    leadership: &mut Receiver,
    grace: Duration,
    claim_until: &mut Option<Instant>,
    shutdown: &CancellationToken,
    abort: &CancellationToken,
) -> Outcome {
    loop {
        let snapshot = leadership.borrow_and_update().clone();
        let now = Instant::now();
        if snapshot.is_leader_at(now) && Term::of(&snapshot) == term {
            *claim_until = snapshot.view.claim_until;
        }
        if !snapshot.is_leader_at(now) {
            return Outcome::Lost(match snapshot.view.role {
                Role::Leader => "lease not renewed in time",
                _ => "no longer the holder of the key",
            });
        }
        // Snapshots coalesce: a loss and a new win can arrive as one change. A new key or
        // lease is a new term, and the command was started under the old one.
        if Term::of(&snapshot) != term {
            return Outcome::Lost("the lock was lost and taken again: a new term");
        }
        // Start terminating early enough that the group is dead when the claim ends.
        let terminate_at = snapshot
            .view
            .claim_until
            .map_or(now, |until| until.checked_sub(grace).unwrap_or(now));
        if now >= terminate_at {
            return Outcome::Lost("lease renewal overdue: terminating before it can expire");
        }
        tokio::select! {
            code = job.wait() => return Outcome::Exited(code),
            changed = leadership.changed() => if changed.is_err() {
                return Outcome::Lost("election stopped");
            },
            _ = sleep_until(terminate_at) => {}
            _ = shutdown.cancelled() => return Outcome::Signalled,
            _ = abort.cancelled() => return Outcome::Aborted,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::election::machine::View;

    fn leading_with(claim_left: Duration) -> Arc<Snapshot> {
        let now = Instant::now();
        Arc::new(Snapshot::initial(
            "me".into(),
            "/k".into(),
            View {
                role: Role::Leader,
                leader: Some("me".into()),
                holder_lease: None,
                fencing_token: Some(4),
                claim_until: Some(now + claim_left),
                leader_since: Some(now),
                lease_id: Some(0x2a),
                lease_expires_at: Some(now + claim_left + Duration::from_secs(1)),
                lease_ttl: Some(Duration::from_secs(10)),
                app_healthy: None,
                no_healthy_successor: false,
            },
        ))
    }

    #[tokio::test]
    async fn the_command_starts_only_with_its_grace_period_left_on_the_claim() {
        let grace = Duration::from_secs(5);
        let (tx, mut rx) = tokio::sync::watch::channel(leading_with(Duration::from_secs(3)));
        let shutdown = CancellationToken::new();
        let waiting = wait_for_lock(&mut rx, false, grace, None, &shutdown);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut waiting)
                .await
                .is_err(),
            "3 s left on the claim is less than the 5 s grace period: keep waiting"
        );
        tx.send(leading_with(Duration::from_secs(9))).unwrap();
        match tokio::time::timeout(Duration::from_secs(5), waiting).await {
            Ok(Wait::Leader(snapshot)) => assert_eq!(snapshot.view.fencing_token, Some(4)),
            Ok(_) => panic!("expected to lead"),
            Err(_) => panic!("a renewed claim starts the command"),
        }
    }

    #[test]
    fn the_kill_deadline_is_never_after_the_claim() {
        let grace = Duration::from_secs(5);
        let claim = Instant::now() + Duration::from_secs(2);
        assert_eq!(kill_deadline(grace, Some(claim)), claim);
        let far = Instant::now() + Duration::from_secs(60);
        assert!(kill_deadline(grace, Some(far)) < far);
    }
}
