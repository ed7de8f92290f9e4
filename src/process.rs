//! The command run under the lock: spawned in its own process group behind the supervising
//! shim ([`crate::shim`]), reaped, and terminated as a group.
//!
//! Process tree: `run` → `etcd-elector __shim` → the command (leader of its own group) → its
//! children. The shim kills the group if `run` dies, and reports the command's pid and exit
//! code on a pipe. We reap with `waitpid(-1)` on every SIGCHLD, so that as PID 1 in a
//! container (or as the child subreaper `run` makes itself) the orphans the command leaves
//! behind are reaped too. That is also why children are spawned with `std::process` and never
//! waited on through it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};
use tokio::time::{sleep, sleep_until, Instant};

use crate::shim::SHIM_ARG;

/// How often we look whether a signalled process group is gone.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// How long the shim may take to report that the command started (an exec, normally
/// milliseconds); past it something is badly wrong with the machine.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The exit code we report when the shim died without reporting the command's exit (someone
/// killed it): the command's own code is unknown, and its group is terminated next.
const SHIM_LOST: i32 = 1;

/// A running command, leader of its own process group.
#[derive(Debug)]
pub struct Job {
    pid: Pid,
    exit: watch::Receiver<Option<i32>>,
}

/// Why the command did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The command itself could not be executed (not found, not executable, ...).
    #[error("{0}")]
    Command(std::io::Error),
    /// The supervising shim could not be started, or failed before starting the command.
    #[error("starting the supervising shim: {0}")]
    Shim(std::io::Error),
}

/// Reaps every child of this process; must exist before the command is spawned so no exit
/// can be missed.
#[derive(Debug)]
pub struct Reaper {
    sigchld: tokio::signal::unix::Signal,
}

impl Reaper {
    /// Listen for SIGCHLD.
    pub fn install() -> std::io::Result<Self> {
        Ok(Reaper {
            sigchld: signal(SignalKind::child())?,
        })
    }

    /// Spawn `argv` behind the shim, in a new process group with stdio passed through, `env`
    /// added and the variables named in `remove_env` removed, and start reaping. Returns once
    /// the command runs. The exit code is the command's, or 128 + signal number.
    pub async fn spawn(
        self,
        argv: &[String],
        env: &[(&str, String)],
        remove_env: &[&str],
    ) -> Result<Job, SpawnError> {
        if argv.is_empty() {
            return Err(SpawnError::Command(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty command",
            )));
        }
        let shim_error = |e: Errno| SpawnError::Shim(std::io::Error::from(e));
        // Close-on-exec, so that only the shim gets the write end (below), and our read end
        // sees EOF once the shim is gone.
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(shim_error)?;
        let report_fd = write.as_raw_fd();
        let mut cmd = Command::new("/proc/self/exe");
        // /proc/self/exe is this very binary even if the file was replaced since we started.
        cmd.arg0("etcd-elector")
            .arg(SHIM_ARG)
            .arg(std::process::id().to_string())
            .arg(report_fd.to_string())
            .arg("--")
            .args(argv)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        for name in remove_env {
            cmd.env_remove(name);
        }
        // SAFETY: runs between fork and exec and makes only the async-signal-safe fcntl(2)
        // call, on a descriptor that stays open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                let fd = BorrowedFd::borrow_raw(report_fd);
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
                    .map(drop)
                    .map_err(std::io::Error::from)
            });
        }
        // Reaping must run before the shim can exit, so start it first.
        reap_forever(self.sigchld);
        let shim = cmd.spawn().map_err(SpawnError::Shim)?;
        // Dropping a std Child neither waits for nor kills it; the reaper reaps it.
        drop(shim);
        drop(write);

        let (started_tx, started) = oneshot::channel();
        let (exit_tx, exit) = watch::channel(None);
        std::thread::Builder::new()
            .name("shim-report".into())
            .spawn(move || read_reports(read, started_tx, exit_tx))
            .map_err(SpawnError::Shim)?;
        let pid = match tokio::time::timeout(START_TIMEOUT, started).await {
            Ok(Ok(Ok(pid))) => pid,
            Ok(Ok(Err(e))) => return Err(SpawnError::Command(e)),
            Ok(Err(_)) => {
                return Err(SpawnError::Shim(std::io::Error::other(
                    "it exited without starting the command",
                )))
            }
            Err(_) => {
                return Err(SpawnError::Shim(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the command did not start within {START_TIMEOUT:?}"),
                )))
            }
        };
        Ok(Job { pid, exit })
    }
}

/// Reap every child that exits, for as long as the process lives; a SIGCHLD may stand for
/// several children.
fn reap_forever(mut sigchld: tokio::signal::unix::Signal) {
    tokio::spawn(async move {
        loop {
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                    Ok(_) | Err(Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "waitpid failed");
                        break;
                    }
                }
            }
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    });
}

/// Read the shim's reports (`pid N`, `err ERRNO`, `exit CODE`) until it is gone.
fn read_reports(
    read: OwnedFd,
    started: oneshot::Sender<std::io::Result<Pid>>,
    exit: watch::Sender<Option<i32>>,
) {
    let mut started = Some(started);
    for line in BufReader::new(File::from(read)).lines() {
        let Ok(line) = line else { break };
        let (what, value) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let Ok(value) = value.trim().parse::<i32>() else {
            tracing::warn!(report = line.as_str(), "unexpected report from the shim");
            continue;
        };
        match what {
            "pid" => {
                if let Some(tx) = started.take() {
                    let _ = tx.send(Ok(Pid::from_raw(value)));
                }
            }
            "err" => {
                if let Some(tx) = started.take() {
                    let _ = tx.send(Err(std::io::Error::from_raw_os_error(value)));
                }
            }
            "exit" => {
                let _ = exit.send(Some(value));
            }
            _ => tracing::warn!(report = line.as_str(), "unexpected report from the shim"),
        }
    }
    // EOF: the shim is gone. Without an exit report it was killed; its command may still run.
    if started.is_none() && exit.borrow().is_none() {
        tracing::warn!("the supervising shim died before the command; terminating the group");
        let _ = exit.send(Some(SHIM_LOST));
    }
}

impl Job {
    /// The command's pid (also its process group id).
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Wait until the command itself exits; its exit code.
    pub async fn wait(&mut self) -> i32 {
        loop {
            if let Some(code) = *self.exit.borrow_and_update() {
                return code;
            }
            if self.exit.changed().await.is_err() {
                // The reaper stopped; report a failure rather than hang.
                return 1;
            }
        }
    }

    /// The exit code if the command has exited.
    pub fn exit_code(&self) -> Option<i32> {
        *self.exit.borrow()
    }

    /// True while any process of the group exists.
    pub fn group_alive(&self) -> bool {
        !matches!(killpg(self.pid, None), Err(Errno::ESRCH))
    }

    /// Send `signal` to the whole group; a group already gone is fine.
    pub fn signal_group(&self, signal: Signal) {
        match killpg(self.pid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pgid = self.pid.as_raw(), error = %e, "cannot signal the command's group")
            }
        }
    }

    /// SIGTERM the group, wait until `kill_at` for it to be gone, then SIGKILL it and wait for
    /// that too. Returns once no process of the group is left (or after a bounded wait).
    /// `kill_at` is a deadline rather than a grace period so the caller can tie it to the
    /// claim deadline, after which etcd may hand the lock to someone else.
    pub async fn terminate_group(
        &mut self,
        kill_at: Instant,
        abort: &tokio_util::sync::CancellationToken,
    ) {
        if !self.group_alive() {
            return;
        }
        self.signal_group(Signal::SIGTERM);
        while self.group_alive() && Instant::now() < kill_at {
            tokio::select! {
                _ = sleep_until(kill_at.min(Instant::now() + GROUP_POLL)) => {}
                _ = abort.cancelled() => break,
            }
        }
        self.kill_group().await;
    }

    /// SIGKILL the group and wait (bounded) until it is gone.
    pub async fn kill_group(&mut self) {
        if !self.group_alive() {
            return;
        }
        tracing::warn!(
            pgid = self.pid.as_raw(),
            "killing the command's process group"
        );
        self.signal_group(Signal::SIGKILL);
        // SIGKILL cannot be ignored; a process in uninterruptible sleep may take a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.group_alive() && Instant::now() < deadline {
            sleep(GROUP_POLL).await;
        }
    }
}
