//! The one kit of the end-to-end tests and the benchmark: real etcd
//! processes, the real `etcd-elector` binary, a fault-injecting TCP proxy, the
//! Go lock client, and the one child-process type they all run on
//! ([`process::Child`]). A dev-only crate (never published, never in the
//! image); the tests and the bench `use elector_testkit::*`.
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

pub mod app;
pub mod etcd;
pub mod etcd3gw;
pub mod golocker;
pub mod http;
pub mod job;
pub mod locker;
pub mod observe;
pub mod process;
pub mod proxy;
pub mod rollout;
pub mod sidecar;
pub mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub use etcd::{Etcd, EtcdCluster, EtcdCounts, KeyValue};
pub use etcd3gw::{etcd3gw_python, gw_lock_key, GwLocker, GW_LOCK_PREFIX};
pub use golocker::{go_locker, GoLocker};
pub use http::Response;
pub use locker::{resigns_under_contention, Contention, Locker};
pub use process::Child;
pub use proxy::TcpProxy;
pub use sidecar::{
    fresh_replicas, refused, replicas, resign, run_to_exit, wait_for_one_leader,
    wait_for_successors, wait_registered, ElectorArgs, Sidecar, SidecarBuilder,
};

pub use fastrand;
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

/// Polls `f` like [`wait_until`] until it returns a value, and returns it (`None` if
/// `timeout` passed first).
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let mut found = None;
    wait_until(timeout, || {
        found = f();
        found.is_some()
    });
    found
}

/// Runs `check` every `every` for `period`: for what must hold all along,
/// not just at the end.
pub fn throughout(period: Duration, every: Duration, mut check: impl FnMut()) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        check();
        std::thread::sleep(every);
    }
}

/// Eight hex digits of randomness.
pub fn random_suffix() -> String {
    format!("{:08x}", fastrand::u32(..))
}

/// `/elector-test/<name>-<random>`: one lock key per test, traceable to it.
pub fn unique_key(test_name: &str) -> String {
    format!("/elector-test/{test_name}-{}", random_suffix())
}

/// A fresh etcd and a [`unique_key`] for `test`: how most tests begin.
pub fn etcd_and_key(test: &str) -> (Etcd, String) {
    (Etcd::start(), unique_key(test))
}

/// The `etcd-elector` binary cargo built beside this test or bench
/// executable (`target/<profile>/deps/<test>-<hash>` runs, the binary is
/// `target/<profile>/etcd-elector`): integration tests and benches of the
/// package always have it built first.
pub fn elector_bin() -> PathBuf {
    profile_dir().join("etcd-elector")
}

/// `target/<profile>` of the running test or bench.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test");
    let dir = exe.parent().expect("the test's directory");
    if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Next port to try. Ports are handed out below the kernel's ephemeral range
/// (32768 and up), so outgoing connections of this or a parallel run never
/// take one between our probe and the child's bind; each process starts at
/// its own offset, so parallel test binaries rarely try the same ones.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A loopback port that is free now.
pub fn free_port() -> u16 {
    if NEXT_PORT.load(Ordering::Relaxed) == 0 {
        let base = 20_000 + (std::process::id() % 50) as u16 * 200;
        let _ = NEXT_PORT.compare_exchange(0, base, Ordering::Relaxed, Ordering::Relaxed);
    }
    loop {
        let mut port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        if port >= 32_000 {
            NEXT_PORT.store(20_000, Ordering::Relaxed);
            port = 20_000;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Runs `start` (a process on ports from [`free_port`]) until it succeeds,
/// retrying with fresh ports when its failure (which carries the log tail)
/// says a port was taken between our probe and its bind, by another test's
/// process or as the local port of an outgoing connection; a few times.
pub(crate) fn with_port_retries<T>(mut start: impl FnMut() -> Result<T, String>) -> T {
    for _ in 1..3 {
        match start() {
            Ok(started) => return started,
            Err(e) if e.to_lowercase().contains("address already in use") => {
                eprintln!("a port was taken, retrying with others: {e}");
            }
            Err(e) => panic!("{e}"),
        }
    }
    start().unwrap_or_else(|e| panic!("{e}"))
}

/// An etcd endpoint on a free loopback port that nothing listens on: etcd down.
pub fn dead_endpoint() -> String {
    format!("http://127.0.0.1:{}", free_port())
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

/// The samples of a Prometheus text exposition, as (name, labels, value): the counters and
/// gauges the tests read (a parser crate would bring regex and chrono for these few lines).
pub fn metric_samples(text: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    let samples = text.lines().filter(|l| !l.starts_with('#'));
    samples.filter_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        Some((name, labels, value.parse().ok()?))
    })
}

/// The value of `series` (a name, and its labels as printed if it has any) in a Prometheus
/// text exposition, read by [`metric_samples`].
pub fn metric(text: &str, series: &str) -> Option<f64> {
    let (name, labels) = series.split_once('{').unwrap_or((series, ""));
    metric_samples(text).find_map(|(n, l, value)| (n == name && l == labels).then_some(value))
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_reads_a_whole_series_with_or_without_labels() {
        let text = "# HELP up x\nup 1\nup_total 7\nerrors_total{op=\"grant\"} 2\n\
                    errors_total{op=\"put\"} 3\n";
        assert_eq!(metric(text, "up"), Some(1.0));
        assert_eq!(metric(text, "errors_total{op=\"put\"}"), Some(3.0));
        assert_eq!(metric(text, "errors_total"), None, "only a whole series");
        assert_eq!(metric(text, "up_"), None);
    }
}
