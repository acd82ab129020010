//! Everything the broker loads before it binds a socket: the validated configuration, the
//! credentials, each TLS listener's certificate, key (and that they belong together) and client
//! CA, and each bind address resolved. `Server::start` and `brokk --check-config` both run it,
//! so a configuration that passes the check does not fail at start for a file or a name.

use std::net::SocketAddr;

use crate::auth::Authenticator;
use crate::config::{BindAddr, Config};

use super::StartError;

/// What [`preflight`] loaded, ready for binding.
pub struct Prepared {
    pub auth: Authenticator,
    pub listeners: Vec<PreparedListener>,
    /// The metrics endpoint's addresses; `None` when it is disabled.
    pub metrics: Option<Vec<SocketAddr>>,
    /// The admin API's addresses; `None` when it is disabled.
    pub admin: Option<Vec<SocketAddr>>,
    /// Legal but probably unintended settings, one sentence each (logged at WARN on start,
    /// printed by `--check-config`).
    pub warnings: Vec<String>,
}

pub struct PreparedListener {
    pub name: String,
    /// Every address `bind` resolved to (one for an IP address).
    pub addrs: Vec<SocketAddr>,
    pub tls: Option<crate::tls::TlsListener>,
}

/// Loads and checks everything [`super::Server::start`] needs short of binding. Blocking (files,
/// the resolver); run it before the runtime or where blocking is fine.
pub fn preflight(config: &Config) -> Result<Prepared, StartError> {
    config.validate()?;
    let auth = Authenticator::from_config(&config.auth)?;
    let mut listeners = Vec::new();
    for (name, listener) in &config.listeners {
        let addrs = resolve(&format!("listeners.{name}.bind"), &listener.bind)?;
        let tls = match &listener.tls {
            Some(tls) => Some(crate::tls::listener(name, tls)?),
            None => None,
        };
        listeners.push(PreparedListener {
            name: name.clone(),
            addrs,
            tls,
        });
    }
    let metrics = if config.metrics.enabled {
        Some(resolve("metrics.bind", &config.metrics.bind)?)
    } else {
        None
    };
    let admin = if config.admin.enabled {
        Some(resolve("admin.bind", &config.admin.bind)?)
    } else {
        None
    };
    let warnings = super::warnings::collect(config, &listeners);
    Ok(Prepared {
        auth,
        listeners,
        metrics,
        admin,
        warnings,
    })
}

fn resolve(key: &str, bind: &BindAddr) -> Result<Vec<SocketAddr>, StartError> {
    bind.resolve().map_err(|source| StartError::Resolve {
        key: key.to_string(),
        bind: bind.to_string(),
        source,
    })
}
