//! The Go lock client in `tests/interop/golocker`, built once per test binary
//! and run as a child: proof that the sidecar's protocol is the one etcd's own
//! Go client speaks, and that the two exclude each other on the same key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::locker::Locker;

/// Builds `tests/interop/golocker` (once per process) in GOPATH mode against
/// Debian's golang-etcd-server-dev and returns the binary's path.
pub fn go_locker() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build).clone()
}

fn build() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/golocker");
    let out_dir = &crate::profile_dir().join("../tmp");
    std::fs::create_dir_all(out_dir).expect("creating target/tmp");
    let bin = out_dir.join("golocker");
    // Built under a unique name, then renamed: another test binary building at
    // the same time never sees a half-written file.
    let partial = out_dir.join(format!("golocker.{}", std::process::id()));
    let gopath = std::env::var("GOLOCKER_GOPATH").unwrap_or_else(|_| "/usr/share/gocode".into());
    assert!(
        Path::new(&gopath)
            .join("src/go.etcd.io/etcd/clientv3")
            .is_dir(),
        "the Go interop test needs etcd's Go client under {gopath}: \
         `apt-get install golang-go golang-etcd-server-dev`, or set GOLOCKER_GOPATH"
    );
    let mut cmd = Command::new("go");
    cmd.args(["build", "-o"])
        .arg(&partial)
        .arg(".")
        .current_dir(&src)
        // Debian ships the etcd sources as a GOPATH tree, not as modules.
        .env("GO111MODULE", "off")
        .env("GOPATH", &gopath)
        // Never reach for the network.
        .env("GOPROXY", "off");
    if std::env::var_os("GOCACHE").is_none() && std::env::var_os("HOME").is_none() {
        cmd.env("GOCACHE", out_dir.join("gocache"));
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("running `go build` ({e}): the Go interop test needs `apt-get install golang-go golang-etcd-server-dev`")
    });
    assert!(
        out.status.success(),
        "building golocker failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&partial, &bin).expect("moving golocker into place");
    bin
}

/// The Go lock client: [`GoLocker::run`] gives a [`Locker`].
pub struct GoLocker;

impl GoLocker {
    /// Runs one campaign on `key` and waits (bounded) for its verdict line.
    pub fn run(endpoints: &str, key: &str, id: &str, ttl: u64) -> Locker {
        let mut cmd = Command::new(go_locker());
        cmd.args(["--endpoints", endpoints, "--key", key, "--id", id])
            .args(["--ttl", &ttl.to_string()]);
        Locker::spawn(&mut cmd, "golocker")
    }
}
