//! The session table: takeover, keep-alive, size and queue limits, close reasons (issue 3).

mod common;

use std::time::{Duration, Instant};

use brokk::config::QueueFullPolicy;
use brokk::protocol::{Ack, Packet, QoS, RetainHandling, Subscribe, SubscriptionRequest, Version};
use common::*;

fn subscribe(packet_id: u16, filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
        filters: vec![SubscriptionRequest {
            filter: filter.to_string(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }],
        subscription_identifier: None,
        user_properties: Vec::new(),
    })
}

async fn persistent(
    addr: std::net::SocketAddr,
    version: Version,
    id: &str,
) -> (Raw, brokk::protocol::ConnAck) {
    let mut connect = connect_packet(version, id);
    connect.clean_start = false;
    if version == Version::V5 {
        connect.session_expiry_interval = Some(300);
    }
    Raw::connect(addr, connect).await
}

async fn subscribed(raw: &mut Raw, filter: &str, qos: QoS) {
    raw.send_packet(&subscribe(1, filter, qos)).await;
    match raw.recv().await {
        Some(Packet::SubAck(ack)) => assert_eq!(ack.reason_codes, vec![qos as u8]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// MQTT-3.1.4-3 (5.0): the old connection is told 0x8E and closed; with Clean Start 0 the
/// new one gets the subscriptions.
#[tokio::test]
async fn takeover_v5_tells_the_old_client_and_hands_the_session_over() {
    let broker = start().await;
    let (mut old, connack) = persistent(broker.addr, Version::V5, "dup").await;
    assert!(!connack.session_present);
    subscribed(&mut old, "t/#", QoS::AtLeastOnce).await;

    let (mut new, connack) = persistent(broker.addr, Version::V5, "dup").await;
    assert!(
        connack.session_present,
        "Clean Start 0 resumes the taken-over session"
    );
    let sent = old.until_closed().await;
    match sent.last() {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, 0x8E);
            assert_eq!(d.reason_string.as_deref(), Some("session_taken_over"));
        }
        other => panic!("old client expected DISCONNECT 0x8E, got {other:?}"),
    }

    let (mut publisher, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "pub")).await;
    publisher
        .send_packet(&publish("t/x", QoS::AtMostOnce, 0, b"hello"))
        .await;
    match new.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"hello"),
        other => panic!("new owner expected the message, got {other:?}"),
    }
    assert_eq!(
        broker
            .wait_metric(
                "brokk_connections_closed_total{reason=\"session_taken_over\"}",
                1.0
            )
            .await,
        1.0
    );
    broker.stop().await;
}

/// MQTT-3.1.4-2 (3.1.1): the old connection is closed (3.1.1 has no server DISCONNECT).
#[tokio::test]
async fn takeover_v311_closes_the_old_connection() {
    let broker = start().await;
    let (mut old, _) = persistent(broker.addr, Version::V311, "dup311").await;
    subscribed(&mut old, "a", QoS::AtLeastOnce).await;
    let (_new, connack) = persistent(broker.addr, Version::V311, "dup311").await;
    assert!(connack.session_present);
    assert!(
        old.until_closed().await.is_empty(),
        "3.1.1: closed without a DISCONNECT"
    );
    assert_eq!(
        broker
            .wait_metric(
                "brokk_connections_closed_total{reason=\"session_taken_over\"}",
                1.0
            )
            .await,
        1.0
    );
    broker.stop().await;
}

/// Queued and in-flight messages move with the session: unacknowledged ones are resent with
/// DUP to the new connection.
#[tokio::test]
async fn takeover_moves_in_flight_messages_and_resends_them_with_dup() {
    let broker = start().await;
    for version in [Version::V311, Version::V5] {
        let id = format!("inflight-{}", version.label());
        let (mut old, _) = persistent(broker.addr, version, &id).await;
        subscribed(&mut old, "q", QoS::AtLeastOnce).await;
        let (mut publisher, _) = Raw::connect(broker.addr, connect_packet(version, "p")).await;
        for i in 1..=3u16 {
            publisher
                .send_packet(&publish("q", QoS::AtLeastOnce, i, &[i as u8]))
                .await;
        }
        // The old subscriber receives the three and never acknowledges them.
        for _ in 0..3 {
            assert!(matches!(old.recv().await, Some(Packet::Publish(_))));
        }
        let (mut new, connack) = persistent(broker.addr, version, &id).await;
        assert!(connack.session_present);
        let mut payloads = Vec::new();
        while payloads.len() < 3 {
            match new.recv().await {
                Some(Packet::Publish(p)) => {
                    assert!(p.dup, "a resent PUBLISH carries DUP");
                    payloads.push(p.payload[0]);
                    new.send_packet(&Packet::PubAck(Ack::success(p.packet_id)))
                        .await;
                }
                other => panic!("expected resent PUBLISH, got {other:?}"),
            }
        }
        assert_eq!(payloads, vec![1, 2, 3]);
    }
    broker.stop().await;
}

/// Clean Start 1 discards the old session.
#[tokio::test]
async fn takeover_with_clean_start_discards_the_old_state() {
    let broker = start().await;
    let (mut old, _) = persistent(broker.addr, Version::V5, "clean").await;
    subscribed(&mut old, "c", QoS::AtLeastOnce).await;
    let (mut new, connack) = Raw::connect(broker.addr, connect_packet(Version::V5, "clean")).await;
    assert!(!connack.session_present);
    old.until_closed().await;
    let (mut publisher, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "p")).await;
    publisher
        .send_packet(&publish("c", QoS::AtMostOnce, 0, b"x"))
        .await;
    new.send_packet(&Packet::PingReq).await;
    assert_eq!(
        new.recv().await,
        Some(Packet::PingResp),
        "no subscription survived clean start"
    );
    broker.stop().await;
}

/// 50 simultaneous CONNECTs with one client id, repeated: exactly one connection and one
/// session remain, every time.
#[tokio::test]
async fn simultaneous_connects_leave_exactly_one_owner() {
    let broker = start().await;
    for round in 0..5 {
        let id = format!("storm-{round}");
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let addr = broker.addr;
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                let (raw, connack) = persistent(addr, Version::V5, &id).await;
                assert_eq!(connack.reason_code, 0);
                raw
            }));
        }
        let mut clients = Vec::new();
        for task in tasks {
            clients.push(task.await.expect("task"));
        }
        // Every client but one is closed with 0x8E; find the survivor by waiting for 49 closes.
        let mut closed = 0;
        let mut survivors = Vec::new();
        for mut client in clients {
            client.send_packet(&Packet::PingReq).await;
            match client.recv().await {
                Some(Packet::PingResp) => survivors.push(client),
                Some(Packet::Disconnect(d)) => {
                    assert_eq!(d.reason_code, 0x8E);
                    closed += 1;
                }
                None => closed += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        // A ping answered just before a takeover landed: confirm survivors are still open.
        let mut alive = Vec::new();
        for mut client in survivors {
            client.send_packet(&Packet::PingReq).await;
            if client.recv().await == Some(Packet::PingResp) {
                alive.push(client);
            }
        }
        assert_eq!(
            alive.len(),
            1,
            "round {round}: exactly one connection survives ({closed} closed)"
        );
        let (connected, waiting) = broker.server().broker().sessions.counts();
        assert_eq!(connected, 1, "round {round}: one connected session");
        assert_eq!(waiting, 0);
        // End the round's session for good (expiry 0 at DISCONNECT), so the next round
        // starts from an empty table.
        let mut last = alive.pop().expect("survivor");
        let mut bye = brokk::protocol::Disconnect::with_reason(0, None);
        bye.session_expiry_interval = Some(0);
        last.send_packet(&Packet::Disconnect(bye)).await;
        last.until_closed().await;
        let deadline = Instant::now() + WAIT;
        while !broker.server().broker().sessions.is_empty() {
            assert!(
                Instant::now() < deadline,
                "session removed after DISCONNECT"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    broker.stop().await;
}

/// max_keep_alive caps a v5 client's keep-alive (Server Keep Alive) and refuses a 3.1.1
/// client that asks for more (it cannot be told).
#[tokio::test]
async fn max_keep_alive_caps_v5_and_refuses_v311() {
    let broker = start_with(|c| c.limits.max_keep_alive = Duration::from_secs(1)).await;
    let mut connect = connect_packet(Version::V5, "cap5");
    connect.keep_alive = 65535;
    let (mut raw, connack) = Raw::connect(broker.addr, connect).await;
    assert_eq!(connack.properties.server_keep_alive, Some(1));
    let started = Instant::now();
    raw.until_closed().await;
    assert!(started.elapsed() <= Duration::from_millis(2500));

    let mut connect = connect_packet(Version::V311, "cap3");
    connect.keep_alive = 65535;
    let (_raw, connack) = Raw::connect(broker.addr, connect).await;
    assert_ne!(connack.reason_code, 0);
    broker.stop().await;
}

/// connection_ttl closes a silent connection whatever keep-alive it asked for.
#[tokio::test]
async fn connection_ttl_overrides_keep_alive() {
    let broker = start_with(|c| c.limits.connection_ttl = Duration::from_secs(1)).await;
    let mut connect = connect_packet(Version::V5, "ttl");
    connect.keep_alive = 0;
    let (mut raw, _) = Raw::connect(broker.addr, connect).await;
    let started = Instant::now();
    let sent = raw.until_closed().await;
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert!(started.elapsed() <= Duration::from_millis(2000));
    assert!(matches!(sent.last(), Some(Packet::Disconnect(d)) if d.reason_code == 0x8D));
    broker.stop().await;
}

/// connect_timeout: a socket that sends no CONNECT is closed.
#[tokio::test]
async fn silent_socket_is_closed_after_connect_timeout() {
    let broker = start_with(|c| c.limits.connect_timeout = Duration::from_millis(300)).await;
    let mut raw = Raw::open(broker.addr).await;
    let started = Instant::now();
    assert!(raw.until_closed().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        broker
            .wait_metric(
                "brokk_connections_closed_total{reason=\"client_unresponsive\"}",
                1.0
            )
            .await,
        1.0
    );
    broker.stop().await;
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// An oversize packet is refused from its fixed header: 0x95, and the broker does not
/// buffer the size it announced.
#[tokio::test]
async fn oversize_packet_is_refused_from_its_fixed_header() {
    let broker = start_with(|c| c.limits.max_packet_size = 1024).await;
    let (mut raw, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "big")).await;
    let before = resident_kib();
    // PUBLISH QoS 0 announcing 200 MB (Remaining Length 0xFF 0xFF 0xFF 0x5F), then 1 MB of body.
    raw.send(&[0x30, 0xFF, 0xFF, 0xFF, 0x5F]).await;
    raw.send(&vec![b'x'; 1 << 20]).await;
    let sent = raw.until_closed().await;
    assert!(
        matches!(sent.last(), Some(Packet::Disconnect(d)) if d.reason_code == 0x95),
        "got {sent:?}"
    );
    let grown = resident_kib().saturating_sub(before);
    assert!(grown < 32 * 1024, "resident memory grew by {grown} KiB");
    assert_eq!(
        broker
            .wait_metric(
                "brokk_connections_closed_total{reason=\"message_too_large\"}",
                1.0
            )
            .await,
        1.0
    );
    broker.stop().await;
}

/// A subscriber that stops reading hits its queue limit: closed with
/// message_queue_limit_reached, its session discarded, Session Present 0 on return.
#[tokio::test]
async fn stalled_subscriber_hits_the_queue_limit_and_loses_its_session_visibly() {
    let broker = start_with(|c| {
        c.limits.max_queue_depth = 50;
        c.limits.max_queue_depth_disconnected = 100;
    })
    .await;
    for version in [Version::V5, Version::V311] {
        let id = format!("stalled-{}", version.label());
        let (mut sub, _) = persistent(broker.addr, version, &id).await;
        subscribed(&mut sub, "flood", QoS::AtLeastOnce).await;
        // From here the subscriber never reads its socket.
        let (mut publisher, _) =
            Raw::connect(broker.addr, connect_packet(Version::V5, "flooder")).await;
        let payload = vec![0u8; 4096];
        let closed = "brokk_connections_closed_total{reason=\"message_queue_limit_reached\"}";
        let target = broker.metric(closed).await + 1.0;
        let mut sent = 0;
        while broker.metric(closed).await < target {
            for _ in 0..200 {
                publisher
                    .send_packet(&publish("flood", QoS::AtMostOnce, 0, &payload))
                    .await;
            }
            sent += 200;
            assert!(sent < 200_000, "the queue limit never triggered");
        }
        drop(sub);
        let (_again, connack) = persistent(broker.addr, version, &id).await;
        assert!(
            !connack.session_present,
            "{version:?}: the discarded session is not resumed"
        );
    }
    broker.stop().await;
}

async fn queue_policy_keeps(policy: QueueFullPolicy) -> (Vec<u8>, f64) {
    let broker = start_with(|c| {
        c.limits.max_queue_depth = 10;
        c.limits.max_queue_depth_disconnected = 20;
        c.limits.queue_full_policy = policy;
    })
    .await;
    let (mut sub, _) = persistent(broker.addr, Version::V5, "offline").await;
    subscribed(&mut sub, "o", QoS::AtLeastOnce).await;
    sub.send_packet(&Packet::Disconnect(
        brokk::protocol::Disconnect::with_reason(0, None),
    ))
    .await;
    sub.until_closed().await;
    let (mut publisher, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "p")).await;
    for i in 0..30u16 {
        publisher
            .send_packet(&publish("o", QoS::AtLeastOnce, i + 1, &[i as u8]))
            .await;
        assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    }
    let dropped = broker
        .metric("brokk_messages_dropped_total{reason=\"queue_full\"}")
        .await;
    let (mut sub, connack) = persistent(broker.addr, Version::V5, "offline").await;
    assert!(connack.session_present);
    let mut got = Vec::new();
    while got.len() < 20 {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                got.push(p.payload[0]);
                sub.send_packet(&Packet::PubAck(Ack::success(p.packet_id)))
                    .await;
            }
            other => panic!("expected queued message, got {other:?}"),
        }
    }
    broker.stop().await;
    (got, dropped)
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_and_counts() {
    let (got, dropped) = queue_policy_keeps(QueueFullPolicy::DropOldest).await;
    assert_eq!(got, (10..30).collect::<Vec<u8>>());
    assert_eq!(dropped, 10.0);
}

#[tokio::test]
async fn drop_newest_keeps_the_oldest_and_counts() {
    let (got, dropped) = queue_policy_keeps(QueueFullPolicy::DropNewest).await;
    assert_eq!(got, (0..20).collect::<Vec<u8>>());
    assert_eq!(dropped, 10.0);
}

/// Under `disconnect`, a waiting session whose queue overflows is discarded.
#[tokio::test]
async fn waiting_session_overflow_discards_it() {
    let broker = start_with(|c| {
        c.limits.max_queue_depth = 5;
        c.limits.max_queue_depth_disconnected = 5;
    })
    .await;
    let (mut sub, _) = persistent(broker.addr, Version::V5, "w").await;
    subscribed(&mut sub, "w", QoS::AtLeastOnce).await;
    drop(sub);
    broker
        .wait_metric(
            "brokk_connections_closed_total{reason=\"connection_lost\"}",
            1.0,
        )
        .await;
    let (mut publisher, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "p")).await;
    for i in 0..6u16 {
        publisher
            .send_packet(&publish("w", QoS::AtLeastOnce, i + 1, b"m"))
            .await;
        assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    }
    let (_sub, connack) = persistent(broker.addr, Version::V5, "w").await;
    assert!(!connack.session_present);
    broker.stop().await;
}

/// The client's Receive Maximum bounds what brokk keeps in flight towards it (MQTT-3.3.4-9):
/// more goes only as acknowledgements come back.
#[tokio::test]
async fn outbound_in_flight_window_follows_the_client_receive_maximum() {
    let broker = start().await;
    let mut connect = connect_packet(Version::V5, "window");
    connect.receive_maximum = Some(2);
    let (mut sub, _) = Raw::connect(broker.addr, connect).await;
    subscribed(&mut sub, "win", QoS::AtLeastOnce).await;
    let (mut publisher, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "p")).await;
    for i in 1..=5u16 {
        publisher
            .send_packet(&publish("win", QoS::AtLeastOnce, i, &[i as u8]))
            .await;
        assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    }
    let mut first = Vec::new();
    for _ in 0..2 {
        match sub.recv().await {
            Some(Packet::Publish(p)) => first.push(p),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    sub.send_packet(&Packet::PingReq).await;
    assert_eq!(
        sub.recv().await,
        Some(Packet::PingResp),
        "no third PUBLISH before an ack"
    );
    sub.send_packet(&Packet::PubAck(Ack::success(first[0].packet_id)))
        .await;
    match sub.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], &[3]),
        other => panic!("expected the third message after one ack, got {other:?}"),
    }
    broker.stop().await;
}

/// Packets written in the same segment as the CONNECT are answered without further input
/// (MQTT-3.8.4-1, MQTT-3.12.4-1; a client need not wait for CONNACK).
#[tokio::test]
async fn packets_pipelined_behind_connect_are_answered() {
    let broker = start().await;
    for version in [Version::V311, Version::V5] {
        let mut raw = Raw::open(broker.addr).await;
        raw.version = version;
        let mut bytes = bytes::BytesMut::new();
        let connect = Packet::Connect(Box::new(connect_packet(version, "pipelined")));
        for packet in [
            connect,
            subscribe(1, "pipe", QoS::AtMostOnce),
            Packet::PingReq,
        ] {
            brokk::protocol::encode(&packet, version, &mut bytes).expect("encode");
        }
        raw.send(&bytes).await;
        assert!(matches!(raw.recv().await, Some(Packet::ConnAck(_))));
        assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
        assert_eq!(raw.recv().await, Some(Packet::PingResp));
    }
    broker.stop().await;
}
