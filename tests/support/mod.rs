//! Fixtures for the end-to-end tests: real etcd processes, the real
//! `etcd-elector` binary, a fault-injecting TCP proxy, and the Go lock client.
//!
//! Every test builds its own world from these parts (its own etcd on free
//! ports, its own key derived from the test name plus randomness), so tests run
//! in parallel and a leftover key or log names the test that made it.
//!
//! Every child process is killed when its fixture is dropped (also when the
//! test panics), and is given SIGKILL as its parent-death signal, so an
//! aborted run leaves nothing behind. That signal fires when the *thread* that
//! spawned the child ends, so spawn fixtures from the test's own thread, not
//! from a short-lived helper thread.
//!
//! Waits are polls with generous bounds (seconds): they exist to turn a hang
//! into a failure, never to measure speed.

// Each test file uses a different part of these fixtures.
#![allow(dead_code, unused_imports)]

pub mod app;
pub mod etcd;
pub mod golocker;
pub mod http;
pub mod job;
pub mod proxy;
pub mod rollout;
pub mod sidecar;
pub mod tls;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub use etcd::{Etcd, EtcdCluster, KeyValue};
pub use golocker::{go_locker, GoLocker};
pub use http::Response;
pub use proxy::TcpProxy;
pub use sidecar::{replicas, run_to_exit, wait_for_one_leader, Sidecar, SidecarBuilder};

pub use nix::sys::signal::Signal;

/// The usual bound for "this should happen soon": far above the expected
/// milliseconds, well below a test timeout.
pub const SOON: Duration = Duration::from_secs(10);

/// Polls `cond` every 20 ms until it is true (returns true) or `timeout`
/// passes (returns false). Use with `assert!` and a message saying what was
/// expected.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 64 random bits from the standard library's per-process random keys.
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// Eight hex digits of randomness.
pub fn random_suffix() -> String {
    format!("{:08x}", random_u64() as u32)
}

/// `/elector-test/<name>-<random>`: one lock key per test, traceable to it.
pub fn unique_key(test_name: &str) -> String {
    format!("/elector-test/{test_name}-{}", random_suffix())
}

/// A loopback port that was free a moment ago. Another process may take it
/// before we bind it; the fixtures that care retry.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// A temporary directory for one fixture, on /dev/shm when there is one (etcd
/// fsyncs its WAL on every write; tmpfs makes that free).
pub fn test_tempdir(what: &str) -> tempfile::TempDir {
    let prefix = format!("etcd-elector-test-{what}-");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return dir;
        }
    }
    builder.tempdir().expect("creating a temporary directory")
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Makes the child die with SIGKILL when the spawning thread ends, so a test
/// run killed from outside does not leave etcd or sidecars behind.
pub fn kill_on_parent_death(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only makes the
    // async-signal-safe prctl(2) system call.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}
