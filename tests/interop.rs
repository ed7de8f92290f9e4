//! Interoperability: the key is plain etcd data that etcdctl can read, and the
//! sidecar's transaction is the classic one, so a Go program on etcd's own
//! clientv3 (tests/interop/golocker) and the sidecar exclude each other.

use elector_testkit::locker::{loses_to_a_sidecar, sidecars_wait_for};
use elector_testkit::*;

#[test]
fn etcdctl_get_shows_the_leader_id() {
    let (etcd, key) = etcd_and_key("etcdctl_get");
    let sidecars = replicas(&etcd.endpoint(), &key, 2, &[]);
    let leader = wait_for_one_leader(&sidecars, SOON);

    let out = etcd.ctl(&["get", &key]);
    assert_eq!(out, format!("{key}\n{}\n", sidecars[leader].id()));
    let out = etcd.ctl(&["get", &key, "--print-value-only"]);
    assert_eq!(out.trim_end(), sidecars[leader].id());
}

#[test]
fn a_go_client_sees_the_sidecar_as_the_holder() {
    let (etcd, key) = etcd_and_key("go_sees_sidecar");
    let verdict = serde_json::json!({ "held": false, "holder": "rust-sidecar" });
    loses_to_a_sidecar(&etcd, &key, verdict, || {
        GoLocker::run(&etcd.endpoint(), &key, "go-client", 5)
    });
}

#[test]
fn sidecars_wait_while_a_go_client_holds_the_key() {
    let (etcd, key) = etcd_and_key("go_holds_first");
    // A long TTL: the sidecars can only win through the Go client's revoke.
    let go = GoLocker::run(&etcd.endpoint(), &key, "go-holder", 30);
    sidecars_wait_for(&etcd, &key, go, "go-holder");
}
