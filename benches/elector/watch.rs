//! The bench's own view of etcd: a watch that timestamps every event the moment it arrives,
//! and a few reads. Async (etcd-client) underneath, blocking on top: the scenarios are written
//! as plain sequential code on the main thread.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, SortOrder, SortTarget, WatchOptions};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

pub use etcd_client::EventType as Kind;

/// One watch event and when the bench received it.
#[derive(Debug, Clone)]
pub struct WatchEv {
    pub at: Instant,
    pub kind: Kind,
    pub key: String,
    pub value: String,
    /// The revision of the change (the delete's or the put's).
    pub revision: i64,
}

/// An etcd client bound to the bench's runtime.
pub struct Ctl<'rt> {
    rt: &'rt Runtime,
    client: Client,
    endpoint: String,
}

impl<'rt> Ctl<'rt> {
    pub fn connect(rt: &'rt Runtime, endpoint: &str) -> Ctl<'rt> {
        let client = rt
            .block_on(Client::connect([endpoint], None))
            .expect("connecting the bench's etcd client");
        Ctl {
            rt,
            client,
            endpoint: endpoint.to_string(),
        }
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> Option<String> {
        self.first_value(key, None)
    }

    /// The value of the oldest key (lowest create revision) under `prefix`: the leader of an
    /// etcd `concurrency.Election`.
    pub fn first_created(&self, prefix: &str) -> Option<String> {
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        self.first_value(prefix, Some(opts))
    }

    fn first_value(&self, key: &str, opts: Option<GetOptions>) -> Option<String> {
        let mut c = self.client.clone();
        let resp = self.rt.block_on(c.get(key, opts)).ok()?;
        resp.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
    }

    /// How many keys start with `prefix`.
    pub fn count_prefix(&self, prefix: &str) -> i64 {
        let opts = GetOptions::new().with_prefix().with_count_only();
        let mut c = self.client.clone();
        self.rt
            .block_on(c.get(prefix, Some(opts)))
            .map_or(-1, |r| r.count())
    }

    /// Watch `key` (or every key under it when `prefix`) from the next revision on, once etcd
    /// has confirmed it.
    pub fn watch(&self, key: &str, prefix: bool) -> KeyWatch {
        // Its own connection, so that reads on the shared client never queue behind events.
        let create = async {
            let mut client = Client::connect([self.endpoint.as_str()], None).await?;
            let rev = client
                .get(key, None)
                .await?
                .header()
                .map_or(0, |h| h.revision());
            let mut opts = WatchOptions::new().with_start_revision(rev + 1);
            if prefix {
                opts = opts.with_prefix();
            }
            let mut stream = client.watch(key, Some(opts)).await?;
            // etcd's confirmation, a response of its own without events.
            stream.message().await?;
            Ok::<_, etcd_client::Error>((client, stream))
        };
        let created = async { tokio::time::timeout(Duration::from_secs(10), create).await };
        let (client, mut stream) = self
            .rt
            .block_on(created)
            .expect("bench watch was not created within 10 s")
            .expect("bench watch");
        let (tx, rx) = mpsc::channel();
        let task = self.rt.spawn(async move {
            let _client = client;
            while let Ok(Some(resp)) = stream.message().await {
                let at = Instant::now();
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let _ = tx.send(WatchEv {
                        at,
                        kind: ev.event_type(),
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: String::from_utf8_lossy(kv.value()).into_owned(),
                        revision: kv.mod_revision(),
                    });
                }
            }
        });
        KeyWatch { rx, task }
    }
}

/// A running watch; events arrive on `rx`. Stops on drop.
pub struct KeyWatch {
    pub rx: mpsc::Receiver<WatchEv>,
    task: JoinHandle<()>,
}

impl KeyWatch {
    /// The next event of `kind` within `timeout`, skipping others.
    pub fn next(&self, kind: Kind, timeout: Duration) -> Option<WatchEv> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok(ev) if ev.kind == kind => return Some(ev),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Forget events received so far.
    pub fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
