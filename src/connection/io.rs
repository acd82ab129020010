//! The transport's two halves and their buffers, and reading the first packet.

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::task::Poll;

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

thread_local! {
    /// Where a connection without a read buffer of its own reads (see [`read_some`]): one per
    /// runtime thread, not one per connection.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads what the socket has. Into `rbuf`'s spare room when it has some (a busy connection
/// keeps a buffer); otherwise into the thread's scratch buffer, and only the bytes that came
/// are copied into `rbuf`. An idle connection therefore holds no read buffer at all: most
/// connections are idle most of the time. Returns the bytes read and whether the read filled
/// the room it had (the client is busy: read into a buffer of its own next time).
pub(super) fn read_some<'a, R: AsyncRead + Unpin>(
    reader: &'a mut R,
    rbuf: &'a mut BytesMut,
) -> impl Future<Output = std::io::Result<(usize, bool)>> + 'a {
    std::future::poll_fn(move |cx| {
        let spare = rbuf.capacity() - rbuf.len();
        if spare > 0 {
            // `read_buf`'s future holds nothing but its two borrows: made afresh per poll.
            return match pin!(reader.read_buf(&mut *rbuf)).poll(cx) {
                Poll::Ready(Ok(n)) => Poll::Ready(Ok((n, n >= spare))),
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            };
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < READ_BURST {
                scratch.resize(READ_BURST, 0);
            }
            let mut buf = tokio::io::ReadBuf::new(&mut scratch[..]);
            match std::pin::Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    rbuf.extend_from_slice(buf.filled());
                    Poll::Ready(Ok((n, n >= READ_BURST)))
                }
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
}

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
            rbuf: BytesMut::new(),
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
        if min_spare > 0 && self.rbuf.capacity() - self.rbuf.len() < min_spare.min(256) {
            self.rbuf.reserve(min_spare);
        }
    }

    /// After a read that found the client quiet: with nothing left over (no partial packet),
    /// the connection lets its read buffer go; the next read goes through the thread's scratch
    /// buffer (see [`read_some`]).
    pub fn shrink_if_quiet(&mut self, read_filled: bool) {
        // Even at capacity 0 an emptied buffer may still hold its allocation (the part its
        // packets were split from): always replaced.
        if self.rbuf.is_empty() && !read_filled {
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
            self.reserve_for_frame(0);
            match read_some(&mut self.reader, &mut self.rbuf).await {
                Ok((0, _)) => return Err(CloseReason::ConnectionLost.into()),
                Ok((n, _)) => stats.bytes_received.increment(n as u64),
                Err(error) => return Err(super::run::io_failed("read", &error)),
            }
        }
    }

    pub async fn flush_all(&mut self) -> std::io::Result<()> {
        self.out.flush_to(&mut self.writer).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_connection_holds_no_read_buffer() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (reader, writer) = tokio::io::split(server);
        let mut io = Io::new(reader, writer);
        assert_eq!(io.rbuf.capacity(), 0, "no buffer before the first byte");
        tokio::io::AsyncWriteExt::write_all(&mut client, &[0xC0, 0x00, 0xC0])
            .await
            .unwrap();
        // No room of its own: read through the scratch buffer, only what came is kept.
        let (n, filled) = read_some(&mut io.reader, &mut io.rbuf).await.unwrap();
        assert_eq!((n, filled), (3, false));
        assert_eq!(&io.rbuf[..], &[0xC0, 0x00, 0xC0]);
        // A partial packet stays; once consumed, the buffer goes.
        let _ = io.rbuf.split_to(2);
        io.shrink_if_quiet(false);
        assert_eq!(&io.rbuf[..], &[0xC0]);
        let _ = io.rbuf.split_to(1);
        io.shrink_if_quiet(false);
        assert!(!io.rbuf.try_reclaim(1), "an emptied buffer is let go");
        // A read that fills its room marks the client busy: it gets a buffer of its own.
        tokio::io::AsyncWriteExt::write_all(&mut client, &vec![0u8; READ_BURST + 10])
            .await
            .unwrap();
        let (n, filled) = read_some(&mut io.reader, &mut io.rbuf).await.unwrap();
        assert_eq!((n, filled), (READ_BURST, true));
        io.shrink_if_quiet(filled);
        assert_eq!(io.rbuf.len(), READ_BURST, "kept: not quiet");
    }
}
