//! The seed corpus: small valid packets of every type for both versions, encoded with brokk's
//! own encoder, packet sequences for the connection target, and stored records of every kind
//! for the store_format target. `tests/replay.rs` writes
//! them to `corpus/<target>/` (when `BROKK_FUZZ_WRITE_SEEDS=1`) and checks they are current.

use brokk::protocol::{
    self, Ack, Auth, ConnAck, ConnAckProperties, Connect, Disconnect, MessageProperties, Packet,
    Publish, QoS, RetainHandling, SubAck, Subscribe, SubscriptionRequest, UnsubAck, Unsubscribe,
    Version, Will,
};
use bytes::{Bytes, BytesMut};

use crate::connection;

fn connect(version: Version, full: bool) -> Connect {
    let v5 = version == Version::V5;
    let mut c = connection::connect_packet(version, "seed", false);
    if full {
        c.clean_start = false;
        c.username = Some("user".into());
        c.password = Some(Bytes::from_static(b"pw"));
        c.will = Some(Will {
            topic: "will/t".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            delay_interval: if v5 { 5 } else { 0 },
            properties: if v5 {
                props()
            } else {
                MessageProperties::default()
            },
        });
        if v5 {
            c.session_expiry_interval = Some(60);
            c.receive_maximum = Some(10);
            c.maximum_packet_size = Some(1024);
            c.topic_alias_maximum = Some(4);
            c.request_response_information = Some(1);
            c.request_problem_information = Some(0);
            c.user_properties = vec![("k".into(), "v".into())];
        }
    }
    c
}

fn props() -> MessageProperties {
    MessageProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(30),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/t".into()),
        correlation_data: Some(Bytes::from_static(b"corr")),
        user_properties: vec![("a".into(), "b".into())],
    }
}

fn publish(version: Version, qos: QoS, topic: &str, packet_id: u16) -> Publish {
    let v5 = version == Version::V5;
    Publish {
        dup: false,
        qos,
        retain: qos == QoS::AtLeastOnce,
        topic: topic.into(),
        packet_id,
        payload: Bytes::from_static(b"hello"),
        topic_alias: None,
        subscription_identifiers: Vec::new(),
        properties: if v5 && qos == QoS::ExactlyOnce {
            props()
        } else {
            MessageProperties::default()
        },
    }
}

fn subscribe(version: Version, packet_id: u16, filter: &str) -> Subscribe {
    let v5 = version == Version::V5;
    Subscribe {
        packet_id,
        filters: vec![
            SubscriptionRequest {
                filter: filter.into(),
                qos: QoS::ExactlyOnce,
                no_local: false,
                retain_as_published: v5,
                retain_handling: RetainHandling::SendAtSubscribe,
            },
            SubscriptionRequest {
                filter: "x/+".into(),
                qos: QoS::AtLeastOnce,
                no_local: v5,
                retain_as_published: false,
                retain_handling: if v5 {
                    RetainHandling::SendIfNew
                } else {
                    RetainHandling::SendAtSubscribe
                },
            },
        ],
        subscription_identifier: v5.then_some(7),
        user_properties: Vec::new(),
    }
}

/// One valid packet of every type (client and server side) for `version`.
pub fn packets(version: Version) -> Vec<(&'static str, Packet)> {
    let v5 = version == Version::V5;
    let mut out = vec![
        (
            "connect",
            Packet::Connect(Box::new(connect(version, false))),
        ),
        (
            "connect-full",
            Packet::Connect(Box::new(connect(version, true))),
        ),
        (
            "connack",
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: 0,
                properties: if v5 {
                    ConnAckProperties {
                        receive_maximum: Some(16),
                        topic_alias_maximum: Some(8),
                        ..ConnAckProperties::default()
                    }
                } else {
                    ConnAckProperties::default()
                },
            }),
        ),
        (
            "publish0",
            Packet::Publish(publish(version, QoS::AtMostOnce, "a/b", 0)),
        ),
        (
            "publish1",
            Packet::Publish(publish(version, QoS::AtLeastOnce, "a/b", 1)),
        ),
        (
            "publish2",
            Packet::Publish(publish(version, QoS::ExactlyOnce, "a/b", 2)),
        ),
        ("puback", Packet::PubAck(Ack::success(1))),
        ("pubrec", Packet::PubRec(Ack::success(2))),
        ("pubrel", Packet::PubRel(Ack::success(2))),
        ("pubcomp", Packet::PubComp(Ack::success(2))),
        ("subscribe", Packet::Subscribe(subscribe(version, 3, "a/#"))),
        (
            "suback",
            Packet::SubAck(SubAck {
                packet_id: 3,
                reason_codes: vec![2, 1, 0x80],
                reason_string: None,
            }),
        ),
        (
            "unsubscribe",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 4,
                filters: vec!["a/#".into(), "x/+".into()],
                user_properties: Vec::new(),
            }),
        ),
        (
            "unsuback",
            Packet::UnsubAck(UnsubAck {
                packet_id: 4,
                reason_codes: if v5 { vec![0, 0x11] } else { Vec::new() },
            }),
        ),
        ("pingreq", Packet::PingReq),
        ("pingresp", Packet::PingResp),
        (
            "disconnect",
            Packet::Disconnect(Disconnect::with_reason(0, None)),
        ),
    ];
    if v5 {
        out.push((
            "puback-reason",
            Packet::PubAck(Ack {
                packet_id: 1,
                reason_code: 0x10,
                reason_string: Some("no subscribers".into()),
            }),
        ));
        let mut alias = publish(version, QoS::AtMostOnce, "a/b", 0);
        alias.topic_alias = Some(1);
        out.push(("publish-alias", Packet::Publish(alias)));
        out.push((
            "disconnect-expiry",
            Packet::Disconnect(Disconnect {
                reason_code: 0x04,
                session_expiry_interval: Some(0),
                reason_string: Some("bye".into()),
                server_reference: None,
            }),
        ));
        out.push((
            "auth",
            Packet::Auth(Auth {
                reason_code: 0x18,
                authentication_method: Some("m".into()),
                authentication_data: Some(Bytes::from_static(b"d")),
                reason_string: None,
            }),
        ));
    }
    out
}

pub fn encode(packet: &Packet, version: Version) -> Vec<u8> {
    let mut out = BytesMut::new();
    protocol::encode(packet, version, &mut out).expect("a seed packet encodes");
    out.to_vec()
}

fn label(version: Version) -> &'static str {
    match version {
        Version::V311 => "v311",
        Version::V5 => "v5",
    }
}

/// A client session after CONNECT: subscribe, publish at every QoS, complete the flows,
/// unsubscribe, ping, disconnect.
fn session(version: Version) -> Vec<Vec<u8>> {
    let all = packets(version);
    let get = |name: &str| {
        all.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| encode(p, version))
            .expect("seed packet")
    };
    [
        "subscribe",
        "publish0",
        "publish1",
        "publish2",
        "pubrel",
        "puback",
        "pubrec",
        "pubcomp",
        "unsubscribe",
        "pingreq",
        "disconnect",
    ]
    .iter()
    .map(|name| get(name))
    .collect()
}

/// Every seed as `(target, file name, bytes)`.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for version in [Version::V311, Version::V5] {
        let v = label(version);
        let selector = match version {
            Version::V311 => 1u8,
            Version::V5 => 2u8,
        };
        let mut stream = Vec::new();
        for (name, packet) in packets(version) {
            let bytes = encode(&packet, version);
            let sel = if matches!(packet, Packet::Connect(_)) {
                0
            } else {
                selector
            };
            let mut decode = vec![sel];
            decode.extend_from_slice(&bytes);
            out.push(("decode", format!("{v}-{name}"), decode));
            for (max, chunk) in [(u16::MAX, 0u8), (64, 3), (8, 0)] {
                let mut framing = vec![sel];
                framing.extend_from_slice(&max.to_be_bytes());
                framing.push(chunk);
                framing.extend_from_slice(&bytes);
                out.push((
                    "framing",
                    format!("{v}-{name}-max{max}-chunk{chunk}"),
                    framing,
                ));
            }
            if name != "connect" && name != "connect-full" {
                stream.extend_from_slice(&bytes);
            }
        }
        // A whole stream: CONNECT (version from the packet), then every other packet.
        let mut s = vec![0u8];
        s.extend_from_slice(&encode(
            &Packet::Connect(Box::new(connect(version, false))),
            version,
        ));
        s.extend_from_slice(&stream);
        out.push(("decode", format!("{v}-stream"), s.clone()));
        let mut f = vec![0u8, 0x10, 0x00, 5];
        f.extend_from_slice(&s[1..]);
        out.push(("framing", format!("{v}-stream"), f));

        let v5_flag = u8::from(version == Version::V5);
        let both = v5_flag | (v5_flag << 1);
        let steps = session(version);
        let chunks = |to_b: bool, pause: bool| -> Vec<(u8, Vec<u8>)> {
            steps
                .iter()
                .map(|p| (u8::from(to_b) | if pause { 2 } else { 0 }, p.clone()))
                .collect()
        };
        // One client, connected by the harness.
        out.push((
            "connection",
            format!("{v}-session"),
            connection::input(both | 0b1000, &chunks(false, true)),
        ));
        // Persistent session, clients close first.
        out.push((
            "connection",
            format!("{v}-persistent-eof"),
            connection::input(both | 0b110_1000, &chunks(false, false)),
        ));
        // The CONNECT in the input itself (full: will, credentials, properties).
        let mut raw = vec![(
            2u8,
            encode(&Packet::Connect(Box::new(connect(version, true))), version),
        )];
        raw.extend(chunks(false, true));
        out.push((
            "connection",
            format!("{v}-raw-connect"),
            connection::input(both, &raw),
        ));
        // Two clients: B subscribes, A publishes (routing to a subscriber).
        let mut routed = vec![(3u8, steps[0].clone())];
        routed.extend(steps[1..4].iter().map(|p| (2u8, p.clone())));
        routed.push((2u8, steps[4].clone()));
        out.push((
            "connection",
            format!("{v}-route"),
            connection::input(both | 0b1100, &routed),
        ));
        // Takeover: B connects with A's identifier, then both send.
        out.push((
            "connection",
            format!("{v}-takeover"),
            connection::input(both | 0b11_1100, &routed),
        ));
    }
    // Mixed versions: a 3.1.1 publisher and a 5.0 subscriber.
    let sub = session(Version::V5);
    let publ = session(Version::V311);
    out.push((
        "connection",
        "mixed-route".to_string(),
        connection::input(
            0b1110,
            &[
                (3, sub[0].clone()),
                (2, publ[1].clone()),
                (2, publ[2].clone()),
                (2, publ[3].clone()),
                (2, publ[4].clone()),
            ],
        ),
    ));
    out.extend(router_seeds());
    out.extend(crate::store_format::seeds());
    out.extend(websocket_seeds());
    out
}

/// WebSocket seeds: a session's packets as chunks of well-formed frames (whole, fragmented,
/// with pings, ending in a text frame), and the same frames as raw bytes.
fn websocket_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for version in [Version::V311, Version::V5] {
        let v = label(version);
        let mut chunks = Vec::new();
        for (i, packet) in session(version).into_iter().enumerate() {
            let packet = &packet[..packet.len().min(255)];
            // Cycle through whole, ping-then-whole and fragmented.
            if i % 3 == 1 {
                chunks.extend([1u8, 2, b'h', b'i']);
            }
            chunks.push(if i % 3 == 2 { 2 } else { 0 });
            chunks.push(packet.len() as u8);
            chunks.extend_from_slice(packet);
        }
        let mut structured = vec![1u8];
        structured.extend_from_slice(&chunks);
        out.push(("websocket", format!("{v}-frames"), structured));
        let mut text = vec![1u8];
        text.extend_from_slice(&chunks);
        text.extend([3u8, 0]);
        out.push(("websocket", format!("{v}-frames-then-text"), text));
        let (wire, _, _) = crate::websocket::structured(&chunks);
        let mut raw = vec![0u8];
        raw.extend_from_slice(&wire);
        out.push(("websocket", format!("{v}-raw"), raw));
    }
    out
}

/// Router seeds: operations `[op, client, levels_hi, levels_lo, picks...]` (see
/// `router.rs`): deep filters and topics of 5,000 to 20,000 levels, wildcards, `$` levels.
fn router_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let op = |code: u8, client: u8, levels: u16, picks: [u8; 4]| {
        let mut bytes = vec![code, client];
        bytes.extend_from_slice(&levels.to_be_bytes());
        bytes.extend_from_slice(&picks);
        bytes
    };
    let deep_subscribe_route = [
        op(0, 0, 5_000, [0, 0, 0, 0]),  // subscribe a/a/.../a (5,001 levels)
        op(0, 1, 19_999, [2, 2, 2, 2]), // subscribe +/+/.../+ (20,000 levels)
        op(0, 2, 3, [0, 1, 3, 3]),      // subscribe a/b/#/# -> invalid, skipped
        op(0, 3, 1, [3, 3, 3, 3]),      // subscribe #/# -> invalid; 2 levels of `#`
        op(2, 0, 5_000, [0, 0, 0, 0]),  // route a/.../a
        op(3, 0, 9_999, [0, 6, 4, 7]),  // retain a deep topic
        op(5, 0, 0, [3, 3, 3, 3]),      // retained matching `#`
        op(4, 0, 9_999, [0, 6, 4, 7]),  // clear it
        op(1, 0, 5_000, [0, 0, 0, 0]),  // unsubscribe
    ]
    .concat();
    let dollar = [
        op(0, 0, 0, [3, 0, 0, 0]), // `#`
        op(0, 1, 1, [5, 2, 0, 0]), // $x/+
        op(3, 0, 1, [5, 0, 0, 0]), // retain $x/a
        op(2, 0, 1, [5, 0, 0, 0]), // route $x/a: only the $x/+ subscriber
        op(5, 0, 0, [3, 0, 0, 0]), // `#` does not see $x/a
        op(5, 0, 1, [5, 3, 0, 0]), // $x/# does
    ]
    .concat();
    vec![
        ("router", "deep".to_string(), deep_subscribe_route),
        ("router", "dollar".to_string(), dollar),
    ]
}
