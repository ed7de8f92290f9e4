//! `etcd-elector status`: who holds the key, how long the holder's lease has left, and who is
//! waiting, for an operator on a bad day. It reads etcd with the sidecar's own settings
//! (endpoints, key, TLS, credentials) and changes nothing, so it is safe from a laptop through
//! `kubectl port-forward` and from inside the image.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, GetOptions, SortOrder, SortTarget};
use serde::Serialize;
use tokio::time::timeout;

use crate::config::{Config, Protocol};
use crate::election::etcd::{self, ConnectError};
use crate::election::succession::Candidate;

/// How long the whole look may take: an operator wants an answer, not a retry loop.
const DEADLINE: Duration = Duration::from_secs(10);

/// Why there is no status to print.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("etcd did not answer within {DEADLINE:?} (endpoints {0})")]
    Unreachable(String),
    #[error("reading etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error(transparent)]
    Request(#[from] etcd::EtcdError),
}

/// The document `--json` prints.
#[derive(Debug, Serialize)]
pub struct Status {
    pub key: String,
    pub protocol: &'static str,
    pub holder: Option<Holder>,
    pub candidates: Vec<Waiting>,
}

#[derive(Debug, Serialize)]
pub struct Holder {
    pub id: String,
    pub fencing_token: i64,
    /// Hex, as `etcdctl lease` prints it; absent for a key without a lease.
    pub lease_id: Option<String>,
    /// Seconds until etcd expires the holder's lease unless it is renewed.
    pub lease_seconds_left: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct Waiting {
    pub id: String,
    /// The release it runs (`--revision`); empty when unset (lock protocol only).
    pub revision: String,
    /// Whether its application is healthy (`--app-health`; lock protocol only).
    pub app_healthy: Option<bool>,
    /// Seconds since it registered (lock protocol only).
    pub registered_seconds_ago: Option<u64>,
    pub lease_id: String,
    pub holder: bool,
}

/// Read the status and print it; the exit code.
pub async fn run(cfg: &Config, json: bool) -> Result<u8, StatusError> {
    let endpoints = cfg.etcd.endpoints.join(",");
    let status = timeout(DEADLINE, read(cfg))
        .await
        .map_err(|_| StatusError::Unreachable(endpoints))??;
    if json {
        match serde_json::to_string_pretty(&status) {
            Ok(text) => println!("{text}"),
            Err(e) => tracing::error!(error = %e, "encoding the status failed"),
        }
    } else {
        print!("{}", render(&status));
    }
    Ok(0)
}

async fn read(cfg: &Config) -> Result<Status, StatusError> {
    let timing = cfg.election.timing;
    let mut client = etcd::connect(&cfg.etcd, &timing).await?;
    let key = cfg.election.key.as_str();
    let (holder, candidates) = match cfg.election.protocol {
        Protocol::Lock => {
            let holder = client.get(key, None).await?.kvs().first().map(|kv| {
                (
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    kv.mod_revision(),
                    kv.lease(),
                )
            });
            let (registered, _) = etcd::read_candidates(&mut client, &timing, key).await?;
            (holder, registered)
        }
        Protocol::Election => {
            let queue = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend);
            let resp = client.get(format!("{key}/"), Some(queue)).await?;
            let waiting = resp
                .kvs()
                .iter()
                .map(|kv| Candidate {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    id: String::from_utf8_lossy(kv.value()).into_owned(),
                    revision: String::new(),
                    lease: kv.lease(),
                    create_revision: kv.create_revision(),
                    mod_revision: kv.mod_revision(),
                    healthy: true,
                    registered_at: 0,
                    leading: None,
                })
                .collect::<Vec<_>>();
            let holder = waiting
                .first()
                .map(|c| (c.id.clone(), c.create_revision, c.lease));
            (holder, waiting)
        }
    };
    let holder = match holder {
        Some((id, fencing_token, lease)) => Some(Holder {
            id,
            fencing_token,
            lease_id: (lease != 0).then(|| format!("{lease:x}")),
            lease_seconds_left: lease_left(&mut client, lease).await?,
        }),
        None => None,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let lock = cfg.election.protocol == Protocol::Lock;
    let mut waiting: Vec<Waiting> = candidates
        .into_iter()
        .map(|c| Waiting {
            holder: holder
                .as_ref()
                .is_some_and(|h| h.lease_id == Some(format!("{:x}", c.lease))),
            id: c.id,
            revision: c.revision,
            app_healthy: lock.then_some(c.healthy),
            registered_seconds_ago: (lock && c.registered_at > 0)
                .then(|| now.saturating_sub(c.registered_at)),
            lease_id: format!("{:x}", c.lease),
        })
        .collect();
    // The holder first, then the oldest registration: the order an operator reads in.
    waiting.sort_by_key(|w| (!w.holder, std::cmp::Reverse(w.registered_seconds_ago)));
    Ok(Status {
        key: key.to_string(),
        protocol: match cfg.election.protocol {
            Protocol::Lock => "lock",
            Protocol::Election => "election",
        },
        holder,
        candidates: waiting,
    })
}

/// Seconds left on `lease`; `None` for no lease or one that is gone.
async fn lease_left(client: &mut Client, lease: i64) -> Result<Option<i64>, StatusError> {
    if lease == 0 {
        return Ok(None);
    }
    match client.lease_time_to_live(lease, None).await {
        Ok(resp) if resp.ttl() >= 0 => Ok(Some(resp.ttl())),
        Ok(_) => Ok(None),
        Err(e) if matches!(&e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::NotFound) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The text an operator reads.
fn render(status: &Status) -> String {
    let mut out = format!(
        "key:        {} ({} protocol)\n",
        status.key, status.protocol
    );
    match &status.holder {
        Some(h) => {
            let left = h.lease_seconds_left.map_or("no lease".to_string(), |s| {
                format!("{s} s left on its lease")
            });
            out.push_str(&format!(
                "holder:     {} (fencing token {}, lease {}, {left})\n",
                h.id,
                h.fencing_token,
                h.lease_id.as_deref().unwrap_or("none"),
            ));
        }
        None => out.push_str("holder:     none (the key is free)\n"),
    }
    out.push_str(&format!("candidates: {}\n", status.candidates.len()));
    if !status.candidates.is_empty() {
        out.push_str(&format!(
            "  {:<24} {:<16} {:<10} {:<12} {}\n",
            "ID", "REVISION", "APP", "REGISTERED", "LEASE"
        ));
    }
    for c in &status.candidates {
        let app = match c.app_healthy {
            Some(true) => "healthy",
            Some(false) => "unhealthy",
            None => "-",
        };
        let since = c
            .registered_seconds_ago
            .map_or("-".to_string(), |s| format!("{s} s ago"));
        let revision = if c.revision.is_empty() {
            "-"
        } else {
            &c.revision
        };
        let mark = if c.holder { "  (holder)" } else { "" };
        out.push_str(&format!(
            "  {:<24} {:<16} {:<10} {:<12} {}{mark}\n",
            c.id, revision, app, since, c.lease_id
        ));
    }
    out
}
