//! `etcd-elector status`: with the sidecar's own settings it prints the holder
//! (id, fencing token, time left on its lease) and every registered candidate
//! (revision, application health, time since registering), as text or as a
//! JSON document; it reads etcd and changes nothing.

use std::time::Duration;

use elector_testkit::app::App;
use elector_testkit::*;

fn replica(etcd: &Etcd, key: &str, id: &str, revision: &str, app: &App) -> Sidecar {
    Sidecar::builder()
        .on(&etcd.endpoint(), key, id)
        .ttl(30)
        .args(&["--revision", revision, "--app-health", &app.url()])
        .start()
}

fn status(endpoint: &str, key: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["status", "--endpoints", endpoint, "--key", key];
    args.extend_from_slice(extra);
    let out = run_to_exit(&args, &[], Duration::from_secs(30));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_shows_the_holder_and_every_candidate_as_text_and_json() {
    let (etcd, key) = etcd_and_key("status");
    let (app_old, app_new, app_sick) = (App::start(true), App::start(true), App::start(false));
    let old = replica(&etcd, &key, "old-0", "rev-a", &app_old);
    old.wait_leading("old-0 leads");
    let new = replica(&etcd, &key, "new-0", "rev-b", &app_new);
    let sick = replica(&etcd, &key, "new-1", "rev-b", &app_sick);
    new.wait_state("follower");
    sick.wait_state("standby");
    let before = etcd.get(&key).expect("the key");

    // A replica registers as unhealthy until its application's first good answer, then again
    // as healthy; that second write may land a moment after it follows.
    let (mut code, mut text, mut stderr) = (None, String::new(), String::new());
    assert!(
        wait_until(SOON, || {
            (code, text, stderr) = status(&etcd.endpoint(), &key, &[]);
            text.lines()
                .any(|l| l.trim_start().starts_with("new-0") && l.contains(" healthy"))
        }),
        "new-0 registered as healthy:\n{text}{stderr}"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        text.contains(&format!(
            "holder:     old-0 (fencing token {}",
            before.mod_revision
        )),
        "{text}"
    );
    assert!(text.contains("s left on its lease"), "{text}");
    assert!(text.contains("candidates: 3"), "{text}");
    let line = |id: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(id))
            .unwrap_or_else(|| panic!("a line for {id} in:\n{text}"))
            .to_string()
    };
    assert!(line("old-0").contains("rev-a") && line("old-0").contains("(holder)"));
    assert!(line("new-0").contains("rev-b") && line("new-0").contains(" healthy"));
    assert!(line("new-1").contains("unhealthy"), "{}", line("new-1"));
    assert!(line("new-1").contains(" s ago"), "{}", line("new-1"));

    let (code, json, stderr) = status(&etcd.endpoint(), &key, &["--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&json).expect("a JSON document");
    assert_eq!(doc["protocol"], "lock");
    assert_eq!(doc["holder"]["id"], "old-0");
    assert_eq!(doc["holder"]["fencing_token"], before.mod_revision);
    let left = doc["holder"]["lease_seconds_left"]
        .as_i64()
        .expect("seconds left");
    assert!((1..=30).contains(&left), "{left}");
    let candidates = doc["candidates"].as_array().expect("candidates");
    assert_eq!(candidates.len(), 3);
    assert_eq!(candidates[0]["id"], "old-0", "the holder first");
    assert_eq!(candidates[0]["holder"], true);
    let by_id = |id: &str| {
        candidates
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {doc}"))
    };
    assert_eq!(by_id("new-1")["app_healthy"], false);
    assert_eq!(by_id("new-1")["revision"], "rev-b");
    assert_eq!(by_id("new-0")["app_healthy"], true);
    assert!(by_id("new-0")["registered_seconds_ago"].is_u64());

    assert_eq!(
        etcd.get(&key).map(|kv| kv.mod_revision),
        Some(before.mod_revision),
        "status changed nothing"
    );
}

#[test]
fn status_of_a_free_key_and_of_an_unreachable_etcd() {
    let (etcd, key) = etcd_and_key("status_free");
    let (code, text, _) = status(&etcd.endpoint(), &key, &[]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("holder:     none (the key is free)"),
        "{text}"
    );
    assert!(text.contains("candidates: 0"), "{text}");

    let (code, _, stderr) = status(&dead_endpoint(), &key, &[]);
    assert_eq!(code, Some(1), "etcd unreachable: exit 1");
    assert!(
        stderr.lines().last().is_some_and(|l| l.contains("etcd")),
        "one line naming etcd: {stderr}"
    );
}
