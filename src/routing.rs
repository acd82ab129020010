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

pub struct Routing {
    /// Shared with background removals of large subscription sets.
    subscriptions: Arc<RwLock<Subscriptions>>,
    retained: RwLock<Retained>,
    stats: Arc<Stats>,
}

impl Routing {
    pub fn new(stats: Arc<Stats>) -> Routing {
        Routing {
            subscriptions: Arc::new(RwLock::new(SubscriptionTable::default())),
            retained: RwLock::new(RetainedStore::default()),
            stats,
        }
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
        for (index, route) in routes {
            let message = &messages[index];
            let qos = message.qos.min(route.qos);
            let retain = route.retain_as_published && message.retain;
            let ids = changes
                .as_ref()
                .map(|_| route.subscription_identifiers.clone());
            let delivery =
                Delivery::new(message.clone(), qos, retain, route.subscription_identifiers);
            match route.handle.offer(delivery) {
                Offer::Queued { seq, stored: true } => {
                    if let (Some(changes), Some(subscription_identifiers)) =
                        (changes.as_deref_mut(), ids)
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
                Offer::Queued { .. } | Offer::NotQueuedOffline | Offer::Closed => {}
                Offer::DroppedQueueFull(n) => self.stats.dropped_queue_full.increment(n as u64),
                Offer::Overflowed => overflowed.push(Overflowed {
                    client_id: route.client_id,
                    queue: route.handle,
                }),
            }
        }
        overflowed
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
                table.unsubscribe_if(client_id, filter, |h| Arc::ptr_eq(h, queue));
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
        let (client_id, queue) = (client_id.clone(), queue.clone());
        runtime.spawn(async move {
            for chunk in filters.chunks(REMOVE_CHUNK) {
                {
                    let mut table = table.write().unwrap_or_else(|p| p.into_inner());
                    for filter in chunk {
                        table.unsubscribe_if(&client_id, filter, |h| Arc::ptr_eq(h, &queue));
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
        let routing = Routing::new(Arc::new(Stats::new()));
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
