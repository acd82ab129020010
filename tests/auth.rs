//! Authentication end to end (issue 13, and issue 9's wrong-password flood): Mosquitto's
//! password files, tokens, refusal codes in metrics, TLS identities and CRLs, the login gate
//! under a flood, and SIGHUP reloads on the binary.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use brokk::config::{JwtAlgorithm, JwtConfig, ListenerConfig, TlsConfig};
use brokk::protocol::{self, Connect, Packet, Version};
use bytes::{Bytes, BytesMut};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn login(version: Version, client_id: &str, user: Option<&str>, password: Option<&str>) -> Connect {
    let mut connect = connect_packet(version, client_id);
    connect.username = user.map(str::to_string);
    connect.password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
    connect
}

/// The CONNACK reason code (v5 numbering; 3.1.1 return codes as the codec reads them back).
async fn connack(addr: SocketAddr, connect: Connect) -> u8 {
    Raw::connect(addr, connect).await.1.reason_code
}

/// Lines of a password file made by Debian's mosquitto_passwd 2.0.11 (alice: `$7$`, the
/// default; bob: `-H sha512`, `$6$`). Used where the binary is not installed.
const RECORDED_MOSQUITTO_FILE: &str = "\
alice:$7$101$Edl1QlddWy3xOJdz$VmiugcUd/WqPJX1+JNhsIdKRPzBxgUN6wyO1S+7QBfKAdY/11EuLVk3tdZyzh7FCNqWpUkNIEYaN5D51OTqwGA==
bob:$6$QU38drAMxAcl35sq$x2IYtSr5mVp8n0YImxoKucuYkoMBJiweNDv6Jd7gJHkR8zF6bPdVMBSIjCTrCalUOl/E48I8gHS5/HAmHR1Z5w==
";

/// Writes a password file with alice/wonderland (`$7$`) and bob/builder (`$6$`) using the
/// real mosquitto_passwd (scripts/test installs Debian's `mosquitto` package and names it in
/// BROKK_MOSQUITTO_PASSWD, which makes the binary mandatory); else the recorded lines.
fn mosquitto_password_file(file: &Path) -> &'static str {
    let required = std::env::var_os("BROKK_MOSQUITTO_PASSWD");
    let binary = required
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("mosquitto_passwd"));
    let run = |args: &[&str]| {
        Command::new(&binary)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    let path = file.to_str().expect("utf-8 path");
    match run(&["-c", "-b", path, "alice", "wonderland"]) {
        Ok(status) if status.success() => {
            let status = run(&["-H", "sha512", "-b", path, "bob", "builder"]).expect("run");
            assert!(status.success());
            "mosquitto_passwd"
        }
        other => {
            assert!(
                required.is_none(),
                "BROKK_MOSQUITTO_PASSWD is set but {binary:?} failed: {other:?}"
            );
            eprintln!("mosquitto_passwd not found: using lines it made earlier");
            std::fs::write(file, RECORDED_MOSQUITTO_FILE).expect("write");
            "recorded lines"
        }
    }
}

#[tokio::test]
async fn a_mosquitto_passwd_file_logs_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("passwd");
    let source = mosquitto_password_file(&file);
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(
        text.contains("alice:$7$") && text.contains("bob:$6$"),
        "{text}"
    );
    let broker = start_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = file.clone();
    })
    .await;
    let addr = broker.addr;
    for version in [Version::V5, Version::V311] {
        let ok = |user, password| login(version, "m", Some(user), Some(password));
        assert_eq!(
            connack(addr, ok("alice", "wonderland")).await,
            0,
            "{source}"
        );
        assert_eq!(connack(addr, ok("bob", "builder")).await, 0, "{source}");
        assert_eq!(connack(addr, ok("alice", "builder")).await, 0x86);
        assert_eq!(connack(addr, ok("carol", "wonderland")).await, 0x86);
    }
    broker.stop().await;
}

#[tokio::test]
async fn refusals_are_counted_by_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("passwd");
    brokk::auth::passwd_set(&file, "alice", "right").expect("passwd");
    let broker = start_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = file.clone();
    })
    .await;
    let addr = broker.addr;
    assert_eq!(
        connack(addr, login(Version::V5, "a", Some("alice"), Some("right"))).await,
        0
    );
    assert_eq!(
        connack(addr, login(Version::V5, "b", Some("alice"), Some("wrong"))).await,
        0x86
    );
    assert_eq!(
        connack(addr, login(Version::V311, "c", Some("alice"), Some("x"))).await,
        0x86
    );
    assert_eq!(
        connack(addr, login(Version::V5, "d", None, None)).await,
        0x87
    );
    let series = |protocol: &str, code: &str| {
        format!(
            "brokk_connects_total{{protocol=\"{protocol}\",result=\"refused\",code=\"{code}\"}}"
        )
    };
    assert_eq!(
        broker
            .wait_metric(&series("5.0", "bad_credentials"), 1.0)
            .await,
        1.0
    );
    assert_eq!(
        broker.metric(&series("3.1.1", "bad_credentials")).await,
        1.0
    );
    assert_eq!(broker.metric(&series("5.0", "not_authorized")).await, 1.0);
    assert_eq!(broker.metric(&series("5.0", "server_busy")).await, 0.0);
    assert_eq!(
        broker
            .metric("brokk_connects_total{protocol=\"5.0\",result=\"accepted\"}")
            .await,
        1.0
    );
    // The close reason of a refused CONNECT stays `aborted`.
    assert_eq!(
        broker
            .wait_metric("brokk_connections_closed_total{reason=\"aborted\"}", 3.0)
            .await,
        3.0
    );
    broker.stop().await;
}

/// A signing key made at test time and the `[auth.jwt]` naming its verifying key.
struct TokenKey {
    _dir: tempfile::TempDir,
    encoding: jsonwebtoken::EncodingKey,
    algorithm: jsonwebtoken::Algorithm,
    config: JwtConfig,
}

impl TokenKey {
    fn new(algorithm: JwtAlgorithm) -> TokenKey {
        let dir = tempfile::tempdir().expect("tempdir");
        let (encoding, verifying, alg) = match algorithm {
            JwtAlgorithm::Hs256 => {
                use ring::rand::SecureRandom;
                let mut random = [0u8; 32];
                ring::rand::SystemRandom::new()
                    .fill(&mut random)
                    .expect("random");
                let secret: String = random.iter().map(|b| format!("{b:02x}")).collect();
                (
                    jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("secret"),
                    format!("{secret}\n").into_bytes(),
                    jsonwebtoken::Algorithm::HS256,
                )
            }
            JwtAlgorithm::Rs256 => {
                use rsa::pkcs1::EncodeRsaPrivateKey;
                use rsa::pkcs8::EncodePublicKey;
                use rsa::{Generate, PrivateKey};
                let private = PrivateKey::generate();
                let pem = private.to_pkcs1_pem(Default::default()).expect("pem");
                let public = private
                    .to_public_key()
                    .to_public_key_pem(Default::default())
                    .expect("pem");
                (
                    jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).expect("key"),
                    public.into_bytes(),
                    jsonwebtoken::Algorithm::RS256,
                )
            }
            JwtAlgorithm::Es256 => {
                let pair = rcgen::KeyPair::generate().expect("key");
                (
                    jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())
                        .expect("key"),
                    pair.public_key_pem().into_bytes(),
                    jsonwebtoken::Algorithm::ES256,
                )
            }
        };
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, verifying).expect("write");
        TokenKey {
            _dir: dir,
            encoding,
            algorithm: alg,
            config: JwtConfig {
                key_file,
                algorithm,
                ..JwtConfig::default()
            },
        }
    }

    fn sign(&self, user: &str, exp: u64) -> String {
        let claims = serde_json::json!({"sub": user, "exp": exp});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(self.algorithm),
            &claims,
            &self.encoding,
        )
        .expect("sign")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

#[tokio::test]
async fn tokens_log_in_with_each_algorithm() {
    for algorithm in [
        JwtAlgorithm::Hs256,
        JwtAlgorithm::Rs256,
        JwtAlgorithm::Es256,
    ] {
        let key = TokenKey::new(algorithm);
        let impostor = TokenKey::new(algorithm);
        let broker = start_with(|c| {
            c.auth.allow_anonymous = false;
            c.auth.jwt = key.config.clone();
        })
        .await;
        let addr = broker.addr;
        let good = key.sign("tom", unix_now() + 600);
        for version in [Version::V5, Version::V311] {
            // 3.1.1 needs a user name to carry a password; any name does.
            let token = |t: &str| login(version, "t", Some("jwt"), Some(t));
            assert_eq!(connack(addr, token(&good)).await, 0, "{algorithm:?}");
            let forged = impostor.sign("tom", unix_now() + 600);
            assert_eq!(connack(addr, token(&forged)).await, 0x86, "{algorithm:?}");
            let expired = key.sign("tom", unix_now() - 5);
            assert_eq!(connack(addr, token(&expired)).await, 0x86, "{algorithm:?}");
            assert_eq!(connack(addr, token("not a token")).await, 0x86);
        }
        // v5: a token without a user name.
        assert_eq!(
            connack(addr, login(Version::V5, "t", None, Some(&good))).await,
            0
        );
        broker.stop().await;
    }
}

fn vm_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field")
}

/// Samples RSS until dropped; the peak seen.
struct RssPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssPeak {
    fn start() -> RssPeak {
        let peak = Arc::new(AtomicU64::new(vm_kib("VmRSS:")));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(vm_kib("VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        RssPeak { peak, stop }
    }

    fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A raw client on a socket bound to `source` (a loopback address other than 127.0.0.1
/// stands for another machine).
async fn connect_from(source: &str, addr: SocketAddr, connect: Connect) -> u8 {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind");
    let stream = socket.connect(addr).await.expect("connect");
    let mut raw = Raw::from_stream(stream, connect.version);
    raw.send_packet(&Packet::Connect(Box::new(connect))).await;
    match raw.recv().await {
        Some(Packet::ConnAck(connack)) => connack.reason_code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Issue 9, item 2: 500 concurrent wrong-password CONNECTs against hashes of 19 MiB each
/// (argon2's defaults, which brokk used before) once took RSS to gigabytes. Through the login
/// gate at most one check per core runs, the rest wait their turn or are refused as busy, and
/// a client from another address still gets in at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_flood_stays_bounded_and_others_still_get_in() {
    use argon2::password_hash::PasswordHasher;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("passwd");
    let heavy = argon2::Argon2::default()
        .hash_password(b"right")
        .expect("hash");
    assert!(heavy.to_string().contains("m=19456"), "{heavy}");
    std::fs::write(&file, format!("alice:{heavy}\n")).expect("write");
    let broker = start_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = file.clone();
        c.auth.pending_timeout = Duration::from_secs(2);
    })
    .await;
    let addr = broker.addr;
    // Warm up: the gate's threads have run a check before the baseline is taken.
    assert_eq!(
        connack(addr, login(Version::V5, "w", Some("alice"), Some("right"))).await,
        0
    );
    let before_kib = vm_kib("VmRSS:");
    let sampler = RssPeak::start();

    let started = Instant::now();
    let flood: Vec<_> = (0..500)
        .map(|i| {
            tokio::spawn(async move {
                let user = if i % 2 == 0 { "alice" } else { "mallory" };
                let connect = login(Version::V5, &format!("f{i}"), Some(user), Some("wrong"));
                connect_from("127.0.0.1", addr, connect).await
            })
        })
        .collect();
    // The gate overflows: some of the flood is refused as busy already.
    let busy = "brokk_connects_total{protocol=\"5.0\",result=\"refused\",code=\"server_busy\"}";
    assert!(
        broker.wait_metric(busy, 1.0).await >= 1.0,
        "the queue never filled"
    );
    let legit_started = Instant::now();
    let legit = login(Version::V5, "legit", Some("alice"), Some("right"));
    assert_eq!(connect_from("127.0.0.2", addr, legit).await, 0);
    let legit_took = legit_started.elapsed();

    let (mut refused_bad, mut refused_busy) = (0, 0);
    for task in flood {
        match task.await.expect("flood client") {
            0x86 => refused_bad += 1,
            0x89 => refused_busy += 1,
            other => panic!("a flood client got {other:#x}"),
        }
    }
    let flood_took = started.elapsed();
    let growth_mib = sampler.peak_kib().saturating_sub(before_kib) / 1024;
    drop(sampler);
    eprintln!(
        "flood: {refused_bad} x 0x86, {refused_busy} x 0x89 in {flood_took:?}; \
         the client from 127.0.0.2 got in after {legit_took:?}; RSS grew {growth_mib} MiB"
    );
    assert!(refused_busy > 0 && refused_bad > 0);
    assert!(legit_took < Duration::from_secs(2), "took {legit_took:?}");
    // Two cores: two checks of 19 MiB at a time, plus 500 connections' buffers.
    assert!(growth_mib < 100, "RSS grew {growth_mib} MiB");
    broker.stop().await;
}

/// The binary on a config file, its log lines (stderr) on a channel.
struct Binary {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    addr: SocketAddr,
}

impl Binary {
    fn start(config: &Path) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_brokk"))
            .arg("--config")
            .arg(config)
            .env("BROKK_STORAGE__BACKEND", "memory")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("brokk starts");
        let stdout = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut binary = Binary {
            child,
            lines,
            addr: "0.0.0.0:0".parse().expect("addr"),
        };
        let line = binary.wait_for("listener=tcp");
        binary.addr = line
            .split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .expect("listening address");
        binary
    }

    /// The next log line containing `text` (earlier lines are skipped).
    fn wait_for(&self, text: &str) -> String {
        let mut skipped = Vec::new();
        loop {
            let line = self.lines.recv_timeout(WAIT).unwrap_or_else(|_| {
                panic!(
                    "brokk never logged {text:?}; it logged meanwhile:\n{}",
                    skipped.join("\n")
                );
            });
            if line.contains(text) {
                return line;
            }
            skipped.push(line);
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sighup_reloads_users_and_a_broken_file_keeps_the_old_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    let acl = dir.path().join("acl");
    brokk::auth::passwd_set(&passwd, "alice", "one").expect("passwd");
    std::fs::write(&acl, "user alice\ntopic readwrite alice/#\n").expect("write");
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[listeners.tcp]\nbind = \"127.0.0.1:0\"\n[metrics]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
             [auth]\nallow_anonymous = false\npassword_file = {:?}\nacl_file = {:?}\n",
            passwd.display().to_string(),
            acl.display().to_string()
        ),
    )
    .expect("write");
    let mut brokk = Binary::start(&config);
    let addr = brokk.addr;
    let user = |name: &str, password: &str| login(Version::V5, name, Some(name), Some(password));
    assert_eq!(connack(addr, user("alice", "one")).await, 0);
    assert_eq!(connack(addr, user("bob", "two")).await, 0x86);

    // A user added with `brokk passwd` logs in after SIGHUP, without a restart.
    brokk::auth::passwd_set(&passwd, "bob", "two").expect("passwd");
    brokk.signal("HUP");
    let line = brokk.wait_for("auth reloaded");
    assert!(line.contains("generation=2"), "{line}");
    assert_eq!(connack(addr, user("bob", "two")).await, 0);

    // A file that fails to parse: the reload is refused and logged, the old rules stay.
    std::fs::write(&acl, "user alice\ntopic sideways alice/#\n").expect("write");
    brokk.signal("HUP");
    let line = brokk.wait_for("auth reload failed");
    assert!(
        line.contains("auth.acl_file") && line.contains("line 2"),
        "{line}"
    );
    assert_eq!(connack(addr, user("alice", "one")).await, 0);
    assert_eq!(connack(addr, user("bob", "two")).await, 0);

    // A removed user is named by the reload and refused from then on; a client it had
    // connected is closed with `revoked` (v5 DISCONNECT 0x87), bob's stays.
    let (mut alice, connack_alice) = Raw::connect(addr, user("alice", "one")).await;
    assert_eq!(connack_alice.reason_code, 0);
    let (mut bob, connack_bob) = Raw::connect(addr, user("bob", "two")).await;
    assert_eq!(connack_bob.reason_code, 0);
    brokk::auth::passwd_delete(&passwd, "alice").expect("delete");
    std::fs::write(&acl, "user bob\ntopic readwrite bob/#\n").expect("write");
    brokk.signal("HUP");
    // The reload's line and alice's close line come in either order: the connection hears of
    // the reload as soon as the new rules are in force, before the reload logs its summary.
    let (mut reloaded, mut closed) = (None, false);
    while reloaded.is_none() || !closed {
        let line = brokk.wait_for("");
        if line.contains("auth reloaded") {
            reloaded = Some(line);
        } else if line.contains("connection closed") && line.contains("revoked") {
            closed = true;
        }
    }
    let line = reloaded.unwrap_or_default();
    assert!(
        line.contains("generation=3") && line.contains("alice"),
        "{line}"
    );
    match alice.until_closed().await.last() {
        Some(Packet::Disconnect(d)) => assert_eq!(
            (d.reason_code, d.reason_string.as_deref()),
            (0x87, Some("revoked"))
        ),
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    assert_eq!(connack(addr, user("alice", "one")).await, 0x86);
    bob.send_packet(&Packet::PingReq).await;
    assert_eq!(bob.recv().await, Some(Packet::PingResp));

    // Through all this, SIGHUP never ended the process; SIGTERM still stops it cleanly.
    assert!(
        brokk.child.try_wait().expect("wait").is_none(),
        "brokk exited"
    );
    brokk.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let status = brokk.child.wait();
        (brokk, status)
    })
    .await
    .expect("join")
    .1
    .expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn check_config_reads_the_auth_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic read a\ntopic bogus b c\n").expect("write");
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!("[auth]\nacl_file = {:?}\n", acl.display().to_string()),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_brokk"))
        .args(["--check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth.acl_file") && stderr.contains("line 2"),
        "{stderr}"
    );
}

/// A CA, a server certificate, client certificates with and without a Common Name, and a CRL
/// revoking one of them, made at test time.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
}

struct ClientCert {
    cert: String,
    key: String,
}

impl Pki {
    fn new(revoked_serial: u64) -> (Pki, [ClientCert; 3]) {
        use rcgen::{
            BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
            DistinguishedName, DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
            RevokedCertParams, SerialNumber, date_time_ymd,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
        let issue = |names: Vec<String>, cn: Option<&str>, serial: u64| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params.distinguished_name = DistinguishedName::new();
            if let Some(cn) = cn {
                params.distinguished_name.push(DnType::CommonName, cn);
            }
            params.serial_number = Some(SerialNumber::from(serial));
            let cert = params.signed_by(&key, &ca).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = issue(vec!["localhost".to_string()], Some("localhost"), 1);
        let clients = [
            issue(vec![], Some("device-7"), 10),
            issue(vec![], None, 11),
            issue(vec![], Some("revoked-device"), revoked_serial),
        ]
        .map(|(cert, key)| ClientCert { cert, key });
        let crl = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(revoked_serial),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca)
        .expect("crl");
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server_cert),
            ("server.key", server_key),
            ("crl.pem", crl.pem().expect("pem")),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        (
            Pki {
                dir,
                ca_pem: ca.pem(),
            },
            clients,
        )
    }

    fn listener(&self, identity_as_username: bool, crl: bool) -> ListenerConfig {
        let path = |name: &str| self.dir.path().join(name);
        ListenerConfig {
            bind: "127.0.0.1:0".parse().expect("addr"),
            tls: Some(TlsConfig {
                cert: path("server.pem"),
                key: path("server.key"),
                client_ca: Some(path("ca.pem")),
                handshake_timeout: Duration::from_secs(5),
                identity_as_username,
                crl: crl.then(|| path("crl.pem")),
            }),
            tcp_keepalive: None,
            write_timeout: None,
            websocket: None,
            proxy_protocol: false,
        }
    }

    /// CONNECT (no credentials) over TLS with `client`'s certificate: the CONNACK code, or the
    /// error that ended the handshake.
    async fn connect(&self, addr: SocketAddr, client: &ClientCert) -> Result<u8, String> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).expect("ca"))
            .expect("root");
        let chain = vec![CertificateDer::from_pem_slice(client.cert.as_bytes()).expect("cert")];
        let key = PrivateKeyDer::from_pem_slice(client.key.as_bytes()).expect("key");
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client auth");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let socket = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = connector
            .connect(name, socket)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = BytesMut::new();
        let connect = Packet::Connect(Box::new(connect_packet(Version::V5, "tls")));
        protocol::encode(&connect, Version::V5, &mut out).expect("encode");
        tls.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::new();
        loop {
            let decoded = protocol::decode(&mut buf, Some(Version::V5), 1 << 20)
                .map_err(|e| e.to_string())?;
            if let Some(packet) = decoded {
                return match packet {
                    Packet::ConnAck(c) => Ok(c.reason_code),
                    other => Err(format!("unexpected {other:?}")),
                };
            }
            match tokio::time::timeout(WAIT, tls.read_buf(&mut buf)).await {
                Ok(Ok(0)) => return Err("closed".to_string()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("timed out".to_string()),
            }
        }
    }
}

#[tokio::test]
async fn a_client_certificate_names_the_user() {
    let (pki, [named, unnamed, _]) = Pki::new(12);
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user device-7\ntopic readwrite #\n").expect("write");
    let broker = start_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.acl_file = acl.clone();
        c.listeners
            .insert("ids".to_string(), pki.listener(true, false));
        c.listeners
            .insert("plain".to_string(), pki.listener(false, false));
    })
    .await;
    let ids = broker.server().local_addr("ids").expect("listener");
    let plain = broker.server().local_addr("plain").expect("listener");
    assert_eq!(pki.connect(ids, &named).await, Ok(0));
    assert_eq!(
        pki.connect(ids, &unnamed).await,
        Ok(0x86),
        "no CN: bad credentials"
    );
    assert_eq!(
        pki.connect(plain, &named).await,
        Ok(0x87),
        "without identity_as_username a certificate is not a login"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused() {
    let (pki, [good, _, revoked]) = Pki::new(12);
    let broker = start_with(|c| {
        c.listeners
            .insert("crl".to_string(), pki.listener(false, true));
        c.listeners
            .insert("nocrl".to_string(), pki.listener(false, false));
    })
    .await;
    let with_crl = broker.server().local_addr("crl").expect("listener");
    let without = broker.server().local_addr("nocrl").expect("listener");
    assert_eq!(pki.connect(with_crl, &good).await, Ok(0));
    let refused = pki.connect(with_crl, &revoked).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_lowercase().contains("revoked")),
        "{refused:?}"
    );
    assert_eq!(pki.connect(without, &revoked).await, Ok(0));
    broker.stop().await;
}
