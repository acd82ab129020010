//! A connection's hold on its session, from CONNACK to close.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::close::CloseReason;
use crate::message::Message;
use crate::protocol::Version;
use crate::router::SubscriptionOptions;

use super::mailbox::{Control, Mailbox, SubscriptionList};
use super::queue::Queue;
use super::state::SessionState;
use super::store::{Change, Commit, Load};
use super::table::{ConnInfo, Detached};
use super::{HANDOVER_TIMEOUT, SessionEnd, Sessions, timers};

type HandoverReply = oneshot::Sender<Option<Box<SessionState>>>;

/// Owned by the connection while it is connected. Dropping it (however the connection ends,
/// even by a panic) closes its mailbox, so a takeover that arrives later learns at once that
/// there is no one to hand the session over.
pub struct Lease {
    sessions: Arc<Sessions>,
    /// This connection's generation in the session table (compare-and-act on detach).
    generation: u64,
    queue: Arc<Queue>,
    mailbox: Arc<Mailbox>,
    state: Box<SessionState>,
    info: Arc<ConnInfo>,
    present: bool,
    /// A takeover asked for the session while the connection was running.
    handover: Option<HandoverReply>,
    /// What this connection's publishes stored in other sessions' queues, to submit with the
    /// session's own changes.
    routed: Vec<Change>,
    /// Other cluster nodes taking this connection's QoS 1/2 publishes since the last commit.
    forwarded: Commit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.mailbox.close();
    }
}

impl Lease {
    pub(super) fn new(
        sessions: Arc<Sessions>,
        generation: u64,
        queue: Arc<Queue>,
        mailbox: Arc<Mailbox>,
        state: Box<SessionState>,
        info: Arc<ConnInfo>,
        present: bool,
    ) -> Lease {
        Lease {
            sessions,
            generation,
            queue,
            mailbox,
            state,
            info,
            present,
            handover: None,
            routed: Vec::new(),
            forwarded: Commit::done(),
        }
    }

    /// Whether an existing session was resumed (CONNACK Session Present).
    pub fn session_present(&self) -> bool {
        self.present
    }

    pub fn client_id(&self) -> &Arc<str> {
        self.state.client_id()
    }

    pub fn version(&self) -> Version {
        self.state.version()
    }

    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    pub fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }

    /// The connection's user (authenticated at CONNECT), for logs and the close history.
    /// The listener the connection holding the lease came in on.
    pub fn listener(&self) -> &Arc<str> {
        &self.info.listener
    }

    pub fn user(&self) -> Option<&Arc<str>> {
        self.info.user.as_ref()
    }

    /// The session's subscriptions, sorted by filter (answers [`Control::Subscriptions`]).
    pub fn subscription_list(&self) -> SubscriptionList {
        let mut list: SubscriptionList = self
            .state
            .subscriptions()
            .map(|(filter, options)| (filter.to_string(), options.clone()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// The session's in-flight messages, inbound QoS 2 ids, will and expiry change here.
    pub fn state_mut(&mut self) -> &mut SessionState {
        &mut self.state
    }

    /// Publishes what this connection's client sent (routed in one batch). What must be
    /// stored goes with the next [`Lease::commit`].
    pub fn publish(&mut self, messages: &[Arc<Message>]) {
        let forwarded =
            self.sessions
                .publish_recording(messages, self.state.client_id(), &mut self.routed);
        if !forwarded.is_done() {
            let earlier = std::mem::replace(&mut self.forwarded, Commit::done());
            self.forwarded = earlier.and(forwarded);
        }
    }

    /// Records a delivery this connection put in its own session's queue (retained messages
    /// on subscribe) when the queue stored it.
    pub fn record_queued(&mut self, delivery: &crate::message::Delivery) {
        if delivery.persisted {
            let change = Change::Queued {
                client_id: self.state.client_id().clone(),
                seq: delivery.seq,
                message: delivery.message.clone(),
                qos: delivery.qos,
                retain: delivery.retain,
                subscription_identifiers: delivery.subscription_identifiers.clone(),
            };
            self.state.push_change(change);
        }
    }

    /// Whether acknowledgements must wait for their changes to be on disk
    /// (`[storage] sync = "always"`).
    pub fn acknowledges_durably(&self) -> bool {
        self.sessions.store.waits()
    }

    /// Submits what changed since the last commit (the session's own changes and what its
    /// publishes stored elsewhere); the commit resolves once they are durable.
    pub fn commit(&mut self) -> Commit {
        let mut changes = self.state.take_changes();
        if changes.is_empty() {
            changes = std::mem::take(&mut self.routed);
        } else {
            changes.append(&mut self.routed);
        }
        let forwarded = std::mem::replace(&mut self.forwarded, Commit::done());
        if changes.is_empty() {
            return forwarded;
        }
        self.sessions.store.submit(changes).and(forwarded)
    }

    /// Reads a piece of this session's stored backlog.
    pub fn load(&self, from: u64, limit: usize) -> Load {
        self.sessions
            .store
            .load(self.state.client_id().clone(), from, limit)
    }

    /// Adds or replaces a subscription in the session and in the router's index; returns
    /// whether it existed.
    pub fn subscribe(&mut self, filter: &str, options: SubscriptionOptions) -> bool {
        let existed = self.sessions.routing.subscribe(
            self.state.client_id(),
            &self.queue,
            filter,
            options.clone(),
        );
        self.state.insert_subscription(filter, options);
        existed
    }

    /// Removes a subscription from the session and the index; returns whether it existed.
    pub fn unsubscribe(&mut self, filter: &str) -> bool {
        let existed = self
            .sessions
            .routing
            .unsubscribe(self.state.client_id(), filter);
        self.state.remove_subscription(filter);
        existed
    }

    /// Publishes the figures listings show (subscriptions, in flight, expiry).
    pub fn update_counters(&self) {
        self.info.counters.update(&self.state);
    }

    /// A takeover arrived in the mailbox: the session goes to it when this lease finishes.
    pub fn hand_over_on_finish(&mut self, reply: HandoverReply) {
        self.handover = Some(reply);
    }

    /// Ends the connection's hold: the will is handled (MQTT-3.1.2-8..10; v5 §3.1.3.2.2 for the
    /// delay), and the session waits for its client, goes to the connection that took it
    /// over, or ends. `will_on_close` is a v5 DISCONNECT 0x04's request for the will;
    /// `discard` ends the session whatever its expiry (a kick or revoke).
    pub async fn finish(mut self, reason: CloseReason, will_on_close: bool, discard: bool) {
        let fire = will_on_close || reason.fires_will();
        let survives = !discard && reason.session_survives() && self.state.expiry_interval() > 0;
        if !fire {
            self.state.set_will(None);
        } else if let Some(will) = self.state.take_will() {
            let delayed =
                self.state.version() == Version::V5 && will.delay_interval > 0 && survives;
            if delayed {
                // Fires from the waiting session when the delay passes, unless the client
                // comes back first.
                self.state.set_will(Some(will));
            } else {
                self.sessions.publish_will(will, self.state.client_id());
            }
        }
        let end = SessionEnd::after_close(reason, discard);
        let client_id = self.state.client_id().clone();
        let version = self.state.version();
        let state = std::mem::replace(
            &mut self.state,
            Box::new(SessionState::new(client_id.clone(), version)),
        );
        if let Some(reply) = self.handover.take() {
            return self.hand_over(reply, state, survives, end);
        }
        let will_delay = state.will().map(|w| w.delay_interval);
        let expiry = state.expiry_interval();
        let sessions = self.sessions.clone();
        let mut state = state;
        if survives {
            self.park(&mut state);
        }
        drop(self.commit_with(&mut state));
        match sessions
            .table
            .detach(&client_id, self.generation, state, survives)
        {
            Detached::Kept => {
                timers::schedule(&sessions, client_id, self.generation, will_delay, expiry);
            }
            Detached::Removed(state, queue) => sessions.end(state, &queue, end),
            Detached::NotOwner(state) => {
                // A takeover is under way: its request is, or is about to be, in the mailbox
                // (the new owner sends it right after taking the entry).
                match self.wait_for_takeover().await {
                    Some(reply) => self.hand_over(reply, state, survives, end),
                    None => sessions.end_in_place(&state, &self.queue, end),
                }
            }
        }
    }

    /// A persistent session starts waiting: its stored record gets its deadlines, and its
    /// queued and in-flight messages leave memory (read back when its client returns).
    fn park(&self, state: &mut SessionState) {
        if !state.is_persisted() {
            return;
        }
        let now = std::time::SystemTime::now();
        let mut record = state.stored_record();
        record.expires_at =
            Some(now + std::time::Duration::from_secs(u64::from(state.expiry_interval())));
        record.will_at = state
            .will()
            .map(|w| now + std::time::Duration::from_secs(u64::from(w.delay_interval)));
        state.push_change(Change::Session {
            client_id: state.client_id().clone(),
            record,
        });
        self.queue.park(state.park_inflight());
    }

    /// Submits the changes recorded in `state` (the lease's own state was taken out of it).
    fn commit_with(&mut self, state: &mut SessionState) -> Commit {
        let mut changes = state.take_changes();
        changes.append(&mut self.routed);
        if changes.is_empty() {
            return Commit::done();
        }
        self.sessions.store.submit(changes)
    }

    async fn wait_for_takeover(&self) -> Option<HandoverReply> {
        let wait = async {
            loop {
                if let Control::TakeOver { reply } | Control::Migrate { reply } =
                    self.mailbox.recv().await
                {
                    return reply;
                }
            }
        };
        tokio::time::timeout(HANDOVER_TIMEOUT, wait).await.ok()
    }

    /// The connection that took the session over gets it if it survives this close; else it
    /// ends here (the new owner sees Session Present 0: a session with no expiry is never
    /// reused, MQTT-3.1.2-6 / 5.0 §3.1.2.11.2).
    fn hand_over(
        &self,
        reply: HandoverReply,
        state: Box<SessionState>,
        survives: bool,
        end: SessionEnd,
    ) {
        let handover = if survives {
            Some(state)
        } else {
            self.sessions.end_in_place(&state, &self.queue, end);
            None
        };
        if let Err(Some(state)) = reply.send(handover) {
            // The new owner gave up waiting: the session cannot go to it, and ends here.
            tracing::warn!(client_id = %crate::logsafe::LogId(state.client_id()), "takeover: the new connection was gone before the session was handed over");
            self.sessions.end_in_place(&state, &self.queue, end);
        }
    }
}
