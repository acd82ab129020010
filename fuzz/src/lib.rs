//! The fuzz targets' bodies, shared by the libFuzzer binaries in `fuzz_targets/` and by the
//! plain `cargo test` in `tests/replay.rs` that replays the seed corpus and every regression
//! input (so a crash, once fixed, stays a test that runs without libFuzzer).
//!
//! Each function panics (and so makes libFuzzer report a crash) when an invariant breaks.

pub mod connection;
pub mod router;
pub mod seeds;
pub mod store_format;
pub mod websocket;

use brokk::protocol::{self, DecodeError, Packet, Version};
use bytes::BytesMut;

/// The largest packet the decode target accepts; big enough for any fuzz input.
pub const DECODE_MAX: usize = 1 << 24;

/// The version the first input byte selects: `None` (before CONNECT), 3.1.1 or 5.0.
pub fn version_from(byte: u8) -> Option<Version> {
    match byte % 3 {
        0 => None,
        1 => Some(Version::V311),
        _ => Some(Version::V5),
    }
}

/// Target `decode`: decodes packets from the rest of the input with the version chosen by the
/// first byte until more bytes are needed or an error, and round-trips each packet through
/// `encode` and `decode` again.
pub fn decode_target(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut version = version_from(selector);
    let mut buf = BytesMut::from(rest);
    loop {
        let before = buf.len();
        match protocol::decode(&mut buf, version, DECODE_MAX) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before, "a decoded packet consumed no bytes");
                let v = match (&packet, version) {
                    (Packet::Connect(connect), _) => connect.version,
                    (_, Some(v)) => v,
                    (_, None) => panic!("decoded {packet:?} before a CONNECT"),
                };
                round_trip(&packet, v);
                // A stream continues in the version its CONNECT chose.
                version = Some(v);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return;
            }
            Err(_) => return,
        }
    }
}

/// Encodes `packet` for `version`, decodes the bytes again and asserts the same packet comes
/// back, the whole encoding was consumed and `encoded_len` agreed.
pub fn round_trip(packet: &Packet, version: Version) {
    let mut out = BytesMut::new();
    if let Err(error) = protocol::encode(packet, version, &mut out) {
        panic!("a decoded packet does not encode: {error}: {packet:?}");
    }
    match protocol::encoded_len(packet, version) {
        Ok(len) => assert_eq!(len, out.len(), "encoded_len disagrees for {packet:?}"),
        Err(error) => panic!("encoded_len failed: {error}: {packet:?}"),
    }
    let context = if matches!(packet, Packet::Connect(_)) {
        None
    } else {
        Some(version)
    };
    let bytes = out.clone();
    match protocol::decode(&mut out, context, DECODE_MAX) {
        Ok(Some(again)) => {
            assert_eq!(
                &again, packet,
                "round trip changed the packet ({bytes:02x?})"
            );
            assert!(out.is_empty(), "re-encoding left {} bytes", out.len());
        }
        other => panic!("re-encoded packet does not decode: {other:?}: {packet:?} ({bytes:02x?})"),
    }
}

/// What the fixed header alone says about the front of a buffer: an independent model of the
/// framing rules `decode` must follow.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// More bytes are needed; nothing is consumed.
    Incomplete,
    /// An error judged from the fixed header, before any body byte is read.
    Malformed,
    Protocol,
    TooLarge {
        size: usize,
    },
    /// A whole frame of `size` bytes is there: the body decides (packet or error), and exactly
    /// `size` bytes are consumed either way.
    Frame {
        size: usize,
    },
}

fn expect(buf: &[u8], version: Option<Version>, max: usize) -> Expect {
    let Some(&byte1) = buf.first() else {
        return Expect::Incomplete;
    };
    let mut remaining = 0usize;
    let mut header_len = None;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Expect::Incomplete;
        };
        remaining += usize::from(b & 0x7F) * 128usize.pow(i as u32);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Expect::Malformed; // non-minimal Remaining Length
            }
            header_len = Some(2 + i);
            break;
        }
    }
    let Some(header_len) = header_len else {
        return Expect::Malformed; // a fifth length byte
    };
    let kind = byte1 >> 4;
    let flags = byte1 & 0x0F;
    match (kind, version) {
        (0, _) | (15, None | Some(Version::V311)) => return Expect::Malformed,
        (1, Some(_)) | (2..=15, None) => return Expect::Protocol,
        _ => {}
    }
    let flags_ok = match kind {
        3 => {
            let qos = (flags >> 1) & 3;
            qos != 3 && !(qos == 0 && flags & 8 != 0)
        }
        6 | 8 | 10 => flags == 2,
        _ => flags == 0,
    };
    if !flags_ok {
        return Expect::Malformed;
    }
    let size = header_len + remaining;
    if size > max {
        return Expect::TooLarge { size };
    }
    if buf.len() < size {
        return Expect::Incomplete;
    }
    Expect::Frame { size }
}

/// Target `framing`: the fixed header and Remaining Length path under small maximum packet
/// sizes, with the input arriving in chunks. Every call to `decode` is checked against the
/// independent model above: incomplete frames consume nothing, header errors are the right
/// kind, the size limit is enforced on the whole packet before the body arrives, and a whole
/// frame consumes exactly its size.
///
/// Input: `[version selector] [max hi] [max lo] [chunk size] bytes...`.
pub fn framing_target(data: &[u8]) {
    let [selector, hi, lo, chunk, rest @ ..] = data else {
        return;
    };
    let mut version = version_from(*selector);
    let max = usize::from(u16::from_be_bytes([*hi, *lo]));
    let chunk = usize::from(*chunk % 16) + 1;
    let mut buf = BytesMut::new();
    let mut fed = 0;
    while fed < rest.len() || !buf.is_empty() {
        if fed < rest.len() {
            let end = (fed + chunk).min(rest.len());
            buf.extend_from_slice(&rest[fed..end]);
            fed = end;
        }
        // Drain every whole frame now in the buffer.
        loop {
            let model = expect(&buf, version, max);
            let before = buf.len();
            let result = protocol::decode(&mut buf, version, max);
            match (&model, &result) {
                (Expect::Incomplete, Ok(None)) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                (Expect::Malformed, Err(DecodeError::Malformed(_)))
                | (Expect::Protocol, Err(DecodeError::Protocol(_))) => return,
                (
                    Expect::TooLarge { size },
                    Err(DecodeError::PacketTooLarge { size: s, max: m }),
                ) => {
                    assert_eq!(
                        (*s, *m),
                        (*size, max),
                        "PacketTooLarge reports the wrong sizes"
                    );
                    return;
                }
                (Expect::Frame { size }, Ok(Some(packet))) => {
                    assert_eq!(
                        before - buf.len(),
                        *size,
                        "a frame consumed the wrong length"
                    );
                    assert!(*size <= max, "a packet larger than max was decoded");
                    if let Packet::Connect(connect) = packet {
                        version = Some(connect.version);
                    }
                }
                (Expect::Frame { size }, Err(_)) => {
                    assert_eq!(
                        before - buf.len(),
                        *size,
                        "a bad frame consumed the wrong length"
                    );
                    return;
                }
                _ => panic!(
                    "decode disagrees with the framing model: model {model:?}, got {result:?} \
                     (max {max}, version {version:?}, buffer {:02x?})",
                    &buf[..buf.len().min(16)]
                ),
            }
        }
        if fed >= rest.len() {
            // Everything fed and the buffer holds only an incomplete frame.
            return;
        }
    }
}
