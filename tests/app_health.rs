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
    Sidecar::builder()
        .endpoints(&etcd.endpoint())
        .key(key)
        .id(id)
        .args(&["--ttl", LONG_TTL, "--app-health", &app.url()])
        .start()
}

fn state(s: &Sidecar) -> String {
    s.get_json("/status").1["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_replica_whose_app_is_unhealthy_stands_by_and_leads_once_it_is_healthy() {
    let etcd = Etcd::start();
    let key = unique_key("app_standby");
    let app = App::start(false);
    let s = replica(&etcd, &key, "only", &app);
    assert!(
        wait_until(SOON, || state(&s) == "standby"),
        "it stands by: {}",
        s.get_json("/status").1
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!s.is_leader());
    assert_eq!(etcd.get(&key), None, "it never campaigned");
    assert_eq!(s.get_json("/status").1["app_healthy"], false);
    assert_eq!(s.metric("elector_app_healthy"), Some(0.0));

    app.set(true);
    assert!(wait_until(SOON, || s.is_leader()), "it leads once healthy");
    assert_eq!(s.get_json("/status").1["app_healthy"], true);
    assert_eq!(s.metric("elector_app_healthy"), Some(1.0));
}

#[test]
fn a_leader_whose_app_stays_unhealthy_hands_over_and_goes_to_the_back_of_the_line() {
    let etcd = Etcd::start();
    let key = unique_key("app_handover");
    let (app_a, app_b) = (App::start(true), App::start(true));
    let a = replica(&etcd, &key, "a", &app_a);
    assert!(wait_until(SOON, || a.is_leader()), "a leads");
    let b = replica(&etcd, &key, "b", &app_b);
    assert!(wait_until(SOON, || state(&b) == "follower"), "b follows");
    let created = etcd.get(&key).expect("the key").create_revision;

    app_a.set(false);
    assert!(
        wait_until(SOON, || b.is_leader()),
        "b, whose app is healthy, leads"
    );
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
    assert!(
        wait_until(SOON, || state(&a) == "standby"),
        "a stands by while its app is unhealthy: {}",
        a.get_json("/status").1
    );

    app_a.set(true);
    assert!(
        wait_until(SOON, || state(&a) == "follower"),
        "a follows again once healthy"
    );
    assert!(
        b.is_leader(),
        "b keeps leading: a went to the back of the line"
    );
}

#[test]
fn with_no_healthy_replica_the_leader_keeps_the_lock_and_says_so() {
    let etcd = Etcd::start();
    let key = unique_key("app_no_successor");
    let (app_a, app_b) = (App::start(true), App::start(false));
    let a = replica(&etcd, &key, "a", &app_a);
    assert!(wait_until(SOON, || a.is_leader()), "a leads");
    let b = replica(&etcd, &key, "b", &app_b);
    assert!(wait_until(SOON, || state(&b) == "standby"), "b stands by");

    app_a.set(false);
    assert!(
        wait_until(SOON, || a.get_json("/status").1["no_healthy_successor"]
            == true),
        "a says there is no healthy successor: {}",
        a.get_json("/status").1
    );
    assert!(a.is_leader(), "and keeps the lock");
    assert_eq!(a.metric("elector_no_healthy_successor"), Some(1.0));
    assert!(a.logs().contains("\"no_healthy_successor\""));

    app_b.set(true);
    assert!(
        wait_until(SOON, || b.is_leader()),
        "once b's app is healthy, leadership moves to b"
    );
    assert!(!a.is_leader());
}
