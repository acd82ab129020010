//! MQTT 3.1.1 bodies, through `mqttbytes_ng::v4` where the crate is sound.
//!
//! The crate parses PUBLISH, CONNACK, PUBACK/PUBREC/PUBREL/PUBCOMP, SUBACK, UNSUBSCRIBE and
//! UNSUBACK and encodes CONNACK, the acks, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK and the
//! empty packets. We hand-write CONNECT (binary passwords, see `connect.rs`), PUBLISH encoding
//! (hot path, see `publish.rs`) and SUBSCRIBE decoding, because the crate masks the options
//! byte with `& 0b11` and so never sees the reserved bits 3.1.1 requires to be zero.
//! The crate also does not notice trailing bytes in fixed-size packets (a 5-byte PUBACK
//! decodes), so after decoding we require the canonical encoded size to equal the frame size:
//! 3.1.1 has exactly one encoding of each packet, so any difference is a malformed frame.

use bytes::{Bytes, BytesMut};
use mqttbytes_ng::v4;

use super::framing::{FixedHeader, Reader, check_len, check_no_nul, frame_size, malformed};
use super::{
    Ack, ConnAck, DecodeError, EncodeError, Packet, QoS, SubAck, Subscribe, SubscriptionRequest,
    UnsubAck, Unsubscribe, Version,
};

pub(crate) fn crate_err(e: mqttbytes_ng::Error) -> DecodeError {
    DecodeError::Malformed(e.to_string())
}

fn enc_err(e: mqttbytes_ng::Error) -> EncodeError {
    EncodeError::Invalid(e.to_string())
}

fn nonzero(id: u16) -> Result<u16, DecodeError> {
    if id == 0 {
        Err(malformed("packet identifier 0"))
    } else {
        Ok(id)
    }
}

/// Maps a 3.1.1 CONNACK return code to the v5 reason code brokk uses internally.
fn connack_v5_code(code: v4::ConnectReturnCode) -> u8 {
    match code {
        v4::ConnectReturnCode::Success => 0x00,
        v4::ConnectReturnCode::RefusedProtocolVersion => 0x84,
        v4::ConnectReturnCode::BadClientId => 0x85,
        v4::ConnectReturnCode::ServiceUnavailable => 0x88,
        v4::ConnectReturnCode::BadUserNamePassword => 0x86,
        v4::ConnectReturnCode::NotAuthorized => 0x87,
    }
}

/// The mapping documented on [`ConnAck::reason_code`].
fn connack_v4_code(code: u8) -> v4::ConnectReturnCode {
    match code {
        0x00 => v4::ConnectReturnCode::Success,
        0x84 => v4::ConnectReturnCode::RefusedProtocolVersion,
        0x85 => v4::ConnectReturnCode::BadClientId,
        0x86 => v4::ConnectReturnCode::BadUserNamePassword,
        0x87 => v4::ConnectReturnCode::NotAuthorized,
        _ => v4::ConnectReturnCode::ServiceUnavailable,
    }
}

fn suback_code(code: u8) -> v4::SubscribeReasonCode {
    match code {
        0 => v4::SubscribeReasonCode::Success(mqttbytes_ng::QoS::AtMostOnce),
        1 => v4::SubscribeReasonCode::Success(mqttbytes_ng::QoS::AtLeastOnce),
        2 => v4::SubscribeReasonCode::Success(mqttbytes_ng::QoS::ExactlyOnce),
        _ => v4::SubscribeReasonCode::Failure,
    }
}

pub(crate) fn crate_qos(q: QoS) -> mqttbytes_ng::QoS {
    match q {
        QoS::AtMostOnce => mqttbytes_ng::QoS::AtMostOnce,
        QoS::AtLeastOnce => mqttbytes_ng::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mqttbytes_ng::QoS::ExactlyOnce,
    }
}

/// Decodes a complete 3.1.1 frame (fixed header included) whose flags are already checked.
pub(crate) fn decode(header: &FixedHeader, frame: Bytes) -> Result<Packet, DecodeError> {
    let fh =
        mqttbytes_ng::FixedHeader::new(header.byte1, header.header_len - 1, header.remaining_len);
    let body = frame.slice(header.header_len..);
    let packet = match header.packet_type() {
        1 => {
            return Ok(Packet::Connect(Box::new(super::connect::decode(
                Reader::new(body),
                Version::V311,
            )?)));
        }
        2 => {
            let ack = v4::ConnAck::read(fh, frame).map_err(crate_err)?;
            // The crate ignores the 7 reserved Connect Acknowledge Flags bits.
            if body.first().is_some_and(|f| f & 0xFE != 0) {
                return Err(malformed("CONNACK reserved flags set"));
            }
            Packet::ConnAck(ConnAck {
                session_present: ack.session_present,
                reason_code: connack_v5_code(ack.code),
                properties: Default::default(),
            })
        }
        3 => return Ok(Packet::Publish(super::publish::decode_v4(header, frame)?)),
        4 => Packet::PubAck(Ack::success(nonzero(
            v4::PubAck::read(fh, frame).map_err(crate_err)?.pkid,
        )?)),
        5 => Packet::PubRec(Ack::success(nonzero(
            v4::PubRec::read(fh, frame).map_err(crate_err)?.pkid,
        )?)),
        6 => Packet::PubRel(Ack::success(nonzero(
            v4::PubRel::read(fh, frame).map_err(crate_err)?.pkid,
        )?)),
        7 => Packet::PubComp(Ack::success(nonzero(
            v4::PubComp::read(fh, frame).map_err(crate_err)?.pkid,
        )?)),
        8 => Packet::Subscribe(decode_subscribe(body)?),
        9 => {
            let ack = v4::SubAck::read(fh, frame).map_err(crate_err)?;
            let reason_codes = ack
                .return_codes
                .iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => *q as u8,
                    v4::SubscribeReasonCode::Failure => 0x80,
                })
                .collect();
            Packet::SubAck(SubAck {
                packet_id: nonzero(ack.pkid)?,
                reason_codes,
                reason_string: None,
            })
        }
        10 => {
            let u = v4::Unsubscribe::read(fh, frame).map_err(crate_err)?;
            for f in &u.topics {
                check_no_nul(f)?;
            }
            // 3.1.1 3.10.3-2 calls an empty UNSUBSCRIBE a protocol violation and only says
            // "close"; Malformed is the closest DecodeError and matches SUBSCRIBE's handling.
            if u.topics.is_empty() {
                return Err(malformed("UNSUBSCRIBE without topic filters"));
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id: nonzero(u.pkid)?,
                filters: u.topics,
                user_properties: Vec::new(),
            })
        }
        11 => {
            let u = v4::UnsubAck::read(fh, frame).map_err(crate_err)?;
            Packet::UnsubAck(UnsubAck {
                packet_id: nonzero(u.pkid)?,
                reason_codes: Vec::new(),
            })
        }
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(super::Disconnect::with_reason(0, None)),
        _ => return Err(malformed("invalid packet type")),
    };
    if encoded_len(&packet)? != header.frame_len() {
        return Err(malformed("packet size does not match its content"));
    }
    Ok(packet)
}

fn decode_subscribe(body: Bytes) -> Result<Subscribe, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = nonzero(r.u16()?)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = r.u8()?;
        if options & 0xFC != 0 {
            return Err(malformed("SUBSCRIBE reserved option bits set"));
        }
        let qos = QoS::from_u8(options).ok_or_else(|| malformed("SUBSCRIBE requested QoS 3"))?;
        filters.push(SubscriptionRequest {
            filter,
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: super::RetainHandling::SendAtSubscribe,
        });
    }
    // 3.1.1 MQTT-3.8.3-3: a SUBSCRIBE without filters is a protocol violation; Malformed (see
    // UNSUBSCRIBE above).
    if filters.is_empty() {
        return Err(malformed("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        subscription_identifier: None,
        user_properties: Vec::new(),
    })
}

fn encoded_len(packet: &Packet) -> Result<usize, DecodeError> {
    remaining_len(packet)
        .and_then(frame_size)
        .map_err(|e| malformed(&e.to_string()))
}

fn remaining_len(packet: &Packet) -> Result<usize, EncodeError> {
    Ok(match packet {
        Packet::Connect(_) | Packet::Publish(_) => unreachable_len()?,
        Packet::ConnAck(_) => 2,
        Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::UnsubAck(_) => 2,
        Packet::Subscribe(s) => 2 + s.filters.iter().map(|f| 3 + f.filter.len()).sum::<usize>(),
        Packet::SubAck(s) => 2 + s.reason_codes.len(),
        Packet::Unsubscribe(u) => 2 + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>(),
        Packet::PingReq | Packet::PingResp | Packet::Disconnect(_) => 0,
        Packet::Auth(_) => {
            return Err(EncodeError::Invalid(
                "AUTH does not exist in MQTT 3.1.1".into(),
            ));
        }
    })
}

fn unreachable_len() -> Result<usize, EncodeError> {
    Err(EncodeError::Invalid(
        "CONNECT/PUBLISH sizes are computed by their own modules".into(),
    ))
}

/// Whole-packet size of a 3.1.1 packet.
pub(crate) fn packet_len(packet: &Packet) -> Result<usize, EncodeError> {
    match packet {
        Packet::Connect(c) => super::connect::encoded_len(c, Version::V311),
        Packet::Publish(p) => super::publish::encoded_len(p, Version::V311),
        Packet::Disconnect(d) => {
            check_v4_disconnect(d)?;
            Ok(2)
        }
        other => frame_size(remaining_len(other)?),
    }
}

/// 3.1.1 has no server DISCONNECT and no reason codes: `encode` cannot tell which side is
/// sending, so it accepts only the client's plain DISCONNECT (reason 0x00, what a test client
/// sends) and refuses anything carrying a server-side reason. The broker never asks to send a
/// DISCONNECT to a 3.1.1 client; it closes the connection instead.
fn check_v4_disconnect(d: &super::Disconnect) -> Result<(), EncodeError> {
    if d.reason_code != 0 {
        return Err(EncodeError::Invalid(format!(
            "MQTT 3.1.1 has no DISCONNECT with reason 0x{:02X} (no server DISCONNECT)",
            d.reason_code
        )));
    }
    Ok(())
}

pub(crate) fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(c) => return super::connect::encode(c, Version::V311, out),
        Packet::Publish(p) => return super::publish::encode(p, Version::V311, out),
        Packet::ConnAck(a) => {
            v4::ConnAck::new(connack_v4_code(a.reason_code), a.session_present).write(out)
        }
        Packet::PubAck(a) => v4::PubAck::new(a.packet_id).write(out),
        Packet::PubRec(a) => v4::PubRec::new(a.packet_id).write(out),
        Packet::PubRel(a) => v4::PubRel::new(a.packet_id).write(out),
        Packet::PubComp(a) => v4::PubComp::new(a.packet_id).write(out),
        Packet::Subscribe(s) => {
            // Checked here because the crate's writer truncates long strings silently.
            for f in &s.filters {
                check_len(f.filter.as_bytes())?;
            }
            frame_size(remaining_len(packet)?)?;
            let filters = s
                .filters
                .iter()
                .map(|f| v4::SubscribeFilter::new(f.filter.clone(), crate_qos(f.qos)))
                .collect();
            v4::Subscribe {
                pkid: s.packet_id,
                filters,
            }
            .write(out)
        }
        Packet::SubAck(s) => {
            frame_size(remaining_len(packet)?)?;
            v4::SubAck::new(
                s.packet_id,
                s.reason_codes.iter().map(|&c| suback_code(c)).collect(),
            )
            .write(out)
        }
        Packet::Unsubscribe(u) => {
            for f in &u.filters {
                check_len(f.as_bytes())?;
            }
            frame_size(remaining_len(packet)?)?;
            v4::Unsubscribe {
                pkid: u.packet_id,
                topics: u.filters.clone(),
            }
            .write(out)
        }
        Packet::UnsubAck(u) => v4::UnsubAck::new(u.packet_id).write(out),
        Packet::PingReq => v4::PingReq.write(out),
        Packet::PingResp => v4::PingResp.write(out),
        Packet::Disconnect(d) => {
            check_v4_disconnect(d)?;
            v4::Disconnect.write(out)
        }
        Packet::Auth(_) => {
            return Err(EncodeError::Invalid(
                "AUTH does not exist in MQTT 3.1.1".into(),
            ));
        }
    }
    .map(|_| ())
    .map_err(enc_err)
}
