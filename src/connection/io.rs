//! The transport's two halves and their buffers, and reading the first packet.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use crate::close::{CloseReason, InvalidKind};
use crate::metrics::Stats;
use crate::protocol::{self, ConnAck, ConnAckProperties, Connect, DecodeError, Packet, Version};

use super::Close;
use super::outbuf::OutBuf;

/// Read buffer growth once a read fills the buffer.
pub(super) const READ_BURST: usize = 16 * 1024;

/// The socket halves and their buffers.
pub(super) struct Io<R, W> {
    pub reader: R,
    pub writer: W,
    pub rbuf: BytesMut,
    /// `rbuf` was sized for one large packet (dropped once that packet is consumed).
    exact_frame: bool,
    pub out: OutBuf,
    /// When the connection was accepted.
    pub started: Instant,
    /// Whole seconds after `started` when a write last moved output to the socket (to tell
    /// which TCP timer failed it); a u32 beside `exact_frame` costs the task no room.
    last_write_secs: u32,
}

impl<R, W> Io<R, W> {
    pub fn new(reader: R, writer: W) -> Io<R, W> {
        Io {
            reader,
            writer,
            rbuf: BytesMut::with_capacity(512),
            exact_frame: false,
            out: OutBuf::new(),
            started: Instant::now(),
            last_write_secs: 0,
        }
    }

    /// A write moved output to the socket.
    pub fn wrote(&mut self) {
        let secs = self.started.elapsed().as_secs();
        self.last_write_secs = u32::try_from(secs).unwrap_or(u32::MAX);
    }

    /// How long ago the last write moved output (to the second).
    pub fn since_last_write(&self) -> std::time::Duration {
        let at = self.started + std::time::Duration::from_secs(u64::from(self.last_write_secs));
        Instant::now().saturating_duration_since(at)
    }

    /// Makes room in `rbuf` for the next read. A packet larger than the buffer gets a buffer of
    /// exactly its size: its payload is sliced from the buffer and kept by every queue it
    /// reaches, and a buffer grown by doubling would keep up to twice the packet alive. Once
    /// such a packet is consumed, its buffer is let go rather than reclaimed for later reads.
    pub fn reserve_for_frame(&mut self, min_spare: usize) {
        if self.exact_frame && self.rbuf.is_empty() {
            self.rbuf = BytesMut::with_capacity(min_spare);
            self.exact_frame = false;
        }
        if let Some(size) = protocol::frame_len(&self.rbuf)
            && size > self.rbuf.capacity()
        {
            let mut exact = BytesMut::with_capacity(size);
            exact.extend_from_slice(&self.rbuf);
            self.rbuf = exact;
            self.exact_frame = true;
            return;
        }
        if self.rbuf.capacity() - self.rbuf.len() < min_spare.min(256) {
            self.rbuf.reserve(min_spare);
        }
    }

    /// After a read that found the client quiet: an idle connection keeps a small buffer.
    pub fn shrink_if_quiet(&mut self, read_filled: bool) {
        if self.rbuf.is_empty() && !read_filled && self.rbuf.capacity() > READ_BURST {
            self.rbuf = BytesMut::new();
        }
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Io<R, W> {
    /// Reads until the first packet, which must be a CONNECT.
    pub async fn read_connect(&mut self, stats: &Stats, max: usize) -> Result<Box<Connect>, Close> {
        loop {
            match protocol::decode(&mut self.rbuf, None, max) {
                Ok(Some(Packet::Connect(connect))) => return Ok(connect),
                Ok(Some(_)) => {
                    return Err(CloseReason::InvalidInboundMessage(InvalidKind::Protocol).into());
                }
                Ok(None) => {}
                Err(DecodeError::UnsupportedProtocolVersion(level)) => {
                    // MQTT-3.1.2-2: answer with return code 0x01 and close. The 3.1.1 form is
                    // the one every client level can read.
                    let connack = Packet::ConnAck(ConnAck {
                        session_present: false,
                        reason_code: 0x84,
                        properties: ConnAckProperties::default(),
                    });
                    super::encode_or_log(&connack, Version::V311, &mut self.out);
                    return Err(Close::detailed(
                        CloseReason::Aborted,
                        format!("unsupported protocol level {level}"),
                    ));
                }
                Err(error) => return Err(super::decode_close(&error)),
            }
            self.reserve_for_frame(1024);
            match self.reader.read_buf(&mut self.rbuf).await {
                Ok(0) => return Err(CloseReason::ConnectionLost.into()),
                Ok(n) => stats.bytes_received.increment(n as u64),
                Err(error) => return Err(super::run::io_failed("read", &error)),
            }
        }
    }

    pub async fn flush_all(&mut self) -> std::io::Result<()> {
        self.out.flush_to(&mut self.writer).await
    }
}
