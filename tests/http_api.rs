//! The HTTP contract: `/leader`, `/`, `/healthz`, `/status`, `/metrics`, and
//! how the server treats requests it does not serve (404, 405, oversize
//! headers, idle and half-sent connections).

use std::io::{Read, Write};
use std::net::TcpStream;

use elector_testkit::*;

/// Two replicas of one key and the index of the leader.
fn leader_and_follower(name: &str) -> (Etcd, String, Vec<Sidecar>, usize) {
    let (etcd, key, sidecars) = fresh_replicas(name, 2, &[]);
    let leader = wait_for_one_leader(&sidecars, SOON);
    // The follower learns the leader.
    sidecars[1 - leader].wait_following(sidecars[leader].id());
    (etcd, key, sidecars, leader)
}

#[test]
fn leader_endpoint_bodies_on_the_leader_and_a_follower() {
    let (etcd, key, sidecars, leader) = leader_and_follower("leader_bodies");
    let (l, f) = (&sidecars[leader], &sidecars[1 - leader]);
    let token = etcd.get(&key).expect("key").create_revision;

    let (status, body) = l.get_json("/leader");
    assert_eq!(status, 200);
    assert_eq!(body["is_leader"], true);
    assert_eq!(body["identity"], l.id());
    assert_eq!(body["leader"], l.id());
    assert_eq!(body["fencing_token"], token);
    assert_eq!(body["key"], key.as_str());

    let (status, body) = f.get_json("/leader");
    assert_eq!(status, 503);
    assert_eq!(body["is_leader"], false);
    assert_eq!(body["identity"], f.id());
    assert_eq!(body["leader"], l.id());
    assert!(
        body["fencing_token"].is_null() || body["fencing_token"].is_i64(),
        "fencing_token is an integer or null: {body}"
    );
    assert_eq!(body["key"], key.as_str());
}

#[test]
fn root_names_the_leader_on_every_replica() {
    let (_etcd, _key, sidecars, leader) = leader_and_follower("root_names_leader");
    let expected = serde_json::json!({ "name": sidecars[leader].id() });
    for s in &sidecars {
        let (status, body) = s.get_json("/");
        assert_eq!(status, 200, "{}: GET / is always 200", s.id());
        assert_eq!(body, expected, "{}", s.id());
    }
}

#[test]
fn bodies_without_any_leader() {
    // No etcd at all: nobody can know a leader.
    let key = unique_key("no_leader_bodies");
    let s = Sidecar::start(&dead_endpoint(), &key, "alone", &[]);

    let (status, body) = s.get_json("/leader");
    assert_eq!(status, 503);
    assert_eq!(
        body,
        serde_json::json!({
            "is_leader": false,
            "identity": "alone",
            "leader": null,
            "fencing_token": null,
            "key": key,
        })
    );
    let (status, body) = s.get_json("/");
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({ "name": "" }));
}

#[test]
fn head_leader_has_the_status_and_no_body() {
    let (_etcd, _key, sidecars, leader) = leader_and_follower("head_leader");
    for (s, expected) in [(&sidecars[leader], 200), (&sidecars[1 - leader], 503)] {
        assert_eq!(s.head("/leader").status, expected, "{}", s.id());
        // Everything the server sent until it closed, read raw.
        let mut stream = http::connect(s.addr()).expect("connect");
        let request = format!("HEAD /leader HTTP/1.1\r\nHost: {}\r\n", s.addr());
        write!(stream, "{request}Connection: close\r\n\r\n").expect("send");
        let mut all = String::new();
        stream.read_to_string(&mut all).expect("read until close");
        let (_, body) = all.split_once("\r\n\r\n").expect("a response head");
        assert_eq!(body, "", "HEAD has no body: {all:?}");
    }
}

#[test]
fn unknown_paths_are_404_and_other_methods_405_with_allow() {
    let (_etcd, _key, sidecars, leader) = leader_and_follower("unknown_404_methods_405");
    let s = &sidecars[leader];
    for path in ["/nope", "/leaderx", "/leader/extra", "/metrics/x"] {
        let (status, body) = s.get(path);
        assert_eq!(status, 404, "GET {path}: {body}");
    }
    for (method, path) in [
        ("POST", "/leader"),
        ("PUT", "/"),
        ("DELETE", "/healthz"),
        ("PATCH", "/status"),
    ] {
        let r = http::simple(s.addr(), method, path, b"{}").expect("an answer");
        assert_eq!(r.status, 405, "{method} {path}: {r:?}");
        let allow = r.header("allow").unwrap_or_default();
        assert!(
            allow.contains("GET"),
            "{method} {path}: Allow lists GET: {r:?}"
        );
    }
    // And POST via the fixture helper, for the record.
    assert_eq!(s.post("/leader", "").status, 405);
}

#[test]
fn an_oversize_header_is_rejected_and_the_server_keeps_serving() {
    let (_etcd, _key, sidecars, leader) = leader_and_follower("oversize_header");
    let s = &sidecars[leader];
    // 64 KiB of header: far more than any probe sends, and below hyper's
    // own default limit (~400 KiB), so only a bound the sidecar sets rejects it.
    let big = "a".repeat(64 * 1024);
    let mut stream = http::connect(s.addr()).expect("connect");
    let head = format!("GET /leader HTTP/1.1\r\nHost: {}\r\nX-Big: ", s.addr());
    // The server may answer and close before we are done writing.
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(big.as_bytes()))
        .and_then(|_| stream.write_all(b"\r\n\r\n"));
    match http::read_response(&mut stream, false) {
        Ok(r) => assert!(
            (400..500).contains(&r.status),
            "an oversize header gets a 4xx (431), got {} {}",
            r.status,
            r.body
        ),
        // A reset after the answer can swallow it; what matters is that no
        // 2xx came and the server lives on.
        Err(e) => eprintln!("no readable answer to the oversize request ({e}); connection closed"),
    }
    drop(stream);

    let (status, _) = s.get("/leader");
    assert_eq!(status, 200, "still serving after the oversize request");
    let (status, _) = s.get("/healthz");
    assert_eq!(status, 200);
}

#[test]
fn idle_and_half_sent_connections_do_not_delay_a_probe() {
    let (_etcd, _key, sidecars, leader) = leader_and_follower("idle_connections");
    let s = &sidecars[leader];
    let mut held = Vec::new();
    for i in 0..200 {
        let mut c = TcpStream::connect(s.addr()).expect("connect an idle client");
        if i % 2 == 1 {
            // Half a request, never finished.
            let _ = c.write_all(b"GET /leader HTTP/1.1\r\nHost: x\r\nX-Slow: ");
        }
        held.push(c);
    }

    // The probe client gives up after its own I/O timeout (10 s), so an
    // answer at all means it was not starved.
    let r = s
        .try_get("/leader")
        .expect("a probe is answered despite 200 idle connections");
    assert_eq!(r.status, 200);
    let r = s.try_get("/healthz").expect("healthz is answered too");
    assert_eq!(r.status, 200);
    drop(held);
}

#[test]
fn metrics_expose_the_election() {
    let (_etcd, _key, sidecars, leader) = leader_and_follower("metrics");
    let (status, text) = sidecars[leader].get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "elector_is_leader",
        "elector_leader_transitions_total",
        "elector_campaigns_total",
        "elector_etcd_errors_total",
        "elector_lease_ttl_seconds",
        "elector_build_info",
    ] {
        assert!(text.contains(name), "/metrics has {name}:\n{text}");
    }
    let l = &sidecars[leader];
    assert_eq!(l.metric("elector_is_leader"), Some(1.0), "on the leader");
    assert!(
        l.campaigns() >= 1,
        "the leader campaigned at least once:\n{text}"
    );
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")),
        "build info carries the version:\n{text}"
    );

    // (`metric` checks that /metrics answers 200.)
    let on_the_follower = sidecars[1 - leader].metric("elector_is_leader");
    assert_eq!(on_the_follower, Some(0.0), "on the follower");
}

#[test]
fn status_reports_state_lease_transitions_and_version() {
    let (_etcd, _key, sidecars, leader) = leader_and_follower("status");
    for (s, state) in [
        (&sidecars[leader], "leader"),
        (&sidecars[1 - leader], "follower"),
    ] {
        let ((status, body), id) = (s.get_json("/status"), s.id());
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(body["state"], state, "{id}: {body}");
        for field in ["lease_id", "transitions", "last_error", "version"] {
            assert!(
                body.get(field).is_some(),
                "{id}: /status has {field}: {body}"
            );
        }
        assert!(!body["lease_id"].is_null(), "{id} holds a lease: {body}");
        assert!(
            body["transitions"].is_u64(),
            "{id}: transitions is a count: {body}"
        );
        let version = body["version"].as_str();
        let ours = version.is_some_and(|v| v.contains(env!("CARGO_PKG_VERSION")));
        assert!(ours, "{id}: version: {body}");
    }
    let body = sidecars[leader].status();
    assert!(
        body["transitions"].as_u64() >= Some(1),
        "becoming leader is a transition: {body}"
    );
}

#[test]
fn healthz_is_200() {
    let (_etcd, _key, sidecars, _) = leader_and_follower("healthz");
    for s in &sidecars {
        assert_eq!(s.get("/healthz").0, 200, "{}", s.id());
    }
}
