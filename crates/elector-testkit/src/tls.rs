//! Certificates and secured etcd servers for the TLS and auth tests.
//!
//! Certificates are made per test, in process, with `rcgen`. What each side
//! insists on:
//!
//! - rustls (the sidecar's TLS, through tonic) accepts only X.509 v3
//!   certificates (rcgen writes no other) and checks the host against the
//!   subjectAltName alone (never the CN), so the server certificate names
//!   `IP:127.0.0.1`; the CA must say `CA:TRUE`.
//! - etcd (Go) checks that a client certificate allows `clientAuth`.
//! - EC P-256 keys (rcgen's default) are generated in microseconds, and both
//!   sides read them as rcgen writes them: PKCS#8 (`BEGIN PRIVATE KEY`).

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::etcd::{etcdctl, Etcd, Security};
use crate::{random_suffix, test_tempdir};

/// A test CA and the certificates it signed, in files that live as long as this.
pub struct Pki {
    _dir: tempfile::TempDir,
    /// The CA certificate (PEM): `--etcd-cacert`, and etcd's `--trusted-ca-file`.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The CA certificate of another, unrelated CA: trusting it instead of
    /// ours is the "wrong CA" mistake.
    pub other_ca: PathBuf,
    /// A server certificate from our CA for the same names and key as
    /// [`Pki::server_cert`], valid only on 1 and 2 January 2020.
    expired_server_cert: PathBuf,
}

impl Pki {
    /// A fresh CA, a server certificate for `127.0.0.1` and `localhost`, a client
    /// certificate, and the two mistakes above.
    #[expect(
        clippy::new_without_default,
        reason = "making certificates is no default value"
    )]
    pub fn new() -> Pki {
        let dir = test_tempdir("pki");
        let d = dir.path();
        let (ca, ca_signer) = make_ca(d, "ca", "elector-test-ca");
        let (other_ca, _) = make_ca(d, "other-ca", "some-other-ca");
        let sign = |name: &str, params: &CertificateParams, key: &KeyPair| {
            let cert = params.signed_by(key, &ca_signer).expect("signing");
            write(d, &format!("{name}.pem"), &cert.pem())
        };

        let mut server = cert_params("etcd-server", &["127.0.0.1", "localhost"]);
        server.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = key_pair();
        let server_cert = sign("server", &server, &server_key);
        server.not_before = date_time_ymd(2020, 1, 1);
        server.not_after = date_time_ymd(2020, 1, 2);
        let expired_server_cert = sign("expired", &server, &server_key);

        let mut client = cert_params("etcd-elector", &[]);
        client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = key_pair();
        let client_cert = sign("client", &client, &client_key);
        Pki {
            ca,
            server_cert,
            server_key: write(d, "server.key", &server_key.serialize_pem()),
            client_cert,
            client_key: write(d, "client.key", &client_key.serialize_pem()),
            other_ca,
            expired_server_cert,
            _dir: dir,
        }
    }

    /// Global etcdctl flags for a client of a TLS etcd made from this PKI.
    pub fn ctl_args(&self) -> Vec<String> {
        flags(&[
            ("--cacert", &self.ca),
            ("--cert", &self.client_cert),
            ("--key", &self.client_key),
        ])
    }

    /// The sidecar's flags for mutual TLS with this PKI, trusting `ca`.
    pub fn sidecar_args(&self, ca: &Path) -> Vec<String> {
        flags(&[
            ("--etcd-cacert", ca),
            ("--etcd-cert", &self.client_cert),
            ("--etcd-key", &self.client_key),
        ])
    }
}

/// `flag path` pairs as arguments.
fn flags(pairs: &[(&str, &Path)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
}

/// Writes `pem` to `dir/name`; returns the path.
fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Parameters for `/CN=cn` and the subjectAltNames `names` (IPs or DNS names).
fn cert_params(cn: &str, names: &[&str]) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("valid subjectAltNames");
    params.distinguished_name.push(DnType::CommonName, cn);
    params
}

/// A fresh P-256 key.
fn key_pair() -> KeyPair {
    KeyPair::generate().expect("generating a P-256 key")
}

/// A self-signed CA `name.pem` for `/CN=cn` in `dir`: its path and its signer.
fn make_ca(dir: &Path, name: &str, cn: &str) -> (PathBuf, Issuer<'static, KeyPair>) {
    let mut params = cert_params(cn, &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = key_pair();
    let cert = params.self_signed(&key).expect("self-signing a CA");
    let path = write(dir, &format!("{name}.pem"), &cert.pem());
    (path, Issuer::new(params, key))
}

/// An etcd serving clients over TLS with the PKI's server certificate; with
/// `mutual`, it also demands a client certificate signed by the PKI's CA.
pub fn tls_etcd(pki: &Pki, mutual: bool) -> Etcd {
    let mut server_args = flags(&[
        // The server's certificate and key for client connections.
        ("--cert-file", &pki.server_cert),
        ("--key-file", &pki.server_key),
    ]);
    if mutual {
        // Refuse clients without a certificate signed by our CA.
        server_args.push("--client-cert-auth".to_string());
        server_args.extend(flags(&[("--trusted-ca-file", &pki.ca)]));
    }
    Etcd::start_secured(Security {
        client_tls: true,
        server_args,
        ctl_args: pki.ctl_args(),
    })
}

/// An etcd serving clients over TLS with a server certificate that expired in
/// 2020. Its health is checked with `--insecure-skip-tls-verify`, since
/// etcdctl too refuses the certificate.
pub fn expired_tls_etcd(pki: &Pki) -> Etcd {
    let mut ctl_args = pki.ctl_args();
    ctl_args.push("--insecure-skip-tls-verify".into());
    Etcd::start_secured(Security {
        client_tls: true,
        // An expired certificate for client connections.
        server_args: flags(&[
            ("--cert-file", &pki.expired_server_cert),
            ("--key-file", &pki.server_key),
        ]),
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
    for command in [
        format!("user add root:{root_password}"),
        "role add elector".into(),
        format!("role grant-permission elector --prefix readwrite {prefix}"),
        format!("user add {user}:{password}"),
        format!("user grant-role {user} elector"),
    ] {
        etcd.ctl(&command.split(' ').collect::<Vec<_>>());
    }
    // etcd 3.4 prints a warning about the root role here but enables auth.
    let _ = etcd.etcdctl(&["auth", "enable"]);
    etcd.set_ctl_args(&["--user", &format!("root:{root_password}")]);
    etcd.ctl(&["user", "list"]);
    assert!(
        !etcdctl(&etcd.endpoint(), &["get", "/"]).status.success(),
        "auth is enabled: an anonymous read is refused"
    );
    AuthEtcd {
        etcd,
        user,
        password,
        prefix,
    }
}
