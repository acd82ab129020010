//! Hostile input: malformed and abusive byte streams, floods and storms. Each test checks the
//! spec's answer (the v5 DISCONNECT reason code or CONNACK refusal, or a plain close for
//! 3.1.1 and before CONNACK), the close-reason counter, a memory ceiling where the case is
//! about memory, and that the broker still serves a fresh client afterwards.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use brokk::protocol::{
    Packet, QoS, RetainHandling, Subscribe, SubscriptionRequest, Unsubscribe, Version,
};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// Exact-byte packet builders
// ---------------------------------------------------------------------------------------

fn varint(mut v: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.push(b);
        if v == 0 {
            break;
        }
    }
}

/// A whole packet: `byte1`, the minimal Remaining Length, `body`.
fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![byte1];
    varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string or binary field, bytes taken as given (no validation).
fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A v5 property block: varint length, then the properties.
fn props(items: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(items.len(), &mut out);
    out.extend_from_slice(items);
    out
}

/// A User Property (0x26) with raw key and value bytes.
fn user_property(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x26];
    out.extend(field(key));
    out.extend(field(value));
    out
}

fn topic_alias(alias: u16) -> Vec<u8> {
    let mut out = vec![0x23];
    out.extend_from_slice(&alias.to_be_bytes());
    out
}

fn message_expiry(secs: u32) -> Vec<u8> {
    let mut out = vec![0x02];
    out.extend_from_slice(&secs.to_be_bytes());
    out
}

/// v5 CONNECT, clean start, keep-alive 60, the given flags byte, connect properties and
/// payload after the client id (will properties/topic/payload, ...).
fn connect_v5_raw(flags: u8, connect_props: &[u8], client_id: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut body = field(b"MQTT");
    body.push(5);
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    body.extend(props(connect_props));
    body.extend(field(client_id));
    body.extend_from_slice(rest);
    frame(0x10, &body)
}

fn connect_v5_bytes(client_id: &[u8]) -> Vec<u8> {
    connect_v5_raw(0x02, &[], client_id, &[])
}

fn connect_v311_raw(flags: u8, client_id: &[u8]) -> Vec<u8> {
    let mut body = field(b"MQTT");
    body.push(4);
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    body.extend(field(client_id));
    frame(0x10, &body)
}

fn connect_v311_bytes(client_id: &[u8]) -> Vec<u8> {
    connect_v311_raw(0x02, client_id)
}

/// v5 PUBLISH with raw topic bytes and a raw property list.
fn publish_v5_bytes(
    qos: u8,
    topic: &[u8],
    packet_id: u16,
    publish_props: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut body = field(topic);
    if qos > 0 {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    body.extend(props(publish_props));
    body.extend_from_slice(payload);
    frame(0x30 | (qos << 1), &body)
}

fn publish_v311_bytes(qos: u8, topic: &[u8], packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = field(topic);
    if qos > 0 {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    frame(0x30 | (qos << 1), &body)
}

/// v5 SUBSCRIBE with the given fixed-header byte, one raw filter and options byte.
fn subscribe_v5_bytes(byte1: u8, filter: &[u8], options: u8) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend(props(&[]));
    body.extend(field(filter));
    body.push(options);
    frame(byte1, &body)
}

fn subscribe_v311_bytes(byte1: u8, filter: &[u8], options: u8) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend(field(filter));
    body.push(options);
    frame(byte1, &body)
}

// ---------------------------------------------------------------------------------------
// Packet-model helpers
// ---------------------------------------------------------------------------------------

fn request(filter: &str, qos: QoS, no_local: bool) -> SubscriptionRequest {
    SubscriptionRequest {
        filter: filter.to_string(),
        qos,
        no_local,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    }
}

fn subscribe(packet_id: u16, filters: Vec<SubscriptionRequest>) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
        filters,
        subscription_identifier: None,
        user_properties: Vec::new(),
    })
}

fn unsubscribe(packet_id: u16, filters: Vec<String>) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        packet_id,
        filters,
        user_properties: Vec::new(),
    })
}

/// A connected client of `version` (CONNACK 0 asserted).
async fn client(addr: SocketAddr, version: Version, id: &str) -> Raw {
    let (raw, connack) = Raw::connect(addr, connect_packet(version, id)).await;
    assert_eq!(connack.reason_code, 0, "{id}: CONNACK success");
    raw
}

async fn v5(addr: SocketAddr, id: &str) -> Raw {
    client(addr, Version::V5, id).await
}

async fn v311(addr: SocketAddr, id: &str) -> Raw {
    client(addr, Version::V311, id).await
}

/// Subscribes to one filter and asserts it was granted.
async fn subscribed(raw: &mut Raw, filters: &[&str], qos: QoS) {
    let requests = filters.iter().map(|f| request(f, qos, false)).collect();
    raw.send_packet(&subscribe(1, requests)).await;
    match raw.recv().await {
        Some(Packet::SubAck(ack)) => assert_eq!(ack.reason_codes, vec![qos as u8; filters.len()]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// The broker sends DISCONNECT `code` (v5) and closes.
async fn expect_disconnect(raw: &mut Raw, code: u8) {
    let sent = timeout(raw.until_closed()).await;
    match sent.last() {
        Some(Packet::Disconnect(d)) => assert_eq!(
            d.reason_code, code,
            "DISCONNECT 0x{:02X} ({:?}), expected 0x{code:02X}",
            d.reason_code, d.reason_string
        ),
        other => {
            panic!("expected DISCONNECT 0x{code:02X} then close, got {other:?} (all: {sent:?})")
        }
    }
}

/// The broker sends DISCONNECT with one of `codes` and closes; returns the code.
async fn expect_disconnect_one_of(raw: &mut Raw, codes: &[u8]) -> u8 {
    let sent = timeout(raw.until_closed()).await;
    match sent.last() {
        Some(Packet::Disconnect(d)) => {
            assert!(
                codes.contains(&d.reason_code),
                "DISCONNECT 0x{:02X} not in {codes:02X?}",
                d.reason_code
            );
            d.reason_code
        }
        other => panic!("expected DISCONNECT {codes:02X?}, got {other:?}"),
    }
}

/// The broker closes without sending anything (3.1.1, or before CONNACK).
async fn expect_silent_close(raw: &mut Raw) {
    let sent = timeout(raw.until_closed()).await;
    assert!(sent.is_empty(), "expected a bare close, got {sent:?}");
}

/// The broker closes without accepting the CONNECT: nothing, or a CONNACK refusal.
async fn expect_no_session(raw: &mut Raw) {
    let sent = timeout(raw.until_closed()).await;
    for packet in &sent {
        match packet {
            Packet::ConnAck(c) => assert!(c.reason_code >= 0x80, "accepted: {c:?}"),
            other => panic!("expected a close before any session, got {other:?}"),
        }
    }
}

async fn timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .expect("in time")
}

/// A fresh client connects and gets PINGRESP to PINGREQ.
async fn still_serves(addr: SocketAddr) {
    let mut raw = v5(addr, "probe-after").await;
    raw.send(&[0xC0, 0x00]).await;
    assert_eq!(
        raw.recv().await,
        Some(Packet::PingResp),
        "broker still serves"
    );
    raw.send(&[0xE0, 0x00]).await;
    timeout(raw.until_closed()).await;
}

/// A new connection's first bytes, then the fresh-client probe, for the simple
/// "one bad packet after CONNACK" cases.
async fn bad_after_connack_v5(addr: SocketAddr, id: &str, bytes: &[u8], code: u8) {
    let mut raw = v5(addr, id).await;
    raw.send(bytes).await;
    expect_disconnect(&mut raw, code).await;
}

async fn bad_after_connack_v311(addr: SocketAddr, id: &str, bytes: &[u8]) {
    let mut raw = v311(addr, id).await;
    raw.send(bytes).await;
    expect_silent_close(&mut raw).await;
}

// ---------------------------------------------------------------------------------------
// 1. First packet not CONNECT, huge Remaining Length, then a stream of bytes
// ---------------------------------------------------------------------------------------

/// MQTT-3.1.0-1: the first packet must be CONNECT. A PUBLISH header announcing 256 MiB is
/// refused from its fixed header; the 8 MiB streamed after it are never buffered.
#[tokio::test]
async fn first_packet_not_connect_with_huge_length_is_closed_mqtt_3_1_0_1() {
    let broker = start().await;
    let before = rss();
    let mut handles = Vec::new();
    for _ in 0..4 {
        let addr = broker.addr;
        handles.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let started = Instant::now();
            let _ = stream.write_all(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).await;
            let chunk = vec![0x41u8; 64 * 1024];
            let mut sent = 0usize;
            while sent < 8 * MIB as usize {
                match stream.write_all(&chunk).await {
                    Ok(()) => sent += chunk.len(),
                    Err(_) => break,
                }
            }
            let mut buf = vec![0u8; 4096];
            let mut received = 0usize;
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received += n,
                }
            }
            (started.elapsed(), received)
        }));
    }
    for handle in handles {
        let (elapsed, received) = timeout(handle).await.expect("task");
        assert_eq!(received, 0, "nothing is sent before CONNECT");
        assert!(
            elapsed < Duration::from_secs(3),
            "closed quickly: {elapsed:?}"
        );
    }
    closed_exactly(&broker, "invalid_inbound_message", 4.0).await;
    assert_growth_below(before, 32 * MIB, "4 x 8 MiB streamed before CONNECT");

    // The same bytes from a 3.1.1-speaking peer and after a v5 CONNECT's worth of
    // nothing: a header-only non-CONNECT packet closes too.
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&[0xC0, 0x00]).await;
    expect_silent_close(&mut raw).await;
    closed_exactly(&broker, "invalid_inbound_message", 5.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

/// A CONNECT announcing more than `max_packet_size` is refused from its fixed header: the
/// broker does not wait for (or buffer) the body.
#[tokio::test]
async fn connect_announcing_huge_length_is_closed_from_its_header() {
    let broker = start().await;
    let before = rss();
    let mut stream = TcpStream::connect(broker.addr).await.expect("connect");
    let started = Instant::now();
    let _ = stream.write_all(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..128 {
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut buf = [0u8; 64];
    let n = timeout(stream.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "closed without CONNACK");
    assert!(started.elapsed() < Duration::from_secs(3));
    closed_exactly(&broker, "message_too_large", 1.0).await;
    assert_growth_below(before, 32 * MIB, "8 MiB streamed into a huge CONNECT");
    still_serves(broker.addr).await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// 2. Slowloris and silent sockets
// ---------------------------------------------------------------------------------------

/// One byte of CONNECT every 200 ms never completes a CONNECT: `connect_timeout` (1 s)
/// closes the socket at about 1 s (client_unresponsive), counted from accept, not reset by
/// each byte.
#[tokio::test]
async fn slowloris_connect_is_closed_by_connect_timeout() {
    let broker = start_with(|c| c.limits.connect_timeout = Duration::from_secs(1)).await;
    let stream = TcpStream::connect(broker.addr).await.expect("connect");
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let connect = connect_v5_bytes(b"slow");
    let sender = tokio::spawn(async move {
        for byte in connect {
            if write.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut buf = [0u8; 64];
    let n = timeout(read.read(&mut buf)).await.unwrap_or(0);
    let elapsed = started.elapsed();
    assert_eq!(n, 0, "closed before any CONNACK");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2500),
        "closed at ~1 s, was {elapsed:?}"
    );
    sender.abort();
    closed_exactly(&broker, "client_unresponsive", 1.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

/// 200 sockets that connect and send nothing are all closed by `connect_timeout`; the broker
/// serves other clients meanwhile.
#[tokio::test]
async fn silent_sockets_are_closed_by_connect_timeout() {
    let broker = start_with(|c| c.limits.connect_timeout = Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(broker.addr).await.expect("connect"));
    }
    // Meanwhile: served.
    still_serves(broker.addr).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the probe ran while the silent sockets were open"
    );
    let closes = silent.into_iter().map(|mut s| {
        tokio::spawn(async move {
            let mut buf = [0u8; 16];
            matches!(s.read(&mut buf).await, Ok(0) | Err(_))
        })
    });
    for close in closes {
        assert!(timeout(close).await.expect("task"), "closed without data");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(4),
        "all closed at ~1 s: {elapsed:?}"
    );
    closed_exactly(&broker, "client_unresponsive", 200.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// 3. Second CONNECT
// ---------------------------------------------------------------------------------------

/// MQTT-3.1.0-2: a second CONNECT is a Protocol Error: v5 DISCONNECT 0x82; 3.1.1 closed.
#[tokio::test]
async fn second_connect_is_protocol_error_mqtt_3_1_0_2() {
    let broker = start().await;
    bad_after_connack_v5(broker.addr, "twice5", &connect_v5_bytes(b"twice5"), 0x82).await;
    bad_after_connack_v311(broker.addr, "twice4", &connect_v311_bytes(b"twice4")).await;
    closed_exactly(&broker, "invalid_inbound_message", 2.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// 4. Malformed fixed headers and reserved bits
// ---------------------------------------------------------------------------------------

/// v5 §1.5.5 / 3.1.1 §2.2.3: a Variable Byte Integer has at most four bytes. A fifth
/// continuation byte is Malformed (0x81); before CONNACK and in 3.1.1 the socket is closed.
#[tokio::test]
async fn remaining_length_of_five_bytes_is_malformed_mqtt_1_5_5() {
    let broker = start().await;
    let five = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    bad_after_connack_v5(broker.addr, "rl5", &five, 0x81).await;
    bad_after_connack_v311(broker.addr, "rl4", &five).await;
    // Before CONNACK: a CONNECT with a five-byte length is just closed.
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
    expect_silent_close(&mut raw).await;
    closed_exactly(&broker, "invalid_inbound_message", 3.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

/// MQTT-1.5.5-1: the Remaining Length must use the minimum number of bytes; `c0 80 00` (a
/// PINGREQ with length 0 in two bytes) is Malformed.
#[tokio::test]
async fn non_minimal_remaining_length_is_malformed_mqtt_1_5_5_1() {
    let broker = start().await;
    bad_after_connack_v5(broker.addr, "nm5", &[0xC0, 0x80, 0x00], 0x81).await;
    bad_after_connack_v311(broker.addr, "nm4", &[0xC0, 0x80, 0x00]).await;
    // A CONNECT with a non-minimal length: closed, no CONNACK.
    let mut connect = connect_v5_bytes(b"nmc");
    let len = connect[1];
    connect.splice(1..2, [len | 0x80, 0x00]);
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&connect).await;
    expect_silent_close(&mut raw).await;
    closed_exactly(&broker, "invalid_inbound_message", 3.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

/// MQTT-2.1.3-1 (v5) / MQTT-2.2.2-2 (3.1.1): reserved fixed-header flags must have their
/// listed values: PINGREQ `c1 00`, and SUBSCRIBE with flags 0000 instead of 0010
/// (MQTT-3.8.1-1) are Malformed.
#[tokio::test]
async fn reserved_fixed_header_flags_are_malformed_mqtt_2_1_3_1() {
    let broker = start().await;
    bad_after_connack_v5(broker.addr, "flag5", &[0xC1, 0x00], 0x81).await;
    bad_after_connack_v311(broker.addr, "flag4", &[0xC1, 0x00]).await;
    bad_after_connack_v5(
        broker.addr,
        "sub5",
        &subscribe_v5_bytes(0x80, b"a/b", 0),
        0x81,
    )
    .await;
    bad_after_connack_v311(broker.addr, "sub4", &subscribe_v311_bytes(0x80, b"a/b", 0)).await;
    // UNSUBSCRIBE with flags 0000 too, and PUBREL with 0000.
    let mut unsub = 2u16.to_be_bytes().to_vec();
    unsub.extend(props(&[]));
    unsub.extend(field(b"a/b"));
    bad_after_connack_v5(broker.addr, "unsub5", &frame(0xA0, &unsub), 0x81).await;
    bad_after_connack_v5(broker.addr, "pubrel5", &[0x60, 0x02, 0x00, 0x01], 0x81).await;
    closed_exactly(&broker, "invalid_inbound_message", 6.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

/// MQTT-3.3.1-4: a PUBLISH must not have both QoS bits set. `36 ...` is Malformed (0x81).
#[tokio::test]
async fn publish_qos_3_is_malformed_mqtt_3_3_1_4() {
    let broker = start().await;
    let mut body = field(b"a/b");
    body.extend_from_slice(&1u16.to_be_bytes());
    let mut v5_body = body.clone();
    v5_body.extend(props(&[]));
    v5_body.extend_from_slice(b"x");
    body.extend_from_slice(b"x");
    bad_after_connack_v5(broker.addr, "qos3v5", &frame(0x36, &v5_body), 0x81).await;
    bad_after_connack_v311(broker.addr, "qos3v4", &frame(0x36, &body)).await;
    closed_exactly(&broker, "invalid_inbound_message", 2.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

/// MQTT-3.1.2-3: the CONNECT reserved flag must be 0, else the connection is closed (no
/// CONNACK: the CONNECT is not accepted).
#[tokio::test]
async fn connect_reserved_flag_set_is_closed_mqtt_3_1_2_3() {
    let broker = start().await;
    let mut raw = Raw::open(broker.addr).await;
    raw.send(&connect_v5_raw(0x03, &[], b"res5", &[])).await;
    expect_no_session(&mut raw).await;
    let mut raw = Raw::open(broker.addr).await;
    raw.version = Version::V311;
    raw.send(&connect_v311_raw(0x03, b"res4")).await;
    expect_no_session(&mut raw).await;
    closed_exactly(&broker, "invalid_inbound_message", 2.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// 5. Ill-formed UTF-8 and U+0000
// ---------------------------------------------------------------------------------------

/// MQTT-1.5.4-1 / -2 (v5 and 3.1.1): a string with ill-formed UTF-8 (`c3 28`) or U+0000 is
/// Malformed. In a PUBLISH topic, a SUBSCRIBE filter or a user property: DISCONNECT 0x81
/// (3.1.1: closed).
#[tokio::test]
async fn ill_formed_utf8_and_nul_after_connect_are_malformed_mqtt_1_5_4_1() {
    let broker = start().await;
    let bad: [&[u8]; 2] = [b"a/\xC3\x28", b"a/\x00b"];
    let mut n = 0.0;
    for (i, bad) in bad.iter().enumerate() {
        // PUBLISH topic.
        let p = publish_v5_bytes(0, bad, 0, &[], b"x");
        bad_after_connack_v5(broker.addr, &format!("t5-{i}"), &p, 0x81).await;
        let p = publish_v311_bytes(0, bad, 0, b"x");
        bad_after_connack_v311(broker.addr, &format!("t4-{i}"), &p).await;
        // SUBSCRIBE filter.
        let s = subscribe_v5_bytes(0x82, bad, 0);
        bad_after_connack_v5(broker.addr, &format!("s5-{i}"), &s, 0x81).await;
        let s = subscribe_v311_bytes(0x82, bad, 0);
        bad_after_connack_v311(broker.addr, &format!("s4-{i}"), &s).await;
        // User property key and value in a PUBLISH.
        let p = publish_v5_bytes(0, b"ok", 0, &user_property(bad, b"v"), b"x");
        bad_after_connack_v5(broker.addr, &format!("uk5-{i}"), &p, 0x81).await;
        let p = publish_v5_bytes(1, b"ok", 7, &user_property(b"k", bad), b"x");
        bad_after_connack_v5(broker.addr, &format!("uv5-{i}"), &p, 0x81).await;
        n += 6.0;
    }
    closed_exactly(&broker, "invalid_inbound_message", n).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

/// MQTT-1.5.4-1 / -2 in CONNECT (client id, user property): the CONNECT is not accepted and
/// the connection is closed.
#[tokio::test]
async fn ill_formed_utf8_and_nul_in_connect_are_closed_mqtt_1_5_4_1() {
    let broker = start().await;
    let bad: [&[u8]; 2] = [b"id\xC3\x28", b"id\x00"];
    for bad in bad {
        let mut raw = Raw::open(broker.addr).await;
        raw.send(&connect_v5_bytes(bad)).await;
        expect_no_session(&mut raw).await;
        let mut raw = Raw::open(broker.addr).await;
        raw.version = Version::V311;
        raw.send(&connect_v311_bytes(bad)).await;
        expect_no_session(&mut raw).await;
        let mut raw = Raw::open(broker.addr).await;
        raw.send(&connect_v5_raw(0x02, &user_property(b"k", bad), b"up", &[]))
            .await;
        expect_no_session(&mut raw).await;
    }
    closed_exactly(&broker, "invalid_inbound_message", 6.0).await;
    assert_eq!(broker.server().broker().sessions.counts(), (0, 0));
    still_serves(broker.addr).await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// 6. Wildcards and empty topics in PUBLISH
// ---------------------------------------------------------------------------------------

/// MQTT-3.3.2-2: the Topic Name in a PUBLISH must not contain wildcards: v5 DISCONNECT 0x90
/// Topic Name Invalid; 3.1.1 closed.
#[tokio::test]
async fn wildcard_in_publish_topic_is_refused_mqtt_3_3_2_2() {
    let broker = start().await;
    for (i, topic) in [&b"a/+"[..], b"a/#", b"#", b"+"].iter().enumerate() {
        let p = publish_v5_bytes(1, topic, 1, &[], b"x");
        bad_after_connack_v5(broker.addr, &format!("w5-{i}"), &p, 0x90).await;
        let p = publish_v311_bytes(1, topic, 1, b"x");
        bad_after_connack_v311(broker.addr, &format!("w4-{i}"), &p).await;
    }
    closed_exactly(&broker, "invalid_inbound_message", 8.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

/// v5 §3.3.2.1: a zero-length Topic Name without a Topic Alias is a Protocol Error (0x82;
/// 0x90 Topic Name Invalid is also an accurate code). 3.1.1 MQTT-4.7.3-1: at least one
/// character: closed.
#[tokio::test]
async fn empty_publish_topic_without_alias_is_refused_v5_3_3_2_1() {
    let broker = start().await;
    let mut raw = v5(broker.addr, "empty5").await;
    raw.send(&publish_v5_bytes(0, b"", 0, &[], b"x")).await;
    expect_disconnect_one_of(&mut raw, &[0x82, 0x90]).await;
    bad_after_connack_v311(broker.addr, "empty4", &publish_v311_bytes(0, b"", 0, b"x")).await;
    closed_exactly(&broker, "invalid_inbound_message", 2.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// 7. Topic aliases
// ---------------------------------------------------------------------------------------

/// MQTT-3.3.2-8: Topic Alias 0 is not allowed: DISCONNECT 0x94 Topic Alias invalid.
#[tokio::test]
async fn topic_alias_zero_is_0x94_mqtt_3_3_2_8() {
    let broker = start().await;
    let p = publish_v5_bytes(0, b"a", 0, &topic_alias(0), b"x");
    bad_after_connack_v5(broker.addr, "alias0", &p, 0x94).await;
    closed_exactly(&broker, "invalid_inbound_message", 1.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

/// MQTT-3.3.2-9: a Topic Alias above the Topic Alias Maximum the server sent in CONNACK is
/// 0x94. An alias within it works (control), an unmapped alias with an empty topic is a
/// Protocol Error (v5 §3.3.2.3.4: 0x82).
#[tokio::test]
async fn topic_alias_above_maximum_is_0x94_mqtt_3_3_2_9() {
    let broker = start().await;
    let (mut raw, connack) =
        Raw::connect(broker.addr, connect_packet(Version::V5, "aliasmax")).await;
    let max = connack
        .properties
        .topic_alias_maximum
        .expect("CONNACK advertises topic_alias_maximum");
    assert!(max > 0);

    // Control: alias `max` maps, then an empty topic with it reaches a subscriber.
    let mut sub = v5(broker.addr, "aliassub").await;
    subscribed(&mut sub, &["al/t"], QoS::AtMostOnce).await;
    raw.send(&publish_v5_bytes(0, b"al/t", 0, &topic_alias(max), b"one"))
        .await;
    raw.send(&publish_v5_bytes(0, b"", 0, &topic_alias(max), b"two"))
        .await;
    for want in [&b"one"[..], b"two"] {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.topic, "al/t");
                assert_eq!(&p.payload[..], want);
            }
            other => panic!("expected the aliased publish, got {other:?}"),
        }
    }

    raw.send(&publish_v5_bytes(
        0,
        b"al/t",
        0,
        &topic_alias(max + 1),
        b"x",
    ))
    .await;
    expect_disconnect(&mut raw, 0x94).await;

    let p = publish_v5_bytes(0, b"", 0, &topic_alias(1), b"x");
    bad_after_connack_v5(broker.addr, "alias-unknown", &p, 0x82).await;
    closed_exactly(&broker, "invalid_inbound_message", 2.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// 9. Receive Maximum
// ---------------------------------------------------------------------------------------

/// MQTT-3.3.4-7 / v5 §3.3.4: a client must not have more than the server's Receive Maximum
/// QoS 2 publishes unacknowledged (no PUBCOMP yet); the server answers 0x93.
#[tokio::test]
async fn more_qos2_than_receive_maximum_is_0x93_mqtt_3_3_4_7() {
    let broker = start_with(|c| c.limits.receive_maximum = 5).await;
    let (mut raw, connack) = Raw::connect(broker.addr, connect_packet(Version::V5, "rm")).await;
    assert_eq!(connack.properties.receive_maximum, Some(5));
    for id in 1..=5u16 {
        raw.send(&publish_v5_bytes(2, b"rm/t", id, &[], b"x")).await;
        match raw.recv().await {
            Some(Packet::PubRec(ack)) => assert_eq!((ack.packet_id, ack.reason_code), (id, 0)),
            other => panic!("expected PUBREC {id}, got {other:?}"),
        }
    }
    raw.send(&publish_v5_bytes(2, b"rm/t", 6, &[], b"x")).await;
    expect_disconnect(&mut raw, 0x93).await;
    closed_exactly(&broker, "invalid_inbound_message", 1.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// 10. QoS 2 flood reusing packet ids
// ---------------------------------------------------------------------------------------

/// MQTT-4.3.3-10: until PUBREL, every PUBLISH with the same packet id is answered with PUBREC
/// and not delivered again. A flood reusing ten ids without PUBREL: each id delivered once,
/// memory bounded.
#[tokio::test]
async fn qos2_flood_reusing_ids_is_delivered_once_per_id_mqtt_4_3_3_10() {
    let broker = start().await;
    let mut sub = v5(broker.addr, "q2sub").await;
    subscribed(&mut sub, &["q2/#"], QoS::AtMostOnce).await;
    let mut publisher = v5(broker.addr, "q2pub").await;
    let payload = vec![0x5Au8; 4096];
    let before = rss();
    let rounds = 500usize;
    let ids = 10u16;
    for round in 0..rounds {
        let mut batch = Vec::new();
        for id in 1..=ids {
            let mut body = payload.clone();
            body[..8].copy_from_slice(&(round as u64).to_be_bytes());
            batch.extend(publish_v5_bytes(2, b"q2/t", id, &[], &body));
        }
        publisher.send(&batch).await;
        for id in 1..=ids {
            match publisher.recv().await {
                Some(Packet::PubRec(ack)) => {
                    assert_eq!((ack.packet_id, ack.reason_code), (id, 0), "round {round}")
                }
                other => panic!("round {round}: expected PUBREC {id}, got {other:?}"),
            }
        }
    }
    // A marker from the same publisher arrives after everything routed before it.
    publisher
        .send(&publish_v5_bytes(0, b"q2/end", 0, &[], b"end"))
        .await;
    let mut delivered = 0;
    loop {
        match sub.recv().await {
            Some(Packet::Publish(p)) if p.topic == "q2/end" => break,
            Some(Packet::Publish(p)) => {
                assert_eq!(p.topic, "q2/t");
                assert_eq!(
                    &p.payload[..8],
                    &0u64.to_be_bytes(),
                    "only round 0 goes out"
                );
                delivered += 1;
            }
            other => panic!("subscriber expected publishes, got {other:?}"),
        }
    }
    assert_eq!(delivered, usize::from(ids), "exactly once per packet id");
    assert_growth_below(before, 16 * MIB, "20 MiB of duplicate QoS 2 publishes");
    // The ids are released by PUBREL as usual afterwards.
    publisher.send(&[0x62, 0x02, 0x00, 0x01]).await;
    match publisher.recv().await {
        Some(Packet::PubComp(ack)) => assert_eq!((ack.packet_id, ack.reason_code), (1, 0)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    still_serves(broker.addr).await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// 11. Properties
// ---------------------------------------------------------------------------------------

/// Thousands of user properties in one PUBLISH within `max_packet_size` (v5 §3.3.2.3.7: may
/// appear multiple times) are handled: delivered with all of them in order.
#[tokio::test]
async fn publish_with_thousands_of_user_properties_is_handled() {
    let broker = start().await;
    let mut sub = v5(broker.addr, "upsub").await;
    subscribed(&mut sub, &["up/t"], QoS::AtLeastOnce).await;
    let mut raw = v5(broker.addr, "uppub").await;
    let count = 5000;
    let mut items = Vec::new();
    for i in 0..count {
        items.extend(user_property(format!("k{i}").as_bytes(), b"v"));
    }
    let packet = publish_v5_bytes(1, b"up/t", 1, &items, b"payload");
    assert!(packet.len() < 1_048_576);
    let before = rss();
    raw.send(&packet).await;
    match raw.recv().await {
        Some(Packet::PubAck(ack)) => assert_eq!((ack.packet_id, ack.reason_code), (1, 0)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    match sub.recv().await {
        Some(Packet::Publish(p)) => {
            assert_eq!(p.properties.user_properties.len(), count);
            assert_eq!(p.properties.user_properties[4999].0, "k4999");
            // Acknowledge it: an unacknowledged delivery would hold graceful shutdown for
            // the drain period.
            let mut puback = vec![0x40, 0x02];
            puback.extend_from_slice(&p.packet_id.to_be_bytes());
            sub.send(&puback).await;
        }
        other => panic!("expected the publish, got {other:?}"),
    }
    assert_growth_below(before, 32 * MIB, "one PUBLISH with 5,000 user properties");
    still_serves(broker.addr).await;
    broker.stop().await;
}

/// v5 §3.3.2.3.3: "It is a Protocol Error to include the Message Expiry Interval more than
/// once": DISCONNECT 0x82.
#[tokio::test]
async fn duplicate_message_expiry_interval_is_protocol_error_v5_3_3_2_3_3() {
    let broker = start().await;
    let mut twice = message_expiry(10);
    twice.extend(message_expiry(20));
    let p = publish_v5_bytes(1, b"dup/t", 1, &twice, b"x");
    bad_after_connack_v5(broker.addr, "dupexp", &p, 0x82).await;
    // Two Topic Aliases likewise.
    let mut twice = topic_alias(1);
    twice.extend(topic_alias(2));
    let p = publish_v5_bytes(0, b"dup/t", 0, &twice, b"x");
    bad_after_connack_v5(broker.addr, "dupalias", &p, 0x82).await;
    closed_exactly(&broker, "invalid_inbound_message", 2.0).await;
    still_serves(broker.addr).await;
    broker.stop().await;
}

fn will_connect_v5(topic: &[u8]) -> Vec<u8> {
    // Will flag (0x04) + clean start; will properties empty, topic, payload.
    let mut rest = props(&[]);
    rest.extend(field(topic));
    rest.extend(field(b"gone"));
    connect_v5_raw(0x06, &[], b"willwild", &rest)
}

/// MQTT-4.7.0-1 / MQTT-3.1.3-11: the Will Topic is a topic name, so `a/#` is invalid. The
/// CONNECT is refused with CONNACK 0x90 (a v5 client is told why) and the connection closes
/// (no session).
#[tokio::test]
async fn will_topic_with_wildcard_is_refused_with_0x90_mqtt_4_7_0_1() {
    let broker = start().await;
    for topic in [&b"a/#"[..], b"a/+"] {
        let mut raw = Raw::open(broker.addr).await;
        raw.send(&will_connect_v5(topic)).await;
        let sent = timeout(raw.until_closed()).await;
        assert!(
            matches!(sent.as_slice(), [Packet::ConnAck(c)] if c.reason_code == 0x90),
            "expected CONNACK 0x90, got {sent:?}"
        );
    }
    assert_eq!(broker.server().broker().sessions.counts(), (0, 0));
    still_serves(broker.addr).await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// 13. Flapping takeovers
// ---------------------------------------------------------------------------------------

/// MQTT-3.1.4-3: each new connection with the same client id takes the session over; the old
/// one gets DISCONNECT 0x8E. 200 alternations between two clients leave exactly one.
#[tokio::test]
async fn flapping_takeovers_leave_one_session_mqtt_3_1_4_3() {
    let broker = start().await;
    let mut current = v5(broker.addr, "flap").await;
    for i in 1..200 {
        // Two clients alternate; odd rounds resume the session, even ones start clean.
        let mut connect = connect_packet(Version::V5, "flap");
        if i % 2 == 1 {
            connect.clean_start = false;
            connect.session_expiry_interval = Some(60);
        }
        let (next, connack) = Raw::connect(broker.addr, connect).await;
        assert_eq!(connack.reason_code, 0, "round {i}");
        expect_disconnect(&mut current, 0x8E).await;
        current = next;
    }
    closed_at_least(&broker, "session_taken_over", 199.0).await;
    assert_eq!(broker.server().broker().sessions.counts(), (1, 0));
    current.send(&[0xC0, 0x00]).await;
    assert_eq!(current.recv().await, Some(Packet::PingResp));
    still_serves(broker.addr).await;
    broker.stop().await;
}

/// The same with the two clients racing concurrently: still exactly one owner at the end.
#[tokio::test]
async fn concurrent_flapping_takeovers_leave_one_session_mqtt_3_1_4_3() {
    let broker = start().await;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let addr = broker.addr;
        tasks.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            for _ in 0..100 {
                let (raw, connack) = Raw::connect(addr, connect_packet(Version::V5, "race")).await;
                assert_eq!(connack.reason_code, 0);
                kept.push(raw);
            }
            kept
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(timeout(task).await.expect("task"));
    }
    closed_at_least(&broker, "session_taken_over", 199.0).await;
    assert_eq!(broker.server().broker().sessions.counts(), (1, 0));
    let mut open = 0;
    for mut raw in all {
        raw.send(&[0xC0, 0x00]).await;
        match raw.recv().await {
            Some(Packet::PingResp) => open += 1,
            Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, 0x8E),
            None => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(open, 1, "exactly one connection still serves");
    still_serves(broker.addr).await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// 15. `$` topics, shared subscriptions, subscribe storms
// ---------------------------------------------------------------------------------------

/// MQTT-4.7.2-1: filters starting with a wildcard do not match topic names starting with `$`.
#[tokio::test]
async fn wildcards_do_not_match_dollar_topics_mqtt_4_7_2_1() {
    let broker = start().await;
    let mut sub = v5(broker.addr, "dollar-sub").await;
    subscribed(&mut sub, &["#", "+/x", "+/+"], QoS::AtMostOnce).await;
    let mut publisher = v5(broker.addr, "dollar-pub").await;
    publisher
        .send_packet(&publish("$SYS/x", QoS::AtLeastOnce, 1, b"sys"))
        .await;
    publisher
        .send_packet(&publish("$foo/x", QoS::AtLeastOnce, 2, b"foo"))
        .await;
    for id in [1, 2] {
        match publisher.recv().await {
            Some(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, id),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    publisher
        .send_packet(&publish("marker", QoS::AtMostOnce, 0, b"m"))
        .await;
    match sub.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(p.topic, "marker", "a $ topic leaked"),
        other => panic!("expected the marker, got {other:?}"),
    }
    still_serves(broker.addr).await;
    broker.stop().await;
}

/// MQTT-3.8.3-4: No Local on a shared subscription is a Protocol Error: DISCONNECT 0x82.
#[tokio::test]
async fn shared_subscription_with_no_local_is_protocol_error_mqtt_3_8_3_4() {
    let broker = start().await;
    let mut raw = v5(broker.addr, "nolocal").await;
    raw.send_packet(&subscribe(
        1,
        vec![request("$share/g/t", QoS::AtMostOnce, true)],
    ))
    .await;
    expect_disconnect(&mut raw, 0x82).await;
    closed_exactly(&broker, "invalid_inbound_message", 1.0).await;
    assert_eq!(broker.server().broker().sessions.subscription_count(), 0);
    still_serves(broker.addr).await;
    broker.stop().await;
}

/// 2,000 SUBSCRIBE/UNSUBSCRIBE alternations mixing `$share/g/t/N` and `t/N`, then 2,000
/// subscriptions held and all unsubscribed: the table is empty and memory bounded.
#[tokio::test]
async fn subscribe_unsubscribe_storm_leaves_no_subscriptions() {
    let broker = start().await;
    let mut raw = v5(broker.addr, "storm").await;
    let filter = |n: usize| {
        if n.is_multiple_of(2) {
            format!("$share/g/t/{n}")
        } else {
            format!("t/{n}")
        }
    };
    let before = rss();
    let batch = 50;
    for start in (0..2000).step_by(batch) {
        let mut out = bytes::BytesMut::new();
        for n in start..start + batch {
            let id = (n % 60_000 + 1) as u16;
            for packet in [
                subscribe(id, vec![request(&filter(n), QoS::AtLeastOnce, false)]),
                unsubscribe(id, vec![filter(n)]),
            ] {
                brokk::protocol::encode(&packet, Version::V5, &mut out).expect("encode");
            }
        }
        raw.send(&out).await;
        for n in start..start + batch {
            match raw.recv().await {
                Some(Packet::SubAck(ack)) => assert_eq!(ack.reason_codes, vec![1], "{n}"),
                other => panic!("expected SUBACK, got {other:?}"),
            }
            match raw.recv().await {
                Some(Packet::UnsubAck(ack)) => assert_eq!(ack.reason_codes, vec![0], "{n}"),
                other => panic!("expected UNSUBACK, got {other:?}"),
            }
        }
    }
    assert_eq!(broker.server().broker().sessions.subscription_count(), 0);

    // Hold 2,000 at once, then drop them all.
    for start in (0..2000).step_by(batch) {
        let requests = (start..start + batch)
            .map(|n| request(&filter(n), QoS::AtMostOnce, false))
            .collect();
        raw.send_packet(&subscribe(1, requests)).await;
        match raw.recv().await {
            Some(Packet::SubAck(ack)) => assert_eq!(ack.reason_codes, vec![0; batch]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
    assert_eq!(broker.server().broker().sessions.subscription_count(), 2000);
    for start in (0..2000).step_by(batch) {
        raw.send_packet(&unsubscribe(
            2,
            (start..start + batch).map(filter).collect(),
        ))
        .await;
        match raw.recv().await {
            Some(Packet::UnsubAck(ack)) => assert_eq!(ack.reason_codes, vec![0; batch]),
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }
    assert_eq!(broker.server().broker().sessions.subscription_count(), 0);
    assert_growth_below(before, 16 * MIB, "subscribe/unsubscribe storm");
    raw.send(&[0xC0, 0x00]).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
    still_serves(broker.addr).await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// 16. Connection flood past max_connections
// ---------------------------------------------------------------------------------------

/// 40 CONNECTs against `max_connections = 20`: 20 accepted, 20 refused with CONNACK 0x97
/// Quota exceeded and closed (`aborted`); after the accepted ones leave, new connections are
/// accepted again.
#[tokio::test]
async fn connection_flood_past_max_connections_is_refused_with_0x97() {
    let broker = start_with(|c| c.limits.max_connections = 20).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let addr = broker.addr;
        tasks.push(tokio::spawn(async move {
            let (mut raw, connack) =
                Raw::connect(addr, connect_packet(Version::V5, &format!("flood-{i}"))).await;
            if connack.reason_code != 0 {
                // Refused: closed with nothing after the CONNACK.
                assert!(timeout(raw.until_closed()).await.is_empty());
            }
            (raw, connack.reason_code)
        }));
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let (raw, code) = timeout(task).await.expect("task");
        match code {
            0 => accepted.push(raw),
            0x97 => refused += 1,
            other => panic!("unexpected CONNACK 0x{other:02X}"),
        }
    }
    assert_eq!((accepted.len(), refused), (20, 20));
    closed_exactly(&broker, "aborted", 20.0).await;

    for mut raw in accepted {
        raw.send(&[0xE0, 0x00]).await;
        assert!(timeout(raw.until_closed()).await.is_empty());
    }
    closed_exactly(&broker, "closed_by_client", 20.0).await;
    // The slots are released when the connection tasks end, just after the count: retry
    // briefly until a new connection is accepted.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (mut raw, connack) =
            Raw::connect(broker.addr, connect_packet(Version::V5, "after-flood")).await;
        if connack.reason_code == 0 {
            raw.send(&[0xE0, 0x00]).await;
            timeout(raw.until_closed()).await;
            break;
        }
        assert_eq!(connack.reason_code, 0x97);
        assert!(Instant::now() < deadline, "slots never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    still_serves(broker.addr).await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------
// WebSocket: garbage frames, fragmented garbage, frames that break RFC 6455
// ---------------------------------------------------------------------------------------

/// A deterministic byte source (xorshift), so a failing case can be replayed.
struct Bytes64(u64);

impl Bytes64 {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One client frame: FIN, RSV bits, opcode, masked or not (clients must mask), the payload.
fn ws_frame(fin: bool, rsv: u8, opcode: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A WebSocket listener's socket after a completed upgrade.
async fn ws_upgraded(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"GET /mqtt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Protocol: mqtt\r\n\r\n",
        )
        .await
        .expect("send");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = timeout(stream.read(&mut byte)).await.expect("read");
        assert_eq!(n, 1, "closed during the upgrade");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    stream
}

/// Whatever garbage a WebSocket client sends, after the upgrade or in place of it, the broker
/// closes that connection (never hangs on it, never answers with text, never crashes) and goes
/// on serving WebSocket and TCP clients, within a memory ceiling.
#[tokio::test]
async fn websocket_garbage_frames_are_closed_and_the_broker_keeps_serving() {
    let broker = start_with(|c| {
        c.listeners.insert(
            "ws".to_string(),
            brokk::config::ListenerConfig {
                websocket: Some(brokk::config::WebSocketConfig::default()),
                ..brokk::config::ListenerConfig::new("127.0.0.1:0".parse().expect("addr"))
            },
        );
        c.limits.max_packet_size = 64 * 1024;
        c.limits.connect_timeout = Duration::from_secs(2);
    })
    .await;
    let ws = broker.server().local_addr("ws").expect("ws listener");
    let before = rss();
    let mut random = Bytes64(0x9E37_79B9_7F4A_7C15);
    let connect = connect_v311_bytes(b"hostile-ws");
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        (
            "unmasked binary frame".into(),
            ws_frame(true, 0, 2, false, &connect),
        ),
        ("RSV bits set".into(), ws_frame(true, 7, 2, true, &connect)),
        (
            "reserved opcode 3".into(),
            ws_frame(true, 0, 3, true, &connect),
        ),
        (
            "reserved control opcode 0xB".into(),
            ws_frame(true, 0, 0xB, true, b""),
        ),
        (
            "continuation without a start".into(),
            ws_frame(true, 0, 0, true, &connect),
        ),
        ("fragmented ping".into(), ws_frame(false, 0, 9, true, b"x")),
        (
            "ping longer than 125 bytes".into(),
            ws_frame(true, 0, 9, true, &[0; 200]),
        ),
        ("text in the middle of a binary message".into(), {
            let mut v = ws_frame(false, 0, 2, true, &connect[..3]);
            v.extend(ws_frame(true, 0, 1, true, b"text"));
            v
        }),
        ("new message before the last one ended".into(), {
            let mut v = ws_frame(false, 0, 2, true, &connect[..3]);
            v.extend(ws_frame(true, 0, 2, true, &connect[3..]));
            v
        }),
        ("a 64-bit length with the top bit set".into(), {
            let mut v = vec![0x82, 0xFF];
            v.extend_from_slice(&u64::MAX.to_be_bytes());
            v.extend_from_slice(&[0; 4]);
            v
        }),
        (
            "close frame with a 1-byte payload".into(),
            ws_frame(true, 0, 8, true, b"x"),
        ),
        (
            "garbage MQTT in a binary frame".into(),
            ws_frame(true, 0, 2, true, &[0xFF; 32]),
        ),
    ];
    for i in 0..24 {
        let n = 1 + (random.next() % 300) as usize;
        cases.push((format!("random bytes #{i}"), random.fill(n)));
        // Fragmented garbage: a binary start and continuations of random MQTT bytes.
        let mut v = Vec::new();
        let parts = 1 + random.next() % 5;
        for p in 0..parts {
            let n = (random.next() % 40) as usize;
            let opcode = if p == 0 { 2 } else { 0 };
            v.extend(ws_frame(p + 1 == parts, 0, opcode, true, &random.fill(n)));
        }
        cases.push((format!("fragmented garbage #{i}"), v));
    }
    for (what, bytes) in &cases {
        let mut stream = ws_upgraded(ws).await;
        // Garbage after a valid CONNECT for half of the cases: the session state machine too.
        if what.contains('#') && what.ends_with(['0', '2', '4', '6', '8']) {
            stream
                .write_all(&ws_frame(true, 0, 2, true, &connect))
                .await
                .expect("send");
        }
        let _ = stream.write_all(bytes).await;
        if what.contains('#') {
            // Random bytes may be a valid prefix the broker rightly waits on (a frame or a
            // packet announcing more): the client's EOF then ends it.
            let _ = stream.shutdown().await;
        }
        // The broker closes: an EOF or a reset (the crafted violations without any help).
        let mut sink = Vec::new();
        let ended =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
        assert!(ended.is_ok(), "{what}: the connection was not closed");
        // Nothing but binary and close frames (and HTTP never again) comes back.
        assert!(!sink.starts_with(b"HTTP"), "{what}: {sink:?}");
        if let Some(first) = sink.first() {
            assert!(matches!(first & 0x0f, 2 | 8), "{what}: frame 0x{first:02x}");
        }
    }
    // Garbage instead of an upgrade: an HTTP 400, or a close.
    for i in 0..8 {
        let mut stream = TcpStream::connect(ws).await.expect("connect");
        let n = 1 + (random.next() % 400) as usize;
        let _ = stream.write_all(&random.fill(n)).await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        let ended =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        assert!(ended.is_ok(), "garbage request #{i}: not closed");
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"),
            "garbage request #{i}: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_growth_below(before, 64 * MIB, "WebSocket garbage");
    // Still serving: a WebSocket client completes CONNECT, and so does a TCP client.
    let mut stream = ws_upgraded(ws).await;
    stream
        .write_all(&ws_frame(
            true,
            0,
            2,
            true,
            &connect_v311_bytes(b"after-ws-garbage"),
        ))
        .await
        .expect("send");
    let mut connack = [0u8; 6];
    timeout(stream.read_exact(&mut connack))
        .await
        .expect("CONNACK frame");
    assert_eq!(
        connack,
        [0x82, 4, 0x20, 2, 0, 0],
        "a binary frame holding CONNACK 0"
    );
    still_serves(broker.addr).await;
    broker.stop().await;
}
