//! Framing and the byte-level primitives every packet body is built from.
//!
//! We frame packets ourselves instead of using `mqttbytes-ng`'s `check()` because its size
//! limit compares only the Remaining Length (not the whole packet) with the maximum, it accepts
//! non-minimal Remaining Length encodings, and it cannot reject a packet as too large before
//! the body has arrived in the way brokk's back-pressure needs. The [`Reader`] is strict where
//! the crate is lenient: every string is checked for well-formed UTF-8 *and* U+0000, and every
//! read is bounds-checked so that no client byte can make us panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{DecodeError, EncodeError};

/// Largest value a Variable Byte Integer (and so a Remaining Length) can hold.
pub(crate) const MAX_VARINT: usize = 268_435_455;

/// The parsed fixed header of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FixedHeader {
    pub byte1: u8,
    /// 1 (type/flags byte) + the Remaining Length bytes.
    pub header_len: usize,
    pub remaining_len: usize,
}

impl FixedHeader {
    pub fn packet_type(&self) -> u8 {
        self.byte1 >> 4
    }

    pub fn flags(&self) -> u8 {
        self.byte1 & 0x0F
    }

    /// The whole packet: fixed header plus Remaining Length.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Parses the fixed header at the front of `buf`; `Ok(None)` when it is not complete yet.
///
/// A fifth continuation byte and a non-minimal encoding (a final byte of 0 after a
/// continuation, e.g. `0x80 0x00`) are both Malformed: the spec requires the minimal form and
/// accepting others would let two byte strings mean the same packet.
pub(crate) fn parse_fixed_header(buf: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(malformed("non-minimal remaining length"));
            }
            return Ok(Some(FixedHeader {
                byte1,
                header_len: 2 + i,
                remaining_len: value,
            }));
        }
    }
    Err(malformed("remaining length longer than 4 bytes"))
}

/// Checks the fixed-header flag bits that the spec reserves, before the body is read.
pub(crate) fn check_flags(header: &FixedHeader) -> Result<(), DecodeError> {
    let flags = header.flags();
    match header.packet_type() {
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(malformed("PUBLISH with QoS 3"));
            }
            // MQTT-3.3.1-2 (v5) / MQTT-3.3.1-2 (3.1.1): DUP must be 0 for QoS 0.
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(malformed("PUBLISH QoS 0 with DUP set"));
            }
            Ok(())
        }
        6 | 8 | 10 if flags != 0b0010 => Err(malformed("reserved fixed-header flags must be 0010")),
        6 | 8 | 10 => Ok(()),
        _ if flags != 0 => Err(malformed("reserved fixed-header flags must be 0000")),
        _ => Ok(()),
    }
}

pub(crate) fn malformed(msg: &str) -> DecodeError {
    DecodeError::Malformed(msg.to_string())
}

pub(crate) fn protocol(msg: &str) -> DecodeError {
    DecodeError::Protocol(msg.to_string())
}

/// Validates an MQTT UTF-8 string: well-formed UTF-8 (which also excludes surrogates) and no
/// U+0000, both Malformed per MQTT-1.5.4-1/-2.
pub(crate) fn check_utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    let s = std::str::from_utf8(bytes).map_err(|_| malformed("ill-formed UTF-8 string"))?;
    check_no_nul(s)?;
    Ok(s)
}

pub(crate) fn check_no_nul(s: &str) -> Result<(), DecodeError> {
    if s.as_bytes().contains(&0) {
        return Err(malformed("U+0000 in a UTF-8 string"));
    }
    Ok(())
}

/// A bounds-checked cursor over one packet body. Binary data is split off the underlying
/// `Bytes` so payloads are not copied.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(malformed("packet body too short"));
        }
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(malformed("packet body too short"));
        }
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(malformed("packet body too short"));
        }
        Ok(self.buf.get_u32())
    }

    /// A Variable Byte Integer, minimal encoding required (as for the Remaining Length).
    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(malformed("non-minimal variable byte integer"));
                }
                return Ok(value);
            }
        }
        Err(malformed("variable byte integer longer than 4 bytes"))
    }

    pub fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < len {
            return Err(malformed("length crosses the packet boundary"));
        }
        Ok(self.buf.split_to(len))
    }

    /// Two-byte length-prefixed binary data.
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        self.bytes(len)
    }

    /// Two-byte length-prefixed UTF-8 string, validated.
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        Ok(check_utf8(&raw)?.to_string())
    }

    /// Splits off the next `len` bytes as their own reader (a property block).
    pub fn sub(&mut self, len: usize) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.bytes(len)?))
    }

    /// Everything left (a PUBLISH payload).
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Trailing bytes after a fully parsed body are Malformed: a correct sender never leaves
    /// any, and ignoring them would hide desynchronised parsing.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed("trailing bytes after packet body"))
        }
    }
}

/// Number of bytes the Variable Byte Integer encoding of `v` takes.
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(out: &mut BytesMut, mut v: usize) {
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if v == 0 {
            break;
        }
    }
}

/// Length-prefixed binary data; the crate would silently truncate the u16 length, we refuse.
pub(crate) fn put_binary(out: &mut BytesMut, data: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(data.len()).map_err(|_| EncodeError::StringTooLong(data.len()))?;
    out.put_u16(len);
    out.extend_from_slice(data);
    Ok(())
}

pub(crate) fn put_string(out: &mut BytesMut, s: &str) -> Result<(), EncodeError> {
    put_binary(out, s.as_bytes())
}

pub(crate) fn check_len(s: &[u8]) -> Result<(), EncodeError> {
    if s.len() > usize::from(u16::MAX) {
        return Err(EncodeError::StringTooLong(s.len()));
    }
    Ok(())
}

/// Size of a whole packet with the given Remaining Length, or `PacketTooLong`.
pub(crate) fn frame_size(remaining_len: usize) -> Result<usize, EncodeError> {
    if remaining_len > MAX_VARINT {
        return Err(EncodeError::PacketTooLong(remaining_len));
    }
    Ok(1 + varint_len(remaining_len) + remaining_len)
}

/// Writes a fixed header after checking the Remaining Length fits.
pub(crate) fn put_header(
    out: &mut BytesMut,
    byte1: u8,
    remaining_len: usize,
) -> Result<(), EncodeError> {
    let size = frame_size(remaining_len)?;
    out.reserve(size);
    out.put_u8(byte1);
    put_varint(out, remaining_len);
    Ok(())
}
