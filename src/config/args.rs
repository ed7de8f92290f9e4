//! The options, each declared once: one field that clap (flag and `ELECTOR_*` variable) and
//! serde (the YAML file's snake_case key) both read through the same checked types. What they
//! resolve to, and how, is in the parent module.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use super::*;

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
