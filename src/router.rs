//! Topic filters, the subscription index, shared-subscription groups and the retained store.
//!
//! Plain data structures, no locks and no async: the broker wraps them (see `broker.rs`).
//! Generic over `H`, the handle a delivery needs to reach a subscriber's session (the broker
//! uses the session's outbox); the router only clones it.

use std::sync::Arc;

use crate::protocol::QoS;

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

/// Validates a topic name for PUBLISH (non-empty, no `+`/`#`, no U+0000).
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    let _ = topic;
    todo!("router helper")
}

/// A parsed filter: `$share/{group}/{filter}` splits into its group and the plain filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    pub share_group: Option<&'a str>,
    pub filter: &'a str,
}

/// Validates a (possibly shared) topic filter.
pub fn parse_filter(filter: &str) -> Result<ParsedFilter<'_>, TopicError> {
    let _ = filter;
    todo!("router helper")
}

/// Whether `topic` matches the plain `filter` (MQTT rules; `$` topics not matched by a leading
/// wildcard).
pub fn matches(filter: &str, topic: &str) -> bool {
    let _ = (filter, topic);
    todo!("router helper")
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

/// The subscription index: every session's filters, plain and shared.
pub struct SubscriptionTable<H> {
    _h: std::marker::PhantomData<H>,
}

impl<H: Clone> Default for SubscriptionTable<H> {
    fn default() -> Self {
        SubscriptionTable { _h: std::marker::PhantomData }
    }
}

impl<H: Clone> SubscriptionTable<H> {
    /// Adds or replaces `client_id`'s subscription to `filter` (plain or `$share/...`).
    /// Returns whether it already existed (for Retain Handling 1). The filter must have been
    /// validated with [`parse_filter`].
    pub fn subscribe(
        &mut self,
        client_id: &Arc<str>,
        handle: H,
        filter: &str,
        options: SubscriptionOptions,
    ) -> bool {
        let _ = (client_id, handle, filter, options);
        todo!("router helper")
    }

    /// Removes one subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, client_id: &str, filter: &str) -> bool {
        let _ = (client_id, filter);
        todo!("router helper")
    }

    /// Replaces the handle of every subscription of `client_id` (a session moving to a new
    /// outbox is not needed today, but takeover keeps the outbox; kept for completeness).
    /// Removes every subscription of `client_id` among `filters`.
    pub fn remove_client<'a>(&mut self, client_id: &str, filters: impl IntoIterator<Item = &'a str>) {
        let _ = (client_id, filters);
        todo!("router helper")
    }

    /// Appends to `out` one [`Route`] per subscriber whose filters match `topic`. A subscriber
    /// with No Local is skipped when it is `publisher`. Each matching shared group contributes
    /// exactly one member, chosen round-robin.
    pub fn route(&self, topic: &str, publisher: &str, out: &mut Vec<Route<H>>) {
        let _ = (topic, publisher, out);
        todo!("router helper")
    }

    /// Number of subscriptions (plain and shared), for the `brokk_subscriptions` gauge.
    pub fn len(&self) -> usize {
        todo!("router helper")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Retained messages by topic. `M` is the broker's message type.
pub struct RetainedStore<M> {
    _m: std::marker::PhantomData<M>,
}

impl<M: Clone> Default for RetainedStore<M> {
    fn default() -> Self {
        RetainedStore { _m: std::marker::PhantomData }
    }
}

impl<M: Clone> RetainedStore<M> {
    /// Sets the retained message of `topic`, or clears it when `message` is `None`.
    pub fn set(&mut self, topic: &str, message: Option<M>) {
        let _ = (topic, message);
        todo!("router helper")
    }

    /// Appends to `out` every retained message whose topic matches the plain `filter`.
    pub fn matching(&self, filter: &str, out: &mut Vec<M>) {
        let _ = (filter, out);
        todo!("router helper")
    }

    pub fn len(&self) -> usize {
        todo!("router helper")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
