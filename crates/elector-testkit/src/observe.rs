//! What the fault tests observe, and the checks made on it: every replica's
//! `/leader` probed continuously from threads ([`Prober`]), and each replica's
//! own record of its terms in its JSON log ([`terms`]). Both must show that no
//! two replicas claimed leadership at the same time.
//!
//! # Reading probes soundly
//! A probe answered 200 tells us the replica claimed leadership at *some*
//! instant between sending and receiving, not when. So two 200s from
//! different replicas a few milliseconds apart prove nothing: a graceful
//! handoff takes milliseconds. What proves an overlap is a replica answering
//! 200 on both sides of another replica's 200: consecutive 200s of one
//! replica with the same fencing token are one continuous claim (a claim that
//! lapsed and came back with the same token means the key, created at that
//! revision, existed all along, so nobody else could hold it meanwhile), and
//! that claim certainly covers the time from the first answer's arrival to the
//! last request's departure. [`ProbeRecord::overlaps`] reports another
//! replica's 200 inside that span, or two such spans that intersect.
//!
//! # Timestamps
//! Log timestamps are wall-clock RFC 3339 (microseconds); the test's instants
//! are converted with one pair taken at first use ([`unix_micros`]). All
//! processes share this machine's clock: the only error is its resolution.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::{http, Sidecar};

/// One `/leader` probe.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub sent: Instant,
    pub answered: Instant,
    /// `None` when there was no answer (refused, reset, timed out).
    pub status: Option<u16>,
    pub token: Option<i64>,
}

impl Probe {
    pub fn is_leader(&self) -> bool {
        self.status == Some(200)
    }
}

/// Probes each target's `/leader` from its own thread, one request at a time
/// on a kept-alive connection (reconnecting after any error), every `period`.
pub struct Prober {
    names: Vec<String>,
    records: Vec<Arc<Mutex<Vec<Probe>>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Prober {
    /// Probes `sidecars` (targets in that order, named by their ids) every `period`.
    pub fn start<'a>(sidecars: impl IntoIterator<Item = &'a Sidecar>, period: Duration) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut names, mut records, mut threads) = (Vec::new(), Vec::new(), Vec::new());
        for s in sidecars {
            let record = Arc::new(Mutex::new(Vec::new()));
            let (addr, theirs, stop) = (s.addr(), record.clone(), stop.clone());
            let thread = thread::Builder::new()
                .name(format!("probe-{}", s.id()))
                .spawn(move || probe_loop(addr, period, &stop, &theirs))
                .expect("spawning a probe thread");
            names.push(s.id().to_string());
            records.push(record);
            threads.push(thread);
        }
        // Make sure the wall-clock base exists before anything is recorded.
        unix_micros(Instant::now());
        Prober {
            names,
            records,
            stop,
            threads,
        }
    }

    /// The first probe of any target sent at or after `t` that answered 200:
    /// (target, answer time).
    pub fn first_leader_since(&self, t: Instant) -> Option<(usize, Instant)> {
        (0..self.records.len())
            .filter_map(|i| {
                self.records[i]
                    .lock()
                    .expect("probe record")
                    .iter()
                    .find(|p| p.sent >= t && p.is_leader())
                    .map(|p| (i, p.answered))
            })
            .min_by_key(|(_, at)| *at)
    }

    /// Stops the threads and returns everything recorded.
    pub fn stop(mut self) -> ProbeRecord {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        ProbeRecord {
            names: std::mem::take(&mut self.names),
            probes: self
                .records
                .iter()
                .map(|r| std::mem::take(&mut *r.lock().expect("probe record")))
                .collect(),
        }
    }

    /// [`Prober::stop`], checking the one thing every fault must keep: no two
    /// replicas ever claimed leadership at once (times shown from `origin`).
    pub fn stop_checked(self, origin: Instant) -> ProbeRecord {
        let record = self.stop();
        let overlaps = record.overlaps();
        assert!(
            overlaps.is_empty(),
            "two replicas claimed leadership at once ({} probes):\n{}",
            record.total(),
            overlaps
                .iter()
                .map(|o| record.describe(o, origin))
                .collect::<Vec<_>>()
                .join("\n")
        );
        record
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn probe_loop(addr: SocketAddr, period: Duration, stop: &AtomicBool, record: &Mutex<Vec<Probe>>) {
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        let answer = probe_once(addr, &mut conn, Duration::from_secs(2), http::IO_TIMEOUT);
        let answered = Instant::now();
        if answer.is_none() {
            conn = None;
        }
        let (status, token) = answer.unwrap_or((None, None));
        record.lock().expect("probe record").push(Probe {
            sent,
            answered,
            status,
            token,
        });
        thread::sleep(period);
    }
}

/// One `GET /leader` on the kept-alive `conn` to `addr` (opened if there is none): the status
/// and the fencing token, or `None` when the connection failed.
pub fn probe_once(
    addr: SocketAddr,
    conn: &mut Option<TcpStream>,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> Option<(Option<u16>, Option<i64>)> {
    if conn.is_none() {
        let stream = TcpStream::connect_timeout(&addr, connect_timeout).ok()?;
        stream.set_read_timeout(Some(io_timeout)).ok()?;
        stream.set_write_timeout(Some(io_timeout)).ok()?;
        let _ = stream.set_nodelay(true);
        *conn = Some(stream);
    }
    let stream = conn.as_mut()?;
    stream
        .write_all(b"GET /leader HTTP/1.1\r\nHost: probe\r\n\r\n")
        .ok()?;
    let resp = http::read_response(stream, false).ok()?;
    let token = serde_json::from_str::<serde_json::Value>(&resp.body)
        .ok()
        .and_then(|v| v["fencing_token"].as_i64());
    if resp
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    {
        *conn = None;
    }
    Some((Some(resp.status), token))
}

/// A claim seen by probes: consecutive 200s of one target with one token.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub target: usize,
    pub token: Option<i64>,
    pub first: Probe,
    pub last: Probe,
}

impl Run {
    /// The span the claim certainly covered: first answer's arrival to last request's departure.
    pub fn certain(&self) -> Option<(Instant, Instant)> {
        (self.first.answered < self.last.sent).then_some((self.first.answered, self.last.sent))
    }
}

/// Two replicas caught claiming leadership at the same time.
#[derive(Debug, Clone)]
pub struct ProbeOverlap {
    pub a: Run,
    pub b: Run,
    pub at: Instant,
}

/// Everything a [`Prober`] recorded.
pub struct ProbeRecord {
    pub names: Vec<String>,
    pub probes: Vec<Vec<Probe>>,
}

impl ProbeRecord {
    pub fn total(&self) -> usize {
        self.probes.iter().map(Vec::len).sum()
    }

    /// Each target's runs of 200s, see [`Run`].
    pub fn runs(&self) -> Vec<Run> {
        let mut runs = Vec::new();
        for (target, probes) in self.probes.iter().enumerate() {
            let same_claim =
                |a: &Probe, b: &Probe| a.is_leader() && b.is_leader() && a.token == b.token;
            let claims = probes.chunk_by(same_claim).filter(|c| c[0].is_leader());
            runs.extend(claims.map(|c| Run {
                target,
                token: c[0].token,
                first: c[0],
                last: c[c.len() - 1],
            }));
        }
        runs
    }

    /// Proven overlaps between different targets; see the module docs.
    pub fn overlaps(&self) -> Vec<ProbeOverlap> {
        let runs = self.runs();
        let mut found = Vec::new();
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                if a.target == b.target
                    || a.last.answered < b.first.sent
                    || b.last.answered < a.first.sent
                {
                    continue;
                }
                if let Some(at) = run_overlap(a, b, &self.probes) {
                    found.push(ProbeOverlap { a: *a, b: *b, at });
                }
            }
        }
        found
    }

    /// When `target`'s first probe sent at or after `after` that was answered `status` got its
    /// answer.
    pub fn first_answer(&self, target: usize, after: Instant, status: u16) -> Option<Instant> {
        let probes = &self.probes[target];
        let first = probes
            .iter()
            .find(|p| p.sent >= after && p.status == Some(status));
        first.map(|p| p.answered)
    }

    /// Every probe answered 200, all targets.
    pub fn leader_probes(&self) -> impl Iterator<Item = &Probe> {
        self.probes.iter().flatten().filter(|p| p.is_leader())
    }

    /// A readable account of an overlap, for a failure message.
    pub fn describe(&self, o: &ProbeOverlap, origin: Instant) -> String {
        let ms = |t: Instant| t.saturating_duration_since(origin).as_secs_f64() * 1e3;
        format!(
            "{} (token {:?}, 200s from {:.1} to {:.1} ms) and {} (token {:?}, 200s from {:.1} to {:.1} ms) both led at {:.1} ms",
            self.names[o.a.target],
            o.a.token,
            ms(o.a.first.sent),
            ms(o.a.last.answered),
            self.names[o.b.target],
            o.b.token,
            ms(o.b.first.sent),
            ms(o.b.last.answered),
            ms(o.at)
        )
    }
}

/// Where runs `a` and `b` certainly overlap, if they do: their certain spans
/// intersect, or one's 200 lies wholly inside the other's certain span.
fn run_overlap(a: &Run, b: &Run, probes: &[Vec<Probe>]) -> Option<Instant> {
    if let (Some((a0, a1)), Some((b0, b1))) = (a.certain(), b.certain()) {
        let (start, end) = (a0.max(b0), a1.min(b1));
        if start < end {
            return Some(start);
        }
    }
    for (outer, inner) in [(a, b), (b, a)] {
        let Some((s0, s1)) = outer.certain() else {
            continue;
        };
        let inside = probes[inner.target]
            .iter()
            .filter(|p| p.is_leader() && p.token == inner.token)
            .filter(|p| p.sent >= inner.first.sent && p.answered <= inner.last.answered)
            .find(|p| p.sent >= s0 && p.answered <= s1);
        if let Some(p) = inside {
            return Some(p.sent);
        }
    }
    None
}

/// What each of `sidecars` answers on `/leader`, for failure messages.
pub fn leader_views<'a>(sidecars: impl IntoIterator<Item = &'a Sidecar>) -> Vec<String> {
    let view = |s: &Sidecar| match s.try_get("/leader") {
        Ok(resp) => format!("{}: {} {}", s.id(), resp.status, resp.body),
        Err(e) => format!("{}: no answer ({e})", s.id()),
    };
    sidecars.into_iter().map(view).collect()
}

/// Microseconds since the Unix epoch of `t`, on the wall clock the sidecars
/// write into their logs.
pub fn unix_micros(t: Instant) -> i64 {
    static BASE: OnceLock<(Instant, i64)> = OnceLock::new();
    let (base, wall) =
        *BASE.get_or_init(|| (Instant::now(), jiff::Timestamp::now().as_microsecond()));
    wall + t.saturating_duration_since(base).as_micros() as i64
        - base.saturating_duration_since(t).as_micros() as i64
}

/// An RFC 3339 timestamp (`Z` or an offset) as microseconds since the Unix epoch.
pub fn parse_rfc3339_micros(s: &str) -> Option<i64> {
    Some(s.parse::<jiff::Timestamp>().ok()?.as_microsecond())
}

/// The JSON lines of a sidecar's log with their timestamps (Unix µs); other lines are skipped.
pub fn json_lines(log: &str) -> impl Iterator<Item = (i64, serde_json::Value)> + '_ {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((parse_rfc3339_micros(v["timestamp"].as_str()?)?, v)))
}

/// One term of one replica as its own log tells it.
#[derive(Debug, Clone)]
pub struct Term {
    pub replica: String,
    pub fencing_token: Option<i64>,
    /// `became_leader`'s timestamp.
    pub start: i64,
    /// `stepped_down`'s timestamp; `None` when the log ends while leading.
    pub end: Option<i64>,
    pub end_reason: Option<String>,
}

/// The terms (`became_leader` .. `stepped_down`) in one replica's log.
pub fn terms(replica: &str, log: &str) -> Vec<Term> {
    let mut out = Vec::new();
    let mut open: Option<Term> = None;
    for (at, line) in json_lines(log) {
        match line["event"].as_str() {
            // Two became_leader in a row cannot happen; if it ever does, the
            // first stays open so the check sees the longest claim.
            Some("became_leader") if open.is_none() => {
                open = Some(Term {
                    replica: replica.to_string(),
                    fencing_token: line["fencing_token"].as_i64(),
                    start: at,
                    end: None,
                    end_reason: None,
                });
            }
            Some("stepped_down") => {
                if let Some(mut term) = open.take() {
                    term.end = Some(at);
                    term.end_reason = line["reason"].as_str().map(String::from);
                    out.push(term);
                }
            }
            _ => {}
        }
    }
    out.extend(open);
    out
}

/// Pairs of terms of different replicas that overlap by more than
/// `tolerance_us` (`i64::MIN`: every pair), earlier start first, with the
/// overlap in microseconds (negative: the gap between them). Open terms must
/// have been closed by the caller (e.g. at the time the process was killed).
pub fn term_overlaps(terms: &[Term], tolerance_us: i64) -> Vec<(&Term, &Term, i64)> {
    let mut found = Vec::new();
    for (i, a) in terms.iter().enumerate() {
        for b in &terms[i + 1..] {
            let (Some(a_end), Some(b_end)) = (a.end, b.end) else {
                continue;
            };
            let overlap = a_end.min(b_end) - a.start.max(b.start);
            if a.replica != b.replica && overlap > tolerance_us {
                let (first, second) = if a.start <= b.start { (a, b) } else { (b, a) };
                found.push((first, second, overlap));
            }
        }
    }
    found
}

/// The parts of `from..to` that none of `spans` covers, in order. An empty
/// span (an instant) splits a gap in two.
pub fn gaps<T: Ord + Copy>(from: T, to: T, spans: impl IntoIterator<Item = (T, T)>) -> Vec<(T, T)> {
    let mut spans: Vec<(T, T)> = spans.into_iter().filter(|(a, b)| a <= b).collect();
    spans.sort();
    let mut gaps = Vec::new();
    let mut reach = from;
    for (a, b) in spans {
        if a > reach && reach < to {
            gaps.push((reach, a.min(to)));
        }
        reach = reach.max(b);
    }
    if to > reach {
        gaps.push((reach, to));
    }
    gaps
}
