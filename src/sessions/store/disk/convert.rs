//! Between brokk's types and the stored records. Deadlines go to disk as wall-clock unix
//! milliseconds and come back as `tokio::time::Instant`s relative to now.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::message::Message;
use crate::protocol::{self, QoS, Version, Will};
use crate::router::SubscriptionOptions;
use crate::sessions::state::OutboundState;
use crate::sessions::store::SessionRecord;

use super::super::StoreError;
use super::super::record::{self, InflightState, MessageRecord, SubscriptionRecord, WillRecord};

pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// An in-process deadline as a wall-clock time.
fn wall_clock(at: Instant) -> u64 {
    let now = Instant::now();
    let wall = if at >= now {
        SystemTime::now() + (at - now)
    } else {
        SystemTime::now() - (now - at)
    };
    unix_ms(wall)
}

/// A stored wall-clock deadline as an in-process one (a passed deadline is now).
fn instant(ms: u64) -> Instant {
    let left = from_unix_ms(ms)
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + left
}

pub fn qos(q: u8) -> QoS {
    QoS::from_u8(q).unwrap_or(QoS::AtLeastOnce)
}

pub fn message_record(m: &Message) -> MessageRecord {
    MessageRecord {
        topic: m.topic.to_string(),
        payload: m.payload.clone(),
        qos: m.qos as u8,
        retain: m.retain,
        properties: m.properties.clone(),
        expires_at_ms: m.expires_at.map(wall_clock),
    }
}

pub fn message(id: Option<u64>, r: MessageRecord) -> Arc<Message> {
    let stored = id.map(OnceLock::from).unwrap_or_default();
    Arc::new(Message {
        topic: Arc::from(r.topic.as_str()),
        payload: r.payload,
        qos: qos(r.qos),
        retain: r.retain,
        properties: r.properties,
        expires_at: r.expires_at_ms.map(instant),
        stored,
    })
}

pub fn subscription_record(filter: &str, o: &SubscriptionOptions) -> SubscriptionRecord {
    SubscriptionRecord {
        filter: filter.to_string(),
        qos: o.qos as u8,
        no_local: o.no_local,
        retain_as_published: o.retain_as_published,
        // Only used when the subscription is made; a stored one is already made.
        retain_handling: 0,
        subscription_identifier: o.subscription_identifier,
    }
}

pub fn subscription(r: SubscriptionRecord) -> (String, SubscriptionOptions) {
    let options = SubscriptionOptions {
        qos: qos(r.qos),
        no_local: r.no_local,
        retain_as_published: r.retain_as_published,
        subscription_identifier: r.subscription_identifier,
    };
    (r.filter, options)
}

pub fn inflight_state(s: OutboundState) -> InflightState {
    match s {
        OutboundState::AwaitingPubAck => InflightState::AwaitingPubAck,
        OutboundState::AwaitingPubRec => InflightState::AwaitingPubRec,
        OutboundState::AwaitingPubComp => InflightState::AwaitingPubComp,
    }
}

pub fn outbound_state(s: InflightState) -> Option<OutboundState> {
    match s {
        InflightState::AwaitingPubAck => Some(OutboundState::AwaitingPubAck),
        InflightState::AwaitingPubRec => Some(OutboundState::AwaitingPubRec),
        InflightState::AwaitingPubComp => Some(OutboundState::AwaitingPubComp),
        InflightState::Done => None,
    }
}

pub fn session_record(
    client_id: &str,
    r: &SessionRecord,
) -> Result<record::SessionRecord, StoreError> {
    let will = match &r.will {
        None => None,
        Some(w) => Some(WillRecord {
            topic: w.topic.clone(),
            payload: w.payload.clone(),
            qos: w.qos as u8,
            retain: w.retain,
            properties: protocol::encode_message_properties(&w.properties)
                .map_err(|e| StoreError::Damaged(format!("will properties: {e}")))?,
            delay_interval: w.delay_interval,
            publish_at_ms: r.will_at.map(unix_ms),
        }),
    };
    Ok(record::SessionRecord {
        client_id: client_id.to_string(),
        username: r.user.as_deref().map(str::to_string),
        protocol_version: match r.version {
            Version::V311 => 4,
            Version::V5 => 5,
        },
        expiry_interval: r.expiry_interval,
        expires_at_ms: r.expires_at.map(unix_ms),
        will,
        subscriptions: Vec::new(),
    })
}

pub fn session(r: record::SessionRecord) -> Result<SessionRecord, StoreError> {
    let will_at = r
        .will
        .as_ref()
        .and_then(|w| w.publish_at_ms)
        .map(from_unix_ms);
    let will = match r.will {
        None => None,
        Some(w) => Some(Will {
            topic: w.topic,
            payload: w.payload,
            qos: qos(w.qos),
            retain: w.retain,
            delay_interval: w.delay_interval,
            properties: protocol::decode_message_properties(w.properties)
                .map_err(|e| StoreError::Damaged(format!("will properties: {e}")))?,
        }),
    };
    Ok(SessionRecord {
        version: if r.protocol_version == 4 {
            Version::V311
        } else {
            Version::V5
        },
        expiry_interval: r.expiry_interval,
        expires_at: r.expires_at_ms.map(from_unix_ms),
        will,
        will_at,
        user: r.username.map(Arc::from),
    })
}
