//! One child process of a test or of the bench, and its whole life cycle:
//! spawn, a cached `try_wait`, a bounded `wait_exit` that fails with the log
//! tails, signals, kill, and a `Drop` that kills it and prints those tails
//! when the test is panicking. Every fixture (etcd, the elector, `run`,
//! etcdctl, the Go locker, the bench's replicas) is built on it.
//!
//! Only the pid of a child this type spawned is ever signalled, and never
//! after it was reaped (the pid may belong to someone else by then).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::tail;

/// How many lines of each log a failure message shows.
const TAIL_LINES: usize = 30;

extern "C" {
    // libc's; std and nix do not wrap them.
    fn getpriority(which: i32, who: u32) -> i32;
    fn setpriority(which: i32, who: u32, prio: i32) -> i32;
}

/// Sets the nice value of the calling thread (on Linux nice is per thread,
/// and inherited by the threads and processes it creates). False when not
/// permitted (going below 0 needs CAP_SYS_NICE).
pub fn set_thread_nice(nice: i32) -> bool {
    // PRIO_PROCESS with who = 0: the calling thread.
    // SAFETY: a plain system call with no pointers.
    unsafe { setpriority(0, 0, nice) == 0 }
}

/// A child process, SIGKILLed on drop. See the module docs.
pub struct Child {
    child: std::process::Child,
    name: String,
    /// Files the child writes (its stdout, stderr, or both in one), shown on failure.
    logs: Vec<PathBuf>,
    exit: Option<ExitStatus>,
}

impl Child {
    /// Spawns `cmd` with SIGKILL as its parent-death signal. That signal fires
    /// when the *thread* that spawned the child ends, so spawn from the test's
    /// own thread (or the bench's main thread), not from a short-lived helper.
    /// A child of a thread that raised its priority (the bench's observers)
    /// runs at the default one again.
    pub fn spawn(cmd: &mut Command, name: &str, logs: &[PathBuf]) -> Child {
        // SAFETY: the closure runs between fork and exec and only makes the
        // async-signal-safe getpriority(2), setpriority(2) and prctl(2) calls.
        unsafe {
            cmd.pre_exec(|| {
                if getpriority(0, 0) < 0 {
                    set_thread_nice(0);
                }
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({:?}): {e}", cmd.get_program()));
        Child {
            child,
            name: name.to_string(),
            logs: logs.to_vec(),
            exit: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The exit status if it has exited (reaping it), else `None`.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `timeout` for the exit; `None` if it is still running.
    /// Polls every millisecond: the bench times exits with it.
    pub fn wait_exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while self.try_wait().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.exit
    }

    /// Waits for the exit; panics (after SIGKILL) with the log tails if it
    /// has not within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.wait_exit_within(timeout) {
            return status;
        }
        self.kill();
        panic!(
            "{} still running {timeout:?} after it was expected to exit\n{}",
            self.name,
            self.describe()
        );
    }

    /// Polls `ready` until it is true. If the child exits first, or `timeout`
    /// passes (then it is killed), returns why, with the log tails.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !ready() {
            if let Some(status) = self.try_wait() {
                let name = &self.name;
                return Err(format!(
                    "{name} exited before it was ready ({status})\n{}",
                    self.describe()
                ));
            }
            if Instant::now() > deadline {
                self.kill();
                let name = &self.name;
                return Err(format!(
                    "{name} not ready after {timeout:?}\n{}",
                    self.describe()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(())
    }

    /// Sends `sig`, unless the child was already reaped.
    pub fn signal(&self, sig: Signal) {
        if self.exit.is_none() {
            kill(self.pid(), sig).unwrap_or_else(|e| panic!("kill({sig}) {}: {e}", self.name));
        }
    }

    /// SIGSTOP, and the instant by which every thread was seen stopped. A
    /// request sent after it can only be read after the thaw; one answered
    /// just before it may still reach its client after the thaw.
    pub fn freeze(&self) -> Instant {
        self.signal(Signal::SIGSTOP);
        let stopped = || {
            let tasks = procfs::process::Process::new(self.pid().as_raw())
                .and_then(|p| p.tasks())
                .expect("the process's threads");
            tasks
                .flatten()
                .all(|t| t.stat().is_ok_and(|s| matches!(s.state, 'T' | 't')))
        };
        assert!(
            crate::wait_until(Duration::from_secs(5), stopped),
            "{} stops on SIGSTOP",
            self.name
        );
        Instant::now()
    }

    /// SIGKILL (a crash) and reap.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// The whole of log `i` (in the order given to [`Child::spawn`]) so far.
    pub fn log(&self, i: usize) -> String {
        self.logs
            .get(i)
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The tail of every log, labelled, for a failure message.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, path) in self.logs.iter().enumerate() {
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            out += &format!(
                "--- {} {file} (tail) ---\n{}\n",
                self.name,
                tail(&self.log(i), TAIL_LINES)
            );
        }
        out
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() && !self.logs.is_empty() {
            eprint!("{}", self.describe());
        }
    }
}
