//! The `etcd-elector` binary: configuration, logging, signals, then the library does the rest.
//! Exit codes: 0 after a clean handoff, 2 for bad configuration, 1 for other failures.

use std::io::IsTerminal;
use std::process::ExitCode;

use etcd_elector::app::{self, AppError, Listeners};
use etcd_elector::config::{self, Config, LogFormat, Parsed, RunConfig};
use etcd_elector::shutdown::Shutdown;

fn main() -> ExitCode {
    // `run` re-executes this binary as the shim that guards its command; see `shim.rs`.
    if let Some(code) = etcd_elector::shim::main_if_shim() {
        return ExitCode::from(code);
    }
    let (cfg, job) = match config::from_env() {
        Ok(Parsed::Sidecar(cfg)) => (*cfg, None),
        Ok(Parsed::Job(cfg, job)) => (*cfg, Some(job)),
        Ok(Parsed::Status(cfg, json)) => return status(&cfg, json),
        Ok(Parsed::Printed) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcd-elector: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(cfg.log_format);
    match run(cfg, job) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!(error = %e, "fatal");
            eprintln!("etcd-elector: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

/// `etcd-elector status`: print who holds the key and who waits. Logs only warnings (to
/// stderr), so the output is the status alone.
fn status(cfg: &Config, json: bool) -> ExitCode {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("etcd-elector: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(etcd_elector::status::run(cfg, json));
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e @ etcd_elector::status::StatusError::Connect(_)) => {
            eprintln!("etcd-elector: configuration error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("etcd-elector: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Run the sidecar, or with `job` the command under the lock; returns the exit code.
fn run(cfg: Config, job: Option<RunConfig>) -> Result<u8, AppError> {
    // Two workers, on which the bench's handoff goals were measured; a current-thread runtime
    // would halve a follower's wake-up CPU (docs/PERFORMANCE.md, "The runtime").
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AppError::system("starting the async runtime"))?;
    let shutdown_timeout = cfg.election.shutdown_timeout;
    let result = runtime.block_on(async move {
        // Signals first: a SIGTERM during start-up must still lead to a clean exit.
        let shutdown = Shutdown::install()
            .map_err(AppError::system("installing signal handlers"))?;
        let token = shutdown.token();
        let abort = shutdown.abort_token();
        let _signals = shutdown.spawn();
        let listeners = Listeners {
            public: bind(cfg.listen, "serving HTTP").await?,
            admin: bind(cfg.admin_listen, "serving admin API").await?,
        };
        if let Some(run) = job {
            return etcd_elector::run::run_job(cfg, run, listeners, token, abort).await;
        }
        tokio::select! {
            result = app::run_sidecar(cfg, listeners, token.clone()) => result.map(|()| 0),
            _ = abort.cancelled() => {
                tracing::warn!("exiting without giving the lease back; it expires by its TTL");
                Ok(130)
            }
            // The whole exit, HTTP drain included, fits in the shutdown timeout.
            () = async { token.cancelled().await; tokio::time::sleep(shutdown_timeout).await } => {
                tracing::warn!(timeout = ?shutdown_timeout, "shutdown timeout ran out; exiting now");
                Ok(0)
            }
        }
    });
    // Blocking tasks cannot be cancelled, and dropping the runtime would wait for them: a
    // `getaddrinfo` during a DNS outage, a leader-file write to a stuck volume, an unanswered
    // revoke after a second signal. The exit was already bounded above, so leave them behind.
    runtime.shutdown_background();
    result
}

/// Bind `addr` if set, logging the real address (port 0 resolved).
async fn bind(
    addr: Option<std::net::SocketAddr>,
    what: &'static str,
) -> Result<Option<tokio::net::TcpListener>, AppError> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = etcd_elector::http::bind(addr)
        .await
        .map_err(AppError::system(format!("cannot listen on {addr}")))?;
    let local = listener
        .local_addr()
        .map_err(AppError::system("listener address"))?;
    tracing::info!(listen = %local, "{what}");
    Ok(Some(listener))
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}
