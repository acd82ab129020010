//! MQTT over WebSocket (RFC 6455; MQTT 5.0 and 3.1.1 section 6).
//!
//! The HTTP upgrade is served by hyper (so a request that is no upgrade, names another path or
//! carries a bad key gets an HTTP 4xx answer, and garbage gets hyper's 400), the frames by
//! tungstenite. [`WsStream`] turns the frames back into a byte stream, `AsyncRead +
//! AsyncWrite`, so the connection's state machine runs on it unchanged: an MQTT packet may
//! span several binary messages and one message may hold several packets.
//!
//! - Binary data only (MQTT-6.0.0-1): a text message ends the connection
//!   (`invalid_inbound_message`, close frame 1003).
//! - A frame or message longer than `limits.max_packet_size` is refused from its header,
//!   before its payload is buffered (`message_too_large`, close frame 1009).
//! - The subprotocol: `mqtt` (MQTT-6.0.0-3, -4), or `mqttv3.1` for older 3.1 clients, echoed;
//!   a request that offers neither is refused with 400; one that offers none is served.
//! - Pings are answered with pongs (by tungstenite), a close frame is answered and read as the
//!   end of the stream; the broker's own close sends a close frame whose reason is the close
//!   reason's label (the connection notes it with [`note_close`] before it shuts the stream):
//!   1000, 1001 on shutdown, 1002 / 1003 / 1009 for a violation, 1008 for a refusal or a
//!   revoke, 1011 for an internal error. A 3.1.1 client, which gets no DISCONNECT, learns why.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_core::Stream;
use futures_sink::Sink;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::close::{CloseReason, InvalidKind};

tokio::task_local! {
    /// The close reason of the connection the current task serves over WebSocket, noted by the
    /// connection just before it shuts its stream, read by [`WsStream`]'s shutdown.
    static CLOSE_NOTE: Cell<Option<CloseReason>>;
}

/// Runs a WebSocket connection's future with room for its close reason.
pub async fn with_close_note<F: std::future::Future>(serve: F) -> F::Output {
    CLOSE_NOTE.scope(Cell::new(None), serve).await
}

/// Notes why the connection served by this task ends (a no-op on other transports).
pub fn note_close(reason: CloseReason) {
    let _ = CLOSE_NOTE.try_with(|note| note.set(Some(reason)));
}

/// The close frame's code for a close reason.
fn close_code(reason: CloseReason) -> CloseCode {
    match reason {
        CloseReason::ServerShutdown => CloseCode::Away,
        CloseReason::InternalError => CloseCode::Error,
        CloseReason::MessageTooLarge => CloseCode::Size,
        CloseReason::InvalidInboundMessage(_) => CloseCode::Protocol,
        CloseReason::Aborted | CloseReason::Revoked => CloseCode::Policy,
        _ => CloseCode::Normal,
    }
}

/// The subprotocols brokk speaks, in order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// The largest HTTP request head accepted for the upgrade (hyper's smallest setting).
const MAX_REQUEST_HEAD: usize = 8192;

/// The stream a WebSocket connection is served on.
pub type Upgraded = WsStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Why a WebSocket upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The request was answered with an HTTP error status.
    #[error("WebSocket upgrade refused with {status}: {why}")]
    Refused { status: u16, why: String },
    /// hyper could not parse the request (and answered 400 or 431 itself).
    #[error("WebSocket upgrade: bad HTTP request: {0}")]
    BadRequest(String),
    /// The peer closed before a whole request arrived.
    #[error("closed before the WebSocket upgrade")]
    Closed,
    #[error("WebSocket upgrade failed: {0}")]
    Io(String),
}

impl HandshakeError {
    /// The close reason a failed upgrade is logged and counted with.
    pub fn close_reason(&self) -> CloseReason {
        match self {
            HandshakeError::Refused { .. } | HandshakeError::BadRequest(_) => {
                CloseReason::InvalidInboundMessage(InvalidKind::Malformed)
            }
            HandshakeError::Closed => CloseReason::ConnectionLost,
            HandshakeError::Io(_) => CloseReason::IoException,
        }
    }
}

/// A WebSocket violation that ended the connection; carried inside the `io::Error` the read
/// fails with, so that the connection closes with the right reason.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    #[error("WebSocket text frame: MQTT travels in binary frames only")]
    TextFrame,
    #[error("WebSocket message too large: {0}")]
    TooLarge(String),
    #[error("WebSocket protocol error: {0}")]
    Protocol(String),
}

impl Violation {
    /// The close reason of a connection this violation ended.
    pub fn close_reason(&self) -> CloseReason {
        match self {
            Violation::TextFrame | Violation::Protocol(_) => {
                CloseReason::InvalidInboundMessage(InvalidKind::Malformed)
            }
            Violation::TooLarge(_) => CloseReason::MessageTooLarge,
        }
    }

    /// The close frame's code and reason.
    fn close_frame(&self) -> (CloseCode, &'static str) {
        match self {
            Violation::TextFrame => (CloseCode::Unsupported, "binary frames only"),
            Violation::TooLarge(_) => (CloseCode::Size, "message too large"),
            Violation::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        }
    }

    /// The violation an `io::Error` from a WebSocket read carries, if any.
    pub fn of(error: &io::Error) -> Option<&Violation> {
        error.get_ref()?.downcast_ref::<Violation>()
    }
}

/// The frame limits for a listener whose packets may be `max_packet_size` bytes: a frame or a
/// message announcing more is refused from its header. Buffers start small (most MQTT packets
/// are); tungstenite grows them for larger messages.
pub fn frame_config(max_packet_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(max_packet_size))
        .max_frame_size(Some(max_packet_size))
}

/// Serves the HTTP upgrade on `stream`: a GET of `path` with a valid WebSocket request gets
/// 101 and the WebSocket stream; anything else its 4xx answer and an error. The caller bounds
/// the time it may take.
pub async fn accept<S>(
    stream: S,
    path: &str,
    config: WebSocketConfig,
) -> Result<(Upgraded, Option<&'static str>), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let outcome: Arc<Mutex<Outcome>> = Arc::default();
    let service = {
        let outcome = outcome.clone();
        let path = path.to_string();
        hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
            let response = match check(&request, &path) {
                Ok(upgrade) => {
                    let on_upgrade = hyper::upgrade::on(&mut request);
                    let response = switching(&upgrade);
                    if let Ok(mut outcome) = outcome.lock() {
                        *outcome = Outcome::Upgrade(on_upgrade, upgrade.protocol);
                    }
                    response
                }
                Err(refusal) => {
                    let response = refusal.response();
                    if let Ok(mut outcome) = outcome.lock() {
                        *outcome = Outcome::Refused(refusal);
                    }
                    response
                }
            };
            std::future::ready(Ok::<_, std::convert::Infallible>(response))
        })
    };
    // Every answer but 101 says `Connection: close`, so one request is all a connection gets
    // (hyper's `keep_alive(false)` would add `close` to the 101's `Connection: Upgrade` too).
    let served = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    let outcome = match outcome.lock() {
        Ok(mut outcome) => std::mem::take(&mut *outcome),
        Err(_) => Outcome::None,
    };
    match (served, outcome) {
        (Ok(()), Outcome::Upgrade(on_upgrade, protocol)) => {
            let upgraded = on_upgrade
                .await
                .map_err(|e| HandshakeError::Io(e.to_string()))?;
            Ok((
                over_upgraded(TokioIo::new(upgraded), config).await,
                protocol,
            ))
        }
        (_, Outcome::Refused(refusal)) => Err(HandshakeError::Refused {
            status: refusal.status.as_u16(),
            why: refusal.why,
        }),
        (Err(error), _) if error.is_parse() || error.is_parse_too_large() => {
            Err(HandshakeError::BadRequest(error.to_string()))
        }
        (Err(error), _) if error.is_incomplete_message() || error.is_closed() => {
            Err(HandshakeError::Closed)
        }
        (Err(error), _) => Err(HandshakeError::Io(error.to_string())),
        (Ok(()), _) => Err(HandshakeError::Closed),
    }
}

/// The server side of a WebSocket whose upgrade is done, as a byte stream (the fuzz target
/// drives it over an in-memory pipe).
pub async fn over_upgraded<S>(stream: S, config: WebSocketConfig) -> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    WsStream::new(WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await)
}

#[derive(Default)]
enum Outcome {
    #[default]
    None,
    Upgrade(hyper::upgrade::OnUpgrade, Option<&'static str>),
    Refused(Refusal),
}

/// A valid upgrade request: its key and the subprotocol chosen.
struct Upgrade {
    key: HeaderValue,
    protocol: Option<&'static str>,
}

/// An upgrade request answered with an HTTP error.
struct Refusal {
    status: StatusCode,
    why: String,
}

impl Refusal {
    fn new(status: StatusCode, why: impl Into<String>) -> Refusal {
        Refusal {
            status,
            why: why.into(),
        }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(format!("{}\n", self.why))));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        if self.status == StatusCode::UPGRADE_REQUIRED {
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        response
    }
}

/// Checks an upgrade request (RFC 6455 section 4.2.1) against the listener's path.
fn check<B>(request: &Request<B>, path: &str) -> Result<Upgrade, Refusal> {
    if request.uri().path() != path {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no WebSocket endpoint at {:?}", request.uri().path()),
        ));
    }
    if request.method() != Method::GET {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not a WebSocket upgrade (GET)", request.method()),
        ));
    }
    let headers = request.headers();
    if !has_token(headers, &header::UPGRADE, "websocket")
        || !has_token(headers, &header::CONNECTION, "upgrade")
    {
        return Err(Refusal::new(
            StatusCode::UPGRADE_REQUIRED,
            "not a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(Refusal::new(
            StatusCode::UPGRADE_REQUIRED,
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|key| valid_key(key.as_bytes()))
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key must be 16 bytes in base64",
            )
        })?
        .clone();
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let protocol = if offered.is_empty() {
        None
    } else {
        let chosen = SUBPROTOCOLS
            .iter()
            .find(|ours| offered.iter().any(|p| p.eq_ignore_ascii_case(ours)));
        match chosen {
            Some(protocol) => Some(*protocol),
            None => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "Sec-WebSocket-Protocol offers neither mqtt nor mqttv3.1",
                ));
            }
        }
    };
    Ok(Upgrade { key, protocol })
}

/// Whether a comma-separated header holds `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A Sec-WebSocket-Key: base64 of 16 bytes (24 characters, `==` at the end).
fn valid_key(key: &[u8]) -> bool {
    use base64::Engine as _;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|decoded| decoded.len() == 16)
}

fn switching(upgrade: &Upgrade) -> Response<Full<Bytes>> {
    let accept = tungstenite::handshake::derive_accept_key(upgrade.key.as_bytes());
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = upgrade.protocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
    }
    response
}

/// A WebSocket connection as a byte stream: binary messages in, binary messages out (one per
/// write: the connection writes its output in batches).
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
    /// The close frame to send when the stream is shut down (set by a violation).
    close: Option<(CloseCode, &'static str)>,
    close_queued: bool,
    eof: bool,
}

impl<S> WsStream<S> {
    pub fn new(inner: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            inner,
            pending: Bytes::new(),
            close: None,
            close_queued: false,
            eof: false,
        }
    }

    fn violation(&mut self, violation: Violation) -> io::Error {
        self.close = Some(violation.close_frame());
        io::Error::new(io::ErrorKind::InvalidData, violation)
    }
}

/// An error from tungstenite as an `io::Error` (a protocol violation carries a [`Violation`]).
fn ws_error<S>(stream: &mut WsStream<S>, error: tungstenite::Error) -> Option<io::Error> {
    use tungstenite::Error as E;
    match error {
        // A socket that ends without a close frame ends the stream as over TCP
        // (`connection_lost`), not as a protocol violation.
        E::ConnectionClosed
        | E::AlreadyClosed
        | E::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => None,
        E::Io(error) => Some(error),
        E::Capacity(error) => Some(stream.violation(Violation::TooLarge(error.to_string()))),
        E::Protocol(error) => Some(stream.violation(Violation::Protocol(error.to_string()))),
        E::Utf8(_) => Some(stream.violation(Violation::TextFrame)),
        other => Some(io::Error::other(other.to_string())),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(this.violation(Violation::TextFrame)));
                }
                // Pongs to pings are queued by tungstenite and sent with the next read or
                // write; a close frame is answered likewise and ends the stream next.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) => {}
                None => this.eof = true,
                Some(Err(error)) => match ws_error(this, error) {
                    None => this.eof = true,
                    Some(error) => return Poll::Ready(Err(error)),
                },
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(error) = ready!(Pin::new(&mut this.inner).poll_ready(cx)) {
            return Poll::Ready(Err(closed_or(ws_error(this, error))));
        }
        let message = Message::Binary(Bytes::copy_from_slice(buf));
        match Pin::new(&mut this.inner).start_send(message) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(error) => Poll::Ready(Err(closed_or(ws_error(this, error)))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_flush(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(ws_error(this, error).map_or(Ok(()), Err)),
        }
    }

    /// Sends the close frame (1000, or the violation's code) and flushes it.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            if let Err(error) = ready!(Pin::new(&mut this.inner).poll_ready(cx)) {
                this.close_queued = true;
                return Poll::Ready(ws_error(this, error).map_or(Ok(()), Err));
            }
            let noted = CLOSE_NOTE.try_with(Cell::get).ok().flatten();
            let (code, reason) = this.close.unwrap_or_else(|| match noted {
                Some(reason) => (close_code(reason), reason.label()),
                None => (CloseCode::Normal, ""),
            });
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            this.close_queued = true;
            if let Err(error) = Pin::new(&mut this.inner).start_send(Message::Close(Some(frame)))
                && let Some(error) = ws_error(this, error)
            {
                return Poll::Ready(Err(error));
            }
        }
        match ready!(Pin::new(&mut this.inner).poll_close(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(ws_error(this, error).map_or(Ok(()), Err)),
        }
    }
}

fn closed_or(error: Option<io::Error>) -> io::Error {
    error.unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())
}
