//! broker.toml: typed configuration with defaults, environment overrides and validation.

mod bind;
mod env;
mod paths;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use bind::{BindAddr, BindAddrError};
pub use env::NOT_CONFIGURATION as NON_CONFIGURATION_VARIABLES;

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
    pub storage: StorageConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub cluster: ClusterConfig,
}

/// `[cluster]`: nodes that share one NATS (JetStream) cluster form one broker.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// This node's name, unique in the cluster; empty: the host name.
    pub node: String,
    /// NATS server URLs (any of them will do; the client finds the rest).
    pub nats: Vec<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            node: String::new(),
            nats: vec!["nats://127.0.0.1:4222".to_string()],
        }
    }
}

impl ClusterConfig {
    /// `node`, or the host name when it is empty.
    pub fn node_name(&self) -> String {
        if !self.node.is_empty() {
            return self.node.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "brokk".to_string())
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StorageBackend {
    /// The embedded store on disk: persistent sessions and retained messages survive restarts.
    Disk,
    /// Nothing survives a restart.
    Memory,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StorageSync {
    /// A QoS 1/2 PUBLISH is acknowledged only once it is on disk (fsync).
    Always,
    /// The OS writes when it likes: survives `kill -9`, not a power cut.
    Never,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// The store's directory (relative: to the working directory).
    pub path: PathBuf,
    pub sync: StorageSync,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Disk,
            path: PathBuf::from("brokk-data"),
            sync: StorageSync::Always,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub bind: BindAddr,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// This listener's own `limits.tcp_keepalive` (unset: the global one).
    #[serde(default, with = "humantime_serde")]
    pub tcp_keepalive: Option<Duration>,
    /// This listener's own `limits.write_timeout` (unset: the global one).
    #[serde(default, with = "humantime_serde")]
    pub write_timeout: Option<Duration>,
    /// MQTT over WebSocket on this listener (with `tls` too: wss).
    #[serde(default)]
    pub websocket: Option<WebSocketConfig>,
    /// A PROXY protocol (v1 or v2) header comes first on every connection: its source address
    /// is the client's.
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl ListenerConfig {
    /// A plain MQTT listener on `bind` (every option unset).
    pub fn new(bind: BindAddr) -> ListenerConfig {
        ListenerConfig {
            bind,
            tls: None,
            tcp_keepalive: None,
            write_timeout: None,
            websocket: None,
            proxy_protocol: false,
        }
    }
}

/// `websocket = { path = "/mqtt" }`: the HTTP path the WebSocket upgrade is served on.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    #[serde(default = "default_websocket_path")]
    pub path: String,
}

fn default_websocket_path() -> String {
    "/mqtt".to_string()
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            path: default_websocket_path(),
        }
    }
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
    /// The client certificate's Common Name is the user name (Mosquitto's
    /// `use_identity_as_username`); needs `client_ca`.
    #[serde(default)]
    pub identity_as_username: bool,
    /// PEM certificate revocation lists checked against client certificates; needs `client_ca`.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub bind: BindAddr,
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
    /// Bytes queued per connected session (payload, topic and properties of each message).
    pub max_queue_bytes: usize,
    /// The same while the session waits for its client.
    pub max_queue_bytes_disconnected: usize,
    /// Topic levels a topic name or filter may have (deeper ones are refused).
    pub max_topic_levels: usize,
    /// Subscriptions one session may hold.
    pub max_subscriptions_per_client: usize,
    /// Output the client does not read for this long closes the connection, and output the
    /// peer's TCP does not acknowledge for this long closes the socket (TCP_USER_TIMEOUT);
    /// 0 = neither.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Idle time before the kernel probes a silent socket (SO_KEEPALIVE); 0 = no probes.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// How long graceful shutdown waits for in-flight writes before closing sockets.
    #[serde(with = "humantime_serde")]
    pub shutdown_drain: Duration,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    #[serde(with = "humantime_serde")]
    pub max_session_expiry: Duration,
    /// Topic filters whose messages replace an older queued (not yet in flight) message for
    /// the same topic in a session's queue: a returning client gets the latest value per
    /// topic, not every value.
    pub conflate: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub allow_anonymous: bool,
    /// Empty = no password file. brokk's argon2id lines and mosquitto_passwd's `$6$`/`$7$`.
    pub password_file: PathBuf,
    /// Empty = no ACL (every client may publish and subscribe anywhere). Mosquitto's syntax.
    pub acl_file: PathBuf,
    /// Password checks waiting for a free core; beyond it a CONNECT is refused as server busy.
    pub max_pending_auth: usize,
    /// How long a password check may wait for a core before the CONNECT is refused.
    #[serde(with = "humantime_serde")]
    pub pending_timeout: Duration,
    pub jwt: JwtConfig,
}

/// JWT signature algorithms brokk verifies.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum JwtAlgorithm {
    #[serde(rename = "HS256")]
    Hs256,
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "ES256")]
    Es256,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Empty = tokens off. HS256: the shared secret; RS256/ES256: the public key in PEM.
    pub key_file: PathBuf,
    pub algorithm: JwtAlgorithm,
    /// The claim holding the user name.
    pub username_claim: String,
    /// When set, tokens must carry this `iss`.
    pub issuer: String,
    /// When set, tokens must carry this `aud`.
    pub audience: String,
}

/// The control plane: the HTTP admin API, the close history and the `$SYS` topics.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The HTTP admin API (JSON). The close history and `$SYS` do not depend on it.
    pub enabled: bool,
    pub bind: BindAddr,
    /// A file holding the bearer token; empty = no token (only allowed on a loopback bind).
    pub token_file: PathBuf,
    /// Closes kept in the close history (the latest ones; 0 = none).
    pub close_history: usize,
    /// How often the `$SYS` topics are published (0 = never).
    #[serde(with = "humantime_serde")]
    pub sys_interval: Duration,
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
            ListenerConfig::new(SocketAddr::from(([0, 0, 0, 0], 1883)).into()),
        );
        listeners.insert(
            "ws".to_string(),
            ListenerConfig {
                websocket: Some(WebSocketConfig::default()),
                ..ListenerConfig::new(SocketAddr::from(([0, 0, 0, 0], 8080)).into())
            },
        );
        Config {
            listeners,
            metrics: MetricsConfig::default(),
            limits: Limits::default(),
            session: SessionConfig::default(),
            auth: AuthConfig::default(),
            admin: AdminConfig::default(),
            storage: StorageConfig::default(),
            log: LogConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 9884)).into(),
            token_file: PathBuf::new(),
            close_history: 10_000,
            sys_interval: Duration::from_secs(10),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 9883)).into(),
        }
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
            max_queue_bytes: 16 * 1024 * 1024,
            max_queue_bytes_disconnected: 64 * 1024 * 1024,
            max_topic_levels: 128,
            max_subscriptions_per_client: 10_000,
            write_timeout: Duration::from_secs(30),
            tcp_keepalive: Duration::from_secs(60),
            shutdown_drain: Duration::from_secs(5),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_session_expiry: Duration::from_secs(2 * 3600),
            conflate: Vec::new(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: true,
            password_file: PathBuf::new(),
            acl_file: PathBuf::new(),
            max_pending_auth: 256,
            pending_timeout: Duration::from_secs(5),
            jwt: JwtConfig::default(),
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            key_file: PathBuf::new(),
            algorithm: JwtAlgorithm::Hs256,
            username_claim: "sub".to_string(),
            issuer: String::new(),
            audience: String::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

/// A configuration that cannot be used; the message names the key and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
    #[error("{key}: {why}")]
    Invalid { key: String, why: String },
    /// A `BROKK_` environment variable that is not an override.
    #[error("environment variable {var}: {why}")]
    Env { var: String, why: String },
}

impl Config {
    /// The built-in file (or `path`), then `BROKK_<SECTION>__<KEY>` overrides, validated.
    /// Relative file paths in the file are taken relative to its directory; any other
    /// `BROKK_` variable (bar those in [`NON_CONFIGURATION_VARIABLES`]) is an error.
    ///
    /// Variable names are lowercased, so an override reaches only lowercase listener names:
    /// `BROKK_LISTENERS__TCP__BIND` sets `listeners.tcp.bind`, never `listeners.TCP.bind`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        load_with_env(path, std::env::vars())
    }

    /// Parses TOML text alone (no environment), validated. For tests and `--check-config`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config = build(text, "the configuration", config::Map::new())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot: ranges, at least one listener, unique binds, TLS files.
    ///
    /// `max_queue_depth_disconnected` is deliberately not required to be >= `max_queue_depth`:
    /// an operator may well want offline sessions to hold less than live ones.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(invalid("listeners", "at least one listener is required"));
        }
        let mut binds: BTreeMap<&BindAddr, &str> = BTreeMap::new();
        for (name, listener) in &self.listeners {
            if listener.bind.port() == 0 {
                // A free port chosen by the system: never a clash.
            } else if let Some(other) = binds.insert(&listener.bind, name) {
                return Err(invalid(
                    &format!("listeners.{name}.bind"),
                    format!("{} is already used by listeners.{other}", listener.bind),
                ));
            }
            if let Some(tls) = &listener.tls {
                validate_tls(name, tls)?;
            }
            if let Some(ws) = &listener.websocket {
                validate_websocket_path(name, &ws.path)?;
            }
            if let Some(idle) = listener.tcp_keepalive {
                crate::liveness::check_keepalive(&format!("listeners.{name}.tcp_keepalive"), idle)?;
            }
            if let Some(timeout) = listener.write_timeout {
                crate::liveness::check_user_timeout(
                    &format!("listeners.{name}.write_timeout"),
                    timeout,
                )?;
            }
        }
        // Port 0 asks the system for a free port, so two such binds never clash.
        if self.metrics.enabled
            && self.metrics.bind.port() != 0
            && self.listeners.values().any(|l| l.bind == self.metrics.bind)
        {
            return Err(invalid(
                "metrics.bind",
                format!("{} is also a listener", self.metrics.bind),
            ));
        }
        let limits = &self.limits;
        if !(MIN_PACKET_SIZE..=MAX_PACKET_SIZE).contains(&limits.max_packet_size) {
            return Err(invalid(
                "limits.max_packet_size",
                format!(
                    "{} is out of range: must be between {MIN_PACKET_SIZE} and {MAX_PACKET_SIZE}",
                    limits.max_packet_size
                ),
            ));
        }
        if limits.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if limits.receive_maximum == 0 {
            return Err(invalid("limits.receive_maximum", "must be at least 1"));
        }
        if limits.max_inflight == 0 {
            return Err(invalid("limits.max_inflight", "must be at least 1"));
        }
        if limits.max_queue_depth == 0 {
            return Err(invalid("limits.max_queue_depth", "must be at least 1"));
        }
        if limits.max_queue_depth_disconnected == 0 {
            return Err(invalid(
                "limits.max_queue_depth_disconnected",
                "must be at least 1",
            ));
        }
        if limits.connect_timeout.is_zero() {
            return Err(invalid("limits.connect_timeout", "must be greater than 0"));
        }
        if limits.max_queue_bytes == 0 {
            return Err(invalid("limits.max_queue_bytes", "must be at least 1"));
        }
        if limits.max_queue_bytes_disconnected == 0 {
            return Err(invalid(
                "limits.max_queue_bytes_disconnected",
                "must be at least 1",
            ));
        }
        if !(1..=MAX_TOPIC_LEVELS).contains(&limits.max_topic_levels) {
            return Err(invalid(
                "limits.max_topic_levels",
                format!("must be between 1 and {MAX_TOPIC_LEVELS}"),
            ));
        }
        crate::liveness::check_keepalive("limits.tcp_keepalive", limits.tcp_keepalive)?;
        crate::liveness::check_user_timeout("limits.write_timeout", limits.write_timeout)?;
        if limits.max_subscriptions_per_client == 0 {
            return Err(invalid(
                "limits.max_subscriptions_per_client",
                "must be at least 1",
            ));
        }
        for (i, filter) in self.session.conflate.iter().enumerate() {
            match crate::router::parse_filter(filter) {
                Ok(parsed) if parsed.share_group.is_none() => {}
                Ok(_) => {
                    return Err(invalid(
                        &format!("session.conflate[{i}]"),
                        format!("{filter:?}: a shared subscription is not a topic filter here"),
                    ));
                }
                Err(e) => {
                    return Err(invalid(
                        &format!("session.conflate[{i}]"),
                        format!("{filter:?}: {e}"),
                    ));
                }
            }
        }
        if self.storage.backend == StorageBackend::Disk && self.storage.path.as_os_str().is_empty()
        {
            return Err(invalid(
                "storage.path",
                "must not be empty with backend = \"disk\"",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            return Err(invalid(
                "log.level",
                format!("{e} (write e.g. \"info\" or \"info,brokk=debug\")"),
            ));
        }
        validate_auth(&self.auth)?;
        self.validate_cluster()?;
        self.validate_admin()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        if !cluster.enabled {
            return Ok(());
        }
        if cluster.nats.is_empty() {
            return Err(invalid("cluster.nats", "at least one NATS URL is required"));
        }
        for url in &cluster.nats {
            if let Err(e) = url.parse::<async_nats::ServerAddr>() {
                return Err(invalid("cluster.nats", format!("{url}: {e}")));
            }
        }
        let node = cluster.node_name();
        // The name is a token of NATS subjects and a key of the JetStream buckets.
        if !node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "cluster.node",
                format!("{node:?}: only letters, digits, '-' and '_'"),
            ));
        }
        Ok(())
    }

    fn validate_admin(&self) -> Result<(), ConfigError> {
        let admin = &self.admin;
        if admin.close_history > MAX_CLOSE_HISTORY {
            return Err(invalid(
                "admin.close_history",
                format!("must be at most {MAX_CLOSE_HISTORY}"),
            ));
        }
        if !admin.sys_interval.is_zero() && admin.sys_interval < Duration::from_secs(1) {
            return Err(invalid(
                "admin.sys_interval",
                "must be 0 (off) or at least 1s",
            ));
        }
        if !admin.enabled {
            return Ok(());
        }
        let port = admin.bind.port();
        let clash = port != 0
            && (self.listeners.values().any(|l| l.bind == admin.bind)
                || (self.metrics.enabled && self.metrics.bind == admin.bind));
        if clash {
            return Err(invalid(
                "admin.bind",
                format!("{} is also a listener or the metrics endpoint", admin.bind),
            ));
        }
        if admin.token_file.as_os_str().is_empty() {
            // Anyone who can reach the API can throw every client out: without a token, only
            // this machine may.
            if !admin.bind.is_loopback() {
                return Err(invalid(
                    "admin.token_file",
                    format!(
                        "required when admin.bind ({}) is not a loopback address",
                        admin.bind
                    ),
                ));
            }
            return Ok(());
        }
        admin.token().map(|_| ())
    }
}

/// A WebSocket path: absolute, printable ASCII, no query or fragment (the request's path is
/// compared with it exactly).
fn validate_websocket_path(listener: &str, path: &str) -> Result<(), ConfigError> {
    let key = format!("listeners.{listener}.websocket.path");
    if !path.starts_with('/') {
        return Err(invalid(&key, format!("{path:?} must start with /")));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) || path.contains(['?', '#']) {
        return Err(invalid(
            &key,
            format!("{path:?} must be printable ASCII without spaces, '?' or '#'"),
        ));
    }
    Ok(())
}

impl AdminConfig {
    /// The bearer token from `token_file` (surrounding whitespace removed), or `None` when no
    /// file is set. An unreadable or empty file is an error naming the key.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        if self.token_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let key = "admin.token_file";
        check_readable(key, &self.token_file)?;
        let text = std::fs::read_to_string(&self.token_file).map_err(|e| {
            invalid(
                key,
                format!("cannot read {}: {e}", self.token_file.display()),
            )
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(invalid(
                key,
                format!("{} holds no token", self.token_file.display()),
            ));
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(invalid(
                key,
                format!("the token must be at least {MIN_TOKEN_LEN} characters"),
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                key,
                "the token must be printable ASCII without spaces (it travels in an HTTP header)",
            ));
        }
        Ok(Some(token.to_string()))
    }
}

/// The most closes `admin.close_history` may keep (each costs about 200 bytes and its strings).
const MAX_CLOSE_HISTORY: usize = 1_000_000;
/// A token shorter than this is guessable.
const MIN_TOKEN_LEN: usize = 16;

pub(crate) fn invalid(key: &str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        why: why.into(),
    }
}

fn validate_tls(name: &str, tls: &TlsConfig) -> Result<(), ConfigError> {
    let key = |field: &str| format!("listeners.{name}.tls.{field}");
    let files = [
        ("cert", Some(&tls.cert)),
        ("key", Some(&tls.key)),
        ("client_ca", tls.client_ca.as_ref()),
        ("crl", tls.crl.as_ref()),
    ];
    for (field, file) in files {
        if let Some(file) = file {
            check_readable(&key(field), file)?;
        }
    }
    if tls.handshake_timeout.is_zero() {
        return Err(invalid(&key("handshake_timeout"), "must be greater than 0"));
    }
    // Both depend on a verified client certificate, which only client_ca asks for.
    if tls.client_ca.is_none() {
        if tls.identity_as_username {
            return Err(invalid(
                &key("identity_as_username"),
                "needs client_ca (client certificates are not requested without it)",
            ));
        }
        if tls.crl.is_some() {
            return Err(invalid(
                &key("crl"),
                "needs client_ca (client certificates are not requested without it)",
            ));
        }
    }
    Ok(())
}

/// Ranges and readable files; the files' contents are checked by `brokk --check-config` and at
/// start (see `auth::AuthState::load`).
fn validate_auth(auth: &AuthConfig) -> Result<(), ConfigError> {
    for (key, file) in [
        ("auth.password_file", &auth.password_file),
        ("auth.acl_file", &auth.acl_file),
        ("auth.jwt.key_file", &auth.jwt.key_file),
    ] {
        if !file.as_os_str().is_empty() {
            check_readable(key, file)?;
        }
    }
    if auth.max_pending_auth == 0 {
        return Err(invalid("auth.max_pending_auth", "must be at least 1"));
    }
    if auth.pending_timeout.is_zero() {
        return Err(invalid("auth.pending_timeout", "must be greater than 0"));
    }
    if auth.jwt.username_claim.is_empty() {
        return Err(invalid("auth.jwt.username_claim", "must not be empty"));
    }
    Ok(())
}

/// The deepest topic `limits.max_topic_levels` may allow. The router's walks do not recurse,
/// so this is a bound on work per topic, not a guard for the stack.
const MAX_TOPIC_LEVELS: usize = 1024;

/// The smallest packet limit that still admits a CONNECT with an empty client id.
const MIN_PACKET_SIZE: u32 = 16;
/// The largest MQTT packet: 268435455 bytes of remaining length + 5 bytes of fixed header.
const MAX_PACKET_SIZE: u32 = 268_435_460;

fn check_readable(key: &str, path: &Path) -> Result<(), ConfigError> {
    let invalid = |why: String| ConfigError::Invalid {
        key: key.to_string(),
        why,
    };
    if path.as_os_str().is_empty() {
        return Err(invalid("must not be empty".to_string()));
    }
    // Opening (not just stat-ing) catches permission problems at --check-config time rather
    // than at the first TLS handshake.
    match std::fs::File::open(path) {
        Ok(file) => match file.metadata() {
            Ok(meta) if meta.is_file() => Ok(()),
            Ok(_) => Err(invalid(format!("{} is not a file", path.display()))),
            Err(e) => Err(invalid(format!("{}: {e}", path.display()))),
        },
        Err(e) => Err(invalid(format!("cannot read {}: {e}", path.display()))),
    }
}

/// `load` with the environment passed in, so tests need not touch the process environment
/// (tests run in parallel threads of one process, and `set_var` would race).
fn load_with_env(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let env = env::overrides(env)?;
    let env_names: Vec<String> = env.keys().cloned().collect();
    let config = match path {
        None => build(BUILT_IN, "the built-in configuration", env)?,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Load(format!("{}: {e}", path.display())))?;
            let mut config = build(&text, &path.display().to_string(), env)?;
            if let Some(dir) = path.parent() {
                config.resolve_relative_paths(dir, |key| {
                    env::variable_for(key, &env_names).is_some()
                });
            }
            config
        }
    };
    config.validate()?;
    Ok(config)
}

const ENV_PREFIX: &str = env::PREFIX;

/// Merges the TOML text and the environment overrides (from [`env::overrides`]) into a typed
/// `Config` (not validated).
fn build(
    text: &str,
    origin: &str,
    env: config::Map<String, String>,
) -> Result<Config, ConfigError> {
    // Remembered so an error can say which variable supplied the bad value.
    let env_names: Vec<String> = env.keys().cloned().collect();
    let built = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("BROKK")
                // The prefix is joined by one underscore, levels by two (see the README).
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        )
        .build()
        .map_err(|e| convert_error(e, origin, &env_names))?;
    built
        .try_deserialize()
        .map_err(|e| convert_error(e, origin, &env_names))
}

/// Turns the config crate's errors into "key: why" with wording aimed at someone editing
/// broker.toml (the crate's own messages put the key last and speak serde).
fn convert_error(error: config::ConfigError, origin: &str, env_names: &[String]) -> ConfigError {
    use config::ConfigError as E;
    match error {
        E::At {
            error,
            key: Some(key),
            ..
        } => invalid_at(&key, reword(&key, &error.to_string()), env_names),
        E::Type {
            unexpected,
            expected,
            key: Some(key),
            ..
        } => invalid_at(
            &key,
            format!("invalid type: {unexpected}, expected {expected}"),
            env_names,
        ),
        E::NotFound(key) => ConfigError::Invalid {
            key,
            why: "required but missing".to_string(),
        },
        E::Message(message) => match unknown_field(&message) {
            // Only the top level reports an unknown key without a path: it is a section.
            Some((name, expected)) => {
                invalid_at(name, format!("unknown section{expected}"), env_names)
            }
            None => ConfigError::Load(format!("{origin}: {message}")),
        },
        E::FileParse { cause, .. } => ConfigError::Load(format!("{origin}: {cause}")),
        other => ConfigError::Load(format!("{origin}: {other}")),
    }
}

fn invalid_at(key: &str, mut why: String, env_names: &[String]) -> ConfigError {
    // The crate does not reliably carry a value's origin into deserialization errors, so look
    // for the variable that would have set this key (or, for an unknown field, a key under it).
    let var = format!("{ENV_PREFIX}{}", key.to_uppercase().replace('.', "__"));
    let from_env = env_names.iter().find(|name| {
        let name = name.to_uppercase();
        name == var
            || name
                .strip_prefix(&var)
                .is_some_and(|rest| rest.starts_with("__"))
    });
    if let Some(name) = from_env {
        why.push_str(&format!(" (from environment variable {name})"));
    }
    ConfigError::Invalid {
        key: key.to_string(),
        why,
    }
}

/// Splits serde's "unknown field `x`, expected ..." into the name and ", expected ..." part.
fn unknown_field(message: &str) -> Option<(&str, String)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (name, tail) = rest.split_once('`')?;
    let expected = tail
        .strip_prefix(", ")
        .map(|e| format!(" ({e})"))
        .unwrap_or_default();
    Some((name, expected))
}

fn reword(key: &str, why: &str) -> String {
    if let Some((name, expected)) = unknown_field(why) {
        return format!("unknown field `{name}`{expected}");
    }
    if let Some(value) = why
        .strip_prefix("invalid value: string ")
        .and_then(|w| w.strip_suffix(", expected a duration"))
    {
        return format!("invalid duration {value} (write e.g. \"500ms\", \"30s\", \"2h\")");
    }
    if let Some(value) = why
        .strip_prefix("enum ")
        .and_then(|w| w.split_once(" does not have variant constructor "))
        .map(|(_, v)| v)
    {
        let expected = match key.rsplit('.').next() {
            Some("queue_full_policy") => " (expected disconnect, drop_oldest or drop_newest)",
            Some("backend") => " (expected disk or memory)",
            Some("sync") => " (expected always or never)",
            Some("format") => " (expected text or json)",
            Some("algorithm") => " (expected HS256, RS256 or ES256)",
            _ => "",
        };
        return format!("unknown value \"{value}\"{expected}");
    }
    why.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn error(text: &str) -> String {
        match Config::from_toml(text) {
            Ok(config) => panic!("accepted: {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn invalid_key(text: &str) -> String {
        match Config::from_toml(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn built_in_file_equals_defaults() {
        let parsed = Config::from_toml(BUILT_IN).unwrap();
        assert_eq!(parsed, Config::default());
        assert_eq!(load_with_env(None, Vec::new()).unwrap(), Config::default());
    }

    #[test]
    fn websocket_and_proxy_protocol_keys() {
        let config = Config::from_toml(
            "[listeners.w]\nbind = \"127.0.0.1:0\"\nwebsocket = { path = \"/ws\" }\nproxy_protocol = true\n\
             [listeners.d]\nbind = \"127.0.0.1:0\"\nwebsocket = {}\n",
        )
        .unwrap();
        assert_eq!(
            config.listeners["w"].websocket.as_ref().unwrap().path,
            "/ws"
        );
        assert!(config.listeners["w"].proxy_protocol);
        assert_eq!(
            config.listeners["d"].websocket.as_ref().unwrap().path,
            "/mqtt"
        );
        assert!(!config.listeners["d"].proxy_protocol);
        let bad = error("[listeners.w]\nbind = \"127.0.0.1:0\"\nwebsocket = { path = \"mqtt\" }\n");
        assert!(bad.contains("listeners.w.websocket.path"), "{bad}");
        let bad = error("[listeners.w]\nbind = \"127.0.0.1:0\"\nwebsocket = { path = \"/a b\" }\n");
        assert!(bad.contains("listeners.w.websocket.path"), "{bad}");
        let bad = error("[listeners.w]\nbind = \"127.0.0.1:0\"\nwebsocket = { pth = \"/\" }\n");
        assert!(bad.contains("pth"), "{bad}");
    }

    #[test]
    fn empty_file_takes_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
        let partial = Config::from_toml("[limits]\nmax_packet_size = 2048\n").unwrap();
        assert_eq!(partial.limits.max_packet_size, 2048);
        assert_eq!(partial.limits.max_inflight, Limits::default().max_inflight);
        assert_eq!(partial.listeners, Config::default().listeners);
    }

    #[test]
    fn full_file_parses() {
        let dir = tempfile::tempdir().unwrap();
        for file in ["passwd", "acl", "jwt.pem"] {
            std::fs::write(dir.path().join(file), "").unwrap();
        }
        let text = r#"
            [listeners.a]
            bind = "127.0.0.1:1883"
            [listeners.b]
            bind = "[::1]:1884"
            [metrics]
            enabled = false
            bind = "127.0.0.1:9000"
            [limits]
            connect_timeout = "500ms"
            max_keep_alive = "1m"
            queue_full_policy = "drop_oldest"
            shutdown_drain = "1s"
            [session]
            max_session_expiry = "1d"
            [auth]
            allow_anonymous = false
            password_file = "DIR/passwd"
            acl_file = "DIR/acl"
            max_pending_auth = 10
            pending_timeout = "250ms"
            [auth.jwt]
            key_file = "DIR/jwt.pem"
            algorithm = "ES256"
            username_claim = "preferred_username"
            issuer = "https://issuer.example"
            audience = "brokk"
            [log]
            level = "debug"
            format = "json"
            "#;
        let config =
            Config::from_toml(&text.replace("DIR", &dir.path().display().to_string())).unwrap();
        assert_eq!(config.listeners.len(), 2);
        assert!(!config.metrics.enabled);
        assert_eq!(config.limits.connect_timeout, Duration::from_millis(500));
        assert_eq!(config.limits.max_keep_alive, Duration::from_secs(60));
        assert_eq!(config.limits.queue_full_policy, QueueFullPolicy::DropOldest);
        assert_eq!(
            config.session.max_session_expiry,
            Duration::from_secs(86400)
        );
        assert_eq!(config.auth.password_file, dir.path().join("passwd"));
        assert_eq!(config.auth.acl_file, dir.path().join("acl"));
        assert_eq!(config.auth.max_pending_auth, 10);
        assert_eq!(config.auth.pending_timeout, Duration::from_millis(250));
        assert_eq!(config.auth.jwt.algorithm, JwtAlgorithm::Es256);
        assert_eq!(config.auth.jwt.username_claim, "preferred_username");
        assert_eq!(config.auth.jwt.audience, "brokk");
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_keys_are_named_with_their_section() {
        let e = error("[limits]\nmax_pakcet_size = 3\n");
        assert!(
            e.starts_with("limits: unknown field `max_pakcet_size`"),
            "{e}"
        );
        let e = error("[listeners.tcp]\nbind = \"0.0.0.0:1883\"\nport = 1\n");
        assert!(e.starts_with("listeners.tcp: unknown field `port`"), "{e}");
        let e = error(
            "[listeners.s]\nbind = \"0.0.0.0:8883\"\ntls = { cert = \"a\", key = \"b\", ca = \"c\" }\n",
        );
        assert!(e.starts_with("listeners.s.tls: unknown field `ca`"), "{e}");
        let e = error("[limitz]\nx = 1\n");
        assert!(e.starts_with("limitz: unknown section"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = error("[limits]\nconnect_timeout = \"ten\"\n");
        assert!(
            e.starts_with("limits.connect_timeout: invalid duration \"ten\""),
            "{e}"
        );
        let e = error("[limits]\nmax_packet_size = \"big\"\n");
        assert!(e.starts_with("limits.max_packet_size: invalid type"), "{e}");
        let e = error("[limits]\nreceive_maximum = 70000\n");
        assert!(e.starts_with("limits.receive_maximum:"), "{e}");
        let e = error("[limits]\nqueue_full_policy = \"drop_all\"\n");
        assert!(
            e.starts_with("limits.queue_full_policy: unknown value \"drop_all\""),
            "{e}"
        );
        let e = error("[listeners.tcp]\nbind = \"localhost\"\n");
        assert!(e.starts_with("listeners.tcp.bind: invalid address"), "{e}");
        let e = error("[metrics]\nbind = \"0.0.0.0\"\n");
        assert!(e.starts_with("metrics.bind: invalid address"), "{e}");
        let e = error("[log]\nlevel = \"loud[\"\n");
        assert!(e.starts_with("log.level:"), "{e}");
        let e = error("[listeners.tcp]\n");
        assert!(e.starts_with("listeners.tcp.bind: required"), "{e}");
        let e = error("[limits\n");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn env_overrides_apply_after_the_file() {
        let vars = env(&[
            ("BROKK_LIMITS__MAX_PACKET_SIZE", "65536"),
            ("BROKK_LISTENERS__TCP__BIND", "127.0.0.1:1884"),
            ("BROKK_AUTH__ALLOW_ANONYMOUS", "false"),
            ("BROKK_LIMITS__CONNECT_TIMEOUT", "3s"),
            ("BROKK_LIMITS__QUEUE_FULL_POLICY", "drop_newest"),
            // Not overrides: variables of brokk's tools, or another prefix.
            ("BROKK_ADMIN_URL", "http://127.0.0.1:9884"),
            ("OTHER_LIMITS__MAX_PACKET_SIZE", "1"),
        ]);
        let config = load_with_env(None, vars).unwrap();
        assert_eq!(config.limits.max_packet_size, 65536);
        assert_eq!(
            config.listeners["tcp"].bind,
            "127.0.0.1:1884".parse().unwrap()
        );
        assert_eq!(config.listeners.len(), 2, "tcp and ws");
        assert!(!config.auth.allow_anonymous);
        assert_eq!(config.limits.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.limits.queue_full_policy, QueueFullPolicy::DropNewest);
    }

    #[test]
    fn env_overrides_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(
            &path,
            "[limits]\nmax_packet_size = 2048\nmax_inflight = 8\n",
        )
        .unwrap();
        let vars = env(&[("BROKK_LIMITS__MAX_PACKET_SIZE", "4096")]);
        let config = load_with_env(Some(&path), vars).unwrap();
        assert_eq!(config.limits.max_packet_size, 4096);
        assert_eq!(config.limits.max_inflight, 8);
        assert_eq!(config.listeners, Config::default().listeners);
    }

    #[test]
    fn bad_env_values_name_the_key_and_variable() {
        let e = load_with_env(None, env(&[("BROKK_LIMITS__MAX_PACKET_SIZE", "abc")]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("limits.max_packet_size: invalid type"), "{e}");
        assert!(e.contains("BROKK_LIMITS__MAX_PACKET_SIZE"), "{e}");
        let e = load_with_env(None, env(&[("BROKK_LIMITS__CONNECT_TIMEOUT", "ten")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("limits.connect_timeout: invalid duration \"ten\""),
            "{e}"
        );
        let e = load_with_env(None, env(&[("BROKK_LIMITS__BOGUS", "1")]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("limits: unknown field `bogus`"), "{e}");
        assert!(e.contains("BROKK_LIMITS__BOGUS"), "{e}");
        // Env values are validated too.
        let e = load_with_env(None, env(&[("BROKK_LIMITS__MAX_PACKET_SIZE", "8")])).unwrap_err();
        assert!(e.to_string().starts_with("limits.max_packet_size:"), "{e}");
    }

    #[test]
    fn host_names_are_accepted_in_bind() {
        let config = Config::from_toml(
            "[listeners.tcp]\nbind = \"localhost:1883\"\n[metrics]\nbind = \"localhost:9883\"\n",
        )
        .unwrap();
        assert_eq!(config.listeners["tcp"].bind.to_string(), "localhost:1883");
        let e = error(
            "[listeners.a]\nbind = \"localhost:1883\"\n[listeners.b]\nbind = \"localhost:1883\"\n",
        );
        assert!(
            e.starts_with("listeners.b.bind: localhost:1883 is already used"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_brokk_variable_is_an_error() {
        let e = load_with_env(None, env(&[("BROKK_LIMITS_MAX_PACKET_SIZE", "16")])).unwrap_err();
        assert!(matches!(e, ConfigError::Env { .. }), "{e}");
        assert!(
            e.to_string().contains("BROKK_LIMITS__MAX_PACKET_SIZE"),
            "{e}"
        );
    }

    #[test]
    fn cluster_keys_are_checked() {
        let c = Config::from_toml("").unwrap().cluster;
        assert!(!c.enabled);
        assert_eq!(c.nats, vec!["nats://127.0.0.1:4222".to_string()]);
        assert!(!c.node_name().is_empty(), "the host name by default");
        let ok = Config::from_toml(
            "[cluster]\nenabled = true\nnode = \"n-1\"\nnats = [\"nats://10.0.0.1:4222\", \"10.0.0.2\"]\n",
        )
        .unwrap();
        assert_eq!(ok.cluster.node_name(), "n-1");
        assert!(error("[cluster]\nenabeld = true\n").contains("enabeld"));
        let key = |text: &str| match Config::from_toml(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected Invalid, got {other:?}"),
        };
        assert_eq!(
            key("[cluster]\nenabled = true\nnats = []\n"),
            "cluster.nats"
        );
        assert_eq!(
            key("[cluster]\nenabled = true\nnats = [\"nats://a b\"]\n"),
            "cluster.nats"
        );
        assert_eq!(
            key("[cluster]\nenabled = true\nnode = \"a.b\"\n"),
            "cluster.node"
        );
        // Off, nothing is checked.
        assert!(Config::from_toml("[cluster]\nnode = \"a.b\"\n").is_ok());
    }

    /// The section list behind the environment hint must follow `Config`'s fields.
    #[test]
    fn the_section_list_matches_the_config_struct() {
        let e = error("[nosuchsection]\n");
        let expected: Vec<String> = env::SECTIONS.iter().map(|s| format!("`{s}`")).collect();
        assert!(
            e.ends_with(&format!("(expected one of {})", expected.join(", "))),
            "update env::SECTIONS: {e}"
        );
    }

    #[test]
    fn relative_paths_in_a_file_are_relative_to_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("conf")).unwrap();
        std::fs::write(dir.path().join("conf/passwd"), "").unwrap();
        let path = dir.path().join("conf/broker.toml");
        std::fs::write(&path, "[auth]\npassword_file = \"passwd\"\n").unwrap();
        let config = load_with_env(Some(&path), Vec::new()).unwrap();
        assert_eq!(config.auth.password_file, dir.path().join("conf/passwd"));
        // From the environment: relative to the working directory (the package root under
        // cargo test), as typed.
        let vars = env(&[("BROKK_AUTH__PASSWORD_FILE", "Cargo.toml")]);
        let config = load_with_env(Some(&path), vars).unwrap();
        assert_eq!(config.auth.password_file, Path::new("Cargo.toml"));
    }

    #[test]
    fn missing_file_is_a_load_error() {
        let e = load_with_env(Some(Path::new("/nonexistent/brokk.toml")), Vec::new()).unwrap_err();
        assert!(matches!(e, ConfigError::Load(_)));
        assert!(e.to_string().contains("/nonexistent/brokk.toml"), "{e}");
    }

    #[test]
    fn validate_checks_ranges() {
        assert_eq!(
            invalid_key("[limits]\nmax_packet_size = 15\n"),
            "limits.max_packet_size"
        );
        assert_eq!(
            invalid_key("[limits]\nmax_packet_size = 268435461\n"),
            "limits.max_packet_size"
        );
        Config::from_toml("[limits]\nmax_packet_size = 16\n").unwrap();
        Config::from_toml("[limits]\nmax_packet_size = 268435460\n").unwrap();
        assert_eq!(
            invalid_key("[limits]\nreceive_maximum = 0\n"),
            "limits.receive_maximum"
        );
        assert_eq!(
            invalid_key("[limits]\nmax_inflight = 0\n"),
            "limits.max_inflight"
        );
        assert_eq!(
            invalid_key("[limits]\nmax_queue_depth = 0\n"),
            "limits.max_queue_depth"
        );
        assert_eq!(
            invalid_key("[limits]\nmax_queue_depth_disconnected = 0\n"),
            "limits.max_queue_depth_disconnected"
        );
        // Fewer offline than online is allowed on purpose.
        Config::from_toml("[limits]\nmax_queue_depth = 10\nmax_queue_depth_disconnected = 1\n")
            .unwrap();
        assert_eq!(
            invalid_key("[limits]\nconnect_timeout = \"0s\"\n"),
            "limits.connect_timeout"
        );
    }

    #[test]
    fn validate_checks_listeners() {
        let mut config = Config::default();
        config.listeners.clear();
        let e = config.validate().unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { key, .. } if key == "listeners"),
            "{e}"
        );

        let e = error(
            "[listeners.a]\nbind = \"127.0.0.1:1883\"\n[listeners.b]\nbind = \"127.0.0.1:1883\"\n",
        );
        assert!(e.starts_with("listeners.b.bind: 127.0.0.1:1883 is already used by listeners.a"));

        let e = error(
            "[listeners.a]\nbind = \"127.0.0.1:9883\"\n[metrics]\nbind = \"127.0.0.1:9883\"\n",
        );
        assert!(e.starts_with("metrics.bind:"), "{e}");
    }

    #[test]
    fn validate_checks_auth() {
        let e = error("[auth]\npassword_file = \"/nonexistent/passwd\"\n");
        assert!(e.starts_with("auth.password_file: cannot read"), "{e}");
        let e = error("[auth]\nacl_file = \"/nonexistent/acl\"\n");
        assert!(e.starts_with("auth.acl_file: cannot read"), "{e}");
        let e = error("[auth.jwt]\nkey_file = \"/nonexistent/key\"\n");
        assert!(e.starts_with("auth.jwt.key_file: cannot read"), "{e}");
        assert_eq!(
            invalid_key("[auth]\nmax_pending_auth = 0\n"),
            "auth.max_pending_auth"
        );
        assert_eq!(
            invalid_key("[auth]\npending_timeout = \"0s\"\n"),
            "auth.pending_timeout"
        );
        assert_eq!(
            invalid_key("[auth.jwt]\nusername_claim = \"\"\n"),
            "auth.jwt.username_claim"
        );
        let e = error("[auth.jwt]\nalgorithm = \"none\"\n");
        assert!(
            e.starts_with(
                "auth.jwt.algorithm: unknown value \"none\" (expected HS256, RS256 or ES256)"
            ),
            "{e}"
        );
        let e = error("[auth]\nacl = \"x\"\n");
        assert!(e.starts_with("auth: unknown field `acl`"), "{e}");
    }

    #[test]
    fn admin_keys_parse_and_a_public_bind_needs_a_token() {
        let config = Config::from_toml(
            "[admin]\nenabled = false\nbind = \"0.0.0.0:1\"\nclose_history = 5\nsys_interval = \"0s\"\n",
        )
        .unwrap();
        assert!(!config.admin.enabled, "a disabled API needs no token");
        assert_eq!(config.admin.close_history, 5);
        assert!(config.admin.sys_interval.is_zero());
        let e = error("[admin]\nbind = \"0.0.0.0:9884\"\n");
        assert!(
            e.starts_with("admin.token_file: required when admin.bind (0.0.0.0:9884)"),
            "{e}"
        );
        Config::from_toml("[admin]\nbind = \"[::1]:9884\"\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        let with_token = |text: &str| {
            std::fs::write(&token, text).unwrap();
            Config::from_toml(&format!(
                "[admin]\nbind = \"0.0.0.0:9884\"\ntoken_file = {:?}\n",
                token.display().to_string()
            ))
        };
        let config = with_token("  0123456789abcdef0123\n").unwrap();
        assert_eq!(
            config.admin.token().unwrap().as_deref(),
            Some("0123456789abcdef0123")
        );
        for bad in ["", "short", "has a space in the middle"] {
            let e = with_token(bad).unwrap_err().to_string();
            assert!(e.starts_with("admin.token_file:"), "{bad:?}: {e}");
        }
        assert_eq!(
            invalid_key("[admin]\ntoken_file = \"/nonexistent/token\"\n"),
            "admin.token_file"
        );
    }

    #[test]
    fn admin_ranges_and_clashes() {
        assert_eq!(
            invalid_key("[admin]\nsys_interval = \"500ms\"\n"),
            "admin.sys_interval"
        );
        assert_eq!(
            invalid_key("[admin]\nclose_history = 2000000\n"),
            "admin.close_history"
        );
        assert_eq!(
            invalid_key(
                "[listeners.tcp]\nbind = \"127.0.0.1:9884\"\n[admin]\nbind = \"127.0.0.1:9884\"\n"
            ),
            "admin.bind"
        );
        assert_eq!(
            invalid_key("[metrics]\nbind = \"127.0.0.1:9884\"\n"),
            "admin.bind"
        );
    }

    #[test]
    fn validate_checks_tls_files() {
        let e = error(
            "[listeners.s]\nbind = \"0.0.0.0:8883\"\n\
             tls = { cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }\n",
        );
        assert!(
            e.starts_with("listeners.s.tls.cert: cannot read /nonexistent/cert.pem"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "x").unwrap();
        std::fs::write(&key, "x").unwrap();
        let text = format!(
            "[listeners.s]\nbind = \"0.0.0.0:8883\"\ntls = {{ cert = {:?}, key = {:?} }}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        let config = Config::from_toml(&text).unwrap();
        let tls = config.listeners["s"].tls.as_ref().unwrap();
        assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
        assert_eq!(tls.client_ca, None);

        let identity = text.replace(" }", ", identity_as_username = true }");
        assert_eq!(
            invalid_key(&identity),
            "listeners.s.tls.identity_as_username"
        );
        let crl = text.replace(
            " }",
            &format!(", crl = {:?} }}", cert.display().to_string()),
        );
        assert_eq!(invalid_key(&crl), "listeners.s.tls.crl");
        let with_ca = text.replace(
            " }",
            &format!(
                ", client_ca = {:?}, crl = {:?}, identity_as_username = true }}",
                cert.display().to_string(),
                cert.display().to_string()
            ),
        );
        let tls = Config::from_toml(&with_ca).unwrap().listeners["s"]
            .tls
            .clone()
            .unwrap();
        assert!(tls.identity_as_username && tls.crl.is_some());
        let text = text.replace(" }", ", client_ca = \"/nonexistent/ca.pem\" }");
        assert_eq!(invalid_key(&text), "listeners.s.tls.client_ca");
        let text = text.replace("\"/nonexistent/ca.pem\"", &format!("{:?}", dir.path()));
        let e = error(&text);
        assert!(
            e.starts_with("listeners.s.tls.client_ca:") && e.contains("not a file"),
            "{e}"
        );
    }
}
