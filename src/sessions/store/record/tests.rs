use super::*;
use proptest::prelude::*;

fn session() -> SessionRecord {
    SessionRecord {
        client_id: "sensor-17".into(),
        username: Some("alice".into()),
        protocol_version: 5,
        expiry_interval: 3600,
        expires_at_ms: Some(1_767_225_600_000),
        will: Some(WillRecord {
            topic: "status/sensor-17".into(),
            payload: Bytes::from_static(b"offline"),
            qos: 1,
            retain: true,
            properties: Bytes::from_static(&[0x01, 0x01]),
            delay_interval: 30,
            publish_at_ms: Some(1_767_225_630_000),
        }),
        subscriptions: vec![
            SubscriptionRecord {
                filter: "cmd/sensor-17/#".into(),
                qos: 2,
                no_local: true,
                retain_as_published: false,
                retain_handling: 2,
                subscription_identifier: Some(268_435_455),
            },
            SubscriptionRecord {
                filter: "$share/g/fleet/+".into(),
                qos: 0,
                no_local: false,
                retain_as_published: true,
                retain_handling: 0,
                subscription_identifier: None,
            },
        ],
    }
}

fn message() -> MessageRecord {
    MessageRecord {
        topic: "fleet/7/temp".into(),
        payload: Bytes::from_static(b"21.5"),
        qos: 2,
        retain: false,
        properties: Bytes::from_static(&[0x02, 0, 0, 0, 60]),
        expires_at_ms: Some(1_767_225_660_000),
    }
}

/// One record of every kind, with options both set and unset.
fn every_kind() -> Vec<Record> {
    let bare = SessionRecord {
        username: None,
        protocol_version: 4,
        expires_at_ms: None,
        will: None,
        subscriptions: vec![],
        ..session()
    };
    vec![
        Record::Session(session()),
        Record::Session(bare),
        Record::Message(message()),
        Record::Message(MessageRecord {
            payload: Bytes::new(),
            properties: Bytes::new(),
            expires_at_ms: None,
            ..message()
        }),
        Record::QueueEntry(QueueEntryRecord {
            seq: u64::MAX,
            message_id: 42,
            qos: 1,
            retain: true,
            subscription_identifiers: vec![1, 9, 268_435_455],
        }),
        Record::Inflight(InflightRecord {
            packet_id: 65_535,
            state: InflightState::AwaitingPubComp,
            seq: 7,
        }),
        Record::InboundQos2(InboundQos2Record { packet_id: 1 }),
        Record::Retained(RetainedRecord {
            topic: "fleet/7/config".into(),
            payload: Bytes::from_static(b"{}"),
            qos: 1,
            properties: Bytes::new(),
            expires_at_ms: None,
        }),
        Record::RevokedUser(RevokedUserRecord {
            username: "mallory".into(),
            revoked_at_ms: 1_767_225_600_000,
        }),
    ]
}

#[test]
fn every_kind_round_trips() {
    for record in every_kind() {
        let bytes = record.encode().expect("encode");
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode_any(&bytes), Ok(record.clone()), "{record:?}");
    }
    let bytes = encode(&session()).expect("encode");
    assert_eq!(decode::<SessionRecord>(&bytes), Ok(session()));
    let bytes = encode(&message()).expect("encode");
    assert_eq!(decode::<MessageRecord>(&bytes), Ok(message()));
}

#[test]
fn a_record_of_another_kind_is_refused() {
    let bytes = encode(&message()).expect("encode");
    assert_eq!(
        decode::<SessionRecord>(&bytes),
        Err(FormatError::WrongKind {
            expected: RecordKind::Session,
            found: RecordKind::Message,
        })
    );
}

#[test]
fn every_single_byte_flip_fails_the_checksum() {
    for record in every_kind() {
        let bytes = record.encode().expect("encode");
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                let err = decode_any(&damaged).expect_err("a flip is detected");
                assert!(
                    matches!(err, FormatError::Checksum { .. }),
                    "{i}/{bit}: {err}"
                );
            }
        }
    }
}

#[test]
fn every_truncation_and_extension_fails() {
    for record in every_kind() {
        let bytes = record.encode().expect("encode");
        for len in 0..bytes.len() {
            assert!(decode_any(&bytes[..len]).is_err(), "prefix of {len} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_any(&longer).is_err());
    }
    assert_eq!(
        decode_any(&[1, 2, 3]),
        Err(FormatError::Truncated { len: 3, min: 10 })
    );
}

/// A well-framed record (valid checksum) whose header fields are rewritten.
fn reframed(bytes: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut framed = bytes[..bytes.len() - 4].to_vec();
    edit(&mut framed);
    let crc = crc32c::crc32c(&framed);
    framed.extend_from_slice(&crc.to_le_bytes());
    framed
}

#[test]
fn frame_errors_are_typed() {
    let bytes = encode(&InboundQos2Record { packet_id: 9 }).expect("encode");
    let v2 = reframed(&bytes, |b| b[0] = 2);
    assert_eq!(decode_any(&v2), Err(FormatError::UnknownVersion(2)));
    let kind = reframed(&bytes, |b| b[1] = 200);
    assert_eq!(decode_any(&kind), Err(FormatError::UnknownKind(200)));
    let len = reframed(&bytes, |b| b[2] = 3);
    assert_eq!(
        decode_any(&len),
        Err(FormatError::LengthMismatch {
            declared: 3,
            actual: 2
        })
    );
}

#[test]
fn body_errors_are_typed() {
    let kind = RecordKind::RevokedUser as u8;
    // A name claiming 1,000 bytes where 4 are left.
    let mut body = 1000u32.to_le_bytes().to_vec();
    body.extend_from_slice(b"evil");
    assert_eq!(
        decode_any(&seal(1, kind, &body)),
        Err(FormatError::Overrun {
            field: "username",
            needed: 1000,
            left: 4
        })
    );
    let mut body = 2u32.to_le_bytes().to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(&0u64.to_le_bytes());
    assert_eq!(
        decode_any(&seal(1, kind, &body)),
        Err(FormatError::Utf8 { field: "username" })
    );
    let good = encode(&RevokedUserRecord {
        username: "u".into(),
        revoked_at_ms: 1,
    })
    .expect("encode");
    let body = good[6..good.len() - 4].to_vec();
    let mut longer = body.clone();
    longer.push(0);
    assert_eq!(
        decode_any(&seal(1, kind, &longer)),
        Err(FormatError::Trailing(1))
    );
}

#[test]
fn out_of_range_values_are_refused_both_ways() {
    let entry = |qos| QueueEntryRecord {
        seq: 1,
        message_id: 1,
        qos,
        retain: false,
        subscription_identifiers: vec![],
    };
    let bad_qos = FormatError::InvalidValue {
        field: "qos",
        value: 3,
    };
    assert_eq!(encode(&entry(3)), Err(bad_qos.clone()));
    let good = encode(&entry(2)).expect("encode");
    let body = &good[6..good.len() - 4];
    let mut patched = body.to_vec();
    patched[16] = 3;
    let sealed = seal(1, RecordKind::QueueEntry as u8, &patched);
    assert_eq!(decode_any(&sealed), Err(bad_qos));
    patched[16] = 1;
    patched[17] = 2; // the retain flag: only 0 or 1
    let sealed = seal(1, RecordKind::QueueEntry as u8, &patched);
    assert_eq!(
        decode_any(&sealed),
        Err(FormatError::InvalidValue {
            field: "retain",
            value: 2
        })
    );
    let zero = InflightRecord {
        packet_id: 0,
        state: InflightState::AwaitingPubAck,
        seq: 0,
    };
    assert!(encode(&zero).is_err());
    let old = SessionRecord {
        protocol_version: 3,
        ..session()
    };
    assert!(encode(&old).is_err());
}

#[test]
fn a_huge_list_count_is_refused_before_allocating() {
    // A queue entry claiming 4 billion subscription identifiers in a 26-byte body.
    let mut body = Vec::new();
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = decode_any(&seal(1, RecordKind::QueueEntry as u8, &body)).expect_err("refused");
    assert!(matches!(
        err,
        FormatError::Overrun {
            field: "subscription_identifiers",
            ..
        }
    ));
}

#[test]
fn a_field_too_long_for_its_length_prefix_is_refused() {
    let mut w = Writer(Vec::new());
    let len = u32::MAX as usize + 1;
    assert_eq!(
        w.len("payload", len),
        Err(FormatError::FieldTooLong {
            field: "payload",
            len
        })
    );
}

fn text() -> impl Strategy<Value = String> {
    "[a-z/#+$ é]{0,24}"
}

fn blob() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn subscription() -> impl Strategy<Value = SubscriptionRecord> {
    (
        text(),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        0u8..3,
        any::<Option<u32>>(),
    )
        .prop_map(
            |(filter, qos, no_local, retain_as_published, retain_handling, id)| {
                SubscriptionRecord {
                    filter,
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                    subscription_identifier: id,
                }
            },
        )
}

fn will() -> impl Strategy<Value = WillRecord> {
    (
        text(),
        blob(),
        0u8..3,
        any::<bool>(),
        blob(),
        any::<u32>(),
        any::<Option<u64>>(),
    )
        .prop_map(
            |(topic, payload, qos, retain, properties, delay_interval, publish_at_ms)| WillRecord {
                topic,
                payload,
                qos,
                retain,
                properties,
                delay_interval,
                publish_at_ms,
            },
        )
}

fn session_record() -> impl Strategy<Value = Record> {
    (
        text(),
        prop::option::of(text()),
        prop_oneof![Just(4u8), Just(5u8)],
        any::<u32>(),
        any::<Option<u64>>(),
        prop::option::of(will()),
        prop::collection::vec(subscription(), 0..4),
    )
        .prop_map(|(client_id, username, v, expiry, at, will, subs)| {
            Record::Session(SessionRecord {
                client_id,
                username,
                protocol_version: v,
                expiry_interval: expiry,
                expires_at_ms: at,
                will,
                subscriptions: subs,
            })
        })
}

fn other_record() -> impl Strategy<Value = Record> {
    let msg = (
        text(),
        blob(),
        0u8..3,
        any::<bool>(),
        blob(),
        any::<Option<u64>>(),
    )
        .prop_map(|(topic, payload, qos, retain, properties, expires_at_ms)| {
            Record::Message(MessageRecord {
                topic,
                payload,
                qos,
                retain,
                properties,
                expires_at_ms,
            })
        });
    let entry = (
        any::<u64>(),
        any::<u64>(),
        0u8..3,
        any::<bool>(),
        prop::collection::vec(any::<u32>(), 0..4),
    )
        .prop_map(|(seq, message_id, qos, retain, ids)| {
            Record::QueueEntry(QueueEntryRecord {
                seq,
                message_id,
                qos,
                retain,
                subscription_identifiers: ids,
            })
        });
    let state = prop_oneof![
        Just(InflightState::AwaitingPubAck),
        Just(InflightState::AwaitingPubRec),
        Just(InflightState::AwaitingPubComp),
    ];
    let inflight = (1u16.., state, any::<u64>()).prop_map(|(packet_id, state, seq)| {
        Record::Inflight(InflightRecord {
            packet_id,
            state,
            seq,
        })
    });
    let inbound =
        (1u16..).prop_map(|packet_id| Record::InboundQos2(InboundQos2Record { packet_id }));
    let retained = (text(), blob(), 0u8..3, blob(), any::<Option<u64>>()).prop_map(
        |(topic, payload, qos, properties, expires_at_ms)| {
            Record::Retained(RetainedRecord {
                topic,
                payload,
                qos,
                properties,
                expires_at_ms,
            })
        },
    );
    let revoked = (text(), any::<u64>()).prop_map(|(username, revoked_at_ms)| {
        Record::RevokedUser(RevokedUserRecord {
            username,
            revoked_at_ms,
        })
    });
    prop_oneof![msg, entry, inflight, inbound, retained, revoked]
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![session_record(), other_record()]
}

proptest! {
    #[test]
    fn any_record_round_trips(r in record()) {
        let bytes = r.encode().expect("encode");
        prop_assert_eq!(decode_any(&bytes), Ok(r));
    }

    #[test]
    fn any_byte_flip_is_caught_by_the_checksum(
        r in record(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let mut bytes = r.encode().expect("encode");
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        let is_checksum = matches!(decode_any(&bytes), Err(FormatError::Checksum { .. }));
        prop_assert!(is_checksum);
    }

    #[test]
    fn any_truncation_is_refused(r in record(), at in any::<prop::sample::Index>()) {
        let bytes = r.encode().expect("encode");
        let len = at.index(bytes.len());
        prop_assert!(decode_any(&bytes[..len]).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_any(&bytes);
    }

    /// Bodies with a valid frame reach the field readers: never a panic, and what decodes
    /// re-encodes to the same bytes (the encoding is canonical).
    #[test]
    fn sealed_arbitrary_bodies_never_panic(
        kind in 0u8..9,
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let bytes = seal(FORMAT_VERSION, kind, &body);
        if let Ok(record) = decode_any(&bytes) {
            prop_assert_eq!(record.encode().expect("re-encode"), bytes);
        }
    }
}
