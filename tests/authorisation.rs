//! Authorisation on the wire (issue 13): the acl_file asked on SUBSCRIBE, PUBLISH, wills,
//! retained messages and deliveries, with the exact codes of MQTT 3.1.1 and 5.0, and what a
//! reload does to connected and waiting sessions. Tokens: `tests/tokens.rs`.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use brokk::protocol::{
    Ack, Connect, Packet, Publish, QoS, RetainHandling, Subscribe, SubscriptionRequest, Version,
    Will,
};
use bytes::Bytes;
use common::*;

/// The anonymous section (in-process brokers have no password file, so every client is
/// anonymous), as the interoperability suite and Paho's test broker use it, plus topics
/// that are only readable, only writable, or writable with one readable topic inside.
const ACL: &str = "\
topic readwrite public/#
topic deny public/secret
topic read news/#
topic write inbox/#
topic read inbox/open
topic readwrite test/#
topic deny test/nosubscribe
";

const NOT_AUTHORIZED: &str = "brokk_messages_dropped_total{reason=\"not_authorized\"}";
const VERSIONS: [Version; 2] = [Version::V5, Version::V311];

async fn acl_broker(acl: &str) -> (tempfile::TempDir, TestBroker) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("acl");
    std::fs::write(&file, acl).expect("write");
    let broker = start_with(|c| c.auth.acl_file = file).await;
    (dir, broker)
}

async fn connected(addr: SocketAddr, version: Version, id: &str) -> Raw {
    let (raw, connack) = Raw::connect(addr, connect_packet(version, id)).await;
    assert_eq!(connack.reason_code, 0, "{id}");
    raw
}

fn request(filter: &str, qos: QoS) -> SubscriptionRequest {
    SubscriptionRequest {
        filter: filter.to_string(),
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    }
}

/// Subscribes to `filters` at QoS 1; the SUBACK's codes.
async fn subscribe(raw: &mut Raw, filters: &[&str]) -> Vec<u8> {
    raw.send_packet(&Packet::Subscribe(Subscribe {
        packet_id: 9,
        filters: filters
            .iter()
            .map(|f| request(f, QoS::AtLeastOnce))
            .collect(),
        subscription_identifier: None,
        user_properties: Vec::new(),
    }))
    .await;
    match raw.recv().await {
        Some(Packet::SubAck(ack)) => ack.reason_codes,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn retained(topic: &str, payload: &str) -> Packet {
    match publish(topic, QoS::AtMostOnce, 0, payload.as_bytes()) {
        Packet::Publish(p) => Packet::Publish(Publish { retain: true, ..p }),
        _ => unreachable!(),
    }
}

/// The next PUBLISH `raw` receives (acknowledging QoS 1), as (topic, payload).
async fn next_message(raw: &mut Raw) -> (String, Bytes) {
    loop {
        match raw.recv().await {
            Some(Packet::Publish(p)) => {
                if p.qos == QoS::AtLeastOnce {
                    raw.send_packet(&Packet::PubAck(Ack::success(p.packet_id)))
                        .await;
                }
                return (p.topic, p.payload);
            }
            Some(_) => {}
            None => panic!("closed while waiting for a PUBLISH"),
        }
    }
}

async fn ack_of(raw: &mut Raw) -> Packet {
    raw.recv().await.expect("an acknowledgement")
}

/// Exact SUBACK codes: 0x87 Not authorized in 5.0, 0x80 Failure in 3.1.1 (MQTT-3.9.3-2,
/// 3.1.1 MQTT-3.8.4-5); a filter whose topics are all readable, or partly (checked per
/// message), is granted.
#[tokio::test]
async fn subscribe_refusals_have_the_exact_codes() {
    let (_dir, broker) = acl_broker(ACL).await;
    let filters = [
        "public/#",         // granted (a deny inside: each message checked)
        "public/secret",    // denied whole
        "inbox/#",          // one readable topic inside
        "nowhere/x",        // no rule reaches it
        "news/+",           // read
        "test/nosubscribe", // Paho's refused topic
        "$share/g/news/#",  // shared subscriptions are judged by their filter
        "$share/g/inbox/closed",
    ];
    for (version, refused) in [(Version::V5, 0x87), (Version::V311, 0x80)] {
        let mut raw = connected(broker.addr, version, "sub").await;
        assert_eq!(
            subscribe(&mut raw, &filters).await,
            [1, refused, 1, refused, 1, refused, 1, refused],
            "{version:?}"
        );
    }
    broker.stop().await;
}

/// A refused PUBLISH is dropped and counted: v5 PUBACK / PUBREC 0x87 (QoS 0: nothing;
/// MQTT-3.4.2-1, 3.5.2-1), 3.1.1 the usual positive acknowledgements (MQTT-3.3.5-2). A refused
/// v5 QoS 2 id is free again at once (MQTT-4.3.3-9).
#[tokio::test]
async fn publish_refusals_v5_answer_0x87_and_v311_acknowledge() {
    let (_dir, broker) = acl_broker(ACL).await;
    for version in VERSIONS {
        let mut sub = connected(broker.addr, version, "reader").await;
        assert_eq!(subscribe(&mut sub, &["news/#", "public/#"]).await, [1, 1]);
        let mut publisher = connected(broker.addr, version, "writer").await;
        let before = broker.metric(NOT_AUTHORIZED).await;
        publisher
            .send_packet(&publish("news/a", QoS::AtMostOnce, 0, b"0"))
            .await;
        publisher
            .send_packet(&publish("news/b", QoS::AtLeastOnce, 1, b"1"))
            .await;
        publisher
            .send_packet(&publish("news/c", QoS::ExactlyOnce, 2, b"2"))
            .await;
        let code = if version == Version::V5 { 0x87 } else { 0x00 };
        match ack_of(&mut publisher).await {
            Packet::PubAck(a) => assert_eq!((a.packet_id, a.reason_code), (1, code)),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        match ack_of(&mut publisher).await {
            Packet::PubRec(a) => assert_eq!((a.packet_id, a.reason_code), (2, code)),
            other => panic!("expected PUBREC, got {other:?}"),
        }
        if version == Version::V311 {
            // 3.1.1: the QoS 2 flow completes as for any message (MQTT-3.3.5-2).
            publisher
                .send_packet(&Packet::PubRel(Ack::success(2)))
                .await;
            match ack_of(&mut publisher).await {
                Packet::PubComp(a) => assert_eq!(a.packet_id, 2),
                other => panic!("expected PUBCOMP, got {other:?}"),
            }
        } else {
            // 5.0: after PUBREC 0x87 the id starts a new exchange (MQTT-4.3.3-9).
            publisher
                .send_packet(&publish("public/ok", QoS::ExactlyOnce, 2, b"ok"))
                .await;
            match ack_of(&mut publisher).await {
                Packet::PubRec(a) => assert_eq!((a.packet_id, a.reason_code), (2, 0)),
                other => panic!("expected PUBREC, got {other:?}"),
            }
            publisher
                .send_packet(&Packet::PubRel(Ack::success(2)))
                .await;
            assert!(matches!(ack_of(&mut publisher).await, Packet::PubComp(_)));
        }
        publisher
            .send_packet(&publish("public/marker", QoS::AtLeastOnce, 3, b"m"))
            .await;
        if version == Version::V5 {
            assert_eq!(next_message(&mut sub).await.0, "public/ok");
        }
        assert_eq!(
            next_message(&mut sub).await.0,
            "public/marker",
            "{version:?}: a refused PUBLISH was delivered"
        );
        assert_eq!(broker.metric(NOT_AUTHORIZED).await, before + 3.0);
    }
    broker.stop().await;
}

/// `$SYS` belongs to the broker: no client publishes there, even with no acl_file at all.
#[tokio::test]
async fn sys_topics_stay_unwritable_without_an_acl() {
    let broker = start().await;
    let mut sub = connected(broker.addr, Version::V5, "sys-reader").await;
    assert_eq!(subscribe(&mut sub, &["$SYS/#", "plain"]).await, [1, 1]);
    let mut publisher = connected(broker.addr, Version::V5, "sys-writer").await;
    publisher
        .send_packet(&publish("$SYS/uptime", QoS::AtLeastOnce, 1, b"0"))
        .await;
    match ack_of(&mut publisher).await {
        Packet::PubAck(a) => assert_eq!(a.reason_code, 0x87),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    publisher
        .send_packet(&publish("plain", QoS::AtLeastOnce, 2, b"p"))
        .await;
    // The broker's own retained `$SYS` figures may come first; the client's never does.
    loop {
        let (topic, _) = next_message(&mut sub).await;
        assert_ne!(topic, "$SYS/uptime", "a client's PUBLISH reached $SYS");
        if topic == "plain" {
            break;
        }
    }
    broker.stop().await;
}

fn with_will(version: Version, id: &str, topic: &str) -> Connect {
    Connect {
        will: Some(Will {
            topic: topic.to_string(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            delay_interval: 0,
            properties: Default::default(),
        }),
        ..connect_packet(version, id)
    }
}

/// A will whose topic the client may not publish to is refused at CONNECT: v5 CONNACK 0x87,
/// 3.1.1 return code 5 (read back as 0x87), counted as `not_authorized`, and the connection
/// closed (MQTT-3.1.4-2).
#[tokio::test]
async fn a_will_on_a_refused_topic_refuses_the_connect() {
    let (_dir, broker) = acl_broker(ACL).await;
    for (version, label) in [(Version::V5, "5.0"), (Version::V311, "3.1.1")] {
        let series = format!(
            "brokk_connects_total{{protocol=\"{label}\",result=\"refused\",code=\"not_authorized\"}}"
        );
        let before = broker.metric(&series).await;
        let (mut raw, connack) =
            Raw::connect(broker.addr, with_will(version, "w", "news/will")).await;
        assert_eq!(connack.reason_code, 0x87, "{version:?}");
        assert!(raw.until_closed().await.is_empty());
        assert_eq!(
            broker.wait_metric(&series, before + 1.0).await,
            before + 1.0
        );
        // A will the client may publish is accepted, and fires.
        let mut sub = connected(broker.addr, version, "will-reader").await;
        assert_eq!(subscribe(&mut sub, &["public/will"]).await, [1]);
        let (raw, connack) =
            Raw::connect(broker.addr, with_will(version, "w", "public/will")).await;
        assert_eq!(connack.reason_code, 0);
        drop(raw);
        assert_eq!(next_message(&mut sub).await.0, "public/will");
    }
    broker.stop().await;
}

/// Through a filter that reaches topics the client may not read, each message is checked on
/// its way out (live and retained), and the refused ones are counted.
#[tokio::test]
async fn deliveries_and_retained_messages_follow_read_rules() {
    let (_dir, broker) = acl_broker(ACL).await;
    let mut publisher = connected(broker.addr, Version::V5, "writer").await;
    publisher.send_packet(&retained("inbox/closed", "r1")).await;
    publisher.send_packet(&retained("inbox/open", "r2")).await;
    // Retained messages are stored once the publisher's next packet is answered.
    publisher.send_packet(&Packet::PingReq).await;
    assert_eq!(ack_of(&mut publisher).await, Packet::PingResp);
    for version in VERSIONS {
        let before = broker.metric(NOT_AUTHORIZED).await;
        let mut sub = connected(broker.addr, version, "reader").await;
        assert_eq!(subscribe(&mut sub, &["inbox/#"]).await, [1]);
        let (topic, payload) = next_message(&mut sub).await;
        assert_eq!((topic.as_str(), &payload[..]), ("inbox/open", &b"r2"[..]));
        for topic in ["inbox/closed", "inbox/open"] {
            publisher
                .send_packet(&publish(topic, QoS::AtMostOnce, 0, b"live"))
                .await;
        }
        let (topic, payload) = next_message(&mut sub).await;
        assert_eq!(
            (topic.as_str(), &payload[..]),
            ("inbox/open", &b"live"[..]),
            "{version:?}"
        );
        // One retained and one live message refused.
        assert_eq!(
            broker.wait_metric(NOT_AUTHORIZED, before + 2.0).await,
            before + 2.0
        );
        // Gone before the next round publishes (it would count the refusals again).
        sub.send_packet(&Packet::Disconnect(
            brokk::protocol::Disconnect::with_reason(0, None),
        ))
        .await;
        assert!(sub.until_closed().await.is_empty());
    }
    broker.stop().await;
}

/// Credentials for in-process brokers with users: alice and bob (argon2 lines).
fn password_file(dir: &Path, users: &[(&str, &str)]) -> std::path::PathBuf {
    let file = dir.join("passwd");
    let _ = std::fs::remove_file(&file);
    for (user, password) in users {
        brokk::auth::passwd_set(&file, user, password).expect("passwd");
    }
    file
}

fn login(id: &str, user: &str, password: &str, expiry: u32) -> Connect {
    Connect {
        username: Some(user.to_string()),
        password: Some(Bytes::copy_from_slice(password.as_bytes())),
        clean_start: false,
        session_expiry_interval: Some(expiry),
        ..connect_packet(Version::V5, id)
    }
}

async fn reload(broker: &TestBroker) -> brokk::auth::ReloadReport {
    let broker = broker.server().broker().clone();
    tokio::task::spawn_blocking(move || broker.reload_auth())
        .await
        .expect("join")
        .expect("reload")
}

/// A reload that removes a user closes its connected clients with `revoked` (v5 0x87) and
/// ends its waiting sessions; other users stay, and new rules re-judge their subscriptions.
#[tokio::test]
async fn a_reload_revokes_a_removed_user_and_rejudges_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = password_file(dir.path(), &[("alice", "a"), ("bob", "b")]);
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite #\nuser bob\ntopic readwrite #\n",
    )
    .expect("write");
    let broker = start_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = passwd.clone();
        c.auth.acl_file = acl.clone();
    })
    .await;
    let addr = broker.addr;
    let (mut away, connack) = Raw::connect(addr, login("alice-away", "alice", "a", 600)).await;
    assert_eq!(connack.reason_code, 0);
    away.send_packet(&Packet::Disconnect(
        brokk::protocol::Disconnect::with_reason(0, None),
    ))
    .await;
    assert!(away.until_closed().await.is_empty());
    let (mut alice, _) = Raw::connect(addr, login("alice-here", "alice", "a", 600)).await;
    let (mut bob, _) = Raw::connect(addr, login("bob", "bob", "b", 600)).await;
    assert_eq!(subscribe(&mut bob, &["news/#", "public/#"]).await, [1, 1]);
    let sessions = broker.server().broker().sessions.clone();
    assert!(sessions.info("alice-away").is_some());

    brokk::auth::passwd_delete(&passwd, "alice").expect("delete");
    brokk::auth::passwd_set(&passwd, "carol", "c").expect("add");
    std::fs::write(
        &acl,
        "user bob\ntopic readwrite public/#\nuser carol\ntopic readwrite #\n",
    )
    .expect("write");
    let report = reload(&broker).await;
    assert!(report.removed_users.contains("alice"));

    let sent = alice.until_closed().await;
    match sent.last() {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, 0x87);
            assert_eq!(d.reason_string.as_deref(), Some("revoked"));
        }
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    closed_exactly(&broker, "revoked", 1.0).await;
    assert!(
        sessions.info("alice-away").is_none(),
        "waiting session ended"
    );
    assert!(
        sessions.info("alice-here").is_none(),
        "connected session ended"
    );
    let ended = "brokk_sessions_ended_total{reason=\"revoked\"}";
    assert_eq!(broker.wait_metric(ended, 2.0).await, 2.0);

    // bob stays connected; his `news/#` subscription goes under the new rules (his
    // connection judges it again when it hears of the reload).
    let deadline = tokio::time::Instant::now() + WAIT;
    while sessions.info("bob").expect("bob").subscriptions != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's subscriptions not re-judged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (mut writer, connack) = Raw::connect(addr, login("carol", "carol", "c", 0)).await;
    assert_eq!(connack.reason_code, 0);
    for topic in ["news/x", "public/x"] {
        writer
            .send_packet(&publish(topic, QoS::AtMostOnce, 0, b"x"))
            .await;
    }
    assert_eq!(next_message(&mut bob).await.0, "public/x");
    broker.stop().await;
}

/// A resumed session's subscriptions are judged again for the connection that resumes it
/// (another user may now hold the client id).
#[tokio::test]
async fn a_resumed_session_is_judged_by_its_new_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = password_file(dir.path(), &[("alice", "a"), ("bob", "b")]);
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite #\nuser bob\ntopic readwrite public/#\n",
    )
    .expect("write");
    let broker = start_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = passwd.clone();
        c.auth.acl_file = acl.clone();
    })
    .await;
    let (mut first, _) = Raw::connect(broker.addr, login("shared-id", "alice", "a", 600)).await;
    assert_eq!(subscribe(&mut first, &["news/#", "public/#"]).await, [1, 1]);
    drop(first);
    closed_at_least(&broker, "connection_lost", 1.0).await;
    let (mut second, connack) =
        Raw::connect(broker.addr, login("shared-id", "bob", "b", 600)).await;
    assert!(connack.session_present);
    let sessions = broker.server().broker().sessions.clone();
    assert_eq!(
        sessions.info("shared-id").expect("session").subscriptions,
        1
    );
    let (mut writer, _) = Raw::connect(broker.addr, login("w", "alice", "a", 0)).await;
    for topic in ["news/x", "public/x"] {
        writer
            .send_packet(&publish(topic, QoS::AtMostOnce, 0, b"x"))
            .await;
    }
    assert_eq!(next_message(&mut second).await.0, "public/x");
    broker.stop().await;
}
