//! A connected client's state and its main loop: one `select!` over the socket (read and
//! write), the session's queue, the mailbox, one timer for every deadline, and shutdown, until
//! a [`Close`] ends it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::broker::Broker;
use crate::close::CloseReason;
use crate::message::{Delivery, Message};
use crate::protocol::Version;
use crate::sessions::store::{Commit, Load, LoadedQueue, StoreError};
use crate::sessions::{Control, Lease};

use super::authz::{ConnAuth, next_reload};
use super::connect::{Negotiated, keep_alive_deadline};
use super::io::{Io, READ_BURST, read_some};
use super::outbound::WRITE_HIGH_WATER;
use super::outbuf::OutBuf;
use super::{Close, ConnectionContext};

/// A connected client: the session's lease and what the connection negotiated.
pub(super) struct Connection {
    pub broker: Arc<Broker>,
    pub peer: SocketAddr,
    pub version: Version,
    pub client_id: Arc<str>,
    pub lease: Lease,
    pub shutdown: watch::Receiver<bool>,
    /// How long the client may stay silent: 1.5 x the negotiated keep-alive, or
    /// `connection_ttl` (the server's own limit, whatever keep-alive was asked) if shorter;
    /// `None` = no limit.
    pub silence_limit: Option<Duration>,
    /// When the last complete inbound packet arrived; only inbound packets move it.
    pub last_inbound: Instant,
    pub client_receive_maximum: u16,
    pub client_maximum_packet_size: Option<u32>,
    pub client_topic_alias_maximum: u16,
    /// Topic aliases both ways (v5), allocated when first used: most clients use none.
    pub aliases: Option<Box<Aliases>>,
    /// Inbound publishes of the current read, routed together.
    pub batch: Vec<Arc<Message>>,
    /// Inbound publishes of the current read by QoS, counted together.
    pub received: [u64; 3],
    /// A v5 DISCONNECT with 0x04 asked for the will.
    pub will_on_close: bool,
    pub scratch: Vec<Delivery>,
    /// What only a session in a durable store needs (allocated when first needed: most
    /// connections never do).
    pub durable: Option<Box<Durable>>,
    /// What the client may publish, subscribe to and receive (boxed: asked per packet, but
    /// it need not take room in every idle connection's task).
    pub auth: Box<ConnAuth>,
    /// Some subscription reaches topics the client may not read (or was removed by new
    /// rules with messages still queued): every delivery is checked. Off, deliveries cost
    /// nothing for authorisation.
    pub check_receive: bool,
}

/// Output held for a commit, and stored backlog being read.
#[derive(Default)]
pub(super) struct Durable {
    /// Output waiting for `pending`: acknowledgements of what must be on disk first.
    held: OutBuf,
    /// The commit the held output waits for (a later one implies the earlier: commits
    /// complete in order).
    pending: Option<Commit>,
    /// A piece of the session's stored backlog being read.
    loading: Option<Load>,
}

/// Stored backlog: read more when fewer than this many deliveries are in memory...
const LOAD_LOW_WATER: usize = 64;
/// ...this many at a time.
const LOAD_BATCH: usize = 256;

enum DurableEvent {
    Committed(Result<(), StoreError>),
    Loaded(Result<LoadedQueue, StoreError>),
}

/// The next of a held commit completing or a backlog piece arriving (never, when neither is
/// awaited). The slot it came from is emptied. A plain `poll_fn`, not an `async fn`: it adds
/// no state of its own to the connection's future.
fn durable_event(
    durable: &mut Option<Box<Durable>>,
) -> impl std::future::Future<Output = DurableEvent> + '_ {
    use std::future::Future;
    use std::task::Poll;
    std::future::poll_fn(move |cx| {
        let Some(durable) = durable else {
            return Poll::Pending;
        };
        if let Some(commit) = &mut durable.pending
            && let Poll::Ready(result) = std::pin::Pin::new(commit).poll(cx)
        {
            durable.pending = None;
            return Poll::Ready(DurableEvent::Committed(result));
        }
        if let Some(load) = &mut durable.loading
            && let Poll::Ready(result) = std::pin::Pin::new(load).poll(cx)
        {
            durable.loading = None;
            return Poll::Ready(DurableEvent::Loaded(result));
        }
        Poll::Pending
    })
}

/// The next reload of `[auth]`, when there is anything to reload (never otherwise); like
/// `durable_event`, without state of its own.
fn reload_event<F: std::future::Future + Unpin>(
    reloaded: &mut Option<F>,
) -> impl std::future::Future<Output = F::Output> + '_ {
    std::future::poll_fn(move |cx| match reloaded {
        Some(reload) => std::pin::Pin::new(reload).poll(cx),
        None => std::task::Poll::Pending,
    })
}

/// A read or write that failed. ETIMEDOUT is the kernel giving up on the peer (keepalive
/// probes unanswered, or output unacknowledged for the user timeout): the client is
/// unresponsive, not the I/O broken, and no farewell can reach it.
pub(super) fn io_failed(op: &str, error: &std::io::Error) -> Close {
    if let Some(violation) = crate::transport::websocket::Violation::of(error) {
        return Close::detailed(violation.close_reason(), violation.to_string());
    }
    if error.kind() == std::io::ErrorKind::TimedOut {
        return Close {
            timed_out: true,
            output_stalled: true,
            ..Close::detailed(CloseReason::ClientUnresponsive, format!("{op} timed out"))
        };
    }
    Close::detailed(CloseReason::IoException, format!("{op} failed: {error}"))
}

/// A v5 connection's topic aliases.
#[derive(Default)]
pub(super) struct Aliases {
    pub inbound: HashMap<u16, Arc<str>>,
    pub outbound: HashMap<Arc<str>, u16>,
    /// Bytes of topic held by `outbound`.
    pub outbound_bytes: usize,
}

/// Deadlines of the main loop besides keep-alive.
#[derive(Default)]
struct Timers {
    /// Set when shutdown began: the drain ends here at the latest.
    drain_at: Option<Instant>,
    /// Set while output is over the high-water mark: closed here unless a write progresses.
    stall_at: Option<Instant>,
}

impl Connection {
    pub fn new(
        ctx: &ConnectionContext,
        lease: Lease,
        negotiated: &Negotiated,
        auth: ConnAuth,
    ) -> Connection {
        let limits = &ctx.broker.config.limits;
        Connection {
            broker: ctx.broker.clone(),
            peer: ctx.peer,
            version: lease.version(),
            client_id: lease.client_id().clone(),
            lease,
            shutdown: ctx.shutdown.clone(),
            silence_limit: [
                keep_alive_deadline(negotiated.keep_alive),
                (!limits.connection_ttl.is_zero()).then_some(limits.connection_ttl),
            ]
            .into_iter()
            .flatten()
            .min(),
            last_inbound: Instant::now(),
            client_receive_maximum: negotiated.client_receive_maximum,
            client_maximum_packet_size: negotiated.client_maximum_packet_size,
            client_topic_alias_maximum: negotiated.client_topic_alias_maximum,
            aliases: None,
            batch: Vec::new(),
            received: [0; 3],
            will_on_close: false,
            scratch: Vec::new(),
            durable: None,
            auth: Box::new(auth),
            check_receive: false,
        }
    }

    fn held_is_empty(&self) -> bool {
        self.durable.as_ref().is_none_or(|d| d.held.is_empty())
    }

    /// Handles what was read. With `[storage] sync = "always"` its output (acknowledgements
    /// above all) is held until what it changed is on disk: acknowledged means stored.
    fn input<R, W>(&mut self, io: &mut Io<R, W>, max: usize) -> Result<(), Close> {
        if !self.lease.acknowledges_durably() {
            let result = self.handle_input(&mut io.rbuf, &mut io.out, max);
            drop(self.lease.commit());
            return result;
        }
        let mut durable = self.durable.take().unwrap_or_default();
        let result = self.handle_input(&mut io.rbuf, &mut durable.held, max);
        let commit = self.lease.commit();
        if !commit.is_done() {
            // Held output waits for every commit since it was held.
            durable.pending = Some(match durable.pending.take() {
                Some(earlier) => earlier.and(commit),
                None => commit,
            });
        } else if durable.pending.is_none() {
            io.out.append(&mut durable.held);
        }
        self.durable = Some(durable);
        result
    }

    /// A piece of the stored backlog was read: it joins the queue in front.
    fn loaded(&mut self, loaded: LoadedQueue) {
        let deliveries = loaded
            .deliveries
            .into_iter()
            .map(|mut stored| {
                let resume = stored.inflight.take();
                let mut delivery = stored.into_delivery();
                delivery.persisted = true;
                delivery.resume = resume;
                delivery
            })
            .collect();
        self.lease.queue().loaded(deliveries, loaded.next);
    }

    fn deadline(&self) -> Option<Instant> {
        self.silence_limit.map(|limit| self.last_inbound + limit)
    }

    /// The next instant the loop must wake for: keep-alive / TTL, the credential's expiry, the
    /// shutdown drain deadline, or the unread-output deadline, whichever comes first.
    fn next_wake(&self, timers: &Timers) -> Option<Instant> {
        [
            self.deadline(),
            self.auth.deadline,
            timers.drain_at,
            timers.stall_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// What a wake-up at `now` means: a close, or nothing (a timer moved).
    fn on_wake(&self, timers: &Timers, now: Instant) -> Option<Close> {
        if timers.drain_at.is_some_and(|at| at <= now) {
            return Some(CloseReason::ServerShutdown.into());
        }
        if timers.stall_at.is_some_and(|at| at <= now) {
            let waited = humantime::format_duration(self.broker.config.limits.write_timeout);
            return Some(Close {
                output_stalled: true,
                ..Close::detailed(
                    CloseReason::ClientUnresponsive,
                    format!("output not read for {waited}"),
                )
            });
        }
        if self.auth.deadline.is_some_and(|at| at <= now) {
            return Some(Close::detailed(
                CloseReason::Expired,
                "the token's exp passed".to_string(),
            ));
        }
        if self.deadline().is_some_and(|at| at <= now) {
            return Some(Close::detailed(
                CloseReason::ClientUnresponsive,
                "no packet within the keep-alive or connection_ttl".to_string(),
            ));
        }
        None
    }

    /// Whether a graceful shutdown's drain is complete: everything routed to this client was
    /// written and acknowledged.
    fn drained<R, W>(&self, io: &Io<R, W>) -> bool {
        io.out.is_empty()
            && self.held_is_empty()
            && self.lease.state().inflight_len() == 0
            && self.lease.queue().is_empty()
    }

    /// Each pass of the loop: deliver what is queued, finish a drain, and judge the output
    /// backlog. Back-pressure: a client that does not read its output is not read from either,
    /// so what it sends (PINGREQ, QoS 1 PUBLISH, ...) cannot pile up answers here; if it
    /// stays so for `write_timeout`, it is closed. Returns whether output is backlogged.
    fn before_wait<R, W>(&mut self, io: &mut Io<R, W>, timers: &mut Timers) -> Result<bool, Close> {
        if self.lease.queue().is_overflowed() {
            return Err(CloseReason::MessageQueueLimitReached.into());
        }
        // Deliveries wait behind held output (a SUBACK waiting for its commit comes first).
        if self.held_is_empty() {
            self.pump(&mut io.out);
        }
        // What the deliveries changed (messages now in flight) is stored without waiting.
        drop(self.lease.commit());
        let loading = self.durable.as_ref().is_some_and(|d| d.loading.is_some());
        if !loading && let Some(backlog) = self.lease.queue().backlog_to_load(LOAD_LOW_WATER) {
            let load = self.lease.load(backlog.from, LOAD_BATCH);
            self.durable.get_or_insert_default().loading = Some(load);
        }
        if timers.drain_at.is_some() && self.drained(io) {
            return Err(CloseReason::ServerShutdown.into());
        }
        let write_timeout = self.broker.config.limits.write_timeout;
        let backlogged = io.out.len() >= WRITE_HIGH_WATER;
        if !backlogged {
            timers.stall_at = None;
        } else if timers.stall_at.is_none() && !write_timeout.is_zero() {
            timers.stall_at = Some(Instant::now() + write_timeout);
        }
        Ok(backlogged)
    }

    pub async fn run<R, W>(&mut self, io: &mut Io<R, W>) -> Close
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let max = self.broker.config.limits.max_packet_size as usize;
        // Packets that came in the same read as the CONNECT are handled before waiting for
        // more bytes (a client may pipeline SUBSCRIBE or PUBLISH right behind its CONNECT).
        if !io.rbuf.is_empty()
            && let Err(close) = self.input(io, max)
        {
            return close;
        }
        io.shrink_if_quiet(false);
        let mut timers = Timers::default();
        // One timer for every deadline, re-armed only when the earliest one moves.
        let mut armed = self.next_wake(&timers);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let wake = tokio::time::sleep_until(armed.unwrap_or(far));
        tokio::pin!(wake);
        let mut shutdown = self.shutdown.clone();
        let mut read_filled = false;
        // One long-lived wait each on the queue, the mailbox and shutdown, re-armed after a
        // wake-up, rather than new ones per pass of the loop: a pass costs no registering and
        // unregistering of waiters (each a lock).
        let queue = self.lease.queue().clone();
        let mailbox = self.lease.mailbox().clone();
        let queued = queue.notify().notified();
        tokio::pin!(queued);
        let controls = mailbox.notify().notified();
        tokio::pin!(controls);
        let stop = crate::server::stopped(&mut shutdown);
        tokio::pin!(stop);
        // Likewise one long-lived wait for reloads of `[auth]`, only when there is anything to
        // reload, and boxed: its state need not sit in every connection's task.
        let mut reloaded = self.auth.reloads.take().map(|r| Box::pin(next_reload(r)));
        loop {
            let backlogged = match self.before_wait(io, &mut timers) {
                Ok(backlogged) => backlogged,
                Err(close) => return close,
            };
            let next = self.next_wake(&timers);
            if next != armed {
                armed = next;
                wake.as_mut().reset(armed.unwrap_or(far));
            }
            // Read buffer: none while the client is quiet (idle connections are most
            // connections: reads go through the thread's scratch buffer), a large one once a
            // read fills its room (a busy publisher: fewer syscalls), and exact for a packet
            // larger than the buffer.
            io.reserve_for_frame(if read_filled { READ_BURST } else { 0 });
            tokio::select! {
                _ = &mut controls => {
                    controls.set(mailbox.notify().notified());
                    while let Some(control) = mailbox.try_recv() {
                        // Boxed: rare, and its state would otherwise sit in every idle connection.
                        if let Some(close) = Box::pin(self.on_control(control, io, max)).await {
                            return close;
                        }
                    }
                }
                _ = &mut stop, if timers.drain_at.is_none() => {
                    timers.drain_at = Some(Instant::now() + self.broker.config.limits.shutdown_drain);
                }
                read = read_some(&mut io.reader, &mut io.rbuf), if io.rbuf.len() <= max && !backlogged => {
                    if let Some(close) = self.on_read(read, io, max, &mut read_filled) {
                        return close;
                    }
                }
                written = io.out.write_to(&mut io.writer), if !io.out.is_empty() => {
                    if let Some(close) = self.on_written(written, io, &mut timers) {
                        return close;
                    }
                }
                _ = &mut queued => queued.set(queue.notify().notified()),
                done = durable_event(&mut self.durable), if self.durable.is_some() => {
                    if let Some(close) = self.on_durable(done, io) {
                        return close;
                    }
                }
                receiver = reload_event(&mut reloaded), if reloaded.is_some() => {
                    if let Some(close) = self.on_reload() {
                        return close;
                    }
                    reloaded = Some(Box::pin(next_reload(receiver)));
                }
                _ = &mut wake, if armed.is_some() => {
                    if let Some(close) = self.on_wake(&timers, Instant::now()) {
                        return close;
                    }
                }
            }
        }
    }

    /// What one read brought: the end of the stream, an error, or bytes to handle.
    fn on_read<R, W>(
        &mut self,
        read: std::io::Result<(usize, bool)>,
        io: &mut Io<R, W>,
        max: usize,
        read_filled: &mut bool,
    ) -> Option<Close> {
        match read {
            Ok((0, _)) => Some(CloseReason::ConnectionLost.into()),
            Err(error) => Some(io_failed("read", &error)),
            Ok((n, filled)) => {
                *read_filled = filled;
                self.broker.stats.bytes_received.increment(n as u64);
                if let Err(close) = self.input(io, max) {
                    return Some(close);
                }
                io.shrink_if_quiet(filled);
                None
            }
        }
    }

    /// What one write did: progress restarts the unread-output deadline.
    fn on_written<R, W>(
        &mut self,
        written: std::io::Result<usize>,
        io: &mut Io<R, W>,
        timers: &mut Timers,
    ) -> Option<Close> {
        match written {
            Ok(0) => Some(Close::detailed(
                CloseReason::IoException,
                "write returned 0".to_string(),
            )),
            Err(error) => Some(io_failed("write", &error)),
            Ok(n) => {
                io.wrote();
                self.broker.stats.bytes_sent.increment(n as u64);
                timers.stall_at = None;
                None
            }
        }
    }

    /// The store answered: a commit (held acknowledgements go out), or a piece of the stored
    /// queue read back.
    fn on_durable<R, W>(&mut self, done: DurableEvent, io: &mut Io<R, W>) -> Option<Close> {
        match done {
            // Not stored: not acknowledged. The client sends it again.
            DurableEvent::Committed(Err(error)) => Some(Close::detailed(
                CloseReason::InternalError,
                format!("store: {error}"),
            )),
            DurableEvent::Committed(Ok(())) => {
                if let Some(durable) = &mut self.durable {
                    io.out.append(&mut durable.held);
                }
                None
            }
            DurableEvent::Loaded(Ok(loaded)) => {
                self.loaded(loaded);
                None
            }
            // A stored queue with a hole: never a silent resume.
            DurableEvent::Loaded(Err(error)) => Some(Close {
                discard: true,
                ..Close::detailed(CloseReason::LostMessages, error.to_string())
            }),
        }
    }

    /// A message from the sessions module (a takeover, a kick, a revoke, an admin's question).
    async fn on_control<R, W>(
        &mut self,
        control: Control,
        io: &mut Io<R, W>,
        max: usize,
    ) -> Option<Close>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        match control {
            Control::TakeOver { reply } => {
                self.lease.hand_over_on_finish(reply);
                // Input that reached the socket before the takeover still counts: a client
                // that sent DISCONNECT and reconnected at once ends its session on its own
                // terms (a clean session is not handed over).
                io.reserve_for_frame(0);
                if let Ok(Ok((n, _))) =
                    tokio::time::timeout(Duration::ZERO, read_some(&mut io.reader, &mut io.rbuf))
                        .await
                    && n > 0
                    && let Err(close) = self.input(io, max)
                {
                    return Some(close);
                }
                Some(CloseReason::SessionTakenOver.into())
            }
            Control::Migrate { reply } => {
                self.lease.hand_over_on_finish(reply);
                Some(CloseReason::FailedOver.into())
            }
            Control::Close { reason, discard } => Some(Close {
                discard,
                ..reason.into()
            }),
            Control::Subscriptions { reply } => {
                // The asker may have given up: nothing to do then.
                let _ = reply.send(self.lease.subscription_list());
                None
            }
        }
    }
}
