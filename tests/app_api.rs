//! The API for the application beside the sidecar: the `/leader/events`
//! Server-Sent Events stream, `POST /resign` on the pod-local admin port
//! (never on the public one), and the `--leader-file` mirror of `/leader`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use elector_testkit::*;
use serde_json::Value;

/// Long enough that every takeover comes from a release, never an expiry.
const LONG_TTL: &str = "30";

/// A subscription to `/leader/events`, read as a browser's `EventSource`
/// would: HTTP/1.1, chunked transfer encoding, events separated by a blank
/// line. Only `leader` events are returned; heartbeat comments are skipped.
struct Subscription {
    stream: TcpStream,
    /// Bytes received and not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body not yet split into events.
    body: Vec<u8>,
}

impl Subscription {
    /// Connects, sends the request and checks the response head.
    fn open(addr: SocketAddr) -> Subscription {
        let mut stream = http::connect(addr).expect("connecting");
        let request = "GET /leader/events HTTP/1.1\r\nAccept: text/event-stream\r\n";
        write!(stream, "{request}Host: {addr}\r\n\r\n").expect("sending the request");
        let (head, raw) = http::read_head(&mut stream).expect("reading the response head");
        assert_eq!(head.status, 200, "200 for the stream: {head:?}");
        assert!(
            head.header("content-type")
                .is_some_and(|t| t.starts_with("text/event-stream")),
            "an event stream: {head:?}"
        );
        // Chunked, which only HTTP/1.1 has.
        assert!(
            head.header("transfer-encoding")
                .is_some_and(|t| t.eq_ignore_ascii_case("chunked")),
            "chunked: {head:?}"
        );
        let body = Vec::new();
        Subscription { stream, raw, body }
    }

    /// The next `leader` event matching `pred` within `timeout`, skipping others.
    fn next(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 4096];
        loop {
            let (data, used) = http::dechunk(&self.raw);
            self.body.extend(data);
            self.raw.drain(..used);
            // Split into events at blank lines.
            while let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.body.drain(..end + 2).collect();
                let event = leader_event(&String::from_utf8_lossy(&block));
                if let Some(event) = event.filter(&pred) {
                    return Some(event);
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("read timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the event stream ended"),
                Ok(n) => self.raw.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(e) => panic!("reading the event stream: {e}"),
            }
        }
    }
}

/// The JSON data of an SSE block if it is a `leader` event.
fn leader_event(block: &str) -> Option<Value> {
    let mut name = None;
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    if name != Some("leader") {
        return None;
    }
    let event = serde_json::from_str(&data);
    Some(event.unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data:?}")))
}

/// A fresh etcd and `n` sidecars on one key named after `test`, started one
/// after the other, each ready and campaigned (so with the election protocol
/// they queue in this order).
fn queue(test: &str, n: usize, protocol: &str) -> (Etcd, Vec<Sidecar>) {
    let (etcd, key) = etcd_and_key(test);
    let sidecars = (0..n)
        .map(|i| {
            let args = ["--protocol", protocol, "--ttl", LONG_TTL];
            let s = Sidecar::start(&etcd.endpoint(), &key, &format!("{protocol}-{i}"), &args);
            s.wait_campaigned();
            s
        })
        .collect();
    (etcd, sidecars)
}

/// Subscribes to `s`'s events: the first comes at once and is the current
/// state. Returns the subscription and that first event.
fn subscribe(s: &Sidecar) -> (Subscription, Value) {
    let mut events = Subscription::open(s.addr());
    let first = events
        .next(Duration::from_secs(1), |_| true)
        .expect("the first event comes at once");
    assert_eq!(
        first,
        s.leader_view(),
        "the first event is the current state"
    );
    (events, first)
}

#[test]
fn a_followers_event_stream_starts_with_the_current_state_and_shows_a_new_leader_within_a_second() {
    let (_etcd, mut sidecars) = queue("sse_follower", 3, "lock");
    let leader = wait_for_one_leader(&sidecars, SOON);
    let old = sidecars[leader].id().to_string();
    let follower = (leader + 1) % sidecars.len();
    let follower_id = sidecars[follower].id().to_string();

    let (mut events, first) = subscribe(&sidecars[follower]);
    assert_eq!(first["leader"], old.as_str());
    assert_eq!(first["is_leader"], false);

    let signalled = Instant::now();
    sidecars[leader].signal(Signal::SIGTERM);
    let new = events
        .next(Duration::from_secs(1), |e| {
            e["leader"].is_string() && e["leader"] != old.as_str()
        })
        .unwrap_or_else(|| panic!("the follower's stream named a new leader within a second"));
    println!(
        "the follower's stream named {} {:?} after the SIGTERM",
        new["leader"],
        signalled.elapsed()
    );
    assert!(sidecars[leader].wait_exit(SOON).success());
    sidecars.remove(leader);
    let now_leading = wait_for_one_leader(&sidecars, SOON);
    assert_eq!(new["leader"], sidecars[now_leading].id());
    assert_eq!(new["identity"], follower_id.as_str());
    assert_eq!(
        new["is_leader"],
        new["leader"] == follower_id.as_str(),
        "is_leader says whether the follower itself took over: {new}"
    );
}

#[test]
fn with_the_election_protocol_the_next_in_line_sees_itself_lead_within_a_second() {
    let (_etcd, mut sidecars) = queue("sse_election", 3, "election");
    assert!(sidecars[0].is_leader());
    let (mut events, first) = subscribe(&sidecars[1]);
    assert_eq!(first["leader"], "election-0");

    let signalled = Instant::now();
    sidecars[0].signal(Signal::SIGTERM);
    let led = events
        .next(Duration::from_secs(1), |e| e["is_leader"] == true)
        .expect("the next in line's stream shows it leading within a second");
    println!(
        "the next in line led {:?} after the SIGTERM",
        signalled.elapsed()
    );
    assert_eq!(led["leader"], "election-1");
    assert!(sidecars[0].wait_exit(SOON).success());
}

/// The slowest of `n` `GET /leader` round trips on `s`.
fn slowest_leader_answer(s: &Sidecar, n: usize) -> Duration {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let r = s.get_response("/leader");
            assert!(r.status == 200 || r.status == 503, "{r:?}");
            t.elapsed()
        })
        .max()
        .unwrap_or_default()
}

#[test]
fn two_hundred_subscribers_do_not_delay_leader_answers() {
    const SUBSCRIBERS: usize = 200;
    /// Generous: a loopback answer takes about a millisecond.
    const BOUND: Duration = Duration::from_millis(500);
    let (_etcd, mut sidecars) = queue("sse_200", 2, "lock");
    assert!(sidecars[0].is_leader());
    let follower = &sidecars[1];
    let baseline = slowest_leader_answer(follower, 20);

    let mut subs: Vec<Subscription> = (0..SUBSCRIBERS)
        .map(|_| Subscription::open(follower.addr()))
        .collect();
    for (i, sub) in subs.iter_mut().enumerate() {
        let first = sub
            .next(Duration::from_secs(5), |_| true)
            .unwrap_or_else(|| panic!("subscriber {i} got the current state"));
        assert_eq!(first["leader"], "lock-0");
    }
    let loaded = slowest_leader_answer(follower, 20);
    println!(
        "slowest /leader answer: {baseline:?} alone, {loaded:?} with {SUBSCRIBERS} subscribers"
    );
    assert!(
        loaded < BOUND,
        "/leader answered within {BOUND:?}: {loaded:?}"
    );

    // A handoff while nobody reads the streams: the election and the probe
    // carry on, and every subscriber finds the change waiting for it.
    let signalled = Instant::now();
    sidecars[0].signal(Signal::SIGTERM);
    sidecars[1].wait_leading("the follower takes over");
    println!(
        "handoff with {SUBSCRIBERS} idle subscribers took {:?}",
        signalled.elapsed()
    );
    let during = slowest_leader_answer(&sidecars[1], 20);
    assert!(
        during < BOUND,
        "/leader answered within {BOUND:?}: {during:?}"
    );
    for (i, sub) in subs.iter_mut().enumerate() {
        assert!(
            sub.next(SOON, |e| e["is_leader"] == true).is_some(),
            "subscriber {i} sees the follower lead"
        );
    }
    assert!(sidecars[0].wait_exit(SOON).success());
}

fn resign_hands_over_within_a_second(protocol: &str) {
    let (etcd, sidecars) = queue(&format!("resign_{protocol}"), 3, protocol);
    let leader = wait_for_one_leader(&sidecars, SOON);
    let old = &sidecars[leader];

    let asked = Instant::now();
    let new = resign(&sidecars, leader, Duration::from_secs(1));
    println!(
        "{protocol}: handed over {:?} after POST /resign",
        asked.elapsed()
    );
    if protocol == "election" {
        assert_eq!(new, leader + 1, "the next in line takes over");
    }
    assert_eq!(wait_for_one_leader(&sidecars, SOON), new);
    // The resigned replica follows the new leader.
    old.wait_following(sidecars[new].id());
    if protocol == "election" {
        let keys = elector_testkit::job::keys_under(&etcd, &format!("{}/", old.key()));
        assert_eq!(
            keys.last().map(|(_, kv)| kv.value.as_str()),
            Some(old.id()),
            "the resigned replica queues again at the back: {keys:?}"
        );
    }
}

#[test]
fn resign_on_the_admin_port_hands_over_within_a_second() {
    resign_hands_over_within_a_second("lock");
}

#[test]
fn resign_with_the_election_protocol_hands_over_to_the_next_in_line() {
    resign_hands_over_within_a_second("election");
}

#[test]
fn resign_is_404_on_the_public_port_and_409_on_a_follower() {
    let (_etcd, sidecars) = queue("resign_refused", 2, "lock");
    let leader = wait_for_one_leader(&sidecars, SOON);
    let token = sidecars[leader].fencing_token();
    let (l, f) = (&sidecars[leader], &sidecars[1 - leader]);
    let ask = |addr, method, path| http::simple(addr, method, path, b"").expect("an answer");

    let public = ask(l.addr(), "POST", "/resign");
    assert_eq!(
        public.status, 404,
        "admin routes are not on the public port"
    );
    let resp = ask(f.admin_addr(), "POST", "/resign");
    assert_eq!(resp.status, 409, "{resp:?}");
    assert_eq!(resp.json()["resigned"], false);
    let get = ask(l.admin_addr(), "GET", "/resign");
    assert_eq!(get.status, 405, "resign is POST only");
    let other = ask(l.admin_addr(), "GET", "/leader");
    assert_eq!(other.status, 404, "the admin port serves only /resign");

    // Nothing changed hands.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(wait_for_one_leader(&sidecars, SOON), leader);
    assert_eq!(sidecars[leader].fencing_token(), token);
}

/// Reads `path` as fast as it can until `stop`; returns (successful reads,
/// failures described). Before the first write the file may be missing;
/// after that it must always exist and always parse.
fn read_tight(path: &Path, stop: &AtomicBool, identity: &str, key: &str) -> (u64, Vec<String>) {
    let mut reads = 0u64;
    let mut failures = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match std::fs::read_to_string(path) {
            Ok(text) => match serde_json::from_str::<Value>(&text) {
                Ok(doc) => {
                    reads += 1;
                    if doc["identity"] != identity || doc["key"] != key {
                        failures.push(format!("wrong document: {text:?}"));
                    }
                }
                Err(e) => failures.push(format!("unparsable ({e}): {text:?}")),
            },
            Err(e) if e.kind() == ErrorKind::NotFound && reads == 0 => {}
            Err(e) => failures.push(format!("read failed: {e}")),
        }
        if failures.len() > 10 {
            break;
        }
    }
    (reads, failures)
}

#[test]
fn the_leader_file_always_parses_and_matches_leader_through_handoffs() {
    let (etcd, key) = etcd_and_key("leader_file");
    let dir = test_tempdir("leader-file");
    let paths: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("leader-{i}.json")))
        .collect();
    let sidecars: Vec<Sidecar> = (0..3)
        .map(|i| {
            let path = paths[i].to_string_lossy();
            let args = ["--ttl", LONG_TTL, "--leader-file", &path];
            Sidecar::start(&etcd.endpoint(), &key, &format!("file-{i}"), &args)
        })
        .collect();
    wait_for_one_leader(&sidecars, SOON);

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (p, stop, id, key) = (p.clone(), stop.clone(), format!("file-{i}"), key.clone());
            std::thread::spawn(move || read_tight(&p, &stop, &id, &key))
        })
        .collect();

    let mut leaders = Vec::new();
    for _ in 0..6 {
        // Hand over, never drop and race: three quick resigns would otherwise outrun the
        // first resigner's hold-off, and the third could find nobody to hand to.
        let leader = wait_for_successors(&sidecars);
        leaders.push(sidecars[leader].id().to_string());
        resign(&sidecars, leader, SOON);
    }
    stop.store(true, Ordering::Relaxed);
    for (i, r) in readers.into_iter().enumerate() {
        let (reads, failures) = r.join().expect("reader thread");
        println!("leader file {i}: {reads} reads during the handoffs");
        assert!(failures.is_empty(), "leader file {i}: {failures:?}");
        assert!(reads > 100, "leader file {i} was read only {reads} times");
    }
    println!("leaders in turn: {leaders:?}");

    wait_for_one_leader(&sidecars, SOON);
    for (s, p) in sidecars.iter().zip(&paths) {
        let mut last = None;
        assert!(
            wait_until(SOON, || {
                last = std::fs::read_to_string(p)
                    .ok()
                    .and_then(|text| serde_json::from_str(&text).ok());
                last.as_ref() == Some(&s.leader_view())
            }),
            "{}'s leader file matches /leader: file {last:?}, /leader {}",
            s.id(),
            s.leader_view()
        );
    }
}
