//! Listeners, the accept loop, the connection limit, the metrics endpoint, the admin API, the
//! `$SYS` topics, and graceful shutdown: stop accepting, tell every connection to finish (v5
//! clients get DISCONNECT 0x8B after their pending output), wait for them within the drain
//! deadline.

mod preflight;
mod warnings;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::auth::AuthError;
use crate::broker::Broker;
use crate::close::{CloseReason, InvalidKind};
use crate::config::{Config, ConfigError, StorageBackend, StorageConfig, StorageSync};
use crate::connection::{self, ConnectionContext};
use crate::sessions::store::{DiskStore, MemoryStore, SessionStore, disk::Sync as DiskSync};
use crate::tls::TlsError;
use crate::transport::{proxy, websocket};

pub use preflight::{Prepared, PreparedListener, preflight};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage.path {path}: {why}")]
    Store { path: String, why: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{key}: cannot resolve {bind}: {source}")]
    Resolve {
        key: String,
        bind: String,
        source: std::io::Error,
    },
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    /// True when the configuration itself is unusable (what `--check-config` reports), false
    /// when a valid configuration met the machine (a port already in use, say).
    pub fn is_configuration(&self) -> bool {
        !matches!(self, StartError::Bind { .. } | StartError::Cluster(_))
    }
}

/// A running broker. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    broker: Arc<Broker>,
    listeners: Vec<(String, SocketAddr)>,
    metrics_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    /// Every connection task holds a clone of the sender; all dropped = all finished.
    drained_rx: mpsc::Receiver<()>,
    drain_tx: Option<mpsc::Sender<()>>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Runs [`preflight`], binds every listener (and the metrics endpoint) and starts serving.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let Prepared {
            auth,
            listeners: prepared,
            metrics,
            admin,
            warnings,
        } = preflight(&config)?;
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        let mut acceptors = Vec::new();
        for listener in prepared {
            let key = format!("listeners.{}.bind", listener.name);
            let transport = Arc::new(Transport::of(&config, &listener));
            for socket in bind_all(&key, &listener.addrs, LISTEN_BACKLOG)? {
                acceptors.push((listener.name.clone(), socket, transport.clone()));
            }
        }
        let handle = crate::metrics::install();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut metrics_addr = None;
        for socket in bind_all("metrics.bind", metrics.as_deref().unwrap_or_default(), 128)? {
            metrics_addr = metrics_addr.or(socket.local_addr().ok());
            if let Ok(addr) = socket.local_addr() {
                tracing::info!(%addr, "metrics at /metrics");
            }
            let mut stop = shutdown_rx.clone();
            tokio::spawn(crate::metrics::serve(socket, handle.clone(), async move {
                let _ = crate::server::stopped(&mut stop).await;
            }));
        }

        let mut store = open_store(&config.storage).await?;
        // A cluster node's persistent sessions are replicated on the NATS cluster too.
        let replica = config.cluster.enabled.then(|| {
            let replica = crate::cluster::ReplicaStore::new(store.clone());
            store = replica.clone();
            replica
        });
        let broker = Arc::new(Broker::with_store(config, auth, store.clone()));
        // The cluster hears of every subscription, restored ones included.
        let filters = broker.config.cluster.enabled.then(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            broker.sessions.routing().watch_filters(tx);
            rx
        });
        restore(&broker, store).await?;
        if let (Some(filters), Some(replica)) = (filters, replica) {
            // The Server Reference a draining node's clients get: a plain MQTT listener
            // (TCP, else TLS), not a WebSocket one.
            let mqtt = |t: &Transport| t.websocket.is_none() && !t.proxy_protocol;
            let address = acceptors
                .iter()
                .filter(|(_, _, t)| mqtt(t))
                .min_by_key(|(_, _, t)| t.tls.is_some())
                .and_then(|(_, socket, _)| socket.local_addr().ok())
                .map(|addr| match addr.ip().is_unspecified() {
                    true => format!("{}:{}", broker.config.cluster.node_name(), addr.port()),
                    false => addr.to_string(),
                })
                .unwrap_or_default();
            let cluster = crate::cluster::Cluster::start(
                &broker.config.cluster,
                address,
                broker.sessions.clone(),
                &replica,
                filters,
            )
            .await?;
            let _ = broker.cluster.set(cluster);
        }
        let bound = acceptors
            .iter()
            .filter_map(|(name, socket, transport)| {
                let addr = socket.local_addr().ok()?;
                Some(crate::admin::stats::Listener {
                    name: name.clone(),
                    addr: addr.to_string(),
                    port: addr.port(),
                    tls: transport.tls.is_some(),
                    websocket_path: transport.websocket.clone(),
                })
            })
            .collect();
        let admin_addr = start_admin(&broker, admin.as_deref(), bound, &shutdown_rx)?;
        let interval = broker.config.admin.sys_interval;
        if !interval.is_zero() {
            let sys = crate::sys::run(broker.clone(), handle, interval, shutdown_rx.clone());
            tokio::spawn(sys);
        }
        let (drain_tx, drained_rx) = mpsc::channel(1);
        let mut listeners = Vec::new();
        let mut accept_tasks = Vec::new();
        for (name, socket, transport) in acceptors {
            let addr = socket.local_addr().map_err(|source| StartError::Bind {
                key: format!("listeners.{name}.bind"),
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            tracing::info!(
                listener = %name,
                %addr,
                tls = transport.tls.is_some(),
                websocket = transport.websocket.as_deref(),
                proxy_protocol = transport.proxy_protocol,
                "listening"
            );
            crate::metrics::initialise_listener(&name);
            listeners.push((name.clone(), addr));
            accept_tasks.push(tokio::spawn(accept_loop(
                broker.clone(),
                Arc::from(name.as_str()),
                socket,
                transport,
                shutdown_rx.clone(),
                drain_tx.clone(),
            )));
        }
        Ok(Server {
            broker,
            listeners,
            metrics_addr,
            admin_addr,
            shutdown_tx,
            drained_rx,
            drain_tx: Some(drain_tx),
            accept_tasks,
        })
    }

    /// The bound address of listener `name` (useful with port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The admin API's bound address, when `[admin] enabled`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Graceful shutdown. Returns once every connection has finished (each has the drain
    /// deadline for its pending output) or a grace period past the deadline has passed.
    pub async fn shutdown(mut self) {
        if let Some(cluster) = self.broker.cluster.get() {
            // Sessions move to another node first; their clients get 0x9C with its address.
            cluster.drain().await;
        }
        let _ = self.shutdown_tx.send(true);
        for task in self.accept_tasks.drain(..) {
            let _ = task.await;
        }
        drop(self.drain_tx.take());
        let limit = self.broker.config.limits.shutdown_drain + Duration::from_secs(2);
        if tokio::time::timeout(limit, self.drained_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("shutdown: connections still open after the drain deadline");
        }
        if let Some(cluster) = self.broker.cluster.get() {
            cluster.stop().await;
        }
        // What the last connections changed is written before the process goes.
        let store = self.broker.sessions.store().clone();
        if tokio::task::spawn_blocking(move || store.close())
            .await
            .is_err()
        {
            tracing::error!("the store did not close cleanly");
        }
    }
}

/// Binds and serves the admin API when `[admin] enabled` (`addrs`: its resolved bind); the
/// first bound address.
fn start_admin(
    broker: &Arc<Broker>,
    addrs: Option<&[SocketAddr]>,
    listeners: Vec<crate::admin::stats::Listener>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<SocketAddr>, StartError> {
    let Some(addrs) = addrs else {
        return Ok(None);
    };
    let samples = Arc::new(crate::admin::stats::Samples::default());
    let metrics = crate::metrics::install();
    tokio::spawn(crate::admin::stats::sample(
        samples.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let state = Arc::new(crate::admin::AdminState {
        broker: broker.clone(),
        token: broker.config.admin.token()?,
        metrics,
        samples,
        listeners,
    });
    let router = crate::admin::router(state);
    let mut first = None;
    for socket in bind_all("admin.bind", addrs, 128)? {
        if let Ok(addr) = socket.local_addr() {
            first = first.or(Some(addr));
            tracing::info!(%addr, "admin API listening");
        }
        let mut stop = shutdown.clone();
        tokio::spawn(crate::admin::serve(socket, router.clone(), async move {
            stopped(&mut stop).await
        }));
    }
    Ok(first)
}

/// The store `[storage]` asks for: on disk (opened, or created), or in memory.
async fn open_store(storage: &StorageConfig) -> Result<Arc<dyn SessionStore>, StartError> {
    if storage.backend == StorageBackend::Memory {
        return Ok(Arc::new(MemoryStore));
    }
    let (path, sync) = (storage.path.clone(), storage.sync);
    let opened = tokio::task::spawn_blocking(move || {
        let sync = match sync {
            StorageSync::Always => DiskSync::Always,
            StorageSync::Never => DiskSync::Never,
        };
        DiskStore::open(&path, sync)
    })
    .await;
    match opened {
        Ok(Ok(store)) => Ok(Arc::new(store)),
        Ok(Err(error)) => Err(StartError::Store {
            path: storage.path.display().to_string(),
            why: error.to_string(),
        }),
        Err(error) => Err(StartError::Store {
            path: storage.path.display().to_string(),
            why: error.to_string(),
        }),
    }
}

/// Reads the store back and puts its sessions, retained messages and revoked users in place
/// before any client is served.
async fn restore(broker: &Arc<Broker>, store: Arc<dyn SessionStore>) -> Result<(), StartError> {
    if !store.durable() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let recovered = tokio::task::spawn_blocking(move || store.recover())
        .await
        .map_err(|e| StartError::Store {
            path: broker.config.storage.path.display().to_string(),
            why: e.to_string(),
        })?
        .map_err(|e| StartError::Store {
            path: broker.config.storage.path.display().to_string(),
            why: e.to_string(),
        })?;
    let restored = broker.sessions.restore(recovered);
    tracing::info!(
        path = %broker.config.storage.path.display(),
        sessions = restored.sessions,
        queued = restored.queued,
        retained = restored.retained,
        lost = restored.lost,
        revoked = restored.revoked.len(),
        ms = started.elapsed().as_millis() as u64,
        "store recovered"
    );
    Ok(())
}

/// MQTT listeners get a deep accept backlog: a reconnect storm should wait in the queue, not
/// lose SYNs and retry a second later (the default backlog of 128 did).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds every address of one `bind` key. A host name may stand for addresses this machine
/// cannot use (`::1` where IPv6 is off): those are skipped with a warning as long as one
/// address binds; when none does, the first error is the answer.
fn bind_all(key: &str, addrs: &[SocketAddr], backlog: u32) -> Result<Vec<TcpListener>, StartError> {
    let mut bound = Vec::new();
    let mut first_error = None;
    for &addr in addrs {
        match bind_socket(addr, backlog) {
            Ok(socket) => bound.push(socket),
            Err(source) => {
                if addrs.len() > 1 {
                    tracing::warn!(key, %addr, error = %source, "cannot listen on one address of a host name");
                }
                first_error.get_or_insert(StartError::Bind {
                    key: key.to_string(),
                    addr,
                    source,
                });
            }
        }
    }
    match first_error {
        Some(error) if bound.is_empty() => Err(error),
        _ => Ok(bound),
    }
}

fn bind_socket(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Resolves once shutdown is signalled (or the signal's sender is gone). Returns `()` so no
/// watch guard is held across an `.await` in a `select!`.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Counts an open connection; the count drops when the task ends, however it ends.
struct ConnectionSlot(Arc<Broker>, Arc<str>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        self.0.stats.connections.decrement(1.0);
        crate::metrics::listener_connections(&self.1, -1.0);
    }
}

/// What a listener's connections travel over, besides TCP.
struct Transport {
    tls: Option<crate::tls::TlsListener>,
    /// The WebSocket path (`websocket = { path = ... }`), when the listener speaks WebSocket.
    websocket: Option<String>,
    /// A PROXY protocol header comes first.
    proxy_protocol: bool,
    /// Frame and message limits of a WebSocket listener.
    frames: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
}

impl Transport {
    fn of(config: &Config, listener: &PreparedListener) -> Transport {
        let settings = config.listeners.get(&listener.name);
        Transport {
            tls: listener.tls.clone(),
            websocket: settings
                .and_then(|l| l.websocket.as_ref())
                .map(|ws| ws.path.clone()),
            proxy_protocol: settings.is_some_and(|l| l.proxy_protocol),
            frames: websocket::frame_config(config.limits.max_packet_size as usize),
        }
    }
}

async fn accept_loop(
    broker: Arc<Broker>,
    listener: Arc<str>,
    socket: TcpListener,
    transport: Arc<Transport>,
    mut shutdown: watch::Receiver<bool>,
    drain: mpsc::Sender<()>,
) {
    let liveness = crate::liveness::Liveness::for_listener(
        &broker.config.limits,
        broker.config.listeners.get(&*listener),
    );
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = crate::server::stopped(&mut shutdown) => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: log, breathe, go on.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Err(error) = liveness.apply(&stream) {
            tracing::debug!(%error, %peer, "TCP keepalive / user timeout not set");
        }
        let open = broker.connections.fetch_add(1, Ordering::Relaxed) + 1;
        broker.stats.connections.increment(1.0);
        crate::metrics::listener_connections(&listener, 1.0);
        let slot = ConnectionSlot(broker.clone(), listener.clone());
        let ctx = ConnectionContext {
            broker: broker.clone(),
            peer,
            listener: listener.clone(),
            over_limit: open > broker.config.limits.max_connections,
            shutdown: shutdown.clone(),
            identity: crate::auth::PeerIdentity::None,
        };
        tokio::spawn(serve_socket(
            ctx,
            stream,
            transport.clone(),
            slot,
            drain.clone(),
        ));
    }
}

/// A connection's task: the connection, and the guards that count it open (`slot`) and keep
/// the shutdown's drain waiting (`drain`) until it ends. A plain function returning an `async`
/// block: an `async fn` (or an `async` block around one) would keep its arguments twice in the
/// task, which every idle connection holds.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn serve_socket(
    mut ctx: ConnectionContext,
    mut stream: TcpStream,
    transport: Arc<Transport>,
    slot: ConnectionSlot,
    drain: mpsc::Sender<()>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        // Captured by the block so that they live as long as the connection.
        let _ = (&slot, &drain);
        let started = tokio::time::Instant::now();

        if transport.proxy_protocol {
            let timeout = ctx.broker.config.limits.connect_timeout;
            match Box::pin(tokio::time::timeout(
                timeout,
                proxy::read_header(&mut stream),
            ))
            .await
            {
                Ok(Ok(Some(source))) => ctx.peer = source,
                Ok(Ok(None)) => {}
                Ok(Err(error)) => {
                    let reason = match error {
                        proxy::ProxyError::Closed => CloseReason::ConnectionLost,
                        proxy::ProxyError::Io(_) => CloseReason::IoException,
                        _ => CloseReason::InvalidInboundMessage(InvalidKind::Malformed),
                    };
                    return refused(&ctx, reason, &error.to_string(), started);
                }
                Err(_) => {
                    let detail = "no PROXY header within connect_timeout";
                    return refused(&ctx, CloseReason::ClientUnresponsive, detail, started);
                }
            }
        }
        match (&transport.tls, &transport.websocket) {
            (None, None) => {
                let (reader, writer) = stream.into_split();
                connection::serve_halves(ctx, reader, writer).await
            }
            (None, Some(path)) => {
                Box::pin(serve_websocket(ctx, stream, path, &transport, started)).await
            }
            // Boxed: a TLS session is large, and plain connections should not carry its size.
            (Some(tls), websocket) => {
                Box::pin(async {
                    let mut ctx = ctx;
                    let accepted = tls.acceptor.accept(stream);
                    match tokio::time::timeout(tls.handshake_timeout, accepted).await {
                        Ok(Ok(tls_stream)) => {
                            if tls.identity_as_username {
                                ctx.identity = crate::tls::peer_identity(tls_stream.get_ref().1);
                            }
                            match websocket {
                                None => connection::serve(ctx, tls_stream).await,
                                Some(path) => {
                                    serve_websocket(ctx, tls_stream, path, &transport, started)
                                        .await
                                }
                            }
                        }
                        Ok(Err(error)) => {
                            let detail = crate::tls::handshake_failure(&error);
                            refused(&ctx, CloseReason::IoException, &detail, started)
                        }
                        Err(_) => {
                            let detail = "TLS handshake timed out";
                            refused(&ctx, CloseReason::IoException, detail, started)
                        }
                    }
                })
                .await
            }
        }
    }
}

/// The WebSocket upgrade (within `limits.connect_timeout`), then MQTT over it.
async fn serve_websocket<S>(
    ctx: ConnectionContext,
    stream: S,
    path: &str,
    transport: &Transport,
    started: tokio::time::Instant,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timeout = ctx.broker.config.limits.connect_timeout;
    let upgrade = websocket::accept(stream, path, transport.frames);
    match tokio::time::timeout(timeout, upgrade).await {
        Ok(Ok((ws, protocol))) => {
            tracing::debug!(peer = %ctx.peer, subprotocol = protocol, "WebSocket upgraded");
            websocket::with_close_note(connection::serve(ctx, ws)).await
        }
        Ok(Err(error)) => refused(&ctx, error.close_reason(), &error.to_string(), started),
        Err(_) => {
            let detail = "no WebSocket upgrade within connect_timeout";
            refused(&ctx, CloseReason::ClientUnresponsive, detail, started)
        }
    }
}

/// Logs and counts a connection that ended before MQTT began (a TLS handshake, a WebSocket
/// upgrade, a PROXY header).
fn refused(
    ctx: &ConnectionContext,
    reason: CloseReason,
    detail: &str,
    started: tokio::time::Instant,
) {
    let ended = connection::Ended {
        client_id: None,
        user: None,
        peer: ctx.peer,
        listener: &ctx.listener,
        reason,
        detail: Some(detail),
    };
    connection::log_close(&ctx.broker, ended, started)
}
