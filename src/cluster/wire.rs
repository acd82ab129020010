//! What nodes send each other: a routed message (its body is the store's message record)
//! and a session on its way to another node (JSON around the same records).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use crate::message::{Delivery, Message};
use crate::protocol::{QoS, Version};
use crate::sessions::store::disk::convert;
use crate::sessions::store::record::{self, MessageRecord, SubscriptionRecord};
use crate::sessions::{Handover, OutboundState};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("record: {0}")]
    Record(#[from] record::FormatError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("base64: {0}")]
    Base64(#[from] base64::DecodeError),
}

pub fn encode_message(message: &Message) -> Result<Vec<u8>, WireError> {
    Ok(record::encode(&convert::message_record(message))?)
}

pub fn decode_message(bytes: &[u8]) -> Result<Arc<Message>, WireError> {
    let r: MessageRecord = record::decode(bytes)?;
    Ok(convert::message(None, r))
}

/// A key of a JetStream KV bucket for any string (client id, topic): KV keys allow only
/// letters, digits and `-_/=.`.
pub fn kv_key(text: &str) -> String {
    B64.encode(text.as_bytes())
}

pub fn from_kv_key(key: &str) -> Option<String> {
    String::from_utf8(B64.decode(key).ok()?).ok()
}

#[derive(Serialize, Deserialize)]
struct WireDelivery {
    message: String,
    qos: u8,
    retain: bool,
    ids: Vec<u32>,
    /// In flight: its packet id and state (1 PUBACK, 2 PUBREC, 3 PUBCOMP awaited).
    inflight: Option<(u16, u8)>,
}

#[derive(Serialize, Deserialize)]
struct WireHandover {
    v5: bool,
    expiry_interval: u32,
    subscriptions: Vec<String>,
    deliveries: Vec<WireDelivery>,
    inbound_qos2: Vec<u16>,
}

fn delivery(d: &Delivery, inflight: Option<(u16, u8)>) -> Result<WireDelivery, WireError> {
    Ok(WireDelivery {
        message: B64.encode(encode_message(&d.message)?),
        qos: d.qos as u8,
        retain: d.retain,
        ids: d.subscription_identifiers.clone(),
        inflight,
    })
}

/// The code of an outbound state on the wire: 1 PUBACK, 2 PUBREC, 3 PUBCOMP awaited.
pub fn outbound_code(state: OutboundState) -> u8 {
    match state {
        OutboundState::AwaitingPubAck => 1,
        OutboundState::AwaitingPubRec => 2,
        OutboundState::AwaitingPubComp => 3,
    }
}

pub fn outbound_state(code: u8) -> Option<OutboundState> {
    match code {
        1 => Some(OutboundState::AwaitingPubAck),
        2 => Some(OutboundState::AwaitingPubRec),
        3 => Some(OutboundState::AwaitingPubComp),
        _ => None,
    }
}

/// One queued delivery (message, delivery QoS, RETAIN, subscription ids), as the replicated
/// session store keeps it.
pub fn encode_delivery(d: &Delivery) -> Result<Vec<u8>, WireError> {
    Ok(serde_json::to_vec(&delivery(d, None)?)?)
}

pub fn decode_delivery(bytes: &[u8]) -> Result<Delivery, WireError> {
    let w: WireDelivery = serde_json::from_slice(bytes)?;
    from_wire(w)
}

fn from_wire(d: WireDelivery) -> Result<Delivery, WireError> {
    let message = decode_message(&B64.decode(d.message)?)?;
    let qos = QoS::from_u8(d.qos).unwrap_or(QoS::AtLeastOnce);
    Ok(Delivery::new(message, qos, d.retain, d.ids))
}

pub fn encode_handover(h: &Handover) -> Result<Vec<u8>, WireError> {
    let mut deliveries = Vec::with_capacity(h.inflight.len() + h.queued.len());
    for (packet_id, state, d) in &h.inflight {
        deliveries.push(delivery(d, Some((*packet_id, outbound_code(*state))))?);
    }
    for d in &h.queued {
        deliveries.push(delivery(d, None)?);
    }
    let mut subscriptions = Vec::with_capacity(h.subscriptions.len());
    for (filter, options) in &h.subscriptions {
        subscriptions.push(B64.encode(record::encode(&convert::subscription_record(
            filter, options,
        ))?));
    }
    Ok(serde_json::to_vec(&WireHandover {
        v5: h.version == Version::V5,
        expiry_interval: h.expiry_interval,
        subscriptions,
        deliveries,
        inbound_qos2: h.inbound_qos2.clone(),
    })?)
}

pub fn decode_handover(bytes: &[u8]) -> Result<Handover, WireError> {
    let w: WireHandover = serde_json::from_slice(bytes)?;
    let mut h = Handover {
        version: if w.v5 { Version::V5 } else { Version::V311 },
        expiry_interval: w.expiry_interval,
        subscriptions: Vec::with_capacity(w.subscriptions.len()),
        inflight: Vec::new(),
        queued: Vec::new(),
        inbound_qos2: w.inbound_qos2,
    };
    for s in w.subscriptions {
        let r: SubscriptionRecord = record::decode(&B64.decode(s)?)?;
        h.subscriptions.push(convert::subscription(r));
    }
    for d in w.deliveries {
        let inflight = d.inflight;
        let delivery = from_wire(d)?;
        match inflight {
            Some((packet_id, state)) if packet_id != 0 => {
                let state = outbound_state(state).unwrap_or(OutboundState::AwaitingPubComp);
                h.inflight.push((packet_id, state, delivery));
            }
            _ => h.queued.push(delivery),
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::SubscriptionOptions;

    #[test]
    fn a_handover_round_trips() {
        let message = Arc::new(Message {
            topic: Arc::from("a/b"),
            payload: bytes::Bytes::from_static(b"hello"),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: bytes::Bytes::new(),
            expires_at: None,
            stored: Default::default(),
        });
        let d = Delivery::new(message, QoS::AtLeastOnce, false, vec![7]);
        let h = Handover {
            version: Version::V5,
            expiry_interval: 60,
            subscriptions: vec![(
                "a/+".to_string(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: false,
                    subscription_identifier: Some(7),
                },
            )],
            inflight: vec![(3, OutboundState::AwaitingPubAck, d.clone())],
            queued: vec![d],
            inbound_qos2: vec![9],
        };
        let back = decode_handover(&encode_handover(&h).unwrap()).unwrap();
        assert_eq!(back.subscriptions, h.subscriptions);
        assert_eq!(back.inflight.len(), 1);
        assert_eq!(back.inflight[0].0, 3);
        assert_eq!(back.queued.len(), 1);
        assert_eq!(&back.queued[0].message.payload[..], b"hello");
        assert_eq!(back.inbound_qos2, vec![9]);
        assert_eq!(back.expiry_interval, 60);
        assert!(decode_handover(b"{").is_err());
    }

    #[test]
    fn kv_keys_round_trip() {
        for s in ["client/1", "a b.c", "日本", ""] {
            assert_eq!(from_kv_key(&kv_key(s)).as_deref(), Some(s));
        }
    }
}
