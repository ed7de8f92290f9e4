//! The command run under the lock: spawned in its own process group, reaped, and terminated
//! as a group.
//!
//! We reap with `waitpid(-1)` on every SIGCHLD instead of waiting on our child alone, so that
//! as PID 1 in a container the orphans our command leaves behind are reaped too. That is also
//! why the child is spawned with `std::process` and never waited on through it.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};

/// How often we look whether a signalled process group is gone.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// A running command, leader of its own process group.
#[derive(Debug)]
pub struct Job {
    pid: Pid,
    exit: watch::Receiver<Option<i32>>,
}

/// Reaps every child of this process; must exist before the command is spawned so its exit
/// cannot be missed.
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

    /// Spawn `argv` in a new process group with stdio passed through and `env` added, and
    /// start reaping. The exit code is the command's, or 128 + signal number.
    pub fn spawn(self, argv: &[String], env: &[(&str, String)]) -> std::io::Result<Job> {
        let (program, args) = argv.split_first().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command")
        })?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            // Its own group, so one signal reaches everything it starts.
            .process_group(0)
            .spawn()?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        // Dropping a std Child neither waits for nor kills it; the reaper owns its status.
        drop(child);
        let (tx, exit) = watch::channel(None);
        let mut sigchld = self.sigchld;
        tokio::spawn(async move {
            loop {
                // Reap whatever has exited; a SIGCHLD may stand for several children.
                loop {
                    match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(p, code)) if p == pid => {
                            let _ = tx.send(Some(code));
                        }
                        Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => {
                            let _ = tx.send(Some(128 + sig as i32));
                        }
                        Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                        Ok(_) => continue,
                        Err(Errno::EINTR) => continue,
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
        Ok(Job { pid, exit })
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
