//! One connection's life: CONNECT, then one `select!` over the socket (read and write), the
//! session's outbox, the registry's mailbox, the keep-alive deadline and shutdown, until a
//! [`CloseReason`] ends it. Every way out of the loop carries exactly one reason; `finish`
//! sends it (v5), hands the session back, fires the will and logs and counts the close once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

use crate::auth::{LoginRequest, PeerIdentity};
use crate::broker::Broker;
use crate::close::{CloseReason, InvalidKind};
use crate::logsafe::LogId;
use crate::message::{Delivery, Message};
use crate::outbox::{Offer, Outbox, QueueLimits};
use crate::outbuf::OutBuf;
use crate::protocol::{
    self, Ack, ConnAck, ConnAckProperties, Connect, DecodeError, Disconnect, Outgoing, Packet,
    Publish, QoS, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe, Version, Will,
};
use crate::registry::{Control, Detached, Mailbox, Previous};
use crate::router::{self, SubscriptionOptions};
use crate::session::{InflightOut, OutboundState, Session};

/// Stop pulling from the outbox while this much is waiting to be written: a client that does
/// not read lets its queue (bounded) fill instead of this buffer (unbounded).
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Read buffer growth once a read fills the buffer.
const READ_BURST: usize = 16 * 1024;
/// Deliveries taken from the outbox per lock.
const DRAIN_BATCH: usize = 256;
/// Bytes of topic names the outbound topic-alias table may hold per connection.
const OUTBOUND_ALIAS_BYTES: usize = 64 * 1024;
/// Payloads up to this size are copied out of the read buffer into their own allocation, so
/// a queued message does not keep a whole read buffer alive; larger packets are read into a
/// buffer of exactly their size (see `Io::reserve_for_frame`) and sliced without a copy.
const COPY_PAYLOAD_MAX: usize = 64 * 1024;
/// Topic aliases a v5 client may use towards us (CONNACK Topic Alias Maximum).
const INBOUND_TOPIC_ALIAS_MAX: u16 = 64;
/// How long a takeover waits for the old connection to hand its session over.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the final DISCONNECT (and pending output) may take to write on a close that is
/// not a shutdown.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a connection task is given by the accept loop.
pub struct ConnectionContext {
    pub broker: Arc<Broker>,
    pub peer: SocketAddr,
    /// Accepted past `max_connections`: read the CONNECT, refuse it, close.
    pub over_limit: bool,
    pub shutdown: watch::Receiver<bool>,
    /// The user a TLS client certificate names (`identity_as_username` listeners).
    pub identity: PeerIdentity,
}

/// Serves one MQTT connection to its end (any stream: TLS, an in-memory duplex, ...).
pub async fn serve<S>(ctx: ConnectionContext, stream: S)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    serve_halves(ctx, reader, writer).await
}

/// Serves one MQTT connection given its two halves. A plain TCP stream comes here split by
/// `into_split`, which, unlike `tokio::io::split`, takes no lock on every read and write.
pub async fn serve_halves<R, W>(ctx: ConnectionContext, reader: R, writer: W)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let mut io = Io {
        reader,
        writer,
        rbuf: BytesMut::with_capacity(512),
        exact_frame: false,
        out: OutBuf::new(),
    };
    let broker = ctx.broker.clone();
    let timeout = broker.config.limits.connect_timeout;
    let max = broker.config.limits.max_packet_size as usize;
    let mut shutdown = ctx.shutdown.clone();

    let connect = tokio::select! {
        // Boxed, like every phase but the long one: an idle connection keeps only the main
        // loop's state in its task, not the largest of all its phases.
        result = Box::pin(tokio::time::timeout(timeout, io.read_connect(&broker, max))) => match result {
            Ok(Ok(connect)) => connect,
            Ok(Err(reason)) => return Box::pin(close_unattached(io, ctx.peer, None, reason, started, None)).await,
            Err(_) => return Box::pin(close_unattached(io, ctx.peer, None, CloseReason::ClientUnresponsive, started, None)).await,
        },
        _ = crate::server::stopped(&mut shutdown) => {
            return Box::pin(close_unattached(io, ctx.peer, None, CloseReason::ServerShutdown, started, None)).await;
        }
    };

    match Box::pin(accept(&broker, &ctx, connect, &mut io)).await {
        Ok(mut conn) => {
            let reason = conn.run(&mut io).await;
            Box::pin(conn.finish(io, reason, started)).await;
        }
        Err(refused) => {
            crate::metrics::count_refused_connect(refused.version.label(), refused.code);
            let client_id = refused.client_id.as_deref();
            let why = Some(refused.why.as_str());
            Box::pin(close_unattached(
                io,
                ctx.peer,
                client_id,
                CloseReason::Aborted,
                started,
                why,
            ))
            .await;
        }
    }
}

impl Broker {
    pub(crate) fn stats_connect(&self, version: Version, accepted: bool) {
        let result = if accepted { "accepted" } else { "refused" };
        metrics::counter!(crate::metrics::CONNECTS, "protocol" => version.label(), "result" => result).increment(1);
    }
}

/// A close before any session exists (no CONNECT, a bad or refused CONNECT, a timeout):
/// what is owed (a CONNACK refusal) is flushed briefly, then the close is logged and counted.
async fn close_unattached<R, W>(
    mut io: Io<R, W>,
    peer: SocketAddr,
    client_id: Option<&str>,
    reason: CloseReason,
    started: Instant,
    detail: Option<&str>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, io.flush_all()).await;
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, io.writer.shutdown()).await;
    log_close(client_id, peer, reason, started, detail);
}

pub(crate) fn log_close(
    client_id: Option<&str>,
    peer: SocketAddr,
    reason: CloseReason,
    started: Instant,
    detail: Option<&str>,
) {
    metrics::counter!(crate::metrics::CONNECTIONS_CLOSED, "reason" => reason.label()).increment(1);
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

/// The socket halves and their buffers.
struct Io<R, W> {
    reader: R,
    writer: W,
    rbuf: BytesMut,
    /// `rbuf` was sized for one large packet (dropped once that packet is consumed).
    exact_frame: bool,
    out: OutBuf,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Io<R, W> {
    async fn read_connect(
        &mut self,
        broker: &Broker,
        max: usize,
    ) -> Result<Box<Connect>, CloseReason> {
        loop {
            match protocol::decode(&mut self.rbuf, None, max) {
                Ok(Some(Packet::Connect(connect))) => return Ok(connect),
                Ok(Some(_)) => {
                    return Err(CloseReason::InvalidInboundMessage(InvalidKind::Protocol));
                }
                Ok(None) => {}
                Err(DecodeError::UnsupportedProtocolVersion(_)) => {
                    // MQTT-3.1.2-2: answer with return code 0x01 and close. The 3.1.1 form is
                    // the one every client level can read.
                    let connack = Packet::ConnAck(ConnAck {
                        session_present: false,
                        reason_code: 0x84,
                        properties: ConnAckProperties::default(),
                    });
                    if let Err(error) = protocol::encode(&connack, Version::V311, self.out.buf()) {
                        tracing::error!(%error, "CONNACK could not be encoded");
                    }
                    return Err(CloseReason::Aborted);
                }
                Err(error) => return Err(decode_close_reason(&error)),
            }
            self.reserve_for_frame(1024);
            match self.reader.read_buf(&mut self.rbuf).await {
                Ok(0) => return Err(CloseReason::ConnectionLost),
                Ok(n) => broker.stats.bytes_received.increment(n as u64),
                Err(_) => return Err(CloseReason::IoException),
            }
        }
    }

    async fn flush_all(&mut self) -> std::io::Result<()> {
        self.out.flush_to(&mut self.writer).await
    }
}

impl<R, W> Io<R, W> {
    /// Makes room in `rbuf` for the next read. A packet larger than the buffer gets a buffer of
    /// exactly its size: its payload is sliced from the buffer and kept by every queue it
    /// reaches, and a buffer grown by doubling would keep up to twice the packet alive. Once
    /// such a packet is consumed, its buffer is let go rather than reclaimed for later reads.
    fn reserve_for_frame(&mut self, min_spare: usize) {
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

fn decode_close_reason(error: &DecodeError) -> CloseReason {
    match error {
        DecodeError::PacketTooLarge { .. } => CloseReason::MessageTooLarge,
        DecodeError::Malformed(_) => CloseReason::InvalidInboundMessage(InvalidKind::Malformed),
        DecodeError::Protocol(_) => CloseReason::InvalidInboundMessage(InvalidKind::Protocol),
        DecodeError::TopicNameInvalid(_) => {
            CloseReason::InvalidInboundMessage(InvalidKind::TopicName)
        }
        DecodeError::UnsupportedProtocolVersion(_) => CloseReason::Aborted,
    }
}

/// A CONNECT that was refused with a CONNACK.
struct Refused {
    version: Version,
    client_id: Option<String>,
    why: String,
    /// The v5 CONNACK reason code (the metrics' `code` label).
    code: u8,
}

fn refuse<R, W>(
    io: &mut Io<R, W>,
    version: Version,
    code: u8,
    client_id: Option<String>,
    why: &str,
) -> Refused {
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: code,
        properties: ConnAckProperties::default(),
    });
    if let Err(error) = protocol::encode(&connack, version, io.out.buf()) {
        tracing::error!(%error, "CONNACK could not be encoded");
    }
    Refused {
        version,
        client_id,
        why: why.to_string(),
        code,
    }
}

/// Checks the CONNECT, takes the session from the table (taking it over from a connected
/// owner if there is one), and sends CONNACK.
async fn accept<R, W>(
    broker: &Arc<Broker>,
    ctx: &ConnectionContext,
    connect: Box<Connect>,
    io: &mut Io<R, W>,
) -> Result<Connection, Refused>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let version = connect.version;
    let limits = &broker.config.limits;
    if ctx.over_limit {
        return Err(refuse(
            io,
            version,
            0x97,
            Some(connect.client_id.clone()),
            "max_connections reached",
        ));
    }
    if connect.authentication_method.is_some() {
        return Err(refuse(
            io,
            version,
            0x8C,
            Some(connect.client_id.clone()),
            "enhanced authentication is not supported",
        ));
    }
    // Password checks wait their turn in the login gate (bounded, fair between addresses).
    let login = broker.auth.login(LoginRequest {
        peer: ctx.peer,
        username: connect.username.as_deref(),
        password: connect.password.as_ref(),
        identity: &ctx.identity,
    });
    if let Err(refusal) = login.await {
        let (code, why) = (refusal.reason_code(), refusal.detail());
        return Err(refuse(
            io,
            version,
            code,
            Some(connect.client_id.clone()),
            &why,
        ));
    }
    if let Some(will) = &connect.will
        && (router::validate_topic_name(&will.topic).is_err()
            || router::levels(&will.topic) > limits.max_topic_levels)
    {
        // The will topic is a topic name: no wildcards (MQTT-3.1.3-11 asks for a valid
        // UTF-8 topic name; v5 names 0x90 Topic Name Invalid for a bad one).
        return Err(refuse(
            io,
            version,
            0x90,
            Some(connect.client_id.clone()),
            "invalid will topic",
        ));
    }

    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        if version == Version::V311 && !connect.clean_start {
            // MQTT-3.1.3-8: an empty client id needs clean session 1 in 3.1.1.
            return Err(refuse(
                io,
                version,
                0x85,
                None,
                "empty client id without clean session",
            ));
        }
        let id = broker.assign_client_id();
        assigned = Some(id.clone());
        Arc::from(id)
    } else {
        Arc::from(connect.client_id.as_str())
    };

    // Keep-alive: a cap from max_keep_alive. v5 tells the client (Server Keep Alive); 3.1.1
    // has no way to, so, as Mosquitto does, a 3.1.1 client asking for more is refused with a
    // reason it can log rather than cut off later for a rule it was never told.
    let cap = u16::try_from(limits.max_keep_alive.as_secs()).unwrap_or(u16::MAX);
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if cap > 0 && (keep_alive == 0 || keep_alive > cap) {
        if version == Version::V311 {
            return Err(refuse(
                io,
                version,
                0x85,
                Some(client_id.to_string()),
                "keep-alive above max_keep_alive",
            ));
        }
        keep_alive = cap;
        server_keep_alive = Some(cap);
    }

    let max_expiry = broker.max_session_expiry();
    let (expiry, expiry_capped) = match version {
        Version::V311 => (if connect.clean_start { 0 } else { max_expiry }, false),
        Version::V5 => {
            let asked = connect.session_expiry_interval.unwrap_or(0);
            (asked.min(max_expiry), asked > max_expiry)
        }
    };

    // Take the session.
    let mailbox = Mailbox::new();
    let new_outbox = || {
        Arc::new(Outbox::new(
            QueueLimits::from_config(limits),
            broker.stats.queued.clone(),
        ))
    };
    let attached =
        broker
            .registry
            .attach(&client_id, mailbox.clone(), connect.clean_start, new_outbox);
    let previous = match attached.previous {
        Previous::Nothing => None,
        Previous::Waiting(session) => Some(session),
        Previous::Connected(old) => {
            let (reply_tx, reply_rx) = oneshot::channel();
            if old.send(Control::TakeOver { reply: reply_tx }) {
                match tokio::time::timeout(TAKEOVER_TIMEOUT, reply_rx).await {
                    Ok(Ok(session)) => session,
                    Ok(Err(_)) => None,
                    Err(_) => {
                        tracing::warn!(client_id = %LogId(&client_id), "takeover: the old connection did not hand its session over in time");
                        None
                    }
                }
            } else {
                None
            }
        }
    };
    let mut session_present = false;
    let mut session = match previous {
        Some(old) if !connect.clean_start => {
            session_present = true;
            old
        }
        Some(old) => {
            // Clean start: the old session ends here, its will (if still delayed) with it.
            let outbox = attached
                .replaced_outbox
                .clone()
                .unwrap_or_else(|| attached.outbox.clone());
            broker.end_session(old, &outbox);
            Box::new(Session::new(client_id.clone(), version))
        }
        None => Box::new(Session::new(client_id.clone(), version)),
    };
    if let Some(outbox) = &attached.replaced_outbox {
        outbox.close();
    }
    session.version = version;
    session.expiry_interval = expiry;
    // A resumed session's delayed will is cancelled: its client is back (MQTT-3.1.3-9 / v5
    // §3.1.3.2.2); the new connection's will replaces it.
    session.will = connect.will.clone().map(|will| Will {
        payload: own_payload(will.payload),
        ..will
    });

    let properties = if version == Version::V5 {
        ConnAckProperties {
            session_expiry_interval: expiry_capped.then_some(expiry),
            receive_maximum: Some(limits.receive_maximum),
            maximum_packet_size: Some(limits.max_packet_size),
            assigned_client_identifier: assigned,
            topic_alias_maximum: Some(INBOUND_TOPIC_ALIAS_MAX),
            retain_available: Some(true),
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(true),
            shared_subscription_available: Some(true),
            server_keep_alive,
            ..ConnAckProperties::default()
        }
    } else {
        ConnAckProperties::default()
    };
    let connack = Packet::ConnAck(ConnAck {
        session_present,
        reason_code: 0,
        properties,
    });
    if let Err(error) = protocol::encode(&connack, version, io.out.buf()) {
        tracing::error!(%error, "CONNACK could not be encoded");
    }
    broker.stats_connect(version, true);
    tracing::info!(client_id = %LogId(&client_id), peer = %ctx.peer, protocol = version.label(), clean_start = connect.clean_start, keep_alive, user = connect.username.as_deref().map(|u| tracing::field::display(LogId(u))), session_present, "client connected");

    let now = Instant::now();
    let keep_alive = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    let ttl = (!limits.connection_ttl.is_zero()).then_some(limits.connection_ttl);
    let mut conn = Connection {
        broker: broker.clone(),
        peer: ctx.peer,
        version,
        client_id,
        generation: attached.generation,
        outbox: attached.outbox,
        session,
        mailbox,
        shutdown: ctx.shutdown.clone(),
        keep_alive,
        ttl,
        last_inbound: now,
        client_receive_maximum: connect.receive_maximum.unwrap_or(u16::MAX).max(1),
        client_maximum_packet_size: connect.maximum_packet_size,
        client_topic_alias_maximum: connect.topic_alias_maximum.unwrap_or(0),
        inbound_aliases: HashMap::new(),
        outbound_aliases: HashMap::new(),
        outbound_alias_bytes: 0,
        batch: Vec::new(),
        received: [0; 3],
        will_on_close: false,
        takeover_reply: None,
        scratch: Vec::new(),
        close_detail: None,
        output_stalled: false,
    };
    conn.resend_inflight(&mut io.out);
    Ok(conn)
}

/// A connected client's state. The session is owned here while connected.
struct Connection {
    broker: Arc<Broker>,
    peer: SocketAddr,
    version: Version,
    client_id: Arc<str>,
    /// This connection's generation in the session table (compare-and-act on detach).
    generation: u64,
    outbox: Arc<Outbox>,
    session: Box<Session>,
    /// The session table's mailbox to this connection (takeover, administrative close).
    mailbox: Arc<Mailbox>,
    shutdown: watch::Receiver<bool>,
    /// 1.5 x the negotiated keep-alive; `None` = no keep-alive.
    keep_alive: Option<Duration>,
    /// `connection_ttl`: the server's own silence limit, whatever keep-alive was asked.
    ttl: Option<Duration>,
    /// When the last complete inbound packet arrived; only inbound packets move it.
    last_inbound: Instant,
    client_receive_maximum: u16,
    client_maximum_packet_size: Option<u32>,
    client_topic_alias_maximum: u16,
    inbound_aliases: HashMap<u16, Arc<str>>,
    outbound_aliases: HashMap<Arc<str>, u16>,
    /// Bytes of topic held by `outbound_aliases`.
    outbound_alias_bytes: usize,
    /// Inbound publishes of the current read, routed together.
    batch: Vec<Arc<Message>>,
    /// Inbound publishes of the current read by QoS, counted together.
    received: [u64; 3],
    /// A v5 DISCONNECT with 0x04 asked for the will.
    will_on_close: bool,
    takeover_reply: Option<oneshot::Sender<Option<Box<Session>>>>,
    scratch: Vec<Delivery>,
    /// Why, in more words than the reason's label (an I/O error's cause, say), for the log.
    close_detail: Option<String>,
    /// Closed because the client stopped reading: no final DISCONNECT is attempted.
    output_stalled: bool,
}

/// Deadlines of the main loop besides keep-alive.
#[derive(Default)]
struct Timers {
    /// Set when shutdown began: the drain ends here at the latest.
    drain_at: Option<Instant>,
    /// Set while output is over the high-water mark: closed here unless a write progresses.
    stall_at: Option<Instant>,
}

impl Drop for Connection {
    /// However the connection ends (even by a panic), its mailbox closes: a takeover that
    /// arrives later learns at once that there is no one to hand the session over.
    fn drop(&mut self) {
        self.mailbox.close();
    }
}

impl Connection {
    fn deadline(&self) -> Option<Instant> {
        let by_keep_alive = self.keep_alive.map(|d| self.last_inbound + d);
        let by_ttl = self.ttl.map(|d| self.last_inbound + d);
        match (by_keep_alive, by_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next instant the loop must wake for: keep-alive / TTL, the shutdown drain deadline,
    /// or the unread-output deadline, whichever comes first.
    fn next_wake(&self, timers: &Timers) -> Option<Instant> {
        [self.deadline(), timers.drain_at, timers.stall_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// What a wake-up at `now` means: a close reason, or nothing (a timer moved).
    fn on_wake(&mut self, timers: &Timers, now: Instant) -> Option<CloseReason> {
        if timers.drain_at.is_some_and(|at| at <= now) {
            return Some(CloseReason::ServerShutdown);
        }
        if let Some(at) = timers.stall_at
            && at <= now
        {
            self.close_detail = Some(format!(
                "output not read for {}",
                humantime::format_duration(self.broker.config.limits.write_timeout)
            ));
            self.output_stalled = true;
            return Some(CloseReason::ClientUnresponsive);
        }
        if self.deadline().is_some_and(|at| at <= now) {
            return Some(CloseReason::ClientUnresponsive);
        }
        None
    }

    async fn run<R, W>(&mut self, io: &mut Io<R, W>) -> CloseReason
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let max = self.broker.config.limits.max_packet_size as usize;
        // Packets that came in the same read as the CONNECT are handled before waiting for
        // more bytes (a client may pipeline SUBSCRIBE or PUBLISH right behind its CONNECT).
        if !io.rbuf.is_empty()
            && let Err(reason) = self.handle_input(&mut io.rbuf, &mut io.out, max)
        {
            return reason;
        }
        let write_timeout = self.broker.config.limits.write_timeout;
        let mut timers = Timers::default();
        // One timer for every deadline, re-armed only when the earliest one moves.
        let mut armed = self.next_wake(&timers);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let wake = tokio::time::sleep_until(armed.unwrap_or(far).into());
        tokio::pin!(wake);
        let mut shutdown = self.shutdown.clone();
        let mut read_filled = false;
        // One long-lived wait on the outbox, re-armed after each wake-up, rather than a new
        // one per pass of the loop.
        let outbox = self.outbox.clone();
        let queued = outbox.notify().notified();
        tokio::pin!(queued);
        loop {
            if self.outbox.is_overflowed() {
                return CloseReason::MessageQueueLimitReached;
            }
            self.pump(&mut io.out);
            // Graceful shutdown drains: the connection goes on until what was routed to it has
            // been written and acknowledged, or until the drain deadline.
            if timers.drain_at.is_some()
                && io.out.is_empty()
                && self.session.inflight_out.is_empty()
                && self.outbox.is_empty()
            {
                return CloseReason::ServerShutdown;
            }
            // Back-pressure: a client that does not read its output is not read from either,
            // so what it sends (PINGREQ, QoS 1 PUBLISH, ...) cannot pile up answers here; if
            // it stays so for write_timeout, it is closed.
            let backlogged = io.out.len() >= WRITE_HIGH_WATER;
            if !backlogged {
                timers.stall_at = None;
            } else if timers.stall_at.is_none() && !write_timeout.is_zero() {
                timers.stall_at = Some(Instant::now() + write_timeout);
            }
            let next = self.next_wake(&timers);
            if next != armed {
                armed = next;
                wake.as_mut().reset(armed.unwrap_or(far).into());
            }
            // Read buffer sizing: small while the client is quiet (idle connections are most
            // connections), large once a read fills it (a busy publisher: fewer syscalls), and
            // exact for a packet larger than the buffer.
            io.reserve_for_frame(if read_filled { READ_BURST } else { 512 });
            let spare = io.rbuf.capacity() - io.rbuf.len();
            tokio::select! {
                control = self.mailbox.recv() => match control {
                    Control::TakeOver { reply } => {
                        self.takeover_reply = Some(reply);
                        // Input that reached the socket before the takeover still counts: a
                        // client that sent DISCONNECT and reconnected at once ends its
                        // session on its own terms (a clean session is not handed over).
                        if let Ok(Ok(n)) = tokio::time::timeout(
                            Duration::ZERO,
                            io.reader.read_buf(&mut io.rbuf),
                        )
                        .await
                            && n > 0
                            && let Err(reason) = self.handle_input(&mut io.rbuf, &mut io.out, max)
                        {
                            return reason;
                        }
                        return CloseReason::SessionTakenOver;
                    }
                    Control::Close(reason) => return reason,
                },
                _ = crate::server::stopped(&mut shutdown), if timers.drain_at.is_none() => {
                    timers.drain_at = Some(Instant::now() + self.broker.config.limits.shutdown_drain);
                }
                read = io.reader.read_buf(&mut io.rbuf), if io.rbuf.len() <= max && !backlogged => match read {
                    Ok(0) => return CloseReason::ConnectionLost,
                    Err(error) => {
                        self.close_detail = Some(format!("read failed: {error}"));
                        return CloseReason::IoException;
                    }
                    Ok(n) => {
                        read_filled = n >= spare;
                        self.broker.stats.bytes_received.increment(n as u64);
                        if let Err(reason) = self.handle_input(&mut io.rbuf, &mut io.out, max) {
                            return reason;
                        }
                        if io.rbuf.is_empty() && !read_filled && io.rbuf.capacity() > READ_BURST {
                            io.rbuf = BytesMut::new();
                        }
                    }
                },
                written = io.out.write_to(&mut io.writer), if !io.out.is_empty() => match written {
                    Ok(0) => return CloseReason::IoException,
                    Err(error) => {
                        self.close_detail = Some(format!("write failed: {error}"));
                        return CloseReason::IoException;
                    }
                    Ok(n) => {
                        self.broker.stats.bytes_sent.increment(n as u64);
                        // Progress: the unread-output deadline starts again if still needed.
                        timers.stall_at = None;
                    }
                },
                _ = &mut queued => queued.set(outbox.notify().notified()),
                _ = &mut wake, if armed.is_some() => {
                    if let Some(reason) = self.on_wake(&timers, Instant::now()) {
                        return reason;
                    }
                }
            }
        }
    }

    /// Decodes every whole packet in `rbuf` and handles it; routes the publishes together.
    fn handle_input(
        &mut self,
        rbuf: &mut BytesMut,
        out: &mut OutBuf,
        max: usize,
    ) -> Result<(), CloseReason> {
        let mut result = Ok(());
        loop {
            match protocol::decode(rbuf, Some(self.version), max) {
                Ok(Some(packet)) => {
                    self.last_inbound = Instant::now();
                    // Publishes are routed in batches (one index lock per read), but a packet
                    // that changes subscriptions must see the publishes before it routed
                    // first: effects happen in the order of the packets.
                    if matches!(packet, Packet::Subscribe(_) | Packet::Unsubscribe(_)) {
                        self.route_batch();
                    }
                    if let Err(reason) = self.handle_packet(packet, out) {
                        result = Err(reason);
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(client_id = %LogId(&self.client_id), %error, "bad inbound packet");
                    result = Err(decode_close_reason(&error));
                    break;
                }
            }
        }
        // Publishes accepted before a bad packet are still routed: their acks may be out.
        for (counter, n) in self
            .broker
            .stats
            .received
            .iter()
            .zip(std::mem::take(&mut self.received))
        {
            if n > 0 {
                counter.increment(n);
            }
        }
        self.route_batch();
        result
    }

    fn route_batch(&mut self) {
        if !self.batch.is_empty() {
            self.broker.publish_batch(&self.batch, &self.client_id);
            self.batch.clear();
        }
    }

    fn send(&self, packet: &Packet, out: &mut OutBuf) -> Result<(), CloseReason> {
        protocol::encode(packet, self.version, out.buf()).map_err(|error| {
            tracing::error!(client_id = %LogId(&self.client_id), %error, "outbound packet could not be encoded");
            CloseReason::InternalError
        })
    }

    fn handle_packet(&mut self, packet: Packet, out: &mut OutBuf) -> Result<(), CloseReason> {
        let protocol_error = CloseReason::InvalidInboundMessage(InvalidKind::Protocol);
        match packet {
            Packet::PingReq => self.send(&Packet::PingResp, out),
            Packet::Publish(publish) => self.handle_publish(publish, out),
            Packet::PubAck(ack) => {
                if let Some(pos) = self.session.inflight_position(ack.packet_id)
                    && self.session.inflight_out[pos].state == OutboundState::AwaitingPubAck
                {
                    self.session.inflight_out.remove(pos);
                }
                Ok(())
            }
            Packet::PubRec(ack) => {
                let pos = self.session.inflight_position(ack.packet_id);
                match pos {
                    Some(pos)
                        if self.session.inflight_out[pos].state
                            != OutboundState::AwaitingPubAck =>
                    {
                        if ack.reason_code >= 0x80 {
                            self.session.inflight_out.remove(pos);
                            return Ok(());
                        }
                        self.session.inflight_out[pos].state = OutboundState::AwaitingPubComp;
                        self.send(&Packet::PubRel(Ack::success(ack.packet_id)), out)
                    }
                    _ => {
                        // MQTT 5.0 §3.6.2.1: 0x92 Packet Identifier not found.
                        let rel = Ack {
                            packet_id: ack.packet_id,
                            reason_code: 0x92,
                            reason_string: None,
                        };
                        self.send(&Packet::PubRel(rel), out)
                    }
                }
            }
            Packet::PubRel(ack) => {
                let found = self.session.inbound_qos2.remove(&ack.packet_id);
                let reason_code = if found { 0 } else { 0x92 };
                self.send(
                    &Packet::PubComp(Ack {
                        packet_id: ack.packet_id,
                        reason_code,
                        reason_string: None,
                    }),
                    out,
                )
            }
            Packet::PubComp(ack) => {
                if let Some(pos) = self.session.inflight_position(ack.packet_id)
                    && self.session.inflight_out[pos].state == OutboundState::AwaitingPubComp
                {
                    self.session.inflight_out.remove(pos);
                }
                Ok(())
            }
            Packet::Subscribe(subscribe) => self.handle_subscribe(subscribe, out),
            Packet::Unsubscribe(unsubscribe) => self.handle_unsubscribe(unsubscribe, out),
            Packet::Disconnect(disconnect) => self.handle_disconnect(disconnect),
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp
            | Packet::Auth(_) => Err(protocol_error),
        }
    }

    fn handle_publish(
        &mut self,
        mut publish: Publish,
        out: &mut OutBuf,
    ) -> Result<(), CloseReason> {
        // Topic aliases (v5 §3.3.2.3.4).
        let topic: Arc<str> = match publish.topic_alias {
            Some(alias) => {
                if alias == 0 || alias > INBOUND_TOPIC_ALIAS_MAX {
                    return Err(CloseReason::InvalidInboundMessage(InvalidKind::TopicAlias));
                }
                if publish.topic.is_empty() {
                    match self.inbound_aliases.get(&alias) {
                        Some(topic) => topic.clone(),
                        None => {
                            return Err(CloseReason::InvalidInboundMessage(InvalidKind::Protocol));
                        }
                    }
                } else {
                    let topic: Arc<str> = Arc::from(publish.topic.as_str());
                    self.inbound_aliases.insert(alias, topic.clone());
                    topic
                }
            }
            None => Arc::from(publish.topic.as_str()),
        };
        if router::validate_topic_name(&topic).is_err()
            || router::levels(&topic) > self.broker.config.limits.max_topic_levels
        {
            return Err(CloseReason::InvalidInboundMessage(InvalidKind::TopicName));
        }
        self.received[publish.qos as usize] += 1;
        let duplicate = match publish.qos {
            QoS::ExactlyOnce => {
                if self.session.inbound_qos2.contains(&publish.packet_id) {
                    true
                } else {
                    let limit = usize::from(self.broker.config.limits.receive_maximum);
                    if self.session.inbound_qos2.len() >= limit {
                        return Err(CloseReason::InvalidInboundMessage(
                            InvalidKind::ReceiveMaximum,
                        ));
                    }
                    self.session.inbound_qos2.insert(publish.packet_id);
                    false
                }
            }
            _ => false,
        };
        if !duplicate {
            let now = Instant::now();
            let expires_at = publish
                .properties
                .message_expiry_interval
                .map(|secs| now + Duration::from_secs(u64::from(secs)));
            let properties = protocol::encode_passthrough_properties(&publish.properties)
                .map_err(|error| {
                    tracing::error!(client_id = %LogId(&self.client_id), %error, "PUBLISH properties could not be re-encoded");
                    CloseReason::InternalError
                })?;
            self.batch.push(Arc::new(Message {
                topic,
                payload: own_payload(std::mem::take(&mut publish.payload)),
                qos: publish.qos,
                retain: publish.retain,
                properties,
                expires_at,
            }));
        }
        match publish.qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => self.send(&Packet::PubAck(Ack::success(publish.packet_id)), out),
            QoS::ExactlyOnce => self.send(&Packet::PubRec(Ack::success(publish.packet_id)), out),
        }
    }

    fn handle_subscribe(
        &mut self,
        subscribe: Subscribe,
        out: &mut OutBuf,
    ) -> Result<(), CloseReason> {
        let mut reason_codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained_for: Vec<(String, QoS)> = Vec::new();
        let limits = &self.broker.config.limits;
        let refused = |v5_code: u8| {
            if self.version == Version::V5 {
                v5_code
            } else {
                0x80
            }
        };
        {
            let mut table = self.broker.subscriptions_mut();
            for request in &subscribe.filters {
                let parsed = match router::parse_filter(&request.filter) {
                    Ok(parsed) if router::levels(parsed.filter) <= limits.max_topic_levels => {
                        parsed
                    }
                    // 0x8F Topic Filter invalid (deeper than limits.max_topic_levels, or bad).
                    _ => {
                        reason_codes.push(refused(0x8F));
                        continue;
                    }
                };
                let shared = parsed.share_group.is_some();
                if shared && request.no_local {
                    // MQTT-3.8.3-4: No Local on a shared subscription is a Protocol Error.
                    return Err(CloseReason::InvalidInboundMessage(InvalidKind::Protocol));
                }
                if !self.session.subscriptions.contains_key(&request.filter)
                    && self.session.subscriptions.len() >= limits.max_subscriptions_per_client
                {
                    // 0x97 Quota exceeded (limits.max_subscriptions_per_client).
                    reason_codes.push(refused(0x97));
                    continue;
                }
                let options = SubscriptionOptions {
                    qos: request.qos,
                    no_local: request.no_local,
                    retain_as_published: request.retain_as_published,
                    subscription_identifier: subscribe.subscription_identifier,
                };
                let existed = table.subscribe(
                    &self.client_id,
                    self.outbox.clone(),
                    &request.filter,
                    options.clone(),
                );
                self.session
                    .subscriptions
                    .insert(request.filter.clone(), options);
                reason_codes.push(request.qos as u8);
                // Retained messages are not sent for shared subscriptions (MQTT 5.0 §4.8.2).
                let send_retained = !shared
                    && match request.retain_handling {
                        RetainHandling::SendAtSubscribe => true,
                        RetainHandling::SendIfNew => !existed,
                        RetainHandling::DoNotSend => false,
                    };
                // One SUBSCRIBE naming a filter twice replaces one subscription: its retained
                // messages go once, with the last options.
                retained_for.retain(|(f, _)| f != parsed.filter);
                if send_retained {
                    retained_for.push((parsed.filter.to_string(), request.qos));
                }
            }
            self.broker.stats.subscriptions.set(table.len() as f64);
        }
        let suback = SubAck {
            packet_id: subscribe.packet_id,
            reason_codes,
            reason_string: None,
        };
        self.send(&Packet::SubAck(suback), out)?;
        self.queue_retained(retained_for, subscribe.subscription_identifier);
        Ok(())
    }

    /// Retained messages for new subscriptions go through the session's queue, after the
    /// SUBACK and behind what is already queued, so the queue's limits apply: a SUBSCRIBE
    /// matching more than the queue holds meets `queue_full_policy` like any other burst.
    fn queue_retained(&mut self, filters: Vec<(String, QoS)>, id: Option<u32>) {
        if filters.is_empty() {
            return;
        }
        // One more than the queue holds: enough to meet the policy (an overflow under
        // `disconnect`), never the whole retained store in memory at once.
        let capacity = self.broker.config.limits.max_queue_depth + 1;
        let retained = self.broker.retained();
        let mut messages = Vec::new();
        let mut dropped = 0;
        for (filter, qos) in filters {
            messages.clear();
            if retained.matching_up_to(&filter, capacity, &mut messages) {
                // More match than the queue can ever hold at once: those beyond are dropped
                // by the policy (or the overflow closes the session first).
                dropped += retained.count_matching(&filter) - messages.len();
            }
            for message in messages.drain(..) {
                let delivery = Delivery {
                    qos: message.qos.min(qos),
                    message,
                    // MQTT-3.3.1-8: retained messages sent on subscribe keep RETAIN 1.
                    retain: true,
                    subscription_identifiers: id.into_iter().collect(),
                };
                match self.outbox.offer(delivery) {
                    Offer::Queued | Offer::NotQueuedOffline => {}
                    Offer::DroppedQueueFull(n) => dropped += n,
                    // The connection closes with message_queue_limit_reached.
                    Offer::Overflowed | Offer::Closed => return,
                }
            }
        }
        if dropped > 0 {
            self.broker
                .stats
                .dropped_queue_full
                .increment(dropped as u64);
        }
    }

    fn handle_unsubscribe(
        &mut self,
        unsubscribe: Unsubscribe,
        out: &mut OutBuf,
    ) -> Result<(), CloseReason> {
        let mut reason_codes = Vec::with_capacity(unsubscribe.filters.len());
        {
            let mut table = self.broker.subscriptions_mut();
            for filter in &unsubscribe.filters {
                let existed = table.unsubscribe(&self.client_id, filter);
                self.session.subscriptions.remove(filter);
                reason_codes.push(if existed { 0x00 } else { 0x11 });
            }
            self.broker.stats.subscriptions.set(table.len() as f64);
        }
        self.send(
            &Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                reason_codes,
            }),
            out,
        )
    }

    fn handle_disconnect(&mut self, disconnect: Disconnect) -> Result<(), CloseReason> {
        if let Some(expiry) = disconnect.session_expiry_interval {
            // MQTT-3.14.2-2: a session that was to end with its connection cannot be given
            // an expiry at DISCONNECT.
            if self.session.expiry_interval == 0 && expiry > 0 {
                return Err(CloseReason::InvalidInboundMessage(InvalidKind::Protocol));
            }
            self.session.expiry_interval = expiry.min(self.broker.max_session_expiry());
        }
        self.will_on_close = disconnect.reason_code == 0x04;
        Err(CloseReason::ClosedByClient)
    }

    /// After a resume: unacknowledged messages go again, PUBLISH with DUP, PUBREL as PUBREL
    /// (MQTT-4.4.0-1).
    fn resend_inflight(&mut self, out: &mut OutBuf) {
        let inflight: Vec<InflightOut> = self.session.inflight_out.iter().cloned().collect();
        for entry in inflight {
            match entry.state {
                OutboundState::AwaitingPubAck | OutboundState::AwaitingPubRec => {
                    let outgoing = self.outgoing(&entry.delivery, entry.packet_id, true);
                    self.write_publish(&outgoing, &entry.delivery.message.payload, out);
                }
                OutboundState::AwaitingPubComp => {
                    let _ = self.send(&Packet::PubRel(Ack::success(entry.packet_id)), out);
                }
            }
        }
    }

    fn inflight_limit(&self) -> usize {
        usize::from(
            self.broker
                .config
                .limits
                .max_inflight
                .min(self.client_receive_maximum),
        )
    }

    /// Moves deliveries from the outbox into `out`, within the in-flight window and the write
    /// high-water mark. Counts what it sent once per batch, not per message.
    fn pump(&mut self, out: &mut OutBuf) {
        let mut sent = [0u64; 3];
        while out.len() < WRITE_HIGH_WATER {
            let budget = self
                .inflight_limit()
                .saturating_sub(self.session.inflight_out.len());
            let mut batch = std::mem::take(&mut self.scratch);
            self.outbox.drain(DRAIN_BATCH, budget, &mut batch);
            let empty = batch.is_empty();
            for delivery in batch.drain(..) {
                if let Some(qos) = self.deliver(delivery, out) {
                    sent[qos as usize] += 1;
                }
            }
            self.scratch = batch;
            if empty {
                break;
            }
        }
        for (counter, n) in self.broker.stats.sent.iter().zip(sent) {
            if n > 0 {
                counter.increment(n);
            }
        }
    }

    /// The PUBLISH for `delivery` as it would go without a topic alias, borrowing everything
    /// from the shared message.
    fn outgoing<'a>(&self, delivery: &'a Delivery, packet_id: u16, dup: bool) -> Outgoing<'a> {
        let message = &delivery.message;
        let v5 = self.version == Version::V5;
        Outgoing {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic: &message.topic,
            packet_id,
            topic_alias: None,
            subscription_identifiers: if v5 {
                &delivery.subscription_identifiers
            } else {
                &[]
            },
            message_expiry: if v5 {
                message.remaining_expiry(Instant::now())
            } else {
                None
            },
            properties: if v5 { &message.properties } else { &[] },
            payload_len: message.payload.len(),
        }
    }

    /// The topic alias to use for `topic` (v5 §3.3.2.3.4): `(alias, known)`. A known topic
    /// goes as its alias alone; a new one gets the next free alias while any is left and the
    /// table stays under [`OUTBOUND_ALIAS_BYTES`] of topics (a client offering 65,535 aliases
    /// must not make brokk keep every long topic it ever sent).
    fn topic_alias(&mut self, topic: &Arc<str>) -> Option<(u16, bool)> {
        if self.version != Version::V5 || self.client_topic_alias_maximum == 0 {
            return None;
        }
        if let Some(alias) = self.outbound_aliases.get(topic) {
            return Some((*alias, true));
        }
        let entries_left =
            self.outbound_aliases.len() < usize::from(self.client_topic_alias_maximum);
        let bytes_left = self.outbound_alias_bytes + topic.len() <= OUTBOUND_ALIAS_BYTES;
        if !(entries_left && bytes_left) {
            return None;
        }
        let alias = self.outbound_aliases.len() as u16 + 1;
        self.outbound_aliases.insert(topic.clone(), alias);
        self.outbound_alias_bytes += topic.len();
        Some((alias, false))
    }

    /// Appends one PUBLISH: the head encoded, the payload copied or referenced.
    fn write_publish(&self, outgoing: &Outgoing<'_>, payload: &bytes::Bytes, out: &mut OutBuf) {
        match protocol::encode_outgoing_head(outgoing, self.version, out.buf()) {
            Ok(()) => out.put_payload(payload),
            Err(error) => {
                tracing::error!(client_id = %LogId(&self.client_id), %error, "PUBLISH could not be encoded")
            }
        }
    }

    /// Encodes one delivery into `out`; the QoS it went at, or `None` if it was dropped.
    fn deliver(&mut self, delivery: Delivery, out: &mut OutBuf) -> Option<QoS> {
        let stats = &self.broker.stats;
        if delivery.message.is_expired(Instant::now()) {
            stats.dropped_expired.increment(1);
            return None;
        }
        // The client's Maximum Packet Size (MQTT-3.1.2-24), measured without an alias: the
        // largest form this message could take.
        if let Some(limit) = self.client_maximum_packet_size {
            let size = self.outgoing(&delivery, 1, false).len(self.version);
            if size.unwrap_or(usize::MAX) > limit as usize {
                stats.dropped_too_large.increment(1);
                return None;
            }
        }
        let packet_id = if delivery.qos == QoS::AtMostOnce {
            0
        } else {
            self.session.allocate_packet_id()?
        };
        let alias = self.topic_alias(&delivery.message.topic);
        let mut outgoing = self.outgoing(&delivery, packet_id, false);
        if let Some((alias, known)) = alias {
            outgoing.topic_alias = Some(alias);
            if known {
                outgoing.topic = "";
            }
        }
        self.write_publish(&outgoing, &delivery.message.payload, out);
        let qos = delivery.qos;
        if qos != QoS::AtMostOnce {
            let state = if qos == QoS::AtLeastOnce {
                OutboundState::AwaitingPubAck
            } else {
                OutboundState::AwaitingPubRec
            };
            self.session.inflight_out.push_back(InflightOut {
                packet_id,
                delivery,
                state,
            });
        }
        Some(qos)
    }

    /// Ends the connection: tell a v5 client why, flush what is owed within the deadline,
    /// hand the session back (or over), fire the will, log and count once.
    async fn finish<R, W>(mut self, mut io: Io<R, W>, reason: CloseReason, started: Instant)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // Nothing more can be written to a peer that is gone, or that has stopped reading.
        let peer_gone = self.output_stalled
            || matches!(
                reason,
                CloseReason::ConnectionLost | CloseReason::IoException
            );
        if !peer_gone {
            let deadline = CLOSE_WRITE_TIMEOUT;
            if self.version == Version::V5
                && let Some(code) = reason.disconnect_code()
            {
                let mut disconnect =
                    Disconnect::with_reason(code, Some(reason.label().to_string()));
                // MQTT-3.14.2-3: no Reason String if it would take the packet past the
                // client's Maximum Packet Size.
                if let Some(limit) = self.client_maximum_packet_size {
                    let packet = Packet::Disconnect(disconnect.clone());
                    let size = protocol::encoded_len(&packet, self.version).unwrap_or(usize::MAX);
                    if size > limit as usize {
                        disconnect.reason_string = None;
                    }
                }
                let _ = self.send(&Packet::Disconnect(disconnect), &mut io.out);
            }
            let _ = tokio::time::timeout(deadline, io.flush_all()).await;
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, io.writer.shutdown()).await;
        }
        drop(io);

        // The will (MQTT-3.1.2-8..10; v5 §3.1.3.2.2 for the delay).
        let fire = self.will_on_close || reason.fires_will();
        let survives = reason.session_survives() && self.session.expiry_interval > 0;
        if !fire {
            self.session.will = None;
        } else if let Some(will) = self.session.will.take() {
            let delayed = self.version == Version::V5 && will.delay_interval > 0 && survives;
            if delayed {
                // Fires from the waiting session when the delay passes, unless the client
                // comes back first.
                self.session.will = Some(will);
            } else {
                self.broker.publish_will(will, &self.client_id);
            }
        }

        let will_delay = self.session.will.as_ref().map(|w| w.delay_interval);
        let expiry = self.session.expiry_interval;
        let session = std::mem::replace(
            &mut self.session,
            Box::new(Session::new(self.client_id.clone(), self.version)),
        );
        if let Some(reply) = self.takeover_reply.take() {
            let handover = if reason == CloseReason::SessionTakenOver || survives {
                Some(session)
            } else {
                self.broker.end_session_in_place(&session, &self.outbox);
                None
            };
            let _ = reply.send(handover);
        } else {
            match self
                .broker
                .registry
                .detach(&self.client_id, self.generation, session, survives)
            {
                Detached::Kept => {
                    self.broker.schedule_waiting_session(
                        self.client_id.clone(),
                        self.generation,
                        will_delay,
                        expiry,
                    );
                }
                Detached::Removed(session, outbox) => self.broker.end_session(session, &outbox),
                Detached::NotOwner(session) => {
                    // A takeover is under way: its request is, or is about to be, in the
                    // mailbox (the new owner sends it right after taking the entry).
                    let reply = tokio::time::timeout(TAKEOVER_TIMEOUT, async {
                        loop {
                            if let Control::TakeOver { reply } = self.mailbox.recv().await {
                                return reply;
                            }
                        }
                    })
                    .await;
                    // This connection ended for a reason of its own, just as the new
                    // one arrived: the session goes over only if it would have survived
                    // (a clean session ends here, so the new owner sees Session Present 0).
                    let handover = if survives {
                        Some(session)
                    } else {
                        self.broker.end_session_in_place(&session, &self.outbox);
                        None
                    };
                    if let Ok(reply) = reply {
                        let _ = reply.send(handover);
                    }
                }
            }
        }
        let detail = self.close_detail.take();
        log_close(
            Some(&self.client_id),
            self.peer,
            reason,
            started,
            detail.as_deref(),
        );
    }
}
