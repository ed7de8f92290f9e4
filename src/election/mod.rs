//! The election loop: joins the pure [`machine::Machine`] to etcd.
//!
//! The loop owns the machine. It feeds it events (results of etcd calls, watch events,
//! timer ticks, shutdown), performs the actions it returns by spawning one task per etcd
//! operation, and publishes a [`Snapshot`] after every step. It never blocks on etcd itself,
//! so shutdown and deadlines are handled however slow etcd is.

pub mod etcd;
pub mod machine;
pub mod succession;

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::backoff::WarnLimit;
use crate::config::{ElectionConfig, EtcdConfig};
use crate::leadership::{Publisher, Receiver, Snapshot};
use crate::metrics::Metrics;
use etcd::{ConnectError, EtcdError, Explain, Report};
use machine::{Action, Event, Machine, Role, Transition};
use succession::Registration;

/// How an election ended: what happened to the lease it held, for the exit log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The lease was revoked: its key is gone and a successor can win at once.
    Revoked,
    /// There was no lease to give back.
    NothingHeld,
    /// etcd did not accept the revoke; the lease expires by its TTL.
    RevokeFailed,
    /// `--shutdown-timeout` ran out first; the lease expires by its TTL.
    TimedOut,
}

impl Release {
    /// A short stable name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Release::Revoked => "revoked",
            Release::NothingHeld => "nothing_held",
            Release::RevokeFailed => "revoke_failed",
            Release::TimedOut => "timed_out",
        }
    }
}

/// Requests from other tasks (the admin API) to the election loop.
#[derive(Debug)]
enum Command {
    /// Resign if leading; the reply says whether leadership was given up.
    Resign(oneshot::Sender<bool>),
    /// The application's health changed (`--app-health`).
    AppHealth(bool),
}

/// A handle for asking the election loop to do something.
#[derive(Debug, Clone)]
pub struct ElectionHandle {
    commands: mpsc::Sender<Command>,
}

impl ElectionHandle {
    /// Give up leadership now and campaign again at the back of the line. Returns false when
    /// nothing was resigned: this replica was not the leader, its claim had already run out,
    /// or the loop has stopped.
    pub async fn resign(&self) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Resign(reply)).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// Report that the application's health changed.
    pub async fn app_health(&self, healthy: bool) {
        let _ = self.commands.send(Command::AppHealth(healthy)).await;
    }
}

/// The etcd client, or what is needed to make one.
enum Connection {
    // Boxed: a client is a few KiB, and an election holds one for its whole life anyway.
    Ready(Box<Client>),
    Later(EtcdConfig),
}

/// The task that writes our registration (lock protocol with succession).
struct Registrar {
    /// The registration to write next.
    newest: watch::Sender<etcd::Pending>,
    /// The lease whose registration was last settled: written, or gone with its lease.
    settled: watch::Receiver<Option<machine::LeaseId>>,
    task: JoinHandle<()>,
}

/// One election for one key.
pub struct Election {
    cfg: ElectionConfig,
    /// How to reach etcd: a client, or the settings to build one when the loop starts (so
    /// the front ends can answer while an authenticating connect still waits for etcd).
    client: Connection,
    machine: Machine,
    publisher: Publisher,
    metrics: Metrics,
    reports_tx: mpsc::Sender<Report>,
    reports: mpsc::Receiver<Report>,
    commands_tx: mpsc::Sender<Command>,
    commands: mpsc::Receiver<Command>,
    /// Whether the "TTL too short for this round trip" warning was given.
    rtt_warned: bool,
    keepalive: Option<JoinHandle<()>>,
    watch: Option<JoinHandle<()>>,
    /// During a handoff that waits for a candidate: the watch on the registrations.
    candidates_watch: Option<JoinHandle<()>>,
    /// Our registration's writer: the newest registration goes in, one put at a time.
    registrar: Option<Registrar>,
    /// When the current lease's registration was first written (Unix seconds).
    registered_at: Option<(machine::LeaseId, u64)>,
    /// Election protocol: our key's create revision under a lease, from its last campaign, so
    /// that the next campaign under that lease only reads (see `etcd::campaign`).
    election_key: Option<(machine::LeaseId, i64)>,
    watch_generation: u64,
    transitions: u64,
    last_error: Option<String>,
    errors: ErrorLog,
    /// What our way of connecting tells about a failure (e.g. no client certificate).
    explain: Explain,
    exit: bool,
    /// What became of the lease given back on exit, once its revoke has finished.
    release: Release,
}

impl Election {
    /// A new election; it connects to etcd when [`Election::run`] starts, so that the front
    /// ends can answer while an authenticating connect still waits for etcd.
    pub fn new(cfg: ElectionConfig, etcd: EtcdConfig, metrics: Metrics) -> Self {
        let explain = Explain::for_config(&etcd);
        let client = Connection::Later(etcd);
        let seed = seed_from(&cfg.id);
        let mut machine = Machine::new(cfg.id.clone(), cfg.timing, cfg.release_delay, seed);
        if let Some(succession) = cfg.succession.clone() {
            machine = machine.with_succession(succession);
        }
        if let Some(check) = &cfg.app_health {
            machine = machine.with_app_health(check.unhealthy_after);
        }
        let snapshot = Snapshot::initial(cfg.id.clone(), cfg.key.clone(), machine.view());
        let (publisher, _) = Publisher::new(snapshot);
        let (reports_tx, reports) = mpsc::channel(256);
        let (commands_tx, commands) = mpsc::channel(16);
        Election {
            cfg,
            commands_tx,
            commands,
            rtt_warned: false,
            client,
            machine,
            publisher,
            metrics,
            reports_tx,
            reports,
            keepalive: None,
            watch: None,
            candidates_watch: None,
            registrar: None,
            registered_at: None,
            election_key: None,
            watch_generation: 0,
            transitions: 0,
            last_error: None,
            errors: ErrorLog::default(),
            explain,
            exit: false,
            release: Release::NothingHeld,
        }
    }

    /// A handle for requests such as resign.
    pub fn handle(&self) -> ElectionHandle {
        ElectionHandle {
            commands: self.commands_tx.clone(),
        }
    }

    /// A reader of the leadership snapshot.
    pub fn subscribe(&self) -> Receiver {
        self.publisher.subscribe()
    }

    /// Run until the lease is given back after `shutdown` fires (or the shutdown timeout runs
    /// out), and say what became of it. An etcd client that cannot be configured (say an
    /// unreadable TLS file) is an error.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<Release, ConnectError> {
        if let Connection::Later(etcd) = &self.client {
            let etcd = etcd.clone();
            let client = tokio::select! {
                client = etcd::connect(&etcd, &self.cfg.timing) => client?,
                _ = shutdown.cancelled() => return Ok(Release::NothingHeld),
            };
            self.client = Connection::Ready(Box::new(client));
        }
        Ok(self.run_connected(shutdown).await)
    }

    async fn run_connected(mut self, shutdown: CancellationToken) -> Release {
        self.apply(Event::Start);
        let mut stop_deadline: Option<Instant> = None;
        loop {
            let wakeup = self.machine.next_wakeup();
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if stop_deadline.is_none() => {
                    stop_deadline = Some(Instant::now() + self.cfg.shutdown_timeout);
                    self.apply(Event::Shutdown);
                }
                _ = sleep_until(stop_deadline.unwrap_or_else(Instant::now)), if stop_deadline.is_some() => {
                    tracing::warn!(timeout = ?self.cfg.shutdown_timeout, "shutdown timeout ran out before the lease was revoked; it will expire by its TTL");
                    self.stop_tasks();
                    return Release::TimedOut;
                }
                Some(report) = self.reports.recv() => self.on_report(report),
                Some(command) = self.commands.recv() => match command {
                    Command::Resign(reply) => {
                        // Answer from what the step did, not from the last view: a claim that
                        // ran out while the loop was busy resigns nothing.
                        let resigned = self.apply(Event::Resign);
                        let _ = reply.send(resigned);
                    }
                    Command::AppHealth(healthy) => {
                        self.apply(Event::AppHealth { healthy });
                    }
                },
                _ = sleep_until(wakeup.unwrap_or_else(Instant::now)), if wakeup.is_some() => {
                    self.apply(Event::Tick);
                }
            }
            if self.exit {
                self.stop_tasks();
                return self.release;
            }
        }
    }

    fn on_report(&mut self, report: Report) {
        match report {
            Report::Event(event) => {
                if let Event::CampaignDone {
                    lease,
                    queue: Some(queue),
                    ..
                } = &event
                {
                    self.election_key = Some((*lease, queue.own));
                }
                self.apply(event);
            }
            Report::WatchEvent { generation, event } => {
                if generation == self.watch_generation && self.watch.is_some() {
                    self.apply(event);
                }
            }
            Report::Error(error) => self.on_error(error),
            Report::KeepAliveRtt(rtt) => self.on_rtt(rtt),
            Report::RevokeDone { revoked } => {
                self.release = if revoked {
                    Release::Revoked
                } else {
                    Release::RevokeFailed
                };
                self.apply(Event::Revoked);
            }
        }
    }

    /// Record a keep-alive round trip, and warn once when the TTL leaves too little room for
    /// it: the claim survives `ttl - margin` after a renewal is sent, and a renewal is sent
    /// every `interval`; with fewer than four round trips to spare a slow moment costs the
    /// leadership.
    fn on_rtt(&mut self, rtt: Duration) {
        self.metrics
            .keepalive_rtt_seconds
            .observe(rtt.as_secs_f64());
        let t = self.cfg.timing;
        let room = t
            .ttl
            .saturating_sub(t.margin)
            .saturating_sub(t.keepalive_interval);
        if !self.rtt_warned && rtt.saturating_mul(4) > room {
            self.rtt_warned = true;
            tracing::warn!(
                rtt = ?rtt,
                ttl = ?t.ttl,
                margin = ?t.margin,
                keepalive_interval = ?t.keepalive_interval,
                "the TTL leaves too little room for this keep-alive round trip: leadership will be lost on small delays; raise --ttl"
            );
        }
    }

    fn on_error(&mut self, error: EtcdError) {
        let error = error.explained(self.explain);
        self.metrics.etcd_error(error.op().as_str());
        let text = error.to_string();
        self.errors.log(&error);
        self.last_error = Some(text);
        self.publish();
    }

    /// Feed one event to the machine and carry out what it says; true when the step resigned.
    ///
    /// The new snapshot is published before any action is performed, so no reader can see
    /// "leader" after a revoke (or anything else that ends the claim) has been sent.
    fn apply(&mut self, event: Event) -> bool {
        let step = self.machine.step(event, Instant::now());
        for transition in &step.transitions {
            self.log_transition(transition);
        }
        self.publish();
        let resigned = step.resigned();
        for action in step.actions {
            self.perform(action);
        }
        resigned
    }

    fn publish(&mut self) {
        let view = self.machine.view();
        let snapshot = Snapshot {
            identity: self.cfg.id.clone(),
            key: self.cfg.key.clone(),
            stopping: view.role == Role::Stopping,
            view,
            transitions: self.transitions,
            last_error: self.last_error.clone(),
        };
        self.publisher.publish(snapshot);
    }

    fn log_transition(&mut self, transition: &Transition) {
        let key = self.cfg.key.as_str();
        let id = self.cfg.id.as_str();
        match transition {
            Transition::Campaigning => {
                tracing::debug!(key, id, "campaigning");
            }
            Transition::BecameLeader { fencing_token } => {
                self.transitions += 1;
                self.metrics.leader_transitions.inc();
                tracing::info!(
                    key,
                    id,
                    fencing_token,
                    event = "became_leader",
                    "became leader"
                );
            }
            Transition::SteppedDown { reason } => {
                self.transitions += 1;
                self.metrics.leader_transitions.inc();
                tracing::warn!(
                    key,
                    id,
                    reason = reason.as_str(),
                    event = "stepped_down",
                    "stepped down"
                );
            }
            Transition::LeaderObserved {
                leader,
                fencing_token,
            } if *leader == self.cfg.id => {
                // A previous instance with our id (a recreated StatefulSet pod whose old self
                // is cut off) holds the key under its own lease. We do not lead, and readers
                // must not take the id for ours: `/` answers "" and `/status` names it.
                tracing::warn!(
                    key,
                    id,
                    fencing_token,
                    event = "stale_holder",
                    "the key holds our id under another lease: an older instance of this replica; not leading"
                );
            }
            Transition::LeaderObserved {
                leader,
                fencing_token,
            } => {
                tracing::info!(
                    key,
                    id,
                    leader = leader.as_str(),
                    fencing_token,
                    event = "leader_observed",
                    "following leader"
                );
            }
            Transition::NoHealthySuccessor => {
                tracing::warn!(
                    key,
                    id,
                    event = "no_healthy_successor",
                    "our application is unhealthy, and no replica with a healthy one is registered: keeping leadership"
                );
            }
            Transition::LeaseLost { lease } => {
                tracing::warn!(
                    key,
                    id,
                    lease = format!("{lease:x}"),
                    event = "lease_lost",
                    "lease lost; taking a new one"
                );
            }
        }
    }

    fn perform(&mut self, action: Action) {
        let timing = self.cfg.timing;
        let reports = self.reports_tx.clone();
        let mut client = match &self.client {
            Connection::Ready(client) => Client::clone(client),
            // `Start` is applied only once connected, so no action can come before.
            Connection::Later(_) => return,
        };
        match action {
            Action::GrantLease => request(
                reports,
                async move { etcd::grant(&mut client, &timing).await },
                |granted| match granted {
                    Ok((lease, ttl, sent_at)) => Event::LeaseGranted {
                        lease,
                        ttl,
                        sent_at,
                    },
                    Err(_) => Event::LeaseGrantFailed,
                },
            ),
            Action::KeepAlive { lease } => {
                tracing::info!(
                    key = self.cfg.key.as_str(),
                    lease = format!("{lease:x}"),
                    "lease granted"
                );
                let task = etcd::keep_alive(client, timing, lease, reports);
                replace_task(&mut self.keepalive, task);
            }
            Action::StopKeepAlive => {
                stop_task(&mut self.keepalive);
            }
            Action::Campaign { lease } => {
                self.metrics.campaigns.inc();
                let key = self.cfg.key.clone();
                let id = self.cfg.id.clone();
                let protocol = self.cfg.protocol;
                let registered = self.registrar.as_ref().map(|r| r.settled.clone());
                let own_created = self
                    .election_key
                    .filter(|(of, _)| *of == lease)
                    .map(|(_, created)| created);
                let campaign = async move {
                    if let Some(registered) = registered {
                        registration_settled(registered, lease, timing.request_timeout).await;
                    }
                    let (key, id) = (key.as_str(), id.as_str());
                    etcd::campaign(&mut client, &timing, protocol, key, id, lease, own_created)
                        .await
                };
                request(reports, campaign, move |done| match done {
                    Ok(campaign) => Event::CampaignDone {
                        lease,
                        holder: campaign.holder,
                        revision: campaign.revision,
                        key: campaign.key,
                        queue: campaign.queue,
                    },
                    Err(e) => Event::CampaignFailed {
                        lease,
                        lease_gone: e.is_lease_gone(),
                    },
                });
            }
            Action::Watch {
                target,
                from_revision,
            } => {
                self.watch_generation += 1;
                tracing::debug!(key = target.key.as_str(), from_revision, "watching");
                let generation = self.watch_generation;
                let task = etcd::watch(client, timing, target, from_revision, generation, reports);
                replace_task(&mut self.watch, task);
            }
            Action::StopWatch => {
                stop_task(&mut self.watch);
            }
            Action::Revoke { lease, then_exit } => self.revoke(client, lease, then_exit),
            Action::Register {
                lease,
                healthy,
                leading,
            } => self.register(client, lease, healthy, leading),
            Action::ReadCandidates => {
                let key = self.cfg.key.clone();
                let read = async move { etcd::read_candidates(&mut client, &timing, &key).await };
                request(reports, read, |read| match read {
                    Ok((candidates, revision)) => Event::Candidates {
                        candidates,
                        revision,
                    },
                    Err(_) => Event::CandidatesFailed,
                });
            }
            Action::WatchCandidates { from_revision } => {
                let task = etcd::watch_candidates(
                    client,
                    timing,
                    self.cfg.key.clone(),
                    from_revision,
                    reports,
                );
                replace_task(&mut self.candidates_watch, task);
            }
            Action::StopWatchCandidates => {
                stop_task(&mut self.candidates_watch);
            }
            Action::Transfer { to, held } => {
                // Publish-before-act: the handoff began by ending the claim.
                debug_assert!(
                    !self.publisher.current().is_leader_at(Instant::now()),
                    "the key is handed over only after the snapshot stopped claiming leadership"
                );
                let key = self.cfg.key.clone();
                tracing::info!(
                    key = key.as_str(),
                    successor = to.id.as_str(),
                    successor_revision = to.revision.as_str(),
                    "handing the key over"
                );
                let transfer =
                    async move { etcd::transfer(&mut client, &timing, &key, &to, held).await };
                request(reports, transfer, |done| Event::TransferDone {
                    succeeded: done.unwrap_or(false),
                });
            }
            Action::Exit => self.exit = true,
        }
    }

    /// Revoke `lease`. On the way out (`then_exit`) the outcome comes back, within the shutdown
    /// timeout; otherwise only a failure does, so that the machine retries it later.
    fn revoke(&self, mut client: Client, lease: machine::LeaseId, then_exit: bool) {
        let timing = self.cfg.timing;
        let reports = self.reports_tx.clone();
        // Publish-before-act: whatever asked for this revoke has already ended the claim in the
        // published snapshot.
        debug_assert!(
            !self.publisher.current().is_leader_at(Instant::now()),
            "a revoke is sent only after the snapshot stopped claiming leadership"
        );
        let within = if then_exit {
            self.cfg.shutdown_timeout
        } else {
            timing.request_timeout
        };
        let key = self.cfg.key.clone();
        tokio::spawn(async move {
            let revoked = match etcd::revoke(&mut client, lease, within).await {
                Ok(()) => {
                    tracing::info!(key, lease = format!("{lease:x}"), "lease revoked");
                    true
                }
                Err(e) => {
                    tracing::warn!(key, lease = format!("{lease:x}"), error = %e, "lease revoke failed");
                    let _ = reports.send(Report::Error(e)).await;
                    false
                }
            };
            let report = match (then_exit, revoked) {
                (true, _) => Report::RevokeDone { revoked },
                (false, false) => Report::Event(Event::RevokeFailed { lease }),
                (false, true) => return,
            };
            let _ = reports.send(report).await;
        });
    }

    /// Write our registration (lock protocol): one writer task per election puts the newest.
    fn register(
        &mut self,
        client: Client,
        lease: machine::LeaseId,
        healthy: bool,
        leading: Option<succession::Term>,
    ) {
        let timing = self.cfg.timing;
        let reports = self.reports_tx.clone();
        let key = self.cfg.key.clone();
        // A re-registration (health changed) keeps its first time.
        let registered_at = match self.registered_at {
            Some((at_lease, at)) if at_lease == lease => at,
            _ => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        self.registered_at = Some((lease, registered_at));
        let registration = Registration {
            id: self.cfg.id.clone(),
            revision: self
                .cfg
                .succession
                .as_ref()
                .map(|s| s.revision.clone())
                .unwrap_or_default(),
            healthy,
            registered_at,
            leading,
        };
        let registrar = self.registrar.get_or_insert_with(|| {
            let (newest, pending) = watch::channel(None);
            let (written, settled) = watch::channel(None);
            let task = etcd::write_registrations(client, timing, key, pending, written, reports);
            Registrar {
                newest,
                settled,
                task: tokio::spawn(task),
            }
        });
        registrar.newest.send_replace(Some((lease, registration)));
    }

    fn stop_tasks(&mut self) {
        for task in [
            self.keepalive.take(),
            self.watch.take(),
            self.candidates_watch.take(),
            self.registrar.take().map(|r| r.task),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }
    }
}

/// Runs one etcd request in a task of its own, so the loop never waits on etcd: its error, if
/// any, is reported first, then the event that `event` makes of how it ended.
fn request<T: Send + 'static>(
    reports: mpsc::Sender<Report>,
    call: impl std::future::Future<Output = Result<T, EtcdError>> + Send + 'static,
    event: impl FnOnce(Result<T, &EtcdError>) -> Event + Send + 'static,
) {
    tokio::spawn(async move {
        let (event, error) = match call.await {
            Ok(value) => (event(Ok(value)), None),
            Err(e) => (event(Err(&e)), Some(e)),
        };
        if let Some(e) = error {
            let _ = reports.send(Report::Error(e)).await;
        }
        let _ = reports.send(Report::Event(event)).await;
    });
}

/// Waits (at most `bound`) until `lease`'s registration is settled. A campaign sent after it
/// reads a revision that includes the registration, so the watch the machine starts from the
/// next revision is in step with etcd. Sent before, the registration often lands in between,
/// and etcd then starts the watch behind and catches it up only in a loop that runs every
/// 100 ms: a handoff to us in that window would wait for it (docs/PERFORMANCE.md).
async fn registration_settled(
    mut settled: watch::Receiver<Option<machine::LeaseId>>,
    lease: machine::LeaseId,
    bound: Duration,
) {
    let _ = tokio::time::timeout(bound, settled.wait_for(|l| *l == Some(lease))).await;
}

/// Starts `task` in `slot`, ending the one it replaces: one task of each kind at a time.
fn replace_task(
    slot: &mut Option<JoinHandle<()>>,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Some(old) = slot.replace(tokio::spawn(task)) {
        old.abort();
    }
}

/// Ends the task in `slot`, if any.
fn stop_task(slot: &mut Option<JoinHandle<()>>) {
    if let Some(old) = slot.take() {
        old.abort();
    }
}

/// Logs repeated etcd failures: at most one `warn` per [`crate::backoff::WARN_EVERY`], with
/// the count of those suppressed in between; the rest at `debug`. A failure that carries a
/// hint an operator can act on (a missing client certificate) has a limit of its own, so an
/// unrelated failure just before it cannot hide the hint.
#[derive(Debug, Default)]
struct ErrorLog {
    plain: WarnLimit,
    hinted: WarnLimit,
}

impl ErrorLog {
    fn log(&mut self, error: &EtcdError) {
        let limit = if error.has_hint() {
            &mut self.hinted
        } else {
            &mut self.plain
        };
        match limit.due(Instant::now()) {
            Some(suppressed) => {
                tracing::warn!(op = error.op().as_str(), error = %error, suppressed, "etcd request failed; retrying")
            }
            None => {
                tracing::debug!(op = error.op().as_str(), error = %error, "etcd request failed; retrying")
            }
        }
    }
}

/// A jitter seed that differs between replicas and between runs.
fn seed_from(id: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(id.as_bytes());
    hasher.write_u32(std::process::id());
    hasher.finish()
}
