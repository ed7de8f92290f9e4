//! Configuration: flags, `ELECTOR_*` variables and a YAML file, in that order
//! of precedence. Every mistake exits with code 2 and one line on stderr that
//! names the option (and for a file: the file, and the field or line), never
//! a panic and never a running server.

use std::fs;
use std::path::Path;

use elector_testkit::*;

fn loopback_listen() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, text).expect("writing a config file");
    path.to_string_lossy().into_owned()
}

/// [`refused`] with a dead endpoint and a loopback listen address before `args`.
fn refused_serving(args: &[&str], envs: &[(&str, &str)], must_name: &[&str]) -> String {
    let (e, l) = (dead_endpoint(), loopback_listen());
    let mut all = vec!["--endpoints", &e, "--listen", &l];
    all.extend_from_slice(args);
    refused(&all, envs, must_name)
}

/// A config file `name` holding `text` is refused by a message naming the
/// file and `must_name`; returns the line.
fn file_refused(name: &str, text: &str, must_name: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), name, text);
    let mut must = vec![path.as_str()];
    must.extend_from_slice(must_name);
    refused_serving(&["--config", &path], &[], &must)
}

#[test]
fn a_missing_key_is_refused() {
    refused_serving(&["--id", "a"], &[], &["key"]);
}

#[test]
fn a_ttl_below_2_is_refused() {
    refused_serving(&["--key", "/k", "--ttl", "1"], &[], &["ttl"]);
}

#[test]
fn a_ttl_above_3600_is_refused() {
    refused_serving(&["--key", "/k", "--ttl", "4000"], &[], &["ttl"]);
}

#[test]
fn a_ttl_that_is_not_a_number_is_refused() {
    refused_serving(&["--key", "/k", "--ttl", "ten"], &[], &["ttl"]);
}

#[test]
fn an_out_of_range_ttl_from_the_environment_is_refused() {
    refused_serving(&["--key", "/k"], &[("ELECTOR_TTL", "1")], &["ttl"]);
}

#[test]
fn an_unparsable_listen_address_is_refused() {
    let e = dead_endpoint();
    for bad in ["nonsense", "127.0.0.1", "127.0.0.1:99999"] {
        refused(
            &["--endpoints", &e, "--key", "/k", "--listen", bad],
            &[],
            &["listen"],
        );
    }
}

#[test]
fn a_bad_endpoint_url_is_refused() {
    let l = loopback_listen();
    for bad in ["http://127.0.0.1:notaport", "not a url"] {
        refused(
            &["--endpoints", bad, "--listen", &l, "--key", "/k"],
            &[],
            &["endpoint"],
        );
    }
}

#[test]
fn a_missing_config_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("does-not-exist.yaml");
    let path = path.to_string_lossy();
    let l = loopback_listen();
    refused(&["--config", &path, "--listen", &l], &[], &[&path]);
    // The same through the environment.
    refused(&["--listen", &l], &[("ELECTOR_CONFIG", &path)], &[&path]);
}

#[test]
fn an_unreadable_config_file_is_refused() {
    // A directory cannot be read as a file, even by root (who can read a
    // file whatever its mode bits say).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_string_lossy().into_owned();
    let l = loopback_listen();
    refused(&["--config", &path, "--listen", &l], &[], &[&path]);
}

#[test]
fn invalid_yaml_names_the_file_and_the_line() {
    // Line 3 is not YAML ("mapping values are not allowed here").
    let line = file_refused("broken.yaml", "key: /k\nid: a\nttl: 3: 4\n", &[]);
    assert!(
        line.contains("line 3") || line.contains(":3"),
        "the message gives the line (3): {line}"
    );
}

#[test]
fn an_unknown_yaml_key_is_refused_by_name() {
    file_refused("typo.yaml", "key: /k\nid: a\ncolour: blue\n", &["colour"]);
}

#[test]
fn an_out_of_range_ttl_in_the_file_names_the_file_and_field() {
    file_refused("ttl.yaml", "key: /k\nttl: 1\n", &["ttl"]);
}

/// Observed through `/leader`, which names the identity and key in use (and
/// answers 503 since no etcd is reachable, which is fine here).
#[test]
fn flags_override_env_which_overrides_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = dead_endpoint();
    let file_listen = loopback_listen();
    let path = write(
        dir.path(),
        "elector.yaml",
        &format!(
            "endpoints: [\"{e}\"]\nkey: /from-file\nid: id-from-file\nttl: 5\n\
             listen: \"{file_listen}\"\nlog_format: json\nshutdown_timeout: 3\n"
        ),
    );
    let view = |s: &Sidecar| {
        let (status, v) = s.get_json("/leader");
        assert_eq!(status, 503, "no etcd, no leadership: {v}");
        [v["identity"].clone(), v["key"].clone()]
    };

    // File only (and its `listen`, since no --listen flag is given).
    let s = Sidecar::builder()
        .args(&["--config", &path])
        .listen_elsewhere(file_listen.parse().unwrap())
        .start();
    assert_eq!(view(&s), ["id-from-file", "/from-file"]);
    drop(s);

    // Env over file, file still supplying what env does not.
    let s = Sidecar::builder()
        .args(&["--config", &path])
        .env("ELECTOR_ID", "id-from-env")
        .start();
    assert_eq!(view(&s), ["id-from-env", "/from-file"]);
    drop(s);

    // Flag over env over file; the file named through ELECTOR_CONFIG.
    let s = Sidecar::builder()
        .env("ELECTOR_CONFIG", &path)
        .env("ELECTOR_ID", "id-from-env")
        .env("ELECTOR_KEY", "/from-env")
        .id("id-from-flag")
        .start();
    assert_eq!(view(&s), ["id-from-flag", "/from-env"]);
    drop(s);

    // POD_NAME is the default id when nothing else sets it.
    let s = Sidecar::builder()
        .endpoints(&e)
        .key("/k")
        .env("POD_NAME", "pod-7")
        .start();
    assert_eq!(view(&s)[0], "pod-7");
}
