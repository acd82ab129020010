//! A session's outbound queue, shared between the publishers that fill it (through the
//! router's index, which holds an `Arc<Queue>` per subscription) and the connection that
//! drains it. It outlives connections: while the session waits for its client, messages keep
//! arriving here (up to `max_queue_depth_disconnected` / `max_queue_bytes_disconnected`).
//!
//! Every delivery gets a sequence number. In a persistent session with a durable store, QoS 1/2
//! deliveries are stored (the caller records the change), and while the session waits they
//! are **only** stored: its queue costs memory for its counts, not for its messages. The
//! stored part (the backlog, always the oldest entries) is read back in pieces by the
//! connection that resumes the session; until it is all read, new stored deliveries join the
//! backlog, so the order holds.
//!
//! A std `Mutex` is enough: it is held for a push or a drain of a batch, never across an
//! `.await`, and the consumer takes a whole batch per lock.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::config::QueueFullPolicy;
use crate::message::Delivery;
use crate::protocol::QoS;

/// What happened to an offered delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Queued at sequence number `seq`; `stored`: the caller records it in the durable store.
    /// `replaced`: a conflated delivery took the place of an older one for its topic (that
    /// one's sequence number, and whether it was stored: the caller records it done).
    Queued {
        seq: u64,
        stored: bool,
        replaced: Option<(u64, bool)>,
    },
    /// Dropped by policy (`drop_oldest` dropped older ones to make room, `drop_newest` this
    /// one): how many; counted by the caller as `queue_full`.
    DroppedQueueFull(usize),
    /// QoS 0 for a session whose client is away: not queued (MQTT allows discarding it).
    NotQueuedOffline,
    /// The queue hit its limit under `disconnect`: the session must be closed and discarded.
    /// Returned once; later offers see `Closed`.
    Overflowed,
    /// The session is gone or being discarded.
    Closed,
}

#[derive(Debug)]
struct State {
    /// Deliveries in memory, oldest first (after the backlog).
    queue: VecDeque<Delivery>,
    /// What every queued delivery (backlog included) costs against the byte limit.
    bytes: usize,
    /// Stored deliveries not in memory: the oldest ones, from `backlog_from`.
    backlog: usize,
    backlog_from: u64,
    /// A piece of the backlog is being read.
    loading: bool,
    next_seq: u64,
    /// QoS 1/2 deliveries go to the durable store.
    persistent: bool,
    /// Conflated topics: the newest queued delivery of each (sequence number, stored).
    latest: std::collections::HashMap<std::sync::Arc<str>, (u64, bool)>,
    connected: bool,
    overflowed: bool,
    closed: bool,
}

#[derive(Debug)]
pub struct Queue {
    state: Mutex<State>,
    /// Wakes the connection task when something was queued or the queue overflowed.
    notify: Notify,
    limits: QueueLimits,
    /// `brokk_queued_messages`, shared by every queue; kept in step with each push and pop.
    queued: metrics::Gauge,
}

/// A queue's bounds, connected and disconnected, in messages and in bytes.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub depth: usize,
    pub depth_disconnected: usize,
    pub bytes: usize,
    pub bytes_disconnected: usize,
    pub policy: QueueFullPolicy,
}

impl QueueLimits {
    pub fn from_config(limits: &crate::config::Limits) -> QueueLimits {
        QueueLimits {
            depth: limits.max_queue_depth,
            depth_disconnected: limits.max_queue_depth_disconnected,
            bytes: limits.max_queue_bytes,
            bytes_disconnected: limits.max_queue_bytes_disconnected,
            policy: limits.queue_full_policy,
        }
    }
}

impl State {
    fn len(&self) -> usize {
        self.queue.len() + self.backlog
    }

    /// Whether one more delivery of `cost` bytes fits. An empty queue takes any one message,
    /// so a byte limit below the largest packet never blocks a session for good.
    fn fits(&self, depth: usize, bytes: usize, cost: usize) -> bool {
        self.len() < depth && (self.len() == 0 || self.bytes + cost <= bytes)
    }

    fn pop_front(&mut self) -> Option<Delivery> {
        let delivery = self.queue.pop_front()?;
        self.bytes = self.bytes.saturating_sub(delivery.message.queue_cost());
        Some(delivery)
    }

    /// Whether a stored delivery stays out of memory: the client is away, or older stored
    /// deliveries are still to be read back.
    fn store_only(&self) -> bool {
        !self.connected || self.backlog > 0 || self.loading
    }
}

/// A stored backlog to read back: from `from`, about `count` deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backlog {
    pub from: u64,
    pub count: usize,
}

impl Queue {
    pub fn new(limits: QueueLimits, queued: metrics::Gauge) -> Queue {
        Queue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                bytes: 0,
                backlog: 0,
                backlog_from: 0,
                loading: false,
                next_seq: 1,
                persistent: false,
                latest: std::collections::HashMap::new(),
                connected: true,
                overflowed: false,
                closed: false,
            }),
            notify: Notify::new(),
            limits,
            queued,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves a consistent queue (every mutation is a
        // single VecDeque call), so a poisoned lock is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// From now on, QoS 1/2 deliveries are stored (a persistent session, a durable store).
    pub fn set_persistent(&self, persistent: bool) {
        self.lock().persistent = persistent;
    }

    /// A queue restored from the store: waiting, with `backlog` stored deliveries from
    /// `from` (and `bytes` of them), the next sequence number `next`.
    pub fn restore(&self, from: u64, backlog: usize, bytes: usize, next: u64) {
        let mut state = self.lock();
        state.persistent = true;
        state.connected = false;
        state.backlog_from = from;
        state.backlog = backlog;
        state.bytes = bytes;
        state.next_seq = next.max(1);
        self.queued.increment(backlog as f64);
    }

    /// A sequence number for a delivery that does not pass through the queue (a message in
    /// flight that came from another node).
    pub fn next_seq(&self) -> u64 {
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        seq
    }

    /// Marks the QoS 1/2 deliveries in memory as stored and returns them, to be recorded (a
    /// session that came from another node is written to the store afresh).
    pub fn store_in_memory(&self) -> Vec<Delivery> {
        let mut state = self.lock();
        if !state.persistent {
            return Vec::new();
        }
        let mut stored = Vec::new();
        for delivery in state.queue.iter_mut() {
            if delivery.qos != QoS::AtMostOnce && !delivery.persisted {
                delivery.persisted = true;
                stored.push(delivery.clone());
            }
        }
        stored
    }

    pub fn offer(&self, mut delivery: Delivery) -> Offer {
        let outcome = {
            let mut state = self.lock();
            if state.closed || state.overflowed {
                return Offer::Closed;
            }
            if !state.connected && delivery.qos == QoS::AtMostOnce {
                return Offer::NotQueuedOffline;
            }
            let (depth, bytes) = if state.connected {
                (self.limits.depth, self.limits.bytes)
            } else {
                (
                    self.limits.depth_disconnected,
                    self.limits.bytes_disconnected,
                )
            };
            let cost = delivery.message.queue_cost();
            let mut dropped = 0;
            let replaces = delivery.conflate && state.latest.contains_key(&delivery.message.topic);
            if !replaces && !state.fits(depth, bytes, cost) {
                match self.limits.policy {
                    QueueFullPolicy::Disconnect => {
                        state.overflowed = true;
                        self.queued.decrement(state.len() as f64);
                        state.queue.clear();
                        state.backlog = 0;
                        state.bytes = 0;
                        return self.overflowed();
                    }
                    // The oldest of a stored backlog cannot be dropped from here (it is on
                    // disk only): with a backlog, the new delivery is the one dropped.
                    QueueFullPolicy::DropOldest if state.backlog == 0 => {
                        while !state.fits(depth, bytes, cost) && state.pop_front().is_some() {
                            dropped += 1;
                        }
                        self.queued.decrement(dropped as f64);
                    }
                    QueueFullPolicy::DropOldest | QueueFullPolicy::DropNewest => {
                        return Offer::DroppedQueueFull(1);
                    }
                }
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            let stored = state.persistent && delivery.qos != QoS::AtMostOnce;
            delivery.seq = seq;
            delivery.persisted = stored;
            let replaced = if delivery.conflate {
                let topic = delivery.message.topic.clone();
                state
                    .latest
                    .insert(topic, (seq, stored))
                    .and_then(|old| self.unqueue(&mut state, old))
            } else {
                None
            };
            state.bytes += cost;
            self.queued.increment(1.0);
            if stored && state.store_only() {
                if state.backlog == 0 && !state.loading {
                    state.backlog_from = seq;
                }
                state.backlog += 1;
            } else {
                state.queue.push_back(delivery);
            }
            if dropped > 0 {
                Offer::DroppedQueueFull(dropped)
            } else {
                Offer::Queued {
                    seq,
                    stored,
                    replaced,
                }
            }
        };
        self.notify.notify_one();
        outcome
    }

    /// Takes a queued delivery out (conflation): from memory, or from the stored backlog
    /// (then it is only counted out: the caller records it done in the store). `None` when it
    /// is no longer queued (it went out).
    fn unqueue(&self, state: &mut State, (seq, stored): (u64, bool)) -> Option<(u64, bool)> {
        if let Some(pos) = state.queue.iter().position(|d| d.seq == seq) {
            if let Some(old) = state.queue.remove(pos) {
                state.bytes = state.bytes.saturating_sub(old.message.queue_cost());
            }
        } else if stored && state.backlog > 0 && seq >= state.backlog_from {
            state.backlog -= 1;
        } else {
            return None;
        }
        self.queued.decrement(1.0);
        Some((seq, stored))
    }

    fn overflowed(&self) -> Offer {
        self.notify.notify_one();
        Offer::Overflowed
    }

    /// Moves up to `max` deliveries into `out`, oldest first, stopping before a QoS 1/2 one
    /// when `qos_budget` (free in-flight slots) is spent. Returns how many were moved.
    pub fn drain(&self, max: usize, mut qos_budget: usize, out: &mut Vec<Delivery>) -> usize {
        let mut state = self.lock();
        let mut moved = 0;
        while moved < max {
            let Some(front) = state.queue.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce {
                if qos_budget == 0 {
                    break;
                }
                qos_budget -= 1;
            }
            if let Some(delivery) = state.pop_front() {
                if delivery.conflate
                    && state
                        .latest
                        .get(&delivery.message.topic)
                        .is_some_and(|(seq, _)| *seq == delivery.seq)
                {
                    state.latest.remove(&delivery.message.topic);
                }
                out.push(delivery);
                moved += 1;
            }
        }
        if moved > 0 {
            self.queued.decrement(moved as f64);
        }
        moved
    }

    /// The stored backlog to read next, if any and none is being read, when memory runs low;
    /// marks it as being read.
    pub fn backlog_to_load(&self, low_water: usize) -> Option<Backlog> {
        let mut state = self.lock();
        if state.backlog == 0 || state.loading || !state.connected || state.queue.len() >= low_water
        {
            return None;
        }
        state.loading = true;
        Some(Backlog {
            from: state.backlog_from,
            count: state.backlog,
        })
    }

    /// A piece of the backlog was read: it joins the queue after what is already in memory
    /// (earlier pieces; stored deliveries that arrived meanwhile joined the backlog, so only
    /// QoS 0 ones can be ahead of it). `next` is where the next piece starts.
    pub fn loaded(&self, deliveries: Vec<Delivery>, next: u64) {
        {
            let mut state = self.lock();
            state.loading = false;
            state.backlog = state.backlog.saturating_sub(deliveries.len());
            if deliveries.is_empty() {
                // Nothing more is stored: what the count still says was done meanwhile.
                state.backlog = 0;
            }
            state.backlog_from = next;
            state.queue.extend(deliveries);
        }
        self.notify.notify_one();
    }

    /// The client left a persistent session: its stored deliveries leave memory (they are read
    /// back when it returns), as do the ones in flight (`inflight`, also stored).
    pub fn park(&self, inflight: impl IntoIterator<Item = u64>) {
        let mut state = self.lock();
        if !state.persistent {
            return;
        }
        let inflight: Vec<u64> = inflight.into_iter().collect();
        let mut first = inflight.iter().copied().min();
        let mut parked = inflight.len();
        let memory = std::mem::take(&mut state.queue);
        for delivery in memory {
            if delivery.persisted {
                first = Some(first.map_or(delivery.seq, |f| f.min(delivery.seq)));
                parked += 1;
            } else {
                state.queue.push_back(delivery);
            }
        }
        if let Some(first) = first
            && (state.backlog == 0 || first < state.backlog_from)
        {
            state.backlog_from = first;
        }
        state.backlog += parked;
        state.loading = false;
    }

    /// Entries (memory and stored backlog) and their bytes.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Switches between the connected and the disconnected depth limit. Dropping QoS 0
    /// messages queued for a client that just left: MQTT lets a broker discard them.
    pub fn set_connected(&self, connected: bool) -> usize {
        let mut state = self.lock();
        state.connected = connected;
        let before = state.queue.len();
        if !connected {
            let mut freed = 0;
            state.queue.retain(|d| {
                let keep = d.qos != QoS::AtMostOnce;
                if !keep {
                    freed += d.message.queue_cost();
                }
                keep
            });
            state.bytes = state.bytes.saturating_sub(freed);
        }
        let dropped = before - state.queue.len();
        if dropped > 0 {
            self.queued.decrement(dropped as f64);
        }
        dropped
    }

    /// Discards what is queued (memory and backlog); the queue stays usable.
    pub fn clear(&self) -> usize {
        let mut state = self.lock();
        let n = state.len();
        state.queue.clear();
        state.latest.clear();
        state.backlog = 0;
        state.loading = false;
        state.bytes = 0;
        if n > 0 {
            self.queued.decrement(n as f64);
        }
        n
    }

    /// Closes the queue for good: later offers are refused. Returns how many were queued.
    pub fn close(&self) -> usize {
        let n = self.clear();
        self.lock().closed = true;
        n
    }

    /// Wakes the consumer when something was queued (a stored permit if it is not waiting).
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

#[cfg(test)]
mod tests;
