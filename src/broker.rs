//! The broker's shared state, handed to every connection task: the configuration, the
//! authenticator, the metric handles, the sessions module (which owns the session table
//! and publishes through the router) and the close history.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::history::CloseHistory;
use crate::metrics::Stats;
use crate::routing::Routing;
use crate::sessions::Sessions;
use crate::sessions::store::{MemoryStore, SessionStore};

pub struct Broker {
    pub config: Config,
    pub auth: Authenticator,
    pub stats: Arc<Stats>,
    pub sessions: Arc<Sessions>,
    /// Open network connections (for `max_connections`).
    pub connections: AtomicUsize,
    /// The latest closes, for the admin API (`admin.close_history`).
    pub closes: CloseHistory,
    /// This node's part in a cluster (`[cluster] enabled`), set once at start.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// For assigned client identifiers: unique within this process.
    next_client_number: AtomicU64,
    started: std::time::SystemTime,
    /// For `$SYS/broker/uptime` (monotonic: a clock change does not move it).
    up_since: std::time::Instant,
}

impl Broker {
    /// A broker whose sessions live in memory only.
    pub fn new(config: Config, auth: Authenticator) -> Broker {
        Broker::with_store(config, auth, Arc::new(MemoryStore))
    }

    pub fn with_store(config: Config, auth: Authenticator, store: Arc<dyn SessionStore>) -> Broker {
        let stats = Arc::new(Stats::new());
        let routing = Arc::new(Routing::new(stats.clone(), config.session.conflate.clone()));
        let sessions = Sessions::new(routing, store, &config.limits, stats.queued.clone());
        let closes = CloseHistory::new(config.admin.close_history);
        Broker {
            config,
            auth,
            stats,
            sessions,
            connections: AtomicUsize::new(0),
            closes,
            cluster: std::sync::OnceLock::new(),
            next_client_number: AtomicU64::new(1),
            started: std::time::SystemTime::now(),
            up_since: std::time::Instant::now(),
        }
    }

    /// A client identifier for a client that sent an empty one.
    pub fn assign_client_id(&self) -> String {
        let n = self.next_client_number.fetch_add(1, Ordering::Relaxed);
        let epoch = self
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        format!("brokk-{epoch:x}-{n}")
    }

    /// Reloads `[auth]` (SIGHUP): new rules for everyone, and the waiting sessions of users
    /// the reload removed or whose password changed end with `revoked` (connected clients
    /// hear of the reload themselves and close with `revoked` if their login no longer
    /// holds). A file that fails to load changes nothing. Blocking: call it off the runtime.
    pub fn reload_auth(&self) -> Result<crate::auth::ReloadReport, crate::auth::AuthError> {
        let report = self.auth.reload()?;
        let ended = self.sessions.revoke_waiting(|user| report.revokes(user));
        if ended > 0 {
            tracing::info!(sessions = ended, "waiting sessions of revoked users ended");
        }
        Ok(report)
    }

    /// How long the broker has been running.
    pub fn uptime(&self) -> std::time::Duration {
        self.up_since.elapsed()
    }

    /// `max_session_expiry` in seconds.
    pub fn max_session_expiry(&self) -> u32 {
        u32::try_from(self.config.session.max_session_expiry.as_secs()).unwrap_or(u32::MAX)
    }
}
