//! `--app-health`: a replica whose application is unhealthy does not campaign
//! and is nobody's successor; a leader whose application stays unhealthy hands
//! leadership to a replica whose application is healthy, or keeps it (and says
//! so) when there is none. Each replica gets a real HTTP application on
//! loopback whose health the test switches.

use std::time::Duration;

use elector_testkit::app::App;
use elector_testkit::*;

const LONG_TTL: &str = "30";

fn replica(etcd: &Etcd, key: &str, id: &str, app: &App) -> Sidecar {
    let args = ["--ttl", LONG_TTL, "--app-health", &app.url()];
    Sidecar::start(&etcd.endpoint(), key, id, &args)
}

#[test]
fn a_replica_whose_app_is_unhealthy_stands_by_and_leads_once_it_is_healthy() {
    let (etcd, key) = etcd_and_key("app_standby");
    let app = App::start(false);
    let s = replica(&etcd, &key, "only", &app);
    s.wait_state("standby");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!s.is_leader());
    assert_eq!(etcd.get(&key), None, "it never campaigned");
    assert_eq!(s.status()["app_healthy"], false);
    assert_eq!(s.metric("elector_app_healthy"), Some(0.0));

    app.set(true);
    s.wait_leading("it leads once healthy");
    assert_eq!(s.status()["app_healthy"], true);
    assert_eq!(s.metric("elector_app_healthy"), Some(1.0));
}

#[test]
fn a_leader_whose_app_stays_unhealthy_hands_over_and_goes_to_the_back_of_the_line() {
    let (etcd, key) = etcd_and_key("app_handover");
    let (app_a, app_b) = (App::start(true), App::start(true));
    let a = replica(&etcd, &key, "a", &app_a);
    a.wait_leading("a leads");
    let b = replica(&etcd, &key, "b", &app_b);
    b.wait_state("follower");
    let created = etcd.get(&key).expect("the key").create_revision;

    app_a.set(false);
    b.wait_leading("b, whose app is healthy, leads");
    assert!(!a.is_leader());
    assert_eq!(
        etcd.get(&key).map(|kv| kv.create_revision),
        Some(created),
        "handed over, never absent"
    );
    assert!(
        a.logs().contains("\"app_unhealthy\""),
        "the step-down names the reason"
    );
    // a stands by while its app is unhealthy.
    a.wait_state("standby");

    app_a.set(true);
    // a follows again once healthy.
    a.wait_state("follower");
    assert!(
        b.is_leader(),
        "b keeps leading: a went to the back of the line"
    );
}

#[test]
fn with_no_healthy_replica_the_leader_keeps_the_lock_and_says_so() {
    let (etcd, key) = etcd_and_key("app_no_successor");
    let (app_a, app_b) = (App::start(true), App::start(false));
    let a = replica(&etcd, &key, "a", &app_a);
    a.wait_leading("a leads");
    let b = replica(&etcd, &key, "b", &app_b);
    b.wait_state("standby");

    app_a.set(false);
    assert!(
        wait_until(SOON, || a.status()["no_healthy_successor"] == true),
        "a says there is no healthy successor: {}",
        a.status()
    );
    assert!(a.is_leader(), "and keeps the lock");
    assert_eq!(a.metric("elector_no_healthy_successor"), Some(1.0));
    assert!(a.logs().contains("\"no_healthy_successor\""));

    app_b.set(true);
    b.wait_leading("once b's app is healthy, leadership moves to b");
    assert!(!a.is_leader());
}
