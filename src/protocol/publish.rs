//! PUBLISH, the hot path.
//!
//! Encoding is hand-written for both versions: the crate's `Publish` owns its topic and
//! properties, so using it would mean cloning every outbound message into its types, and its
//! `write` truncates long strings. Here the size is computed arithmetically and the packet is
//! appended straight into `out` (one `reserve`, no other allocation). 3.1.1 decoding uses the
//! crate (`v4::Publish::read`); v5 decoding is ours because of the property-reader defects
//! described in `validate.rs`.

use bytes::{BufMut, Bytes, BytesMut};

use super::framing::{
    FixedHeader, Reader, check_len, frame_size, malformed, put_header, put_string, put_varint,
    varint_len,
};
use super::validate::{
    Ctx, Props, check_message_props, check_topic_name, message_props_len, put_message_props,
    put_passthrough_props,
};
use super::{DecodeError, EncodeError, MessageProperties, Publish, QoS, Version};

fn qos_of(header: &FixedHeader) -> Result<QoS, DecodeError> {
    QoS::from_u8((header.byte1 >> 1) & 0x03).ok_or_else(|| malformed("PUBLISH with QoS 3"))
}

/// 3.1.1: the crate parses the body; we add the topic checks it lacks.
pub(crate) fn decode_v4(header: &FixedHeader, frame: Bytes) -> Result<Publish, DecodeError> {
    let fh =
        mqttbytes_ng::FixedHeader::new(header.byte1, header.header_len - 1, header.remaining_len);
    let p = mqttbytes_ng::v4::Publish::read(fh, frame).map_err(super::v4::crate_err)?;
    super::framing::check_no_nul(&p.topic)?;
    if p.topic.is_empty() {
        return Err(DecodeError::TopicNameInvalid("empty topic name".into()));
    }
    check_topic_name(&p.topic)?;
    Ok(Publish {
        dup: p.dup,
        qos: qos_of(header)?,
        retain: p.retain,
        topic: p.topic,
        packet_id: p.pkid,
        payload: p.payload,
        topic_alias: None,
        subscription_identifiers: Vec::new(),
        properties: Default::default(),
    })
}

pub(crate) fn decode_v5(header: &FixedHeader, body: Bytes) -> Result<Publish, DecodeError> {
    let qos = qos_of(header)?;
    let mut r = Reader::new(body);
    let topic = r.string()?;
    let packet_id = if qos == QoS::AtMostOnce { 0 } else { r.u16()? };
    if qos != QoS::AtMostOnce && packet_id == 0 {
        return Err(malformed("PUBLISH with packet identifier 0"));
    }
    let mut props = Props::read(&mut r, Ctx::Publish)?;
    check_topic_name(&topic)?;
    if topic.is_empty() && props.topic_alias.is_none() {
        return Err(DecodeError::TopicNameInvalid(
            "empty topic name without topic alias".into(),
        ));
    }
    Ok(Publish {
        dup: header.byte1 & 0x08 != 0,
        qos,
        retain: header.byte1 & 0x01 != 0,
        topic,
        packet_id,
        topic_alias: props.topic_alias,
        subscription_identifiers: std::mem::take(&mut props.subscription_identifiers),
        properties: props.message(),
        payload: r.rest(),
    })
}

/// v5 property block content length for an outbound PUBLISH.
fn props_len(p: &Publish) -> usize {
    message_props_len(&p.properties)
        + p.topic_alias.map_or(0, |_| 3)
        + p.subscription_identifiers
            .iter()
            .map(|&i| 1 + varint_len(i as usize))
            .sum::<usize>()
}

fn remaining_len(p: &Publish, version: Version) -> usize {
    let mut len = 2 + p.topic.len() + p.payload.len();
    if p.qos != QoS::AtMostOnce {
        len += 2;
    }
    if version == Version::V5 {
        let pl = props_len(p);
        len += varint_len(pl) + pl;
    }
    len
}

pub(crate) fn encoded_len(p: &Publish, version: Version) -> Result<usize, EncodeError> {
    frame_size(remaining_len(p, version))
}

pub(crate) fn encode(p: &Publish, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    check_len(p.topic.as_bytes())?;
    if version == Version::V5 {
        check_message_props(&p.properties)?;
        if let Some(&id) = p
            .subscription_identifiers
            .iter()
            .find(|&&i| i == 0 || i as usize > super::framing::MAX_VARINT)
        {
            return Err(EncodeError::Invalid(format!(
                "subscription identifier {id} out of range"
            )));
        }
    }
    if p.qos != QoS::AtMostOnce && p.packet_id == 0 {
        return Err(EncodeError::Invalid(
            "QoS > 0 PUBLISH with packet identifier 0".into(),
        ));
    }
    let mut byte1 = 0x30 | ((p.qos as u8) << 1);
    if p.dup && p.qos != QoS::AtMostOnce {
        byte1 |= 0x08;
    }
    if p.retain {
        byte1 |= 0x01;
    }
    put_header(out, byte1, remaining_len(p, version))?;
    put_string(out, &p.topic)?;
    if p.qos != QoS::AtMostOnce {
        out.put_u16(p.packet_id);
    }
    if version == Version::V5 {
        put_varint(out, props_len(p));
        put_message_props(out, &p.properties)?;
        if let Some(alias) = p.topic_alias {
            out.put_u8(0x23);
            out.put_u16(alias);
        }
        for &id in &p.subscription_identifiers {
            out.put_u8(0x0B);
            put_varint(out, id as usize);
        }
    }
    out.extend_from_slice(&p.payload);
    Ok(())
}

/// The v5 application-message properties a broker passes through from publisher to
/// subscriber, encoded once when a message enters the broker: every delivery copies these
/// bytes instead of cloning (and re-encoding) the parsed properties. Message Expiry Interval is
/// left out: it is rewritten per delivery with the time left.
pub fn encode_passthrough_properties(m: &MessageProperties) -> Result<Bytes, EncodeError> {
    check_message_props(m)?;
    let len = message_props_len(m) - m.message_expiry_interval.map_or(0, |_| 5);
    if len == 0 {
        return Ok(Bytes::new());
    }
    let mut out = BytesMut::with_capacity(len);
    put_passthrough_props(&mut out, m)?;
    Ok(out.freeze())
}

/// An outbound PUBLISH as the delivery path sees it: everything borrowed from the shared
/// message, so writing one to a subscriber allocates nothing. The payload is written by the
/// caller after [`encode_outgoing_head`] (copied, or referenced when large).
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty when `topic_alias` names a topic the client already knows.
    pub topic: &'a str,
    pub packet_id: u16,
    pub topic_alias: Option<u16>,
    pub subscription_identifiers: &'a [u32],
    /// Seconds left before the message expires (v5).
    pub message_expiry: Option<u32>,
    /// [`encode_passthrough_properties`] output (v5).
    pub properties: &'a [u8],
    pub payload_len: usize,
}

impl Outgoing<'_> {
    fn props_len(&self) -> usize {
        self.properties.len()
            + self.message_expiry.map_or(0, |_| 5)
            + self.topic_alias.map_or(0, |_| 3)
            + self
                .subscription_identifiers
                .iter()
                .map(|&i| 1 + varint_len(i as usize))
                .sum::<usize>()
    }

    fn remaining_len(&self, version: Version) -> usize {
        let mut len = 2 + self.topic.len() + self.payload_len;
        if self.qos != QoS::AtMostOnce {
            len += 2;
        }
        if version == Version::V5 {
            let pl = self.props_len();
            len += varint_len(pl) + pl;
        }
        len
    }

    /// The whole packet's size, to honour the client's Maximum Packet Size.
    pub fn len(&self, version: Version) -> Result<usize, EncodeError> {
        frame_size(self.remaining_len(version))
    }
}

/// Appends an outbound PUBLISH up to (not including) its payload.
pub fn encode_outgoing_head(
    p: &Outgoing<'_>,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    check_len(p.topic.as_bytes())?;
    if p.qos != QoS::AtMostOnce && p.packet_id == 0 {
        return Err(EncodeError::Invalid(
            "QoS > 0 PUBLISH with packet identifier 0".into(),
        ));
    }
    if let Some(&id) = p
        .subscription_identifiers
        .iter()
        .find(|&&i| i == 0 || i as usize > super::framing::MAX_VARINT)
    {
        return Err(EncodeError::Invalid(format!(
            "subscription identifier {id} out of range"
        )));
    }
    let remaining = p.remaining_len(version);
    let size = frame_size(remaining)?;
    let mut byte1 = 0x30 | ((p.qos as u8) << 1);
    if p.dup && p.qos != QoS::AtMostOnce {
        byte1 |= 0x08;
    }
    if p.retain {
        byte1 |= 0x01;
    }
    out.reserve(size - p.payload_len);
    out.put_u8(byte1);
    put_varint(out, remaining);
    put_string(out, p.topic)?;
    if p.qos != QoS::AtMostOnce {
        out.put_u16(p.packet_id);
    }
    if version == Version::V5 {
        put_varint(out, p.props_len());
        if let Some(secs) = p.message_expiry {
            out.put_u8(0x02);
            out.put_u32(secs);
        }
        out.extend_from_slice(p.properties);
        if let Some(alias) = p.topic_alias {
            out.put_u8(0x23);
            out.put_u16(alias);
        }
        for &id in p.subscription_identifiers {
            out.put_u8(0x0B);
            put_varint(out, id as usize);
        }
    }
    Ok(())
}

/// Application-message properties (Message Expiry included) as one property block with its
/// length: how a store keeps a will's properties.
pub fn encode_message_properties(m: &MessageProperties) -> Result<Bytes, EncodeError> {
    check_message_props(m)?;
    let len = message_props_len(m);
    let mut out = BytesMut::with_capacity(len + 4);
    put_varint(&mut out, len);
    put_message_props(&mut out, m)?;
    Ok(out.freeze())
}

/// Reads back what [`encode_message_properties`] wrote.
pub fn decode_message_properties(block: Bytes) -> Result<MessageProperties, DecodeError> {
    let mut r = Reader::new(block);
    let mut props = Props::read(&mut r, Ctx::Publish)?;
    r.finish()?;
    Ok(props.message())
}
