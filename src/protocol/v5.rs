//! MQTT 5.0 bodies.
//!
//! Decoding is hand-written on top of the strict property reader in `validate.rs`: every v5
//! packet has a property block, and the crate's block reader is defective (duplicates kept,
//! Subscription Identifier 0 accepted, properties allowed in the wrong packet, property-length
//! overruns undetected). On top of that `v5::Disconnect::read` fails on `e0 01 8e` (it demands
//! a property length after a lone reason code), `v5::Packet::read` has no AUTH (type 15), and
//! its reason-code enums reject codes brokk must pass through. Encoding SUBSCRIBE and
//! UNSUBSCRIBE (client side, no reason codes) goes through `mqttbytes_ng::v5` after we check
//! string lengths, since its writer would truncate them; the other packets are written here
//! so that brokk's `u8` reason codes need no lossy enum conversion.

use bytes::{BufMut, Bytes, BytesMut};
use mqttbytes_ng::v5;

use super::framing::{FixedHeader, Reader, check_len, frame_size, malformed, protocol, put_header};
use super::validate::{Ctx, Props};
use super::{
    Ack, Auth, ConnAck, ConnAckProperties, DecodeError, Disconnect, EncodeError, Packet, QoS,
    RetainHandling, SubAck, Subscribe, SubscriptionRequest, UnsubAck, Unsubscribe, Version,
};

fn nonzero(id: u16) -> Result<u16, DecodeError> {
    if id == 0 {
        Err(malformed("packet identifier 0"))
    } else {
        Ok(id)
    }
}

fn check_reason(code: u8, allowed: &[u8], what: &str) -> Result<u8, DecodeError> {
    if allowed.contains(&code) {
        Ok(code)
    } else {
        Err(DecodeError::Malformed(format!(
            "invalid {what} reason code 0x{code:02X}"
        )))
    }
}

const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];

/// PUBACK/PUBREC/PUBREL/PUBCOMP: reason code and properties may be omitted (3.4.2.1).
fn decode_ack(mut r: Reader, codes: &[u8]) -> Result<Ack, DecodeError> {
    let packet_id = nonzero(r.u16()?)?;
    let mut ack = Ack::success(packet_id);
    if !r.is_empty() {
        ack.reason_code = check_reason(r.u8()?, codes, "acknowledgement")?;
        if !r.is_empty() {
            ack.reason_string = Props::read(&mut r, Ctx::Ack)?.reason_string;
        }
    }
    r.finish()?;
    Ok(ack)
}

/// Decodes a v5 body (fixed header stripped) whose flags are already checked.
pub(crate) fn decode(header: &FixedHeader, body: Bytes) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body.clone());
    let packet = match header.packet_type() {
        1 => Packet::Connect(Box::new(super::connect::decode(r, Version::V5)?)),
        2 => {
            let flags = r.u8()?;
            if flags & 0xFE != 0 {
                return Err(malformed("CONNACK reserved flags set"));
            }
            let reason_code = r.u8()?;
            let mut p = if r.is_empty() {
                Props::default()
            } else {
                Props::read(&mut r, Ctx::ConnAck)?
            };
            r.finish()?;
            Packet::ConnAck(ConnAck {
                session_present: flags & 0x01 != 0,
                reason_code,
                properties: ConnAckProperties {
                    session_expiry_interval: p.session_expiry_interval,
                    receive_maximum: p.receive_maximum,
                    maximum_qos: p.maximum_qos,
                    retain_available: p.retain_available.map(|v| v != 0),
                    maximum_packet_size: p.maximum_packet_size,
                    assigned_client_identifier: p.assigned_client_identifier.take(),
                    topic_alias_maximum: p.topic_alias_maximum,
                    reason_string: p.reason_string.take(),
                    wildcard_subscription_available: p
                        .wildcard_subscription_available
                        .map(|v| v != 0),
                    subscription_identifiers_available: p
                        .subscription_identifiers_available
                        .map(|v| v != 0),
                    shared_subscription_available: p.shared_subscription_available.map(|v| v != 0),
                    server_keep_alive: p.server_keep_alive,
                    authentication_method: p.authentication_method.take(),
                    user_properties: std::mem::take(&mut p.user_properties),
                },
            })
        }
        3 => Packet::Publish(super::publish::decode_v5(header, body)?),
        4 => Packet::PubAck(decode_ack(r, PUBACK_CODES)?),
        5 => Packet::PubRec(decode_ack(r, PUBACK_CODES)?),
        6 => Packet::PubRel(decode_ack(r, PUBREL_CODES)?),
        7 => Packet::PubComp(decode_ack(r, PUBREL_CODES)?),
        8 => {
            let packet_id = nonzero(r.u16()?)?;
            let mut p = Props::read(&mut r, Ctx::Subscribe)?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                let filter = r.string()?;
                let options = r.u8()?;
                if options & 0xC0 != 0 {
                    return Err(malformed("SUBSCRIBE reserved option bits set"));
                }
                let qos = QoS::from_u8(options & 0x03)
                    .ok_or_else(|| malformed("SUBSCRIBE requested QoS 3"))?;
                let retain_handling = match (options >> 4) & 0x03 {
                    0 => RetainHandling::SendAtSubscribe,
                    1 => RetainHandling::SendIfNew,
                    2 => RetainHandling::DoNotSend,
                    _ => return Err(protocol("Retain Handling 3")),
                };
                filters.push(SubscriptionRequest {
                    filter,
                    qos,
                    no_local: options & 0x04 != 0,
                    retain_as_published: options & 0x08 != 0,
                    retain_handling,
                });
            }
            if filters.is_empty() {
                return Err(protocol("SUBSCRIBE without topic filters"));
            }
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                subscription_identifier: p.subscription_identifiers.first().copied(),
                user_properties: std::mem::take(&mut p.user_properties),
            })
        }
        9 => {
            let packet_id = nonzero(r.u16()?)?;
            let p = Props::read(&mut r, Ctx::SubAck)?;
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes: r.rest().to_vec(),
                reason_string: p.reason_string,
            })
        }
        10 => {
            // Hand-written: besides the property-reader defects, this is where old mqttbytes
            // had a stray `dbg!` (gone in -ng 0.7.1, checked).
            let packet_id = nonzero(r.u16()?)?;
            let p = Props::read(&mut r, Ctx::Unsubscribe)?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(protocol("UNSUBSCRIBE without topic filters"));
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                user_properties: p.user_properties,
            })
        }
        11 => {
            let packet_id = nonzero(r.u16()?)?;
            Props::read(&mut r, Ctx::UnsubAck)?;
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes: r.rest().to_vec(),
            })
        }
        12 | 13 => {
            r.finish()?;
            if header.packet_type() == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        14 => {
            let mut d = Disconnect::with_reason(0, None);
            if !r.is_empty() {
                d.reason_code = check_reason(r.u8()?, DISCONNECT_CODES, "DISCONNECT")?;
                if !r.is_empty() {
                    let p = Props::read(&mut r, Ctx::Disconnect)?;
                    d.session_expiry_interval = p.session_expiry_interval;
                    d.reason_string = p.reason_string;
                    d.server_reference = p.server_reference;
                }
            }
            r.finish()?;
            Packet::Disconnect(d)
        }
        15 => {
            let mut a = Auth {
                reason_code: 0,
                authentication_method: None,
                authentication_data: None,
                reason_string: None,
            };
            if !r.is_empty() {
                a.reason_code = check_reason(r.u8()?, AUTH_CODES, "AUTH")?;
                if !r.is_empty() {
                    let p = Props::read(&mut r, Ctx::Auth)?;
                    a.authentication_method = p.authentication_method;
                    a.authentication_data = p.authentication_data;
                    a.reason_string = p.reason_string;
                }
            }
            r.finish()?;
            Packet::Auth(a)
        }
        _ => return Err(malformed("invalid packet type")),
    };
    Ok(packet)
}

/// A non-PUBLISH, non-CONNECT packet as the pieces we write: fixed-size head, optional
/// property block, tail.
struct Parts {
    byte1: u8,
    head: Vec<u8>,
    props: Option<Props>,
    tail: Vec<u8>,
}

impl Parts {
    fn remaining_len(&self) -> usize {
        self.head.len() + self.props.as_ref().map_or(0, Props::block_len) + self.tail.len()
    }
}

fn ack_parts(byte1: u8, a: &Ack) -> Parts {
    let mut head = a.packet_id.to_be_bytes().to_vec();
    let props = a.reason_string.clone().map(|s| Props {
        reason_string: Some(s),
        ..Props::default()
    });
    // Short forms of 3.4.2.1: omit the reason code when it is 0 and there are no properties.
    if a.reason_code != 0 || props.is_some() {
        head.push(a.reason_code);
    }
    Parts {
        byte1,
        head,
        props,
        tail: Vec::new(),
    }
}

fn parts(packet: &Packet) -> Result<Parts, EncodeError> {
    let empty = |byte1| Parts {
        byte1,
        head: Vec::new(),
        props: None,
        tail: Vec::new(),
    };
    Ok(match packet {
        Packet::ConnAck(c) => {
            let p = &c.properties;
            let props = Props {
                session_expiry_interval: p.session_expiry_interval,
                receive_maximum: p.receive_maximum,
                maximum_qos: p.maximum_qos,
                retain_available: p.retain_available.map(u8::from),
                maximum_packet_size: p.maximum_packet_size,
                assigned_client_identifier: p.assigned_client_identifier.clone(),
                topic_alias_maximum: p.topic_alias_maximum,
                reason_string: p.reason_string.clone(),
                wildcard_subscription_available: p.wildcard_subscription_available.map(u8::from),
                subscription_identifiers_available: p
                    .subscription_identifiers_available
                    .map(u8::from),
                shared_subscription_available: p.shared_subscription_available.map(u8::from),
                server_keep_alive: p.server_keep_alive,
                authentication_method: p.authentication_method.clone(),
                user_properties: p.user_properties.clone(),
                ..Props::default()
            };
            Parts {
                byte1: 0x20,
                head: vec![u8::from(c.session_present), c.reason_code],
                props: Some(props),
                tail: Vec::new(),
            }
        }
        Packet::PubAck(a) => ack_parts(0x40, a),
        Packet::PubRec(a) => ack_parts(0x50, a),
        Packet::PubRel(a) => ack_parts(0x62, a),
        Packet::PubComp(a) => ack_parts(0x70, a),
        Packet::SubAck(s) => Parts {
            byte1: 0x90,
            head: s.packet_id.to_be_bytes().to_vec(),
            props: Some(Props {
                reason_string: s.reason_string.clone(),
                ..Props::default()
            }),
            tail: s.reason_codes.clone(),
        },
        Packet::UnsubAck(u) => Parts {
            byte1: 0xB0,
            head: u.packet_id.to_be_bytes().to_vec(),
            props: Some(Props::default()),
            tail: u.reason_codes.clone(),
        },
        Packet::PingReq => empty(0xC0),
        Packet::PingResp => empty(0xD0),
        Packet::Disconnect(d) => {
            let props = Props {
                session_expiry_interval: d.session_expiry_interval,
                reason_string: d.reason_string.clone(),
                server_reference: d.server_reference.clone(),
                ..Props::default()
            };
            match (d.reason_code, props.is_empty()) {
                (0, true) => empty(0xE0),
                (rc, true) => Parts {
                    byte1: 0xE0,
                    head: vec![rc],
                    props: None,
                    tail: Vec::new(),
                },
                (rc, false) => Parts {
                    byte1: 0xE0,
                    head: vec![rc],
                    props: Some(props),
                    tail: Vec::new(),
                },
            }
        }
        Packet::Auth(a) => {
            let props = Props {
                authentication_method: a.authentication_method.clone(),
                authentication_data: a.authentication_data.clone(),
                reason_string: a.reason_string.clone(),
                ..Props::default()
            };
            if a.reason_code == 0 && props.is_empty() {
                empty(0xF0)
            } else {
                Parts {
                    byte1: 0xF0,
                    head: vec![a.reason_code],
                    props: Some(props),
                    tail: Vec::new(),
                }
            }
        }
        Packet::Connect(_) | Packet::Publish(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => {
            return Err(EncodeError::Invalid("not encoded through parts".into()));
        }
    })
}

fn crate_subscribe(s: &Subscribe) -> Result<v5::Subscribe, EncodeError> {
    let mut filters = Vec::with_capacity(s.filters.len());
    for f in &s.filters {
        check_len(f.filter.as_bytes())?;
        let mut cf = v5::Filter::new(f.filter.clone(), super::v4::crate_qos(f.qos));
        cf.nolocal = f.no_local;
        cf.preserve_retain = f.retain_as_published;
        cf.retain_forward_rule = match f.retain_handling {
            RetainHandling::SendAtSubscribe => v5::RetainForwardRule::OnEverySubscribe,
            RetainHandling::SendIfNew => v5::RetainForwardRule::OnNewSubscribe,
            RetainHandling::DoNotSend => v5::RetainForwardRule::Never,
        };
        filters.push(cf);
    }
    super::validate::check_user_properties(&s.user_properties)?;
    if s.subscription_identifier
        .is_some_and(|id| id == 0 || id as usize > super::framing::MAX_VARINT)
    {
        return Err(EncodeError::Invalid(
            "subscription identifier out of range".into(),
        ));
    }
    let properties =
        (s.subscription_identifier.is_some() || !s.user_properties.is_empty()).then(|| {
            v5::SubscribeProperties {
                id: s.subscription_identifier.map(|i| i as usize),
                user_properties: s.user_properties.clone(),
            }
        });
    Ok(v5::Subscribe {
        pkid: s.packet_id,
        filters,
        properties,
    })
}

fn crate_unsubscribe(u: &Unsubscribe) -> Result<v5::Unsubscribe, EncodeError> {
    for f in &u.filters {
        check_len(f.as_bytes())?;
    }
    super::validate::check_user_properties(&u.user_properties)?;
    let properties = (!u.user_properties.is_empty()).then(|| v5::UnsubscribeProperties {
        user_properties: u.user_properties.clone(),
    });
    Ok(v5::Unsubscribe {
        pkid: u.packet_id,
        filters: u.filters.clone(),
        properties,
    })
}

pub(crate) fn packet_len(packet: &Packet) -> Result<usize, EncodeError> {
    match packet {
        Packet::Connect(c) => super::connect::encoded_len(c, Version::V5),
        Packet::Publish(p) => super::publish::encoded_len(p, Version::V5),
        Packet::Subscribe(s) => checked_size(crate_subscribe(s)?.size()),
        Packet::Unsubscribe(u) => checked_size(crate_unsubscribe(u)?.size()),
        other => frame_size(parts(other)?.remaining_len()),
    }
}

fn checked_size(size: usize) -> Result<usize, EncodeError> {
    if size > super::framing::MAX_VARINT + 5 {
        return Err(EncodeError::PacketTooLong(size));
    }
    Ok(size)
}

pub(crate) fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), EncodeError> {
    let crate_err = |e: mqttbytes_ng::Error| EncodeError::Invalid(e.to_string());
    match packet {
        Packet::Connect(c) => super::connect::encode(c, Version::V5, out),
        Packet::Publish(p) => super::publish::encode(p, Version::V5, out),
        Packet::Subscribe(s) => crate_subscribe(s)?
            .write(out)
            .map(|_| ())
            .map_err(crate_err),
        Packet::Unsubscribe(u) => crate_unsubscribe(u)?
            .write(out)
            .map(|_| ())
            .map_err(crate_err),
        other => {
            let parts = parts(other)?;
            if let Some(p) = &parts.props {
                p.check()?;
            }
            put_header(out, parts.byte1, parts.remaining_len())?;
            out.put_slice(&parts.head);
            if let Some(p) = &parts.props {
                p.write(out)?;
            }
            out.put_slice(&parts.tail);
            Ok(())
        }
    }
}
