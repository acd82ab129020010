//! A published application message as the broker routes it: shared (`Arc`) between every
//! subscriber's queue, so fan-out copies a pointer, not the payload.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::protocol::{EncodeError, QoS, Will};

#[derive(Debug)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// The QoS the publisher used; a delivery gets min(this, granted).
    pub qos: QoS,
    /// The publisher's RETAIN flag (for Retain As Published).
    pub retain: bool,
    /// The v5 properties passed through, encoded once (`encode_passthrough_properties`), so
    /// each delivery copies bytes instead of cloning parsed properties. Message Expiry is not
    /// among them: it is written per delivery from `expires_at`, so the subscriber sees the
    /// time left (MQTT-3.3.2-6).
    pub properties: Bytes,
    pub expires_at: Option<Instant>,
    /// Its id in a durable store, given when it is first stored (a message stored for many
    /// sessions is stored once).
    pub stored: OnceLock<u64>,
}

/// What a queued message is charged against a queue's byte limit beyond its payload, topic
/// and properties: the delivery record and the share of the message's own bookkeeping.
const QUEUE_OVERHEAD: usize = 96;

impl Message {
    /// The bytes this message counts for in a queue (`limits.max_queue_bytes`).
    pub fn queue_cost(&self) -> usize {
        self.payload.len() + self.topic.len() + self.properties.len() + QUEUE_OVERHEAD
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whole seconds left before expiry (at least 1 while not expired), for the outbound
    /// Message Expiry Interval.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            u32::try_from(left.as_secs().max(1)).unwrap_or(u32::MAX)
        })
    }
}

/// One message on its way to one subscriber.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(publish QoS, granted QoS).
    pub qos: QoS,
    /// The RETAIN flag to send: set for retained messages sent on subscribe, or when the
    /// subscription asked for Retain As Published.
    pub retain: bool,
    pub subscription_identifiers: Vec<u32>,
    /// Its place in the session's queue (given by the queue).
    pub seq: u64,
    /// Whether its queue entry is in the durable store (a QoS 1/2 delivery to a persistent
    /// session): its acknowledgement is recorded there too.
    pub persisted: bool,
    /// Read back from the store where it was in flight: resent with this packet id (PUBLISH
    /// with DUP, or PUBREL) instead of sent anew.
    pub resume: Option<(u16, crate::sessions::OutboundState)>,
}

impl Delivery {
    /// A delivery of `message` at `qos`, not yet queued.
    pub fn new(
        message: Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_identifiers: Vec<u32>,
    ) -> Delivery {
        Delivery {
            message,
            qos,
            retain,
            subscription_identifiers,
            seq: 0,
            persisted: false,
            resume: None,
        }
    }
}

/// The message a will becomes when it is published (its expiry counted from now).
pub fn from_will(will: Will) -> Result<Arc<Message>, EncodeError> {
    let properties = crate::protocol::encode_passthrough_properties(&will.properties)?;
    let expires_at = will
        .properties
        .message_expiry_interval
        .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
    Ok(Arc::new(Message {
        topic: Arc::from(will.topic.as_str()),
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties,
        expires_at,
        stored: OnceLock::new(),
    }))
}
