//! A session as plain data: what MQTT says survives a connection (subscriptions, messages in
//! flight both ways, the will and the expiry). No sockets, no locks, no tasks: it is owned by
//! one connection at a time and handed through the registry between connections, so it can
//! later be persisted or moved to another node as it is.

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

#[derive(Clone, Debug)]
pub struct Session {
    pub client_id: Arc<str>,
    /// The protocol level of the connection that last owned the session.
    pub version: Version,
    /// Filter (as subscribed, `$share/...` included) -> options.
    pub subscriptions: HashMap<String, SubscriptionOptions>,
    /// Outbound QoS 1/2 messages not yet acknowledged, in the order they were sent
    /// (resent in that order, with DUP, when the session resumes). Bounded by the in-flight
    /// window, so a linear search by packet id is cheap.
    pub inflight_out: VecDeque<InflightOut>,
    next_packet_id: u16,
    /// Inbound QoS 2 packet ids that got PUBREC and wait for PUBREL: a PUBLISH with one of
    /// these ids is a duplicate and is not routed again (exactly once).
    pub inbound_qos2: HashSet<u16>,
    /// Seconds the session outlives its connection (0 = ends with it).
    pub expiry_interval: u32,
    /// The will of the current (or last) connection.
    pub will: Option<Will>,
}

impl Session {
    pub fn new(client_id: Arc<str>, version: Version) -> Session {
        Session {
            client_id,
            version,
            subscriptions: HashMap::new(),
            inflight_out: VecDeque::new(),
            next_packet_id: 1,
            inbound_qos2: HashSet::new(),
            expiry_interval: 0,
            will: None,
        }
    }

    /// The next free outbound packet id (1..=65535, skipping ids still in flight), or `None`
    /// when all are in use (cannot happen while the in-flight window is below 65,535).
    pub fn allocate_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight_out.iter().any(|m| m.packet_id == id) {
                return Some(id);
            }
        }
        None
    }

    pub fn inflight_position(&self, packet_id: u16) -> Option<usize> {
        self.inflight_out
            .iter()
            .position(|m| m.packet_id == packet_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    #[test]
    fn packet_ids_wrap_and_skip_those_in_flight() {
        let mut s = Session::new(Arc::from("c"), Version::V5);
        s.next_packet_id = u16::MAX;
        assert_eq!(s.allocate_packet_id(), Some(u16::MAX));
        assert_eq!(s.allocate_packet_id(), Some(1));
        let message = Arc::new(crate::message::Message {
            topic: Arc::from("t"),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
        });
        s.inflight_out.push_back(InflightOut {
            packet_id: 2,
            delivery: Delivery {
                message,
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_identifiers: vec![],
            },
            state: OutboundState::AwaitingPubAck,
        });
        assert_eq!(s.allocate_packet_id(), Some(3));
    }
}
