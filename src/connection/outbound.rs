//! What the client receives: deliveries pumped from the session's queue within the in-flight
//! window, topic aliases, and the resend of in-flight messages on resume.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::logsafe::LogId;
use crate::message::Delivery;
use crate::protocol::{self, Ack, Outgoing, Packet, QoS, Version};
use crate::sessions::OutboundState;

use super::outbuf::OutBuf;
use super::run::Connection;

/// Stop pulling from the queue while this much is waiting to be written: a client that does
/// not read lets its queue (bounded) fill instead of this buffer.
pub(super) const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Deliveries taken from the queue per lock.
const DRAIN_BATCH: usize = 256;
/// Bytes of topic names the outbound topic-alias table may hold per connection.
const OUTBOUND_ALIAS_BYTES: usize = 64 * 1024;

impl Connection {
    /// After a resume: unacknowledged messages go again, PUBLISH with DUP, PUBREL as PUBREL
    /// (MQTT-4.4.0-1).
    pub(super) fn resend_inflight(&mut self, out: &mut OutBuf) {
        let inflight: Vec<(u16, Delivery, OutboundState)> = self
            .lease
            .state()
            .inflight()
            .map(|m| (m.packet_id, m.delivery.clone(), m.state))
            .collect();
        for (packet_id, delivery, state) in inflight {
            match state {
                OutboundState::AwaitingPubAck | OutboundState::AwaitingPubRec => {
                    let outgoing = self.outgoing(&delivery, packet_id, true);
                    self.write_publish(&outgoing, &delivery.message.payload, out);
                }
                OutboundState::AwaitingPubComp => {
                    if let Err(reason) = self.send(&Packet::PubRel(Ack::success(packet_id)), out) {
                        tracing::error!(client_id = %LogId(&self.client_id), %reason, "PUBREL not resent");
                    }
                }
            }
        }
    }

    fn inflight_limit(&self) -> usize {
        usize::from(
            self.broker
                .config
                .limits
                .max_inflight
                .min(self.client_receive_maximum),
        )
    }

    /// Moves deliveries from the queue into `out`, within the in-flight window and the write
    /// high-water mark. Counts what it sent once per batch, not per message.
    pub(super) fn pump(&mut self, out: &mut OutBuf) {
        let mut sent = [0u64; 3];
        while out.len() < WRITE_HIGH_WATER {
            let budget = self
                .inflight_limit()
                .saturating_sub(self.lease.state().inflight_len());
            let mut batch = std::mem::take(&mut self.scratch);
            self.lease.queue().drain(DRAIN_BATCH, budget, &mut batch);
            let empty = batch.is_empty();
            for delivery in batch.drain(..) {
                if let Some(qos) = self.deliver(delivery, out) {
                    sent[qos as usize] += 1;
                }
            }
            self.scratch = batch;
            if empty {
                break;
            }
        }
        for (counter, n) in self.broker.stats.sent.iter().zip(sent) {
            if n > 0 {
                counter.increment(n);
            }
        }
    }

    /// The PUBLISH for `delivery` as it would go without a topic alias, borrowing everything
    /// from the shared message.
    fn outgoing<'a>(&self, delivery: &'a Delivery, packet_id: u16, dup: bool) -> Outgoing<'a> {
        let message = &delivery.message;
        let v5 = self.version == Version::V5;
        Outgoing {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic: &message.topic,
            packet_id,
            topic_alias: None,
            subscription_identifiers: if v5 {
                &delivery.subscription_identifiers
            } else {
                &[]
            },
            message_expiry: if v5 {
                message.remaining_expiry(Instant::now())
            } else {
                None
            },
            properties: if v5 { &message.properties } else { &[] },
            payload_len: message.payload.len(),
        }
    }

    /// The topic alias to use for `topic` (v5 §3.3.2.3.4): `(alias, known)`. A known topic
    /// goes as its alias alone; a new one gets the next free alias while any is left and the
    /// table stays under [`OUTBOUND_ALIAS_BYTES`] of topics (a client offering 65,535 aliases
    /// must not make brokk keep every long topic it ever sent).
    fn topic_alias(&mut self, topic: &Arc<str>) -> Option<(u16, bool)> {
        if self.version != Version::V5 || self.client_topic_alias_maximum == 0 {
            return None;
        }
        let maximum = usize::from(self.client_topic_alias_maximum);
        let aliases = self.aliases.get_or_insert_default();
        if let Some(alias) = aliases.outbound.get(topic) {
            return Some((*alias, true));
        }
        let entries_left = aliases.outbound.len() < maximum;
        let bytes_left = aliases.outbound_bytes + topic.len() <= OUTBOUND_ALIAS_BYTES;
        if !(entries_left && bytes_left) {
            return None;
        }
        let alias = aliases.outbound.len() as u16 + 1;
        aliases.outbound.insert(topic.clone(), alias);
        aliases.outbound_bytes += topic.len();
        Some((alias, false))
    }

    /// Appends one PUBLISH: the head encoded, the payload copied or referenced.
    fn write_publish(&self, outgoing: &Outgoing<'_>, payload: &Bytes, out: &mut OutBuf) {
        match protocol::encode_outgoing_head(outgoing, self.version, out.buf()) {
            Ok(()) => out.put_payload(payload),
            Err(error) => {
                tracing::error!(client_id = %LogId(&self.client_id), %error, "PUBLISH could not be encoded")
            }
        }
    }

    /// Encodes one delivery into `out`; the QoS it went at, or `None` if it was dropped.
    fn deliver(&mut self, delivery: Delivery, out: &mut OutBuf) -> Option<QoS> {
        if let Some((packet_id, state)) = delivery.resume {
            return Some(self.resume(packet_id, state, delivery, out));
        }
        let stats = &self.broker.stats;
        if delivery.message.is_expired(Instant::now()) {
            stats.dropped_expired.increment(1);
            self.lease.state_mut().discard(&delivery);
            return None;
        }
        // The client's Maximum Packet Size (MQTT-3.1.2-24), measured without an alias: the
        // largest form this message could take.
        if let Some(limit) = self.client_maximum_packet_size {
            let size = self.outgoing(&delivery, 1, false).len(self.version);
            if size.unwrap_or(usize::MAX) > limit as usize {
                stats.dropped_too_large.increment(1);
                self.lease.state_mut().discard(&delivery);
                return None;
            }
        }
        let packet_id = if delivery.qos == QoS::AtMostOnce {
            0
        } else {
            self.lease.state_mut().allocate_packet_id(delivery.seq)?
        };
        let alias = self.topic_alias(&delivery.message.topic);
        let mut outgoing = self.outgoing(&delivery, packet_id, false);
        if let Some((alias, known)) = alias {
            outgoing.topic_alias = Some(alias);
            if known {
                outgoing.topic = "";
            }
        }
        self.write_publish(&outgoing, &delivery.message.payload, out);
        let qos = delivery.qos;
        if qos != QoS::AtMostOnce {
            self.lease
                .state_mut()
                .push_inflight(packet_id, delivery, None);
        }
        Some(qos)
    }

    /// A delivery read back from the store where it was in flight: it goes again with the
    /// packet id it had, as PUBLISH with DUP, or as PUBREL (MQTT-4.4.0-1).
    fn resume(
        &mut self,
        packet_id: u16,
        state: OutboundState,
        delivery: Delivery,
        out: &mut OutBuf,
    ) -> QoS {
        let qos = delivery.qos;
        if state == OutboundState::AwaitingPubComp {
            if let Err(reason) = self.send(&Packet::PubRel(Ack::success(packet_id)), out) {
                tracing::error!(client_id = %LogId(&self.client_id), %reason, "PUBREL not resent");
            }
        } else {
            let outgoing = self.outgoing(&delivery, packet_id, true);
            self.write_publish(&outgoing, &delivery.message.payload, out);
        }
        self.lease
            .state_mut()
            .push_inflight(packet_id, delivery, Some(state));
        qos
    }
}
