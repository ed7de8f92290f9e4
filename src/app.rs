//! Wiring for the sidecar: HTTP server and election, started in order and stopped in order.
//!
//! Order on start: (signal handlers, installed by `main`), HTTP listener bound, etcd client,
//! election. Order on stop: the election gives leadership up and revokes its lease while HTTP
//! keeps answering 503; then HTTP stops.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::election::{etcd, Election};
use crate::http::{self, AppState};
use crate::metrics::Metrics;

/// Why the process failed, mapped to an exit code by `main`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad configuration found late (e.g. an unreadable TLS file): exit 2.
    #[error("{0}")]
    Config(String),
    /// Anything else: exit 1.
    #[error("{0}")]
    Runtime(String),
}

impl AppError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Config(_) => 2,
            AppError::Runtime(_) => 1,
        }
    }
}

/// Run the sidecar until `shutdown` fires and leadership has been handed back.
pub async fn run_sidecar(
    cfg: Config,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let metrics = Metrics::new();
    let client = tokio::select! {
        client = etcd::connect(&cfg.etcd, &cfg.election.timing) => client.map_err(AppError::Config)?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let election = Election::new(cfg.election.clone(), client, metrics.clone());
    let http_stop = CancellationToken::new();
    let server = listener.map(|listener| {
        let state = AppState {
            leadership: election.subscribe(),
            metrics,
        };
        tokio::spawn(http::serve(listener, state, http_stop.clone()))
    });
    tracing::info!(
        key = cfg.election.key.as_str(),
        id = cfg.election.id.as_str(),
        ttl = cfg.election.timing.ttl.as_secs(),
        endpoints = cfg.etcd.endpoints.join(",").as_str(),
        "starting election"
    );
    let revoked = election.run(shutdown).await;
    http_stop.cancel();
    if let Some(server) = server {
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "HTTP server task failed");
        }
    }
    tracing::info!(revoked, "stopped");
    Ok(())
}
