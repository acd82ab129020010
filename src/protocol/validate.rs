//! Semantic checks the codec crate leaves out, and the strict MQTT 5.0 property codec.
//!
//! `mqttbytes-ng`'s v5 property reader keeps the last value of a duplicated single-use
//! property (the spec makes a duplicate a Protocol Error), accepts Subscription Identifier 0,
//! accepts properties that are not allowed in the packet at hand, and does not notice when a
//! property runs past the announced property length (parsing silently desynchronises). Every
//! v5 packet carries a property block, so brokk parses and writes property blocks here, once,
//! for all v5 packets.

use bytes::{BufMut, Bytes, BytesMut};

use super::framing::{
    Reader, check_len, malformed, protocol, put_binary, put_string, put_varint, varint_len,
};
use super::{DecodeError, EncodeError, MessageProperties, UserProperties};

/// Checks a PUBLISH (or will) topic name: no wildcards (MQTT-3.3.2-2). Emptiness is checked
/// by the caller because it depends on version and topic alias.
pub(crate) fn check_topic_name(topic: &str) -> Result<(), DecodeError> {
    if topic.contains(['+', '#']) {
        return Err(DecodeError::TopicNameInvalid(format!(
            "wildcard in topic name {topic:?}"
        )));
    }
    Ok(())
}

/// Which packet a property block belongs to; decides which identifiers are allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ctx {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// Every v5 property, as parsed from (or to be written into) one property block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Props {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: UserProperties,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifiers_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

fn allowed(id: u8, ctx: Ctx) -> bool {
    use Ctx::*;
    match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(ctx, Publish | Will),
        0x0B => matches!(ctx, Publish | Subscribe),
        0x11 => matches!(ctx, Connect | ConnAck | Disconnect),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => ctx == ConnAck,
        0x15 | 0x16 => matches!(ctx, Connect | ConnAck | Auth),
        0x17 | 0x19 => ctx == Connect,
        0x18 => ctx == Will,
        0x1C => matches!(ctx, ConnAck | Disconnect),
        0x1F => matches!(ctx, ConnAck | Ack | SubAck | UnsubAck | Disconnect | Auth),
        0x21 | 0x22 | 0x27 => matches!(ctx, Connect | ConnAck),
        0x23 => ctx == Publish,
        0x26 => true,
        _ => false,
    }
}

/// Stores a single-use property, refusing a second occurrence (Protocol Error per v5 2.2.2.2).
fn once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol(format!(
            "{name} property included more than once"
        )));
    }
    *slot = Some(value);
    Ok(())
}

fn boolean(r: &mut Reader, name: &str) -> Result<u8, DecodeError> {
    let v = r.u8()?;
    if v > 1 {
        return Err(DecodeError::Protocol(format!(
            "{name} must be 0 or 1, got {v}"
        )));
    }
    Ok(v)
}

impl Props {
    /// Reads a property block (its length prefix included) for a packet of kind `ctx`.
    pub fn read(r: &mut Reader, ctx: Ctx) -> Result<Props, DecodeError> {
        let len = r.varint()? as usize;
        let mut r = r.sub(len)?;
        let mut p = Props::default();
        while !r.is_empty() {
            let id = r.varint()?;
            let id = u8::try_from(id).map_err(|_| malformed("unknown property identifier"))?;
            if !allowed(id, ctx) {
                return Err(DecodeError::Malformed(format!(
                    "property 0x{id:02X} not valid in this packet"
                )));
            }
            match id {
                0x01 => once(
                    &mut p.payload_format_indicator,
                    boolean(&mut r, "Payload Format Indicator")?,
                    "Payload Format Indicator",
                )?,
                0x02 => once(
                    &mut p.message_expiry_interval,
                    r.u32()?,
                    "Message Expiry Interval",
                )?,
                0x03 => once(&mut p.content_type, r.string()?, "Content Type")?,
                0x08 => {
                    let topic = r.string()?;
                    // A Response Topic is a topic name: wildcards are a Protocol Error (3.3.2.3.5).
                    if topic.contains(['+', '#']) {
                        return Err(protocol("wildcard in Response Topic"));
                    }
                    once(&mut p.response_topic, topic, "Response Topic")?
                }
                0x09 => once(&mut p.correlation_data, r.binary()?, "Correlation Data")?,
                0x0B => {
                    let id = r.varint()?;
                    if id == 0 {
                        return Err(protocol("Subscription Identifier 0"));
                    }
                    if ctx == Ctx::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(protocol("Subscription Identifier included more than once"));
                    }
                    p.subscription_identifiers.push(id);
                }
                0x11 => once(
                    &mut p.session_expiry_interval,
                    r.u32()?,
                    "Session Expiry Interval",
                )?,
                0x12 => once(
                    &mut p.assigned_client_identifier,
                    r.string()?,
                    "Assigned Client Identifier",
                )?,
                0x13 => once(&mut p.server_keep_alive, r.u16()?, "Server Keep Alive")?,
                0x15 => once(
                    &mut p.authentication_method,
                    r.string()?,
                    "Authentication Method",
                )?,
                0x16 => once(
                    &mut p.authentication_data,
                    r.binary()?,
                    "Authentication Data",
                )?,
                0x17 => once(
                    &mut p.request_problem_information,
                    boolean(&mut r, "Request Problem Information")?,
                    "Request Problem Information",
                )?,
                0x18 => once(&mut p.will_delay_interval, r.u32()?, "Will Delay Interval")?,
                0x19 => once(
                    &mut p.request_response_information,
                    boolean(&mut r, "Request Response Information")?,
                    "Request Response Information",
                )?,
                0x1A => once(
                    &mut p.response_information,
                    r.string()?,
                    "Response Information",
                )?,
                0x1C => once(&mut p.server_reference, r.string()?, "Server Reference")?,
                0x1F => once(&mut p.reason_string, r.string()?, "Reason String")?,
                0x21 => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(protocol("Receive Maximum 0"));
                    }
                    once(&mut p.receive_maximum, v, "Receive Maximum")?
                }
                0x22 => once(&mut p.topic_alias_maximum, r.u16()?, "Topic Alias Maximum")?,
                // Topic Alias 0 is passed through: the broker answers it with 0x94.
                0x23 => once(&mut p.topic_alias, r.u16()?, "Topic Alias")?,
                0x24 => once(
                    &mut p.maximum_qos,
                    boolean(&mut r, "Maximum QoS")?,
                    "Maximum QoS",
                )?,
                0x25 => once(
                    &mut p.retain_available,
                    boolean(&mut r, "Retain Available")?,
                    "Retain Available",
                )?,
                0x26 => {
                    let k = r.string()?;
                    let v = r.string()?;
                    p.user_properties.push((k, v));
                }
                0x27 => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(protocol("Maximum Packet Size 0"));
                    }
                    once(&mut p.maximum_packet_size, v, "Maximum Packet Size")?
                }
                0x28 => once(
                    &mut p.wildcard_subscription_available,
                    boolean(&mut r, "Wildcard Subscription Available")?,
                    "Wildcard Subscription Available",
                )?,
                0x29 => once(
                    &mut p.subscription_identifiers_available,
                    boolean(&mut r, "Subscription Identifiers Available")?,
                    "Subscription Identifiers Available",
                )?,
                0x2A => once(
                    &mut p.shared_subscription_available,
                    boolean(&mut r, "Shared Subscription Available")?,
                    "Shared Subscription Available",
                )?,
                _ => return Err(malformed("unknown property identifier")),
            }
        }
        Ok(p)
    }

    /// Length of the property block's content (without its length prefix).
    pub fn len(&self) -> usize {
        fn n<T>(o: &Option<T>, size: usize) -> usize {
            if o.is_some() { 1 + size } else { 0 }
        }
        fn s(o: &Option<String>) -> usize {
            o.as_ref().map_or(0, |v| 3 + v.len())
        }
        fn b(o: &Option<Bytes>) -> usize {
            o.as_ref().map_or(0, |v| 3 + v.len())
        }
        n(&self.payload_format_indicator, 1)
            + n(&self.message_expiry_interval, 4)
            + s(&self.content_type)
            + s(&self.response_topic)
            + b(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|&i| 1 + varint_len(i as usize))
                .sum::<usize>()
            + n(&self.session_expiry_interval, 4)
            + s(&self.assigned_client_identifier)
            + n(&self.server_keep_alive, 2)
            + s(&self.authentication_method)
            + b(&self.authentication_data)
            + n(&self.request_problem_information, 1)
            + n(&self.will_delay_interval, 4)
            + n(&self.request_response_information, 1)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + n(&self.receive_maximum, 2)
            + n(&self.topic_alias_maximum, 2)
            + n(&self.topic_alias, 2)
            + n(&self.maximum_qos, 1)
            + n(&self.retain_available, 1)
            + user_properties_len(&self.user_properties)
            + n(&self.maximum_packet_size, 4)
            + n(&self.wildcard_subscription_available, 1)
            + n(&self.subscription_identifiers_available, 1)
            + n(&self.shared_subscription_available, 1)
    }

    /// Length of the block including its Variable Byte Integer length prefix.
    pub fn block_len(&self) -> usize {
        let len = self.len();
        varint_len(len) + len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every string and binary value must fit a two-byte length.
    pub fn check(&self) -> Result<(), EncodeError> {
        for s in [
            &self.content_type,
            &self.response_topic,
            &self.assigned_client_identifier,
            &self.authentication_method,
            &self.response_information,
            &self.server_reference,
            &self.reason_string,
        ]
        .into_iter()
        .flatten()
        {
            check_len(s.as_bytes())?;
        }
        for b in [&self.correlation_data, &self.authentication_data]
            .into_iter()
            .flatten()
        {
            check_len(b)?;
        }
        check_user_properties(&self.user_properties)
    }

    /// Writes the block, length prefix included. Call [`Props::check`] first.
    pub fn write(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        self.check()?;
        put_varint(out, self.len());
        let u8p = |out: &mut BytesMut, id: u8, v: Option<u8>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u8(v);
            }
        };
        let u16p = |out: &mut BytesMut, id: u8, v: Option<u16>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u16(v);
            }
        };
        let u32p = |out: &mut BytesMut, id: u8, v: Option<u32>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u32(v);
            }
        };
        fn strp(out: &mut BytesMut, id: u8, v: &Option<String>) -> Result<(), EncodeError> {
            if let Some(v) = v {
                out.put_u8(id);
                put_string(out, v)?;
            }
            Ok(())
        }
        fn binp(out: &mut BytesMut, id: u8, v: &Option<Bytes>) -> Result<(), EncodeError> {
            if let Some(v) = v {
                out.put_u8(id);
                put_binary(out, v)?;
            }
            Ok(())
        }
        u8p(out, 0x01, self.payload_format_indicator);
        u32p(out, 0x02, self.message_expiry_interval);
        strp(out, 0x03, &self.content_type)?;
        strp(out, 0x08, &self.response_topic)?;
        binp(out, 0x09, &self.correlation_data)?;
        for &id in &self.subscription_identifiers {
            out.put_u8(0x0B);
            put_varint(out, id as usize);
        }
        u32p(out, 0x11, self.session_expiry_interval);
        strp(out, 0x12, &self.assigned_client_identifier)?;
        u16p(out, 0x13, self.server_keep_alive);
        strp(out, 0x15, &self.authentication_method)?;
        binp(out, 0x16, &self.authentication_data)?;
        u8p(out, 0x17, self.request_problem_information);
        u32p(out, 0x18, self.will_delay_interval);
        u8p(out, 0x19, self.request_response_information);
        strp(out, 0x1A, &self.response_information)?;
        strp(out, 0x1C, &self.server_reference)?;
        strp(out, 0x1F, &self.reason_string)?;
        u16p(out, 0x21, self.receive_maximum);
        u16p(out, 0x22, self.topic_alias_maximum);
        u16p(out, 0x23, self.topic_alias);
        u8p(out, 0x24, self.maximum_qos);
        u8p(out, 0x25, self.retain_available);
        put_user_properties(out, &self.user_properties)?;
        u32p(out, 0x27, self.maximum_packet_size);
        u8p(out, 0x28, self.wildcard_subscription_available);
        u8p(out, 0x29, self.subscription_identifiers_available);
        u8p(out, 0x2A, self.shared_subscription_available);
        Ok(())
    }

    /// The application-message properties carried by a PUBLISH or a will.
    pub fn message(&mut self) -> MessageProperties {
        MessageProperties {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.message_expiry_interval,
            content_type: self.content_type.take(),
            response_topic: self.response_topic.take(),
            correlation_data: self.correlation_data.take(),
            user_properties: std::mem::take(&mut self.user_properties),
        }
    }
}

pub(crate) fn user_properties_len(props: &UserProperties) -> usize {
    props.iter().map(|(k, v)| 5 + k.len() + v.len()).sum()
}

pub(crate) fn check_user_properties(props: &UserProperties) -> Result<(), EncodeError> {
    for (k, v) in props {
        check_len(k.as_bytes())?;
        check_len(v.as_bytes())?;
    }
    Ok(())
}

pub(crate) fn put_user_properties(
    out: &mut BytesMut,
    props: &UserProperties,
) -> Result<(), EncodeError> {
    for (k, v) in props {
        out.put_u8(0x26);
        put_string(out, k)?;
        put_string(out, v)?;
    }
    Ok(())
}

/// Content length of the application-message properties (PUBLISH hot path: no allocation).
pub(crate) fn message_props_len(m: &MessageProperties) -> usize {
    m.payload_format_indicator.map_or(0, |_| 2)
        + m.message_expiry_interval.map_or(0, |_| 5)
        + m.content_type.as_ref().map_or(0, |s| 3 + s.len())
        + m.response_topic.as_ref().map_or(0, |s| 3 + s.len())
        + m.correlation_data.as_ref().map_or(0, |b| 3 + b.len())
        + user_properties_len(&m.user_properties)
}

pub(crate) fn check_message_props(m: &MessageProperties) -> Result<(), EncodeError> {
    for s in [&m.content_type, &m.response_topic].into_iter().flatten() {
        check_len(s.as_bytes())?;
    }
    if let Some(b) = &m.correlation_data {
        check_len(b)?;
    }
    check_user_properties(&m.user_properties)
}

/// Writes the application-message properties (without a block length prefix).
pub(crate) fn put_message_props(
    out: &mut BytesMut,
    m: &MessageProperties,
) -> Result<(), EncodeError> {
    if let Some(v) = m.message_expiry_interval {
        out.put_u8(0x02);
        out.put_u32(v);
    }
    put_passthrough_props(out, m)
}

/// The application-message properties but Message Expiry Interval (which a broker rewrites
/// per delivery).
pub(crate) fn put_passthrough_props(
    out: &mut BytesMut,
    m: &MessageProperties,
) -> Result<(), EncodeError> {
    if let Some(v) = m.payload_format_indicator {
        out.put_u8(0x01);
        out.put_u8(v);
    }
    if let Some(v) = &m.content_type {
        out.put_u8(0x03);
        put_string(out, v)?;
    }
    if let Some(v) = &m.response_topic {
        out.put_u8(0x08);
        put_string(out, v)?;
    }
    if let Some(v) = &m.correlation_data {
        out.put_u8(0x09);
        put_binary(out, v)?;
    }
    put_user_properties(out, &m.user_properties)
}
