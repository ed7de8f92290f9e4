//! A production etcd: TLS (server-only and mutual) and authentication.
//!
//! The sidecar must elect through them, refuse wrong trust or credentials with
//! a reason an operator can act on while it keeps retrying (never a crash,
//! never leadership), survive its auth token expiring, and never show the
//! password: not in logs, `/status`, `/metrics` or any other answer.
//! Certificates are made per test (see `elector_testkit::tls`).

use std::path::Path;
use std::time::Duration;

use elector_testkit::tls::{auth_etcd, expired_tls_etcd, tls_etcd, AuthEtcd, Pki};
use elector_testkit::*;

/// etcd's auth token lifetime in these tests: a token unused this long is
/// invalid, so anything the sidecar does after a quiet spell needs a new one.
const TOKEN_TTL: u64 = 2;

/// Watches a replica that cannot reach etcd for `period`: it must keep
/// running, keep its liveness probe green and never claim leadership.
fn assert_retrying_without_leadership(s: &mut Sidecar, period: Duration) {
    throughout(period, Duration::from_millis(200), || {
        assert!(
            s.is_running(),
            "{} keeps running (retrying) instead of exiting; log:\n{}",
            s.id(),
            tail(&s.logs(), 20)
        );
        assert_eq!(s.get("/leader").0, 503, "{} never leads", s.id());
        assert_eq!(s.get("/healthz").0, 200, "{} stays live", s.id());
    });
}

/// The value of `elector_etcd_errors_total{op="<op>"}`.
fn etcd_errors(s: &Sidecar, op: &str) -> f64 {
    s.metric(&format!("elector_etcd_errors_total{{op=\"{op}\"}}"))
        .unwrap_or(0.0)
}

/// The warnings in `logs` that mention `about`.
fn warnings<'a>(logs: &'a str, about: &str) -> Vec<&'a str> {
    logs.lines()
        .filter(|l| l.contains("\"WARN\"") && l.contains(about))
        .collect()
}

/// The warnings in `logs` that mention `about`, which must be at least one:
/// the reason an operator reads.
fn warned<'a>(logs: &'a str, about: &str) -> Vec<&'a str> {
    let found = warnings(logs, about);
    assert!(
        !found.is_empty(),
        "a warning mentions {about:?}; log:\n{}",
        tail(logs, 20)
    );
    found
}

/// Checks that `/status` gives a last error mentioning `reason`, polled for
/// `within` (zero: one look), the reason an operator reads.
fn assert_last_error(s: &Sidecar, reason: &str, within: Duration) {
    let mut status = serde_json::Value::Null;
    assert!(
        wait_until(within, || {
            status = s.status();
            status["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(reason))
        }),
        "/status shows the reason ({reason}): {status}"
    );
}

/// Checks that none of `sidecars` shows `secret` in its log or any answer.
fn assert_no_secret<'a>(sidecars: impl IntoIterator<Item = &'a Sidecar>, secret: &str) {
    for s in sidecars {
        let mut shown = s.logs();
        for path in ["/leader", "/", "/status", "/metrics", "/healthz"] {
            if let Ok(r) = s.try_get(path) {
                shown.push_str(&r.body);
                for (k, v) in &r.headers {
                    shown.push_str(&format!("\n{k}: {v}"));
                }
            }
        }
        assert!(
            !shown.contains(secret),
            "{} shows the password somewhere in its logs or answers",
            s.id()
        );
    }
}

/// A replica of `key` that trusts `pki`'s CA and has no client certificate.
fn trusting_ca(pki: &Pki, etcd: &Etcd, key: &str) -> SidecarBuilder {
    let ca = pki.ca.display().to_string();
    let builder = Sidecar::builder().endpoints(&etcd.endpoint()).key(key);
    builder.args(&["--etcd-cacert", &ca])
}

/// A replica of `key` that presents `pki`'s client certificate and trusts `ca`.
fn presenting_client_cert(pki: &Pki, ca: &Path, etcd: &Etcd, key: &str) -> SidecarBuilder {
    let builder = Sidecar::builder().endpoints(&etcd.endpoint()).key(key);
    pki.sidecar_args(ca)
        .iter()
        .fold(builder, |b, arg| b.arg(arg))
}

/// The one leader among `sidecars` once etcd's `key` (read as root or over
/// the same TLS) names it: its index and the key.
fn elected(etcd: &Etcd, key: &str, sidecars: &[Sidecar]) -> (usize, KeyValue) {
    let leader = wait_for_one_leader(sidecars, SOON);
    let kv = etcd.get(key).expect("the leader's key");
    assert_eq!(kv.value, sidecars[leader].id());
    (leader, kv)
}

#[test]
fn elects_through_tls_trusting_the_ca_and_through_mutual_tls() {
    for (case, mutual) in [("tls", false), ("mtls", true)] {
        let pki = Pki::new();
        let etcd = tls_etcd(&pki, mutual);
        assert!(etcd.endpoint().starts_with("https://"), "{case}");
        let key = unique_key(case);
        let builder = match mutual {
            false => trusting_ca(&pki, &etcd, &key),
            true => presenting_client_cert(&pki, &pki.ca, &etcd, &key),
        };
        let sidecars: Vec<Sidecar> = (0..2)
            .map(|i| builder.clone().id(&format!("{case}-{i}")).ttl(5).start())
            .collect();
        let (leader, kv) = elected(&etcd, &key, &sidecars);
        let token = sidecars[leader].fencing_token();
        assert_eq!(token, Some(kv.create_revision), "{case}");
        // The follower knows who leads: its watch works through TLS too.
        sidecars[1 - leader].wait_following(&kv.value);
    }
}

#[test]
fn a_wrong_ca_is_reported_clearly_and_retried_without_leadership() {
    let pki = Pki::new();
    let etcd = tls_etcd(&pki, true);
    let key = unique_key("wrong_ca");
    let mut s = presenting_client_cert(&pki, &pki.other_ca, &etcd, &key)
        .id("distrustful")
        .ttl(3)
        .start();

    assert_retrying_without_leadership(&mut s, Duration::from_secs(3));
    let errors_then = etcd_errors(&s, "grant");
    assert_retrying_without_leadership(&mut s, Duration::from_secs(2));
    let errors_now = etcd_errors(&s, "grant");
    assert!(
        errors_then >= 1.0 && errors_now > errors_then,
        "it keeps retrying: grant errors {errors_then} then {errors_now}"
    );

    let logs = s.logs();
    let reason = warned(&logs, "UnknownIssuer")[0];
    assert!(
        reason.contains("invalid peer certificate"),
        "the reason is readable: {reason}"
    );
    // Retries are logged without flooding: one warning, then one per 10 s.
    let failures = warnings(&logs, "etcd request failed").len();
    assert!(
        failures <= 3,
        "{failures} warnings in ~5 s of retrying; log:\n{}",
        tail(&logs, 20)
    );
    assert_last_error(&s, "UnknownIssuer", Duration::ZERO);
    assert_eq!(etcd.get(&key), None, "it never wrote the key");
}

#[test]
fn mutual_tls_without_a_client_certificate_names_the_missing_certificate() {
    let pki = Pki::new();
    let etcd = tls_etcd(&pki, true);
    let key = unique_key("no_client_cert");
    // Trusts the right CA but has no --etcd-cert/--etcd-key: etcd closes the
    // connection after the handshake, and rustls only says "connection closed".
    let mut s = trusting_ca(&pki, &etcd, &key).id("certless").ttl(3).start();

    assert_retrying_without_leadership(&mut s, Duration::from_secs(5));
    let logs = s.logs();
    let hints = warned(&logs, "may require a client certificate");
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
    assert_last_error(&s, "client certificate", SOON);
    assert_eq!(etcd.get(&key), None, "it never wrote the key");
}

#[test]
fn an_expired_server_certificate_is_reported_clearly_and_retried() {
    let pki = Pki::new();
    let etcd = expired_tls_etcd(&pki);
    let key = unique_key("expired_cert");
    let mut s = trusting_ca(&pki, &etcd, &key).id("expired").ttl(3).start();

    assert_retrying_without_leadership(&mut s, Duration::from_secs(3));
    let logs = s.logs();
    warned(&logs, "certificate expired");
    assert!(
        !logs.contains("may require a client certificate"),
        "a refused server certificate is not blamed on a missing client certificate; log:\n{}",
        tail(&logs, 20)
    );
}

/// Where a replica reads its password: `--etcd-password-file` or
/// `ELECTOR_ETCD_PASSWORD`.
#[derive(Clone, Copy)]
enum Password {
    File,
    Env,
}

/// An etcd with authentication, the key its test user may write, and a
/// directory for password files.
struct AuthWorld {
    auth: AuthEtcd,
    key: String,
    dir: tempfile::TempDir,
}

impl AuthWorld {
    fn new() -> AuthWorld {
        let auth = auth_etcd(TOKEN_TTL);
        let key = format!("{}lock", auth.prefix);
        let dir = test_tempdir("secrets");
        AuthWorld { auth, key, dir }
    }

    /// A replica of `key` that authenticates as the test user with
    /// `password`, read from `from`.
    fn replica_of(&self, key: &str, id: &str, password: &str, from: Password) -> SidecarBuilder {
        let builder = Sidecar::builder()
            .on(&self.auth.etcd.endpoint(), key, id)
            .args(&["--etcd-user", &self.auth.user]);
        match from {
            Password::Env => builder.env("ELECTOR_ETCD_PASSWORD", password),
            Password::File => {
                let file = self.dir.path().join(format!("{id}.password"));
                std::fs::write(&file, format!("{password}\n")).expect("writing the password file");
                builder.args(&["--etcd-password-file", &file.display().to_string()])
            }
        }
    }

    /// [`AuthWorld::replica_of`] the key the test user may write.
    fn replica(&self, id: &str, password: &str, from: Password) -> SidecarBuilder {
        self.replica_of(&self.key, id, password, from)
    }
}

#[test]
fn elects_with_a_password_from_a_file_or_the_environment() {
    let w = AuthWorld::new();
    let pw = &w.auth.password;
    let sidecars = vec![
        w.replica("by-file", pw, Password::File).ttl(5).start(),
        w.replica("by-env", pw, Password::Env).ttl(5).start(),
    ];
    let (leader, kv) = elected(&w.auth.etcd, &w.key, &sidecars);
    // Its watch works through authentication too.
    sidecars[1 - leader].wait_following(&kv.value);
    assert_no_secret(&sidecars, pw);
}

#[test]
fn a_wrong_password_is_refused_with_a_clear_reason_and_retried() {
    let w = AuthWorld::new();
    let wrong = format!("Wrong-{}", random_suffix());
    // Not `start()`: it waits for /healthz, which is not the point here (see
    // `healthz_answers_while_etcd_refuses_the_credentials`).
    let mut s = w.replica("wrong-pw", &wrong, Password::File).ttl(3).spawn();

    throughout(Duration::from_secs(4), Duration::from_millis(200), || {
        assert!(
            s.is_running(),
            "a refused password is retried, not fatal; log:\n{}",
            tail(&s.logs(), 20)
        );
        assert!(!s.is_leader(), "no leadership without etcd's word");
    });
    let logs = s.logs();
    warned(&logs, "authentication failed");
    assert!(!logs.contains(&wrong), "the wrong password is not logged");
    assert_eq!(w.auth.etcd.get(&w.key), None, "it never wrote the key");

    // With the right password a replica of the same key wins: the refusal
    // was about the credentials, nothing else.
    let good = w
        .replica("right-pw", &w.auth.password, Password::Env)
        .ttl(3)
        .start();
    good.wait_leading("the right password elects");
    assert!(s.is_running(), "the refused one is still retrying");
}

/// Issue 2: `/healthz` "never depends on etcd being reachable". With
/// credentials configured, authenticating waits for etcd to accept them; HTTP
/// must answer meanwhile, or a refused password would leave the liveness probe
/// unanswered and Kubernetes would restart the pod in a loop instead of
/// letting it report the reason and retry.
#[test]
fn healthz_answers_while_etcd_refuses_the_credentials() {
    let w = AuthWorld::new();
    let s = w
        .replica("wrong-pw", "not-the-password", Password::Env)
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
    let w = AuthWorld::new();
    let (etcd, key, pw) = (&w.auth.etcd, w.key.as_str(), &w.auth.password);
    // A TTL much longer than the token's: the lease must outlive many tokens,
    // and a takeover inside SOON can only come from a revoke, not expiry.
    let mut sidecars = vec![
        w.replica("auth-0", pw, Password::File).ttl(30).start(),
        w.replica("auth-1", pw, Password::Env).ttl(30).start(),
    ];
    let (leader, before) = elected(etcd, key, &sidecars);

    // Five token lifetimes: the leader keeps its lease and never stops
    // answering 200, the follower never starts.
    let spell = Duration::from_secs(5 * TOKEN_TTL);
    throughout(spell, Duration::from_millis(100), || {
        assert!(sidecars[leader].is_leader(), "the leader keeps leading");
        assert!(!sidecars[1 - leader].is_leader(), "the follower follows");
    });
    let kv = etcd.get(key).expect("still held");
    assert_eq!(kv.create_revision, before.create_revision, "the same term");
    assert!(
        matches!(etcd.lease_ttl(kv.lease), Some(t) if t > 20),
        "its lease is still being renewed: {:?}",
        etcd.lease_ttl(kv.lease)
    );

    // Every replica's token has expired by now. An operator deletes the key:
    // both campaign again (a transaction, which needs a valid token).
    etcd.ctl(&["del", key]);
    assert!(
        wait_until(SOON, || {
            etcd.get(key)
                .is_some_and(|kv| kv.create_revision > before.create_revision)
        }),
        "a replica re-authenticates and wins the deleted key"
    );
    let leader = wait_for_one_leader(&sidecars, SOON);
    // etcd saw an expired token presented (and then accepted a fresh one,
    // since the campaign above succeeded): the expiry really was exercised.
    assert!(
        etcd.log().contains("invalid auth token"),
        "etcd refused at least one expired token; its log:\n{}",
        tail(&etcd.log(), 10)
    );

    // Another quiet spell, then a handoff: the revoke needs a valid token too.
    std::thread::sleep(Duration::from_secs(2 * TOKEN_TTL + 1));
    let mut old = sidecars.remove(leader);
    old.signal(Signal::SIGTERM);
    assert_eq!(old.wait_exit(SOON).code(), Some(0));
    sidecars[0]
        .wait_leading("the revoke went through (not a 30 s expiry): the other replica leads");
    assert!(
        !old.logs().contains("lease revoke failed"),
        "the revoke after the quiet spell succeeded; log:\n{}",
        tail(&old.logs(), 10)
    );
    assert_no_secret(sidecars.iter().chain([&old]), pw);
}

#[test]
fn no_secret_appears_in_logs_status_or_metrics() {
    let w = AuthWorld::new();
    let pw = &w.auth.password;
    // Right password, but a key outside the prefix the user may write: every
    // campaign is refused, so error paths run too.
    let forbidden = unique_key("forbidden");
    let mut refused = w
        .replica_of(&forbidden, "refused", pw, Password::Env)
        .ttl(3)
        .start();
    // And a working pair, through both ways of passing the password.
    let working = vec![
        w.replica("file", pw, Password::File).ttl(3).start(),
        w.replica("env", pw, Password::Env).ttl(3).start(),
    ];
    wait_for_one_leader(&working, SOON);

    assert_retrying_without_leadership(&mut refused, Duration::from_secs(2));
    assert_last_error(&refused, "permission denied", Duration::ZERO);
    assert_no_secret(working.iter().chain([&refused]), pw);
}
