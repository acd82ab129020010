//! The whole life of a session: the only code that creates, hands over, ends and stores
//! sessions.
//!
//! - [`Sessions`]: the facade. `connect` takes a client id's session for a new connection
//!   (resuming a waiting one, taking a connected one over, or starting fresh) and returns a
//!   [`Lease`]; `kick`, `revoke_user`, `list` and `info` serve the control plane.
//! - [`Lease`]: a connection's hold on its session, through which the session's state changes
//!   (subscriptions, messages in flight, inbound QoS 2 ids, the will) and which `finish`es
//!   with the connection's close reason: the session then waits for its client, goes to the
//!   connection that took it over, or ends.
//! - `table`: the map from client id to session (generations, the only code that touches it);
//!   `state`: the session's data; `queue`: its outbound queue; `mailbox`: what a connected
//!   session is asked to do; `timers`: will delay and expiry while it waits.
//! - [`SessionEnd`]: why a session ended, exactly once, logged and counted.
//! - [`store`]: the [`store::SessionStore`] seam for stores that outlive the process.

mod control;
mod end;
mod lease;
mod mailbox;
pub mod queue;
mod remote;
mod restore;
mod state;
pub mod store;
mod table;
mod timers;

use std::sync::Arc;

use metrics::Counter;

use crate::config::Limits;
use crate::logsafe::LogId;
use crate::message::Message;
use crate::protocol::Will;
use crate::routing::{Overflowed, Routing};

pub use control::SessionDetail;
pub use end::SessionEnd;
pub use lease::Lease;
pub use mailbox::{Control, Mailbox, SubscriptionList};
pub use queue::{Backlog, Offer, Queue, QueueLimits};
pub use remote::{Handover, Surrender};
pub use restore::Restored;
pub use state::{Ack, AckOutcome, InflightOut, OutboundState, SessionState};
pub use store::{Change, SessionStore};
pub use table::{ConnInfo, Counters, SessionInfo};

use table::{Previous, Table};

/// How long a takeover waits for the old connection to hand its session over.
const HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a new connection asks of its session.
pub struct ConnectRequest {
    pub client_id: Arc<str>,
    pub clean_start: bool,
    /// Negotiated Session Expiry Interval (seconds; 0 = ends with the connection).
    pub expiry_interval: u32,
    pub will: Option<Will>,
    pub info: ConnInfo,
    /// The session as another cluster node handed it over (it owned the client id).
    pub remote: Option<Handover>,
}

pub struct Sessions {
    table: Table,
    routing: Arc<Routing>,
    store: Arc<dyn SessionStore>,
    limits: QueueLimits,
    /// `brokk_queued_messages`, shared by every queue.
    queued: metrics::Gauge,
    /// `brokk_sessions_ended_total`, one counter per [`SessionEnd`] (in `SessionEnd::ALL` order).
    ended: Vec<Counter>,
    /// Users whose CONNECTs are refused (admin revoke), stored like sessions.
    revoked: std::sync::RwLock<std::collections::HashSet<Arc<str>>>,
    /// Where this node's publishes also go when it is a cluster node.
    forward: std::sync::OnceLock<Arc<dyn Forward>>,
}

/// Takes what this node's clients publish to the other nodes of a cluster. The commit
/// resolves once the other nodes have taken (and stored) the QoS 1/2 messages among them.
pub trait Forward: Send + Sync + 'static {
    fn forward(&self, messages: &[Arc<Message>], publisher: &str) -> store::Commit;
}

impl Sessions {
    pub fn new(
        routing: Arc<Routing>,
        store: Arc<dyn SessionStore>,
        limits: &Limits,
        queued: metrics::Gauge,
    ) -> Arc<Sessions> {
        let ended = SessionEnd::ALL
            .iter()
            .map(|end| metrics::counter!(crate::metrics::SESSIONS_ENDED, "reason" => end.label()))
            .collect();
        Arc::new(Sessions {
            table: Table::new(),
            routing,
            store,
            limits: QueueLimits::from_config(limits),
            queued,
            ended,
            revoked: Default::default(),
            forward: Default::default(),
        })
    }

    pub fn routing(&self) -> &Arc<Routing> {
        &self.routing
    }

    fn new_queue(&self) -> Arc<Queue> {
        Arc::new(Queue::new(self.limits, self.queued.clone()))
    }

    /// Takes `request.client_id`'s session for a new connection: resumes a waiting session,
    /// takes a connected one over (its connection is told, closes with `session_taken_over`
    /// and hands the session over), or starts a new one; with clean start an existing session
    /// ends first. Of simultaneous connects with one client id, exactly one ends up owner.
    pub async fn connect(self: &Arc<Self>, request: ConnectRequest) -> Lease {
        let ConnectRequest {
            client_id,
            clean_start,
            expiry_interval,
            will,
            info,
            remote,
        } = request;
        let version = info.version;
        let info = Arc::new(info);
        let mailbox = Mailbox::new();
        let attached = self.table.attach(
            &client_id,
            mailbox.clone(),
            clean_start,
            info.clone(),
            || self.new_queue(),
        );
        // A revoke that ran between the caller's check of the user and this attach did not
        // see this connection: it is closed here instead (the revoke marks the user before it
        // looks for sessions, so one of the two always sees the other).
        if let Some(user) = &info.user
            && self.is_revoked(user)
        {
            mailbox.send(Control::Close {
                reason: crate::close::CloseReason::Revoked,
                discard: true,
            });
        }
        let previous = match attached.previous {
            Previous::Nothing => None,
            Previous::Waiting(session) => Some(session),
            Previous::Connected(old) => take_over(&old, &client_id).await,
        };
        // A session from the node that owned the client id is the current one: a copy left
        // here is stale.
        let imported = remote.is_some();
        let previous = match (previous, remote) {
            (previous, None) => previous,
            (stale, Some(handover)) => {
                if let Some(stale) = stale {
                    self.end_in_place(&stale, &attached.queue, SessionEnd::FailedOver);
                }
                Some(self.import(&client_id, handover, &attached.queue))
            }
        };
        let (mut state, present) = match previous {
            Some(old) if !clean_start => (old, true),
            Some(old) => {
                // Clean start: the old session ends here. Its client is back, so a delayed
                // will still pending is not published (MQTT-3.1.2-8).
                let queue = attached.replaced_queue.as_ref().unwrap_or(&attached.queue);
                self.end(old, queue, SessionEnd::CleanStart);
                (
                    Box::new(SessionState::new(client_id.clone(), version)),
                    false,
                )
            }
            None => (
                Box::new(SessionState::new(client_id.clone(), version)),
                false,
            ),
        };
        if let Some(queue) = &attached.replaced_queue {
            queue.close();
        }
        // Stored when the store persists and the session outlives its connection (or already
        // was stored: it stays so until it ends).
        let persist = self.store.durable() && (expiry_interval > 0 || state.is_persisted());
        state.set_persisted(false);
        state.set_version(version);
        state.set_user(info.user.clone());
        state.set_expiry_interval(expiry_interval);
        // A resumed session's delayed will is cancelled: its client is back (MQTT-3.1.3-9 / v5
        // §3.1.3.2.2); the new connection's will replaces it.
        state.set_will(will);
        state.set_persisted(persist);
        attached.queue.set_persistent(persist);
        if imported && !persist && self.store.durable() {
            // Resumed without persistence: the copy stored where it came from goes.
            drop(self.store.submit(vec![Change::SessionGone {
                client_id: client_id.clone(),
            }]));
        }
        if persist {
            if imported {
                // What the cluster stored for it was written by the node it left.
                state.push_change(Change::SessionGone {
                    client_id: client_id.clone(),
                });
            }
            state.record_session();
            if imported && present {
                self.record_afresh(&mut state, &attached.queue);
            }
            let commit = self.store.submit(state.take_changes());
            if imported {
                // Stored again before the client hears Session Present: the copy it came
                // from is gone.
                if let Err(error) = commit.await {
                    tracing::error!(client_id = %LogId(&client_id), %error, "a session taken from another node was not stored");
                }
            }
        }
        info.counters.update(&state);
        Lease::new(
            self.clone(),
            attached.generation,
            attached.queue,
            mailbox,
            state,
            info,
            present,
        )
    }

    /// Closes `client_id`'s connection with `closed_by_controller` (v5 0x98), and with
    /// `discard` ends its session too; a waiting session is ended with `discard`. Whether
    /// there was a session. (`kick_and_wait` also waits for the close to finish.)
    pub fn kick(&self, client_id: &str, discard: bool) -> bool {
        self.kick_connection(client_id, discard).0
    }

    /// `kick`, and the mailbox of the connection it closes, if one was connected.
    fn kick_connection(&self, client_id: &str, discard: bool) -> (bool, Option<Arc<Mailbox>>) {
        let close = Control::Close {
            reason: crate::close::CloseReason::ClosedByController,
            discard,
        };
        if let Some(mailbox) = self.table.signal(client_id, close) {
            return (true, Some(mailbox));
        }
        if discard && let Some((state, queue)) = self.table.discard_waiting(client_id) {
            self.end(state, &queue, SessionEnd::Kicked);
            return (true, None);
        }
        (self.table.presence(client_id).is_some(), None)
    }

    /// Closes every session of `user` with `revoked` (v5 0x87) and ends them; returns how many.
    /// This does not refuse the user's next CONNECT (a reload that removed the user needs no
    /// more); `revoke` does.
    pub fn revoke_user(&self, user: &str) -> usize {
        self.close_user(user).0
    }

    /// `revoke_user`, and the mailboxes of the connections it closes.
    fn close_user(&self, user: &str) -> (usize, Vec<Arc<Mailbox>>) {
        let mut closing = Vec::new();
        let mut n = 0;
        for client_id in self.table.ids_of_user(user) {
            let close = Control::Close {
                reason: crate::close::CloseReason::Revoked,
                discard: true,
            };
            if let Some(mailbox) = self.table.signal(&client_id, close) {
                closing.push(mailbox);
                n += 1;
            } else if let Some((state, queue)) = self.table.discard_waiting(&client_id) {
                self.end(state, &queue, SessionEnd::Revoked);
                n += 1;
            }
        }
        (n, closing)
    }

    /// Ends with `revoked` the waiting sessions whose last user `revoked` names (a reload
    /// removed the user or changed its password). Connected sessions are left to their
    /// connections, which know how their client logged in (a token or a certificate for the
    /// same name still holds). Returns how many ended.
    pub fn revoke_waiting(&self, revoked: impl Fn(&str) -> bool) -> usize {
        let mut n = 0;
        for client_id in self.table.waiting_ids_of_users(&revoked) {
            if let Some((state, queue)) = self.table.discard_waiting_of_users(&client_id, &revoked)
            {
                self.end(state, &queue, SessionEnd::Revoked);
                n += 1;
            }
        }
        n
    }

    pub fn info(&self, client_id: &str) -> Option<SessionInfo> {
        self.table.info(client_id)
    }

    /// Up to `limit` sessions after `after` (client-id order) that pass `keep`.
    pub fn list(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&SessionInfo) -> bool,
    ) -> Vec<SessionInfo> {
        self.table.list(after, limit, keep)
    }

    /// (connected, waiting) sessions.
    pub fn counts(&self) -> (usize, usize) {
        self.table.counts()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Subscriptions of every session together (the router's index).
    pub fn subscription_count(&self) -> usize {
        self.routing.subscription_count()
    }

    /// Routes a batch of messages from `publisher` into the matching sessions' queues (and,
    /// with a durable store, stores what must be: nothing waits for it here).
    pub fn publish(&self, messages: &[Arc<Message>], publisher: &str) {
        let mut changes = Vec::new();
        // Wills and $SYS: nothing waits for the other nodes either.
        drop(self.publish_recording(messages, publisher, &mut changes));
        if !changes.is_empty() {
            drop(self.store.submit(changes));
        }
    }

    /// [`Sessions::publish`], adding what must be stored to `changes` (the caller submits
    /// them, and may wait for their commit before acknowledging).
    pub(crate) fn publish_recording(
        &self,
        messages: &[Arc<Message>],
        publisher: &str,
        changes: &mut Vec<Change>,
    ) -> store::Commit {
        let record = self.store.durable().then_some(changes);
        let overflowed = self.routing.publish_batch(messages, publisher, record);
        self.overflowed(overflowed);
        match self.forward.get() {
            Some(forward) => forward.forward(messages, publisher),
            None => store::Commit::done(),
        }
    }

    /// Sends every later publish to the other cluster nodes too.
    pub fn set_forward(&self, forward: Arc<dyn Forward>) {
        let _ = self.forward.set(forward);
    }

    /// Delivers messages another cluster node published to the sessions here (their retained
    /// part arrives separately); the commit resolves once what they queued is stored.
    pub fn publish_remote(&self, messages: &[Arc<Message>], publisher: &str) -> store::Commit {
        let mut changes = Vec::new();
        let record = self.store.durable().then_some(&mut changes);
        let overflowed = self.routing.route_batch(messages, publisher, record);
        self.overflowed(overflowed);
        if changes.is_empty() {
            store::Commit::done()
        } else {
            self.store.submit(changes)
        }
    }

    /// A retained message set (`Some`) or cleared on another cluster node.
    pub fn remote_retained(&self, topic: &str, message: Option<Arc<Message>>) {
        match message {
            Some(message) => self.routing.restore_retained(message),
            None => self.routing.clear_retained(topic),
        }
    }

    /// The durable store (or the memory one).
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Queues that hit their limit under `disconnect`: a connected owner sees it through its
    /// queue and closes itself; a waiting session ends here.
    fn overflowed(&self, overflowed: Vec<Overflowed>) {
        for Overflowed { client_id, queue } in overflowed {
            if let Some((state, queue)) = self.table.discard_overflowed(&client_id, &queue) {
                self.end(state, &queue, SessionEnd::QueueLimit);
            }
        }
    }

    /// Publishes a will (its delay passed, or its session ended, or its connection closed).
    fn publish_will(&self, will: Will, client_id: &str) {
        match crate::message::from_will(will) {
            Ok(message) => {
                tracing::debug!(client_id = %LogId(client_id), topic = %LogId(&message.topic), "will published");
                self.publish(&[message], client_id);
            }
            Err(error) => {
                tracing::error!(client_id = %LogId(client_id), %error, "will could not be published");
            }
        }
    }

    /// A session ends for good: its subscriptions leave the index, its queue closes, and a
    /// will still waiting for its delay fires now (the session ending comes first, MQTT 5.0
    /// §3.1.3.2.2), except when its own client is back with a clean start.
    fn end(&self, mut state: Box<SessionState>, queue: &Arc<Queue>, why: SessionEnd) {
        let filters = state.subscriptions().map(|(f, _)| f.to_string()).collect();
        self.routing
            .remove_subscriptions_later(state.client_id(), filters, queue);
        queue.close();
        if let Some(will) = state.take_will()
            && why != SessionEnd::CleanStart
        {
            self.publish_will(will, state.client_id());
        }
        self.ended(state.client_id(), why);
    }

    /// A session ends while a new connection already owns its table entry and queue (a
    /// takeover of a session that does not survive): its subscriptions go and the queue is
    /// emptied, but stays open for the new owner.
    fn end_in_place(&self, state: &SessionState, queue: &Arc<Queue>, why: SessionEnd) {
        let filters: Vec<&str> = state.subscriptions().map(|(f, _)| f).collect();
        self.routing
            .remove_subscriptions(state.client_id(), &filters, queue);
        queue.clear();
        self.ended(state.client_id(), why);
    }

    /// A session whose stored copy could not be read back whole ends with `lost_messages`
    /// (what is stored of it goes); its client's CONNECT starts afresh, with Session Present 0.
    pub fn lost(&self, client_id: &str) {
        self.ended(client_id, SessionEnd::LostMessages);
    }

    fn ended(&self, client_id: &str, why: SessionEnd) {
        let index = SessionEnd::ALL
            .iter()
            .position(|e| *e == why)
            .unwrap_or_default();
        if let Some(counter) = self.ended.get(index) {
            counter.increment(1);
        }
        if self.store.durable() {
            // The outcome is known from the commit's error alone; nothing waits for it here.
            let client_id = Arc::from(client_id);
            // Failed over: the session lives on at another node, which stores it.
            let change = if why == SessionEnd::FailedOver {
                Change::SessionLeft { client_id }
            } else {
                Change::SessionGone { client_id }
            };
            drop(self.store.submit(vec![change]));
        }
        let client_id = LogId(client_id);
        match why {
            SessionEnd::ConnectionClosed | SessionEnd::CleanStart => {
                tracing::debug!(%client_id, reason = why.label(), "session ended")
            }
            _ => tracing::info!(%client_id, reason = why.label(), "session ended"),
        }
    }
}

/// Asks the connected owner `old` to hand its session over; `None` if it ended first, does not
/// survive, or does not answer within [`HANDOVER_TIMEOUT`].
async fn take_over(old: &Mailbox, client_id: &str) -> Option<Box<SessionState>> {
    let (reply, replied) = tokio::sync::oneshot::channel();
    if !old.send(Control::TakeOver { reply }) {
        return None;
    }
    match tokio::time::timeout(HANDOVER_TIMEOUT, replied).await {
        Ok(Ok(session)) => session,
        Ok(Err(_)) => None,
        Err(_) => {
            tracing::warn!(client_id = %LogId(client_id), "takeover: the old connection did not hand its session over in time");
            None
        }
    }
}

#[cfg(test)]
mod tests;
