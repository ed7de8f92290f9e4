//! Wiring: the front ends (HTTP, admin, leader file) around an election, started and
//! stopped in order, and the sidecar built from them.
//!
//! Order on start: (signal handlers and listeners, by `main`), front ends, election, which
//! connects to etcd first (with credentials that waits until etcd accepts them, and the
//! probes answer meanwhile). Order on stop: the election gives leadership up and revokes its
//! lease while the front ends keep answering "not leader"; then the front ends stop.

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app_health;
use crate::config::Config;
use crate::election::etcd::ConnectError;
use crate::election::Election;
use crate::http::{self, AppState, Resign};
use crate::leader_file;
use crate::metrics::Metrics;
use crate::process::SpawnError;

/// Why the process failed, mapped to an exit code by `main`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad configuration found late, when the etcd client is built (an unreadable TLS file):
    /// exit 2.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// What the process needs from the system failed (the runtime, a signal handler, a
    /// listener): exit 1.
    #[error("{what}: {source}")]
    System {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// `run` could not start its command's supervisor: exit 1.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
}

impl AppError {
    /// A system call that failed while doing `what`.
    pub fn system(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AppError {
        let what = what.into();
        move |source| AppError::System { what, source }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Connect(_) => 2,
            AppError::System { .. } | AppError::Spawn(_) => 1,
        }
    }
}

/// The listeners `main` bound before anything else started.
#[derive(Debug, Default)]
pub struct Listeners {
    pub public: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

/// The tasks that show the election to the outside.
pub struct FrontEnds {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl FrontEnds {
    /// Start whichever front ends `cfg` asks for, reading `election`'s snapshot (and, with
    /// `--app-health`, the application's health for it); `resign` says what the admin
    /// listener's `POST /resign` may do.
    pub fn start(
        election: &Election,
        cfg: &Config,
        metrics: Metrics,
        listeners: Listeners,
        resign: Resign,
    ) -> Self {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        if let Some(listener) = listeners.public {
            let state = AppState {
                leadership: election.subscribe(),
                metrics,
            };
            tasks.push(tokio::spawn(http::serve(listener, state, stop.clone())));
        }
        if let Some(listener) = listeners.admin {
            tasks.push(tokio::spawn(http::serve_admin(
                listener,
                election.handle(),
                resign,
                stop.clone(),
            )));
        }
        if let Some(check) = &cfg.election.app_health {
            tasks.push(tokio::spawn(app_health::watch(
                check.url.clone(),
                election.handle(),
                stop.clone(),
            )));
        }
        if let Some(path) = cfg.leader_file.clone() {
            tasks.push(tokio::spawn(leader_file::mirror(
                path,
                election.subscribe(),
                stop.clone(),
            )));
        }
        FrontEnds { stop, tasks }
    }

    /// Stop them and wait (each bounds its own drain).
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "front-end task failed");
            }
        }
    }
}

/// The election for `cfg`; it connects to etcd when it starts running.
pub fn prepare(cfg: &Config, metrics: &Metrics) -> Election {
    tracing::info!(
        key = cfg.election.key.as_str(),
        id = cfg.election.id.as_str(),
        protocol = ?cfg.election.protocol,
        ttl = cfg.election.timing.ttl.as_secs(),
        endpoints = cfg.etcd.endpoints.join(",").as_str(),
        "starting election"
    );
    Election::new(cfg.election.clone(), cfg.etcd.clone(), metrics.clone())
}

/// Run the sidecar until `shutdown` fires and leadership has been handed back.
pub async fn run_sidecar(
    cfg: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let metrics = Metrics::new();
    let election = prepare(&cfg, &metrics);
    let front_ends = FrontEnds::start(&election, &cfg, metrics, listeners, Resign::Allowed);
    let result = election.run(shutdown).await;
    front_ends.stop().await;
    let release = result?;
    tracing::info!(lease = release.as_str(), "stopped");
    Ok(())
}
