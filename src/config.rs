//! Configuration: command-line flags, `ELECTOR_*` environment variables and an optional YAML
//! file, merged into one validated [`Config`].
//!
//! Each option is declared once, as a field of [`ElectorArgs`] that clap (flag and variable)
//! and serde (the file's snake_case key) both read through the same checked types, so a bad
//! value is refused where it is read: clap names the flag or variable, serde_yaml_ng the file,
//! field and line. Precedence is flag, then environment, then file, then default: the file's
//! values are laid down first, clap's overwrite them, and the defaults (each a named constant)
//! fill what is left. YAML parsing lives only here: we use `serde_yaml_ng`, the maintained fork
//! of the archived `serde_yaml` with the same API (`serde_yml` is avoided: RUSTSEC-2025-0068).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::election::machine::Timing;
use crate::election::succession::Succession;

mod args;
mod error;
mod values;
pub use args::{Cli, Command, ElectorArgs, RunArgs};
pub use error::ConfigError;
pub use values::{Endpoint, HealthUrl, LogFormat, OptionalAddr, Protocol, Seconds, Secret, Ttl};

/// Defaults, each named once: the help text and [`parse`] both read these.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 4040));
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4041));
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_RELEASE_DELAY: Duration = Duration::ZERO;
/// No wait by default: outside a rollout (a drained node, a scale-down) nobody of another
/// release will come, and every second waited is a second without a leader. Where old pods
/// stop while the new ones start (the chart's leader-only readiness, `maxUnavailable: 100%`),
/// the chart sets a wait long enough for a new pod to register: see docs/PERFORMANCE.md.
pub const DEFAULT_HANDOFF_WAIT: Duration = Duration::ZERO;
/// Three failed checks a second apart: one slow answer does not move leadership.
pub const DEFAULT_APP_UNHEALTHY_AFTER: Duration = Duration::from_secs(3);

/// What `main` should do after parsing.
#[derive(Debug)]
pub enum Parsed {
    /// Run the sidecar.
    Sidecar(Box<Config>),
    /// `etcd-elector run`: run a command while holding the lock.
    Job(Box<Config>, RunConfig),
    /// `etcd-elector status`: print the holder and the candidates (`json`: as a document).
    Status(Box<Config>, bool),
    /// `--help` or `--version` was printed: exit 0.
    Printed,
}

/// TLS files for the connection to etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub tls: Option<TlsFiles>,
    /// User name and password for etcd authentication.
    pub auth: Option<(String, Secret)>,
}

/// The election settings, shared by every mode.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub protocol: Protocol,
    pub key: String,
    pub id: String,
    pub timing: Timing,
    pub shutdown_timeout: Duration,
    pub release_delay: Duration,
    /// Direct succession: the lock protocol, not `run --try` (see `election::succession`).
    pub succession: Option<Succession>,
    /// `--app-health`: the application's health decides eligibility (sidecar only).
    pub app_health: Option<AppHealthCheck>,
}

/// What `--app-health` asks and how long a leader's application may stay unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHealthCheck {
    pub url: hyper::Uri,
    pub unhealthy_after: Duration,
}

/// `run` settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub try_once: bool,
    /// `--try-timeout` as given; see [`RunConfig::try_bound`].
    pub try_timeout: Option<Duration>,
    pub held_exit_code: u8,
    pub grace_period: Duration,
    pub lost_exit_code: u8,
    pub command: Vec<String>,
}

impl RunConfig {
    /// How long `--try` waits for a verdict before giving up: `--try-timeout`, by default one
    /// TTL, the time a healthy etcd needs at most to let a lease expire and answer.
    pub fn try_bound(&self, ttl: Duration) -> Duration {
        self.try_timeout.unwrap_or(ttl)
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub etcd: EtcdConfig,
    pub election: ElectionConfig,
    /// HTTP address; `None` only for `run` without `--listen`.
    pub listen: Option<SocketAddr>,
    /// Pod-local admin address (`POST /resign`); `None` when off.
    pub admin_listen: Option<SocketAddr>,
    /// Where to mirror the /leader document, if anywhere.
    pub leader_file: Option<PathBuf>,
    pub log_format: LogFormat,
}

/// The environment variable holding the etcd password when no file is given.
pub const PASSWORD_ENV: &str = "ELECTOR_ETCD_PASSWORD";
/// What `run` removes from its command's environment: the password, and the password file's
/// path (not a secret, but it says where one is; the file's permissions are what keep it
/// from a command running as the same user).
pub const SECRET_ENV: &[&str] = &[PASSWORD_ENV, "ELECTOR_ETCD_PASSWORD_FILE"];

/// Parse the process's arguments and environment.
pub fn from_env() -> Result<Parsed, ConfigError> {
    parse(std::env::args_os())
}

/// Parse `args` (with the program name first) and the process environment.
pub fn parse<I, T>(args: I) -> Result<Parsed, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::error::ErrorKind;
    let matches = match Cli::command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            // Printing to stdout can fail only on a closed pipe, which is not our problem.
            let _ = e.print();
            return Ok(Parsed::Printed);
        }
        Err(e) => return Err(clap_error(&e)),
    };
    let cli = Cli::from_arg_matches(&matches).map_err(|e| clap_error(&e))?;
    let sub = |name: &str| {
        matches
            .subcommand_matches(name)
            .ok_or_else(|| ConfigError::Args(format!("internal: {name} sub-command missing")))
    };
    let (elector, matches, run) = match cli.command {
        None => (cli.elector, &matches, None),
        Some(Command::Run { elector, run }) => (elector, sub("run")?, Some(run)),
        Some(Command::Status { elector, json }) => {
            // Reads only: no listeners (the job defaults), no rules about timing.
            let cfg = resolve(elector.config, sub("status")?, true)?;
            return Ok(Parsed::Status(Box::new(cfg), json));
        }
    };
    let mut cfg = resolve(elector.config, matches, run.is_some())?;
    // One attempt, then gone: a `run --try` does not register, so nobody hands it the lock.
    let try_once = run.as_ref().is_some_and(|run| run.try_once);
    cfg.election.succession.take_if(|_| try_once);
    let run = run.map(|run| RunConfig {
        try_once: run.try_once,
        try_timeout: run.try_timeout.map(|s| s.0),
        held_exit_code: run.held_exit_code,
        grace_period: run.grace_period.0,
        lost_exit_code: run.lost_exit_code,
        command: run.command,
    });
    validate(&cfg, run.as_ref())?;
    Ok(match run {
        None => Parsed::Sidecar(Box::new(cfg)),
        Some(run) => Parsed::Job(Box::new(cfg), run),
    })
}

/// Layers the sources (the file's options, then clap's flags and variables over them), fills
/// the rest with the defaults, and checks what the options' types cannot.
fn resolve(file: Option<PathBuf>, matches: &ArgMatches, job: bool) -> Result<Config, ConfigError> {
    let mut args = match &file {
        Some(path) => load(path)?,
        None => ElectorArgs::default(),
    };
    // Sets exactly the options given by flag or variable: none of ours has a clap default.
    args.update_from_arg_matches(matches)
        .map_err(|e| clap_error(&e))?;
    let invalid = |id: &str, message| ConfigError::Invalid {
        option: origin(matches, file.as_deref(), id),
        message,
    };

    let endpoints = match args.endpoints {
        None => vec![DEFAULT_ENDPOINT.to_string()],
        Some(list) if list.is_empty() => {
            return Err(invalid("endpoints", "at least one etcd URL is required"))
        }
        Some(list) => list.into_iter().map(|e| e.0).collect(),
    };
    let key = args.key.ok_or(ConfigError::MissingKey)?;
    if key.is_empty() {
        return Err(invalid("key", "the lock key must not be empty"));
    }
    let id = match args.id {
        Some(id) => id,
        None => default_identity()?,
    };
    if id.is_empty() {
        return Err(invalid("id", "the identity must not be empty"));
    }
    let shutdown_timeout = args
        .shutdown_timeout
        .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |s| s.0);
    if shutdown_timeout.is_zero() {
        return Err(invalid("shutdown_timeout", "must be more than 0 seconds"));
    }
    let release_delay = args.release_delay.map_or(DEFAULT_RELEASE_DELAY, |s| s.0);
    let timing = Timing::for_ttl(args.ttl.map_or(DEFAULT_TTL, |t| t.0));
    let protocol = args.protocol.unwrap_or_default();
    // Succession is for the lock protocol (the election protocol keeps etcd's queue order);
    // `run` hands over once its command's group is dead, and never waits (see `parse`).
    let wanted = protocol == Protocol::Lock && args.no_succession != Some(true);
    // The wait, the transfer and the revoke must all fit in what the shutdown timeout leaves
    // after the release delay: each request gets its bound, at most a quarter of that; the
    // wait gets what two such requests leave.
    let budget = shutdown_timeout.saturating_sub(release_delay);
    let request = timing.request_timeout.min(budget / 4);
    let succession = wanted.then(|| Succession {
        revision: args.revision.unwrap_or_default(),
        handoff_wait: (!job)
            .then(|| args.handoff_wait.map_or(DEFAULT_HANDOFF_WAIT, |s| s.0))
            .map_or(Duration::ZERO, |wait| {
                wait.min(budget.saturating_sub(request * 2))
            }),
    });
    // The sidecar serves HTTP and the admin API by default; `run` only when asked to.
    let (listen, admin_listen) = match job {
        false => (Some(DEFAULT_LISTEN), Some(DEFAULT_ADMIN_LISTEN)),
        true => (None, None),
    };
    let tls = TlsFiles {
        ca: args.etcd_cacert,
        cert: args.etcd_cert,
        key: args.etcd_key,
    };
    let auth = match args.etcd_user {
        None => None,
        Some(user) => Some((user, read_password(args.etcd_password_file.as_deref())?)),
    };
    Ok(Config {
        etcd: EtcdConfig {
            endpoints,
            tls: (tls != TlsFiles::default()).then_some(tls),
            auth,
        },
        election: ElectionConfig {
            protocol,
            key,
            id,
            timing,
            shutdown_timeout,
            release_delay,
            succession,
            app_health: args.app_health.map(|url| AppHealthCheck {
                url: url.0,
                unhealthy_after: args
                    .app_unhealthy_after
                    .map_or(DEFAULT_APP_UNHEALTHY_AFTER, |s| s.0),
            }),
        },
        listen: args.listen.or(listen),
        admin_listen: args.admin_listen.map_or(admin_listen, |a| a.0),
        leader_file: args.leader_file,
        log_format: args.log_format.unwrap_or_default(),
    })
}

/// The options the YAML file sets; an empty file sets none.
fn load(path: &Path) -> Result<ElectorArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        what: "config file",
        path: path.to_path_buf(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(ElectorArgs::default());
    }
    // serde_yaml_ng names the field and appends "at line L column C", also for the errors our
    // types raise inside a field (`TryFrom`).
    serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.to_string().replace('\n', " "),
    })
}

/// Where option `id` was set, as the user wrote it: the flag, the variable or the file's key.
fn origin(matches: &ArgMatches, file: Option<&Path>, id: &str) -> String {
    match (matches.value_source(id), file) {
        (Some(ValueSource::EnvVariable), _) => format!("ELECTOR_{}", id.to_ascii_uppercase()),
        (None, Some(path)) => format!("`{id}` in {}", path.display()),
        _ => format!("--{}", id.replace('_', "-")),
    }
}

/// clap renders a multi-line error with usage; we print one line and point at `--help`.
/// The indented lines that follow the first (e.g. the missing arguments' names) are kept,
/// joined onto it.
fn clap_error(e: &clap::Error) -> ConfigError {
    let rendered = e.render().to_string();
    let mut lines = rendered.lines().skip_while(|l| l.trim().is_empty());
    let mut message = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim()
        .trim_start_matches("error: ")
        .to_string();
    for detail in lines.take_while(|l| l.starts_with(' ') && !l.trim().is_empty()) {
        message.push(' ');
        message.push_str(detail.trim());
    }
    ConfigError::Args(message)
}

/// The rules that relate several settings:
/// * the release delay is shorter than the shutdown timeout, so the revoke always gets time
///   to run (that the timeout is positive is checked where it is read);
/// * TLS: a client certificate and key come together; `https://` endpoints are required when
///   TLS files are given, and every endpoint uses the same scheme;
/// * `run`: `grace period + keep-alive interval + margin < TTL`, so the command gets its whole
///   grace period before the claim ends even when the keep-alive fails right after a renewal
///   (its group is SIGKILLed by the claim deadline in any case, see `run.rs`);
///   `--try-timeout` only with `--try`, and more than 0.
fn validate(cfg: &Config, run: Option<&RunConfig>) -> Result<(), ConfigError> {
    let election = &cfg.election;
    if election.release_delay >= election.shutdown_timeout {
        return Err(ConfigError::Rule(format!(
            "--release-delay ({:?}) must be less than the shutdown timeout ({:?}) so the lease can still be revoked",
            election.release_delay, election.shutdown_timeout
        )));
    }
    let endpoints = &cfg.etcd.endpoints;
    let https = endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    if https != 0 && https != endpoints.len() {
        return Err(ConfigError::Rule(
            "--endpoints: mix of http:// and https:// URLs".into(),
        ));
    }
    if let Some(tls) = &cfg.etcd.tls {
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(ConfigError::Rule(
                "--etcd-cert and --etcd-key must be given together".into(),
            ));
        }
        if https == 0 {
            return Err(ConfigError::Rule(
                "--endpoints: TLS files were given, so the endpoints must be https:// URLs".into(),
            ));
        }
        for path in [&tls.ca, &tls.cert, &tls.key].into_iter().flatten() {
            std::fs::metadata(path).map_err(|source| ConfigError::Unreadable {
                what: "TLS file",
                path: path.clone(),
                source,
            })?;
        }
    }
    if let Some(run) = run {
        if election.app_health.is_some() {
            return Err(ConfigError::Rule(
                "--app-health is for the sidecar; under `run` the command is the application"
                    .into(),
            ));
        }
        match run.try_timeout {
            Some(_) if !run.try_once => {
                return Err(ConfigError::Rule(
                    "--try-timeout only applies with --try (one attempt); add --try or drop it"
                        .into(),
                ))
            }
            Some(bound) if bound.is_zero() => {
                return Err(ConfigError::Rule(
                    "--try-timeout: must be more than 0 seconds".into(),
                ))
            }
            _ => {}
        }
        let t = election.timing;
        let needed = run.grace_period + t.keepalive_interval + t.margin;
        if needed >= t.ttl {
            return Err(ConfigError::Rule(format!(
                "--grace-period {:?} leaves no room inside the TTL of {:?}: grace period + keep-alive interval ({:?}) + margin ({:?}) must be below the TTL; raise --ttl or lower --grace-period",
                run.grace_period, t.ttl, t.keepalive_interval, t.margin
            )));
        }
    }
    Ok(())
}

/// The password for etcd auth: from the file if given, else `ELECTOR_ETCD_PASSWORD`.
fn read_password(file: Option<&Path>) -> Result<Secret, ConfigError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            what: "--etcd-password-file",
            path: path.to_path_buf(),
            source,
        })?;
        return Ok(Secret(text.trim_end_matches(['\n', '\r']).to_string()));
    }
    std::env::var(PASSWORD_ENV)
        .map(Secret)
        .map_err(|_| ConfigError::MissingPassword)
}

/// `$POD_NAME`, else the hostname.
fn default_identity() -> Result<String, ConfigError> {
    if let Ok(name) = std::env::var("POD_NAME") {
        if !name.is_empty() {
            return Ok(name);
        }
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .ok_or(ConfigError::MissingId)
}

#[cfg(test)]
mod tests;
