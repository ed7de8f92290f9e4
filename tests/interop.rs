//! Interoperability: the key is plain etcd data that etcdctl can read, and the
//! sidecar's transaction is the classic one, so a Go program on etcd's own
//! clientv3 (tests/interop/golocker) and the sidecar exclude each other.

use elector_testkit::*;

#[test]
fn etcdctl_get_shows_the_leader_id() {
    let etcd = Etcd::start();
    let key = unique_key("etcdctl_get");
    let sidecars = replicas(&etcd.endpoint(), &key, 2, &[]);
    let leader = wait_for_one_leader(&sidecars, SOON);

    let out = etcd.ctl(&["get", &key]);
    assert_eq!(out, format!("{key}\n{}\n", sidecars[leader].id()));
    let out = etcd.ctl(&["get", &key, "--print-value-only"]);
    assert_eq!(out.trim_end(), sidecars[leader].id());
}

#[test]
fn a_go_client_sees_the_sidecar_as_the_holder() {
    let etcd = Etcd::start();
    let key = unique_key("go_sees_sidecar");
    let sidecar = Sidecar::start(&etcd.endpoint(), &key, "rust-sidecar", &[]);
    assert!(
        wait_until(SOON, || sidecar.is_leader()),
        "the sidecar leads"
    );

    let go = GoLocker::run(&etcd.endpoint(), &key, "go-client", 5);
    assert_eq!(
        go.result,
        serde_json::json!({ "held": false, "holder": "rust-sidecar" }),
        "the Go client's transaction loses to the sidecar"
    );
    assert!(go.release().success());
    assert!(sidecar.is_leader(), "the sidecar still leads");
    assert_eq!(
        etcd.get(&key).map(|kv| kv.value).as_deref(),
        Some("rust-sidecar")
    );
}

#[test]
fn sidecars_wait_while_a_go_client_holds_the_key() {
    let etcd = Etcd::start();
    let key = unique_key("go_holds_first");
    // A long TTL: the sidecars can only win through the Go client's revoke.
    let go = GoLocker::run(&etcd.endpoint(), &key, "go-holder", 30);
    assert!(go.held(), "the Go client takes the free key: {}", go.result);
    let go_rev = go.result["rev"].as_i64().expect("rev is an integer");
    assert_eq!(etcd.get(&key).map(|kv| kv.create_revision), Some(go_rev));

    let sidecars = replicas(&etcd.endpoint(), &key, 2, &["--ttl", "3"]);
    for s in &sidecars {
        assert!(
            wait_until(SOON, || s.leader_view()["leader"] == "go-holder"),
            "{} reports the Go client as leader: {}",
            s.id(),
            s.leader_view()
        );
    }
    // Several of the sidecars' own keep-alive periods pass: still nobody else.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < until {
        for s in &sidecars {
            assert!(!s.is_leader(), "{} leads a key the Go client holds", s.id());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    assert!(go.release().success(), "the Go client releases and exits 0");

    let leader = wait_for_one_leader(&sidecars, SOON);
    let kv = etcd.get(&key).expect("a sidecar holds the key");
    assert_eq!(kv.value, sidecars[leader].id());
    assert!(
        kv.create_revision > go_rev,
        "a later term: {} > {go_rev}",
        kv.create_revision
    );
    assert_eq!(sidecars[leader].fencing_token(), Some(kv.create_revision));
}
