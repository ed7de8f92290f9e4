//! A fault-injecting TCP proxy between a sidecar and etcd. Killing etcd is a
//! loud failure (connections reset); the faults that break leader electors
//! are the quiet ones, which this proxy makes:
//!
//! - [`TcpProxy::partition`]: connections stay open but nothing is forwarded
//!   either way, and new ones are accepted but not joined upstream: silence,
//!   as with a dropped network path, not an error.
//! - [`TcpProxy::set_latency`]: every chunk is delayed by that much in each
//!   direction.
//!
//! Threads, loopback only; dropping the proxy closes everything.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often a blocked thread looks at the partition/stop flags.
const TICK: Duration = Duration::from_millis(10);

struct Shared {
    target: SocketAddr,
    partitioned: AtomicBool,
    latency_ms: AtomicU64,
    stopped: AtomicBool,
}

impl Shared {
    /// Blocks while partitioned; false once the proxy is stopping.
    fn wait_while_partitioned(&self) -> bool {
        while self.partitioned.load(Ordering::SeqCst) {
            if self.stopped.load(Ordering::SeqCst) {
                return false;
            }
            thread::sleep(TICK);
        }
        !self.stopped.load(Ordering::SeqCst)
    }
}

pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        // Non-blocking, so the accept loop can notice `stopped`.
        listener
            .set_nonblocking(true)
            .expect("non-blocking proxy listener");
        let shared = Arc::new(Shared {
            target,
            partitioned: AtomicBool::new(false),
            latency_ms: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let s = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("proxy-{addr}"))
            .spawn(move || accept_loop(listener, s))
            .expect("spawning the proxy thread");
        TcpProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The proxy as an etcd endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop forwarding in both directions, keeping every connection open.
    pub fn partition(&self) {
        self.shared.partitioned.store(true, Ordering::SeqCst);
    }

    /// Forward again, including the bytes held during the partition.
    pub fn heal(&self) {
        self.shared.partitioned.store(false, Ordering::SeqCst);
    }

    /// Delay every forwarded chunk by `latency` (per direction).
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stopped.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let s = shared.clone();
                let _ = thread::Builder::new()
                    .name("proxy-conn".into())
                    .spawn(move || connect(client, s));
            }
            // Nothing to accept yet (non-blocking), or a failed accept.
            Err(_) => thread::sleep(TICK),
        }
    }
}

fn connect(client: TcpStream, shared: Arc<Shared>) {
    // A connection made during a partition hangs, like a SYN into the void
    // that the kernel happened to answer: it is only joined upstream on heal.
    if !shared.wait_while_partitioned() {
        return;
    }
    let _ = client.set_nonblocking(false);
    let Ok(upstream) = TcpStream::connect_timeout(&shared.target, Duration::from_secs(2)) else {
        // Upstream down: close, as a refused connection would.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let s = shared.clone();
    let up = thread::Builder::new()
        .name("proxy-up".into())
        .spawn(move || pump(client, upstream, s));
    pump(u2, c2, shared);
    if let Ok(up) = up {
        let _ = up.join();
    }
}

/// Copies `from` to `to` until EOF, an error or stop, obeying partition and latency.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>) {
    // Short, so the loop looks at the flags.
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Partitioned: do not even read, so the bytes stay in the kernel.
        if !shared.wait_while_partitioned() {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                let latency = shared.latency_ms.load(Ordering::SeqCst);
                thread::sleep(Duration::from_millis(latency));
                // Partitioned while this chunk was in hand: hold it.
                if !shared.wait_while_partitioned() || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
