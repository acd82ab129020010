//! broker.toml: typed configuration with defaults, environment overrides and validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The shipped broker.toml, compiled in: `brokk` with no `--config` runs on it.
pub const BUILT_IN: &str = include_str!("../broker.toml");

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listeners: BTreeMap<String, ListenerConfig>,
    pub metrics: MetricsConfig,
    pub limits: Limits,
    pub session: SessionConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// How long a TLS handshake may take before the socket is closed.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Close the session with message_queue_limit_reached and discard it (no silent loss).
    Disconnect,
    /// Drop the oldest queued message to make room; counted.
    DropOldest,
    /// Drop the message that does not fit; counted.
    DropNewest,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    pub max_packet_size: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_keep_alive: Duration,
    #[serde(with = "humantime_serde")]
    pub connection_ttl: Duration,
    pub receive_maximum: u16,
    pub max_inflight: u16,
    pub max_queue_depth: usize,
    pub max_queue_depth_disconnected: usize,
    pub queue_full_policy: QueueFullPolicy,
    /// How long graceful shutdown waits for in-flight writes before closing sockets.
    #[serde(with = "humantime_serde")]
    pub shutdown_drain: Duration,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    #[serde(with = "humantime_serde")]
    pub max_session_expiry: Duration,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub allow_anonymous: bool,
    /// Empty = no password file.
    pub password_file: PathBuf,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `RUST_LOG`-style filter; `RUST_LOG` itself wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        let mut listeners = BTreeMap::new();
        listeners.insert(
            "tcp".to_string(),
            ListenerConfig { bind: SocketAddr::from(([0, 0, 0, 0], 1883)), tls: None },
        );
        Config {
            listeners,
            metrics: MetricsConfig::default(),
            limits: Limits::default(),
            session: SessionConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true, bind: SocketAddr::from(([0, 0, 0, 0], 9883)) }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            max_packet_size: 1_048_576,
            connect_timeout: Duration::from_secs(10),
            max_keep_alive: Duration::ZERO,
            connection_ttl: Duration::ZERO,
            receive_maximum: 64,
            max_inflight: 64,
            max_queue_depth: 1000,
            max_queue_depth_disconnected: 5000,
            queue_full_policy: QueueFullPolicy::Disconnect,
            shutdown_drain: Duration::from_secs(5),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { max_session_expiry: Duration::from_secs(2 * 3600) }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { allow_anonymous: true, password_file: PathBuf::new() }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".to_string(), format: LogFormat::Text }
    }
}

/// A configuration that cannot be used; the message names the key and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
    #[error("{key}: {why}")]
    Invalid { key: String, why: String },
}

impl Config {
    /// The built-in file (or `path`), then `BROKK_<SECTION>__<KEY>` overrides, validated.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let _ = path;
        todo!("config helper")
    }

    /// Parses TOML text alone (no environment), validated. For tests and `--check-config`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let _ = text;
        todo!("config helper")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        todo!("config helper")
    }
}
