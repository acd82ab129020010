//! Listeners, the accept loop, the connection limit, the metrics endpoint, the admin API and
//! the `$SYS` topics, and graceful shutdown: stop accepting, tell every connection to finish (v5 clients get DISCONNECT
//! 0x8B after their pending output), wait for them within the drain deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::auth::{AuthError, Authenticator};
use crate::broker::Broker;
use crate::close::CloseReason;
use crate::config::{Config, ConfigError};
use crate::connection::{self, ConnectionContext};
use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
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
    /// Binds every listener (and the metrics endpoint) and starts serving.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        config.validate()?;
        let auth = Authenticator::from_config(&config.auth)?;
        let mut acceptors = Vec::new();
        for (name, listener) in &config.listeners {
            let tls = match &listener.tls {
                Some(tls) => Some(crate::tls::listener(name, tls)?),
                None => None,
            };
            let socket = bind_listener(listener.bind).map_err(|source| StartError::Bind {
                key: format!("listeners.{name}.bind"),
                addr: listener.bind,
                source,
            })?;
            acceptors.push((name.clone(), socket, tls));
        }
        let handle = crate::metrics::install();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let metrics_addr = if config.metrics.enabled {
            let bind = config.metrics.bind;
            let socket = TcpListener::bind(bind)
                .await
                .map_err(|source| StartError::Bind {
                    key: "metrics.bind".to_string(),
                    addr: bind,
                    source,
                })?;
            let addr = socket.local_addr().ok();
            let mut stop = shutdown_rx.clone();
            tokio::spawn(crate::metrics::serve(socket, handle.clone(), async move {
                let _ = crate::server::stopped(&mut stop).await;
            }));
            addr
        } else {
            None
        };

        let broker = Arc::new(Broker::new(config, auth));
        let admin_addr = start_admin(&broker, &shutdown_rx).await?;
        let interval = broker.config.admin.sys_interval;
        if !interval.is_zero() {
            let sys = crate::sys::run(broker.clone(), handle, interval, shutdown_rx.clone());
            tokio::spawn(sys);
        }
        let (drain_tx, drained_rx) = mpsc::channel(1);
        let mut listeners = Vec::new();
        let mut accept_tasks = Vec::new();
        for (name, socket, tls) in acceptors {
            let addr = socket.local_addr().map_err(|source| StartError::Bind {
                key: format!("listeners.{name}.bind"),
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            tracing::info!(listener = %name, %addr, tls = tls.is_some(), "listening");
            listeners.push((name.clone(), addr));
            accept_tasks.push(tokio::spawn(accept_loop(
                broker.clone(),
                Arc::from(name.as_str()),
                socket,
                tls,
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
    }
}

/// Binds and serves the admin API when `[admin] enabled`; its address.
async fn start_admin(
    broker: &Arc<Broker>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<SocketAddr>, StartError> {
    let admin = &broker.config.admin;
    if !admin.enabled {
        return Ok(None);
    }
    let token = admin.token()?;
    let socket = TcpListener::bind(admin.bind)
        .await
        .map_err(|source| StartError::Bind {
            key: "admin.bind".to_string(),
            addr: admin.bind,
            source,
        })?;
    let addr = socket.local_addr().ok();
    let state = Arc::new(crate::admin::AdminState {
        broker: broker.clone(),
        token,
    });
    let mut stop = shutdown.clone();
    tokio::spawn(crate::admin::serve(
        socket,
        crate::admin::router(state),
        async move { stopped(&mut stop).await },
    ));
    if let Some(addr) = addr {
        tracing::info!(%addr, "admin API listening");
    }
    Ok(addr)
}

/// Binds an MQTT listener with a deep accept backlog: a reconnect storm should wait in the
/// queue, not lose SYNs and retry a second later (the default backlog of 128 did).
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Resolves once shutdown is signalled (or the signal's sender is gone). Returns `()` so no
/// watch guard is held across an `.await` in a `select!`.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Counts an open connection; the count drops when the task ends, however it ends.
struct ConnectionSlot(Arc<Broker>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        self.0.stats.connections.decrement(1.0);
    }
}

async fn accept_loop(
    broker: Arc<Broker>,
    listener: Arc<str>,
    socket: TcpListener,
    tls: Option<crate::tls::TlsListener>,
    mut shutdown: watch::Receiver<bool>,
    drain: mpsc::Sender<()>,
) {
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
        let open = broker.connections.fetch_add(1, Ordering::Relaxed) + 1;
        broker.stats.connections.increment(1.0);
        let slot = ConnectionSlot(broker.clone());
        let ctx = ConnectionContext {
            broker: broker.clone(),
            peer,
            listener: listener.clone(),
            over_limit: open > broker.config.limits.max_connections,
            shutdown: shutdown.clone(),
            identity: crate::auth::PeerIdentity::None,
        };
        let tls = tls.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _drain = drain;
            serve_socket(ctx, stream, tls).await;
        });
    }
}

async fn serve_socket(
    ctx: ConnectionContext,
    stream: TcpStream,
    tls: Option<crate::tls::TlsListener>,
) {
    match tls {
        None => {
            let (reader, writer) = stream.into_split();
            connection::serve_halves(ctx, reader, writer).await
        }
        // Boxed: a TLS session is large, and plain connections should not carry its size.
        Some(tls) => {
            Box::pin(async move {
                let started = tokio::time::Instant::now();
                let mut ctx = ctx;
                match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream)).await
                {
                    Ok(Ok(tls_stream)) => {
                        if tls.identity_as_username {
                            ctx.identity = crate::tls::peer_identity(tls_stream.get_ref().1);
                        }
                        connection::serve(ctx, tls_stream).await
                    }
                    Ok(Err(error)) => {
                        let detail = format!("TLS handshake failed: {error}");
                        let ended = handshake_failed(&ctx, &detail);
                        connection::log_close(&ctx.broker, ended, started)
                    }
                    Err(_) => {
                        let ended = handshake_failed(&ctx, "TLS handshake timed out");
                        connection::log_close(&ctx.broker, ended, started)
                    }
                }
            })
            .await
        }
    }
}

fn handshake_failed<'a>(ctx: &ConnectionContext, detail: &'a str) -> connection::Ended<'a> {
    connection::Ended {
        client_id: None,
        user: None,
        peer: ctx.peer,
        reason: CloseReason::IoException,
        detail: Some(detail),
    }
}
