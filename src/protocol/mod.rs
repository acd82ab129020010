//! The wire: framing, decoding, encoding and the semantic checks the codec crate lacks.
//!
//! This is the only module that imports the codec crate (`mqttbytes-ng`). The rest of brokk
//! sees [`Packet`] and friends from [`packet`], and [`DecodeError`] with the v5 reason code
//! the spec asks for.

mod connect;
mod framing;
pub mod packet;
mod publish;
#[cfg(test)]
mod tests;
mod v4;
mod v5;
mod validate;

pub use packet::*;

use bytes::BytesMut;

/// Why an inbound byte stream could not become a packet. Each maps to the v5 DISCONNECT reason
/// code the spec prescribes for it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The fixed header announces a packet larger than `max_packet_size` (whole packet).
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    PacketTooLarge { size: usize, max: usize },
    /// Malformed Packet (0x81): bad Remaining Length, reserved flags, bad UTF-8, U+0000, ...
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// Protocol Error (0x82): well formed but not allowed (second CONNECT, bad property use, ...).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Topic Name Invalid (0x90): wildcards in a PUBLISH topic, empty topic without alias.
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(String),
    /// The CONNECT names a protocol level brokk does not speak (CONNACK 0x84 / return code 1).
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
}

impl DecodeError {
    /// The v5 reason code for a DISCONNECT (or CONNACK) that answers this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::PacketTooLarge { .. } => 0x95,
            DecodeError::Malformed(_) => 0x81,
            DecodeError::Protocol(_) => 0x82,
            DecodeError::TopicNameInvalid(_) => 0x90,
            DecodeError::UnsupportedProtocolVersion(_) => 0x84,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("string of {0} bytes is longer than MQTT's 65,535")]
    StringTooLong(usize),
    #[error("packet of {0} bytes is longer than MQTT's maximum")]
    PacketTooLong(usize),
    #[error("the packet cannot be encoded: {0}")]
    Invalid(String),
}

/// Decodes one packet from the front of `buf` if a whole frame is there.
///
/// `version` is `None` until the CONNECT has been read (then only CONNECT is accepted);
/// `max_packet_size` bounds the whole packet, fixed header included, and is checked from the
/// fixed header before the body is buffered. Returns `Ok(None)` when more bytes are needed;
/// consumed bytes are removed from `buf`.
///
/// Everything that can be judged from the fixed header (type, reserved flags, size, CONNECT
/// ordering) is judged before waiting for the body, so a hostile peer cannot make us buffer a
/// body we are going to refuse anyway.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<Version>,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = framing::parse_fixed_header(buf)? else {
        return Ok(None);
    };
    let packet_type = header.packet_type();
    match (packet_type, version) {
        (0, _) | (15, None | Some(Version::V311)) => {
            return Err(DecodeError::Malformed(format!(
                "invalid packet type {packet_type}"
            )));
        }
        (1, Some(_)) => return Err(DecodeError::Protocol("second CONNECT".into())),
        (1, None) => {}
        (_, None) => return Err(DecodeError::Protocol("first packet is not CONNECT".into())),
        _ => {}
    }
    framing::check_flags(&header)?;
    let size = header.frame_len();
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let frame = buf.split_to(size).freeze();
    let body = frame.slice(header.header_len..);
    let version = match version {
        Some(v) => v,
        None => connect::sniff_version(&body)?,
    };
    match version {
        Version::V311 => v4::decode(&header, frame).map(Some),
        Version::V5 => v5::decode(&header, body).map(Some),
    }
}

/// Appends the encoding of `packet` for `version` to `out`.
///
/// Strings and binary data longer than 65,535 bytes are refused (`StringTooLong`) rather than
/// truncated as `mqttbytes-ng` would; a 3.1.1 AUTH, or a 3.1.1 DISCONNECT with a non-zero
/// reason (only a server would send one, and 3.1.1 has no server DISCONNECT), is `Invalid`.
pub fn encode(packet: &Packet, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    match version {
        Version::V311 => v4::encode(packet, out),
        Version::V5 => v5::encode(packet, out),
    }
}

/// The encoded size of `packet` (whole packet), used to honour a client's Maximum Packet Size.
/// Computed arithmetically (PUBLISH allocates nothing).
/// [`encode`] for a PUBLISH without wrapping it in a [`Packet`]: the outbound hot path.
pub fn encode_publish(
    publish: &Publish,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    publish::encode(publish, version, out)
}

pub use publish::{
    Outgoing, decode_message_properties, encode_message_properties, encode_outgoing_head,
    encode_passthrough_properties,
};

/// The whole size of the packet whose fixed header starts `buf`, once that header is complete
/// (`None` before). Lets a reader size its buffer for a large packet exactly, instead of
/// growing it by doubling: a payload sliced from the buffer keeps the whole buffer alive.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    framing::parse_fixed_header(buf)
        .ok()
        .flatten()
        .map(|header| header.frame_len())
}

/// [`encoded_len`] for a PUBLISH, computed arithmetically.
pub fn publish_len(publish: &Publish, version: Version) -> Result<usize, EncodeError> {
    publish::encoded_len(publish, version)
}

pub fn encoded_len(packet: &Packet, version: Version) -> Result<usize, EncodeError> {
    match version {
        Version::V311 => v4::packet_len(packet),
        Version::V5 => v5::packet_len(packet),
    }
}
