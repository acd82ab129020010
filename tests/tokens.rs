//! Tokens on the wire (issue 13): v5 Authentication Method "JWT" at CONNECT, the token's
//! `exp` closing the connection with `expired` (v5 DISCONNECT 0xA0), renewal by
//! re-authentication (AUTH 0x19, answered with AUTH 0x00), and a failed renewal closing with
//! `revoked` (0x87). Time-bound cases run a connection over an in-memory duplex on paused
//! time, so a minute-long token expires at once and exactly.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brokk::broker::Broker;
use brokk::config::{Config, JwtAlgorithm, JwtConfig};
use brokk::connection::ConnectionContext;
use brokk::protocol::{self, Auth, Connect, Packet, Version};
use bytes::{Bytes, BytesMut};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

/// An HS256 secret in a key file, and tokens signed with it.
struct Key {
    dir: tempfile::TempDir,
    secret: &'static [u8],
}

impl Key {
    fn new() -> Key {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = b"a secret of thirty-two bytes at least!";
        std::fs::write(dir.path().join("key"), secret).expect("write");
        Key { dir, secret }
    }

    fn config(&self) -> JwtConfig {
        JwtConfig {
            key_file: self.dir.path().join("key"),
            algorithm: JwtAlgorithm::Hs256,
            ..JwtConfig::default()
        }
    }

    fn sign_with(secret: &[u8], user: &str, exp: u64) -> String {
        let claims = serde_json::json!({"sub": user, "exp": exp});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret).expect("key"),
        )
        .expect("sign")
    }

    /// A token for `user` valid `secs` seconds of wall-clock time from now.
    fn sign(&self, user: &str, secs: u64) -> String {
        Key::sign_with(self.secret, user, unix_now() + secs)
    }

    fn forged(&self, user: &str, secs: u64) -> String {
        Key::sign_with(
            b"another secret, not the broker's one",
            user,
            unix_now() + secs,
        )
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

/// A v5 CONNECT under Authentication Method `method` with `token` as Authentication Data.
fn with_method(id: &str, method: &str, token: &str) -> Connect {
    Connect {
        authentication_method: Some(method.to_string()),
        authentication_data: Some(Bytes::copy_from_slice(token.as_bytes())),
        ..connect_packet(Version::V5, id)
    }
}

fn reauthenticate(method: &str, token: &str) -> Packet {
    Packet::Auth(Auth {
        reason_code: 0x19,
        authentication_method: Some(method.to_string()),
        authentication_data: Some(Bytes::copy_from_slice(token.as_bytes())),
        reason_string: None,
    })
}

/// The v5 DISCONNECT the broker closes with: (reason code, reason string).
fn farewell(sent: &[Packet]) -> (u8, Option<String>) {
    match sent.last() {
        Some(Packet::Disconnect(d)) => (d.reason_code, d.reason_string.clone()),
        other => panic!("expected a DISCONNECT last, got {other:?} (all: {sent:?})"),
    }
}

/// MQTT-4.12.0-1/-2/-4/-5, 3.1.4-2: the method "JWT" logs in with a good token, in one step
/// (the CONNACK is the first answer: brokk never asks for more with AUTH 0x18), and is
/// repeated in the CONNACK; a bad token is refused with 0x86 and the connection closed; any
/// other method, or "JWT" without `[auth.jwt]`, gets 0x8C Bad authentication method.
#[tokio::test]
async fn the_jwt_method_logs_in_and_is_repeated_in_the_connack() {
    let key = Key::new();
    let broker = start_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.jwt = key.config();
    })
    .await;
    let addr = broker.addr;
    let (_raw, connack) = Raw::connect(addr, with_method("t", "JWT", &key.sign("tom", 60))).await;
    assert_eq!(connack.reason_code, 0);
    assert_eq!(
        connack.properties.authentication_method.as_deref(),
        Some("JWT")
    );
    for (token, code) in [
        (key.forged("tom", 60), 0x86),
        (Key::sign_with(key.secret, "tom", unix_now() - 5), 0x86),
        ("not a token".to_string(), 0x86),
    ] {
        let (mut raw, connack) = Raw::connect(addr, with_method("t2", "JWT", &token)).await;
        assert_eq!(connack.reason_code, code, "{token}");
        assert_eq!(connack.properties.authentication_method, None);
        assert!(
            raw.until_closed().await.is_empty(),
            "closed after the refusal"
        );
    }
    let scram = with_method("t3", "SCRAM-SHA-256", &key.sign("tom", 60));
    assert_eq!(Raw::connect(addr, scram).await.1.reason_code, 0x8C);
    broker.stop().await;

    let without_tokens = start().await;
    let jwt = with_method("t4", "JWT", &key.sign("tom", 60));
    assert_eq!(
        Raw::connect(without_tokens.addr, jwt).await.1.reason_code,
        0x8C
    );
    without_tokens.stop().await;
}

/// AUTH is a Protocol Error (0x82) from a client whose CONNECT named no method
/// (MQTT-4.12.0-7), or naming another method than its CONNECT (MQTT-4.12.1-1), or with any
/// reason but 0x19 (brokk never asks to continue).
#[tokio::test]
async fn auth_out_of_place_is_a_protocol_error() {
    let key = Key::new();
    let broker = start_with(|c| c.auth.jwt = key.config()).await;
    let token = key.sign("tom", 60);
    let cases = [
        // The token in the password: no method, so no AUTH.
        (
            Connect {
                password: Some(Bytes::copy_from_slice(token.as_bytes())),
                ..connect_packet(Version::V5, "a1")
            },
            reauthenticate("JWT", &token),
        ),
        (
            with_method("a2", "JWT", &token),
            reauthenticate("OTHER", &token),
        ),
        (
            with_method("a3", "JWT", &token),
            Packet::Auth(Auth {
                reason_code: 0x18,
                authentication_method: Some("JWT".to_string()),
                authentication_data: None,
                reason_string: None,
            }),
        ),
    ];
    for (connect, auth) in cases {
        let (mut raw, connack) = Raw::connect(broker.addr, connect).await;
        assert_eq!(connack.reason_code, 0);
        raw.send_packet(&auth).await;
        assert_eq!(farewell(&raw.until_closed().await).0, 0x82, "{auth:?}");
    }
    broker.stop().await;
}

/// MQTT-4.12.1-2: a re-authentication that fails closes the connection, here with `revoked`
/// (DISCONNECT 0x87 Not authorized); its session ends.
#[tokio::test]
async fn a_failed_reauthentication_closes_with_revoked() {
    let key = Key::new();
    let broker = start_with(|c| c.auth.jwt = key.config()).await;
    for (n, bad) in [
        key.forged("tom", 600),
        Key::sign_with(key.secret, "tom", unix_now() - 5),
        key.sign("somebody-else", 600),
        String::new(),
    ]
    .into_iter()
    .enumerate()
    {
        let (mut raw, connack) =
            Raw::connect(broker.addr, with_method("r", "JWT", &key.sign("tom", 600))).await;
        assert_eq!(connack.reason_code, 0);
        raw.send_packet(&reauthenticate("JWT", &bad)).await;
        let (code, label) = farewell(&raw.until_closed().await);
        assert_eq!((code, label.as_deref()), (0x87, Some("revoked")), "{bad}");
        closed_exactly(&broker, "revoked", n as f64 + 1.0).await;
    }
    broker.stop().await;
}

/// A client on an in-memory duplex, speaking v5 or 3.1.1 to a connection task of `broker`.
struct Wire {
    stream: DuplexStream,
    buf: BytesMut,
    version: Version,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Wire {
    fn open(broker: &Arc<Broker>, version: Version) -> Wire {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let ctx = ConnectionContext {
            broker: broker.clone(),
            peer: "127.0.0.1:1".parse().expect("addr"),
            listener: Arc::from("memory"),
            over_limit: false,
            shutdown,
            identity: brokk::auth::PeerIdentity::None,
        };
        tokio::spawn(brokk::connection::serve(ctx, server));
        Wire {
            stream: client,
            buf: BytesMut::new(),
            version,
            _stop: stop,
        }
    }

    async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        protocol::encode(packet, self.version, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    /// The next packet, or `None` once the broker closed.
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) =
                protocol::decode(&mut self.buf, Some(self.version), 1 << 20).expect("decode")
            {
                return Some(packet);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

fn token_broker(key: &Key) -> Arc<Broker> {
    let mut config = Config::default();
    config.auth.jwt = key.config();
    config.auth.allow_anonymous = false;
    let auth = brokk::auth::Authenticator::from_config(&config.auth).expect("auth");
    Arc::new(Broker::new(config, auth))
}

/// A token's `exp` bounds the connection: when it passes, v5 gets DISCONNECT 0xA0 with the
/// label `expired`, and 3.1.1 (the token in the password) sees the socket close then.
#[tokio::test(start_paused = true)]
async fn a_token_expiring_closes_with_expired() {
    let key = Key::new();
    let broker = token_broker(&key);
    for version in [Version::V5, Version::V311] {
        let start = Instant::now();
        let mut wire = Wire::open(&broker, version);
        let token = key.sign("tom", 60);
        let connect = match version {
            Version::V5 => with_method("e", "JWT", &token),
            Version::V311 => Connect {
                username: Some("tom".to_string()),
                password: Some(Bytes::copy_from_slice(token.as_bytes())),
                ..connect_packet(version, "e")
            },
        };
        wire.send(&Packet::Connect(Box::new(connect))).await;
        assert!(matches!(wire.recv().await, Some(Packet::ConnAck(c)) if c.reason_code == 0));
        let last = wire.recv().await;
        let waited = start.elapsed();
        match version {
            Version::V5 => match last {
                Some(Packet::Disconnect(d)) => {
                    assert_eq!(d.reason_code, 0xA0);
                    assert_eq!(d.reason_string.as_deref(), Some("expired"));
                }
                other => panic!("expected DISCONNECT 0xA0, got {other:?}"),
            },
            Version::V311 => assert_eq!(last, None),
        }
        // The wall clock may be up to a second into the token's first second.
        assert!(
            waited > Duration::from_secs(58) && waited <= Duration::from_secs(61),
            "{version:?}: closed after {waited:?}"
        );
    }
}

/// MQTT 5.0 §4.12.1: a v5 client that connected with method "JWT" renews with AUTH 0x19 and
/// a fresh token before its token expires; brokk answers AUTH 0x00 (MQTT-3.15.2-1), the
/// method repeated (MQTT-4.12.0-5), no Reason String or User Property to outgrow the client's
/// Maximum Packet Size (MQTT-3.15.2-2), and the connection outlives the first token, until
/// the second one's `exp`.
#[tokio::test(start_paused = true)]
async fn reauthentication_keeps_the_connection_past_the_first_exp() {
    let key = Key::new();
    let broker = token_broker(&key);
    let start = Instant::now();
    let mut wire = Wire::open(&broker, Version::V5);
    let first = with_method("renew", "JWT", &key.sign("tom", 60));
    wire.send(&Packet::Connect(Box::new(first))).await;
    assert!(matches!(wire.recv().await, Some(Packet::ConnAck(c)) if c.reason_code == 0));

    tokio::time::sleep(Duration::from_secs(30)).await;
    // Paused time leaves the wall clock where it was: this token is good 120 s from the
    // CONNECT's clock, so until about 150 s on the connection's.
    wire.send(&reauthenticate("JWT", &key.sign("tom", 120)))
        .await;
    match wire.recv().await {
        Some(Packet::Auth(a)) => {
            assert_eq!(a.reason_code, 0x00);
            assert_eq!(a.authentication_method.as_deref(), Some("JWT"));
            assert_eq!(a.reason_string, None);
        }
        other => panic!("expected AUTH 0x00, got {other:?}"),
    }

    tokio::time::sleep(Duration::from_secs(60)).await;
    wire.send(&Packet::PingReq).await;
    assert_eq!(
        wire.recv().await,
        Some(Packet::PingResp),
        "alive past the first exp"
    );

    match wire.recv().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(
                (d.reason_code, d.reason_string.as_deref()),
                (0xA0, Some("expired"))
            )
        }
        other => panic!("expected DISCONNECT 0xA0, got {other:?}"),
    }
    let waited = start.elapsed();
    assert!(
        waited > Duration::from_secs(148) && waited <= Duration::from_secs(151),
        "closed after {waited:?}"
    );
}
