//! The etcd3gw lock client in `tests/interop/etcd3gw_locker.py`, run as a
//! child with the python of the virtualenv `scripts/etcd3gw.sh` installs:
//! proof that OpenStack's Python client (`etcd3gw.lock.Lock`, which speaks
//! etcd's gRPC-gateway JSON API over HTTP) and the sidecar exclude each other
//! on the same key.
//!
//! etcd3gw's `Lock` names its key `/locks/<name>`, so the keys these tests
//! share with it are built by [`gw_lock_key`].

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::Child;

/// Where etcd3gw's `Lock` keeps its keys.
pub const GW_LOCK_PREFIX: &str = "/locks/";

/// `/locks/elector-test/<name>-<random>`: a [`crate::unique_key`] that
/// etcd3gw's `Lock` can name (as `elector-test/<name>-<random>`).
pub fn gw_lock_key(test_name: &str) -> String {
    format!("/locks{}", crate::unique_key(test_name))
}

/// The python of the etcd3gw virtualenv: `ELECTOR_ETCD3GW_PYTHON`, else
/// `target/etcd3gw-venv/bin/python` of this checkout (where
/// `scripts/etcd3gw.sh` puts it). Checked once per process that it imports
/// etcd3gw; panics with the install command if not.
pub fn etcd3gw_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(find_python).clone()
}

fn find_python() -> PathBuf {
    let python = std::env::var_os("ELECTOR_ETCD3GW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/etcd3gw-venv/bin/python")
        });
    let imports = Command::new(&python)
        .args(["-c", "import etcd3gw.lock"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        imports,
        "the etcd3gw interop test needs OpenStack's etcd3gw in a virtualenv: \
         run scripts/etcd3gw.sh (it installs it into target/etcd3gw-venv), \
         or set ELECTOR_ETCD3GW_PYTHON to a python that imports etcd3gw \
         (tried {})",
        python.display()
    );
    python
}

/// A running etcd3gw_locker. Dropping it kills it (SIGKILL: the key, if held,
/// stays until its lease expires).
pub struct GwLocker {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The one JSON line it printed: `{"held": true, "rev": N, "value":
    /// "<uuid>", "api": "/v3/"}` or `{"held": false, "holder": "<value>" or
    /// null, "api": "/v3/"}`.
    pub result: serde_json::Value,
}

impl GwLocker {
    /// Runs one `etcd3gw.lock.Lock(name, ttl).acquire()` on `key` (which must
    /// be `/locks/<name>`) against `endpoint` and waits (bounded) for its
    /// verdict line. If it took the lock it holds it (refreshing the lease)
    /// until [`GwLocker::release`].
    pub fn run(endpoint: &str, key: &str, ttl_secs: u64) -> GwLocker {
        assert!(
            key.starts_with(GW_LOCK_PREFIX),
            "etcd3gw's Lock only names keys under {GW_LOCK_PREFIX}: {key}"
        );
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/etcd3gw_locker.py");
        let mut cmd = Command::new(etcd3gw_python());
        cmd.arg(script)
            .args(["--endpoint", endpoint, "--key", key])
            .args(["--ttl", &ttl_secs.to_string()])
            // etcd3gw reads its API path from here if set; let it discover.
            .env_remove("ETCD3GW_API_PATH")
            // Loopback only, whatever the environment's proxy says.
            .env("NO_PROXY", "127.0.0.1")
            .env("no_proxy", "127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = Child::spawn(&mut cmd, "etcd3gw_locker", &[]);
        let stdout = child.take_stdout().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(line) if !line.trim().is_empty() => line,
            other => panic!("etcd3gw_locker printed no verdict: {other:?}"),
        };
        let result = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("etcd3gw_locker printed {line:?}: {e}"));
        GwLocker {
            stdin: child.take_stdin(),
            child,
            result,
        }
    }

    pub fn held(&self) -> bool {
        self.result["held"].as_bool().expect("\"held\" is a bool")
    }

    /// Releases (SIGTERM: `Lock.release()`, then revoke the lease) and waits
    /// for exit.
    pub fn release(mut self) -> ExitStatus {
        self.child.signal(Signal::SIGTERM);
        self.stdin.take();
        self.child.wait_exit(Duration::from_secs(10))
    }
}
