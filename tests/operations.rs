//! Operations (issue 4) end to end: TLS listeners through the server, passwords, the
//! metrics endpoint, graceful shutdown with drain, SIGTERM on the binary, --check-config.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use brokk::config::{ListenerConfig, TlsConfig};
use brokk::protocol::{Packet, Publish, QoS, Version};
use bytes::Bytes;
use common::tls::mqtt_over_tls;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// Test certificates made at test time (never committed): a CA, a server certificate for
/// localhost and a client certificate.
struct TestCerts {
    dir: tempfile::TempDir,
    ca: String,
    client_cert: String,
    client_key: String,
}

fn test_certs() -> TestCerts {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let issue = |name: &str| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = issue("localhost");
    let (client_cert, client_key) = issue("client");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.path().join("server.pem"), server_cert).expect("write");
    std::fs::write(dir.path().join("server.key"), server_key).expect("write");
    TestCerts {
        dir,
        ca: ca.pem(),
        client_cert,
        client_key,
    }
}

fn tls_client(certs: &TestCerts, with_cert: bool) -> tokio_rustls::TlsConnector {
    let client = with_cert.then_some((certs.client_cert.as_str(), certs.client_key.as_str()));
    common::tls::connector(&certs.ca, client)
}

#[tokio::test]
async fn tls_listener_serves_mqtt_and_refuses_clients_without_a_certificate() {
    let certs = test_certs();
    let path = |name: &str| certs.dir.path().join(name);
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
    assert_eq!(mqtt_over_tls(addr, tls_client(&certs, true)).await, Ok(0));
    let refused = mqtt_over_tls(addr, tls_client(&certs, false)).await;
    assert!(
        refused.is_err(),
        "a client without a certificate got {refused:?}"
    );
    assert!(
        broker
            .wait_metric(
                "brokk_connections_closed_total{reason=\"io_exception\"}",
                1.0
            )
            .await
            >= 1.0
    );
    broker.stop().await;
}

#[tokio::test]
async fn wrong_passwords_are_refused_and_counted_as_aborted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("passwd");
    brokk::auth::passwd_set(&file, "alice", "right").expect("passwd");
    let broker = start_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = file.clone();
    })
    .await;
    let login = |version, password: &str| {
        let mut connect = connect_packet(version, "alice");
        connect.username = Some("alice".to_string());
        connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
        connect
    };
    let (_ok, connack) = Raw::connect(broker.addr, login(Version::V5, "right")).await;
    assert_eq!(connack.reason_code, 0);
    let (mut bad, connack) = Raw::connect(broker.addr, login(Version::V5, "wrong")).await;
    assert_eq!(connack.reason_code, 0x86);
    assert!(bad.until_closed().await.is_empty());
    let (_bad, connack) = Raw::connect(broker.addr, login(Version::V311, "wrong")).await;
    assert_ne!(connack.reason_code, 0, "3.1.1: refused (return code 4)");
    let (_anon, connack) = Raw::connect(broker.addr, connect_packet(Version::V5, "anon")).await;
    assert_eq!(connack.reason_code, 0x87);
    assert_eq!(
        broker
            .wait_metric("brokk_connections_closed_total{reason=\"aborted\"}", 3.0)
            .await,
        3.0
    );
    // Refusals carry their reason in a `code` label.
    for code in ["bad_credentials", "not_authorized"] {
        let series =
            format!("brokk_connects_total{{protocol=\"5.0\",result=\"refused\",code=\"{code}\"}}");
        assert_eq!(broker.metric(&series).await, 1.0, "{series}");
    }
    broker.stop().await;
}

#[tokio::test]
async fn metrics_endpoint_lists_every_contract_metric() {
    let broker = start().await;
    let text = broker.metrics_text().await;
    for name in [
        "brokk_connections",
        "brokk_sessions",
        "brokk_connections_closed_total",
        "brokk_connects_total",
        "brokk_messages_received_total",
        "brokk_messages_sent_total",
        "brokk_bytes_received_total",
        "brokk_bytes_sent_total",
        "brokk_messages_dropped_total",
        "brokk_queued_messages",
        "brokk_retained_messages",
        "brokk_subscriptions",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "/metrics lacks {name}"
        );
    }
    broker.stop().await;
}

/// Graceful shutdown: what was routed to a subscriber before the stop is written before its
/// socket closes, then v5 DISCONNECT 0x8B.
#[tokio::test]
async fn shutdown_drains_in_flight_messages_before_0x8b() {
    let broker = start_with(|c| {
        c.limits.max_queue_depth = 10_000;
        c.limits.shutdown_drain = Duration::from_secs(10);
    })
    .await;
    let (mut sub, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "drain")).await;
    sub.send_packet(&Packet::Subscribe(brokk::protocol::Subscribe {
        packet_id: 1,
        filters: vec![brokk::protocol::SubscriptionRequest {
            filter: "d".into(),
            qos: QoS::AtMostOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: brokk::protocol::RetainHandling::SendAtSubscribe,
        }],
        subscription_identifier: None,
        user_properties: vec![],
    }))
    .await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    // 2,000 x 8 KiB: far more than the socket buffers hold, so most is still queued in the
    // broker when the shutdown starts (the subscriber reads nothing until then).
    let (mut publisher, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "pub")).await;
    let payload = Bytes::from(vec![7u8; 8192]);
    for _ in 0..2000 {
        publisher
            .send_packet(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "d".into(),
                packet_id: 0,
                payload: payload.clone(),
                topic_alias: None,
                subscription_identifiers: vec![],
                properties: Default::default(),
            }))
            .await;
    }
    publisher.send_packet(&Packet::PingReq).await;
    assert_eq!(
        publisher.recv().await,
        Some(Packet::PingResp),
        "all 2,000 routed"
    );
    let stopping = tokio::spawn(broker.stop());
    let mut received = 0;
    let last = loop {
        match sub.recv().await {
            Some(Packet::Publish(_)) => received += 1,
            other => break other,
        }
    };
    assert_eq!(
        received, 2000,
        "every routed message was written before the close"
    );
    assert!(
        matches!(&last, Some(Packet::Disconnect(d)) if d.reason_code == 0x8B),
        "then 0x8B, got {last:?}"
    );
    stopping.await.expect("shutdown finished");
}

/// The binary: SIGTERM sends v5 clients 0x8B and exits 0.
#[tokio::test]
async fn sigterm_disconnects_with_0x8b_and_exits_0() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_brokk"))
        .env("BROKK_STORAGE__BACKEND", "memory")
        .env("BROKK_LISTENERS__TCP__BIND", "127.0.0.1:0")
        .env("BROKK_LISTENERS__WS__BIND", "127.0.0.1:0")
        .env("BROKK_METRICS__BIND", "127.0.0.1:0")
        .env("BROKK_ADMIN__BIND", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("brokk starts");
    // Logs go to stderr.
    let stdout = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx.recv_timeout(WAIT).expect("brokk logs its listener");
        if line.contains("listening") && line.contains("listener=tcp") {
            let addr = line
                .split("addr=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .expect("addr");
            break addr
                .parse::<std::net::SocketAddr>()
                .expect("socket address");
        }
    };
    let (mut raw, connack) = Raw::connect(addr, connect_packet(Version::V5, "sig")).await;
    assert_eq!(connack.reason_code, 0);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let sent = raw.until_closed().await;
    assert!(
        matches!(sent.last(), Some(Packet::Disconnect(d)) if d.reason_code == 0x8B),
        "got {sent:?}"
    );
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn check_config_names_the_bad_key_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nconnect_timeout = \"ten\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_brokk"))
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("limits.connect_timeout"),
        "{out:?}"
    );

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[limits]\nmax_pakcet_size = 10\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_brokk"))
        .args(["--check-config", "--config"])
        .arg(&typo)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_pakcet_size"),
        "{out:?}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_brokk"))
        .arg("--check-config")
        .env("BROKK_LIMITS__MAX_PACKET_SIZE", "lots")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_packet_size"),
        "{out:?}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_brokk"))
        .arg("--check-config")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "the built-in configuration is valid"
    );
}

#[test]
fn passwd_adds_updates_and_deletes_users() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("passwd");
    let set = |user: &str, password: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_brokk"))
            .arg("passwd")
            .arg(&file)
            .arg(user)
            .stdin(Stdio::piped())
            .spawn()
            .expect("run");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{password}").expect("write");
        drop(stdin);
        assert!(child.wait().expect("wait").success());
    };
    set("alice", "one");
    set("bob", "two");
    set("alice", "three");
    let text = std::fs::read_to_string(&file).expect("read");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("alice:")).count(),
        1,
        "updated in place"
    );
    assert!(
        text.contains("bob:$argon2id$"),
        "salted argon2id hashes, not the password"
    );
    assert!(!text.contains("three"));
    let status = Command::new(env!("CARGO_BIN_EXE_brokk"))
        .args(["passwd", "--delete"])
        .arg(&file)
        .arg("alice")
        .status()
        .expect("run");
    assert!(status.success());
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(!text.contains("alice:") && text.contains("bob:"));
}

/// Idle memory: a connection task keeps only its main loop's state (connect, refusal, close
/// and TLS phases are boxed while they run). Guards the per-connection footprint.
#[tokio::test]
async fn connection_task_state_stays_small() {
    let config = brokk::config::Config::default();
    let auth = brokk::auth::Authenticator::from_config(&config.auth).expect("auth");
    let broker = Arc::new(brokk::broker::Broker::new(config, auth));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let (stream, _peer) = tokio::io::duplex(64);
    let ctx = brokk::connection::ConnectionContext {
        broker,
        peer: "127.0.0.1:1".parse().expect("addr"),
        listener: std::sync::Arc::from("tcp"),
        over_limit: false,
        shutdown,
        identity: brokk::auth::PeerIdentity::None,
    };
    let task = brokk::connection::serve(ctx, stream);
    let size = std::mem::size_of_val(&task);
    eprintln!("FUTSIZE {size}");
    assert!(size <= 2048, "the connection future is {size} bytes");
}
