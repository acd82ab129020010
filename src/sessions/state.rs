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

use super::store::{Change, SessionRecord};

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
    /// The user of the current (or last) connection.
    user: Option<Arc<str>>,
    /// Changes go to the durable store: a persistent session, and a store that persists.
    persist: bool,
    /// Changes recorded since the owner last took them.
    changes: Vec<Change>,
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
            user: None,
            persist: false,
            changes: Vec::new(),
        }
    }

    /// Whether changes to this session are recorded for the durable store.
    pub fn is_persisted(&self) -> bool {
        self.persist
    }

    pub(super) fn set_persisted(&mut self, persist: bool) {
        self.persist = persist;
    }

    pub fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }

    pub(super) fn set_user(&mut self, user: Option<Arc<str>>) {
        self.user = user;
    }

    /// Adds a change made elsewhere in the sessions module (a waiting record) to go out with
    /// this session's other changes.
    pub(super) fn push_change(&mut self, change: Change) {
        if self.persist {
            self.changes.push(change);
        }
    }

    /// The changes recorded since the last call, to submit to the store.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    fn record(&mut self, change: impl FnOnce(&SessionState) -> Change) {
        if self.persist {
            let change = change(self);
            self.changes.push(change);
        }
    }

    /// The session's stored record while its client is connected (no deadlines yet).
    pub fn stored_record(&self) -> SessionRecord {
        SessionRecord {
            version: self.version,
            expiry_interval: self.expiry_interval,
            expires_at: None,
            will: self.will.clone(),
            will_at: None,
            user: self.user.clone(),
        }
    }

    /// Records the session's own record (created, or its expiry or will changed).
    pub(super) fn record_session(&mut self) {
        self.record(|s| Change::Session {
            client_id: s.client_id.clone(),
            record: s.stored_record(),
        });
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
        if self.expiry_interval != seconds {
            self.expiry_interval = seconds;
            self.record_session();
        }
    }

    pub fn will(&self) -> Option<&Will> {
        self.will.as_ref()
    }

    pub fn set_will(&mut self, will: Option<Will>) {
        let changed = self.will.is_some() || will.is_some();
        self.will = will;
        if changed {
            self.record_session();
        }
    }

    pub fn take_will(&mut self) -> Option<Will> {
        self.will.take()
    }

    // Subscriptions. The router's index is changed beside these, by the lease.

    pub(super) fn insert_subscription(&mut self, filter: &str, options: SubscriptionOptions) {
        self.record(|s| Change::Subscribed {
            client_id: s.client_id.clone(),
            filter: filter.to_string(),
            options: options.clone(),
        });
        match self.subscriptions.get_mut(filter) {
            Some(existing) => *existing = options,
            None => {
                self.subscriptions.insert(filter.to_string(), options);
            }
        }
    }

    pub(super) fn remove_subscription(&mut self, filter: &str) -> bool {
        let existed = self.subscriptions.remove(filter).is_some();
        if existed {
            self.record(|s| Change::Unsubscribed {
                client_id: s.client_id.clone(),
                filter: filter.to_string(),
            });
        }
        existed
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

    /// The packet id for the delivery at `seq`: derived from it, so that a delivery read back
    /// after a restart goes with the id it had (a QoS 2 receiver that saw it then recognises
    /// it); the next free one if that id is still in flight. `None` when all 65,535 are in use
    /// (cannot happen while the in-flight window is below that).
    pub fn allocate_packet_id(&mut self, seq: u64) -> Option<u16> {
        let derived = ((seq.saturating_sub(1) % 65_535) + 1) as u16;
        if seq > 0 && !self.inflight.iter().any(|m| m.packet_id == derived) {
            return Some(derived);
        }
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.iter().any(|m| m.packet_id == id) {
                return Some(id);
            }
        }
        None
    }

    /// Records a QoS 1/2 message just sent with `packet_id` (in `state`: a new one awaits
    /// PUBACK or PUBREC; one read back from the store keeps the state it had).
    pub fn push_inflight(
        &mut self,
        packet_id: u16,
        delivery: Delivery,
        state: Option<OutboundState>,
    ) {
        let state = state.unwrap_or(if delivery.qos == crate::protocol::QoS::ExactlyOnce {
            OutboundState::AwaitingPubRec
        } else {
            OutboundState::AwaitingPubAck
        });
        if delivery.persisted {
            self.record(|s| Change::InFlight {
                client_id: s.client_id.clone(),
                seq: delivery.seq,
                packet_id,
                state,
            });
        }
        self.inflight.push_back(InflightOut {
            packet_id,
            delivery,
            state,
        });
    }

    /// A delivery that will not go out (expired, too large for the client): its stored entry
    /// is done.
    pub fn discard(&mut self, delivery: &Delivery) {
        if delivery.persisted {
            self.record(|s| Change::Delivered {
                client_id: s.client_id.clone(),
                seq: delivery.seq,
            });
        }
    }

    /// The in-flight messages leave memory (a persistent session's client left: they are
    /// stored, and read back when it returns). Returns their sequence numbers.
    pub(super) fn park_inflight(&mut self) -> Vec<u64> {
        let parked = self.inflight.iter().map(|m| m.delivery.seq).collect();
        self.inflight.clear();
        parked
    }

    /// Records everything this session holds as stored afresh (it came from another node,
    /// whose stored copy is gone): subscriptions, inbound QoS 2 ids, and the messages in flight
    /// under new sequence numbers from `seq` (their packet ids stay).
    pub(super) fn record_afresh(&mut self, mut seq: impl FnMut() -> u64) {
        if !self.persist {
            return;
        }
        let client_id = self.client_id.clone();
        for (filter, options) in &self.subscriptions {
            self.changes.push(Change::Subscribed {
                client_id: client_id.clone(),
                filter: filter.clone(),
                options: options.clone(),
            });
        }
        for packet_id in &self.inbound_qos2 {
            self.changes.push(Change::InboundQos2 {
                client_id: client_id.clone(),
                packet_id: *packet_id,
                pending: true,
            });
        }
        for m in self.inflight.iter_mut() {
            m.delivery.seq = seq();
            m.delivery.persisted = true;
            self.changes.push(Change::Queued {
                client_id: client_id.clone(),
                seq: m.delivery.seq,
                message: m.delivery.message.clone(),
                qos: m.delivery.qos,
                retain: m.delivery.retain,
                subscription_identifiers: m.delivery.subscription_identifiers.clone(),
            });
            self.changes.push(Change::InFlight {
                client_id: client_id.clone(),
                seq: m.delivery.seq,
                packet_id: m.packet_id,
                state: m.state,
            });
        }
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
        let (seq, persisted) = (
            self.inflight[pos].delivery.seq,
            self.inflight[pos].delivery.persisted,
        );
        let done = match (ack, state) {
            (Ack::PubAck, OutboundState::AwaitingPubAck)
            | (Ack::PubComp, OutboundState::AwaitingPubComp) => true,
            (Ack::PubRec(code), OutboundState::AwaitingPubRec | OutboundState::AwaitingPubComp) => {
                code >= 0x80
            }
            _ => return AckOutcome::WrongType,
        };
        if done {
            self.inflight.remove(pos);
            if persisted {
                self.record(|s| Change::Delivered {
                    client_id: s.client_id.clone(),
                    seq,
                });
            }
        } else if state != OutboundState::AwaitingPubComp {
            self.inflight[pos].state = OutboundState::AwaitingPubComp;
            let packet_id = self.inflight[pos].packet_id;
            if persisted {
                self.record(|s| Change::InFlight {
                    client_id: s.client_id.clone(),
                    seq,
                    packet_id,
                    state: OutboundState::AwaitingPubComp,
                });
            }
        }
        AckOutcome::Done
    }

    // Inbound QoS 2 packet ids awaiting PUBREL.

    pub fn inbound_qos2_pending(&self, packet_id: u16) -> bool {
        self.inbound_qos2.contains(&packet_id)
    }

    /// The inbound QoS 2 packet ids awaiting PUBREL (a session moving to another node).
    pub(super) fn inbound_qos2_ids(&self) -> Vec<u16> {
        self.inbound_qos2.iter().copied().collect()
    }

    pub fn inbound_qos2_len(&self) -> usize {
        self.inbound_qos2.len()
    }

    pub fn insert_inbound_qos2(&mut self, packet_id: u16) {
        if self.inbound_qos2.insert(packet_id) {
            self.record(|s| Change::InboundQos2 {
                client_id: s.client_id.clone(),
                packet_id,
                pending: true,
            });
        }
    }

    /// A PUBREL arrived: whether the id was pending.
    pub fn release_inbound_qos2(&mut self, packet_id: u16) -> bool {
        let found = self.inbound_qos2.remove(&packet_id);
        if found {
            self.record(|s| Change::InboundQos2 {
                client_id: s.client_id.clone(),
                packet_id,
                pending: false,
            });
        }
        found
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
        Delivery::new(message, qos, false, vec![])
    }

    #[test]
    fn packet_ids_wrap_and_skip_those_in_flight() {
        let mut s = SessionState::new(Arc::from("c"), Version::V5);
        assert_eq!(s.allocate_packet_id(1), Some(1));
        assert_eq!(s.allocate_packet_id(65_535), Some(u16::MAX));
        assert_eq!(s.allocate_packet_id(65_536), Some(1), "derived ids wrap");
        s.push_inflight(2, delivery(QoS::AtLeastOnce), None);
        s.next_packet_id = 2;
        assert_eq!(
            s.allocate_packet_id(2),
            Some(3),
            "in use: the next free one"
        );
    }

    #[test]
    fn acknowledgements_follow_the_qos_flow() {
        let mut s = SessionState::new(Arc::from("c"), Version::V5);
        s.push_inflight(1, delivery(QoS::AtLeastOnce), None);
        s.push_inflight(2, delivery(QoS::ExactlyOnce), None);
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
        s.push_inflight(3, delivery(QoS::ExactlyOnce), None);
        assert_eq!(s.acknowledge(3, Ack::PubRec(0x80)), AckOutcome::Done);
        assert_eq!(s.inflight_len(), 0, "a failing PUBREC ends the exchange");
    }
}
