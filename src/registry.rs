//! The session table: who owns each client id's session. The only code that touches the map.
//!
//! Each entry carries a generation, bumped whenever a connection attaches. Every later change
//! by a connection is compare-and-act on its generation, so a stale connection can never
//! remove or overwrite its successor's entry. No map guard is held across an `.await` or a
//! call back into the map: every method does its work under one shard guard and returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::{Notify, oneshot};
use tokio::task::AbortHandle;

use crate::close::CloseReason;
use crate::outbox::Outbox;
use crate::session::Session;

/// What the table (or an administrator) asks of a connected connection.
#[derive(Debug)]
pub enum Control {
    /// Another CONNECT took the client id: close with session_taken_over and hand the session
    /// over through `reply` (or `None` if there is nothing to hand over).
    TakeOver {
        reply: oneshot::Sender<Option<Box<Session>>>,
    },
    /// Close with this reason.
    Close(CloseReason),
}

/// A connection's mailbox: the table (or an administrator) drops a [`Control`] in, the
/// connection takes it out. Tens of bytes, where a channel would cost a kilobyte per idle
/// connection; closed when the connection ends, so late senders learn it at once.
#[derive(Debug, Default)]
pub struct Mailbox {
    state: Mutex<MailboxState>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct MailboxState {
    queue: VecDeque<Control>,
    closed: bool,
}

impl Mailbox {
    pub fn new() -> Arc<Mailbox> {
        Arc::new(Mailbox::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MailboxState> {
        // Every mutation is a single push, pop or clear: a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Delivers `control`; false if the connection has already ended.
    pub fn send(&self, control: Control) -> bool {
        {
            let mut state = self.lock();
            if state.closed {
                return false;
            }
            state.queue.push_back(control);
        }
        self.notify.notify_one();
        true
    }

    /// The next control message, waiting for one.
    pub async fn recv(&self) -> Control {
        loop {
            let notified = self.notify.notified();
            if let Some(control) = self.lock().queue.pop_front() {
                return control;
            }
            notified.await;
        }
    }

    /// No more messages: later sends fail, and queued ones are dropped (a waiting taker sees
    /// its reply channel close).
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.queue.clear();
    }
}

pub type ControlSender = Arc<Mailbox>;

#[derive(Debug)]
enum State {
    Connected {
        control: ControlSender,
    },
    Disconnected {
        session: Box<Session>,
        /// The task that fires a delayed will and ends the session at its expiry; aborted
        /// when the client comes back or the session ends otherwise, so a client that
        /// reconnects often does not pile up sleeping tasks.
        timer: Option<AbortHandle>,
    },
}

#[derive(Debug)]
struct Entry {
    generation: u64,
    outbox: Arc<Outbox>,
    state: State,
}

/// What a connecting client found in the table.
#[derive(Debug)]
pub enum Previous {
    /// No session: a new one starts.
    Nothing,
    /// A disconnected session, now owned by the caller (to resume, or to discard on clean
    /// start: its subscriptions must then be removed from the router).
    Waiting(Box<Session>),
    /// A connected owner: the caller must send it [`Control::TakeOver`] and await the session.
    Connected(ControlSender),
}

#[derive(Debug)]
pub struct Attached {
    pub generation: u64,
    pub outbox: Arc<Outbox>,
    pub previous: Previous,
    /// On clean start, the outbox the old session used: the caller closes it once the old
    /// subscriptions are gone from the router.
    pub replaced_outbox: Option<Arc<Outbox>>,
}

/// What happened when a connection let go of its session.
#[derive(Debug)]
pub enum Detached {
    /// The session waits in the table for its client.
    Kept,
    /// The session ended; the caller removes its subscriptions and closes the outbox.
    Removed(Box<Session>, Arc<Outbox>),
    /// Another connection owns the client id now: the session goes to it through the
    /// [`Control::TakeOver`] that is, or will shortly be, in this connection's mailbox.
    NotOwner(Box<Session>),
}

pub struct Registry {
    map: DashMap<Arc<str>, Entry>,
    next_generation: AtomicU64,
    connected: metrics::Gauge,
    disconnected: metrics::Gauge,
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            map: DashMap::new(),
            next_generation: AtomicU64::new(1),
            connected: metrics::gauge!(crate::metrics::SESSIONS, "state" => "connected"),
            disconnected: metrics::gauge!(crate::metrics::SESSIONS, "state" => "disconnected"),
        }
    }

    /// Makes the caller the owner of `client_id`'s session. Atomic per client id: of any
    /// number of simultaneous attaches, each sees the one before it as `Connected`, so the
    /// chain of takeovers ends with exactly one owner.
    pub fn attach(
        &self,
        client_id: &Arc<str>,
        control: ControlSender,
        clean_start: bool,
        new_outbox: impl FnOnce() -> Arc<Outbox>,
    ) -> Attached {
        // The generation is taken under the entry's guard, so generations of one client id
        // grow in the order of attaches.
        match self.map.entry(client_id.clone()) {
            MapEntry::Vacant(vacant) => {
                let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                let outbox = new_outbox();
                vacant.insert(Entry {
                    generation,
                    outbox: outbox.clone(),
                    state: State::Connected { control },
                });
                self.connected.increment(1.0);
                Attached {
                    generation,
                    outbox,
                    previous: Previous::Nothing,
                    replaced_outbox: None,
                }
            }
            MapEntry::Occupied(mut occupied) => {
                let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                let entry = occupied.get_mut();
                entry.generation = generation;
                let replaced_outbox = if clean_start {
                    Some(std::mem::replace(&mut entry.outbox, new_outbox()))
                } else {
                    None
                };
                entry.outbox.set_connected(true);
                let old = std::mem::replace(&mut entry.state, State::Connected { control });
                let previous = match old {
                    State::Connected { control } => Previous::Connected(control),
                    State::Disconnected { session, timer } => {
                        if let Some(timer) = timer {
                            timer.abort();
                        }
                        self.disconnected.decrement(1.0);
                        self.connected.increment(1.0);
                        Previous::Waiting(session)
                    }
                };
                Attached {
                    generation,
                    outbox: entry.outbox.clone(),
                    previous,
                    replaced_outbox,
                }
            }
        }
    }

    /// The owner (by `generation`) lets go of the session: it waits in the table when `keep`,
    /// else it ends.
    pub fn detach(
        &self,
        client_id: &str,
        generation: u64,
        session: Box<Session>,
        keep: bool,
    ) -> Detached {
        if keep {
            if let Some(mut entry) = self.map.get_mut(client_id)
                && entry.generation == generation
            {
                entry.outbox.set_connected(false);
                entry.state = State::Disconnected {
                    session,
                    timer: None,
                };
                self.connected.decrement(1.0);
                self.disconnected.increment(1.0);
                return Detached::Kept;
            }
            return Detached::NotOwner(session);
        }
        match self
            .map
            .remove_if(client_id, |_, entry| entry.generation == generation)
        {
            Some((_, entry)) => {
                self.connected.decrement(1.0);
                Detached::Removed(session, entry.outbox)
            }
            None => Detached::NotOwner(session),
        }
    }

    /// Ends a waiting session whose expiry came, if it is still the one that started waiting
    /// at `generation` (a reconnect bumps the generation and so cancels the expiry).
    pub fn expire(&self, client_id: &str, generation: u64) -> Option<(Box<Session>, Arc<Outbox>)> {
        let (_, entry) = self.map.remove_if(client_id, |_, entry| {
            entry.generation == generation && matches!(entry.state, State::Disconnected { .. })
        })?;
        self.disconnected.decrement(1.0);
        match entry.state {
            State::Disconnected { session, .. } => Some((session, entry.outbox)),
            State::Connected { .. } => None,
        }
    }

    /// Ends a waiting session whose queue overflowed (`queue_full_policy = "disconnect"`);
    /// `outbox` identifies it, so a newer session under the same id is left alone.
    pub fn discard_overflowed(
        &self,
        client_id: &str,
        outbox: &Arc<Outbox>,
    ) -> Option<Box<Session>> {
        let (_, entry) = self.map.remove_if(client_id, |_, entry| {
            Arc::ptr_eq(&entry.outbox, outbox) && matches!(entry.state, State::Disconnected { .. })
        })?;
        self.disconnected.decrement(1.0);
        match entry.state {
            State::Disconnected { session, timer } => {
                if let Some(timer) = timer {
                    timer.abort();
                }
                Some(session)
            }
            State::Connected { .. } => None,
        }
    }

    /// Whether the session is still waiting in the state it was left at `generation` (no
    /// client came back).
    pub fn is_waiting(&self, client_id: &str, generation: u64) -> bool {
        self.map.get(client_id).is_some_and(|entry| {
            entry.generation == generation && matches!(entry.state, State::Disconnected { .. })
        })
    }

    /// Takes the will out of a session still waiting since `generation`, for a delayed will
    /// whose time came: `None` if the client came back (the will is cancelled), `Some(None)`
    /// if the session has no will left.
    pub fn take_will(
        &self,
        client_id: &str,
        generation: u64,
    ) -> Option<Option<crate::protocol::Will>> {
        let mut entry = self.map.get_mut(client_id)?;
        if entry.generation != generation {
            return None;
        }
        match &mut entry.state {
            State::Disconnected { session, .. } => Some(session.will.take()),
            State::Connected { .. } => None,
        }
    }

    /// Hands the waiting session left at `generation` its timer task. If the client came
    /// back in the meantime, the timer is no longer needed and is aborted at once.
    pub fn set_timer(&self, client_id: &str, generation: u64, handle: AbortHandle) {
        if let Some(mut entry) = self.map.get_mut(client_id)
            && entry.generation == generation
            && let State::Disconnected { timer, .. } = &mut entry.state
        {
            *timer = Some(handle);
            return;
        }
        handle.abort();
    }

    /// Sends `control` to the connected owner of `client_id`; false if none. The entry point
    /// for administrative closes (kick, revoke).
    pub fn signal(&self, client_id: &str, control: Control) -> bool {
        let Some(entry) = self.map.get(client_id) else {
            return false;
        };
        match &entry.state {
            State::Connected { control: tx } => tx.send(control),
            State::Disconnected { .. } => false,
        }
    }

    /// (connected, disconnected) session counts.
    pub fn counts(&self) -> (usize, usize) {
        let mut counts = (0, 0);
        for entry in self.map.iter() {
            match entry.state {
                State::Connected { .. } => counts.0 += 1,
                State::Disconnected { .. } => counts.1 += 1,
            }
        }
        counts
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Version;

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(
            crate::outbox::QueueLimits::from_config(&crate::config::Limits::default()),
            metrics::Gauge::noop(),
        ))
    }

    fn session(id: &str) -> Box<Session> {
        Box::new(Session::new(Arc::from(id), Version::V5))
    }

    #[test]
    fn stale_connection_cannot_remove_its_successor() {
        let registry = Registry::new();
        let id: Arc<str> = Arc::from("c");
        let tx1 = Mailbox::new();
        let first = registry.attach(&id, tx1, false, outbox);
        let tx2 = Mailbox::new();
        let second = registry.attach(&id, tx2, false, outbox);
        assert!(matches!(second.previous, Previous::Connected(_)));
        assert!(matches!(
            registry.detach("c", first.generation, session("c"), false),
            Detached::NotOwner(_)
        ));
        assert!(matches!(
            registry.detach("c", first.generation, session("c"), true),
            Detached::NotOwner(_)
        ));
        assert_eq!(registry.counts(), (1, 0));
        assert!(matches!(
            registry.detach("c", second.generation, session("c"), true),
            Detached::Kept
        ));
        assert_eq!(registry.counts(), (0, 1));
    }

    #[test]
    fn reconnect_cancels_expiry_and_delayed_will() {
        let registry = Registry::new();
        let id: Arc<str> = Arc::from("c");
        let tx = Mailbox::new();
        let first = registry.attach(&id, tx, false, outbox);
        assert!(matches!(
            registry.detach("c", first.generation, session("c"), true),
            Detached::Kept
        ));
        assert!(registry.is_waiting("c", first.generation));
        let tx = Mailbox::new();
        let second = registry.attach(&id, tx, false, outbox);
        assert!(matches!(second.previous, Previous::Waiting(_)));
        assert!(!registry.is_waiting("c", first.generation));
        assert!(registry.expire("c", first.generation).is_none());
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn concurrent_attaches_leave_one_owner() {
        let registry = Arc::new(Registry::new());
        let id: Arc<str> = Arc::from("c");
        let mut threads = Vec::new();
        for _ in 0..8 {
            let registry = registry.clone();
            let id = id.clone();
            threads.push(std::thread::spawn(move || {
                let attached = registry.attach(&id, Mailbox::new(), false, outbox);
                (attached.generation, ())
            }));
        }
        let results: Vec<_> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        assert_eq!(registry.counts(), (1, 0));
        let newest = results.iter().map(|(g, _)| *g).max().expect("some");
        for (generation, _) in &results {
            let outcome = registry.detach("c", *generation, session("c"), false);
            assert_eq!(
                matches!(outcome, Detached::Removed(..)),
                *generation == newest
            );
        }
        assert!(registry.is_empty());
    }
}
