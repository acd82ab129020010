//! A session's state: what MQTT says survives a connection (subscriptions, messages in flight
//! both ways, the will and the expiry). No sockets, no locks, no tasks: it is owned by one
//! connection at a time (through its [`super::Lease`]) or by the session table while the session
//! waits. Its fields are private: every change goes through a method here, the one place a
//! store can learn of it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::message::Delivery;
use crate::protocol::{Version, Will};
use crate::router::SubscriptionOptions;

/// Where an outbound QoS 1/2 message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundState {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitingPubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitingPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitingPubComp,
}

#[derive(Clone, Debug)]
pub struct InflightOut {
    pub packet_id: u16,
    pub delivery: Delivery,
    pub state: OutboundState,
}

/// An acknowledgement a client sent for an outbound message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    PubAck,
    /// With the v5 reason code (>= 0x80: the message is not going further).
    PubRec(u8),
    PubComp,
}

/// What an acknowledgement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// It moved or completed a message in flight (PUBREC: the PUBREL is owed).
    Done,
    /// No message in flight has that packet id.
    Unknown,
    /// The packet id is in flight, but this is not the acknowledgement its state expects
    /// (PUBREC for QoS 1, PUBACK for QoS 2, PUBCOMP before PUBREC): a protocol violation.
    WrongType,
}

#[derive(Clone, Debug)]
pub struct SessionState {
    client_id: Arc<str>,
    /// The protocol level of the connection that last owned the session.
    version: Version,
    /// Filter (as subscribed, `$share/...` included) -> options.
    subscriptions: HashMap<String, SubscriptionOptions>,
    /// Outbound QoS 1/2 messages not yet acknowledged, in the order they were sent (resent in
    /// that order, with DUP, when the session resumes). Bounded by the in-flight window, so a
    /// linear search by packet id is cheap.
    inflight: VecDeque<InflightOut>,
    next_packet_id: u16,
    /// Inbound QoS 2 packet ids that got PUBREC and wait for PUBREL: a PUBLISH with one of
    /// these ids is a duplicate and is not routed again (exactly once).
    inbound_qos2: HashSet<u16>,
    /// Seconds the session outlives its connection (0 = ends with it).
    expiry_interval: u32,
    /// The will of the current (or last) connection.
    will: Option<Will>,
}

impl SessionState {
    pub fn new(client_id: Arc<str>, version: Version) -> SessionState {
        SessionState {
            client_id,
            version,
            subscriptions: HashMap::new(),
            inflight: VecDeque::new(),
            next_packet_id: 1,
            inbound_qos2: HashSet::new(),
            expiry_interval: 0,
            will: None,
        }
    }

    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub(super) fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    pub fn expiry_interval(&self) -> u32 {
        self.expiry_interval
    }

    pub fn set_expiry_interval(&mut self, seconds: u32) {
        self.expiry_interval = seconds;
    }

    pub fn will(&self) -> Option<&Will> {
        self.will.as_ref()
    }

    pub fn set_will(&mut self, will: Option<Will>) {
        self.will = will;
    }

    pub fn take_will(&mut self) -> Option<Will> {
        self.will.take()
    }

    // Subscriptions. The router's index is changed beside these, by the lease.

    pub(super) fn insert_subscription(&mut self, filter: &str, options: SubscriptionOptions) {
        match self.subscriptions.get_mut(filter) {
            Some(existing) => *existing = options,
            None => {
                self.subscriptions.insert(filter.to_string(), options);
            }
        }
    }

    pub(super) fn remove_subscription(&mut self, filter: &str) -> bool {
        self.subscriptions.remove(filter).is_some()
    }

    pub fn has_subscription(&self, filter: &str) -> bool {
        self.subscriptions.contains_key(filter)
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = (&str, &SubscriptionOptions)> {
        self.subscriptions.iter().map(|(f, o)| (f.as_str(), o))
    }

    // Outbound messages in flight.

    /// The next free outbound packet id (1..=65535, skipping ids still in flight), or `None`
    /// when all are in use (cannot happen while the in-flight window is below 65,535).
    pub fn allocate_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.iter().any(|m| m.packet_id == id) {
                return Some(id);
            }
        }
        None
    }

    /// Records a QoS 1/2 message just sent with `packet_id`.
    pub fn push_inflight(&mut self, packet_id: u16, delivery: Delivery) {
        let state = if delivery.qos == crate::protocol::QoS::ExactlyOnce {
            OutboundState::AwaitingPubRec
        } else {
            OutboundState::AwaitingPubAck
        };
        self.inflight.push_back(InflightOut {
            packet_id,
            delivery,
            state,
        });
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    pub fn inflight(&self) -> impl Iterator<Item = &InflightOut> {
        self.inflight.iter()
    }

    /// Applies a client's acknowledgement of `packet_id`.
    pub fn acknowledge(&mut self, packet_id: u16, ack: Ack) -> AckOutcome {
        let Some(pos) = self.inflight.iter().position(|m| m.packet_id == packet_id) else {
            return AckOutcome::Unknown;
        };
        let state = self.inflight[pos].state;
        match (ack, state) {
            (Ack::PubAck, OutboundState::AwaitingPubAck)
            | (Ack::PubComp, OutboundState::AwaitingPubComp) => {
                self.inflight.remove(pos);
                AckOutcome::Done
            }
            (Ack::PubRec(code), OutboundState::AwaitingPubRec | OutboundState::AwaitingPubComp) => {
                if code >= 0x80 {
                    self.inflight.remove(pos);
                } else {
                    self.inflight[pos].state = OutboundState::AwaitingPubComp;
                }
                AckOutcome::Done
            }
            _ => AckOutcome::WrongType,
        }
    }

    // Inbound QoS 2 packet ids awaiting PUBREL.

    pub fn inbound_qos2_pending(&self, packet_id: u16) -> bool {
        self.inbound_qos2.contains(&packet_id)
    }

    pub fn inbound_qos2_len(&self) -> usize {
        self.inbound_qos2.len()
    }

    pub fn insert_inbound_qos2(&mut self, packet_id: u16) {
        self.inbound_qos2.insert(packet_id);
    }

    /// A PUBREL arrived: whether the id was pending.
    pub fn release_inbound_qos2(&mut self, packet_id: u16) -> bool {
        self.inbound_qos2.remove(&packet_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    fn delivery(qos: QoS) -> Delivery {
        let message = Arc::new(crate::message::Message {
            topic: Arc::from("t"),
            payload: bytes::Bytes::new(),
            qos,
            retain: false,
            properties: bytes::Bytes::new(),
            expires_at: None,
            stored: std::sync::OnceLock::new(),
        });
        Delivery {
            message,
            qos,
            retain: false,
            subscription_identifiers: vec![],
        }
    }

    #[test]
    fn packet_ids_wrap_and_skip_those_in_flight() {
        let mut s = SessionState::new(Arc::from("c"), Version::V5);
        s.next_packet_id = u16::MAX;
        assert_eq!(s.allocate_packet_id(), Some(u16::MAX));
        assert_eq!(s.allocate_packet_id(), Some(1));
        s.push_inflight(2, delivery(QoS::AtLeastOnce));
        assert_eq!(s.allocate_packet_id(), Some(3));
    }

    #[test]
    fn acknowledgements_follow_the_qos_flow() {
        let mut s = SessionState::new(Arc::from("c"), Version::V5);
        s.push_inflight(1, delivery(QoS::AtLeastOnce));
        s.push_inflight(2, delivery(QoS::ExactlyOnce));
        assert_eq!(s.acknowledge(1, Ack::PubRec(0)), AckOutcome::WrongType);
        assert_eq!(s.acknowledge(1, Ack::PubComp), AckOutcome::WrongType);
        assert_eq!(s.acknowledge(1, Ack::PubAck), AckOutcome::Done);
        assert_eq!(s.acknowledge(1, Ack::PubAck), AckOutcome::Unknown);
        assert_eq!(s.acknowledge(2, Ack::PubAck), AckOutcome::WrongType);
        assert_eq!(s.acknowledge(2, Ack::PubComp), AckOutcome::WrongType);
        assert_eq!(s.acknowledge(2, Ack::PubRec(0)), AckOutcome::Done);
        // A repeated PUBREC is answered with PUBREL again, not refused.
        assert_eq!(s.acknowledge(2, Ack::PubRec(0)), AckOutcome::Done);
        assert_eq!(s.acknowledge(2, Ack::PubComp), AckOutcome::Done);
        assert_eq!(s.inflight_len(), 0);
        s.push_inflight(3, delivery(QoS::ExactlyOnce));
        assert_eq!(s.acknowledge(3, Ack::PubRec(0x80)), AckOutcome::Done);
        assert_eq!(s.inflight_len(), 0, "a failing PUBREC ends the exchange");
    }
}
