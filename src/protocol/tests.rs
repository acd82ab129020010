//! Unit tests for the wire layer: round trips, one regression test per codec defect, and a
//! deterministic fuzz run proving no input makes `decode` panic.

use bytes::{Bytes, BytesMut};

use super::framing;
use super::*;

const MAX: usize = 1 << 20;

fn enc(p: &Packet, v: Version) -> BytesMut {
    let mut out = BytesMut::new();
    encode(p, v, &mut out).expect("encode");
    assert_eq!(
        encoded_len(p, v).expect("encoded_len"),
        out.len(),
        "encoded_len of {p:?}"
    );
    out
}

fn dec(bytes: &[u8], v: Option<Version>) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, v, MAX)
}

fn dec_err(bytes: &[u8], v: Option<Version>) -> DecodeError {
    dec(bytes, v).expect_err("decode should fail")
}

fn round_trip(p: Packet, v: Version) {
    let bytes = enc(&p, v);
    let mut buf = bytes.clone();
    let ctx = if matches!(p, Packet::Connect(_)) {
        None
    } else {
        Some(v)
    };
    let got = decode(&mut buf, ctx, MAX).unwrap_or_else(|e| panic!("{e} decoding {bytes:02x?}"));
    assert_eq!(got, Some(p), "bytes {bytes:02x?}");
    assert!(buf.is_empty());
}

fn connect(v: Version) -> Connect {
    Connect {
        keep_alive: 30,
        username: Some("user".into()),
        password: Some(Bytes::from_static(&[0xFF, 0x00, 0xC3])), // binary, not UTF-8
        will: Some(Will {
            topic: "will/t".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            delay_interval: 0,
            properties: MessageProperties::default(),
        }),
        ..Connect::new(v, "client-1")
    }
}

fn message_props() -> MessageProperties {
    MessageProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        content_type: Some("text/plain".into()),
        response_topic: Some("resp/t".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
    }
}

fn connect_v5() -> Connect {
    let mut c = connect(Version::V5);
    c.session_expiry_interval = Some(3600);
    c.receive_maximum = Some(10);
    c.maximum_packet_size = Some(4096);
    c.topic_alias_maximum = Some(5);
    c.request_response_information = Some(1);
    c.request_problem_information = Some(0);
    c.authentication_method = Some("SCRAM".into());
    c.authentication_data = Some(Bytes::from_static(b"data"));
    c.user_properties = vec![("a".into(), "b".into())];
    if let Some(w) = &mut c.will {
        w.delay_interval = 10;
        w.properties = message_props();
    }
    c
}

fn publish(qos: QoS) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: true,
        topic: "a/b".into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 7 },
        payload: Bytes::from_static(b"hello"),
        topic_alias: None,
        subscription_identifiers: Vec::new(),
        properties: MessageProperties::default(),
    }
}

fn sub_request(filter: &str, qos: QoS) -> SubscriptionRequest {
    SubscriptionRequest {
        filter: filter.into(),
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    }
}

fn v4_packets() -> Vec<Packet> {
    let mut anon = connect(Version::V311);
    anon.username = None;
    anon.password = None;
    anon.will = None;
    vec![
        Packet::Connect(Box::new(connect(Version::V311))),
        Packet::Connect(Box::new(anon)),
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: 0,
            properties: Default::default(),
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: 0x85,
            properties: Default::default(),
        }),
        Packet::Publish(publish(QoS::AtMostOnce)),
        Packet::Publish(publish(QoS::AtLeastOnce)),
        Packet::Publish(Publish {
            dup: true,
            ..publish(QoS::ExactlyOnce)
        }),
        Packet::PubAck(Ack::success(1)),
        Packet::PubRec(Ack::success(2)),
        Packet::PubRel(Ack::success(3)),
        Packet::PubComp(Ack::success(65535)),
        Packet::Subscribe(Subscribe {
            packet_id: 9,
            filters: vec![
                sub_request("a/+", QoS::AtMostOnce),
                sub_request("b/#", QoS::ExactlyOnce),
            ],
            subscription_identifier: None,
            user_properties: Vec::new(),
        }),
        Packet::SubAck(SubAck {
            packet_id: 9,
            reason_codes: vec![0, 1, 2, 0x80],
            reason_string: None,
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 10,
            filters: vec!["a/+".into(), "b".into()],
            user_properties: Vec::new(),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 10,
            reason_codes: Vec::new(),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::with_reason(0, None)),
    ]
}

fn v5_packets() -> Vec<Packet> {
    let mut anon = connect(Version::V5);
    anon.will = None;
    anon.username = None;
    anon.password = Some(Bytes::from_static(b"pw")); // password without username is legal in v5
    let mut full_publish = publish(QoS::AtLeastOnce);
    full_publish.properties = message_props();
    full_publish.topic_alias = Some(3);
    full_publish.subscription_identifiers = vec![1, 268_435_455];
    let mut alias_only = publish(QoS::AtMostOnce);
    alias_only.topic = String::new();
    alias_only.topic_alias = Some(1);
    vec![
        Packet::Connect(Box::new(connect_v5())),
        Packet::Connect(Box::new(anon)),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: 0,
            properties: Default::default(),
        }),
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: 0x00,
            properties: ConnAckProperties {
                session_expiry_interval: Some(10),
                receive_maximum: Some(100),
                maximum_qos: Some(1),
                retain_available: Some(true),
                maximum_packet_size: Some(1 << 20),
                assigned_client_identifier: Some("auto-1".into()),
                topic_alias_maximum: Some(10),
                reason_string: Some("ok".into()),
                wildcard_subscription_available: Some(true),
                subscription_identifiers_available: Some(false),
                shared_subscription_available: Some(true),
                server_keep_alive: Some(60),
                authentication_method: Some("JWT".into()),
                user_properties: vec![("x".into(), "y".into())],
            },
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: 0x86,
            properties: Default::default(),
        }),
        Packet::Publish(publish(QoS::AtMostOnce)),
        Packet::Publish(publish(QoS::ExactlyOnce)),
        Packet::Publish(full_publish),
        Packet::Publish(alias_only),
        Packet::PubAck(Ack::success(1)),
        Packet::PubAck(Ack {
            packet_id: 1,
            reason_code: 0x10,
            reason_string: None,
        }),
        Packet::PubRec(Ack {
            packet_id: 2,
            reason_code: 0x80,
            reason_string: Some("no".into()),
        }),
        Packet::PubRel(Ack {
            packet_id: 3,
            reason_code: 0x92,
            reason_string: None,
        }),
        Packet::PubComp(Ack::success(4)),
        Packet::Subscribe(Subscribe {
            packet_id: 9,
            filters: vec![
                sub_request("a/+", QoS::AtMostOnce),
                SubscriptionRequest {
                    filter: "$share/g/b/#".into(),
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
                SubscriptionRequest {
                    retain_handling: RetainHandling::SendIfNew,
                    ..sub_request("c", QoS::AtLeastOnce)
                },
            ],
            subscription_identifier: Some(42),
            user_properties: vec![("u".into(), "p".into())],
        }),
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![sub_request("x", QoS::AtMostOnce)],
            subscription_identifier: None,
            user_properties: Vec::new(),
        }),
        Packet::SubAck(SubAck {
            packet_id: 9,
            reason_codes: vec![0, 1, 2, 0x80, 0x8F],
            reason_string: Some("r".into()),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 10,
            filters: vec!["a/+".into()],
            user_properties: vec![("u".into(), "p".into())],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 10,
            reason_codes: vec![0x00, 0x11],
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::with_reason(0, None)),
        Packet::Disconnect(Disconnect::with_reason(0x8E, None)),
        Packet::Disconnect(Disconnect {
            reason_code: 0x9C,
            session_expiry_interval: Some(0),
            reason_string: Some("move".into()),
            server_reference: Some("other:1883".into()),
        }),
        Packet::Auth(Auth {
            reason_code: 0,
            authentication_method: None,
            authentication_data: None,
            reason_string: None,
        }),
        Packet::Auth(Auth {
            reason_code: 0x18,
            authentication_method: Some("SCRAM".into()),
            authentication_data: Some(Bytes::from_static(b"\x01\x02")),
            reason_string: Some("continue".into()),
        }),
    ]
}

#[test]
fn v4_round_trips_every_packet_type() {
    for p in v4_packets() {
        round_trip(p, Version::V311);
    }
}

#[test]
fn v5_round_trips_every_packet_type() {
    for p in v5_packets() {
        round_trip(p, Version::V5);
    }
}

/// Builds a frame around `body` with a minimal Remaining Length.
fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    framing::put_header(&mut out, byte1, body.len()).expect("header");
    out.extend_from_slice(body);
    out.to_vec()
}

/// A v5 QoS 0 PUBLISH body to topic `topic` with the raw property block content `props`.
fn v5_publish_body(topic: &[u8], props: &[u8]) -> Vec<u8> {
    let mut body = vec![0, topic.len() as u8];
    body.extend_from_slice(topic);
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    body.extend_from_slice(b"payload");
    body
}

const V5: Option<Version> = Some(Version::V5);
const V4: Option<Version> = Some(Version::V311);

fn is_malformed(e: DecodeError) -> bool {
    matches!(e, DecodeError::Malformed(_))
}

fn is_protocol(e: DecodeError) -> bool {
    matches!(e, DecodeError::Protocol(_))
}

// --- mqttbytes-ng defects -------------------------------------------------------------

#[test]
fn v5_disconnect_without_body_decodes() {
    assert_eq!(
        dec(&[0xE0, 0x00], V5),
        Ok(Some(Packet::Disconnect(Disconnect::with_reason(0, None))))
    );
}

#[test]
fn v5_disconnect_with_only_reason_code_decodes() {
    assert_eq!(
        dec(&[0xE0, 0x01, 0x8E], V5),
        Ok(Some(Packet::Disconnect(Disconnect::with_reason(
            0x8E, None
        ))))
    );
    assert_eq!(
        enc(
            &Packet::Disconnect(Disconnect::with_reason(0x8E, None)),
            Version::V5
        )
        .to_vec(),
        vec![0xE0, 0x01, 0x8E]
    );
}

#[test]
fn size_limit_counts_the_fixed_header() {
    // 2-byte header + 8-byte body = 10 bytes: the crate compares only the 8 with the limit.
    let bytes = frame(0x30, &[0, 1, b'a', b'p', b'a', b'y', b'l', b'd']);
    assert_eq!(bytes.len(), 10);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, V4, 9),
        Err(DecodeError::PacketTooLarge { size: 10, max: 9 })
    );
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(decode(&mut buf, V4, 10).expect("fits").is_some());
}

#[test]
fn packet_too_large_from_fixed_header_alone() {
    // Only the fixed header of a ~256 MiB PUBLISH has arrived.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(
        decode(&mut buf, V5, 1 << 20),
        Err(DecodeError::PacketTooLarge {
            size: 5 + 268_435_455,
            max: 1 << 20
        })
    );
}

#[test]
fn v5_auth_decodes() {
    let a = Auth {
        reason_code: 0,
        authentication_method: None,
        authentication_data: None,
        reason_string: None,
    };
    assert_eq!(dec(&[0xF0, 0x00], V5), Ok(Some(Packet::Auth(a))));
    let bytes = frame(0xF0, &[0x18, 0x05, 0x15, 0x00, 0x02, b'm', b'x']);
    assert!(matches!(
        dec(&bytes, V5),
        Ok(Some(Packet::Auth(Auth {
            reason_code: 0x18,
            ..
        })))
    ));
    assert!(
        is_malformed(dec_err(&[0xF0, 0x00], V4)),
        "AUTH does not exist in 3.1.1"
    );
}

#[test]
fn v5_unsubscribe_is_hand_parsed_without_crate_dbg() {
    let bytes = frame(0xA2, &[0, 5, 0, 0, 1, b'x']);
    let want = Unsubscribe {
        packet_id: 5,
        filters: vec!["x".into()],
        user_properties: Vec::new(),
    };
    assert_eq!(dec(&bytes, V5), Ok(Some(Packet::Unsubscribe(want))));
}

#[test]
fn string_over_65535_is_refused_on_encode() {
    let long = "a".repeat(65_536);
    let mut p = publish(QoS::AtMostOnce);
    p.topic = long.clone();
    for v in [Version::V311, Version::V5] {
        let mut out = BytesMut::new();
        assert_eq!(
            encode(&Packet::Publish(p.clone()), v, &mut out),
            Err(EncodeError::StringTooLong(65_536))
        );
        assert!(out.is_empty());
    }
    let mut p = publish(QoS::AtMostOnce);
    p.properties.user_properties = vec![("k".into(), long.clone())];
    let mut out = BytesMut::new();
    assert_eq!(
        encode(&Packet::Publish(p), Version::V5, &mut out),
        Err(EncodeError::StringTooLong(65_536))
    );
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![sub_request(&long, QoS::AtMostOnce)],
        subscription_identifier: None,
        user_properties: Vec::new(),
    });
    for v in [Version::V311, Version::V5] {
        assert_eq!(
            encode(&sub, v, &mut BytesMut::new()),
            Err(EncodeError::StringTooLong(65_536))
        );
    }
    let mut c = connect(Version::V311);
    c.client_id = long;
    assert_eq!(
        encode(
            &Packet::Connect(Box::new(c)),
            Version::V311,
            &mut BytesMut::new()
        ),
        Err(EncodeError::StringTooLong(65_536))
    );
}

// --- framing -------------------------------------------------------------------------

#[test]
fn remaining_length_of_five_bytes_is_malformed() {
    assert!(is_malformed(dec_err(
        &[0x30, 0x80, 0x80, 0x80, 0x80, 0x01],
        V5
    )));
}

#[test]
fn non_minimal_remaining_length_is_malformed() {
    assert!(is_malformed(dec_err(&[0xC0, 0x80, 0x00], V5)));
    assert!(is_malformed(dec_err(&[0xC0, 0xFF, 0x80, 0x00], V4)));
}

#[test]
fn incomplete_frames_wait_and_leave_the_buffer_alone() {
    let bytes = enc(&Packet::Publish(publish(QoS::AtLeastOnce)), Version::V5);
    for cut in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..cut]);
        assert_eq!(decode(&mut buf, V5, MAX), Ok(None), "cut at {cut}");
        assert_eq!(buf.len(), cut);
    }
    // Two packets back to back come out one at a time.
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0xC0, 0x00, 0xC0][..]);
    assert_eq!(decode(&mut buf, V5, MAX), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut buf, V5, MAX), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut buf, V5, MAX), Ok(None));
}

#[test]
fn reserved_fixed_header_flags_are_malformed() {
    assert!(
        is_malformed(dec_err(&[0x60, 0x02, 0x00, 0x01], V5)),
        "PUBREL needs 0010"
    );
    assert!(
        is_malformed(dec_err(&[0x80, 0x06, 0, 1, 0, 1, b'a', 0], V4)),
        "SUBSCRIBE needs 0010"
    );
    assert!(
        is_malformed(dec_err(&[0xA0, 0x05, 0, 1, 0, 1, b'a'], V4)),
        "UNSUBSCRIBE needs 0010"
    );
    assert!(
        is_malformed(dec_err(&[0x42, 0x02, 0x00, 0x01], V5)),
        "PUBACK needs 0000"
    );
    assert!(is_malformed(dec_err(&[0xC1, 0x00], V4)));
    assert!(is_malformed(dec_err(&[0xE2, 0x00], V5)));
}

#[test]
fn packet_types_0_and_15_are_malformed() {
    assert!(is_malformed(dec_err(&[0x00, 0x00], V5)));
    assert!(is_malformed(dec_err(&[0x00, 0x00], None)));
    assert!(is_malformed(dec_err(&[0xF0, 0x00], V4)));
}

#[test]
fn publish_qos_3_is_malformed() {
    assert!(is_malformed(dec_err(
        &frame(0x36, &[0, 1, b'a', 0, 1, 0]),
        V5
    )));
    assert!(is_malformed(dec_err(&frame(0x36, &[0, 1, b'a', 0, 1]), V4)));
}

#[test]
fn publish_qos_0_with_dup_is_malformed() {
    assert!(is_malformed(dec_err(
        &frame(0x38, &v5_publish_body(b"a", &[])),
        V5
    )));
    assert!(is_malformed(dec_err(&frame(0x38, &[0, 1, b'a']), V4)));
}

// --- CONNECT ordering and versions ----------------------------------------------------

#[test]
fn first_packet_must_be_connect() {
    assert!(is_protocol(dec_err(&[0xC0, 0x00], None)));
    assert!(is_protocol(dec_err(&frame(0x30, &[0, 1, b'a']), None)));
}

#[test]
fn second_connect_is_a_protocol_error() {
    let bytes = enc(
        &Packet::Connect(Box::new(connect(Version::V311))),
        Version::V311,
    );
    assert_eq!(
        dec(&bytes, V4),
        Err(DecodeError::Protocol("second CONNECT".into()))
    );
    assert_eq!(
        dec(&bytes, V5),
        Err(DecodeError::Protocol("second CONNECT".into()))
    );
}

#[test]
fn unsupported_protocol_levels() {
    let mqisdp = frame(
        0x10,
        &[
            0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60, 0, 1, b'c',
        ],
    );
    assert_eq!(
        dec(&mqisdp, None),
        Err(DecodeError::UnsupportedProtocolVersion(3))
    );
    let six = frame(
        0x10,
        &[0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 60, 0, 1, b'c'],
    );
    assert_eq!(
        dec(&six, None),
        Err(DecodeError::UnsupportedProtocolVersion(6))
    );
    assert_eq!(
        DecodeError::UnsupportedProtocolVersion(6).reason_code(),
        0x84
    );
}

/// A 3.1.1 CONNECT body with the given flags, client id "c" and no payload beyond it.
fn v4_connect_with_flags(flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60, 0, 1, b'c'];
    body.extend_from_slice(rest);
    frame(0x10, &body)
}

#[test]
fn connect_reserved_flag_is_malformed() {
    assert!(is_malformed(dec_err(
        &v4_connect_with_flags(0x03, &[]),
        None
    )));
}

#[test]
fn will_qos_or_retain_without_will_flag_is_malformed() {
    assert!(is_malformed(dec_err(
        &v4_connect_with_flags(0x02 | 0x08, &[]),
        None
    )));
    assert!(is_malformed(dec_err(
        &v4_connect_with_flags(0x02 | 0x20, &[]),
        None
    )));
    // Will QoS 3 with the will flag.
    assert!(is_malformed(dec_err(
        &v4_connect_with_flags(0x02 | 0x04 | 0x18, &[0, 1, b't', 0, 0]),
        None
    )));
}

#[test]
fn v311_password_without_username_is_malformed() {
    assert!(is_malformed(dec_err(
        &v4_connect_with_flags(0x42, &[0, 2, b'p', b'w']),
        None
    )));
}

#[test]
fn connect_trailing_bytes_are_malformed() {
    assert!(
        dec(&v4_connect_with_flags(0x02, &[]), None)
            .expect("valid")
            .is_some()
    );
    assert!(is_malformed(dec_err(
        &v4_connect_with_flags(0x02, &[0xAA]),
        None
    )));
}

#[test]
fn invalid_utf8_in_client_id_is_malformed() {
    let bytes = frame(
        0x10,
        &[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 2, 0xC3, 0x28],
    );
    assert!(is_malformed(dec_err(&bytes, None)));
    // Encoded surrogate U+D800 is ill-formed too.
    let bytes = frame(
        0x10,
        &[
            0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 3, 0xED, 0xA0, 0x80,
        ],
    );
    assert!(is_malformed(dec_err(&bytes, None)));
}

#[test]
fn nul_in_client_id_and_username_is_malformed() {
    assert!(is_malformed(dec_err(
        &frame(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, 0]),
        None
    )));
    assert!(is_malformed(dec_err(
        &v4_connect_with_flags(0x82, &[0, 2, b'u', 0]),
        None
    )));
}

#[test]
fn nul_in_will_topic_is_malformed_and_wildcards_reach_the_broker() {
    assert!(is_malformed(dec_err(
        &v4_connect_with_flags(0x06, &[0, 2, b't', 0, 0, 0]),
        None
    )));
    // A wildcard will topic decodes; the broker refuses it with CONNACK 0x90.
    let mut buf =
        bytes::BytesMut::from(&v4_connect_with_flags(0x06, &[0, 2, b't', b'#', 0, 0])[..]);
    match super::decode(&mut buf, None, 1 << 20) {
        Ok(Some(super::Packet::Connect(c))) => {
            assert_eq!(c.will.map(|w| w.topic), Some("t#".to_string()))
        }
        other => panic!("expected CONNECT, got {other:?}"),
    }
}

#[test]
fn v5_connect_auth_data_without_method_is_a_protocol_error() {
    let bytes = frame(
        0x10,
        &[
            0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 4, 0x16, 0, 1, b'x', 0, 1, b'c',
        ],
    );
    assert!(is_protocol(dec_err(&bytes, None)));
}

// --- PUBLISH topics -------------------------------------------------------------------

#[test]
fn nul_in_topic_is_malformed() {
    assert!(is_malformed(dec_err(
        &frame(0x30, &[0, 3, b'a', 0, b'b']),
        V4
    )));
    assert!(is_malformed(dec_err(
        &frame(0x30, &v5_publish_body(b"a\0b", &[])),
        V5
    )));
}

#[test]
fn invalid_utf8_in_topic_is_malformed() {
    assert!(is_malformed(dec_err(&frame(0x30, &[0, 2, 0xC3, 0x28]), V4)));
    assert!(is_malformed(dec_err(
        &frame(0x30, &v5_publish_body(&[0xFF], &[])),
        V5
    )));
}

#[test]
fn wildcard_topic_is_topic_name_invalid() {
    for topic in [&b"a/+"[..], b"#", b"a/#/b"] {
        let mut body = vec![0, topic.len() as u8];
        body.extend_from_slice(topic);
        assert!(matches!(
            dec_err(&frame(0x30, &body), V4),
            DecodeError::TopicNameInvalid(_)
        ));
        assert!(matches!(
            dec_err(&frame(0x30, &v5_publish_body(topic, &[])), V5),
            DecodeError::TopicNameInvalid(_)
        ));
    }
}

#[test]
fn empty_topic_needs_a_topic_alias() {
    assert!(matches!(
        dec_err(&frame(0x30, &[0, 0, b'x']), V4),
        DecodeError::TopicNameInvalid(_)
    ));
    assert!(matches!(
        dec_err(&frame(0x30, &v5_publish_body(b"", &[])), V5),
        DecodeError::TopicNameInvalid(_)
    ));
    let Ok(Some(Packet::Publish(p))) = dec(&frame(0x30, &v5_publish_body(b"", &[0x23, 0, 4])), V5)
    else {
        panic!("empty topic with alias must decode")
    };
    assert_eq!((p.topic.as_str(), p.topic_alias), ("", Some(4)));
}

#[test]
fn topic_alias_0_is_passed_through() {
    let Ok(Some(Packet::Publish(p))) = dec(&frame(0x30, &v5_publish_body(b"t", &[0x23, 0, 0])), V5)
    else {
        panic!("topic alias 0 is the broker's to refuse")
    };
    assert_eq!(p.topic_alias, Some(0));
}

// --- v5 properties --------------------------------------------------------------------

#[test]
fn duplicated_single_use_property_is_a_protocol_error() {
    let props = [0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2];
    assert!(is_protocol(dec_err(
        &frame(0x30, &v5_publish_body(b"t", &props)),
        V5
    )));
    // Two Subscription Identifiers in one SUBSCRIBE.
    assert!(is_protocol(dec_err(
        &frame(0x82, &[0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0]),
        V5
    )));
    // User Property may repeat.
    let props = [0x26, 0, 1, b'k', 0, 1, b'v', 0x26, 0, 1, b'k', 0, 1, b'v'];
    assert!(
        dec(&frame(0x30, &v5_publish_body(b"t", &props)), V5)
            .expect("repeatable")
            .is_some()
    );
}

#[test]
fn subscription_identifier_0_is_a_protocol_error() {
    assert!(is_protocol(dec_err(
        &frame(0x82, &[0, 1, 2, 0x0B, 0, 0, 1, b'a', 0]),
        V5
    )));
    assert!(is_protocol(dec_err(
        &frame(0x30, &v5_publish_body(b"t", &[0x0B, 0])),
        V5
    )));
}

#[test]
fn unknown_or_misplaced_property_is_malformed() {
    assert!(is_malformed(dec_err(
        &frame(0x30, &v5_publish_body(b"t", &[0x7F, 0])),
        V5
    )));
    // Session Expiry Interval is not a PUBLISH property.
    assert!(is_malformed(dec_err(
        &frame(0x30, &v5_publish_body(b"t", &[0x11, 0, 0, 0, 1])),
        V5
    )));
}

#[test]
fn property_overrunning_its_block_is_malformed() {
    // Block length 3 but Message Expiry Interval needs 5 bytes.
    let body = [0, 1, b't', 3, 0x02, 0, 0, 0, 9, b'p'];
    assert!(is_malformed(dec_err(&frame(0x30, &body), V5)));
}

#[test]
fn invalid_utf8_or_nul_in_user_property_is_malformed() {
    assert!(is_malformed(dec_err(
        &frame(
            0x30,
            &v5_publish_body(b"t", &[0x26, 0, 1, 0xFF, 0, 1, b'v'])
        ),
        V5
    )));
    assert!(is_malformed(dec_err(
        &frame(0x30, &v5_publish_body(b"t", &[0x26, 0, 1, b'k', 0, 1, 0])),
        V5
    )));
    // And in a CONNECT's user property.
    let bytes = frame(
        0x10,
        &[
            0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 7, 0x26, 0, 1, b'k', 0, 1, 0xC0, 0, 1, b'c',
        ],
    );
    assert!(is_malformed(dec_err(&bytes, None)));
}

// --- SUBSCRIBE / UNSUBSCRIBE / packet ids ---------------------------------------------

#[test]
fn subscribe_without_filters_is_rejected() {
    assert!(is_protocol(dec_err(&frame(0x82, &[0, 1, 0]), V5)));
    assert!(is_malformed(dec_err(&frame(0x82, &[0, 1]), V4)));
    assert!(is_protocol(dec_err(&frame(0xA2, &[0, 1, 0]), V5)));
    assert!(is_malformed(dec_err(&frame(0xA2, &[0, 1]), V4)));
}

#[test]
fn subscribe_qos_3_and_reserved_option_bits_are_malformed() {
    assert!(is_malformed(dec_err(
        &frame(0x82, &[0, 1, 0, 1, b'a', 3]),
        V4
    )));
    assert!(
        is_malformed(dec_err(&frame(0x82, &[0, 1, 0, 1, b'a', 0x04]), V4)),
        "3.1.1 has no No Local bit"
    );
    assert!(is_malformed(dec_err(
        &frame(0x82, &[0, 1, 0, 0, 1, b'a', 3]),
        V5
    )));
    assert!(is_malformed(dec_err(
        &frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x40]),
        V5
    )));
    assert!(
        is_protocol(dec_err(&frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x30]), V5)),
        "Retain Handling 3"
    );
}

#[test]
fn nul_in_topic_filter_is_malformed() {
    assert!(is_malformed(dec_err(
        &frame(0x82, &[0, 1, 0, 2, b'a', 0, 0]),
        V4
    )));
    assert!(is_malformed(dec_err(
        &frame(0xA2, &[0, 1, 0, 2, b'a', 0]),
        V4
    )));
    assert!(is_malformed(dec_err(
        &frame(0xA2, &[0, 1, 0, 0, 2, b'a', 0]),
        V5
    )));
}

#[test]
fn packet_id_0_is_malformed() {
    assert!(is_malformed(dec_err(&frame(0x32, &[0, 1, b'a', 0, 0]), V4)));
    assert!(is_malformed(dec_err(
        &frame(0x32, &[0, 1, b'a', 0, 0, 0]),
        V5
    )));
    assert!(is_malformed(dec_err(
        &frame(0x82, &[0, 0, 0, 1, b'a', 0]),
        V4
    )));
    assert!(is_malformed(dec_err(
        &frame(0x82, &[0, 0, 0, 0, 1, b'a', 0]),
        V5
    )));
    assert!(is_malformed(dec_err(&frame(0xA2, &[0, 0, 0, 1, b'a']), V4)));
    for byte1 in [0x40, 0x50, 0x62, 0x70] {
        assert!(is_malformed(dec_err(&[byte1, 2, 0, 0], V4)));
        assert!(is_malformed(dec_err(&[byte1, 2, 0, 0], V5)));
    }
}

#[test]
fn trailing_bytes_are_malformed() {
    assert!(
        is_malformed(dec_err(&[0x40, 3, 0, 1, 0], V4)),
        "3.1.1 PUBACK is exactly 2 bytes"
    );
    assert!(is_malformed(dec_err(&[0xC0, 1, 0], V4)));
    assert!(is_malformed(dec_err(&[0xC0, 1, 0], V5)));
    assert!(is_malformed(dec_err(&[0xE0, 3, 0, 0, 0], V5)));
    assert!(is_malformed(dec_err(&[0x40, 5, 0, 1, 0, 0, 0], V5)));
}

#[test]
fn v5_ack_invalid_reason_code_is_malformed() {
    assert!(is_malformed(dec_err(&[0x40, 3, 0, 1, 0x92], V5)));
    assert!(is_malformed(dec_err(&[0xE0, 1, 0x01], V5)));
}

// --- encoding specifics ---------------------------------------------------------------

#[test]
fn v5_success_ack_uses_the_short_form() {
    assert_eq!(
        enc(&Packet::PubAck(Ack::success(1)), Version::V5).to_vec(),
        vec![0x40, 2, 0, 1]
    );
    assert_eq!(
        enc(&Packet::PubRel(Ack::success(1)), Version::V5).to_vec(),
        vec![0x62, 2, 0, 1]
    );
    assert_eq!(
        enc(
            &Packet::PubAck(Ack {
                packet_id: 1,
                reason_code: 0x10,
                reason_string: None
            }),
            Version::V5
        )
        .to_vec(),
        vec![0x40, 3, 0, 1, 0x10]
    );
}

#[test]
fn v311_acks_are_two_bytes_and_unsuback_has_no_payload() {
    let ack = Ack {
        packet_id: 1,
        reason_code: 0x80,
        reason_string: Some("x".into()),
    };
    assert_eq!(
        enc(&Packet::PubAck(ack), Version::V311).to_vec(),
        vec![0x40, 2, 0, 1]
    );
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 2,
        reason_codes: vec![0x11],
    });
    assert_eq!(enc(&unsuback, Version::V311).to_vec(), vec![0xB0, 2, 0, 2]);
}

#[test]
fn v311_connack_maps_reason_codes() {
    let code = |rc| {
        let bytes = enc(
            &Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: rc,
                properties: Default::default(),
            }),
            Version::V311,
        );
        bytes[3]
    };
    assert_eq!(
        [
            code(0),
            code(0x84),
            code(0x85),
            code(0x88),
            code(0x89),
            code(0x97),
            code(0x9F)
        ],
        [0, 1, 2, 3, 3, 3, 3]
    );
    assert_eq!([code(0x86), code(0x87), code(0x80)], [4, 5, 3]);
}

#[test]
fn v311_suback_failures_become_0x80() {
    let s = Packet::SubAck(SubAck {
        packet_id: 1,
        reason_codes: vec![1, 0x87, 0x8F],
        reason_string: None,
    });
    assert_eq!(
        enc(&s, Version::V311).to_vec(),
        vec![0x90, 5, 0, 1, 1, 0x80, 0x80]
    );
}

#[test]
fn v311_server_disconnect_and_auth_are_invalid() {
    let d = Packet::Disconnect(Disconnect::with_reason(0x8E, None));
    assert!(matches!(
        encode(&d, Version::V311, &mut BytesMut::new()),
        Err(EncodeError::Invalid(_))
    ));
    assert!(matches!(
        encoded_len(&d, Version::V311),
        Err(EncodeError::Invalid(_))
    ));
    let a = Packet::Auth(Auth {
        reason_code: 0,
        authentication_method: None,
        authentication_data: None,
        reason_string: None,
    });
    assert!(matches!(
        encode(&a, Version::V311, &mut BytesMut::new()),
        Err(EncodeError::Invalid(_))
    ));
}

#[test]
fn publish_encoded_len_matches_large_payloads() {
    for size in [0usize, 100, 127, 128, 16_383, 16_384, 2_097_152] {
        let mut p = publish(QoS::AtLeastOnce);
        p.payload = Bytes::from(vec![7u8; size]);
        p.properties = message_props();
        for v in [Version::V311, Version::V5] {
            let out = enc(&Packet::Publish(p.clone()), v);
            assert_eq!(
                out.len(),
                encoded_len(&Packet::Publish(p.clone()), v).expect("len")
            );
        }
    }
}

// --- robustness -----------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn fuzzed_input_never_panics() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut seeds: Vec<(Vec<u8>, Option<Version>)> = Vec::new();
    for p in v4_packets() {
        let ctx = if matches!(p, Packet::Connect(_)) {
            None
        } else {
            V4
        };
        seeds.push((enc(&p, Version::V311).to_vec(), ctx));
    }
    for p in v5_packets() {
        let ctx = if matches!(p, Packet::Connect(_)) {
            None
        } else {
            V5
        };
        seeds.push((enc(&p, Version::V5).to_vec(), ctx));
    }
    let mut decoded = 0;
    for round in 0..6000 {
        let (seed, ctx) = &seeds[round % seeds.len()];
        let mut bytes = seed.clone();
        match rng.next() % 4 {
            0 => {
                // Flip a few bits.
                for _ in 0..1 + rng.next() % 4 {
                    let i = (rng.next() as usize) % bytes.len();
                    bytes[i] ^= 1 << (rng.next() % 8);
                }
            }
            1 => {
                // Overwrite a byte with a random value, keep the header.
                let i = (rng.next() as usize) % bytes.len();
                bytes[i] = rng.next() as u8;
            }
            2 => {
                // Truncate, then fix the Remaining Length so the frame is "complete".
                let cut = 1 + (rng.next() as usize) % bytes.len();
                bytes.truncate(cut);
                if let Ok(Some(h)) = framing::parse_fixed_header(&bytes) {
                    let body = bytes[h.header_len.min(bytes.len())..].to_vec();
                    bytes = frame(bytes[0], &body);
                }
            }
            _ => {
                // Random bytes under a valid type byte.
                let len = (rng.next() % 40) as usize;
                let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                bytes = frame(seed[0], &body);
            }
        }
        for version in [*ctx, V4, V5, None] {
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(p)) = decode(&mut buf, version, MAX) {
                decoded += 1;
                // Whatever decodes must re-encode without panicking too.
                let v = version.unwrap_or(Version::V5);
                let _ = encode(&p, v, &mut BytesMut::new());
                let _ = encoded_len(&p, v);
            }
        }
    }
    assert!(decoded > 0);
}
