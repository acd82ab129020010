//! Sessions that move between cluster nodes: the node that owned a session gives it up
//! ([`Sessions::surrender`], its connection closing with `session_taken_over` or, for a
//! drain, `failed_over`), and the node a client connected to takes it in through
//! [`ConnectRequest::remote`](super::ConnectRequest). What moves is a [`Handover`]: the
//! subscriptions, the messages in flight and queued, the inbound QoS 2 ids and the expiry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::message::Delivery;
use crate::protocol::Version;
use crate::router::SubscriptionOptions;

use super::mailbox::{Control, Mailbox};
use super::queue::Queue;
use super::state::{OutboundState, SessionState};
use super::store::{Change, Commit};
use super::table::{ConnInfo, Counters, Detached, Previous};
use super::{HANDOVER_TIMEOUT, SessionEnd, Sessions};

/// A session's state on its way from one node to another.
#[derive(Clone, Debug)]
pub struct Handover {
    pub version: Version,
    pub expiry_interval: u32,
    pub subscriptions: Vec<(String, SubscriptionOptions)>,
    /// Sent and not yet acknowledged, in the order they were sent.
    pub inflight: Vec<(u16, OutboundState, Delivery)>,
    /// Not yet sent, oldest first.
    pub queued: Vec<Delivery>,
    pub inbound_qos2: Vec<u16>,
}

/// How a connected owner is asked to give its session up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surrender {
    /// A CONNECT on another node: the connection closes with `session_taken_over` (0x8E).
    TakenOver,
    /// This node is draining: the connection closes with `failed_over` (0x9C).
    Drained,
}

impl Sessions {
    /// Gives `client_id`'s session up to another node: a waiting session leaves the table, a
    /// connected one is taken from its connection (which closes as `how` says). `None` when
    /// there is no session, or it does not outlive its connection.
    pub async fn surrender(self: &Arc<Self>, client_id: &str, how: Surrender) -> Option<Handover> {
        if let Some((state, queue)) = self.table.discard_waiting(client_id) {
            self.load_backlog(&state, &queue).await;
            return Some(self.export(state, &queue, how));
        }
        if self.table.presence(client_id) != Some(true) {
            return None;
        }
        let info = Arc::new(ConnInfo {
            user: None,
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            listener: Arc::from("cluster"),
            version: Version::V5,
            connected_at: SystemTime::now(),
            counters: Counters::default(),
        });
        let id: Arc<str> = Arc::from(client_id);
        let placeholder = Mailbox::new();
        let attached = self
            .table
            .attach(&id, placeholder.clone(), false, info, || self.new_queue());
        let state = match attached.previous {
            Previous::Connected(old) => {
                let (reply, replied) = tokio::sync::oneshot::channel();
                let control = match how {
                    Surrender::TakenOver => Control::TakeOver { reply },
                    Surrender::Drained => Control::Migrate { reply },
                };
                if old.send(control) {
                    tokio::time::timeout(HANDOVER_TIMEOUT, replied)
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten()
                } else {
                    None
                }
            }
            Previous::Waiting(state) => Some(state),
            Previous::Nothing => None,
        };
        placeholder.close();
        let empty = Box::new(SessionState::new(id.clone(), Version::V5));
        let queue = match self.table.detach(&id, attached.generation, empty, false) {
            Detached::Removed(_, queue) => queue,
            // A CONNECT here took the id meanwhile: it owns the queue now.
            _ => return state.map(|s| self.export_unqueued(s)),
        };
        match state {
            Some(state) => {
                self.load_backlog(&state, &queue).await;
                Some(self.export(state, &queue, how))
            }
            None => {
                queue.close();
                None
            }
        }
    }

    /// A persistent session's queue keeps its oldest messages in the durable store while it
    /// waits: they are read back into memory so that they move with it.
    async fn load_backlog(&self, state: &SessionState, queue: &Arc<Queue>) {
        if !state.is_persisted() || !self.store.durable() {
            return;
        }
        queue.set_connected(true);
        while let Some(backlog) = queue.backlog_to_load(usize::MAX) {
            let loaded = match self
                .store
                .load(state.client_id().clone(), backlog.from, backlog.count)
                .await
            {
                Ok(loaded) => loaded,
                Err(error) => {
                    tracing::error!(client_id = %crate::logsafe::LogId(state.client_id()), %error, "cluster: a moving session's stored messages could not be read");
                    return;
                }
            };
            let deliveries = loaded
                .deliveries
                .into_iter()
                .map(super::store::StoredDelivery::into_delivery)
                .collect();
            queue.loaded(deliveries, loaded.next);
        }
    }

    /// The session leaves this node: its subscriptions leave the index, its queue's messages
    /// go with it and the queue closes; a stored copy here is removed. Counted as ended here (`failed_over`: the session
    /// lives on elsewhere).
    fn export(&self, state: Box<SessionState>, queue: &Arc<Queue>, how: Surrender) -> Handover {
        let filters: Vec<&str> = state.subscriptions().map(|(f, _)| f).collect();
        self.routing
            .remove_subscriptions(state.client_id(), &filters, queue);
        let mut queued = Vec::new();
        queue.drain(usize::MAX, usize::MAX, &mut queued);
        queue.close();
        if how == Surrender::Drained {
            self.ended(state.client_id(), SessionEnd::FailedOver);
        } else if state.is_persisted() && self.store.durable() {
            // Stored here, it would come back at this node's next start: it lives elsewhere.
            drop(self.store.submit(vec![Change::SessionLeft {
                client_id: state.client_id().clone(),
            }]));
        }
        let mut handover = self.export_unqueued(state);
        handover.queued = queued;
        handover
    }

    fn export_unqueued(&self, state: Box<SessionState>) -> Handover {
        Handover {
            version: state.version(),
            expiry_interval: state.expiry_interval(),
            subscriptions: state
                .subscriptions()
                .map(|(f, o)| (f.to_string(), o.clone()))
                .collect(),
            inflight: state
                .inflight()
                .map(|m| (m.packet_id, m.state, m.delivery.clone()))
                .collect(),
            queued: Vec::new(),
            inbound_qos2: state.inbound_qos2_ids(),
        }
    }

    /// A session that came from another node, as this node's state, subscribed and queued
    /// into `queue`.
    pub(super) fn import(
        &self,
        client_id: &Arc<str>,
        handover: Handover,
        queue: &Arc<Queue>,
    ) -> Box<SessionState> {
        let mut state = Box::new(SessionState::new(client_id.clone(), handover.version));
        state.set_expiry_interval(handover.expiry_interval);
        for (filter, options) in handover.subscriptions {
            self.routing
                .subscribe(client_id, queue, &filter, options.clone());
            state.insert_subscription(&filter, options);
        }
        for (packet_id, outbound, mut delivery) in handover.inflight {
            delivery.persisted = false;
            state.push_inflight(packet_id, delivery, Some(outbound));
        }
        for packet_id in handover.inbound_qos2 {
            state.insert_inbound_qos2(packet_id);
        }
        for mut delivery in handover.queued {
            delivery.persisted = false;
            delivery.resume = None;
            let _ = queue.offer(delivery);
        }
        state
    }

    /// A session a draining node handed to this one: it waits here for its client (who was
    /// told to come here with a Server Reference), with its expiry timer.
    ///
    /// With a durable store, it is stored here (what was stored for it elsewhere is replaced);
    /// the returned commit resolves once it is.
    pub fn adopt(self: &Arc<Self>, client_id: Arc<str>, handover: Handover) -> Commit {
        if self.table.presence(&client_id).is_some() {
            // Its client came here first and has a session already: that one is current.
            return Commit::done();
        }
        let queue = self.new_queue();
        queue.set_connected(false);
        let expiry = handover.expiry_interval;
        let version = handover.version;
        let mut state = self.import(&client_id, handover, &queue);
        let now = SystemTime::now();
        let commit = if self.store.durable() && expiry > 0 {
            queue.set_persistent(true);
            state.set_persisted(true);
            state.push_change(Change::SessionGone {
                client_id: client_id.clone(),
            });
            let mut record = state.stored_record();
            record.expires_at = Some(now + std::time::Duration::from_secs(u64::from(expiry)));
            state.push_change(Change::Session {
                client_id: client_id.clone(),
                record,
            });
            self.record_afresh(&mut state, &queue);
            self.store.submit(state.take_changes())
        } else {
            Commit::done()
        };
        let info = Arc::new(ConnInfo {
            user: state.user().cloned(),
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            listener: Arc::from("cluster"),
            version,
            connected_at: now,
            counters: Counters::default(),
        });
        let generation = self.table.insert_waiting(state, queue, info, now);
        super::timers::schedule(self, client_id, generation, None, expiry);
        commit
    }

    /// A session that came from another node becomes this node's stored session: everything
    /// it holds is recorded afresh (its record, and what the stored copy it came from held,
    /// are the caller's).
    pub(super) fn record_afresh(&self, state: &mut SessionState, queue: &Queue) {
        state.record_afresh(|| queue.next_seq());
        for delivery in queue.store_in_memory() {
            state.push_change(Change::Queued {
                client_id: state.client_id().clone(),
                seq: delivery.seq,
                message: delivery.message,
                qos: delivery.qos,
                retain: delivery.retain,
                subscription_identifiers: delivery.subscription_identifiers,
            });
        }
    }

    /// This node's copy of `client_id`'s session is stale (the cluster's owner entry names
    /// another node): its connection closes with `failed_over` and the copy ends.
    pub fn fail_over(&self, client_id: &str) -> bool {
        let close = Control::Close {
            reason: crate::close::CloseReason::FailedOver,
            discard: true,
        };
        if self.table.signal(client_id, close).is_some() {
            return true;
        }
        if let Some((state, queue)) = self.table.discard_waiting(client_id) {
            self.end(state, &queue, SessionEnd::FailedOver);
            return true;
        }
        false
    }

    /// Client ids of the sessions whose client is connected here.
    pub fn connected_ids(&self) -> Vec<Arc<str>> {
        self.table
            .list(None, usize::MAX, |info| info.connected)
            .into_iter()
            .map(|info| info.client_id)
            .collect()
    }
}
