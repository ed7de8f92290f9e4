//! The etcd side of the election: connecting, the lease (grant, keep-alive, revoke), the
//! campaign transaction and the watch on the key. Each operation turns etcd's answer into a
//! machine [`Event`]; none of them decides anything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, LeaseKeepAliveStream, LeaseKeeper, PutOptions, SortOrder, SortTarget, TlsOptions,
    Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions,
};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use super::machine::{Event, Holder, LeaseId, Queue, Timing, WatchTarget};
use super::succession::{
    handoff_key, registration_key, registration_prefix, Candidate, HandoffNote, Registration, Term,
};
use crate::backoff::{Backoff, WarnLimit};
use crate::config::{EtcdConfig, Protocol};

/// Which etcd call failed, for the `elector_etcd_errors_total{op}` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Grant,
    KeepAlive,
    Campaign,
    Watch,
    Revoke,
    Handoff,
}

impl Op {
    /// Every operation, for metrics that must show zeros.
    pub const ALL: [Op; 6] = [
        Op::Grant,
        Op::KeepAlive,
        Op::Campaign,
        Op::Watch,
        Op::Revoke,
        Op::Handoff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Grant => "grant",
            Op::KeepAlive => "keepalive",
            Op::Campaign => "campaign",
            Op::Watch => "watch",
            Op::Revoke => "revoke",
            Op::Handoff => "handoff",
        }
    }
}

/// An etcd failure, with the operation it happened in. Its text never contains credentials:
/// etcd-client's errors carry gRPC status messages and transport errors, not request metadata.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("{op}: timed out after {after:?}", op = .op.as_str())]
    Timeout { op: Op, after: Duration },
    #[error("{op}: {source}", op = .op.as_str())]
    Client {
        op: Op,
        #[source]
        source: etcd_client::Error,
    },
    #[error("{op}: {msg}", op = .op.as_str())]
    Protocol { op: Op, msg: String },
    /// A [`EtcdError::Client`] failure that, with TLS on and no client certificate given, is
    /// most likely etcd refusing the connection for want of one (`--client-cert-auth`): rustls
    /// then reports a "BadCertificate" alert or, when the alert is lost with the connection,
    /// only "operation was canceled ... connection closed".
    #[error("{op}: {CLIENT_CERT_HINT}: {source}", op = .op.as_str())]
    NoClientCertificate {
        op: Op,
        #[source]
        source: etcd_client::Error,
    },
}

const CLIENT_CERT_HINT: &str =
    "etcd closed the TLS connection; it may require a client certificate (--etcd-cert/--etcd-key)";

impl EtcdError {
    pub fn op(&self) -> Op {
        match self {
            EtcdError::Timeout { op, .. }
            | EtcdError::Client { op, .. }
            | EtcdError::Protocol { op, .. }
            | EtcdError::NoClientCertificate { op, .. } => *op,
        }
    }

    /// True when the error names a cause an operator can act on.
    pub fn has_hint(&self) -> bool {
        matches!(self, EtcdError::NoClientCertificate { .. })
    }

    /// This error with the reason an operator can act on, when `how` we connect explains it.
    #[must_use]
    pub fn explained(self, how: Explain) -> EtcdError {
        match self {
            EtcdError::Client { op, source } if how.refused_for_want_of_a_certificate(&source) => {
                EtcdError::NoClientCertificate { op, source }
            }
            other => other,
        }
    }

    /// True when etcd said the lease does not exist (expired or revoked).
    pub fn is_lease_gone(&self) -> bool {
        match self {
            // etcd answers NotFound only for a missing lease on the calls we make.
            EtcdError::Client {
                source: etcd_client::Error::GRpcStatus(status),
                ..
            } => status.code() == tonic::Code::NotFound,
            // etcd-client's own error when a keep-alive stream opens with TTL 0; it carries
            // no status code.
            EtcdError::Client {
                source: etcd_client::Error::LeaseKeepAliveError(msg),
                ..
            } => msg.contains("lease not found"),
            _ => false,
        }
    }
}

/// What about our way of connecting to etcd can explain a failure; see [`EtcdError::explained`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Explain {
    /// TLS endpoints, and no client certificate to offer.
    tls_without_client_cert: bool,
}

impl Explain {
    pub fn for_config(cfg: &EtcdConfig) -> Self {
        let tls = cfg.endpoints.iter().any(|e| e.starts_with("https://"));
        let cert = cfg.tls.as_ref().is_some_and(|t| t.cert.is_some());
        Explain {
            tls_without_client_cert: tls && !cert,
        }
    }

    /// Whether `error` looks like etcd closing a TLS connection that offered no certificate:
    /// a "BadCertificate" or "CertificateRequired" alert from the server, or a request
    /// cancelled because the connection closed (the alert lost with it, as happens when the
    /// request was already sent: TLS 1.3 finishes the client's handshake before the server
    /// has checked it).
    fn refused_for_want_of_a_certificate(self, error: &etcd_client::Error) -> bool {
        if !self.tls_without_client_cert {
            return false;
        }
        let mut next: Option<&(dyn std::error::Error + 'static)> = match error {
            etcd_client::Error::GRpcStatus(status) => Some(status),
            etcd_client::Error::TransportError(e) => Some(e),
            etcd_client::Error::IoError(e) => Some(e),
            _ => None,
        };
        while let Some(e) = next {
            if e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_canceled)
            {
                return true;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                let text = io.to_string();
                if text.contains("BadCertificate") || text.contains("CertificateRequired") {
                    return true;
                }
            }
            next = e.source();
        }
        false
    }
}

/// A message from an I/O task to the election loop. Watch events carry the generation of the
/// watch that produced them, so events from a watch that was replaced are dropped.
#[derive(Debug)]
pub enum Report {
    Event(Event),
    WatchEvent {
        generation: u64,
        event: Event,
    },
    Error(EtcdError),
    /// A keep-alive round trip took this long (for the RTT metric).
    KeepAliveRtt(Duration),
    /// A revoke that was sent to exit has finished; `revoked` when etcd accepted it.
    RevokeDone {
        revoked: bool,
    },
}

pub type Reports = mpsc::Sender<Report>;

/// An etcd client that cannot be built: a configuration error (exit 2), never an outage,
/// which is retried instead.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read {flag} {}: {source}", path.display())]
    TlsFile {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd client: {0}")]
    InvalidArgs(String),
    #[error("etcd endpoint: {0}")]
    InvalidUri(String),
}

/// Build a client. The connection is lazy: an unreachable etcd shows up as failed requests,
/// retried by the election loop, not as an error here. Errors here are configuration errors
/// (unreadable or invalid TLS files).
pub async fn connect(cfg: &EtcdConfig, timing: &Timing) -> Result<Client, ConnectError> {
    // HTTP/2 pings detect a silently dead connection (a partition that drops packets) in about
    // a keep-alive interval, so streams fail and reconnect instead of hanging.
    let ping = timing.keepalive_interval.max(Duration::from_secs(1));
    let mut options = ConnectOptions::new()
        .with_keep_alive(ping, ping)
        .with_keep_alive_while_idle(true)
        .with_connect_timeout(timing.request_timeout)
        // A member cut off from its cluster must refuse rather than answer from stale state.
        .with_require_leader(true);
    if let Some(tls) = &cfg.tls {
        let mut opts = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            let pem = read_tls("--etcd-cacert", ca)?;
            opts = opts.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            let cert_pem = read_tls("--etcd-cert", cert)?;
            let key_pem = read_tls("--etcd-key", key)?;
            opts = opts.identity(Identity::from_pem(cert_pem, key_pem));
        }
        options = options.with_tls(opts);
    }
    if let Some((user, password)) = &cfg.auth {
        options = options
            .with_user(user.clone(), password.expose().to_string())
            .with_auto_token_refresh(true);
    }
    // With credentials, connect authenticates at once and fails if etcd is down; retry until
    // it answers, as every other etcd call does.
    let explain = Explain::for_config(cfg);
    let mut backoff = Backoff::unseeded(timing.backoff_base, timing.backoff_cap);
    let mut warn = WarnLimit::default();
    loop {
        match Client::connect(&cfg.endpoints, Some(options.clone())).await {
            Ok(client) => return Ok(client),
            Err(etcd_client::Error::InvalidArgs(msg)) => {
                return Err(ConnectError::InvalidArgs(msg))
            }
            Err(etcd_client::Error::InvalidUri(e)) => {
                return Err(ConnectError::InvalidUri(e.to_string()))
            }
            Err(e) => {
                let delay = backoff.next_delay();
                let hint = explain
                    .refused_for_want_of_a_certificate(&e)
                    .then_some(CLIENT_CERT_HINT);
                match warn.due(Instant::now()) {
                    Some(suppressed) => {
                        tracing::warn!(error = %e, hint, retry_in = ?delay, suppressed, "cannot connect to etcd yet")
                    }
                    None => {
                        tracing::debug!(error = %e, retry_in = ?delay, "cannot connect to etcd yet")
                    }
                }
                sleep(delay).await;
            }
        }
    }
}

fn read_tls(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::TlsFile {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// Grant a lease of the configured TTL.
pub async fn grant(
    client: &mut Client,
    timing: &Timing,
) -> Result<(LeaseId, Duration, Instant), EtcdError> {
    let sent_at = Instant::now();
    let ttl = i64::try_from(timing.ttl.as_secs()).unwrap_or(i64::MAX);
    let resp = bounded(
        Op::Grant,
        timing.request_timeout,
        client.lease_grant(ttl, None),
    )
    .await?;
    if !resp.error().is_empty() {
        return Err(EtcdError::Protocol {
            op: Op::Grant,
            msg: resp.error().to_string(),
        });
    }
    let granted = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0));
    Ok((resp.id(), granted, sent_at))
}

/// What a campaign learnt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    /// The leader: the lock key's holder, or the election's lowest create revision.
    pub holder: Holder,
    /// The revision the answer was read at; watches start after it.
    pub revision: i64,
    /// The key our campaign wrote: the lock key, or our own election key.
    pub key: String,
    /// In the election protocol: the candidates queued before ours.
    pub queue: Option<Queue>,
}

/// Campaign with the configured protocol. `own_created`: in the election protocol, our key's
/// create revision under this lease, when an earlier campaign learnt it.
pub async fn campaign(
    client: &mut Client,
    timing: &Timing,
    protocol: Protocol,
    key: &str,
    id: &str,
    lease: LeaseId,
    own_created: Option<i64>,
) -> Result<Campaign, EtcdError> {
    match protocol {
        Protocol::Lock => campaign_lock(client, timing, key, id, lease).await,
        Protocol::Election => campaign_election(client, timing, key, id, lease, own_created).await,
    }
}

/// The lock protocol: `If CreateRevision(key) == 0 Then Put(key, id, lease) Else Get(key)`.
async fn campaign_lock(
    client: &mut Client,
    timing: &Timing,
    key: &str,
    id: &str,
    lease: LeaseId,
) -> Result<Campaign, EtcdError> {
    let (holder, revision) = create_if_absent(client, timing, key, id, lease).await?;
    Ok(Campaign {
        holder,
        revision,
        key: key.to_string(),
        queue: None,
    })
}

/// etcd's `concurrency.Election` protocol: each candidate owns `<name>/<lease hex>`; the
/// lowest create revision under `<name>/` leads, and a waiting candidate campaigns again only
/// when the key created just before its own goes (see `Ahead`), so a handoff makes one
/// candidate campaign.
///
/// Our key is created once per lease. A later campaign under the same lease (our predecessor
/// went) knows its create revision and only reads: the create transaction carries a `Put`, so
/// etcd would commit it through raft even when the key exists. The read checks that the key
/// still stands as created; if not (an operator deleted it), the campaign creates it again.
async fn campaign_election(
    client: &mut Client,
    timing: &Timing,
    name: &str,
    id: &str,
    lease: LeaseId,
    mut own_created: Option<i64>,
) -> Result<Campaign, EtcdError> {
    let prefix = format!("{name}/");
    let own = format!("{prefix}{lease:x}");
    loop {
        let created = match own_created {
            Some(created) => created,
            None => {
                let (mine, _) = create_if_absent(client, timing, &own, id, lease).await?;
                if mine.lease != lease {
                    return Err(protocol(
                        Op::Campaign,
                        "our election key is attached to another lease",
                    ));
                }
                mine.create_revision
            }
        };
        let first = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        // Everyone before us, not just our predecessor: see `Ahead`. The answer grows with
        // our place in the queue (a key and an id each), but only a campaign reads it.
        let before_us = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_max_create_revision(created - 1);
        let read = Txn::new().and_then([
            TxnOp::get(prefix.as_str(), Some(first)),
            TxnOp::get(prefix.as_str(), Some(before_us)),
            TxnOp::get(own.as_str(), None),
        ]);
        let resp = bounded(Op::Campaign, timing.request_timeout, client.txn(read)).await?;
        let revision = resp
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| protocol(Op::Campaign, "transaction response without header"))?;
        let mut gets = resp.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().to_vec(),
            _ => Vec::new(),
        });
        let (leader, ahead, mine) = (gets.next(), gets.next(), gets.next());
        let stands = mine
            .and_then(|kvs| kvs.into_iter().next())
            .is_some_and(|kv| kv.lease() == lease && kv.create_revision() == created);
        if !stands {
            if own_created.take().is_some() {
                continue;
            }
            return Err(protocol(
                Op::Campaign,
                "our election key vanished during the campaign",
            ));
        }
        let leader = leader
            .and_then(|kvs| kvs.into_iter().next())
            .ok_or_else(|| protocol(Op::Campaign, "the election read returned no leader"))?;
        let ahead = ahead
            .unwrap_or_default()
            .iter()
            .map(|kv| (kv.key().to_vec(), holder_of(kv)))
            .collect();
        return Ok(Campaign {
            holder: holder_of(&leader),
            revision,
            key: own,
            queue: Some(Queue {
                prefix,
                ahead,
                own: created,
            }),
        });
    }
}

/// `If CreateRevision(key) == 0 Then Put(key, id, lease) Else Get(key)`: the holder after the
/// transaction and the revision it was read at.
async fn create_if_absent(
    client: &mut Client,
    timing: &Timing,
    key: &str,
    id: &str,
    lease: LeaseId,
) -> Result<(Holder, i64), EtcdError> {
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            id,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let resp = bounded(Op::Campaign, timing.request_timeout, client.txn(txn)).await?;
    let revision = resp
        .header()
        .map(|h| h.revision())
        .ok_or_else(|| protocol(Op::Campaign, "transaction response without header"))?;
    if resp.succeeded() {
        // Our put created the key at this revision.
        return Ok((
            Holder {
                value: id.to_string(),
                lease,
                create_revision: revision,
                mod_revision: revision,
            },
            revision,
        ));
    }
    let kv = resp
        .op_responses()
        .into_iter()
        .find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        })
        .ok_or_else(|| protocol(Op::Campaign, "key exists but the read returned nothing"))?;
    Ok((holder_of(&kv), revision))
}

/// Register as a candidate for succession: our id and release, under our lease.
pub async fn register(
    client: &mut Client,
    timing: &Timing,
    key: &str,
    registration: &Registration,
    lease: LeaseId,
) -> Result<(), EtcdError> {
    let value = serde_json::to_string(registration)
        .map_err(|e| protocol(Op::Handoff, &format!("encoding the registration: {e}")))?;
    let put = client.put(
        registration_key(key, lease),
        value,
        Some(PutOptions::new().with_lease(lease)),
    );
    bounded(Op::Handoff, timing.request_timeout, put).await?;
    Ok(())
}

/// The registration to write next: under which lease, and what it says.
pub type Pending = Option<(LeaseId, Registration)>;

/// Write our registration, one put at a time and always the newest, until the task is
/// aborted. Two puts in flight at once can land in either order, and the older one (say,
/// "unhealthy", written before the first health check answered) would stay the last word: a
/// leader would then never pick this replica. A failed put is retried with backoff unless a
/// newer registration replaces it; one whose lease is gone is dropped (its key went too).
/// `settled` names the lease of the last registration written or dropped.
pub async fn write_registrations(
    mut client: Client,
    timing: Timing,
    key: String,
    mut newest: tokio::sync::watch::Receiver<Pending>,
    settled: tokio::sync::watch::Sender<Option<LeaseId>>,
    reports: Reports,
) {
    let mut retry = Backoff::unseeded(timing.backoff_base, timing.keepalive_interval);
    while newest.changed().await.is_ok() {
        // Until the newest is written (or its lease is gone): after a failure, retry whatever
        // is newest by then.
        loop {
            let pending = newest.borrow_and_update().clone();
            let Some((lease, registration)) = pending else {
                break;
            };
            match register(&mut client, &timing, &key, &registration, lease).await {
                Err(e) if !e.is_lease_gone() => {
                    let _ = reports.send(Report::Error(e)).await;
                    tokio::select! {
                        changed = newest.changed() => if changed.is_err() { return },
                        () = sleep(retry.next_delay()) => {}
                    }
                }
                _ => {
                    retry.reset();
                    settled.send_replace(Some(lease));
                    break;
                }
            }
        }
    }
}

/// The registered candidates of `key`, and the revision they were read at; registrations that
/// are not ours to read (not JSON) are skipped.
pub async fn read_candidates(
    client: &mut Client,
    timing: &Timing,
    key: &str,
) -> Result<(Vec<Candidate>, i64), EtcdError> {
    let get = client.get(
        registration_prefix(key),
        Some(GetOptions::new().with_prefix()),
    );
    let resp = bounded(Op::Handoff, timing.request_timeout, get).await?;
    let revision = resp
        .header()
        .map(|h| h.revision())
        .ok_or_else(|| protocol(Op::Handoff, "read response without header"))?;
    let candidates = resp.kvs().iter().filter_map(candidate_of).collect();
    Ok((candidates, revision))
}

/// Hand the key over: `If ModRevision(key) == held.fencing_token AND ModRevision(registration)
/// == seen Then Put(key, successor id, successor's lease), Put(handoff note, successor's
/// lease)`. The key is never absent; the registration must still be as we saw it (there, and
/// healthy); the note wakes the successor alone. Returns whether it was handed over.
pub async fn transfer(
    client: &mut Client,
    timing: &Timing,
    key: &str,
    to: &Candidate,
    held: Term,
) -> Result<bool, EtcdError> {
    let note = HandoffNote {
        create_revision: held.create_revision,
    };
    let note = serde_json::to_string(&note)
        .map_err(|e| protocol(Op::Handoff, &format!("encoding the handoff note: {e}")))?;
    let under = || Some(PutOptions::new().with_lease(to.lease));
    let txn = Txn::new()
        .when([
            Compare::mod_revision(key, CompareOp::Equal, held.fencing_token),
            Compare::mod_revision(to.key.as_str(), CompareOp::Equal, to.mod_revision),
        ])
        .and_then([
            TxnOp::put(key, to.id.as_str(), under()),
            TxnOp::put(handoff_key(key, to.lease), note, under()),
        ]);
    let resp = bounded(Op::Handoff, timing.request_timeout, client.txn(txn)).await?;
    Ok(resp.succeeded())
}

/// Report candidates registering and going from `from_revision` on, until the task is
/// aborted; a watch that ends by itself is reported ([`Event::CandidatesWatchEnded`]), since
/// followers learn new leaders through it.
pub async fn watch_candidates(
    mut client: Client,
    timing: Timing,
    key: String,
    from_revision: i64,
    reports: Reports,
) {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(from_revision);
    let watch = client.watch(registration_prefix(&key), Some(options));
    let mut stream = match bounded(Op::Watch, timing.request_timeout, watch).await {
        Ok(stream) => stream,
        Err(e) => {
            let _ = reports.send(Report::Error(e)).await;
            let _ = reports
                .send(Report::Event(Event::CandidatesWatchEnded))
                .await;
            return;
        }
    };
    while let Ok(Some(resp)) = stream.message().await {
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let event = match event.event_type() {
                EventType::Delete => Event::CandidateGone {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                },
                EventType::Put => match candidate_of(kv) {
                    Some(candidate) => Event::CandidateRegistered { candidate },
                    None => continue,
                },
            };
            if reports.send(Report::Event(event)).await.is_err() {
                return;
            }
        }
        if resp.canceled() {
            break;
        }
    }
    let _ = reports
        .send(Report::Event(Event::CandidatesWatchEnded))
        .await;
}

/// Revoke a lease; the keys attached to it are deleted.
pub async fn revoke(
    client: &mut Client,
    lease: LeaseId,
    within: Duration,
) -> Result<(), EtcdError> {
    match bounded(Op::Revoke, within, client.lease_revoke(lease)).await {
        Ok(_) => Ok(()),
        // Already gone is what we wanted.
        Err(e) if e.is_lease_gone() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Keep `lease` alive every `timing.keepalive_interval` until the task is aborted, reporting
/// each acknowledgement with the time its request was sent. A reply with TTL 0 (or "lease not
/// found") is reported as an acknowledgement with TTL 0 and ends the task.
pub async fn keep_alive(mut client: Client, timing: Timing, lease: LeaseId, reports: Reports) {
    let mut retry = Backoff::unseeded(timing.backoff_base, timing.keepalive_interval);
    loop {
        let opened_at = Instant::now();
        let (mut keeper, mut stream) = match bounded(
            Op::KeepAlive,
            timing.request_timeout,
            client.lease_keep_alive(lease),
        )
        .await
        {
            Ok(pair) => pair,
            Err(e) if e.is_lease_gone() => {
                let _ = reports.send(gone(lease, opened_at)).await;
                return;
            }
            Err(e) => {
                let _ = reports.send(Report::Error(e)).await;
                sleep(retry.next_delay()).await;
                continue;
            }
        };
        // Opening the stream exchanged one keep-alive, answered with a positive TTL (the crate
        // checks); etcd restarts the countdown at the full granted TTL.
        let _ = reports.send(ack(lease, timing.ttl, opened_at)).await;
        let _ = reports
            .send(Report::KeepAliveRtt(opened_at.elapsed()))
            .await;
        retry.reset();
        let mut sent_at = opened_at;
        loop {
            sleep_until(sent_at + timing.keepalive_interval).await;
            sent_at = Instant::now();
            match renew(&mut keeper, &mut stream, &timing).await {
                Ok(ttl) => {
                    let _ = reports.send(Report::KeepAliveRtt(sent_at.elapsed())).await;
                    let _ = reports.send(ack(lease, ttl, sent_at)).await;
                    if ttl.is_zero() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = reports.send(Report::Error(e)).await;
                    break;
                }
            }
        }
        // Reopen the stream (possibly to another endpoint) after a short pause.
        sleep(retry.next_delay()).await;
    }
}

/// One keep-alive round trip on an open stream: the TTL etcd answered (0: lease gone).
async fn renew(
    keeper: &mut LeaseKeeper,
    stream: &mut LeaseKeepAliveStream,
    timing: &Timing,
) -> Result<Duration, EtcdError> {
    let client_error = |source| EtcdError::Client {
        op: Op::KeepAlive,
        source,
    };
    keeper.keep_alive().await.map_err(client_error)?;
    match timeout(timing.request_timeout, stream.message()).await {
        Ok(Ok(Some(resp))) => Ok(Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0))),
        Ok(Ok(None)) => Err(protocol(Op::KeepAlive, "keep-alive stream closed")),
        Ok(Err(source)) => Err(client_error(source)),
        Err(_) => Err(EtcdError::Timeout {
            op: Op::KeepAlive,
            after: timing.request_timeout,
        }),
    }
}

/// Watch the target from `from_revision` and report what its puts and deletes mean until the
/// watch ends, which is reported as [`Event::WatchFailed`]. The task never retries by itself:
/// after a broken watch the election re-reads the key before trusting anything again.
pub async fn watch(
    mut client: Client,
    timing: Timing,
    target: WatchTarget,
    from_revision: i64,
    generation: u64,
    reports: Reports,
) {
    let report = |event| Report::WatchEvent { generation, event };
    let mut options = WatchOptions::new().with_start_revision(from_revision);
    let mut ahead = target.ahead;
    if ahead.is_some() {
        options = options.with_prefix();
    }
    if !target.puts {
        options = options.with_filters([WatchFilterType::NoPut]);
    }
    let watch = async {
        let mut stream = client.watch(target.key.as_str(), Some(options)).await?;
        if let Some(note) = &target.handoff {
            // On the same stream: one watch for the key, one for a handoff to us.
            let options = WatchOptions::new().with_start_revision(from_revision);
            stream.watch(note.as_str(), Some(options)).await?;
        }
        Ok(stream)
    };
    let mut stream = match bounded(Op::Watch, timing.request_timeout, watch).await {
        Ok(stream) => stream,
        Err(e) => {
            let _ = reports.send(Report::Error(e)).await;
            let _ = reports.send(report(Event::WatchFailed)).await;
            return;
        }
    };
    loop {
        let message = stream.message().await;
        let resp = match message {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                let _ = reports
                    .send(Report::Error(protocol(Op::Watch, "watch stream closed")))
                    .await;
                break;
            }
            Err(source) => {
                let _ = reports
                    .send(Report::Error(EtcdError::Client {
                        op: Op::Watch,
                        source,
                    }))
                    .await;
                break;
            }
        };
        if resp.canceled() {
            let reason = if resp.compact_revision() > 0 {
                format!(
                    "watch cancelled: revision {from_revision} compacted (now {})",
                    resp.compact_revision()
                )
            } else {
                format!("watch cancelled: {}", resp.cancel_reason())
            };
            let _ = reports
                .send(Report::Error(protocol(Op::Watch, &reason)))
                .await;
            break;
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            if target.handoff.as_deref().map(str::as_bytes) == Some(kv.key()) {
                // A handoff to us, written with the key; its deletion (with our lease) says
                // nothing. The note's revision is the transfer's: our fencing token.
                let note = match event.event_type() {
                    EventType::Put => serde_json::from_slice::<HandoffNote>(kv.value()).ok(),
                    EventType::Delete => None,
                };
                if let Some(note) = note {
                    let term = Term {
                        fencing_token: kv.mod_revision(),
                        create_revision: note.create_revision,
                    };
                    if reports
                        .send(report(Event::HandedOver { term }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                continue;
            }
            let event = match (event.event_type(), &mut ahead) {
                (EventType::Delete, None) => Event::KeyDeleted,
                (EventType::Put, None) => Event::KeyPut {
                    holder: holder_of(kv),
                },
                (EventType::Delete, Some(ahead)) => match ahead.deleted(kv.key()) {
                    Some(event) => event,
                    None => continue,
                },
                (EventType::Put, Some(ahead)) => match ahead.put(kv.key(), holder_of(kv)) {
                    Some(event) => event,
                    None => continue,
                },
            };
            if reports.send(report(event)).await.is_err() {
                return;
            }
        }
    }
    let _ = reports.send(report(Event::WatchFailed)).await;
}

fn holder_of(kv: &KeyValue) -> Holder {
    Holder {
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        lease: kv.lease(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// A registration as a candidate; `None` for a value that is not a registration.
pub fn candidate_of(kv: &KeyValue) -> Option<Candidate> {
    let registration: Registration = serde_json::from_slice(kv.value()).ok()?;
    Some(Candidate {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        id: registration.id,
        revision: registration.revision,
        lease: kv.lease(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        healthy: registration.healthy,
        registered_at: registration.registered_at,
        leading: registration.leading,
    })
}

fn ack(lease: LeaseId, ttl: Duration, sent_at: Instant) -> Report {
    Report::Event(Event::KeepAliveAcked {
        lease,
        ttl,
        sent_at,
    })
}

fn gone(lease: LeaseId, sent_at: Instant) -> Report {
    ack(lease, Duration::ZERO, sent_at)
}

fn protocol(op: Op, msg: &str) -> EtcdError {
    EtcdError::Protocol {
        op,
        msg: msg.to_string(),
    }
}

async fn bounded<T>(
    op: Op,
    after: Duration,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(EtcdError::Client { op, source }),
        Err(_) => Err(EtcdError::Timeout { op, after }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(endpoint: &str, ca: bool, cert: bool) -> EtcdConfig {
        let file = |on: bool, name: &str| on.then(|| std::path::PathBuf::from(name));
        EtcdConfig {
            endpoints: vec![endpoint.to_string()],
            tls: (ca || cert).then(|| crate::config::TlsFiles {
                ca: file(ca, "ca.pem"),
                cert: file(cert, "client.pem"),
                key: file(cert, "client.key"),
            }),
            auth: None,
        }
    }

    fn refused() -> EtcdError {
        EtcdError::Client {
            op: Op::Grant,
            source: etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "received fatal alert: BadCertificate",
            )),
        }
    }

    #[test]
    fn a_refused_tls_connection_without_a_client_certificate_names_the_flags() {
        let how = Explain::for_config(&etcd("https://127.0.0.1:2379", true, false));
        let text = refused().explained(how).to_string();
        assert!(text.starts_with("grant: etcd closed the TLS connection; it may require a client certificate (--etcd-cert/--etcd-key): "), "{text}");
        assert!(
            text.contains("BadCertificate"),
            "the original error stays: {text}"
        );
    }

    #[test]
    fn the_certificate_hint_is_only_given_when_none_is_configured() {
        for how in [
            Explain::for_config(&etcd("https://127.0.0.1:2379", true, true)),
            Explain::for_config(&etcd("http://127.0.0.1:2379", false, false)),
        ] {
            let e = refused().explained(how);
            assert!(matches!(e, EtcdError::Client { .. }), "{e}");
        }
        let how = Explain::for_config(&etcd("https://127.0.0.1:2379", true, false));
        let other = EtcdError::Client {
            op: Op::Grant,
            source: etcd_client::Error::IoError(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )),
        };
        assert!(matches!(other.explained(how), EtcdError::Client { .. }));
    }
}
