//! Raw MQTT 3.1.1 client pieces built on brokk's own codec (`brokk::protocol`).
//!
//! Control packets (CONNECT, SUBSCRIBE, CONNACK, SUBACK) go through `encode`/`decode`. The hot
//! path does not decode every PUBLISH into a `Packet` (a `String` topic and a `Bytes` per
//! message would make the generator, not the broker, the bottleneck on two cores): a
//! PUBLISH is encoded once by `encode` into a template whose packet id and payload header
//! are patched per message, and inbound frames are split by [`next_frame`], which reads the
//! fixed header the same way the codec does.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use brokk::protocol::{
    self, Connect, Packet, Publish, QoS, RetainHandling, Subscribe, SubscriptionRequest, Version,
};
use bytes::{Bytes, BytesMut};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use brokk::transport::websocket::WsStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The WebSocket path every connection upgrades to (`--ws-path`); unset: plain TCP.
static WS_PATH: OnceLock<String> = OnceLock::new();

/// Makes every connection MQTT over WebSocket on `path` (subprotocol `mqtt`, one binary
/// message per write), through brokk's own byte-stream adapter on the client side.
pub fn use_websocket(path: String) {
    let _ = WS_PATH.set(path);
}

type Ws = WsStream<TcpStream>;

/// A connection: TCP, or MQTT over WebSocket on TCP. The TCP case stays a plain `TcpStream`
/// (split without a lock), so the TCP figures are those of the generator as it was.
pub enum Stream {
    Tcp(TcpStream),
    Ws(Box<Ws>),
}

pub enum ReadHalf {
    Tcp(OwnedReadHalf),
    Ws(tokio::io::ReadHalf<Box<Ws>>),
}

pub enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Ws(tokio::io::WriteHalf<Box<Ws>>),
}

impl Stream {
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Ws(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Ws(r), WriteHalf::Ws(w))
            }
        }
    }
}

macro_rules! delegate_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Ws(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Ws(s) => Pin::new(s).poll_write(cx, buf),
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_flush(cx),
                    Self::Ws(s) => Pin::new(s).poll_flush(cx),
                }
            }
            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Ws(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_read!(Stream);
delegate_read!(ReadHalf);
delegate_write!(Stream);
delegate_write!(WriteHalf);

static NEXT_SRC: AtomicU32 = AtomicU32::new(0);

/// The next source address in 127.0.0.2..=127.0.0.254, so that connection storms spread
/// their 4-tuples over 253 addresses instead of exhausting one address's ephemeral ports.
pub fn next_source() -> Ipv4Addr {
    let n = NEXT_SRC.fetch_add(1, Ordering::Relaxed) % 253;
    Ipv4Addr::new(127, 0, 0, 2 + n as u8)
}

/// Opens a TCP connection from a rotated loopback source address, TCP_NODELAY on, and
/// SO_LINGER 0 so that dropping it sends RST and leaves no TIME_WAIT behind.
pub async fn open(addr: SocketAddr) -> Res<Stream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(next_source(), 0)))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    let Some(path) = WS_PATH.get() else {
        return Ok(Stream::Tcp(stream));
    };
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse()?);
    // Each write goes out as it is made (the generator never flushes), as on the broker side.
    let config = brokk::transport::websocket::frame_config(1 << 28);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    Ok(Stream::Ws(Box::new(WsStream::new(ws))))
}

/// Keep-alive of every generator connection: an hour, longer than any run (nothing sends
/// PINGREQ), and not 0, which rumqttd refuses (`ZeroKeepAlive`).
const KEEP_ALIVE_SECS: u16 = 3600;

pub fn connect_packet(client_id: &str, clean: bool) -> Connect {
    Connect {
        clean_start: clean,
        keep_alive: KEEP_ALIVE_SECS,
        ..Connect::new(Version::V311, client_id)
    }
}

pub fn encode(packet: &Packet) -> BytesMut {
    let mut out = BytesMut::new();
    protocol::encode(packet, Version::V311, &mut out).expect("encodable packet");
    out
}

/// Reads until one whole packet is decoded (by brokk's decoder).
pub async fn read_packet(stream: &mut Stream, buf: &mut BytesMut) -> Res<Packet> {
    loop {
        if let Some(p) = protocol::decode(buf, Some(Version::V311), 1 << 28)? {
            return Ok(p);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err("connection closed by the broker".into());
        }
    }
}

/// Opens a connection and completes CONNECT/CONNACK; returns the stream and the time from
/// the start of the TCP connect to the CONNACK.
pub async fn connect(addr: SocketAddr, client_id: &str, clean: bool) -> Res<(Stream, Duration)> {
    let t0 = Instant::now();
    let mut stream = open(addr).await?;
    let out = encode(&Packet::Connect(Box::new(connect_packet(client_id, clean))));
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(64);
    match read_packet(&mut stream, &mut buf).await? {
        Packet::ConnAck(ack) if ack.reason_code == 0 => Ok((stream, t0.elapsed())),
        Packet::ConnAck(ack) => Err(format!("CONNACK refused: {:#x}", ack.reason_code).into()),
        other => Err(format!("expected CONNACK, got {other:?}").into()),
    }
}

pub async fn subscribe(stream: &mut Stream, filter: &str, qos: QoS) -> Res<()> {
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscriptionRequest {
            filter: filter.to_string(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }],
        subscription_identifier: None,
        user_properties: Vec::new(),
    });
    stream.write_all(&encode(&sub)).await?;
    let mut buf = BytesMut::new();
    match read_packet(stream, &mut buf).await? {
        Packet::SubAck(ack) if ack.reason_codes.iter().all(|&c| c < 0x80) => Ok(()),
        other => Err(format!("expected a granted SUBACK, got {other:?}").into()),
    }
}

pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// A PUBLISH encoded once; `stamp` writes a copy with a new packet id and payload header.
pub struct Template {
    bytes: Vec<u8>,
    pid_at: Option<usize>,
    payload_at: usize,
}

impl Template {
    pub fn new(topic: &str, qos: QoS, payload_len: usize) -> Template {
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.to_string(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            payload: Bytes::from(vec![b'x'; payload_len]),
            topic_alias: None,
            subscription_identifiers: Vec::new(),
            properties: Default::default(),
        };
        let mut out = BytesMut::new();
        protocol::encode_publish(&publish, Version::V311, &mut out).expect("encodable PUBLISH");
        let bytes = out.to_vec();
        let payload_at = bytes.len() - payload_len;
        let pid_at = (qos != QoS::AtMostOnce).then(|| payload_at - 2);
        Template {
            bytes,
            pid_at,
            payload_at,
        }
    }

    /// Appends one PUBLISH to `out`. The payload starts with the stamp (see [`Stamp`]).
    #[inline]
    pub fn stamp(&self, out: &mut Vec<u8>, packet_id: u16, stamp: &Stamp) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(at) = self.pid_at {
            out[start + at..start + at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        stamp.write(&mut out[start + self.payload_at..]);
    }
}

/// The first 24 payload bytes of every benchmark message.
pub struct Stamp {
    /// Nanoseconds since the generator's epoch when the message was encoded.
    pub sent_ns: u64,
    /// The measurement phase it belongs to (late messages of an earlier phase are ignored).
    pub phase: u32,
    pub publisher: u32,
    pub seq: u64,
}

pub const STAMP_LEN: usize = 24;

impl Stamp {
    fn write(&self, p: &mut [u8]) {
        p[0..8].copy_from_slice(&self.sent_ns.to_le_bytes());
        p[8..12].copy_from_slice(&self.phase.to_le_bytes());
        p[12..16].copy_from_slice(&self.publisher.to_le_bytes());
        p[16..24].copy_from_slice(&self.seq.to_le_bytes());
    }

    pub fn read(p: &[u8]) -> Option<Stamp> {
        if p.len() < STAMP_LEN {
            return None;
        }
        Some(Stamp {
            sent_ns: u64::from_le_bytes(p[0..8].try_into().ok()?),
            phase: u32::from_le_bytes(p[8..12].try_into().ok()?),
            publisher: u32::from_le_bytes(p[12..16].try_into().ok()?),
            seq: u64::from_le_bytes(p[16..24].try_into().ok()?),
        })
    }
}

/// One whole frame at the front of `buf`: (first byte, header length, total length).
/// `None` when more bytes are needed. Remaining Length is MQTT's variable byte integer.
#[inline]
pub fn next_frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        len |= ((b & 0x7F) as usize) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if i > 4 {
            return None;
        }
    }
    let total = i + len;
    (buf.len() >= total).then_some((buf[0], i, total))
}

/// Payload and packet id of a PUBLISH frame.
#[inline]
pub fn publish_parts(frame: &[u8], header_len: usize) -> (u16, &[u8]) {
    let qos = (frame[0] >> 1) & 3;
    let body = &frame[header_len..];
    let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2 + tlen;
    let mut pid = 0;
    if qos > 0 {
        pid = u16::from_be_bytes([body[at], body[at + 1]]);
        at += 2;
    }
    (pid, &body[at..])
}

#[inline]
pub fn ack(out: &mut Vec<u8>, first: u8, pid: u16) {
    out.extend_from_slice(&[first, 2]);
    out.extend_from_slice(&pid.to_be_bytes());
}

pub fn epoch() -> Instant {
    use std::sync::OnceLock;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[inline]
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}
