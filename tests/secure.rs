//! A production etcd: TLS (server-only and mutual) and authentication.
//!
//! The sidecar must elect through them, refuse wrong trust or credentials with
//! a reason an operator can act on while it keeps retrying (never a crash,
//! never leadership), survive its auth token expiring, and never show the
//! password: not in logs, `/status`, `/metrics` or any other answer.
//! Certificates are made per test with `openssl` (see `elector_testkit::tls`).

use std::time::{Duration, Instant};

use elector_testkit::tls::{auth_etcd, expired_tls_etcd, tls_etcd, AuthEtcd, Pki};
use elector_testkit::*;

/// etcd's auth token lifetime in these tests: a token unused this long is
/// invalid, so anything the sidecar does after a quiet spell needs a new one.
const TOKEN_TTL: u64 = 2;

/// Watches a replica that cannot reach etcd for `period`: it must keep
/// running, keep its liveness probe green and never claim leadership.
fn assert_retrying_without_leadership(s: &mut Sidecar, period: Duration) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        assert!(
            s.is_running(),
            "{} keeps running (retrying) instead of exiting; log:\n{}",
            s.id(),
            tail(&s.logs(), 20)
        );
        assert_eq!(s.get("/leader").0, 503, "{} never leads", s.id());
        assert_eq!(s.get("/healthz").0, 200, "{} stays live", s.id());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of `elector_etcd_errors_total{op="<op>"}`.
fn etcd_errors(s: &Sidecar, op: &str) -> f64 {
    let (_, text) = s.get("/metrics");
    let prefix = format!("elector_etcd_errors_total{{op=\"{op}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Every answer and log line a replica gives, for a secret grep.
fn everything_shown(s: &Sidecar) -> String {
    let mut all = s.logs();
    for path in ["/leader", "/", "/status", "/metrics", "/healthz"] {
        if let Ok(r) = s.try_get(path) {
            all.push_str(&r.body);
            for (k, v) in &r.headers {
                all.push_str(&format!("\n{k}: {v}"));
            }
        }
    }
    all
}

fn assert_no_secret(s: &Sidecar, secret: &str) {
    let shown = everything_shown(s);
    assert!(
        !shown.contains(secret),
        "{} shows the password somewhere in its logs or answers",
        s.id()
    );
}

#[test]
fn elects_through_tls_trusting_the_ca() {
    let pki = Pki::new();
    let etcd = tls_etcd(&pki, &pki.server_cert, &pki.server_key, false);
    assert!(etcd.endpoint().starts_with("https://"));
    let key = unique_key("tls");
    let ca = pki.ca.display().to_string();
    let sidecars = replicas(
        &etcd.endpoint(),
        &key,
        2,
        &["--ttl", "5", "--etcd-cacert", &ca],
    );
    let leader = wait_for_one_leader(&sidecars, SOON);
    let kv = etcd.get(&key).expect("the leader's key, read over TLS");
    assert_eq!(kv.value, sidecars[leader].id());
    assert_eq!(sidecars[leader].fencing_token(), Some(kv.create_revision));
}

#[test]
fn elects_through_mutual_tls() {
    let pki = Pki::new();
    let etcd = tls_etcd(&pki, &pki.server_cert, &pki.server_key, true);
    let key = unique_key("mtls");
    let args = pki.sidecar_args(&pki.ca);
    let mut builder = Sidecar::builder()
        .endpoints(&etcd.endpoint())
        .key(&key)
        .ttl(5);
    for a in &args {
        builder = builder.arg(a);
    }
    let sidecars = vec![
        builder.clone().id("mtls-0").start(),
        builder.id("mtls-1").start(),
    ];
    let leader = wait_for_one_leader(&sidecars, SOON);
    let kv = etcd.get(&key).expect("the leader's key, read over mTLS");
    assert_eq!(kv.value, sidecars[leader].id());
    // The follower knows who leads: its watch works through mTLS too.
    let follower = &sidecars[1 - leader];
    assert!(
        wait_until(SOON, || follower.leader_view()["leader"]
            == kv.value.as_str()),
        "the follower names the leader: {}",
        follower.leader_view()
    );
}

#[test]
fn a_wrong_ca_is_reported_clearly_and_retried_without_leadership() {
    let pki = Pki::new();
    let etcd = tls_etcd(&pki, &pki.server_cert, &pki.server_key, true);
    let key = unique_key("wrong_ca");
    let wrong = pki.other_ca();
    let mut builder = Sidecar::builder()
        .on(&etcd.endpoint(), &key, "distrustful")
        .ttl(3);
    for a in pki.sidecar_args(&wrong) {
        builder = builder.arg(&a);
    }
    let mut s = builder.start();

    assert_retrying_without_leadership(&mut s, Duration::from_secs(3));
    let errors_then = etcd_errors(&s, "grant");
    assert_retrying_without_leadership(&mut s, Duration::from_secs(2));
    let errors_now = etcd_errors(&s, "grant");
    assert!(
        errors_then >= 1.0 && errors_now > errors_then,
        "it keeps retrying: grant errors {errors_then} then {errors_now}"
    );

    let logs = s.logs();
    let reason = logs
        .lines()
        .find(|l| l.contains("\"WARN\"") && l.contains("UnknownIssuer"))
        .unwrap_or_else(|| {
            panic!(
                "a warning names the certificate problem (UnknownIssuer); log:\n{}",
                tail(&logs, 20)
            )
        });
    assert!(
        reason.contains("invalid peer certificate"),
        "the reason is readable: {reason}"
    );
    // Retries are logged without flooding: one warning, then one per 10 s.
    let warnings = logs
        .lines()
        .filter(|l| l.contains("\"WARN\"") && l.contains("etcd request failed"))
        .count();
    assert!(
        warnings <= 3,
        "{warnings} warnings in ~5 s of retrying; log:\n{}",
        tail(&logs, 20)
    );
    let (_, status) = s.get_json("/status");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("UnknownIssuer")),
        "/status shows the reason: {status}"
    );
    assert_eq!(etcd.get(&key), None, "it never wrote the key");
}

#[test]
fn mutual_tls_without_a_client_certificate_names_the_missing_certificate() {
    let pki = Pki::new();
    let etcd = tls_etcd(&pki, &pki.server_cert, &pki.server_key, true);
    let key = unique_key("no_client_cert");
    let ca = pki.ca.display().to_string();
    // Trusts the right CA but has no --etcd-cert/--etcd-key: etcd closes the
    // connection after the handshake, and rustls only says "connection closed".
    let mut s = Sidecar::start(
        &etcd.endpoint(),
        &key,
        "certless",
        &["--ttl", "3", "--etcd-cacert", &ca],
    );

    assert_retrying_without_leadership(&mut s, Duration::from_secs(5));
    let logs = s.logs();
    let hints: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"WARN\"") && l.contains("may require a client certificate"))
        .collect();
    assert!(
        !hints.is_empty(),
        "a warning says etcd may want a client certificate; log:\n{}",
        tail(&logs, 20)
    );
    assert!(
        hints[0].contains("--etcd-cert") && hints[0].contains("--etcd-key"),
        "it names the flags: {}",
        hints[0]
    );
    // Like every retried failure: one warning, then at most one per 10 s.
    assert!(
        hints.len() <= 2,
        "{} hints in ~5 s of retrying; log:\n{}",
        hints.len(),
        tail(&logs, 20)
    );
    // Polled: on a loaded machine the latest error may be a timeout of the same
    // retried handshake for a moment.
    let mut status = serde_json::Value::Null;
    assert!(
        wait_until(SOON, || {
            status = s.get_json("/status").1;
            status["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("client certificate"))
        }),
        "/status shows the reason: {status}"
    );
    assert_eq!(etcd.get(&key), None, "it never wrote the key");
}

#[test]
fn an_expired_server_certificate_is_reported_clearly_and_retried() {
    let pki = Pki::new();
    let etcd = expired_tls_etcd(&pki);
    let key = unique_key("expired_cert");
    let ca = pki.ca.display().to_string();
    let mut s = Sidecar::start(
        &etcd.endpoint(),
        &key,
        "expired",
        &["--ttl", "3", "--etcd-cacert", &ca],
    );

    assert_retrying_without_leadership(&mut s, Duration::from_secs(3));
    let logs = s.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("\"WARN\"") && l.contains("certificate expired")),
        "a warning says the certificate expired; log:\n{}",
        tail(&logs, 20)
    );
    assert!(
        !logs.contains("may require a client certificate"),
        "a refused server certificate is not blamed on a missing client certificate; log:\n{}",
        tail(&logs, 20)
    );
}

/// Spawns a replica of `auth`'s etcd that authenticates as `user` with
/// `password` given in a file (`via_env` false) or in the environment.
fn auth_replica(
    auth: &AuthEtcd,
    key: &str,
    id: &str,
    password: &str,
    via_env: bool,
    extra: &[&str],
    dir: &std::path::Path,
) -> SidecarBuilder {
    let mut builder = Sidecar::builder()
        .on(&auth.etcd.endpoint(), key, id)
        .args(&["--etcd-user", &auth.user])
        .args(extra);
    if via_env {
        builder = builder.env("ELECTOR_ETCD_PASSWORD", password);
    } else {
        let file = dir.join(format!("{id}.password"));
        std::fs::write(&file, format!("{password}\n")).expect("writing the password file");
        builder = builder.args(&["--etcd-password-file", &file.display().to_string()]);
    }
    builder
}

#[test]
fn elects_with_a_password_from_a_file_or_the_environment() {
    let auth = auth_etcd(TOKEN_TTL);
    let dir = test_tempdir("secrets");
    let key = format!("{}lock", auth.prefix);
    let pw = auth.password.clone();
    let sidecars = vec![
        auth_replica(
            &auth,
            &key,
            "by-file",
            &pw,
            false,
            &["--ttl", "5"],
            dir.path(),
        )
        .start(),
        auth_replica(
            &auth,
            &key,
            "by-env",
            &pw,
            true,
            &["--ttl", "5"],
            dir.path(),
        )
        .start(),
    ];
    let leader = wait_for_one_leader(&sidecars, SOON);
    let kv = auth.etcd.get(&key).expect("the leader's key");
    assert_eq!(kv.value, sidecars[leader].id());
    let follower = &sidecars[1 - leader];
    assert!(
        wait_until(SOON, || follower.leader_view()["leader"]
            == kv.value.as_str()),
        "the other one follows: {}",
        follower.leader_view()
    );
    for s in &sidecars {
        assert_no_secret(s, &auth.password);
    }
}

#[test]
fn a_wrong_password_is_refused_with_a_clear_reason_and_retried() {
    let auth = auth_etcd(TOKEN_TTL);
    let dir = test_tempdir("secrets");
    let key = format!("{}lock", auth.prefix);
    let wrong = format!("Wrong-{}", random_suffix());
    // Not `start()`: it waits for /healthz, which is not the point here (see
    // `healthz_answers_while_etcd_refuses_the_credentials`).
    let mut s = auth_replica(
        &auth,
        &key,
        "wrong-pw",
        &wrong,
        false,
        &["--ttl", "3"],
        dir.path(),
    )
    .spawn();

    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert!(
            s.is_running(),
            "a refused password is retried, not fatal; log:\n{}",
            tail(&s.logs(), 20)
        );
        assert!(!s.is_leader(), "no leadership without etcd's word");
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs = s.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("\"WARN\"") && l.contains("authentication failed")),
        "a warning gives etcd's reason (authentication failed); log:\n{}",
        tail(&logs, 20)
    );
    assert!(!logs.contains(&wrong), "the wrong password is not logged");
    assert_eq!(auth.etcd.get(&key), None, "it never wrote the key");

    // With the right password a replica of the same key wins: the refusal
    // was about the credentials, nothing else.
    let good = auth_replica(
        &auth,
        &key,
        "right-pw",
        &auth.password,
        true,
        &["--ttl", "3"],
        dir.path(),
    )
    .start();
    assert!(
        wait_until(SOON, || good.is_leader()),
        "the right password elects"
    );
    assert!(s.is_running(), "the refused one is still retrying");
}

/// Issue 2: `/healthz` "never depends on etcd being reachable". With
/// credentials configured, authenticating waits for etcd to accept them; HTTP
/// must answer meanwhile, or a refused password would leave the liveness probe
/// unanswered and Kubernetes would restart the pod in a loop instead of
/// letting it report the reason and retry.
#[test]
fn healthz_answers_while_etcd_refuses_the_credentials() {
    let auth = auth_etcd(TOKEN_TTL);
    let dir = test_tempdir("secrets");
    let key = format!("{}lock", auth.prefix);
    let s = auth_replica(
        &auth,
        &key,
        "wrong-pw",
        "not-the-password",
        true,
        &[],
        dir.path(),
    )
    .spawn();
    assert!(
        wait_until(
            SOON,
            || matches!(s.try_get("/healthz"), Ok(r) if r.status == 200)
        ),
        "/healthz answers 200 while the password is refused; log:\n{}",
        tail(&s.logs(), 10)
    );
    assert_eq!(s.get("/leader").0, 503);
}

#[test]
fn leadership_survives_auth_token_expiry() {
    let auth = auth_etcd(TOKEN_TTL);
    let dir = test_tempdir("secrets");
    let key = format!("{}lock", auth.prefix);
    let pw = auth.password.clone();
    // A TTL much longer than the token's: the lease must outlive many tokens,
    // and a takeover inside SOON can only come from a revoke, not expiry.
    let extra = ["--ttl", "30"];
    let mut sidecars = vec![
        auth_replica(&auth, &key, "auth-0", &pw, false, &extra, dir.path()).start(),
        auth_replica(&auth, &key, "auth-1", &pw, true, &extra, dir.path()).start(),
    ];
    let leader = wait_for_one_leader(&sidecars, SOON);
    let before = auth.etcd.get(&key).expect("the leader's key");

    // Five token lifetimes: the leader keeps its lease and never stops
    // answering 200, the follower never starts.
    let until = Instant::now() + Duration::from_secs(5 * TOKEN_TTL);
    while Instant::now() < until {
        assert!(sidecars[leader].is_leader(), "the leader keeps leading");
        assert!(!sidecars[1 - leader].is_leader(), "the follower follows");
        std::thread::sleep(Duration::from_millis(100));
    }
    let kv = auth.etcd.get(&key).expect("still held");
    assert_eq!(kv.create_revision, before.create_revision, "the same term");
    assert!(
        matches!(auth.etcd.lease_ttl(kv.lease), Some(t) if t > 20),
        "its lease is still being renewed: {:?}",
        auth.etcd.lease_ttl(kv.lease)
    );

    // Every replica's token has expired by now. An operator deletes the key:
    // both campaign again (a transaction, which needs a valid token).
    auth.etcd.ctl(&["del", &key]);
    assert!(
        wait_until(SOON, || {
            auth.etcd
                .get(&key)
                .is_some_and(|kv| kv.create_revision > before.create_revision)
        }),
        "a replica re-authenticates and wins the deleted key"
    );
    let leader = wait_for_one_leader(&sidecars, SOON);
    // etcd saw an expired token presented (and then accepted a fresh one,
    // since the campaign above succeeded): the expiry really was exercised.
    assert!(
        auth.etcd.log().contains("invalid auth token"),
        "etcd refused at least one expired token; its log:\n{}",
        tail(&auth.etcd.log(), 10)
    );

    // Another quiet spell, then a handoff: the revoke needs a valid token too.
    std::thread::sleep(Duration::from_secs(2 * TOKEN_TTL + 1));
    let mut old = sidecars.remove(leader);
    old.signal(Signal::SIGTERM);
    assert_eq!(old.wait_exit(SOON).code(), Some(0));
    assert!(
        wait_until(SOON, || sidecars[0].is_leader()),
        "the revoke went through (not a 30 s expiry): the other replica leads"
    );
    assert!(
        !old.logs().contains("lease revoke failed"),
        "the revoke after the quiet spell succeeded; log:\n{}",
        tail(&old.logs(), 10)
    );
    for s in sidecars.iter().chain([&old]) {
        assert_no_secret(s, &auth.password);
    }
}

#[test]
fn no_secret_appears_in_logs_status_or_metrics() {
    let auth = auth_etcd(TOKEN_TTL);
    let dir = test_tempdir("secrets");
    let pw = auth.password.clone();
    // Right password, but a key outside the prefix the user may write: every
    // campaign is refused, so error paths run too.
    let forbidden = unique_key("forbidden");
    let mut refused = auth_replica(
        &auth,
        &forbidden,
        "refused",
        &pw,
        true,
        &["--ttl", "3"],
        dir.path(),
    )
    .start();
    // And a working pair, through both ways of passing the password.
    let key = format!("{}lock", auth.prefix);
    let working = vec![
        auth_replica(&auth, &key, "file", &pw, false, &["--ttl", "3"], dir.path()).start(),
        auth_replica(&auth, &key, "env", &pw, true, &["--ttl", "3"], dir.path()).start(),
    ];
    wait_for_one_leader(&working, SOON);

    assert_retrying_without_leadership(&mut refused, Duration::from_secs(2));
    let (_, status) = refused.get_json("/status");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("permission denied")),
        "the refusal gives etcd's reason: {status}"
    );
    for s in working.iter().chain([&refused]) {
        assert_no_secret(s, &pw);
    }
}
