//! The etcd3gw lock client in `tests/interop/etcd3gw_locker.py`, run as a
//! child with the python of the virtualenv `scripts/etcd3gw.sh` installs:
//! proof that OpenStack's Python client (`etcd3gw.lock.Lock`, which speaks
//! etcd's gRPC-gateway JSON API over HTTP) and the sidecar exclude each other
//! on the same key.
//!
//! etcd3gw's `Lock` names its key `/locks/<name>`, so the keys these tests
//! share with it are built by [`gw_lock_key`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::locker::Locker;

/// Where etcd3gw's `Lock` keeps its keys.
pub const GW_LOCK_PREFIX: &str = "/locks/";

/// `/locks/elector-test/<name>-<random>`: a [`crate::unique_key`] that
/// etcd3gw's `Lock` can name (as `elector-test/<name>-<random>`).
pub fn gw_lock_key(test_name: &str) -> String {
    format!("/locks{}", crate::unique_key(test_name))
}

/// The python of the etcd3gw virtualenv (`ELECTOR_ETCD3GW_PYTHON`, else where
/// `scripts/etcd3gw.sh` puts it), checked once per process to import etcd3gw.
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

/// etcd3gw's lock client: [`GwLocker::run`] gives a [`Locker`] whose verdict is
/// `{"held": true, "rev": N, "value": "<uuid>", "api": "/v3/"}` or `{"held": false,
/// "holder": "<value>" or null, "api": "/v3/"}`.
pub struct GwLocker;

impl GwLocker {
    /// Runs one `etcd3gw.lock.Lock(name, ttl).acquire()` on `key` (`/locks/<name>`); if it
    /// took the lock it holds it (refreshing the lease) until [`Locker::release`].
    pub fn run(endpoint: &str, key: &str, ttl_secs: u64) -> Locker {
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
            .env("no_proxy", "127.0.0.1");
        Locker::spawn(&mut cmd, "etcd3gw_locker")
    }
}
