//! How a connection ends: the v5 DISCONNECT that says why, what is owed flushed within a
//! deadline, the session handed back through its lease, and the close logged, counted and
//! recorded in the close history once.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::broker::Broker;
use crate::close::CloseReason;
use crate::history::Closed;
use crate::logsafe::LogId;
use crate::protocol::{self, Disconnect, Packet, Version};

use super::io::Io;
use super::run::Connection;
use super::{Close, ConnectionContext};

/// How long the final DISCONNECT (and pending output) may take to write on a close that is
/// not a shutdown.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// A close before any session exists (no CONNECT, a bad or refused CONNECT, a timeout):
/// what is owed (a CONNACK refusal) is flushed briefly, then the close is logged and counted.
/// `user` is the user name a refused CONNECT claimed (or proved).
pub(super) async fn close_unattached<R, W>(
    mut io: Io<R, W>,
    ctx: &ConnectionContext,
    client_id: Option<&str>,
    user: Option<&str>,
    close: Close,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let started = io.started;
    crate::transport::websocket::note_close(close.reason);
    flush_and_shut(&mut io).await;
    log_close(
        &ctx.broker,
        Ended {
            client_id,
            user,
            peer: ctx.peer,
            listener: &ctx.listener,
            reason: close.reason,
            detail: close.detail.as_deref(),
        },
        started,
    );
}

/// Writes what is owed and shuts the write side, each within [`CLOSE_WRITE_TIMEOUT`]; a peer
/// that does not take it is not waited for longer.
async fn flush_and_shut<R, W>(io: &mut Io<R, W>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if let Ok(Err(error)) = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, io.flush_all()).await {
        tracing::debug!(%error, "final output not written");
    }
    if let Ok(Err(error)) = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, io.writer.shutdown()).await {
        tracing::debug!(%error, "socket not shut down cleanly");
    }
}

/// Who and what a close was about.
pub(crate) struct Ended<'a> {
    pub client_id: Option<&'a str>,
    pub user: Option<&'a str>,
    pub peer: SocketAddr,
    /// The listener the connection came in on (`[listeners.NAME]`).
    pub listener: &'a str,
    pub reason: CloseReason,
    pub detail: Option<&'a str>,
}

/// Records (in the close history), counts and logs one close: every connection ends here
/// exactly once.
pub(crate) fn log_close(broker: &Broker, ended: Ended<'_>, started: Instant) {
    record_close(broker, &ended, started);
    count_and_log(&ended, started);
}

/// The close history's part of [`log_close`]. An attached connection records its close before
/// it lets go of its session, so that whoever waits for that (a kick, a revoke) finds the
/// close in the history.
fn record_close(broker: &Broker, ended: &Ended<'_>, started: Instant) {
    broker.closes.record(Closed {
        client_id: ended.client_id,
        user: ended.user,
        peer: ended.peer,
        reason: ended.reason,
        detail: ended.detail,
        duration_ms: started.elapsed().as_millis() as u64,
    });
}

fn count_and_log(ended: &Ended<'_>, started: Instant) {
    let Ended {
        client_id,
        peer,
        listener,
        reason,
        detail,
        ..
    } = *ended;
    metrics::counter!(crate::metrics::CONNECTIONS_CLOSED, "reason" => reason.label()).increment(1);
    crate::metrics::count_listener_close(listener, reason);
    let duration_ms = started.elapsed().as_millis() as u64;
    let id = client_id.unwrap_or("-");
    let client_id = LogId(id);
    match reason {
        // A socket that closes before any CONNECT is a port probe (health checks, load
        // balancers): counted like every close, logged only at debug level.
        CloseReason::ConnectionLost if id == "-" => tracing::debug!(
            %client_id,
            %peer,
            reason = reason.label(),
            duration_ms,
            detail,
            "connection closed"
        ),
        // A reset or failed socket is the network's doing, logged like other closes; only
        // the broker's own faults are warnings.
        CloseReason::InternalError => {
            tracing::warn!(%client_id, %peer, reason = reason.label(), duration_ms, detail, "connection closed")
        }
        _ => {
            tracing::info!(%client_id, %peer, reason = reason.label(), duration_ms, detail, "connection closed")
        }
    }
}

impl Connection {
    /// The DISCONNECT a v5 client is told the close with (MQTT-3.14.2-3: without the Reason
    /// String if it would take the packet past the client's Maximum Packet Size).
    fn farewell(&self, reason: CloseReason) -> Option<Packet> {
        if self.version != Version::V5 {
            return None;
        }
        let code = reason.disconnect_code()?;
        let mut disconnect = Disconnect::with_reason(code, Some(reason.label().to_string()));
        if reason == CloseReason::FailedOver {
            // A draining cluster node names the node the session went to (v5 §4.11).
            disconnect.server_reference = self
                .broker
                .cluster
                .get()
                .and_then(|c| c.drain_reference())
                .map(str::to_string);
        }
        if let Some(limit) = self.client_maximum_packet_size {
            let size = |d: &Disconnect| {
                protocol::encoded_len(&Packet::Disconnect(d.clone()), self.version)
                    .unwrap_or(usize::MAX)
            };
            if size(&disconnect) > limit as usize {
                disconnect.reason_string = None;
            }
            if size(&disconnect) > limit as usize {
                // Even the bare DISCONNECT does not fit: the close says it alone.
                return None;
            }
        }
        Some(Packet::Disconnect(disconnect))
    }

    /// Ends the connection: tell a v5 client why, flush what is owed within the deadline,
    /// hand the session back (or over) through the lease, log and count once.
    pub(super) async fn finish<R, W>(self, mut io: Io<R, W>, close: Close)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let started = io.started;
        let reason = close.reason;
        // Nothing more can be written to a peer that is gone, or that has stopped reading.
        let peer_gone = close.output_stalled
            || matches!(
                reason,
                CloseReason::ConnectionLost | CloseReason::IoException
            );
        if !peer_gone {
            if let Some(packet) = self.farewell(reason)
                && let Err(error) = self.send(&packet, &mut io.out)
            {
                tracing::error!(client_id = %LogId(&self.client_id), %error, "DISCONNECT not sent");
            }
            crate::transport::websocket::note_close(reason);
            flush_and_shut(&mut io).await;
        }
        drop(io);
        let Connection {
            broker,
            lease,
            client_id,
            peer,
            will_on_close,
            ..
        } = self;
        let user = lease.user().cloned();
        let listener = lease.listener().clone();
        let ended = Ended {
            client_id: Some(&client_id),
            user: user.as_deref(),
            peer,
            listener: &listener,
            reason,
            detail: close.detail.as_deref(),
        };
        record_close(&broker, &ended, started);
        lease.finish(reason, will_on_close, close.discard).await;
        count_and_log(&ended, started);
    }
}
