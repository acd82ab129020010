//! `brokk --check-config` loads everything a start would: one CLI test per way a configuration
//! can be unusable, each expecting exit 2 and the key named on stderr, and the same errors
//! from a real start (exit 2, said once).

mod common;

use std::path::{Path, PathBuf};

use common::process::{self, stderr};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A directory with a CA, a server certificate and key signed by it, a key that belongs to
/// nothing, and a CSR: the material of the TLS cases.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let csr = params.serialize_request(&key).expect("csr");
        let cert = params.signed_by(&key, &ca).expect("sign");
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text);
        write("ca.pem", &ca.pem()).expect("write");
        write("server.pem", &cert.pem()).expect("write");
        write("server.key", &key.serialize_pem()).expect("write");
        write("server.csr", &csr.pem().expect("pem")).expect("write");
        let other = KeyPair::generate().expect("key").serialize_pem();
        write("other.key", &other).expect("write");
        Files { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `text` as broker.toml (loopback, free ports) and returns its path.
    fn config(&self, text: &str) -> PathBuf {
        let path = self.path("broker.toml");
        let base = "[listeners.tcp]\nbind = \"127.0.0.1:0\"\n[metrics]\nbind = \"127.0.0.1:0\"\n";
        std::fs::write(&path, format!("{base}{text}")).expect("write");
        path
    }

    fn tls(&self, cert: &str, key: &str, client_ca: Option<&str>) -> PathBuf {
        let ca = client_ca
            .map(|ca| format!(", client_ca = {:?}", self.path(ca)))
            .unwrap_or_default();
        self.config(&format!(
            "[listeners.tls]\nbind = \"127.0.0.1:0\"\ntls = {{ cert = {:?}, key = {:?}{ca} }}\n",
            self.path(cert),
            self.path(key),
        ))
    }
}

/// `brokk --check-config --config PATH`: (exit code, stderr).
fn check(path: &Path, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = process::run(
        [
            "--check-config".as_ref(),
            "--config".as_ref(),
            path.as_os_str(),
        ],
        envs,
    );
    (out.status.code(), stderr(&out))
}

/// Exit 2 with `key` and `why` on stderr, once.
fn assert_refused(path: &Path, key: &str, why: &str) {
    let (code, err) = check(path, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with(&format!("brokk: invalid configuration: {key}")),
        "{err}"
    );
    assert!(err.contains(why), "expected {why:?} in {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn a_valid_tls_configuration_passes() {
    let files = Files::new();
    let (code, err) = check(&files.tls("server.pem", "server.key", Some("ca.pem")), &[]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_missing_password_file_is_refused() {
    let files = Files::new();
    let path = files.config("[auth]\npassword_file = \"/nonexistent/passwd\"\n");
    assert_refused(&path, "auth.password_file", "/nonexistent/passwd");
}

#[test]
fn a_malformed_password_file_is_refused() {
    let files = Files::new();
    std::fs::write(files.path("passwd"), "alice:plaintext\n").expect("write");
    // Relative: found next to broker.toml.
    let path = files.config("[auth]\npassword_file = \"passwd\"\n");
    assert_refused(&path, "auth.password_file", "line 1");
}

#[test]
fn a_csr_given_as_certificate_is_refused() {
    let files = Files::new();
    assert_refused(
        &files.tls("server.csr", "server.key", None),
        "listeners.tls.tls.cert",
        "is a certificate signing request (CSR), not a certificate",
    );
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let files = Files::new();
    assert_refused(
        &files.tls("server.pem", "other.key", None),
        "listeners.tls.tls.key",
        "is not the private key of the certificate in",
    );
}

#[test]
fn a_key_file_without_a_key_is_refused() {
    let files = Files::new();
    assert_refused(
        &files.tls("server.pem", "server.pem", None),
        "listeners.tls.tls.key",
        "holds a certificate, no private key",
    );
    std::fs::write(files.path("empty.key"), "").expect("write");
    assert_refused(
        &files.tls("server.pem", "empty.key", None),
        "listeners.tls.tls.key",
        "no private key found in",
    );
}

#[test]
fn a_certificate_file_without_a_certificate_is_refused() {
    let files = Files::new();
    assert_refused(
        &files.tls("server.key", "server.key", None),
        "listeners.tls.tls.cert",
        "holds a private key, no certificate",
    );
}

#[test]
fn a_client_ca_without_a_certificate_is_refused() {
    let files = Files::new();
    assert_refused(
        &files.tls("server.pem", "server.key", Some("other.key")),
        "listeners.tls.tls.client_ca",
        "holds a private key, no certificate",
    );
}

#[test]
fn a_missing_certificate_file_is_refused() {
    let files = Files::new();
    assert_refused(
        &files.tls("nothing.pem", "server.key", None),
        "listeners.tls.tls.cert",
        "cannot read",
    );
}

#[test]
fn a_bind_host_that_does_not_resolve_is_refused() {
    let files = Files::new();
    let path = files.config("[listeners.other]\nbind = \"no-such-host.invalid:1883\"\n");
    assert_refused(
        &path,
        "listeners.other.bind",
        "cannot resolve no-such-host.invalid:1883",
    );
}

#[test]
fn a_metrics_bind_host_that_does_not_resolve_is_refused() {
    let files = Files::new();
    let path = files.path("metrics.toml");
    std::fs::write(&path, "[metrics]\nbind = \"no-such-host.invalid:9883\"\n").expect("write");
    assert_refused(&path, "metrics.bind", "cannot resolve");
}

#[test]
fn a_bind_that_is_no_address_is_refused() {
    let files = Files::new();
    let path = files.config("[listeners.other]\nbind = \"localhost\"\n");
    assert_refused(
        &path,
        "listeners.other.bind",
        "invalid address \"localhost\"",
    );
}

#[test]
fn a_bad_log_level_is_refused() {
    let files = Files::new();
    let path = files.config("[log]\nlevel = \"loud[\"\n");
    assert_refused(&path, "log.level", "");
}

#[test]
fn a_brokk_variable_that_names_no_key_is_refused() {
    let out = process::run(
        ["--check-config"],
        &[("BROKK_LIMITS_MAX_PACKET_SIZE", "16")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "environment variable BROKK_LIMITS_MAX_PACKET_SIZE: names no configuration key"
        ),
        "{err}"
    );
    assert!(
        err.contains("did you mean BROKK_LIMITS__MAX_PACKET_SIZE?"),
        "{err}"
    );
    // The variables brokk's own tools read are not configuration, and not errors.
    let out = process::run(
        ["--check-config"],
        &[
            ("BROKK_ADMIN_URL", "http://127.0.0.1:9884"),
            ("BROKK_ADMIN_TOKEN", "t"),
            ("BROKK_BIN", "/usr/local/bin/brokk"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Relative paths in a file are found next to it, whatever the working directory.
#[test]
fn relative_paths_are_relative_to_the_file() {
    let files = Files::new();
    let path = files.config(
        "[listeners.tls]\nbind = \"localhost:0\"\n\
         tls = { cert = \"server.pem\", key = \"server.key\", client_ca = \"ca.pem\" }\n",
    );
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(process::BIN)
        .args(["--check-config", "--config"])
        .arg(&path)
        .current_dir(elsewhere.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configuration ok\n");
}

/// A real start fails the same way, exit 2, with the error said once (no log line as well).
#[test]
fn a_start_with_a_bad_file_exits_2_and_says_so_once() {
    let files = Files::new();
    let path = files.tls("server.pem", "other.key", None);
    let out = process::run(["--config".as_ref(), path.as_os_str()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.matches("is not the private key").count(),
        1,
        "said once: {err}"
    );
    assert!(!err.contains("ERROR"), "{err}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {out:?}");
}

/// A valid configuration the machine cannot honour (the port is taken) exits 1.
#[test]
fn a_port_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = process::run(
        Vec::<&str>::new(),
        &[
            ("BROKK_LISTENERS__TCP__BIND", &addr),
            ("BROKK_LISTENERS__WS__BIND", "127.0.0.1:0"),
            ("BROKK_METRICS__BIND", "127.0.0.1:0"),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = format!("brokk: cannot start: listeners.tcp.bind: cannot listen on {addr}");
    assert_eq!(err.matches(&line).count(), 1, "{err}");
}

#[test]
fn a_broken_acl_file_is_refused() {
    let files = Files::new();
    std::fs::write(files.path("acl"), "topic readwrite a/#\nnonsense here\n").expect("write");
    let path = files.config("[auth]\nacl_file = \"acl\"\n");
    assert_refused(&path, "auth.acl_file", "line 2");
}

#[test]
fn a_jwt_key_that_is_no_public_key_is_refused() {
    let files = Files::new();
    let path = files.config(
        "[auth]\nallow_anonymous = false\n[auth.jwt]\nkey_file = \"server.pem\"\nalgorithm = \"RS256\"\n",
    );
    assert_refused(&path, "auth.jwt.key_file", "");
}
