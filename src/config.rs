//! Configuration: command-line flags, `ELECTOR_*` environment variables and an optional YAML
//! file, merged into one validated [`Config`].
//!
//! Precedence is flag, then environment, then file, then default. Every value is checked when
//! it is read, with the same parser for all three sources, so a bad value is reported with
//! where it came from: the flag, or the file, field and line. YAML parsing lives only here:
//! we use `serde_yaml_ng`, the maintained fork of the archived `serde_yaml` with the same API
//! (`serde_yml` is avoided: RUSTSEC-2025-0068).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::election::machine::Timing;

/// A configuration error: one line, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn new(msg: impl Into<String>) -> Self {
        ConfigError(msg.into())
    }
}

/// What `main` should do after parsing.
#[derive(Debug)]
pub enum Parsed {
    /// Run with this configuration.
    Run(Box<Config>),
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
    Run(RunArgs),
}

/// Options of the election, shared by the sidecar and `run`.
#[derive(Debug, Args, Default)]
pub struct ElectorArgs {
    /// etcd client URLs, comma-separated [default: http://127.0.0.1:2379]
    #[arg(long, env = "ELECTOR_ENDPOINTS", value_delimiter = ',', value_parser = Endpoint::from_str)]
    pub endpoints: Option<Vec<Endpoint>>,
    /// The lock key, e.g. /cron/lock/job9 (required)
    #[arg(long, env = "ELECTOR_KEY")]
    pub key: Option<String>,
    /// This replica's identity, stored as the key's value [default: $POD_NAME, else the hostname]
    #[arg(long, env = "ELECTOR_ID")]
    pub id: Option<String>,
    /// Lease TTL in seconds, 2 to 3600 [default: 10]
    #[arg(long, env = "ELECTOR_TTL", value_name = "SECONDS", value_parser = Ttl::from_str)]
    pub ttl: Option<Ttl>,
    /// HTTP listen address [default: 0.0.0.0:4040; off for `run` unless given]
    #[arg(long, env = "ELECTOR_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Seconds allowed for giving the lock back on exit [default: 5]
    #[arg(long, env = "ELECTOR_SHUTDOWN_TIMEOUT", value_name = "SECONDS", value_parser = Seconds::from_str)]
    pub shutdown_timeout: Option<Seconds>,
    /// Seconds to keep answering 503 before revoking on shutdown, so endpoint removal
    /// propagates first; must be less than the shutdown timeout [default: 0]
    #[arg(long, env = "ELECTOR_RELEASE_DELAY", value_name = "SECONDS", value_parser = Seconds::from_str)]
    pub release_delay: Option<Seconds>,
    /// Log format; RUST_LOG filters (info by default) [default: text]
    #[arg(long, env = "ELECTOR_LOG_FORMAT", value_enum)]
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
    /// Key protocol: `lock` (one lock key holding the leader's id) or `election` (etcd's
    /// concurrency.Election: one key per candidate under KEY/, interoperable with
    /// `etcdctl elect` and `etcdctl lock`) [default: lock]
    #[arg(long, env = "ELECTOR_PROTOCOL", value_enum)]
    pub protocol: Option<Protocol>,
    /// Pod-local admin address serving POST /resign, or `off` [default: 127.0.0.1:4041 for
    /// the sidecar, off for `run`]
    #[arg(long, env = "ELECTOR_ADMIN_LISTEN", value_name = "ADDR|off", value_parser = parse_optional_addr)]
    pub admin_listen: Option<OptionalAddr>,
    /// Write the /leader JSON to this file (atomically) on every change
    #[arg(long, env = "ELECTOR_LEADER_FILE", value_name = "FILE")]
    pub leader_file: Option<PathBuf>,
    /// YAML file with the keys above (snake_case)
    #[arg(long, env = "ELECTOR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub elector: ElectorArgs,
    /// One attempt: if another holder has the key, name it and exit without running COMMAND
    #[arg(long = "try", env = "ELECTOR_TRY")]
    pub try_once: bool,
    /// With --try: seconds to wait for a verdict (etcd unreachable, the campaign failing)
    /// before giving up with exit code 69, without running COMMAND [default: the TTL]
    #[arg(long, env = "ELECTOR_TRY_TIMEOUT", value_name = "SECONDS", value_parser = Seconds::from_str)]
    pub try_timeout: Option<Seconds>,
    /// Exit code for --try when the lock is held elsewhere
    #[arg(long, env = "ELECTOR_HELD_EXIT_CODE", default_value_t = 0, value_parser = clap::value_parser!(u8))]
    pub held_exit_code: u8,
    /// Seconds between SIGTERM and SIGKILL for the command's process group
    #[arg(long, env = "ELECTOR_GRACE_PERIOD", default_value = "5", value_name = "SECONDS", value_parser = Seconds::from_str)]
    pub grace_period: Seconds,
    /// Exit code when the lock was lost while the command ran
    #[arg(long, env = "ELECTOR_LOST_EXIT_CODE", default_value_t = 75, value_parser = clap::value_parser!(u8))]
    pub lost_exit_code: u8,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// How candidates use keys in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// One lock key: `If CreateRevision(key) == 0 Then Put(key, id, lease) Else Get(key)`.
    #[default]
    Lock,
    /// etcd's concurrency.Election / Mutex: `<name>/<lease hex>` per candidate, lowest create
    /// revision leads.
    Election,
}

/// An address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(OptionalAddr(None));
    }
    s.trim()
        .parse::<SocketAddr>()
        .map(|a| OptionalAddr(Some(a)))
        .map_err(|e| format!("'{s}' is not an address (host:port) or `off`: {e}"))
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// An etcd client URL: `http://host:port` or `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint(pub String);

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let uri: hyper::Uri = s.parse().map_err(|e| format!("'{s}' is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(format!("'{s}' must start with http:// or https://")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("'{s}' has no host"))?;
        if authority.host().is_empty() || authority.port_u16().is_none() {
            return Err(format!(
                "'{s}' must name a host and a port, e.g. http://127.0.0.1:2379"
            ));
        }
        if !matches!(uri.path(), "" | "/") {
            return Err(format!("'{s}' must not have a path"));
        }
        Ok(Endpoint(s.trim_end_matches('/').to_string()))
    }
}

impl TryFrom<String> for Endpoint {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// A lease TTL: whole seconds, 2 to 3600 (etcd leases have one-second granularity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(pub Duration);

impl TryFrom<u64> for Ttl {
    type Error = String;
    fn try_from(secs: u64) -> Result<Self, String> {
        if (2..=3600).contains(&secs) {
            Ok(Ttl(Duration::from_secs(secs)))
        } else {
            Err(format!(
                "TTL {secs} is out of range: must be 2 to 3600 seconds"
            ))
        }
    }
}

impl FromStr for Ttl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let secs: u64 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a whole number of seconds"))?;
        Ttl::try_from(secs)
    }
}

/// A non-negative number of seconds, fractions allowed, at most an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl TryFrom<f64> for Seconds {
    type Error = String;
    fn try_from(secs: f64) -> Result<Self, String> {
        if secs.is_finite() && (0.0..=3600.0).contains(&secs) {
            Ok(Seconds(Duration::from_secs_f64(secs)))
        } else {
            Err(format!("{secs} is out of range: must be 0 to 3600 seconds"))
        }
    }
}

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let secs: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a number of seconds"))?;
        Seconds::try_from(secs)
    }
}

/// The YAML file as written: the same keys as the flags, snake_case; unknown keys are refused.
/// Values are checked after parsing (serde_yaml_ng reports type errors with their line; our
/// range and format checks find the line of their key themselves).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    endpoints: Option<Vec<String>>,
    key: Option<String>,
    id: Option<String>,
    ttl: Option<u64>,
    listen: Option<String>,
    shutdown_timeout: Option<f64>,
    release_delay: Option<f64>,
    log_format: Option<LogFormat>,
    etcd_cacert: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    etcd_user: Option<String>,
    etcd_password_file: Option<PathBuf>,
    protocol: Option<Protocol>,
    admin_listen: Option<String>,
    leader_file: Option<PathBuf>,
}

/// The YAML file, checked.
#[derive(Debug, Default)]
struct FileConfig {
    endpoints: Option<Vec<Endpoint>>,
    key: Option<String>,
    id: Option<String>,
    ttl: Option<Ttl>,
    listen: Option<SocketAddr>,
    shutdown_timeout: Option<Seconds>,
    release_delay: Option<Seconds>,
    log_format: Option<LogFormat>,
    etcd_cacert: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    etcd_user: Option<String>,
    etcd_password_file: Option<PathBuf>,
    protocol: Option<Protocol>,
    admin_listen: Option<OptionalAddr>,
    leader_file: Option<PathBuf>,
}

impl FileConfig {
    fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(format!("cannot read config file {}: {e}", path.display()))
        })?;
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        let raw: RawFile = serde_yaml_ng::from_str(&text).map_err(|e| {
            // serde_yaml_ng names the field and appends "at line L column C".
            let msg = e.to_string().replace('\n', " ");
            ConfigError::new(format!("invalid config file {}: {msg}", path.display()))
        })?;
        let bad = |field: &str, msg: String| {
            let line = line_of_key(&text, field)
                .map(|n| format!(" at line {n}"))
                .unwrap_or_default();
            ConfigError::new(format!(
                "invalid config file {}: `{field}`{line}: {msg}",
                path.display()
            ))
        };
        let endpoints = raw
            .endpoints
            .map(|list| {
                list.iter()
                    .map(|e| e.parse::<Endpoint>())
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|e| bad("endpoints", e))?;
        Ok(FileConfig {
            endpoints,
            key: raw.key,
            id: raw.id,
            ttl: raw
                .ttl
                .map(Ttl::try_from)
                .transpose()
                .map_err(|e| bad("ttl", e))?,
            listen: raw
                .listen
                .map(|l| l.parse::<SocketAddr>().map_err(|e| format!("'{l}': {e}")))
                .transpose()
                .map_err(|e| bad("listen", e))?,
            shutdown_timeout: raw
                .shutdown_timeout
                .map(Seconds::try_from)
                .transpose()
                .map_err(|e| bad("shutdown_timeout", e))?,
            release_delay: raw
                .release_delay
                .map(Seconds::try_from)
                .transpose()
                .map_err(|e| bad("release_delay", e))?,
            log_format: raw.log_format,
            etcd_cacert: raw.etcd_cacert,
            etcd_cert: raw.etcd_cert,
            etcd_key: raw.etcd_key,
            etcd_user: raw.etcd_user,
            etcd_password_file: raw.etcd_password_file,
            protocol: raw.protocol,
            admin_listen: raw
                .admin_listen
                .map(|a| parse_optional_addr(&a))
                .transpose()
                .map_err(|e| bad("admin_listen", e))?,
            leader_file: raw.leader_file,
        })
    }
}

/// The 1-based line on which a top-level `key:` appears in a YAML mapping.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

/// A secret string: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
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
    /// Set for `etcd-elector run`.
    pub run: Option<RunConfig>,
}

/// Defaults named once, used in the help text, the README and here.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";
pub const DEFAULT_TTL_SECS: u64 = 10;
pub const DEFAULT_LISTEN: &str = "0.0.0.0:4040";
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 5;
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:4041";

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
    let matches = match Cli::command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                // Printing to stdout can fail only on a closed pipe, which is not our problem.
                let _ = e.print();
                return Ok(Parsed::Printed);
            }
            return Err(ConfigError::new(first_line_of_clap_error(&e)));
        }
    };
    let cli = Cli::from_arg_matches(&matches)
        .map_err(|e| ConfigError::new(first_line_of_clap_error(&e)))?;
    match cli.command {
        None => {
            let cfg = build(cli.elector, &matches, None)?;
            Ok(Parsed::Run(Box::new(cfg)))
        }
        Some(Command::Run(run)) => {
            let sub = matches
                .subcommand_matches("run")
                .ok_or_else(|| ConfigError::new("internal: run sub-command matches missing"))?;
            let run_cfg = RunConfig {
                try_once: run.try_once,
                try_timeout: run.try_timeout.map(|s| s.0),
                held_exit_code: run.held_exit_code,
                grace_period: run.grace_period.0,
                lost_exit_code: run.lost_exit_code,
                command: run.command,
            };
            let cfg = build(run.elector, sub, Some(run_cfg))?;
            Ok(Parsed::Run(Box::new(cfg)))
        }
    }
}

/// clap renders a multi-line error with usage; we print one line and point at `--help`.
/// The indented lines that follow the first (e.g. the missing arguments' names) are kept,
/// joined onto it.
fn first_line_of_clap_error(e: &clap::Error) -> String {
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
    format!("{message} (see --help)")
}

/// Where a flag's value came from, for error messages.
fn origin(matches: &ArgMatches, id: &str, flag: &str, env: &str) -> String {
    match matches.value_source(id) {
        Some(ValueSource::EnvVariable) => env.to_string(),
        _ => flag.to_string(),
    }
}

fn build(
    args: ElectorArgs,
    matches: &ArgMatches,
    run: Option<RunConfig>,
) -> Result<Config, ConfigError> {
    let file_path = args.config.clone();
    let file = match &file_path {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let in_file = |field: &str| match &file_path {
        Some(p) => format!("`{field}` in {}", p.display()),
        None => field.to_string(),
    };

    let endpoints: Vec<String> = args
        .endpoints
        .or(file.endpoints)
        .unwrap_or_else(|| vec![Endpoint(DEFAULT_ENDPOINT.to_string())])
        .into_iter()
        .map(|e| e.0)
        .collect();
    if endpoints.is_empty() {
        return Err(ConfigError::new(
            "--endpoints: at least one etcd URL is required",
        ));
    }

    let key_from_flag = args.key.is_some();
    let key = args.key.or(file.key).ok_or_else(|| {
        ConfigError::new("--key is required (or ELECTOR_KEY, or `key` in the config file)")
    })?;
    if key.is_empty() {
        let name = if key_from_flag {
            origin(matches, "key", "--key", "ELECTOR_KEY")
        } else {
            in_file("key")
        };
        return Err(ConfigError::new(format!(
            "{name}: the lock key must not be empty"
        )));
    }

    let id = match args.id.or(file.id) {
        Some(id) => id,
        None => default_identity()?,
    };
    if id.is_empty() {
        return Err(ConfigError::new("--id: the identity must not be empty"));
    }

    let ttl = args
        .ttl
        .or(file.ttl)
        .map(|t| t.0)
        .unwrap_or(Duration::from_secs(DEFAULT_TTL_SECS));
    let timing = Timing::for_ttl(ttl);

    let shutdown_from_flag = args.shutdown_timeout.is_some();
    let shutdown_timeout = args
        .shutdown_timeout
        .or(file.shutdown_timeout)
        .map(|s| s.0)
        .unwrap_or(Duration::from_secs(DEFAULT_SHUTDOWN_TIMEOUT_SECS));
    let release_delay = args
        .release_delay
        .or(file.release_delay)
        .map(|s| s.0)
        .unwrap_or(Duration::ZERO);

    let listen = match args.listen.or(file.listen) {
        Some(addr) => Some(addr),
        None if run.is_some() => None,
        None => Some(
            DEFAULT_LISTEN
                .parse()
                .map_err(|e| ConfigError::new(format!("internal: default listen address: {e}")))?,
        ),
    };

    let admin_listen = match args.admin_listen.or(file.admin_listen) {
        Some(OptionalAddr(addr)) => addr,
        None if run.is_some() => None,
        None => Some(
            DEFAULT_ADMIN_LISTEN
                .parse()
                .map_err(|e| ConfigError::new(format!("internal: default admin address: {e}")))?,
        ),
    };

    let tls_files = TlsFiles {
        ca: args.etcd_cacert.or(file.etcd_cacert),
        cert: args.etcd_cert.or(file.etcd_cert),
        key: args.etcd_key.or(file.etcd_key),
    };
    let tls = (tls_files != TlsFiles::default()).then_some(tls_files);

    let user = args.etcd_user.or(file.etcd_user);
    let password_file = args.etcd_password_file.or(file.etcd_password_file);
    let auth = match user {
        None => None,
        Some(user) => Some((user, read_password(password_file.as_deref())?)),
    };

    let cfg = Config {
        etcd: EtcdConfig {
            endpoints,
            tls,
            auth,
        },
        election: ElectionConfig {
            protocol: args.protocol.or(file.protocol).unwrap_or_default(),
            key,
            id,
            timing,
            shutdown_timeout,
            release_delay,
        },
        listen,
        admin_listen,
        leader_file: args.leader_file.or(file.leader_file),
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        run,
    };
    let shutdown_name = if shutdown_from_flag {
        origin(
            matches,
            "shutdown_timeout",
            "--shutdown-timeout",
            "ELECTOR_SHUTDOWN_TIMEOUT",
        )
    } else {
        in_file("shutdown_timeout")
    };
    validate(&cfg, &shutdown_name)?;
    Ok(cfg)
}

/// The rules that relate several settings:
/// * the shutdown timeout is positive, and the release delay is shorter than it, so the
///   revoke always gets time to run;
/// * TLS: a client certificate and key come together; `https://` endpoints are required when
///   TLS files are given, and every endpoint uses the same scheme;
/// * `run`: `grace period + keep-alive interval + margin < TTL`, so the command gets its whole
///   grace period before the claim ends even when the keep-alive fails right after a renewal
///   (its group is SIGKILLed by the claim deadline in any case, see `run.rs`);
///   `--try-timeout` only with `--try`, and more than 0.
fn validate(cfg: &Config, shutdown_name: &str) -> Result<(), ConfigError> {
    let election = &cfg.election;
    if election.shutdown_timeout.is_zero() {
        return Err(ConfigError::new(format!(
            "{shutdown_name}: must be more than 0 seconds"
        )));
    }
    if election.release_delay >= election.shutdown_timeout {
        return Err(ConfigError::new(format!(
            "--release-delay ({:?}) must be less than the shutdown timeout ({:?}) so the lease can still be revoked",
            election.release_delay, election.shutdown_timeout
        )));
    }
    let https = cfg
        .etcd
        .endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    if https != 0 && https != cfg.etcd.endpoints.len() {
        return Err(ConfigError::new(
            "--endpoints: mix of http:// and https:// URLs",
        ));
    }
    if let Some(tls) = &cfg.etcd.tls {
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(ConfigError::new(
                "--etcd-cert and --etcd-key must be given together",
            ));
        }
        if https == 0 {
            return Err(ConfigError::new(
                "--endpoints: TLS files were given, so the endpoints must be https:// URLs",
            ));
        }
        for path in [&tls.ca, &tls.cert, &tls.key].into_iter().flatten() {
            std::fs::metadata(path).map_err(|e| {
                ConfigError::new(format!("cannot read TLS file {}: {e}", path.display()))
            })?;
        }
    }
    if let Some(run) = &cfg.run {
        match run.try_timeout {
            Some(_) if !run.try_once => {
                return Err(ConfigError::new(
                    "--try-timeout only applies with --try (one attempt); add --try or drop it",
                ))
            }
            Some(bound) if bound.is_zero() => {
                return Err(ConfigError::new(
                    "--try-timeout: must be more than 0 seconds",
                ))
            }
            _ => {}
        }
        let t = election.timing;
        let needed = run.grace_period + t.keepalive_interval + t.margin;
        if needed >= t.ttl {
            return Err(ConfigError::new(format!(
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
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(format!(
                "cannot read --etcd-password-file {}: {e}",
                path.display()
            ))
        })?;
        return Ok(Secret(text.trim_end_matches(['\n', '\r']).to_string()));
    }
    match std::env::var(PASSWORD_ENV) {
        Ok(p) => Ok(Secret(p)),
        Err(_) => Err(ConfigError::new(
            "--etcd-user needs a password: --etcd-password-file or ELECTOR_ETCD_PASSWORD",
        )),
    }
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
        .ok_or_else(|| ConfigError::new("--id is required: no POD_NAME and no hostname"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: &[&str]) -> Config {
        match parse(std::iter::once("etcd-elector").chain(args.iter().copied())) {
            Ok(Parsed::Run(cfg)) => *cfg,
            other => panic!("expected a config, got {other:?}"),
        }
    }

    fn parse_err(args: &[&str]) -> String {
        match parse(std::iter::once("etcd-elector").chain(args.iter().copied())) {
            Err(e) => e.0,
            Ok(other) => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply() {
        let cfg = parse_ok(&["--key", "/k", "--id", "a"]);
        assert_eq!(cfg.etcd.endpoints, vec![DEFAULT_ENDPOINT]);
        assert_eq!(cfg.election.timing.ttl, Duration::from_secs(10));
        assert_eq!(cfg.listen, Some("0.0.0.0:4040".parse().unwrap()));
        assert_eq!(cfg.election.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(cfg.log_format, LogFormat::Text);
        assert!(cfg.run.is_none());
    }

    #[test]
    fn endpoints_are_comma_separated_and_checked() {
        let cfg = parse_ok(&[
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "key: /from-file\nttl: 4\nendpoints: [\"http://x:1\"]\nid: f\n",
        )
        .unwrap();
        let cfg = parse_ok(&["--config", path.to_str().unwrap(), "--ttl", "6"]);
        assert_eq!(cfg.election.key, "/from-file");
        assert_eq!(cfg.election.timing.ttl, Duration::from_secs(6));
        assert_eq!(cfg.etcd.endpoints, vec!["http://x:1"]);
    }

    #[test]
    fn yaml_errors_name_file_field_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "key: /k\nttll: 4\n").unwrap();
        let err = parse_err(&["--config", path.to_str().unwrap()]);
        assert!(
            err.contains("ttll") && err.contains("line 2") && err.contains("c.yaml"),
            "{err}"
        );
        std::fs::write(&path, "key: /k\nttl: 1\n").unwrap();
        let err = parse_err(&["--config", path.to_str().unwrap()]);
        assert!(err.contains("ttl") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn release_delay_must_leave_time_to_revoke() {
        let err = parse_err(&["--key", "/k", "--release-delay", "5"]);
        assert!(err.contains("--release-delay"), "{err}");
    }

    #[test]
    fn run_grace_period_must_fit_inside_the_ttl() {
        let err = parse_err(&[
            "run",
            "--key",
            "/k",
            "--ttl",
            "5",
            "--grace-period",
            "3",
            "--",
            "true",
        ]);
        assert!(err.contains("--grace-period"), "{err}");
        let cfg = parse_ok(&[
            "run",
            "--key",
            "/k",
            "--ttl",
            "10",
            "--grace-period",
            "3",
            "--",
            "true",
        ]);
        assert_eq!(cfg.run.unwrap().command, vec!["true"]);
        assert_eq!(cfg.listen, None);
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
        let cfg = parse_ok(&with(&["--try"]));
        let run = cfg.run.unwrap();
        assert_eq!(
            run.try_bound(cfg.election.timing.ttl),
            Duration::from_secs(12)
        );
        let cfg = parse_ok(&with(&["--try", "--try-timeout", "2.5"]));
        let run = cfg.run.unwrap();
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

    #[test]
    fn secrets_are_not_debug_printed() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(***)");
    }
}
