//! brokk: an MQTT 3.1.1 and 5.0 broker built around a shared session table.
//!
//! Module map:
//! - [`config`]: broker.toml, defaults, environment overrides, validation.
//! - [`server`]: listeners, the accept loop, graceful shutdown.
//! - [`connection`]: one connection's life, in phases (CONNECT, the main loop, close).
//! - [`sessions`]: the whole life of a session (the table, takeover, queues, wills, expiry,
//!   why it ended) and the store seam.
//! - [`protocol`]: the wire (framing, codec, semantic checks); the only user of the codec crate.
//! - [`close`]: [`close::CloseReason`], the one reason every connection ends with.
//! - [`router`]: topic filters, the subscription index, shared groups, retained messages;
//!   `routing`: the router as the broker shares it.
//! - `sessions::store::record`: the records of the durable session store (encoding, checksums).
//! - [`admin`]: the HTTP admin API (sessions, kicks, revokes, the close history);
//!   `ctl`: its command-line client, `brokk ctl`; `sys`: the `$SYS` topics.
//! - [`history`]: the latest closes, for "why did client X disconnect?".
//! - [`auth`], [`tls`], [`metrics`], [`logging`]: operations; [`server::preflight`] loads
//!   everything a start needs (shared by `--check-config`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod broker;
pub mod close;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod ctl;
pub mod history;
pub mod liveness;
pub mod logging;
mod logsafe;
mod message;
pub mod metrics;
pub mod protocol;
pub mod router;
mod routing;
pub mod server;
pub mod sessions;
mod sys;
pub mod tls;
pub mod transport;
