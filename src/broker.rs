//! The broker's shared state: the session table, the subscription index, the retained store,
//! the authenticator and the metric handles; and the operations that span sessions
//! (publishing, ending a session, wills and session expiry).
//!
//! Locks: the subscription index and the retained store sit behind std `RwLock`s, taken once
//! per batch of inbound publishes (not once per message) and never held across `.await`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, counter, gauge};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::logsafe::LogId;
use crate::message::{Delivery, Message};
use crate::metrics as names;
use crate::outbox::{Offer, Outbox};
use crate::protocol::{QoS, Will};
use crate::registry::Registry;
use crate::router::{RetainedStore, Route, SubscriptionTable};
use crate::session::Session;

pub type Subscriptions = SubscriptionTable<Arc<Outbox>>;

/// Subscriptions removed per lock of the index when a session ends.
const REMOVE_CHUNK: usize = 256;
pub type Retained = RetainedStore<Arc<Message>>;

/// Metric handles registered once, so the per-message path does not look names up.
pub struct Stats {
    pub received: [Counter; 3],
    pub sent: [Counter; 3],
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub dropped_queue_full: Counter,
    pub dropped_too_large: Counter,
    pub dropped_expired: Counter,
    pub connections: Gauge,
    pub queued: Gauge,
    pub subscriptions: Gauge,
    pub retained: Gauge,
}

impl Stats {
    fn new() -> Stats {
        let by_qos = |name: &'static str| {
            [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
                .map(|q| counter!(name, "qos" => q.label()))
        };
        Stats {
            received: by_qos(names::MESSAGES_RECEIVED),
            sent: by_qos(names::MESSAGES_SENT),
            bytes_received: counter!(names::BYTES_RECEIVED),
            bytes_sent: counter!(names::BYTES_SENT),
            dropped_queue_full: counter!(names::MESSAGES_DROPPED, "reason" => "queue_full"),
            dropped_too_large: counter!(names::MESSAGES_DROPPED, "reason" => "too_large_for_client"),
            dropped_expired: counter!(names::MESSAGES_DROPPED, "reason" => "expired"),
            connections: gauge!(names::CONNECTIONS),
            queued: gauge!(names::QUEUED_MESSAGES),
            subscriptions: gauge!(names::SUBSCRIPTIONS),
            retained: gauge!(names::RETAINED_MESSAGES),
        }
    }
}

pub struct Broker {
    pub config: Config,
    pub registry: Registry,
    /// Shared with background removals of large subscription sets.
    subscriptions: Arc<RwLock<Subscriptions>>,
    retained: RwLock<Retained>,
    pub auth: Authenticator,
    pub stats: Stats,
    /// Open network connections (for `max_connections`).
    pub connections: AtomicUsize,
    /// For assigned client identifiers: unique within this process.
    next_client_number: AtomicU64,
    started: std::time::SystemTime,
}

impl Broker {
    pub fn new(config: Config, auth: Authenticator) -> Broker {
        Broker {
            config,
            registry: Registry::new(),
            subscriptions: Arc::new(RwLock::new(SubscriptionTable::default())),
            retained: RwLock::new(RetainedStore::default()),
            auth,
            stats: Stats::new(),
            connections: AtomicUsize::new(0),
            next_client_number: AtomicU64::new(1),
            started: std::time::SystemTime::now(),
        }
    }

    // A panic under these locks cannot leave the index half-updated in a way that breaks
    // memory safety; serving on beats refusing every client after one bug.
    pub fn subscriptions(&self) -> RwLockReadGuard<'_, Subscriptions> {
        self.subscriptions.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscriptions_mut(&self) -> RwLockWriteGuard<'_, Subscriptions> {
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

    /// `max_session_expiry` in seconds.
    pub fn max_session_expiry(&self) -> u32 {
        u32::try_from(self.config.session.max_session_expiry.as_secs()).unwrap_or(u32::MAX)
    }

    /// Routes a batch of messages from one publisher: retained updates first, then one read
    /// lock of the subscription index for the whole batch.
    pub fn publish_batch(&self, messages: &[Arc<Message>], publisher: &str) {
        if messages.iter().any(|m| m.retain) {
            let mut retained = self.retained_mut();
            for message in messages.iter().filter(|m| m.retain) {
                // MQTT-3.3.1-10/11: an empty retained payload clears the topic's message.
                let value = (!message.payload.is_empty()).then(|| message.clone());
                retained.set(&message.topic, value);
            }
            self.stats.retained.set(retained.len() as f64);
        }
        let mut routes: Vec<(usize, Route<Arc<Outbox>>)> = Vec::new();
        {
            let table = self.subscriptions();
            let mut scratch = Vec::new();
            for (index, message) in messages.iter().enumerate() {
                table.route(&message.topic, publisher, &mut scratch);
                routes.extend(scratch.drain(..).map(|r| (index, r)));
            }
        }
        for (index, route) in routes {
            let message = &messages[index];
            let delivery = Delivery {
                message: message.clone(),
                qos: message.qos.min(route.qos),
                retain: route.retain_as_published && message.retain,
                subscription_identifiers: route.subscription_identifiers,
            };
            match route.handle.offer(delivery) {
                Offer::Queued | Offer::NotQueuedOffline | Offer::Closed => {}
                Offer::DroppedQueueFull(n) => self.stats.dropped_queue_full.increment(n as u64),
                Offer::Overflowed => self.on_overflow(&route.client_id, &route.handle),
            }
        }
    }

    pub fn publish(&self, message: Arc<Message>, publisher: &str) {
        self.publish_batch(std::slice::from_ref(&message), publisher);
    }

    /// A queue hit its limit under `disconnect`. A connected owner sees it through its
    /// outbox and closes itself; a waiting session is discarded here.
    fn on_overflow(&self, client_id: &str, outbox: &Arc<Outbox>) {
        if let Some(session) = self.registry.discard_overflowed(client_id, outbox) {
            tracing::info!(
                client_id = %LogId(client_id),
                reason = "message_queue_limit_reached",
                "waiting session discarded: queue full"
            );
            self.end_session(session, outbox);
        }
    }

    /// A session ended: its subscriptions leave the index, its queue is discarded, and a will
    /// still waiting for its delay fires now (the session ending comes first, MQTT 5.0
    /// §3.1.3.2.2).
    pub fn end_session(&self, mut session: Box<Session>, outbox: &Arc<Outbox>) {
        self.remove_subscriptions_later(&session, outbox);
        outbox.close();
        if let Some(will) = session.will.take() {
            self.publish_will(will, &session.client_id);
        }
    }

    /// A session ended while a new connection already owns its table entry (and so its
    /// outbox): the subscriptions go and the queue is emptied, but the outbox stays open for
    /// the new owner, who starts a fresh session on it.
    pub fn end_session_in_place(&self, session: &Session, outbox: &Arc<Outbox>) {
        self.remove_subscriptions(session, outbox);
        outbox.clear();
    }

    /// Removes a session's subscriptions a chunk per lock, so a session with many of them
    /// never holds the index against every publisher for long. Only entries that still point
    /// at the session's `outbox` go: once the table entry is released, a new connection with
    /// the same client id may subscribe to the same filter before this runs, and its
    /// subscription must stay (it did not, and a clean session's own message was lost).
    fn remove_subscriptions(&self, session: &Session, outbox: &Arc<Outbox>) {
        let filters: Vec<&str> = session.subscriptions.keys().map(String::as_str).collect();
        for chunk in filters.chunks(REMOVE_CHUNK) {
            let mut table = self.subscriptions_mut();
            for filter in chunk {
                table.unsubscribe_if(&session.client_id, filter, |h| Arc::ptr_eq(h, outbox));
            }
            self.stats.subscriptions.set(table.len() as f64);
        }
    }

    /// For a session that has ended for good (its outbox is closed, so nothing more reaches
    /// it): a large subscription set is removed by a background task that yields between
    /// chunks, so the connection or publisher that ended the session is not held up and other
    /// clients keep being served.
    fn remove_subscriptions_later(&self, session: &Session, outbox: &Arc<Outbox>) {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let Some(runtime) = runtime.filter(|_| session.subscriptions.len() > REMOVE_CHUNK) else {
            return self.remove_subscriptions(session, outbox);
        };
        let filters: Vec<String> = session.subscriptions.keys().cloned().collect();
        let (table, gauge) = (self.subscriptions.clone(), self.stats.subscriptions.clone());
        let (client_id, outbox) = (session.client_id.clone(), outbox.clone());
        runtime.spawn(async move {
            for chunk in filters.chunks(REMOVE_CHUNK) {
                {
                    let mut table = table.write().unwrap_or_else(|p| p.into_inner());
                    for filter in chunk {
                        table.unsubscribe_if(&client_id, filter, |h| Arc::ptr_eq(h, &outbox));
                    }
                    gauge.set(table.len() as f64);
                }
                tokio::task::yield_now().await;
            }
        });
    }

    pub fn publish_will(&self, will: Will, client_id: &str) {
        let now = Instant::now();
        let expires_at = will
            .properties
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        let properties = match crate::protocol::encode_passthrough_properties(&will.properties) {
            Ok(properties) => properties,
            Err(error) => {
                tracing::error!(client_id = %LogId(client_id), %error, "will properties could not be encoded; sent without them");
                bytes::Bytes::new()
            }
        };
        let message = Arc::new(Message {
            topic: Arc::from(will.topic.as_str()),
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties,
            expires_at,
        });
        tracing::debug!(client_id = %LogId(client_id), topic = %LogId(&message.topic), "will published");
        self.publish(message, client_id);
    }

    /// After a session was left waiting at `generation`: fires its delayed will when the delay
    /// passes and ends it when its expiry passes, unless its client came back first.
    pub fn schedule_waiting_session(
        self: &Arc<Self>,
        client_id: Arc<str>,
        generation: u64,
        will_delay: Option<u32>,
        expiry: u32,
    ) {
        let broker = Arc::downgrade(self);
        let expiry = Duration::from_secs(u64::from(expiry));
        let will_delay = will_delay
            .map(|d| Duration::from_secs(u64::from(d)))
            .filter(|d| *d < expiry);
        let registered = client_id.clone();
        let timer = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            if let Some(delay) = will_delay {
                tokio::time::sleep_until(start + delay).await;
                let Some(broker) = broker.upgrade() else {
                    return;
                };
                match broker.registry.take_will(&client_id, generation) {
                    Some(Some(will)) => broker.publish_will(will, &client_id),
                    Some(None) => {}
                    None => return,
                }
            }
            tokio::time::sleep_until(start + expiry).await;
            let Some(broker) = broker.upgrade() else {
                return;
            };
            if let Some((session, outbox)) = broker.registry.expire(&client_id, generation) {
                tracing::debug!(client_id = %LogId(&client_id), "waiting session expired");
                broker.end_session(session, &outbox);
            }
        });
        self.registry
            .set_timer(&registered, generation, timer.abort_handle());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::QueueLimits;
    use crate::protocol::Version;
    use crate::router::SubscriptionOptions;

    fn broker() -> Broker {
        let config = Config::default();
        let auth = Authenticator::from_config(&config.auth).expect("auth");
        Broker::new(config, auth)
    }

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(
            QueueLimits::from_config(&Config::default().limits),
            metrics::Gauge::noop(),
        ))
    }

    /// A session's table entry is released before its subscriptions are removed; a new
    /// connection with the same client id may subscribe to the same filter in between. Ending
    /// the old session must leave the new subscription in place (it once removed it, and the
    /// new clean session's own messages went nowhere).
    #[test]
    fn ending_a_session_leaves_its_successors_subscriptions() {
        let broker = broker();
        let id: Arc<str> = Arc::from("c");
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            subscription_identifier: None,
        };
        let (old, new) = (outbox(), outbox());
        let mut session = Box::new(Session::new(id.clone(), Version::V5));
        session
            .subscriptions
            .insert("t/#".to_string(), options.clone());
        broker
            .subscriptions_mut()
            .subscribe(&id, old.clone(), "t/#", options.clone());
        // The successor subscribes first (its handle replaces the old one)...
        broker
            .subscriptions_mut()
            .subscribe(&id, new.clone(), "t/#", options);
        // ...then the old session's end is processed.
        broker.end_session(session, &old);
        let message = Arc::new(Message {
            topic: Arc::from("t/x"),
            payload: bytes::Bytes::from_static(b"m"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: bytes::Bytes::new(),
            expires_at: None,
        });
        broker.publish(message, "publisher");
        assert_eq!(new.len(), 1, "the successor still receives");
    }
}
