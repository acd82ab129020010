//! Target `store_format`: the durable store's record decoder (`brokk::sessions::store::record`) on bytes
//! as a damaged store file would give them, and on arbitrary bodies in a valid frame.

use brokk::sessions::store::record::{
    self, InboundQos2Record, InflightRecord, InflightState, MessageRecord, QueueEntryRecord,
    Record, RetainedRecord, RevokedUserRecord, SessionRecord, SubscriptionRecord, WillRecord,
};
use bytes::Bytes;

/// The first byte picks the mode. Even: the rest is decoded as stored bytes (the checksum
/// turns nearly all of them away). Odd: the byte after it is a record kind and the rest its
/// body, framed with a valid checksum (`seal`), so the field readers see arbitrary bodies.
/// Checks: no panic; whatever decodes re-encodes to the very same bytes.
pub fn store_format_target(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let Some((&kind, body)) = rest.split_first() else {
            return;
        };
        record::seal(record::FORMAT_VERSION, kind, body)
    };
    if let Ok(record) = record::decode_any(&bytes) {
        let again = record.encode().expect("a decoded record encodes");
        assert_eq!(again, bytes, "a decoded record re-encodes to the same bytes");
    }
}

fn records() -> Vec<(&'static str, Record)> {
    let will = WillRecord {
        topic: "status/s1".into(),
        payload: Bytes::from_static(b"offline"),
        qos: 1,
        retain: true,
        properties: Bytes::from_static(&[0x01, 0x01]),
        delay_interval: 30,
        publish_at_ms: Some(1_767_225_630_000),
    };
    let subscription = SubscriptionRecord {
        filter: "cmd/s1/#".into(),
        qos: 2,
        no_local: true,
        retain_as_published: true,
        retain_handling: 1,
        subscription_identifier: Some(7),
    };
    vec![
        (
            "session",
            Record::Session(SessionRecord {
                client_id: "s1".into(),
                username: Some("alice".into()),
                protocol_version: 5,
                expiry_interval: 3600,
                expires_at_ms: Some(1_767_225_600_000),
                will: Some(will),
                subscriptions: vec![subscription],
            }),
        ),
        (
            "message",
            Record::Message(MessageRecord {
                topic: "fleet/7/temp".into(),
                payload: Bytes::from_static(b"21.5"),
                qos: 1,
                retain: false,
                properties: Bytes::from_static(&[0x02, 0, 0, 0, 60]),
                expires_at_ms: Some(1_767_225_660_000),
            }),
        ),
        (
            "queue-entry",
            Record::QueueEntry(QueueEntryRecord {
                seq: 12,
                message_id: 99,
                qos: 1,
                retain: false,
                subscription_identifiers: vec![7],
            }),
        ),
        (
            "inflight",
            Record::Inflight(InflightRecord {
                packet_id: 3,
                state: InflightState::AwaitingPubRec,
                seq: 12,
            }),
        ),
        (
            "inbound-qos2",
            Record::InboundQos2(InboundQos2Record { packet_id: 5 }),
        ),
        (
            "retained",
            Record::Retained(RetainedRecord {
                topic: "fleet/7/config".into(),
                payload: Bytes::from_static(b"{}"),
                qos: 0,
                properties: Bytes::new(),
                expires_at_ms: None,
            }),
        ),
        (
            "revoked-user",
            Record::RevokedUser(RevokedUserRecord {
                username: "mallory".into(),
                revoked_at_ms: 1_767_225_600_000,
            }),
        ),
    ]
}

/// Seeds: every kind of record, whole (mode 0) and as kind + body to be sealed (mode 1).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, record) in records() {
        let bytes = record.encode().expect("seed record encodes");
        let mut whole = vec![0u8];
        whole.extend_from_slice(&bytes);
        out.push(("store_format", name.to_string(), whole));
        // Mode 1 takes the kind byte and the body: the frame minus version, length, checksum.
        let mut body = vec![1u8, bytes[1]];
        body.extend_from_slice(&bytes[6..bytes.len() - 4]);
        out.push(("store_format", format!("{name}-body"), body));
    }
    out
}
