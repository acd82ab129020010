//! The PROXY protocol (HAProxy's, versions 1 and 2): on a listener with `proxy_protocol =
//! true`, every connection starts with a header naming the client's address as the proxy or
//! load balancer in front of brokk saw it. That address is the connection's peer from then on
//! (logs, the admin API, the close history).
//!
//! The header is read before anything else (TLS, WebSocket, MQTT), exactly: not a byte past
//! its end, which belongs to what follows. Version 1 is a text line of at most 107 bytes;
//! version 2 a 16-byte binary header and at most [`MAX_V2_BODY`] bytes of addresses and TLVs.
//! The bytes are parsed by the `ppp` crate. A `LOCAL` (v2) or `UNKNOWN` (v1) header, which a
//! proxy sends for its own health checks, keeps the socket's address.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The version 2 signature, the first 12 bytes of such a header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 header is at most 107 bytes, CRLF included (the specification's bound).
pub const MAX_V1: usize = 107;
/// The most brokk reads of a version 2 header after its 16 fixed bytes: the addresses (at
/// most 216, for Unix sockets) and TLVs (cloud load balancers add an id or two).
pub const MAX_V2_BODY: usize = 2048;

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    /// The socket closed before any byte.
    #[error("closed before the PROXY header")]
    Closed,
    #[error("PROXY header truncated: the socket closed after {0} bytes")]
    Truncated(usize),
    #[error("PROXY header too long: {0}")]
    Oversized(String),
    #[error("no PROXY header: the connection starts with {0}")]
    Missing(String),
    #[error("bad PROXY header: {0}")]
    Invalid(String),
    #[error("PROXY header not read: {0}")]
    Io(String),
}

/// Reads one PROXY header from `stream` and returns the client address it names (`None` for
/// `LOCAL` / `UNKNOWN`, and for a v2 header naming no IP address). The caller bounds the time.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut head = [0u8; 12];
    let got = read_fully(stream, &mut head).await?;
    if got == 0 {
        return Err(ProxyError::Closed);
    }
    if got < head.len() {
        return Err(ProxyError::Truncated(got));
    }
    if head == V2_SIGNATURE {
        read_v2(stream, head).await
    } else if head.starts_with(b"PROXY ") {
        read_v1(stream, head).await
    } else {
        Err(ProxyError::Missing(describe(&head)))
    }
}

/// Reads into `buf` until it is full or the stream ends; how many bytes were read.
async fn read_fully<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<usize, ProxyError> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) => return Err(ProxyError::Io(error.to_string())),
        }
    }
    Ok(filled)
}

async fn read_v2<S: AsyncRead + Unpin>(
    stream: &mut S,
    head: [u8; 12],
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut fixed = [0u8; 4];
    let got = read_fully(stream, &mut fixed).await?;
    if got < fixed.len() {
        return Err(ProxyError::Truncated(head.len() + got));
    }
    let body = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
    if body > MAX_V2_BODY {
        return Err(ProxyError::Oversized(format!(
            "a v2 header announcing {body} bytes of addresses and TLVs (at most {MAX_V2_BODY})"
        )));
    }
    let mut header = Vec::with_capacity(16 + body);
    header.extend_from_slice(&head);
    header.extend_from_slice(&fixed);
    header.resize(16 + body, 0);
    let got = read_fully(stream, &mut header[16..]).await?;
    if got < body {
        return Err(ProxyError::Truncated(16 + got));
    }
    let parsed = ppp::v2::Header::try_from(header.as_slice())
        .map_err(|e| ProxyError::Invalid(format!("v2: {e}")))?;
    if parsed.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified => None,
    })
}

/// Reads the rest of a version 1 line, a byte at a time (nothing past its CRLF may be taken
/// from the socket), to at most [`MAX_V1`] bytes.
async fn read_v1<S: AsyncRead + Unpin>(
    stream: &mut S,
    head: [u8; 12],
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut line = Vec::with_capacity(MAX_V1);
    line.extend_from_slice(&head);
    while !line.ends_with(b"\r\n") {
        if line.len() >= MAX_V1 {
            return Err(ProxyError::Oversized(format!(
                "no CRLF within the {MAX_V1} bytes a v1 header may take"
            )));
        }
        let mut byte = [0u8; 1];
        if read_fully(stream, &mut byte).await? == 0 {
            return Err(ProxyError::Truncated(line.len()));
        }
        line.push(byte[0]);
    }
    let text =
        std::str::from_utf8(&line).map_err(|_| ProxyError::Invalid("v1: not ASCII".to_string()))?;
    let parsed =
        ppp::v1::Header::try_from(text).map_err(|e| ProxyError::Invalid(format!("v1: {e}")))?;
    Ok(match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    })
}

/// The first bytes of what came instead of a header, for the log: printable ASCII as text,
/// anything else in hex.
fn describe(head: &[u8]) -> String {
    if head.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(head))
    } else {
        let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
        format!("bytes {}", hex.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut reader = bytes;
        let result = read_header(&mut reader).await;
        (result, reader.to_vec())
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn v1_names_the_source_and_leaves_what_follows() {
        let (result, rest) = parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 1883\r\n\x10\x00").await;
        assert_eq!(result, Ok(Some("192.0.2.7:40000".parse().unwrap())));
        assert_eq!(rest, b"\x10\x00");
        let (result, _) = parse(b"PROXY TCP6 2001:db8::1 ::1 5 6\r\n").await;
        assert_eq!(result, Ok(Some("[2001:db8::1]:5".parse().unwrap())));
        let (result, rest) = parse(b"PROXY UNKNOWN\r\nxyz").await;
        assert_eq!(result, Ok(None));
        assert_eq!(rest, b"xyz");
    }

    #[tokio::test]
    async fn v2_names_the_source_and_leaves_what_follows() {
        let mut body = vec![198, 51, 100, 9, 10, 0, 0, 1];
        body.extend_from_slice(&1234u16.to_be_bytes());
        body.extend_from_slice(&1883u16.to_be_bytes());
        let mut bytes = v2(1, 0x11, &body);
        bytes.extend_from_slice(b"\x10");
        let (result, rest) = parse(&bytes).await;
        assert_eq!(result, Ok(Some("198.51.100.9:1234".parse().unwrap())));
        assert_eq!(rest, b"\x10");
        let (result, _) = parse(&v2(0, 0, &[])).await;
        assert_eq!(result, Ok(None), "LOCAL keeps the socket's address");
    }

    #[tokio::test]
    async fn bad_headers_are_refused_with_their_fault() {
        assert_eq!(parse(b"").await.0, Err(ProxyError::Closed));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2").await.0,
            Err(ProxyError::Truncated(14))
        ));
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(matches!(
            parse(long.as_bytes()).await.0,
            Err(ProxyError::Oversized(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 banana 1.2.3.4 1 2\r\n").await.0,
            Err(ProxyError::Invalid(_))
        ));
        assert!(matches!(
            parse(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c").await.0,
            Err(ProxyError::Missing(_))
        ));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            parse(&huge).await.0,
            Err(ProxyError::Oversized(_))
        ));
        let truncated = &v2(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2])[..20];
        assert!(matches!(
            parse(truncated).await.0,
            Err(ProxyError::Truncated(20))
        ));
        // A v2 header with a version other than 2.
        let mut wrong = v2(1, 0x11, &[0; 12]);
        wrong[12] = 0x31;
        assert!(matches!(parse(&wrong).await.0, Err(ProxyError::Invalid(_))));
    }
}
