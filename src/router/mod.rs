//! Topic filters, the subscription index, shared-subscription groups and the retained store.
//!
//! Plain data structures, no locks and no async: the broker wraps them (see `broker.rs`).
//! Generic over `H`, the handle a delivery needs to reach a subscriber's session (the broker
//! uses the session's outbox); the router only clones it.
//!
//! - `topic`: filter and topic-name syntax, [`matches()`].
//! - `index`: [`SubscriptionTable`], a trie keyed by topic level with shared groups.
//! - `retained`: [`RetainedStore`], a trie keyed by topic level.

mod index;
mod retained;
mod smallmap;
mod topic;

use std::sync::Arc;

use crate::protocol::QoS;

pub use index::SubscriptionTable;
pub use retained::RetainedStore;
pub use topic::{ParsedFilter, levels, matches, parse_filter, validate_topic_name};

/// Why a topic filter or topic name is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopicError {
    #[error("empty topic filter")]
    Empty,
    #[error("'#' must be the last level and alone in it")]
    MultiLevelWildcard,
    #[error("'+' must be alone in its level")]
    SingleLevelWildcard,
    #[error("invalid shared subscription: {0}")]
    Shared(&'static str),
    #[error("a topic name must not contain wildcards")]
    WildcardInName,
    #[error("topic contains U+0000")]
    Nul,
}

/// What a subscriber asked for with one filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub subscription_identifier: Option<u32>,
}

/// One delivery decided by [`SubscriptionTable::route`]: one per subscriber, however many of its
/// filters matched (MQTT-3.3.5-1: the highest granted QoS, every matching subscription id).
#[derive(Clone, Debug)]
pub struct Route<H> {
    pub client_id: Arc<str>,
    pub handle: H,
    pub qos: QoS,
    /// True if any matching subscription asked for Retain As Published.
    pub retain_as_published: bool,
    pub subscription_identifiers: Vec<u32>,
}
