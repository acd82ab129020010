//! brokk: an MQTT 3.1.1 and 5.0 broker built around a shared session table.
//!
//! Module map:
//! - [`config`]: broker.toml, defaults, environment overrides, validation.
//! - [`protocol`]: the wire (framing, codec, semantic checks); the only user of the codec crate.
//! - [`close`]: [`close::CloseReason`], the one reason every connection ends with.
//! - [`router`]: topic filters, the subscription index, shared groups, retained messages.
//! - [`auth`], [`tls`], [`metrics`], [`logging`]: operations; [`server::preflight`] loads
//!   everything a start needs (shared by `--check-config`).

pub mod auth;
pub mod broker;
pub mod close;
pub mod config;
pub mod connection;
pub mod logging;
pub mod logsafe;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod outbuf;
pub mod protocol;
pub mod registry;
pub mod router;
pub mod server;
pub mod session;
pub mod tls;
