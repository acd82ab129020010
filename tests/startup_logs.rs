//! What an operator sees when brokk starts and serves, from the binary: logs on stderr (stdout
//! untouched), the version and configuration source first, one INFO line per client that
//! connects, start-up warnings for configurations that refuse everyone or open anonymous
//! access beyond loopback, and host names in `bind`.

mod common;

use brokk::protocol::Version;
use bytes::Bytes;
use common::process::{self, BrokkProcess, field, stderr};
use common::*;

/// Loopback, free ports: the built-in configuration made safe for a test.
const LOOPBACK: [(&str, &str); 3] = [
    ("BROKK_LISTENERS__TCP__BIND", "127.0.0.1:0"),
    ("BROKK_LISTENERS__WS__BIND", "127.0.0.1:0"),
    ("BROKK_METRICS__BIND", "127.0.0.1:0"),
];

#[tokio::test]
async fn logs_go_to_stderr_starting_with_version_and_config_source() {
    // A password file, so that the connect line has a user to name.
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    brokk::auth::passwd_set(&passwd, "alice", "right").expect("passwd");
    let passwd = passwd.to_str().expect("utf-8 path");
    let mut envs = LOOPBACK.to_vec();
    envs.push(("BROKK_AUTH__PASSWORD_FILE", passwd));
    let mut brokk = BrokkProcess::start(Vec::<&str>::new(), &envs);
    let first = brokk.wait_line(|line| line.contains("brokk starting"));
    assert!(first.contains(" INFO "), "{first}");
    let version = format!("version={}", env!("CARGO_PKG_VERSION"));
    assert!(first.contains(&version), "{first}");
    assert!(first.contains("config=built-in"), "{first}");
    assert_eq!(brokk.seen[0], first, "the first line");
    let addr = brokk.listener("tcp");

    // One INFO line per client, as Mosquitto's "New client connected".
    let mut connect = connect_packet(Version::V5, "log-client");
    connect.username = Some("alice".to_string());
    connect.password = Some(Bytes::from_static(b"right"));
    connect.keep_alive = 45;
    let (_client, connack) = Raw::connect(addr, connect).await;
    assert_eq!(connack.reason_code, 0);
    let line = brokk.wait_line(|line| line.contains("client connected"));
    assert!(line.contains(" INFO "), "{line}");
    assert_eq!(field(&line, "client_id"), Some("log-client"), "{line}");
    assert!(
        field(&line, "peer").is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{line}"
    );
    assert_eq!(field(&line, "protocol"), Some("\"5.0\""), "{line}");
    assert_eq!(field(&line, "clean_start"), Some("true"), "{line}");
    assert_eq!(field(&line, "keep_alive"), Some("45"), "{line}");
    let user = field(&line, "user").map(|u| u.trim_matches('"'));
    assert_eq!(user, Some("alice"), "{line}");

    assert_eq!(brokk.stdout(), "", "stdout stays free");
    let stdout = brokk.stdout();
    assert_eq!(brokk.stop().code(), Some(0));
    assert_eq!(stdout, "");
}

#[test]
fn the_config_file_is_named_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broker.toml");
    std::fs::write(
        &path,
        "[listeners.tcp]\nbind = \"127.0.0.1:0\"\n[metrics]\nenabled = false\n",
    )
    .expect("write");
    let mut brokk = BrokkProcess::start(["--config".as_ref(), path.as_os_str()], &[]);
    let first = brokk.wait_line(|line| line.contains("brokk starting"));
    assert!(
        first.contains(&format!("config={}", path.display())),
        "{first}"
    );
    brokk.listener("tcp");
    // A loopback listener with anonymous access is not worth a warning.
    assert!(!brokk.log().contains(" WARN "), "{}", brokk.log());
}

#[test]
fn a_configuration_that_refuses_everyone_is_a_warning() {
    let mut envs = LOOPBACK.to_vec();
    envs.push(("BROKK_AUTH__ALLOW_ANONYMOUS", "false"));
    let mut brokk = BrokkProcess::start(Vec::<&str>::new(), &envs);
    brokk.listener("tcp");
    let warnings: Vec<&String> = brokk
        .seen
        .iter()
        .filter(|line| line.contains(" WARN "))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", brokk.log());
    assert!(
        warnings[0].contains("every client will be refused"),
        "{warnings:?}"
    );
}

/// The warning for anonymous access beyond loopback, without opening a port to the network:
/// `--check-config` prints the start-up warnings too (and still exits 0).
#[test]
fn anonymous_access_beyond_loopback_is_a_warning() {
    let out = process::run(["--check-config"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(
        err,
        "brokk: warning: auth.allow_anonymous = true and listeners.tcp, listeners.ws not on \
         loopback: any host that reaches them may connect without credentials\n"
    );
    let out = process::run(["--check-config"], &LOOPBACK);
    assert_eq!(stderr(&out), "", "loopback only: nothing to say");
}

#[tokio::test]
async fn bind_accepts_a_host_name() {
    let mut brokk = BrokkProcess::start(
        Vec::<&str>::new(),
        &[
            ("BROKK_LISTENERS__TCP__BIND", "localhost:0"),
            ("BROKK_LISTENERS__WS__BIND", "localhost:0"),
            ("BROKK_METRICS__BIND", "localhost:0"),
        ],
    );
    let addr = brokk.listener("tcp");
    assert!(addr.ip().is_loopback(), "{addr}");
    let (_client, connack) = Raw::connect(addr, connect_packet(Version::V311, "by-name")).await;
    assert_eq!(connack.reason_code, 0);
    brokk.wait_line(|line| line.contains("metrics at /metrics"));
}
