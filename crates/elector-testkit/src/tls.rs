//! Certificates and secured etcd servers for the TLS and auth tests.
//!
//! Certificates are made per test with the `openssl` command-line tool (from
//! Debian's `openssl` package) in a temporary directory: a CA, a server
//! certificate for `127.0.0.1` and `localhost` signed by it, a client
//! certificate for mutual TLS, and on request an unrelated CA or an expired
//! server certificate. What each side insists on:
//!
//! - rustls (the sidecar's TLS, through tonic) accepts only X.509 v3
//!   certificates and checks the host against the subjectAltName alone (never
//!   the CN), so the server certificate names `IP:127.0.0.1`; the CA must say
//!   `CA:TRUE`.
//! - etcd (Go) checks that a client certificate allows `clientAuth`.
//! - EC P-256 keys are generated in milliseconds and both sides read them as
//!   PKCS#8 (`BEGIN PRIVATE KEY`).
//!
//! [`auth_etcd`] starts a plain-HTTP etcd with authentication on: a root user,
//! and a user whose role may only read and write one key prefix, with a short
//! auth-token TTL so tests can outlive many tokens.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::etcd::{Etcd, Security};
use crate::{random_suffix, test_tempdir};

/// Certificate lifetime for the valid ones: the test is over long before.
const VALID_DAYS: &str = "2";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("running openssl (install it with `apt-get install openssl`): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and the certificates it signed. The files live as long as this.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA certificate (PEM): `--etcd-cacert`, and etcd's `--trusted-ca-file`.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

const SERVER_EXT: &str = "basicConstraints=critical,CA:FALSE\n\
keyUsage=critical,digitalSignature,keyEncipherment\n\
extendedKeyUsage=serverAuth\n\
subjectAltName=IP:127.0.0.1,DNS:localhost\n";

const CLIENT_EXT: &str = "basicConstraints=critical,CA:FALSE\n\
keyUsage=critical,digitalSignature\n\
extendedKeyUsage=clientAuth\n";

impl Pki {
    /// A fresh CA with a server and a client certificate.
    #[expect(
        clippy::new_without_default,
        reason = "running openssl is no default value"
    )]
    pub fn new() -> Pki {
        let dir = test_tempdir("pki");
        let d = dir.path();
        make_ca(d, "ca", "elector-test-ca");
        fs::write(d.join("server.ext"), SERVER_EXT).expect("writing server.ext");
        fs::write(d.join("client.ext"), CLIENT_EXT).expect("writing client.ext");
        make_csr(d, "server", "etcd-server");
        sign(d, "server", "server.ext");
        make_csr(d, "client", "etcd-elector");
        sign(d, "client", "client.ext");
        Pki {
            ca: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
            dir,
        }
    }

    /// The CA certificate of another, unrelated CA: trusting it instead of
    /// ours is the "wrong CA" mistake.
    pub fn other_ca(&self) -> PathBuf {
        let d = self.dir.path();
        if !d.join("other-ca.pem").exists() {
            make_ca(d, "other-ca", "some-other-ca");
        }
        d.join("other-ca.pem")
    }

    /// A server certificate from our CA for the same names and key as
    /// [`Pki::server_cert`], valid only on 1 and 2 January 2020.
    pub fn expired_server_cert(&self) -> PathBuf {
        let d = self.dir.path();
        let out = d.join("expired.pem");
        if out.exists() {
            return out;
        }
        // `openssl x509 -req` (3.0) cannot back-date; `openssl ca` can, with a
        // throw-away database.
        fs::create_dir_all(d.join("ca-db")).expect("creating ca-db");
        fs::write(d.join("ca-db/index.txt"), "").expect("writing index.txt");
        fs::write(d.join("ca-db/serial"), "1000\n").expect("writing serial");
        fs::write(
            d.join("ca.cnf"),
            "[ca]\ndefault_ca = test\n\
             [test]\ndatabase = ca-db/index.txt\nserial = ca-db/serial\n\
             new_certs_dir = ca-db\ndefault_md = sha256\npolicy = any\n\
             unique_subject = no\n\
             [any]\ncommonName = supplied\n",
        )
        .expect("writing ca.cnf");
        openssl(
            d,
            &[
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-cert",
                "ca.pem",
                "-keyfile",
                "ca.key",
                "-in",
                "server.csr",
                "-out",
                "expired.pem",
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200102000000Z",
                "-extfile",
                "server.ext",
                "-notext",
            ],
        );
        out
    }

    /// Global etcdctl flags for a client of a TLS etcd made from this PKI.
    pub fn ctl_args(&self) -> Vec<String> {
        [
            ("--cacert", &self.ca),
            ("--cert", &self.client_cert),
            ("--key", &self.client_key),
        ]
        .iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }

    /// The sidecar's flags for mutual TLS with this PKI, trusting `ca`.
    pub fn sidecar_args(&self, ca: &Path) -> Vec<String> {
        vec![
            "--etcd-cacert".into(),
            ca.display().to_string(),
            "--etcd-cert".into(),
            self.client_cert.display().to_string(),
            "--etcd-key".into(),
            self.client_key.display().to_string(),
        ]
    }
}

/// A new EC P-256 key `name.key` and, with `out_args`, a self-signed CA
/// certificate or a signing request for `/CN=cn`.
fn new_key_req(dir: &Path, name: &str, cn: &str, out_args: &[&str]) {
    let key = format!("{name}.key");
    let subject = format!("/CN={cn}");
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ];
    args.extend(["-nodes", "-keyout", &key, "-subj", &subject]);
    args.extend_from_slice(out_args);
    openssl(dir, &args);
}

fn make_ca(dir: &Path, name: &str, cn: &str) {
    let pem = format!("{name}.pem");
    new_key_req(
        dir,
        name,
        cn,
        &[
            "-x509",
            "-out",
            &pem,
            "-days",
            VALID_DAYS,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

fn make_csr(dir: &Path, name: &str, cn: &str) {
    new_key_req(dir, name, cn, &["-out", &format!("{name}.csr")]);
}

fn sign(dir: &Path, name: &str, ext: &str) {
    let csr = format!("{name}.csr");
    let pem = format!("{name}.pem");
    let serial = format!("0x{}", random_suffix());
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-out",
            &pem,
            "-days",
            VALID_DAYS,
            "-extfile",
            ext,
        ],
    );
}

/// An etcd serving clients over TLS with `cert` and `key`; with `mutual`, it
/// also demands a client certificate signed by the PKI's CA.
pub fn tls_etcd(pki: &Pki, cert: &Path, key: &Path, mutual: bool) -> Etcd {
    let mut server_args = vec![
        // The server's certificate and key for client connections.
        "--cert-file".to_string(),
        cert.display().to_string(),
        "--key-file".to_string(),
        key.display().to_string(),
    ];
    if mutual {
        // Refuse clients without a certificate signed by our CA.
        server_args.extend([
            "--client-cert-auth".to_string(),
            "--trusted-ca-file".to_string(),
            pki.ca.display().to_string(),
        ]);
    }
    Etcd::start_secured(Security {
        client_tls: true,
        server_args,
        ctl_args: pki.ctl_args(),
    })
}

/// An etcd serving clients over TLS with [`Pki::expired_server_cert`]. Its
/// health is checked with `--insecure-skip-tls-verify`, since etcdctl too
/// refuses the certificate.
pub fn expired_tls_etcd(pki: &Pki) -> Etcd {
    let mut ctl_args = pki.ctl_args();
    ctl_args.push("--insecure-skip-tls-verify".into());
    Etcd::start_secured(Security {
        client_tls: true,
        server_args: vec![
            // An expired certificate for client connections.
            "--cert-file".to_string(),
            pki.expired_server_cert().display().to_string(),
            "--key-file".to_string(),
            pki.server_key.display().to_string(),
        ],
        ctl_args,
    })
}

/// An auth-enabled etcd and the credentials that go with it.
pub struct AuthEtcd {
    pub etcd: Etcd,
    /// A user whose role may read and write only keys under [`AuthEtcd::prefix`].
    pub user: String,
    pub password: String,
    /// The prefix the user may use.
    pub prefix: String,
}

/// A plain-HTTP etcd with authentication enabled, simple tokens that expire
/// after `token_ttl_secs` without use, a root user, and a user allowed only
/// under a random key prefix. etcdctl calls through [`AuthEtcd::etcd`] run as root.
pub fn auth_etcd(token_ttl_secs: u64) -> AuthEtcd {
    let mut etcd = Etcd::start_secured(Security {
        client_tls: false,
        server_args: vec![
            // Unsigned tokens, the kind whose lifetime etcd counts itself.
            "--auth-token".into(),
            "simple".into(),
            // Short, so a test outlives several tokens and must re-authenticate.
            "--auth-token-ttl".into(),
            token_ttl_secs.to_string(),
        ],
        ctl_args: Vec::new(),
    });
    let root_password = format!("root-{}", random_suffix());
    let user = "elector".to_string();
    // Distinctive, so a grep for it in logs cannot match anything by chance.
    let password = format!("Pw-{}-{}", random_suffix(), random_suffix());
    let prefix = format!("/elector-secure-{}/", random_suffix());
    etcd.ctl(&["user", "add", &format!("root:{root_password}")]);
    etcd.ctl(&["role", "add", "elector"]);
    etcd.ctl(&[
        "role",
        "grant-permission",
        "elector",
        "--prefix",
        "readwrite",
        &prefix,
    ]);
    etcd.ctl(&["user", "add", &format!("{user}:{password}")]);
    etcd.ctl(&["user", "grant-role", &user, "elector"]);
    // etcd 3.4 prints a warning about the root role here but enables auth.
    let _ = etcd.etcdctl(&["auth", "enable"]);
    etcd.set_ctl_args(&["--user", &format!("root:{root_password}")]);
    etcd.ctl(&["user", "list"]);
    let refused = Command::new(crate::etcd::etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoint(), "get", "/"])
        .args(["--command-timeout", "5s", "--dial-timeout", "3s"])
        .output()
        .expect("running etcdctl");
    assert!(
        !refused.status.success(),
        "auth is enabled: an anonymous read is refused"
    );
    AuthEtcd {
        etcd,
        user,
        password,
        prefix,
    }
}
