//! Unit tests of option resolution; `tests/config.rs` runs the binary.
use super::*;

fn parsed(args: &[&str]) -> Result<Parsed, ConfigError> {
    parse(std::iter::once("etcd-elector").chain(args.iter().copied()))
}

fn sidecar(args: &[&str]) -> Config {
    match parsed(args) {
        Ok(Parsed::Sidecar(cfg)) => *cfg,
        other => panic!("expected a sidecar config, got {other:?}"),
    }
}

fn parse_err(args: &[&str]) -> String {
    match parsed(args) {
        Err(e) => e.to_string(),
        Ok(other) => panic!("expected an error, got {other:?}"),
    }
}

fn yaml(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path.to_str().unwrap().to_string())
}

#[test]
fn defaults_apply() {
    let cfg = sidecar(&["--key", "/k", "--id", "a"]);
    assert_eq!(cfg.etcd.endpoints, vec![DEFAULT_ENDPOINT]);
    assert_eq!(cfg.election.timing.ttl, Duration::from_secs(10));
    assert_eq!(cfg.listen, Some("0.0.0.0:4040".parse().unwrap()));
    assert_eq!(cfg.admin_listen, Some("127.0.0.1:4041".parse().unwrap()));
    assert_eq!(cfg.election.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(cfg.election.release_delay, Duration::ZERO);
    assert_eq!(cfg.log_format, LogFormat::Text);
    assert_eq!(cfg.election.protocol, Protocol::Lock);
}

#[test]
fn endpoints_are_comma_separated_and_checked() {
    let cfg = sidecar(&[
        "--key",
        "/k",
        "--id",
        "a",
        "--endpoints",
        "http://a:1,http://b:2",
    ]);
    assert_eq!(cfg.etcd.endpoints, vec!["http://a:1", "http://b:2"]);
    let err = parse_err(&["--key", "/k", "--endpoints", "localhost"]);
    assert!(err.contains("--endpoints"), "{err}");
}

#[test]
fn ttl_out_of_range_is_refused() {
    assert!(parse_err(&["--key", "/k", "--ttl", "1"]).contains("--ttl"));
    assert!(parse_err(&["--key", "/k", "--ttl", "3601"]).contains("2 to 3600"));
}

#[test]
fn missing_key_is_refused() {
    assert!(parse_err(&["--id", "a"]).contains("--key is required"));
}

#[test]
fn yaml_file_fills_what_flags_leave() {
    let (_dir, path) = yaml("key: /from-file\nttl: 4\nendpoints: [\"http://x:1\"]\nid: f\n");
    let cfg = sidecar(&["--config", &path, "--ttl", "6"]);
    assert_eq!(cfg.election.key, "/from-file");
    assert_eq!(cfg.election.timing.ttl, Duration::from_secs(6));
    assert_eq!(cfg.etcd.endpoints, vec!["http://x:1"]);
}

#[test]
fn yaml_errors_name_file_field_and_line() {
    let (_dir, path) = yaml("key: /k\nttll: 4\n");
    let err = parse_err(&["--config", &path]);
    assert!(
        err.contains("ttll") && err.contains("line 2") && err.contains("c.yaml"),
        "{err}"
    );
    // Our own range check, raised inside the field's deserializer, gets the same.
    let (_dir, path) = yaml("key: /k\nttl: 1\n");
    let err = parse_err(&["--config", &path]);
    assert!(err.contains("ttl") && err.contains("line 2"), "{err}");
    assert!(err.contains("c.yaml") && err.contains("2 to 3600"), "{err}");
}

#[test]
fn empty_values_name_where_they_were_set() {
    let err = parse_err(&["--key", "", "--id", "a"]);
    assert!(err.starts_with("--key: "), "{err}");
    let (_dir, path) = yaml("key: ''\nid: a\n");
    let err = parse_err(&["--config", &path]);
    assert!(
        err.starts_with("`key` in ") && err.contains("c.yaml"),
        "{err}"
    );
}

#[test]
fn every_option_follows_the_naming_that_origin_relies_on() {
    for arg in Cli::command().get_arguments() {
        let id = arg.get_id().as_str();
        assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()));
        let env = format!("ELECTOR_{}", id.to_ascii_uppercase());
        assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(&env)), "{id}");
    }
}

#[test]
fn release_delay_must_leave_time_to_revoke() {
    let err = parse_err(&["--key", "/k", "--release-delay", "5"]);
    assert!(err.contains("--release-delay"), "{err}");
}

#[test]
fn run_grace_period_must_fit_inside_the_ttl() {
    let args = |ttl| {
        [
            "run",
            "--key",
            "/k",
            "--ttl",
            ttl,
            "--grace-period",
            "3",
            "--",
            "true",
        ]
    };
    let err = parse_err(&args("5"));
    assert!(err.contains("--grace-period"), "{err}");
    match parsed(&args("10")) {
        Ok(Parsed::Job(cfg, run)) => {
            assert_eq!(run.command, vec!["true"]);
            assert_eq!(cfg.listen, None);
        }
        other => panic!("expected a job config, got {other:?}"),
    }
}

#[test]
fn run_try_timeout_defaults_to_the_ttl_and_needs_try() {
    let base = ["run", "--key", "/k", "--ttl", "12"];
    let with = |extra: &[&'static str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        args.extend(["--", "true"]);
        args
    };
    let job = |args: &[&str]| match parsed(args) {
        Ok(Parsed::Job(cfg, run)) => (*cfg, run),
        other => panic!("expected a job config, got {other:?}"),
    };
    let (cfg, run) = job(&with(&["--try"]));
    assert_eq!(
        run.try_bound(cfg.election.timing.ttl),
        Duration::from_secs(12)
    );
    let (cfg, run) = job(&with(&["--try", "--try-timeout", "2.5"]));
    assert_eq!(
        run.try_bound(cfg.election.timing.ttl),
        Duration::from_millis(2500)
    );
    let err = parse_err(&with(&["--try-timeout", "2"]));
    assert!(
        err.contains("--try-timeout") && err.contains("--try "),
        "{err}"
    );
    let err = parse_err(&with(&["--try", "--try-timeout", "0"]));
    assert!(err.contains("--try-timeout"), "{err}");
}

#[test]
fn a_missing_command_is_named() {
    let err = parse_err(&["run", "--key", "/k", "--"]);
    assert!(err.contains("<COMMAND>"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn a_waiting_run_takes_part_in_succession_without_waiting_and_a_try_does_not() {
    let job = |extra: &[&str]| match parsed(
        &[
            &["run", "--key", "/k", "--handoff-wait", "3"],
            extra,
            &["--", "true"],
        ]
        .concat(),
    ) {
        Ok(Parsed::Job(cfg, _)) => cfg.election.succession,
        other => panic!("expected a job config, got {other:?}"),
    };
    let waiting = job(&[]).expect("a waiting run hands over and is handed to");
    assert_eq!(waiting.handoff_wait, Duration::ZERO, "a job never waits");
    assert_eq!(
        job(&["--try"]),
        None,
        "one attempt and gone: no registration"
    );
    assert_eq!(job(&["--no-succession"]), None);
    let sidecar = sidecar(&["--key", "/k", "--handoff-wait", "1"])
        .election
        .succession;
    assert_eq!(
        sidecar.map(|s| s.handoff_wait),
        Some(Duration::from_secs(1))
    );
}
