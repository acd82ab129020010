//! The router as the broker shares it: the subscription index and the retained store behind
//! their locks, and publishing through them into sessions' queues.
//!
//! Locks: both sit behind std `RwLock`s, taken once per batch of inbound publishes (not once
//! per message) and never held across `.await`. A panic under them cannot leave the index
//! half-updated in a way that breaks memory safety, so a poisoned lock is used as it is:
//! serving on beats refusing every client after one bug.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::message::{Delivery, Message};
use crate::metrics::Stats;
use crate::router::{RetainedStore, Route, SubscriptionOptions, SubscriptionTable};
use crate::sessions::queue::{Offer, Queue};
use crate::sessions::store::Change;

pub type Subscriptions = SubscriptionTable<Arc<Queue>>;
pub type Retained = RetainedStore<Arc<Message>>;

/// Subscriptions removed per lock of the index when a session ends.
const REMOVE_CHUNK: usize = 256;

/// A queue that hit its limit under `queue_full_policy = "disconnect"` while a publish was
/// routed: its session must end (the caller hands these to the sessions module).
#[derive(Debug)]
pub struct Overflowed {
    pub client_id: Arc<str>,
    pub queue: Arc<Queue>,
}

/// A filter that gained its first subscriber here, or lost its last one (the cluster keeps
/// one NATS subscription per such filter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterChange {
    Added(String),
    Removed(String),
}

pub type FilterWatch = tokio::sync::mpsc::UnboundedSender<FilterChange>;

pub struct Routing {
    /// Told every subscription added to or removed from the index (a cluster node).
    filter_watch: std::sync::OnceLock<FilterWatch>,
    /// Shared with background removals of large subscription sets.
    subscriptions: Arc<RwLock<Subscriptions>>,
    retained: RwLock<Retained>,
    stats: Arc<Stats>,
    /// `session.conflate`: topic filters whose messages replace older queued ones.
    conflate: Vec<String>,
}

impl Routing {
    pub fn new(stats: Arc<Stats>, conflate: Vec<String>) -> Routing {
        Routing {
            filter_watch: std::sync::OnceLock::new(),
            subscriptions: Arc::new(RwLock::new(SubscriptionTable::default())),
            retained: RwLock::new(RetainedStore::default()),
            stats,
            conflate,
        }
    }

    /// Every subscription added or removed from now on is told to `watch` (in the order the
    /// index changed: it is told under the index's lock). Set before any subscription exists
    /// (before sessions are restored at start).
    pub fn watch_filters(&self, watch: FilterWatch) {
        let _ = self.filter_watch.set(watch);
    }

    fn tell(&self, change: FilterChange) {
        if let Some(watch) = self.filter_watch.get() {
            let _ = watch.send(change);
        }
    }

    /// Whether `topic` is one `session.conflate` names.
    fn conflated(&self, topic: &str) -> bool {
        !self.conflate.is_empty()
            && self
                .conflate
                .iter()
                .any(|filter| crate::router::matches(filter, topic))
    }

    fn index(&self) -> RwLockReadGuard<'_, Subscriptions> {
        self.subscriptions.read().unwrap_or_else(|p| p.into_inner())
    }

    fn index_mut(&self) -> RwLockWriteGuard<'_, Subscriptions> {
        self.subscriptions
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn retained(&self) -> RwLockReadGuard<'_, Retained> {
        self.retained.read().unwrap_or_else(|p| p.into_inner())
    }

    fn retained_mut(&self) -> RwLockWriteGuard<'_, Retained> {
        self.retained.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Routes a batch of messages from one publisher: retained updates first, then one read
    /// lock of the subscription index for the whole batch. Returns the queues that overflowed.
    /// With `changes` (a durable store), what must be stored is added there: retained
    /// messages, and each delivery a persistent session's queue stored.
    pub fn publish_batch(
        &self,
        messages: &[Arc<Message>],
        publisher: &str,
        mut changes: Option<&mut Vec<Change>>,
    ) -> Vec<Overflowed> {
        self.set_retained(messages, changes.as_deref_mut());
        self.route_batch(messages, publisher, changes)
    }

    /// The retained messages of a batch replace (or clear) their topics' retained messages.
    fn set_retained(&self, messages: &[Arc<Message>], mut changes: Option<&mut Vec<Change>>) {
        if messages.iter().any(|m| m.retain) {
            let mut retained = self.retained_mut();
            for message in messages.iter().filter(|m| m.retain) {
                // MQTT-3.3.1-10/11: an empty retained payload clears the topic's message.
                let value = (!message.payload.is_empty()).then(|| message.clone());
                if let Some(changes) = changes.as_deref_mut() {
                    changes.push(Change::Retained {
                        topic: message.topic.clone(),
                        message: value.clone(),
                    });
                }
                retained.set(&message.topic, value);
            }
            self.stats.retained.set(retained.len() as f64);
        }
    }

    /// Routes a batch into the matching sessions' queues without touching retained messages
    /// (messages from another cluster node: their retained part arrives on its own).
    pub fn route_batch(
        &self,
        messages: &[Arc<Message>],
        publisher: &str,
        mut changes: Option<&mut Vec<Change>>,
    ) -> Vec<Overflowed> {
        let mut routes: Vec<(usize, Route<Arc<Queue>>)> = Vec::new();
        {
            let table = self.index();
            let mut scratch = Vec::new();
            for (index, message) in messages.iter().enumerate() {
                table.route(&message.topic, publisher, &mut scratch);
                routes.extend(scratch.drain(..).map(|r| (index, r)));
            }
        }
        let mut overflowed = Vec::new();
        // Allocated only when `session.conflate` names topics: the common path pays nothing.
        let conflated: Vec<bool> = if self.conflate.is_empty() {
            Vec::new()
        } else {
            messages.iter().map(|m| self.conflated(&m.topic)).collect()
        };
        for (index, route) in routes {
            let message = &messages[index];
            let qos = message.qos.min(route.qos);
            let retain = route.retain_as_published && message.retain;
            let ids = changes
                .as_ref()
                .map(|_| route.subscription_identifiers.clone());
            let mut delivery =
                Delivery::new(message.clone(), qos, retain, route.subscription_identifiers);
            delivery.conflate = conflated.get(index).copied().unwrap_or(false);
            match route.handle.offer(delivery) {
                Offer::Queued {
                    seq,
                    stored,
                    replaced,
                } => {
                    if let Some((old, old_stored)) = replaced {
                        self.stats.dropped_conflated.increment(1);
                        if let (true, Some(changes)) = (old_stored, changes.as_deref_mut()) {
                            changes.push(Change::Delivered {
                                client_id: route.client_id.clone(),
                                seq: old,
                            });
                        }
                    }
                    if let (true, Some(changes), Some(subscription_identifiers)) =
                        (stored, changes.as_deref_mut(), ids)
                    {
                        changes.push(Change::Queued {
                            client_id: route.client_id,
                            seq,
                            message: message.clone(),
                            qos,
                            retain,
                            subscription_identifiers,
                        });
                    }
                }
                Offer::NotQueuedOffline | Offer::Closed => {}
                Offer::DroppedQueueFull(n) => self.stats.dropped_queue_full.increment(n as u64),
                Offer::Overflowed => overflowed.push(Overflowed {
                    client_id: route.client_id,
                    queue: route.handle,
                }),
            }
        }
        overflowed
    }

    /// Clears `topic`'s retained message (another cluster node cleared it).
    pub(crate) fn clear_retained(&self, topic: &str) {
        let mut retained = self.retained_mut();
        retained.set(topic, None);
        self.stats.retained.set(retained.len() as f64);
    }

    /// Restores a retained message read back from the store.
    pub(crate) fn restore_retained(&self, message: Arc<Message>) {
        let mut retained = self.retained_mut();
        retained.set(&message.topic.clone(), Some(message));
        self.stats.retained.set(retained.len() as f64);
    }

    /// Adds or replaces a subscription; returns whether it existed.
    pub(crate) fn subscribe(
        &self,
        client_id: &Arc<str>,
        queue: &Arc<Queue>,
        filter: &str,
        options: SubscriptionOptions,
    ) -> bool {
        let mut table = self.index_mut();
        let existed = table.subscribe(client_id, queue.clone(), filter, options);
        self.stats.subscriptions.set(table.len() as f64);
        if !existed {
            self.tell(FilterChange::Added(filter.to_string()));
        }
        existed
    }

    /// Subscriptions in the index, all sessions together.
    pub fn subscription_count(&self) -> usize {
        self.index().len()
    }

    pub(crate) fn unsubscribe(&self, client_id: &str, filter: &str) -> bool {
        let mut table = self.index_mut();
        let existed = table.unsubscribe(client_id, filter);
        self.stats.subscriptions.set(table.len() as f64);
        if existed {
            self.tell(FilterChange::Removed(filter.to_string()));
        }
        existed
    }

    /// Removes a session's subscriptions a chunk per lock, so a session with many of them
    /// never holds the index against every publisher for long. Only entries that still point
    /// at the session's `queue` go: once the table entry is released, a new connection with
    /// the same client id may subscribe to the same filter before this runs, and its
    /// subscription must stay.
    pub(crate) fn remove_subscriptions(
        &self,
        client_id: &str,
        filters: &[&str],
        queue: &Arc<Queue>,
    ) {
        for chunk in filters.chunks(REMOVE_CHUNK) {
            let mut table = self.index_mut();
            for filter in chunk {
                if table.unsubscribe_if(client_id, filter, |h| Arc::ptr_eq(h, queue)) {
                    self.tell(FilterChange::Removed(filter.to_string()));
                }
            }
            self.stats.subscriptions.set(table.len() as f64);
        }
    }

    /// For a session that has ended for good (its queue is closed, so nothing more reaches
    /// it): a large subscription set is removed by a background task that yields between
    /// chunks, so the connection or publisher that ended the session is not held up and other
    /// clients keep being served.
    pub(crate) fn remove_subscriptions_later(
        &self,
        client_id: &Arc<str>,
        filters: Vec<String>,
        queue: &Arc<Queue>,
    ) {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let Some(runtime) = runtime.filter(|_| filters.len() > REMOVE_CHUNK) else {
            let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
            return self.remove_subscriptions(client_id, &filters, queue);
        };
        let (table, gauge) = (self.subscriptions.clone(), self.stats.subscriptions.clone());
        let watch = self.filter_watch.get().cloned();
        let (client_id, queue) = (client_id.clone(), queue.clone());
        runtime.spawn(async move {
            for chunk in filters.chunks(REMOVE_CHUNK) {
                {
                    let mut table = table.write().unwrap_or_else(|p| p.into_inner());
                    for filter in chunk {
                        if table.unsubscribe_if(&client_id, filter, |h| Arc::ptr_eq(h, &queue))
                            && let Some(watch) = &watch
                        {
                            let _ = watch.send(FilterChange::Removed(filter.clone()));
                        }
                    }
                    gauge.set(table.len() as f64);
                }
                tokio::task::yield_now().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;
    use crate::sessions::queue::QueueLimits;

    fn queue() -> Arc<Queue> {
        Arc::new(Queue::new(
            QueueLimits::from_config(&crate::config::Limits::default()),
            metrics::Gauge::noop(),
        ))
    }

    fn message(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: Arc::from(topic),
            payload: bytes::Bytes::from_static(b"m"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: bytes::Bytes::new(),
            expires_at: None,
            stored: std::sync::OnceLock::new(),
        })
    }

    /// A session's table entry is released before its subscriptions are removed; a new
    /// connection with the same client id may subscribe to the same filter in between. Ending
    /// the old session must leave the new subscription in place (it once removed it, and the
    /// new clean session's own messages went nowhere).
    #[test]
    fn ending_a_session_leaves_its_successors_subscriptions() {
        let routing = Routing::new(Arc::new(Stats::new()), Vec::new());
        let id: Arc<str> = Arc::from("c");
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            subscription_identifier: None,
        };
        let (old, new) = (queue(), queue());
        routing.subscribe(&id, &old, "t/#", options.clone());
        // The successor subscribes first (its handle replaces the old one)...
        routing.subscribe(&id, &new, "t/#", options);
        // ...then the old session's end is processed.
        routing.remove_subscriptions(&id, &["t/#"], &old);
        assert!(
            routing
                .publish_batch(&[message("t/x")], "p", None)
                .is_empty()
        );
        assert_eq!(new.len(), 1, "the successor still receives");
    }
}
