//! What the client sends: every packet after CONNECT, handled in the order it arrived.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use crate::close::{CloseReason, InvalidKind};
use crate::logsafe::LogId;
use crate::message::{Delivery, Message};
use crate::protocol::{
    self, Ack, Disconnect, Packet, Publish, QoS, RetainHandling, SubAck, Subscribe, UnsubAck,
    Unsubscribe, Version,
};
use crate::router::{self, SubscriptionOptions, TopicError};
use crate::sessions::{self, AckOutcome, Offer};

use super::connect::INBOUND_TOPIC_ALIAS_MAX;
use super::outbuf::OutBuf;
use super::run::Connection;
use super::{Close, decode_close, own_payload};

const PROTOCOL_ERROR: CloseReason = CloseReason::InvalidInboundMessage(InvalidKind::Protocol);
const MALFORMED: CloseReason = CloseReason::InvalidInboundMessage(InvalidKind::Malformed);

impl Connection {
    /// Decodes every whole packet in `rbuf` and handles it; routes the publishes together.
    pub(super) fn handle_input(
        &mut self,
        rbuf: &mut BytesMut,
        out: &mut OutBuf,
        max: usize,
    ) -> Result<(), Close> {
        let mut result = Ok(());
        loop {
            match protocol::decode(rbuf, Some(self.version), max) {
                Ok(Some(packet)) => {
                    self.last_inbound = Instant::now();
                    // Publishes are routed in batches (one index lock per read), but a packet
                    // that changes subscriptions must see the publishes before it routed
                    // first: effects happen in the order of the packets.
                    if matches!(packet, Packet::Subscribe(_) | Packet::Unsubscribe(_)) {
                        self.route_batch();
                    }
                    if let Err(reason) = self.handle_packet(packet, out) {
                        result = Err(reason.into());
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    result = Err(decode_close(&error));
                    break;
                }
            }
        }
        // Publishes accepted before a bad packet are still routed: their acks may be out.
        let received = std::mem::take(&mut self.received);
        for (counter, n) in self.broker.stats.received.iter().zip(received) {
            if n > 0 {
                counter.increment(n);
            }
        }
        self.route_batch();
        self.lease.update_counters();
        result
    }

    fn route_batch(&mut self) {
        if !self.batch.is_empty() {
            self.lease.publish(&self.batch);
            self.batch.clear();
        }
    }

    pub(super) fn send(&self, packet: &Packet, out: &mut OutBuf) -> Result<(), CloseReason> {
        protocol::encode(packet, self.version, out.buf()).map_err(|error| {
            tracing::error!(client_id = %LogId(&self.client_id), %error, "outbound packet could not be encoded");
            CloseReason::InternalError
        })
    }

    fn handle_packet(&mut self, packet: Packet, out: &mut OutBuf) -> Result<(), CloseReason> {
        match packet {
            Packet::PingReq => self.send(&Packet::PingResp, out),
            Packet::Publish(publish) => self.handle_publish(publish, out),
            Packet::PubAck(ack) => self.acknowledged(ack.packet_id, sessions::Ack::PubAck),
            Packet::PubRec(ack) => {
                let outcome = self
                    .lease
                    .state_mut()
                    .acknowledge(ack.packet_id, sessions::Ack::PubRec(ack.reason_code));
                match outcome {
                    AckOutcome::Done if ack.reason_code >= 0x80 => Ok(()),
                    AckOutcome::Done => {
                        self.send(&Packet::PubRel(Ack::success(ack.packet_id)), out)
                    }
                    // MQTT 5.0 §3.6.2.1: 0x92 Packet Identifier not found.
                    AckOutcome::Unknown => {
                        self.send(&Packet::PubRel(not_found(ack.packet_id)), out)
                    }
                    AckOutcome::WrongType => Err(PROTOCOL_ERROR),
                }
            }
            Packet::PubRel(ack) => {
                let found = self.lease.state_mut().release_inbound_qos2(ack.packet_id);
                let answer = if found {
                    Ack::success(ack.packet_id)
                } else {
                    not_found(ack.packet_id)
                };
                self.send(&Packet::PubComp(answer), out)
            }
            Packet::PubComp(ack) => self.acknowledged(ack.packet_id, sessions::Ack::PubComp),
            Packet::Subscribe(subscribe) => self.handle_subscribe(subscribe, out),
            Packet::Unsubscribe(unsubscribe) => self.handle_unsubscribe(unsubscribe, out),
            Packet::Disconnect(disconnect) => self.handle_disconnect(disconnect),
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp
            | Packet::Auth(_) => Err(PROTOCOL_ERROR),
        }
    }

    /// A PUBACK or PUBCOMP. An unknown packet id is let pass (a late duplicate); the wrong
    /// acknowledgement for a message's QoS flow is a protocol violation (MQTT-4.8.0-1; v5
    /// Protocol Error 0x82).
    fn acknowledged(&mut self, packet_id: u16, ack: sessions::Ack) -> Result<(), CloseReason> {
        match self.lease.state_mut().acknowledge(packet_id, ack) {
            AckOutcome::Done | AckOutcome::Unknown => Ok(()),
            AckOutcome::WrongType => Err(PROTOCOL_ERROR),
        }
    }

    /// The topic a PUBLISH is for, through topic aliases (v5 §3.3.2.3.4).
    fn inbound_topic(&mut self, publish: &Publish) -> Result<Arc<str>, CloseReason> {
        let Some(alias) = publish.topic_alias else {
            return Ok(Arc::from(publish.topic.as_str()));
        };
        if alias == 0 || alias > INBOUND_TOPIC_ALIAS_MAX {
            return Err(CloseReason::InvalidInboundMessage(InvalidKind::TopicAlias));
        }
        let aliases = self.aliases.get_or_insert_default();
        if publish.topic.is_empty() {
            return aliases.inbound.get(&alias).cloned().ok_or(PROTOCOL_ERROR);
        }
        let topic: Arc<str> = Arc::from(publish.topic.as_str());
        aliases.inbound.insert(alias, topic.clone());
        Ok(topic)
    }

    fn handle_publish(
        &mut self,
        mut publish: Publish,
        out: &mut OutBuf,
    ) -> Result<(), CloseReason> {
        let topic = self.inbound_topic(&publish)?;
        if router::validate_topic_name(&topic).is_err()
            || router::levels(&topic) > self.broker.config.limits.max_topic_levels
        {
            return Err(CloseReason::InvalidInboundMessage(InvalidKind::TopicName));
        }
        self.received[publish.qos as usize] += 1;
        if !self.is_duplicate(&publish)? {
            let expires_at = publish
                .properties
                .message_expiry_interval
                .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
            let properties = protocol::encode_passthrough_properties(&publish.properties)
                .map_err(|error| {
                    tracing::error!(client_id = %LogId(&self.client_id), %error, "PUBLISH properties could not be re-encoded");
                    CloseReason::InternalError
                })?;
            self.batch.push(Arc::new(Message {
                topic,
                payload: own_payload(std::mem::take(&mut publish.payload)),
                qos: publish.qos,
                retain: publish.retain,
                properties,
                expires_at,
                stored: std::sync::OnceLock::new(),
            }));
        }
        match publish.qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => self.send(&Packet::PubAck(Ack::success(publish.packet_id)), out),
            QoS::ExactlyOnce => self.send(&Packet::PubRec(Ack::success(publish.packet_id)), out),
        }
    }

    /// A QoS 2 PUBLISH whose packet id awaits PUBREL is a resend: acknowledged again, not
    /// routed again (exactly once). New ids are bounded by Receive Maximum (0x93).
    fn is_duplicate(&mut self, publish: &Publish) -> Result<bool, CloseReason> {
        if publish.qos != QoS::ExactlyOnce {
            return Ok(false);
        }
        let state = self.lease.state_mut();
        if state.inbound_qos2_pending(publish.packet_id) {
            return Ok(true);
        }
        if state.inbound_qos2_len() >= usize::from(self.broker.config.limits.receive_maximum) {
            return Err(CloseReason::InvalidInboundMessage(
                InvalidKind::ReceiveMaximum,
            ));
        }
        state.insert_inbound_qos2(publish.packet_id);
        Ok(false)
    }

    /// A filter's SUBACK code when it cannot be granted, or `None` when it can. A malformed
    /// filter (empty, `#` not last, `+` not alone) makes the packet malformed (MQTT-4.7.1-1,
    /// 4.7.3-1); one that is well formed but deeper than `limits.max_topic_levels`, or a bad
    /// shared-subscription name, gets 0x8F Topic Filter invalid.
    fn filter_refusal(&self, filter: &str) -> Result<Option<u8>, CloseReason> {
        let refused = |v5_code: u8| {
            if self.version == Version::V5 {
                v5_code
            } else {
                0x80
            }
        };
        match router::parse_filter(filter) {
            Ok(parsed)
                if router::levels(parsed.filter) <= self.broker.config.limits.max_topic_levels =>
            {
                Ok(None)
            }
            Ok(_) | Err(TopicError::Shared(_)) => Ok(Some(refused(0x8F))),
            Err(_) => Err(MALFORMED),
        }
    }

    fn handle_subscribe(
        &mut self,
        subscribe: Subscribe,
        out: &mut OutBuf,
    ) -> Result<(), CloseReason> {
        let mut reason_codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained_for: Vec<(String, QoS)> = Vec::new();
        let max_subscriptions = self.broker.config.limits.max_subscriptions_per_client;
        for request in &subscribe.filters {
            if let Some(code) = self.filter_refusal(&request.filter)? {
                reason_codes.push(code);
                continue;
            }
            let shared = request.filter.starts_with("$share/");
            if shared && request.no_local {
                // MQTT-3.8.3-4: No Local on a shared subscription is a Protocol Error.
                return Err(PROTOCOL_ERROR);
            }
            let state = self.lease.state();
            if !state.has_subscription(&request.filter)
                && state.subscription_count() >= max_subscriptions
            {
                // 0x97 Quota exceeded (limits.max_subscriptions_per_client).
                reason_codes.push(if self.version == Version::V5 {
                    0x97
                } else {
                    0x80
                });
                continue;
            }
            let options = SubscriptionOptions {
                qos: request.qos,
                no_local: request.no_local,
                retain_as_published: request.retain_as_published,
                subscription_identifier: subscribe.subscription_identifier,
            };
            let existed = self.lease.subscribe(&request.filter, options);
            reason_codes.push(request.qos as u8);
            // Retained messages are not sent for shared subscriptions (MQTT 5.0 §4.8.2).
            let send_retained = !shared
                && match request.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            // One SUBSCRIBE naming a filter twice replaces one subscription: its retained
            // messages go once, with the last options.
            retained_for.retain(|(f, _)| *f != request.filter);
            if send_retained {
                retained_for.push((request.filter.clone(), request.qos));
            }
        }
        let suback = SubAck {
            packet_id: subscribe.packet_id,
            reason_codes,
            reason_string: None,
        };
        self.send(&Packet::SubAck(suback), out)?;
        self.queue_retained(retained_for, subscribe.subscription_identifier);
        Ok(())
    }

    /// Retained messages for new subscriptions go through the session's queue, after the
    /// SUBACK and behind what is already queued, so the queue's limits apply: a SUBSCRIBE
    /// matching more than the queue holds meets `queue_full_policy` like any other burst.
    fn queue_retained(&mut self, filters: Vec<(String, QoS)>, id: Option<u32>) {
        if filters.is_empty() {
            return;
        }
        // One more than the queue holds: enough to meet the policy (an overflow under
        // `disconnect`), never the whole retained store in memory at once.
        let capacity = self.broker.config.limits.max_queue_depth + 1;
        let routing = self.lease.sessions().routing().clone();
        let retained = routing.retained();
        let mut messages = Vec::new();
        let mut dropped = 0;
        for (filter, qos) in filters {
            messages.clear();
            if retained.matching_up_to(&filter, capacity, &mut messages) {
                // More match than the queue can ever hold at once: those beyond are dropped
                // by the policy (or the overflow closes the session first).
                dropped += retained.count_matching(&filter) - messages.len();
            }
            for message in messages.drain(..) {
                // MQTT-3.3.1-8: retained messages sent on subscribe keep RETAIN 1.
                let qos = message.qos.min(qos);
                let ids: Vec<u32> = id.into_iter().collect();
                let delivery = Delivery::new(message.clone(), qos, true, ids.clone());
                match self.lease.queue().offer(delivery) {
                    Offer::Queued { seq, stored: true } => {
                        let mut stored = Delivery::new(message, qos, true, ids);
                        stored.seq = seq;
                        stored.persisted = true;
                        self.lease.record_queued(&stored);
                    }
                    Offer::Queued { .. } | Offer::NotQueuedOffline => {}
                    Offer::DroppedQueueFull(n) => dropped += n,
                    // The connection closes with message_queue_limit_reached.
                    Offer::Overflowed | Offer::Closed => return,
                }
            }
        }
        if dropped > 0 {
            self.broker
                .stats
                .dropped_queue_full
                .increment(dropped as u64);
        }
    }

    fn handle_unsubscribe(
        &mut self,
        unsubscribe: Unsubscribe,
        out: &mut OutBuf,
    ) -> Result<(), CloseReason> {
        let mut reason_codes = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            if let Err(error) = router::parse_filter(filter)
                && !matches!(error, TopicError::Shared(_))
            {
                return Err(MALFORMED);
            }
            let existed = self.lease.unsubscribe(filter);
            reason_codes.push(if existed { 0x00 } else { 0x11 });
        }
        self.send(
            &Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                reason_codes,
            }),
            out,
        )
    }

    fn handle_disconnect(&mut self, disconnect: Disconnect) -> Result<(), CloseReason> {
        if let Some(expiry) = disconnect.session_expiry_interval {
            let state = self.lease.state_mut();
            // MQTT-3.14.2-2: a session that was to end with its connection cannot be given
            // an expiry at DISCONNECT.
            if state.expiry_interval() == 0 && expiry > 0 {
                return Err(PROTOCOL_ERROR);
            }
            state.set_expiry_interval(expiry.min(self.broker.max_session_expiry()));
        }
        self.will_on_close = disconnect.reason_code == 0x04;
        Err(CloseReason::ClosedByClient)
    }
}

/// MQTT 5.0 §3.6.2.1 / 3.7.2.1: 0x92 Packet Identifier not found.
fn not_found(packet_id: u16) -> Ack {
    Ack {
        packet_id,
        reason_code: 0x92,
        reason_string: None,
    }
}
