//! The one error type of configuration: each variant is the single line `main` prints before
//! exiting with code 2.

use std::path::PathBuf;

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
