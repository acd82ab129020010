//! CONNECT, hand-written for both versions.
//!
//! `mqttbytes-ng` models the password as a `String` (v4 and v5 `Login`), so a binary password
//! (legal: it is Binary Data) fails to decode and cannot be encoded; it also ignores the
//! reserved connect flag bit 0, a password flag without a username in 3.1.1, and trailing
//! bytes after the payload. CONNECT is parsed once per connection, so hand-writing it costs
//! nothing at run time and lets us apply every check in one place.

use bytes::{BufMut, Bytes, BytesMut};

use super::framing::{
    Reader, check_len, frame_size, malformed, protocol, put_binary, put_header, put_string,
};
use super::validate::{Ctx, Props, check_message_props, message_props_len, put_message_props};
use super::{Connect, DecodeError, EncodeError, QoS, Version, Will};

pub(crate) fn decode(mut r: Reader, version: Version) -> Result<Connect, DecodeError> {
    // Protocol name and level were already checked by the caller to pick `version`.
    let _name = r.binary()?;
    let _level = r.u8()?;
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(malformed("CONNECT reserved flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(malformed("will QoS/retain set without will flag"));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or_else(|| malformed("will QoS 3"))?;
    if version == Version::V311 && password_flag && !username_flag {
        return Err(malformed("password flag without username flag"));
    }
    let keep_alive = r.u16()?;
    let mut props = match version {
        Version::V5 => Props::read(&mut r, Ctx::Connect)?,
        Version::V311 => Props::default(),
    };
    if props.authentication_data.is_some() && props.authentication_method.is_none() {
        return Err(protocol(
            "Authentication Data without Authentication Method",
        ));
    }
    let client_id = r.string()?;
    let will = if will_flag {
        let mut wp = match version {
            Version::V5 => Props::read(&mut r, Ctx::Will)?,
            Version::V311 => Props::default(),
        };
        // Well-formed UTF-8 without U+0000 is checked here (Malformed); whether it is a
        // usable topic name (non-empty, no wildcards) is left to the broker, which can then
        // tell a v5 client why with CONNACK 0x90 instead of just closing.
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            delay_interval: wp.will_delay_interval.unwrap_or(0),
            properties: wp.message(),
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        version,
        client_id,
        clean_start,
        keep_alive,
        username,
        password,
        will,
        session_expiry_interval: props.session_expiry_interval,
        receive_maximum: props.receive_maximum,
        maximum_packet_size: props.maximum_packet_size,
        topic_alias_maximum: props.topic_alias_maximum,
        request_response_information: props.request_response_information,
        request_problem_information: props.request_problem_information,
        authentication_method: props.authentication_method.take(),
        authentication_data: props.authentication_data.take(),
        user_properties: std::mem::take(&mut props.user_properties),
    })
}

fn props_of(c: &Connect) -> Props {
    Props {
        session_expiry_interval: c.session_expiry_interval,
        receive_maximum: c.receive_maximum,
        maximum_packet_size: c.maximum_packet_size,
        topic_alias_maximum: c.topic_alias_maximum,
        request_response_information: c.request_response_information,
        request_problem_information: c.request_problem_information,
        authentication_method: c.authentication_method.clone(),
        authentication_data: c.authentication_data.clone(),
        user_properties: c.user_properties.clone(),
        ..Props::default()
    }
}

fn will_props_len(w: &Will) -> usize {
    let len = message_props_len(&w.properties) + if w.delay_interval != 0 { 5 } else { 0 };
    super::framing::varint_len(len) + len
}

fn remaining_len(c: &Connect, version: Version, props: &Props) -> usize {
    let mut len = 2 + 4 + 1 + 1 + 2 + 2 + c.client_id.len();
    if version == Version::V5 {
        len += props.block_len();
    }
    if let Some(w) = &c.will {
        len += 2 + w.topic.len() + 2 + w.payload.len();
        if version == Version::V5 {
            len += will_props_len(w);
        }
    }
    if let Some(u) = &c.username {
        len += 2 + u.len();
    }
    if let Some(p) = &c.password {
        len += 2 + p.len();
    }
    len
}

pub(crate) fn encoded_len(c: &Connect, version: Version) -> Result<usize, EncodeError> {
    frame_size(remaining_len(c, version, &props_of(c)))
}

pub(crate) fn encode(c: &Connect, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    if version == Version::V311 && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::Invalid(
            "3.1.1 CONNECT with a password but no username".into(),
        ));
    }
    let props = props_of(c);
    props.check()?;
    check_len(c.client_id.as_bytes())?;
    if let Some(w) = &c.will {
        check_len(w.topic.as_bytes())?;
        check_len(&w.payload)?;
        check_message_props(&w.properties)?;
    }
    for s in [
        c.username.as_ref().map(|u| u.as_bytes()),
        c.password.as_deref(),
    ]
    .into_iter()
    .flatten()
    {
        check_len(s)?;
    }
    let len = remaining_len(c, version, &props);
    // Check everything before writing so a failed encode leaves `out` untouched.
    put_header(out, 0x10, len)?;
    put_string(out, "MQTT")?;
    out.put_u8(match version {
        Version::V311 => 4,
        Version::V5 => 5,
    });
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    if version == Version::V5 {
        props.write(out)?;
    }
    put_string(out, &c.client_id)?;
    if let Some(w) = &c.will {
        if version == Version::V5 {
            let len = message_props_len(&w.properties) + if w.delay_interval != 0 { 5 } else { 0 };
            super::framing::put_varint(out, len);
            if w.delay_interval != 0 {
                out.put_u8(0x18);
                out.put_u32(w.delay_interval);
            }
            put_message_props(out, &w.properties)?;
        }
        put_string(out, &w.topic)?;
        put_binary(out, &w.payload)?;
    }
    if let Some(u) = &c.username {
        put_string(out, u)?;
    }
    if let Some(p) = &c.password {
        put_binary(out, p)?;
    }
    Ok(())
}

/// Reads protocol name and level from a CONNECT body to choose the decoder.
pub(crate) fn sniff_version(body: &Bytes) -> Result<Version, DecodeError> {
    let mut r = Reader::new(body.clone());
    let name = r.binary()?;
    let level = r.u8()?;
    match (&name[..], level) {
        (b"MQTT", 4) => Ok(Version::V311),
        (b"MQTT", 5) => Ok(Version::V5),
        (_, level) => Err(DecodeError::UnsupportedProtocolVersion(level)),
    }
}
