//! Interoperability with OpenStack's Python etcd client, etcd3gw, which talks to
//! etcd's gRPC-gateway JSON API over HTTP: its own lock (`etcd3gw.lock.Lock`,
//! run by tests/interop/etcd3gw_locker.py) runs the same compare-create-revision
//! transaction as the sidecar, so the two exclude each other on one key. Its
//! `Lock` keeps keys under `/locks/`, so these tests give the sidecar such a key.
//!
//! Needs target/etcd3gw-venv: `scripts/etcd3gw.sh` (scripts/test.sh runs it).

use std::time::{Duration, Instant};

use elector_testkit::*;

/// The gRPC-gateway path etcd3gw discovers from GET /version on etcd 3.4 and 3.5.
const GW_API: &str = "/v3/";

#[test]
fn etcd3gw_sees_the_sidecar_as_the_holder() {
    let etcd = Etcd::start();
    let key = gw_lock_key("gw_sees_sidecar");
    let sidecar = Sidecar::start(&etcd.endpoint(), &key, "rust-sidecar", &[]);
    assert!(
        wait_until(SOON, || sidecar.is_leader()),
        "the sidecar leads"
    );
    let created = etcd.get(&key).expect("the sidecar's key").create_revision;

    let gw = GwLocker::run(&etcd.endpoint(), &key, 5);
    assert_eq!(
        gw.result,
        serde_json::json!({ "held": false, "holder": "rust-sidecar", "api": GW_API }),
        "etcd3gw's Lock.acquire() loses to the sidecar"
    );
    assert!(gw.release().success());
    assert!(sidecar.is_leader(), "the sidecar still leads");
    let kv = etcd.get(&key).expect("the sidecar's key");
    assert_eq!(kv.value, "rust-sidecar");
    assert_eq!(kv.create_revision, created, "the same term");
}

#[test]
fn sidecars_wait_while_etcd3gw_holds_the_lock() {
    let etcd = Etcd::start();
    let key = gw_lock_key("gw_holds_first");
    // A long TTL: the sidecars can only win through etcd3gw's release.
    let gw = GwLocker::run(&etcd.endpoint(), &key, 30);
    assert!(gw.held(), "etcd3gw takes the free key: {}", gw.result);
    assert_eq!(gw.result["api"], GW_API);
    let gw_rev = gw.result["rev"].as_i64().expect("rev is an integer");
    let gw_value = gw.result["value"].as_str().expect("value is a string");
    let kv = etcd.get(&key).expect("etcd3gw's key");
    assert_eq!((kv.create_revision, kv.value.as_str()), (gw_rev, gw_value));

    let sidecars = replicas(&etcd.endpoint(), &key, 2, &["--ttl", "3"]);
    for s in &sidecars {
        assert!(
            wait_until(SOON, || s.leader_view()["leader"] == gw_value),
            "{} reports etcd3gw's lock as leader: {}",
            s.id(),
            s.leader_view()
        );
    }
    // Several of the sidecars' own keep-alive periods pass: still nobody else.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for s in &sidecars {
            assert!(!s.is_leader(), "{} leads a key etcd3gw holds", s.id());
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    assert!(gw.release().success(), "etcd3gw releases and exits 0");

    let leader = wait_for_one_leader(&sidecars, SOON);
    let kv = etcd.get(&key).expect("a sidecar holds the key");
    assert_eq!(kv.value, sidecars[leader].id());
    assert!(
        kv.create_revision > gw_rev,
        "a later term: {} > {gw_rev}",
        kv.create_revision
    );
    assert_eq!(sidecars[leader].fencing_token(), Some(kv.create_revision));
}

#[test]
fn etcd3gw_never_gets_the_lock_during_transfers() {
    let etcd = Etcd::start();
    let key = gw_lock_key("gw_transfers");
    // Fail now, not after 20 transfers, if the venv is missing.
    etcd3gw_python();
    let sidecars = replicas(&etcd.endpoint(), &key, 3, &["--ttl", "30"]);
    let c = resigns_under_contention(&etcd, &key, &sidecars, 20, {
        let (endpoint, key) = (etcd.endpoint(), key.clone());
        move || {
            let gw = GwLocker::run(&endpoint, &key, 5);
            let held = gw.held();
            let _ = gw.release();
            held
        }
    });
    c.assert_never_held("etcd3gw");
}
