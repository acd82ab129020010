//! One connection's life, in phases, each in its own file:
//!
//! 1. `io`: the transport (any `AsyncRead + AsyncWrite`: TCP, TLS, WebSocket, an in-memory
//!    duplex in tests) and reading the first packet, which must be a CONNECT within
//!    `limits.connect_timeout`;
//! 2. `connect`: [`connect::negotiate`] (pure: keep-alive, expiry, client id, will), the login,
//!    taking the session from the sessions module, the CONNACK;
//! 3. `run`: the main loop, with `inbound` (every packet the client sends, in order),
//!    `outbound` (deliveries from the session's queue, topic aliases, resends) and `authz`
//!    (what the login allows: the credential's deadline, v5 re-authentication, reloads);
//! 4. `close`: the v5 DISCONNECT that says why, the session handed back, the close logged
//!    and counted once.
//!
//! Every way out carries exactly one `Close`: a [`CloseReason`] and, where it helps, a
//! detail for the log (an I/O error's cause, how long output went unread).

mod authz;
mod close;
pub mod connect;
mod inbound;
mod io;
mod outbound;
pub mod outbuf;
mod run;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::PeerIdentity;
use crate::broker::Broker;
use crate::close::{CloseReason, InvalidKind};
use crate::protocol::{self, DecodeError, Packet, Version};

pub(crate) use close::{Ended, log_close};
pub use connect::{Negotiated, Refusal, negotiate};

use io::Io;
use outbuf::OutBuf;

/// Payloads up to this size are copied out of the read buffer into their own allocation, so
/// a queued message does not keep a whole read buffer alive; larger packets are read into a
/// buffer of exactly their size (see `Io::reserve_for_frame`) and sliced without a copy.
const COPY_PAYLOAD_MAX: usize = 64 * 1024;

/// What a connection task is given by the accept loop.
pub struct ConnectionContext {
    pub broker: Arc<Broker>,
    pub peer: SocketAddr,
    /// The listener's name (`[listeners.NAME]`), for listings and per-listener metrics.
    pub listener: Arc<str>,
    /// Accepted past `max_connections`: read the CONNECT, refuse it, close.
    pub over_limit: bool,
    pub shutdown: watch::Receiver<bool>,
    /// The user a TLS client certificate names (`identity_as_username` listeners).
    pub identity: PeerIdentity,
}

/// Why a connection ended: one reason, and what the log should add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Close {
    pub reason: CloseReason,
    pub detail: Option<String>,
    /// The session ends too, whatever its expiry (a kick or a revoke).
    pub discard: bool,
    /// The client stopped reading its output: no final DISCONNECT is attempted.
    pub output_stalled: bool,
    /// The socket failed with ETIMEDOUT (keepalive probes or the user timeout): the detail is
    /// filled in once the connection's timings are known.
    pub timed_out: bool,
}

impl Close {
    pub fn detailed(reason: CloseReason, detail: String) -> Close {
        Close {
            detail: Some(detail),
            ..reason.into()
        }
    }
}

impl From<CloseReason> for Close {
    fn from(reason: CloseReason) -> Close {
        Close {
            reason,
            detail: None,
            discard: false,
            output_stalled: false,
            timed_out: false,
        }
    }
}

/// Serves one MQTT connection to its end (any stream: TLS, WebSocket, an in-memory duplex).
/// Not an `async fn`, for the reason given at [`serve_halves`].
pub fn serve<S>(ctx: ConnectionContext, stream: S) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    serve_halves(ctx, reader, writer)
}

/// Serves one MQTT connection given its two halves. A plain TCP stream comes here split by
/// `into_split`, which, unlike `tokio::io::split`, takes no lock on every read and write.
///
/// A plain function returning an `async` block rather than an `async fn`: an `async fn` keeps
/// its arguments twice in its state (as arguments and as the locals they are moved into), and
/// this state is what every idle connection's task holds.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve_halves<R, W>(
    ctx: ConnectionContext,
    reader: R,
    writer: W,
) -> impl std::future::Future<Output = ()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let mut io = Io::new(reader, writer);
        let timeout = ctx.broker.config.limits.connect_timeout;
        let max = ctx.broker.config.limits.max_packet_size as usize;

        let connect = {
            let mut shutdown = ctx.shutdown.clone();
            tokio::select! {
                // Boxed, like every phase but the long one: an idle connection keeps only the
                // main loop's state in its task, not the largest of all its phases.
                result = Box::pin(tokio::time::timeout(timeout, io.read_connect(&ctx.broker.stats, max))) => match result {
                    Ok(Ok(connect)) => connect,
                    Ok(Err(close)) => return Box::pin(close::close_unattached(io, &ctx, None, None, close)).await,
                    Err(_) => {
                        let close = Close::detailed(CloseReason::ClientUnresponsive, "no CONNECT within connect_timeout".to_string());
                        return Box::pin(close::close_unattached(io, &ctx, None, None, close)).await;
                    }
                },
                _ = crate::server::stopped(&mut shutdown) => {
                    return Box::pin(close::close_unattached(io, &ctx, None, None, CloseReason::ServerShutdown.into())).await;
                }
            }
        };

        // Bound in the `let`, not matched across the main loop: the accept's result would
        // otherwise keep a second copy of the connection in the task for its whole life.
        let mut conn = match Box::pin(connect::accept(&ctx, connect, &mut io)).await {
            Ok(conn) => conn,
            Err(refused) => {
                crate::metrics::count_refused_connect_as(refused.version.label(), refused.metric);
                let close = Close::detailed(CloseReason::Aborted, refused.why);
                let client_id = refused.client_id.as_deref();
                let user = refused.user.as_deref();
                return Box::pin(close::close_unattached(io, &ctx, client_id, user, close)).await;
            }
        };
        let mut close = conn.run(&mut io).await;
        if close.timed_out {
            let broker = &ctx.broker;
            let liveness = crate::liveness::Liveness::for_listener(
                &broker.config.limits,
                broker.config.listeners.get(&*ctx.listener),
            );
            let now = Instant::now();
            close.detail = Some(liveness.explain_timeout(
                now.saturating_duration_since(conn.last_inbound),
                io.since_last_write(),
                !io.out.is_empty(),
            ));
        }
        Box::pin(conn.finish(io, close)).await;
    }
}

impl Broker {
    pub(crate) fn stats_connect(&self, version: Version, accepted: bool) {
        let result = if accepted { "accepted" } else { "refused" };
        metrics::counter!(crate::metrics::CONNECTS, "protocol" => version.label(), "result" => result).increment(1);
    }
}

/// A payload that owns its memory: small payloads are copied out of the read buffer they were
/// sliced from (see [`COPY_PAYLOAD_MAX`]).
fn own_payload(payload: bytes::Bytes) -> bytes::Bytes {
    if payload.len() <= COPY_PAYLOAD_MAX {
        bytes::Bytes::copy_from_slice(&payload)
    } else {
        payload
    }
}

/// The close an undecodable inbound stream gets, with the decoder's words as the detail.
fn decode_close(error: &DecodeError) -> Close {
    let reason = match error {
        DecodeError::PacketTooLarge { .. } => CloseReason::MessageTooLarge,
        DecodeError::Malformed(_) => CloseReason::InvalidInboundMessage(InvalidKind::Malformed),
        DecodeError::Protocol(_) => CloseReason::InvalidInboundMessage(InvalidKind::Protocol),
        DecodeError::TopicNameInvalid(_) => {
            CloseReason::InvalidInboundMessage(InvalidKind::TopicName)
        }
        DecodeError::UnsupportedProtocolVersion(_) => CloseReason::Aborted,
    };
    Close::detailed(reason, error.to_string())
}

/// Encodes a packet the broker composed itself; one that cannot be encoded is a broker bug,
/// logged rather than sent half-made.
fn encode_or_log(packet: &Packet, version: Version, out: &mut OutBuf) {
    if let Err(error) = protocol::encode(packet, version, out.buf()) {
        tracing::error!(%error, "packet could not be encoded");
    }
}
