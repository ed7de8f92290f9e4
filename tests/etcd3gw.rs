//! Interoperability with OpenStack's Python etcd client, etcd3gw, which talks to
//! etcd's gRPC-gateway JSON API over HTTP: its own lock (`etcd3gw.lock.Lock`,
//! run by tests/interop/etcd3gw_locker.py) runs the same compare-create-revision
//! transaction as the sidecar, so the two exclude each other on one key. Its
//! `Lock` keeps keys under `/locks/`, so these tests give the sidecar such a key.
//!
//! Needs target/etcd3gw-venv: `scripts/etcd3gw.sh` (scripts/test.sh runs it).

use elector_testkit::locker::{loses_to_a_sidecar, sidecars_wait_for};
use elector_testkit::*;

/// The gRPC-gateway path etcd3gw discovers from GET /version on etcd 3.4 and 3.5.
const GW_API: &str = "/v3/";

#[test]
fn etcd3gw_sees_the_sidecar_as_the_holder() {
    let etcd = Etcd::start();
    let key = gw_lock_key("gw_sees_sidecar");
    let verdict = serde_json::json!({ "held": false, "holder": "rust-sidecar", "api": GW_API });
    loses_to_a_sidecar(&etcd, &key, verdict, || {
        GwLocker::run(&etcd.endpoint(), &key, 5)
    });
}

#[test]
fn sidecars_wait_while_etcd3gw_holds_the_lock() {
    let etcd = Etcd::start();
    let key = gw_lock_key("gw_holds_first");
    // A long TTL: the sidecars can only win through etcd3gw's release.
    let gw = GwLocker::run(&etcd.endpoint(), &key, 30);
    assert!(gw.held(), "etcd3gw takes the free key: {}", gw.result);
    assert_eq!(gw.result["api"], GW_API);
    let value = gw.result["value"].as_str().expect("a string").to_string();
    sidecars_wait_for(&etcd, &key, gw, &value);
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
        move || GwLocker::run(&endpoint, &key, 5)
    });
    c.assert_never_held("etcd3gw");
}
