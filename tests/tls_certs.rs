//! TLS as an operator sets it up: the certificates of `scripts/make-certs` serve mutual TLS;
//! an X.509 v1 certificate (what `openssl x509 -req` makes without extensions) is named as
//! such, as a client's (in the close log line) and as the server's (by --check-config); and
//! rustls' warning about an IP address sent as SNI stays out of the INFO log. Needs openssl.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use brokk::config::{ListenerConfig, TlsConfig};
use brokk::protocol::Version;
use common::process::{self, BrokkProcess, stderr};
use common::tls::{connector, mqtt_over_tls};
use common::*;

/// `scripts/make-certs DIR`: the set the README tells operators to make.
fn make_certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-certs");
    let out = Command::new(script)
        .arg(dir.path())
        .output()
        .expect("scripts/make-certs runs (needs openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A certificate for `cn` signed by the set's CA the common way: `openssl x509 -req` with no
/// extension file, which makes X.509 v1.
fn v1_certificate(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let pem = format!("{name}.pem");
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &csr,
        ],
        dir,
    );
    openssl(
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
            "7",
            "-days",
            "2",
            "-out",
            &pem,
        ],
        dir,
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", &pem])
        .current_dir(dir)
        .output()
        .expect("openssl x509 -text");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Version: 1 "),
        "this openssl made no v1 certificate:\n{text}"
    );
    (dir.join(pem), dir.join(key))
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).expect("read")
}

/// A broker.toml with one TLS listener on loopback over the set in `dir`.
fn config(dir: &Path, mtls: bool) -> PathBuf {
    let ca = if mtls { ", client_ca = \"ca.pem\"" } else { "" };
    let path = dir.join("broker.toml");
    std::fs::write(
        &path,
        format!(
            "[listeners.tcp]\nbind = \"127.0.0.1:0\"\n[listeners.tls]\nbind = \"127.0.0.1:0\"\n\
             tls = {{ cert = \"server.pem\", key = \"server.key\"{ca} }}\n\
             [metrics]\nenabled = false\n"
        ),
    )
    .expect("write");
    path
}

#[tokio::test]
async fn make_certs_serves_mutual_tls() {
    let certs = make_certs();
    let path = |name: &str| certs.path().join(name);
    let broker = start_with(|c| {
        c.listeners.insert(
            "tls".to_string(),
            ListenerConfig {
                bind: "127.0.0.1:0".parse().expect("addr"),
                tls: Some(TlsConfig {
                    cert: path("server.pem"),
                    key: path("server.key"),
                    client_ca: Some(path("ca.pem")),
                    handshake_timeout: Duration::from_secs(5),
                    identity_as_username: false,
                    crl: None,
                }),
                tcp_keepalive: None,
                write_timeout: None,
                websocket: None,
                proxy_protocol: false,
            },
        );
    })
    .await;
    let addr = broker.server().local_addr("tls").expect("tls listener");
    let ca = read(path("ca.pem"));
    let (cert, key) = (read(path("client.pem")), read(path("client.key")));
    let client = connector(&ca, Some((&cert, &key)));
    assert_eq!(mqtt_over_tls(addr, client).await, Ok(0));
    broker.stop().await;
}

#[test]
fn a_v1_client_certificate_is_named_in_the_close_line() {
    let certs = make_certs();
    let (cert, key) = v1_certificate(certs.path(), "old-client", "old-client");
    let mut brokk = BrokkProcess::start(
        ["--config".as_ref(), config(certs.path(), true).as_os_str()],
        &[],
    );
    let addr = brokk.listener("tls");
    // rustls will not even present a v1 certificate; OpenSSL-based clients (mosquitto_pub
    // --cert, s_client) do.
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-CAfile",
            "ca.pem",
        ])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .current_dir(certs.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"),
        "reached the server: {out:?}"
    );
    let line = brokk.wait_line(|line| line.contains("connection closed"));
    assert!(
        line.contains("client certificate is X.509 v1; reissue it as v3, see README"),
        "{line}"
    );
    assert!(line.contains("reason=\"io_exception\""), "{line}");
    assert!(line.contains(" INFO "), "{line}");
}

#[test]
fn a_v1_server_certificate_is_refused_by_check_config() {
    let certs = make_certs();
    let (cert, key) = v1_certificate(certs.path(), "server", "localhost");
    assert!(cert.ends_with("server.pem") && key.ends_with("server.key"));
    let out = process::run(
        [
            "--check-config".as_ref(),
            "--config".as_ref(),
            config(certs.path(), false).as_os_str(),
        ],
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("listeners.tls.tls.cert: "), "{err}");
    assert!(
        err.contains("is an X.509 v1 certificate; reissue it as v3"),
        "{err}"
    );
}

/// `openssl s_client -servername 127.0.0.1` sends an IP address as SNI, as mosquitto_pub does
/// when given an address: rustls' complaint shows only when debug output is asked for.
#[tokio::test]
async fn sni_with_an_ip_address_is_debug_noise() {
    let certs = make_certs();
    for (rust_log, shown) in [(None, false), (Some("debug"), true)] {
        let envs: Vec<(&str, &str)> = rust_log.map(|l| ("RUST_LOG", l)).into_iter().collect();
        let mut brokk = BrokkProcess::start(
            ["--config".as_ref(), config(certs.path(), false).as_os_str()],
            &envs,
        );
        let addr = brokk.listener("tls");
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                "127.0.0.1",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"),
            "handshake: {out:?}"
        );
        // A later line: everything logged during the handshake has been read by then.
        let plain = brokk.listener("tcp");
        let (_client, _) = Raw::connect(plain, connect_packet(Version::V5, "marker")).await;
        brokk.wait_line(|line| line.contains("client_id=marker"));
        assert_eq!(
            brokk.log().contains("Illegal SNI"),
            shown,
            "RUST_LOG={rust_log:?}:\n{}",
            brokk.log()
        );
    }
}
