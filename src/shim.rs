//! `etcd-elector __shim`: the small process between `run` and its command, there so that the
//! command's whole process group dies when `run` dies, by any means.
//!
//! Why a process of its own: when `run` is SIGKILLed or OOM-killed (and is not PID 1, whose
//! death takes its PID namespace with it), nothing else kills its command, and another replica
//! starts the job one TTL later beside it. `PR_SET_PDEATHSIG` on the command would reach only
//! the command itself, not its children, and is undone by a setuid exec. So `run` starts this
//! shim (itself, re-executed through `/proc/self/exe`), and the shim:
//! * asks the kernel for [`PARENT_DEATH`] when `run` dies, then checks that `run` is still its
//!   parent (it may have died before the request);
//! * starts the command in a new process group, stdio and environment passed through, and
//!   reports its pid to `run` on a pipe (`pid N`), or why it could not start it (`err ERRNO`);
//! * reports the command's exit (`exit CODE`: its code, or 128 + signal) and stays until the
//!   group is empty, so a leftover of the group is covered too;
//! * when `run` is gone, SIGKILLs the group and exits.
//!
//! The parent-death signal fires when the *thread* that forked the shim exits, which may be
//! before `run` dies; the shim therefore never trusts the signal alone and also compares
//! `getppid()` with `run`'s pid every [`PARENT_CHECK`].
//!
//! The shim ignores SIGTERM, SIGINT and SIGHUP (blocked, read and dropped): a terminal's
//! Ctrl-C reaches it with `run`, and only `run` decides when the group stops. The command
//! starts with nothing blocked: the shim clears the mask in the child before exec, since std
//! would hand ours down.
//!
//! It must never start the command once `run` is gone, nor outlive `run` while the group lives.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{getppid, Pid};

/// The hidden sub-command: `etcd-elector __shim RUN_PID REPORT_FD -- COMMAND...`.
pub const SHIM_ARG: &str = "__shim";

/// The signal the kernel sends the shim when `run`'s forking thread ends.
const PARENT_DEATH: Signal = Signal::SIGUSR1;

/// How often the shim checks that `run` is still its parent, whatever the signals say.
const PARENT_CHECK: Duration = Duration::from_millis(250);

/// How often the shim looks whether the group is empty once the command has exited.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// Exit code of the shim when it did not start the command because `run` was already gone.
const PARENT_GONE: u8 = 1;

/// What went wrong in the shim itself (never the command's failure).
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("usage: etcd-elector {SHIM_ARG} RUN_PID REPORT_FD -- COMMAND... ({0})")]
    Usage(&'static str),
    #[error("{what}: {errno}")]
    Sys { what: &'static str, errno: Errno },
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> ShimError {
    move |errno| ShimError::Sys { what, errno }
}

/// Runs the shim if the process was started as one; `None` for every other invocation.
pub fn main_if_shim() -> Option<u8> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != SHIM_ARG {
        return None;
    }
    Some(match shim(args.collect()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("etcd-elector {SHIM_ARG}: {e}");
            1
        }
    })
}

/// Parses `RUN_PID REPORT_FD -- COMMAND...`.
fn parse(args: Vec<OsString>) -> Result<(Pid, RawFd, Vec<OsString>), ShimError> {
    let mut args = args.into_iter();
    let number = |arg: Option<OsString>, what: &'static str| -> Result<i32, ShimError> {
        arg.and_then(|a| a.into_string().ok())
            .and_then(|a| a.parse().ok())
            .ok_or(ShimError::Usage(what))
    };
    let parent = Pid::from_raw(number(args.next(), "RUN_PID")?);
    let fd = number(args.next(), "REPORT_FD")?;
    if args.next().as_deref() != Some(std::ffi::OsStr::new("--")) {
        return Err(ShimError::Usage("--"));
    }
    let command: Vec<OsString> = args.collect();
    if command.is_empty() {
        return Err(ShimError::Usage("COMMAND"));
    }
    Ok((parent, fd, command))
}

fn shim(args: Vec<OsString>) -> Result<u8, ShimError> {
    let (parent, fd, command) = parse(args)?;
    // SAFETY: `run` passed this descriptor, the write end of its report pipe, for us alone.
    let report = unsafe { OwnedFd::from_raw_fd(fd) };
    // The command must not hold the pipe open: `run` reads its end until we exit.
    fcntl(&report, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(sys("fcntl"))?;
    let mut report = File::from(report);

    let mut mask = SigSet::empty();
    for signal in [
        PARENT_DEATH,
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(signal);
    }
    mask.thread_block().map_err(sys("blocking signals"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(sys("signalfd"))?;
    nix::sys::prctl::set_pdeathsig(PARENT_DEATH).map_err(sys("prctl(PR_SET_PDEATHSIG)"))?;
    // `run` may have died before the request above: then we are someone else's child now.
    if getppid() != parent {
        return Ok(PARENT_GONE);
    }

    let (program, args) = command.split_first().ok_or(ShimError::Usage("COMMAND"))?;
    let mut command = Command::new(program);
    // Its own group, so one signal reaches everything it starts.
    command.args(args).process_group(0);
    // std hands the parent's signal mask down (rust-lang/rust#101077, for `nohup`'s sake), and ours
    // blocks SIGTERM, SIGINT, SIGHUP and SIGCHLD for the signalfd. A command started with them
    // blocked never sees the SIGTERM that asks it to stop (only the SIGKILL after its grace
    // period), and a shell's `wait` for a background child never returns.
    // SAFETY: runs between fork and exec and makes only the async-signal-safe
    // pthread_sigmask(3) call.
    unsafe {
        command.pre_exec(|| {
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(0);
            // If `run` is gone nobody reads this; nothing was started either.
            let _ = writeln!(report, "err {errno}");
            // The shell's codes: 127 not found, 126 not executable.
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let group = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // A failed report means `run` is gone; the parent check below handles that.
    let _ = writeln!(report, "pid {group}");

    let mut exited: Option<u8> = None;
    loop {
        if getppid() != parent {
            kill_group(group, &mut child, exited.is_none());
            return Ok(exited.unwrap_or(137));
        }
        if exited.is_none() {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let code = exit_code(status);
                    let _ = writeln!(report, "exit {code}");
                    exited = Some(code);
                }
                Ok(None) => {}
                Err(e) => {
                    // Cannot happen for our own child; do not leave the group unguarded.
                    let _ = writeln!(report, "exit 1");
                    eprintln!("etcd-elector {SHIM_ARG}: waiting for the command: {e}");
                    exited = Some(1);
                }
            }
        }
        if let Some(code) = exited {
            if !group_alive(group) {
                return Ok(code);
            }
        }
        let wait = if exited.is_some() {
            GROUP_POLL
        } else {
            PARENT_CHECK
        };
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(ShimError::Sys {
                    what: "poll",
                    errno: e,
                })
            }
        }
        // Drain: the signals only wake us up; what they mean is read from the state above.
        while let Ok(Some(_)) = signals.read_signal() {}
    }
}

/// SIGKILL the group; reap the command (bounded) so it is not left a zombie for an init that
/// may not reap.
fn kill_group(group: Pid, child: &mut Child, reap: bool) {
    let _ = killpg(group, Signal::SIGKILL);
    if !reap {
        return;
    }
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn group_alive(group: Pid) -> bool {
    !matches!(killpg(group, None), Err(Errno::ESRCH))
}

/// The command's exit code, or 128 + the signal that killed it, as a shell reports it.
fn exit_code(status: ExitStatus) -> u8 {
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    u8::try_from(code.clamp(0, 255)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_name_the_parent_the_pipe_and_the_command() {
        let (parent, fd, command) = parse(args(&["12", "5", "--", "sh", "-c", "x"])).unwrap();
        assert_eq!(parent, Pid::from_raw(12));
        assert_eq!(fd, 5);
        assert_eq!(command, args(&["sh", "-c", "x"]));
        assert!(parse(args(&["12", "5", "--"])).is_err());
        assert!(parse(args(&["12", "5", "sh"])).is_err());
        assert!(parse(args(&["x", "5", "--", "sh"])).is_err());
    }

    #[test]
    fn exit_codes_are_the_shells() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
