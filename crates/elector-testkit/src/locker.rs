//! Other etcd clients that take the same key, run as children: the Go program on etcd's
//! `clientv3` ([`crate::golocker`]) and etcd3gw's Python `Lock` ([`crate::etcd3gw`]). Each tries
//! the lock once, prints one JSON verdict line, holds the lock (when it got it) until released
//! by SIGTERM, and exits. [`loses_to_a_sidecar`] and [`sidecars_wait_for`] are the two sides
//! of one key shared with a sidecar; [`resigns_under_contention`] runs one of them in a loop
//! while the sidecars hand leadership over.

use std::io::{BufRead, BufReader};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::Child;
use crate::sidecar::Sidecar;
use crate::{replicas, resign, throughout, wait_for_one_leader, wait_for_successors, Etcd, SOON};

/// A running lock client. Dropping it kills it (SIGKILL: a key it holds stays until its
/// lease expires).
pub struct Locker {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The one JSON line it printed; `held` says whether it took the lock.
    pub result: serde_json::Value,
}

impl Locker {
    /// Spawns `cmd` (its stdio is set here) and waits, bounded, for its verdict line.
    pub fn spawn(cmd: &mut Command, name: &str) -> Locker {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = Child::spawn(cmd, name, &[]);
        let stdout = child.take_stdout().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(line) if !line.trim().is_empty() => line,
            other => panic!("{name} printed no verdict: {other:?}"),
        };
        let result = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("{name} printed {line:?}: {e}"));
        Locker {
            stdin: child.take_stdin(),
            child,
            result,
        }
    }

    pub fn held(&self) -> bool {
        self.result["held"].as_bool().expect("\"held\" is a bool")
    }

    /// Releases (SIGTERM: the client lets go and revokes its lease) and waits for exit. One
    /// that lost exits by itself: a SIGTERM could land in its interpreter's shutdown, after
    /// Python has put the default action back, and kill it.
    pub fn release(mut self) -> ExitStatus {
        if self.held() {
            self.child.signal(Signal::SIGTERM);
        }
        self.stdin.take();
        self.child.wait_exit(Duration::from_secs(10))
    }
}

/// Checks that the one attempt of another client (`attempt`, on `key`) against
/// a sidecar that leads `key` ends with `verdict` and changes nothing.
pub fn loses_to_a_sidecar(
    etcd: &Etcd,
    key: &str,
    verdict: serde_json::Value,
    attempt: impl FnOnce() -> Locker,
) {
    let sidecar = Sidecar::start(&etcd.endpoint(), key, "rust-sidecar", &[]);
    sidecar.wait_leading("the sidecar leads");
    let created = etcd.get(key).expect("the sidecar's key").create_revision;
    let other = attempt();
    let name = other.child.name().to_string();
    assert_eq!(other.result, verdict, "{name} loses to the sidecar");
    assert!(other.release().success(), "{name} exits 0");
    assert!(sidecar.is_leader(), "the sidecar still leads");
    let kv = etcd.get(key).expect("the sidecar's key");
    assert_eq!(
        (kv.value.as_str(), kv.create_revision),
        ("rust-sidecar", created),
        "the same term"
    );
}

/// Checks that sidecars wait while `holder` (another client that took the free
/// `key` and wrote `value` to it) holds it, and that one of them takes over, in
/// a later term, once it lets go.
pub fn sidecars_wait_for(etcd: &Etcd, key: &str, holder: Locker, value: &str) {
    let name = holder.child.name().to_string();
    assert!(
        holder.held(),
        "{name} takes the free key: {}",
        holder.result
    );
    let rev = holder.result["rev"].as_i64().expect("rev is an integer");
    let kv = etcd.get(key).expect("the key");
    assert_eq!((kv.create_revision, kv.value.as_str()), (rev, value));

    let sidecars = replicas(&etcd.endpoint(), key, 2, &["--ttl", "3"]);
    sidecars.iter().for_each(|s| s.wait_following(value));
    // Several of the sidecars' own keep-alive periods pass: still nobody else.
    let why = format!("while {name} holds the key");
    assert_none_leads(&sidecars, Duration::from_secs(2), &why);

    assert!(holder.release().success(), "{name} releases and exits 0");
    let leader = wait_for_one_leader(&sidecars, SOON);
    let kv = etcd.get(key).expect("a sidecar holds the key");
    assert_eq!(kv.value, sidecars[leader].id());
    assert!(
        kv.create_revision > rev,
        "a later term: {} > {rev}",
        kv.create_revision
    );
    assert_eq!(sidecars[leader].fencing_token(), Some(kv.create_revision));
}

/// Checks, every 50 ms for `period`, that none of `sidecars` leads (`why` says why not).
pub fn assert_none_leads(sidecars: &[Sidecar], period: Duration, why: &str) {
    throughout(period, Duration::from_millis(50), || {
        for s in sidecars {
            assert!(!s.is_leader(), "{} leads {why}", s.id());
        }
    });
}

/// What a contender saw while the sidecars handed leadership over.
#[derive(Debug)]
pub struct Contention {
    pub handoffs: usize,
    pub attempts: usize,
    /// Attempts that got the lock: must be 0.
    pub held: usize,
}

impl Contention {
    /// Prints the counts, and asserts that `who` tried and never got the lock.
    pub fn assert_never_held(&self, who: &str) {
        println!(
            "{} handoffs, {} lock attempts by {who}",
            self.handoffs, self.attempts
        );
        assert!(self.attempts > 0, "{who} tried");
        assert_eq!(
            self.held, 0,
            "{who} never got the lock while replicas handed it over"
        );
    }
}

/// `rounds` handoffs among `sidecars` (`POST /resign` to the leader, then another leads)
/// while `attempt` tries the lock in a loop on another thread (each [`Locker`] it starts is
/// released once its verdict is counted).
/// Asserts after each handoff that the key kept its create revision: a key deleted and
/// created again would get a new one, so the key was never absent in between.
pub fn resigns_under_contention(
    etcd: &Etcd,
    key: &str,
    sidecars: &[Sidecar],
    rounds: usize,
    attempt: impl Fn() -> Locker + Send + 'static,
) -> Contention {
    // Nobody campaigning when the contender starts: one leads, the others follow.
    wait_for_successors(sidecars);
    let stop = Arc::new(AtomicBool::new(false));
    let contender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut attempts, mut held) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                attempts += 1;
                let locker = attempt();
                held += usize::from(locker.held());
                let _ = locker.release();
            }
            (attempts, held)
        })
    };
    let created = etcd.get(key).expect("the key").create_revision;
    for handoff in 1..=rounds {
        resign(sidecars, wait_for_successors(sidecars), SOON);
        assert_eq!(
            etcd.get(key).map(|kv| kv.create_revision),
            Some(created),
            "handoff {handoff} moved the key without deleting it"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (attempts, held) = contender.join().expect("the contender thread");
    Contention {
        handoffs: rounds,
        attempts,
        held,
    }
}
