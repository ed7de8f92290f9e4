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

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::election::machine::Timing;
use crate::election::succession::Succession;

mod values;
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

/// A configuration error: `main` prints it as one line and exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// clap refused a flag or variable: its first line, pointing at `--help`.
    #[error("{0} (see --help)")]
    Args(String),
    /// The YAML file is invalid; serde_yaml_ng's message names the field and the line.
    #[error("invalid config file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A file that an option names cannot be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A value its type accepts but the option does not; `option` names where it was set.
    #[error("{option}: {message}")]
    Invalid {
        option: String,
        message: &'static str,
    },
    #[error("--key is required (or ELECTOR_KEY, or `key` in the config file)")]
    MissingKey,
    #[error("--id is required: no POD_NAME and no hostname")]
    MissingId,
    #[error("--etcd-user needs a password: --etcd-password-file or ELECTOR_ETCD_PASSWORD")]
    MissingPassword,
    /// A rule relating several options is broken (see `validate`).
    #[error("{0}")]
    Rule(String),
}

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

/// etcd-elector: leader election for Kubernetes pods on an etcd lease.
#[derive(Debug, Parser)]
#[command(
    name = "etcd-elector",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub elector: ElectorArgs,
}

/// Sub-commands; without one, the sidecar runs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run COMMAND only while holding the lock (the cron-job case).
    Run {
        #[command(flatten)]
        elector: ElectorArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Show who holds the key and who is waiting, for operators (reads etcd, changes nothing)
    Status {
        #[command(flatten)]
        elector: ElectorArgs,
        /// Print a JSON document instead of text
        #[arg(long)]
        json: bool,
    },
}

/// The options of the election, shared by the sidecar and `run`. Each field is one option:
/// `--kebab-case` flag, `ELECTOR_UPPER_CASE` variable (which `origin` relies on) and
/// snake_case YAML key. `None` means "not set by this source".
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectorArgs {
    #[arg(long, env = "ELECTOR_ENDPOINTS", value_delimiter = ',',
          help = with_default("etcd client URLs, comma-separated", DEFAULT_ENDPOINT))]
    pub endpoints: Option<Vec<Endpoint>>,
    /// The lock key, e.g. /cron/lock/job9 (required)
    #[arg(long, env = "ELECTOR_KEY")]
    pub key: Option<String>,
    /// This replica's identity, stored as the key's value [default: $POD_NAME, else the hostname]
    #[arg(long, env = "ELECTOR_ID")]
    pub id: Option<String>,
    #[arg(long, env = "ELECTOR_TTL", value_name = "SECONDS",
          help = with_default("Lease TTL in seconds, 2 to 3600", DEFAULT_TTL.as_secs()))]
    pub ttl: Option<Ttl>,
    #[arg(long, env = "ELECTOR_LISTEN", value_name = "ADDR",
          help = with_default("HTTP listen address; off for `run` unless given", DEFAULT_LISTEN))]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "ELECTOR_SHUTDOWN_TIMEOUT", value_name = "SECONDS",
          help = with_default("Seconds allowed for giving the lock back on exit",
                              DEFAULT_SHUTDOWN_TIMEOUT.as_secs_f64()))]
    pub shutdown_timeout: Option<Seconds>,
    #[arg(long, env = "ELECTOR_RELEASE_DELAY", value_name = "SECONDS",
          help = with_default("Seconds to keep answering 503 before revoking on shutdown, so \
                               endpoint removal propagates first; must be less than the \
                               shutdown timeout", DEFAULT_RELEASE_DELAY.as_secs_f64()))]
    pub release_delay: Option<Seconds>,
    /// This replica's release, e.g. the pod's pod-template-hash: a leader stepping down hands
    /// the key to a replica of another release first (lock protocol)
    #[arg(long, env = "ELECTOR_REVISION")]
    pub revision: Option<String>,
    #[arg(long, env = "ELECTOR_HANDOFF_WAIT", value_name = "SECONDS",
          help = with_default("Seconds a leader stepping down may wait for a replica of another \
                               release to register, to hand it the key (lock protocol; bounded \
                               by the shutdown timeout)", DEFAULT_HANDOFF_WAIT.as_secs_f64()))]
    pub handoff_wait: Option<Seconds>,
    /// Give the key up by revoking, as before direct succession: no registration, no
    /// transfer (for a fleet that mixes in older versions, or to compare)
    #[arg(long, env = "ELECTOR_NO_SUCCESSION", num_args = 0..=1, default_missing_value = "true")]
    pub no_succession: Option<bool>,
    /// The application's health URL (http://, typically its readiness endpoint on localhost):
    /// while it does not answer 2xx, this replica does not campaign and is nobody's successor
    #[arg(long, env = "ELECTOR_APP_HEALTH", value_name = "URL")]
    pub app_health: Option<HealthUrl>,
    #[arg(long, env = "ELECTOR_APP_UNHEALTHY_AFTER", value_name = "SECONDS",
          help = with_default("Seconds a leader's application may stay unhealthy before \
                               leadership moves to a replica whose application is healthy",
                              DEFAULT_APP_UNHEALTHY_AFTER.as_secs_f64()))]
    pub app_unhealthy_after: Option<Seconds>,
    #[arg(long, env = "ELECTOR_LOG_FORMAT", value_enum,
          help = with_default("Log format; RUST_LOG filters (info by default)",
                              name_of(LogFormat::default())))]
    pub log_format: Option<LogFormat>,
    /// CA certificate (PEM) to verify etcd's server certificate
    #[arg(long, env = "ELECTOR_ETCD_CACERT", value_name = "FILE")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS
    #[arg(long, env = "ELECTOR_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS
    #[arg(long, env = "ELECTOR_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user name for authentication
    #[arg(long, env = "ELECTOR_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// File holding the etcd password (or set ELECTOR_ETCD_PASSWORD)
    #[arg(long, env = "ELECTOR_ETCD_PASSWORD_FILE", value_name = "FILE")]
    pub etcd_password_file: Option<PathBuf>,
    #[arg(long, env = "ELECTOR_PROTOCOL", value_enum,
          help = with_default("Key protocol: `lock` (one lock key holding the leader's id) or \
                               `election` (etcd's concurrency.Election: one key per candidate \
                               under KEY/, interoperable with `etcdctl elect` and `etcdctl lock`)",
                              name_of(Protocol::default())))]
    pub protocol: Option<Protocol>,
    #[arg(long, env = "ELECTOR_ADMIN_LISTEN", value_name = "ADDR|off",
          help = with_default("Pod-local admin address serving POST /resign, or `off`; off for \
                               `run` unless given", DEFAULT_ADMIN_LISTEN))]
    pub admin_listen: Option<OptionalAddr>,
    /// Write the /leader JSON to this file (atomically) on every change
    #[arg(long, env = "ELECTOR_LEADER_FILE", value_name = "FILE")]
    pub leader_file: Option<PathBuf>,
    /// YAML file with the keys above (snake_case)
    #[arg(long, env = "ELECTOR_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// Options of `run` only (the YAML file does not set these).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// One attempt: if another holder has the key, name it and exit without running COMMAND
    #[arg(long = "try", env = "ELECTOR_TRY")]
    pub try_once: bool,
    /// With --try: seconds to wait for a verdict (etcd unreachable, the campaign failing)
    /// before giving up with exit code 69, without running COMMAND [default: the TTL]
    #[arg(long, env = "ELECTOR_TRY_TIMEOUT", value_name = "SECONDS", value_parser = Seconds::from_str)]
    pub try_timeout: Option<Seconds>,
    /// Exit code for --try when the lock is held elsewhere
    #[arg(long, env = "ELECTOR_HELD_EXIT_CODE", default_value_t = 0)]
    pub held_exit_code: u8,
    /// Seconds between SIGTERM and SIGKILL for the command's process group
    #[arg(
        long,
        env = "ELECTOR_GRACE_PERIOD",
        default_value = "5",
        value_name = "SECONDS"
    )]
    pub grace_period: Seconds,
    /// Exit code when the lock was lost while the command ran
    #[arg(long, env = "ELECTOR_LOST_EXIT_CODE", default_value_t = 75)]
    pub lost_exit_code: u8,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `help [default: value]`, so that a default is written only in its constant.
fn with_default(help: &str, default: impl fmt::Display) -> String {
    format!("{help} [default: {default}]")
}

/// An enum value as the flag and the file spell it.
fn name_of(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
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
    /// Direct succession: lock-protocol sidecars only (see `election::succession`).
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
    let cfg = resolve(elector.config, matches, run.is_some())?;
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
    // Succession is for lock-protocol sidecars: the election protocol keeps etcd's queue
    // order, and `run` gives its lock back only once its command is dead.
    let wanted = protocol == Protocol::Lock && !job && args.no_succession != Some(true);
    // The wait, the transfer and the revoke must all fit in what the shutdown timeout leaves
    // after the release delay: each request gets its bound, at most a quarter of that; the
    // wait gets what two such requests leave.
    let budget = shutdown_timeout.saturating_sub(release_delay);
    let request = timing.request_timeout.min(budget / 4);
    let succession = wanted.then(|| Succession {
        revision: args.revision.unwrap_or_default(),
        handoff_wait: args
            .handoff_wait
            .map_or(DEFAULT_HANDOFF_WAIT, |s| s.0)
            .min(budget.saturating_sub(request * 2)),
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
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Parsed, ConfigError> {
        parse(std::iter::once("etcd-elector").chain(args.iter().copied()))
    }

    fn sidecar(args: &[&str]) -> Config {
        match parsed(args) {
            Ok(Parsed::Sidecar(cfg)) => *cfg,
            other => panic!("expected a sidecar config, got {other:?}"),
        }
    }

    fn parse_err(args: &[&str]) -> String {
        match parsed(args) {
            Err(e) => e.to_string(),
            Ok(other) => panic!("expected an error, got {other:?}"),
        }
    }

    fn yaml(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, text).unwrap();
        (dir, path.to_str().unwrap().to_string())
    }

    #[test]
    fn defaults_apply() {
        let cfg = sidecar(&["--key", "/k", "--id", "a"]);
        assert_eq!(cfg.etcd.endpoints, vec![DEFAULT_ENDPOINT]);
        assert_eq!(cfg.election.timing.ttl, Duration::from_secs(10));
        assert_eq!(cfg.listen, Some("0.0.0.0:4040".parse().unwrap()));
        assert_eq!(cfg.admin_listen, Some("127.0.0.1:4041".parse().unwrap()));
        assert_eq!(cfg.election.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(cfg.election.release_delay, Duration::ZERO);
        assert_eq!(cfg.log_format, LogFormat::Text);
        assert_eq!(cfg.election.protocol, Protocol::Lock);
    }

    #[test]
    fn endpoints_are_comma_separated_and_checked() {
        let cfg = sidecar(&[
            "--key",
            "/k",
            "--id",
            "a",
            "--endpoints",
            "http://a:1,http://b:2",
        ]);
        assert_eq!(cfg.etcd.endpoints, vec!["http://a:1", "http://b:2"]);
        let err = parse_err(&["--key", "/k", "--endpoints", "localhost"]);
        assert!(err.contains("--endpoints"), "{err}");
    }

    #[test]
    fn ttl_out_of_range_is_refused() {
        assert!(parse_err(&["--key", "/k", "--ttl", "1"]).contains("--ttl"));
        assert!(parse_err(&["--key", "/k", "--ttl", "3601"]).contains("2 to 3600"));
    }

    #[test]
    fn missing_key_is_refused() {
        assert!(parse_err(&["--id", "a"]).contains("--key is required"));
    }

    #[test]
    fn yaml_file_fills_what_flags_leave() {
        let (_dir, path) = yaml("key: /from-file\nttl: 4\nendpoints: [\"http://x:1\"]\nid: f\n");
        let cfg = sidecar(&["--config", &path, "--ttl", "6"]);
        assert_eq!(cfg.election.key, "/from-file");
        assert_eq!(cfg.election.timing.ttl, Duration::from_secs(6));
        assert_eq!(cfg.etcd.endpoints, vec!["http://x:1"]);
    }

    #[test]
    fn yaml_errors_name_file_field_and_line() {
        let (_dir, path) = yaml("key: /k\nttll: 4\n");
        let err = parse_err(&["--config", &path]);
        assert!(
            err.contains("ttll") && err.contains("line 2") && err.contains("c.yaml"),
            "{err}"
        );
        // Our own range check, raised inside the field's deserializer, gets the same.
        let (_dir, path) = yaml("key: /k\nttl: 1\n");
        let err = parse_err(&["--config", &path]);
        assert!(err.contains("ttl") && err.contains("line 2"), "{err}");
        assert!(err.contains("c.yaml") && err.contains("2 to 3600"), "{err}");
    }

    #[test]
    fn empty_values_name_where_they_were_set() {
        let err = parse_err(&["--key", "", "--id", "a"]);
        assert!(err.starts_with("--key: "), "{err}");
        let (_dir, path) = yaml("key: ''\nid: a\n");
        let err = parse_err(&["--config", &path]);
        assert!(
            err.starts_with("`key` in ") && err.contains("c.yaml"),
            "{err}"
        );
    }

    #[test]
    fn every_option_follows_the_naming_that_origin_relies_on() {
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()));
            let env = format!("ELECTOR_{}", id.to_ascii_uppercase());
            assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(&env)), "{id}");
        }
    }

    #[test]
    fn release_delay_must_leave_time_to_revoke() {
        let err = parse_err(&["--key", "/k", "--release-delay", "5"]);
        assert!(err.contains("--release-delay"), "{err}");
    }

    #[test]
    fn run_grace_period_must_fit_inside_the_ttl() {
        let args = |ttl| {
            [
                "run",
                "--key",
                "/k",
                "--ttl",
                ttl,
                "--grace-period",
                "3",
                "--",
                "true",
            ]
        };
        let err = parse_err(&args("5"));
        assert!(err.contains("--grace-period"), "{err}");
        match parsed(&args("10")) {
            Ok(Parsed::Job(cfg, run)) => {
                assert_eq!(run.command, vec!["true"]);
                assert_eq!(cfg.listen, None);
            }
            other => panic!("expected a job config, got {other:?}"),
        }
    }

    #[test]
    fn run_try_timeout_defaults_to_the_ttl_and_needs_try() {
        let base = ["run", "--key", "/k", "--ttl", "12"];
        let with = |extra: &[&'static str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            args.extend(["--", "true"]);
            args
        };
        let job = |args: &[&str]| match parsed(args) {
            Ok(Parsed::Job(cfg, run)) => (*cfg, run),
            other => panic!("expected a job config, got {other:?}"),
        };
        let (cfg, run) = job(&with(&["--try"]));
        assert_eq!(
            run.try_bound(cfg.election.timing.ttl),
            Duration::from_secs(12)
        );
        let (cfg, run) = job(&with(&["--try", "--try-timeout", "2.5"]));
        assert_eq!(
            run.try_bound(cfg.election.timing.ttl),
            Duration::from_millis(2500)
        );
        let err = parse_err(&with(&["--try-timeout", "2"]));
        assert!(
            err.contains("--try-timeout") && err.contains("--try "),
            "{err}"
        );
        let err = parse_err(&with(&["--try", "--try-timeout", "0"]));
        assert!(err.contains("--try-timeout"), "{err}");
    }

    #[test]
    fn a_missing_command_is_named() {
        let err = parse_err(&["run", "--key", "/k", "--"]);
        assert!(err.contains("<COMMAND>"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}
