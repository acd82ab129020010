//! The session table: who owns each client id's session. The only code that touches the map.
//!
//! Each entry carries a generation, bumped whenever a connection attaches. Every later change
//! by a connection is compare-and-act on its generation, so a stale connection can never
//! remove or overwrite its successor's entry. No map guard is held across an `.await` or a
//! call back into the map: every method does its work under one shard guard and returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use tokio::task::AbortHandle;

use crate::protocol::{Version, Will};

use super::mailbox::{Control, Mailbox, SubscriptionList};
use super::queue::Queue;
use super::state::SessionState;

/// Who is (or was last) connected to a session: for the admin API, revokes and logs.
#[derive(Debug)]
pub struct ConnInfo {
    pub user: Option<Arc<str>>,
    pub peer: SocketAddr,
    pub listener: Arc<str>,
    pub version: Version,
    pub connected_at: SystemTime,
    /// Kept current by the connection, read by listings without asking it.
    pub counters: Counters,
}

/// A connected session's figures that listings show.
#[derive(Debug, Default)]
pub struct Counters {
    pub subscriptions: AtomicUsize,
    pub inflight: AtomicUsize,
    pub expiry_interval: AtomicU32,
}

impl Counters {
    pub fn update(&self, state: &SessionState) {
        self.subscriptions
            .store(state.subscription_count(), Ordering::Relaxed);
        self.inflight.store(state.inflight_len(), Ordering::Relaxed);
        self.expiry_interval
            .store(state.expiry_interval(), Ordering::Relaxed);
    }
}

#[derive(Debug)]
enum State {
    Connected {
        mailbox: Arc<Mailbox>,
    },
    Disconnected {
        session: Box<SessionState>,
        since: SystemTime,
        /// The task that fires a delayed will and ends the session at its expiry; aborted
        /// when the client comes back or the session ends otherwise, so a client that
        /// reconnects often does not pile up sleeping tasks.
        timer: Option<AbortHandle>,
    },
}

#[derive(Debug)]
struct Entry {
    generation: u64,
    queue: Arc<Queue>,
    info: Arc<ConnInfo>,
    state: State,
}

/// What a connecting client found in the table.
#[derive(Debug)]
pub enum Previous {
    /// No session: a new one starts.
    Nothing,
    /// A disconnected session, now owned by the caller (to resume, or to end on clean start).
    Waiting(Box<SessionState>),
    /// A connected owner: the caller must send it [`Control::TakeOver`] and await the session.
    Connected(Arc<Mailbox>),
}

#[derive(Debug)]
pub struct Attached {
    pub generation: u64,
    pub queue: Arc<Queue>,
    pub previous: Previous,
    /// On clean start, the queue the old session used (its subscriptions point at it).
    pub replaced_queue: Option<Arc<Queue>>,
}

/// What happened when a connection let go of its session.
#[derive(Debug)]
pub enum Detached {
    /// The session waits in the table for its client.
    Kept,
    /// The session ended; the caller removes its subscriptions and closes the queue.
    Removed(Box<SessionState>, Arc<Queue>),
    /// Another connection owns the client id now: the session goes to it through the
    /// [`Control::TakeOver`] that is, or will shortly be, in this connection's mailbox.
    NotOwner(Box<SessionState>),
}

/// Where a session's subscription list is.
#[derive(Debug)]
pub enum Holder {
    /// A waiting session's, read from the table.
    Table(SubscriptionList),
    /// A connected session's connection holds it.
    Connection(Arc<Mailbox>),
}

/// One session as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub client_id: Arc<str>,
    pub connected: bool,
    pub user: Option<Arc<str>>,
    pub peer: SocketAddr,
    pub listener: Arc<str>,
    pub version: Version,
    pub connected_since: SystemTime,
    /// When its client left (waiting sessions).
    pub disconnected_since: Option<SystemTime>,
    pub expiry_interval: u32,
    pub subscriptions: usize,
    pub queued: usize,
    pub inflight: usize,
}

pub struct Table {
    map: DashMap<Arc<str>, Entry>,
    next_generation: AtomicU64,
    connected: metrics::Gauge,
    disconnected: metrics::Gauge,
}

impl Table {
    pub fn new() -> Table {
        Table {
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
        mailbox: Arc<Mailbox>,
        clean_start: bool,
        info: Arc<ConnInfo>,
        new_queue: impl FnOnce() -> Arc<Queue>,
    ) -> Attached {
        // The generation is taken under the entry's guard, so generations of one client id
        // grow in the order of attaches.
        let generation = |table: &Table| table.next_generation.fetch_add(1, Ordering::Relaxed);
        match self.map.entry(client_id.clone()) {
            MapEntry::Vacant(vacant) => {
                let generation = generation(self);
                let queue = new_queue();
                vacant.insert(Entry {
                    generation,
                    queue: queue.clone(),
                    info,
                    state: State::Connected { mailbox },
                });
                self.connected.increment(1.0);
                Attached {
                    generation,
                    queue,
                    previous: Previous::Nothing,
                    replaced_queue: None,
                }
            }
            MapEntry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                entry.generation = generation(self);
                entry.info = info;
                let replaced_queue =
                    clean_start.then(|| std::mem::replace(&mut entry.queue, new_queue()));
                entry.queue.set_connected(true);
                let previous =
                    match std::mem::replace(&mut entry.state, State::Connected { mailbox }) {
                        State::Connected { mailbox } => Previous::Connected(mailbox),
                        State::Disconnected { session, timer, .. } => {
                            if let Some(timer) = timer {
                                timer.abort();
                            }
                            self.disconnected.decrement(1.0);
                            self.connected.increment(1.0);
                            Previous::Waiting(session)
                        }
                    };
                Attached {
                    generation: entry.generation,
                    queue: entry.queue.clone(),
                    previous,
                    replaced_queue,
                }
            }
        }
    }

    /// Puts a session restored from the store in the table, waiting for its client; returns
    /// its generation (for its timers).
    pub fn insert_waiting(
        &self,
        session: Box<SessionState>,
        queue: Arc<Queue>,
        info: Arc<ConnInfo>,
        since: SystemTime,
    ) -> u64 {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let client_id = session.client_id().clone();
        let entry = Entry {
            generation,
            queue,
            info,
            state: State::Disconnected {
                session,
                since,
                timer: None,
            },
        };
        if self.map.insert(client_id, entry).is_none() {
            self.disconnected.increment(1.0);
        }
        generation
    }

    /// The owner (by `generation`) lets go of the session: it waits in the table when `keep`,
    /// else it ends.
    pub fn detach(
        &self,
        client_id: &str,
        generation: u64,
        session: Box<SessionState>,
        keep: bool,
    ) -> Detached {
        if keep {
            if let Some(mut entry) = self.map.get_mut(client_id)
                && entry.generation == generation
            {
                entry.queue.set_connected(false);
                entry.state = State::Disconnected {
                    session,
                    since: SystemTime::now(),
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
                Detached::Removed(session, entry.queue)
            }
            None => Detached::NotOwner(session),
        }
    }

    /// Removes a waiting session if `matches` says so; aborts its timer.
    fn remove_waiting(
        &self,
        client_id: &str,
        matches: impl FnOnce(&Entry) -> bool,
    ) -> Option<(Box<SessionState>, Arc<Queue>)> {
        let (_, entry) = self.map.remove_if(client_id, |_, entry| {
            matches!(entry.state, State::Disconnected { .. }) && matches(entry)
        })?;
        self.disconnected.decrement(1.0);
        match entry.state {
            State::Disconnected { session, timer, .. } => {
                if let Some(timer) = timer {
                    timer.abort();
                }
                Some((session, entry.queue))
            }
            State::Connected { .. } => None,
        }
    }

    /// Ends a waiting session whose expiry came, if it is still the one that started waiting
    /// at `generation` (a reconnect bumps the generation and so cancels the expiry).
    pub fn expire(
        &self,
        client_id: &str,
        generation: u64,
    ) -> Option<(Box<SessionState>, Arc<Queue>)> {
        self.remove_waiting(client_id, |entry| entry.generation == generation)
    }

    /// Ends a waiting session whose queue overflowed; `queue` identifies it, so a newer
    /// session under the same id is left alone.
    pub fn discard_overflowed(
        &self,
        client_id: &str,
        queue: &Arc<Queue>,
    ) -> Option<(Box<SessionState>, Arc<Queue>)> {
        self.remove_waiting(client_id, |entry| Arc::ptr_eq(&entry.queue, queue))
    }

    /// Removes a waiting session, whatever its generation (an administrator's discard).
    pub fn discard_waiting(&self, client_id: &str) -> Option<(Box<SessionState>, Arc<Queue>)> {
        self.remove_waiting(client_id, |_| true)
    }

    /// Takes the will out of a session still waiting since `generation`, for a delayed will
    /// whose time came: `None` if the client came back (the will is cancelled), `Some(None)`
    /// if the session has no will left.
    pub fn take_will(&self, client_id: &str, generation: u64) -> Option<Option<Will>> {
        let mut entry = self.map.get_mut(client_id)?;
        if entry.generation != generation {
            return None;
        }
        match &mut entry.state {
            State::Disconnected { session, .. } => Some(session.take_will()),
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

    /// Sends `control` to the connected owner of `client_id`; its mailbox if it took it.
    pub fn signal(&self, client_id: &str, control: Control) -> Option<Arc<Mailbox>> {
        let entry = self.map.get(client_id)?;
        match &entry.state {
            State::Connected { mailbox } => mailbox.send(control).then(|| mailbox.clone()),
            State::Disconnected { .. } => None,
        }
    }

    /// One session as listings show it, with where its subscriptions are: in the table for a
    /// waiting session, with the connection (ask it through its mailbox) for a connected one.
    pub fn detail(&self, client_id: &str) -> Option<(SessionInfo, Holder)> {
        let entry = self.map.get(client_id)?;
        let holder = match &entry.state {
            State::Connected { mailbox } => Holder::Connection(mailbox.clone()),
            State::Disconnected { session, .. } => {
                let mut list: SubscriptionList = session
                    .subscriptions()
                    .map(|(f, o)| (f.to_string(), o.clone()))
                    .collect();
                list.sort_by(|a, b| a.0.cmp(&b.0));
                Holder::Table(list)
            }
        };
        Some((describe(entry.key(), &entry), holder))
    }

    /// Whether `client_id` has a session, and whether its client is connected.
    pub fn presence(&self, client_id: &str) -> Option<bool> {
        self.map
            .get(client_id)
            .map(|e| matches!(e.state, State::Connected { .. }))
    }

    /// Client ids of the sessions whose (current or last) user is `user`.
    pub fn ids_of_user(&self, user: &str) -> Vec<Arc<str>> {
        self.map
            .iter()
            .filter(|e| e.info.user.as_deref() == Some(user))
            .map(|e| e.key().clone())
            .collect()
    }

    /// Client ids of the waiting sessions whose last user passes `revoked`.
    pub fn waiting_ids_of_users(&self, revoked: &dyn Fn(&str) -> bool) -> Vec<Arc<str>> {
        self.map
            .iter()
            .filter(|e| matches!(e.state, State::Disconnected { .. }))
            .filter(|e| e.info.user.as_deref().is_some_and(revoked))
            .map(|e| e.key().clone())
            .collect()
    }

    /// Removes `client_id`'s session if it still waits and its last user still passes
    /// `revoked` (its client may have come back, as another user, since it was listed).
    pub fn discard_waiting_of_users(
        &self,
        client_id: &str,
        revoked: &dyn Fn(&str) -> bool,
    ) -> Option<(Box<SessionState>, Arc<Queue>)> {
        self.remove_waiting(client_id, |e| e.info.user.as_deref().is_some_and(revoked))
    }

    /// One session as listings show it.
    pub fn info(&self, client_id: &str) -> Option<SessionInfo> {
        self.map.get(client_id).map(|e| describe(e.key(), &e))
    }

    /// Up to `limit` sessions after `after` (by client id), that pass `keep`, in client-id
    /// order. Each shard is locked only while it is read, never the whole table at once.
    pub fn list(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&SessionInfo) -> bool,
    ) -> Vec<SessionInfo> {
        let mut page: std::collections::BTreeMap<Arc<str>, SessionInfo> = Default::default();
        for entry in self.map.iter() {
            if after.is_some_and(|a| &**entry.key() <= a) {
                continue;
            }
            // Past a full page, only ids below its last can still get in.
            if page.len() == limit
                && page
                    .last_key_value()
                    .is_some_and(|(last, _)| entry.key() >= last)
            {
                continue;
            }
            let info = describe(entry.key(), &entry);
            if keep(&info) {
                page.insert(entry.key().clone(), info);
                if page.len() > limit {
                    page.pop_last();
                }
            }
        }
        page.into_values().collect()
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

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Default for Table {
    fn default() -> Self {
        Table::new()
    }
}

fn describe(client_id: &Arc<str>, entry: &Entry) -> SessionInfo {
    let info = &entry.info;
    let mut described = SessionInfo {
        client_id: client_id.clone(),
        connected: true,
        user: info.user.clone(),
        peer: info.peer,
        listener: info.listener.clone(),
        version: info.version,
        connected_since: info.connected_at,
        disconnected_since: None,
        expiry_interval: info.counters.expiry_interval.load(Ordering::Relaxed),
        subscriptions: info.counters.subscriptions.load(Ordering::Relaxed),
        queued: entry.queue.len(),
        inflight: info.counters.inflight.load(Ordering::Relaxed),
    };
    if let State::Disconnected { session, since, .. } = &entry.state {
        described.connected = false;
        described.disconnected_since = Some(*since);
        described.expiry_interval = session.expiry_interval();
        described.subscriptions = session.subscription_count();
        described.inflight = session.inflight_len();
    }
    described
}

#[cfg(test)]
mod tests;
