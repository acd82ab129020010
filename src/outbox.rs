//! A session's outbound queue, shared between the publishers that fill it and the connection
//! that drains it. It outlives connections: while the session waits for its client, messages
//! keep arriving here (up to `max_queue_depth_disconnected`).
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
    Queued,
    /// Dropped by policy (`drop_oldest` dropped an older one, `drop_newest` this one); counted
    /// by the caller as `queue_full`.
    DroppedQueueFull,
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
    queue: VecDeque<Delivery>,
    connected: bool,
    overflowed: bool,
    closed: bool,
}

#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the connection task when something was queued or the queue overflowed.
    notify: Notify,
    limit_connected: usize,
    limit_disconnected: usize,
    policy: QueueFullPolicy,
    /// `brokk_queued_messages`, shared by every outbox; kept in step with each push and pop.
    queued: metrics::Gauge,
}

impl Outbox {
    pub fn new(
        limit_connected: usize,
        limit_disconnected: usize,
        policy: QueueFullPolicy,
        queued: metrics::Gauge,
    ) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                connected: true,
                overflowed: false,
                closed: false,
            }),
            notify: Notify::new(),
            limit_connected,
            limit_disconnected,
            policy,
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

    pub fn offer(&self, delivery: Delivery) -> Offer {
        let outcome = {
            let mut state = self.lock();
            if state.closed || state.overflowed {
                return Offer::Closed;
            }
            if !state.connected && delivery.qos == QoS::AtMostOnce {
                return Offer::NotQueuedOffline;
            }
            let limit = if state.connected {
                self.limit_connected
            } else {
                self.limit_disconnected
            };
            if state.queue.len() < limit {
                state.queue.push_back(delivery);
                self.queued.increment(1.0);
                Offer::Queued
            } else {
                match self.policy {
                    QueueFullPolicy::Disconnect => {
                        state.overflowed = true;
                        self.queued.decrement(state.queue.len() as f64);
                        state.queue.clear();
                        Offer::Overflowed
                    }
                    QueueFullPolicy::DropOldest => {
                        state.queue.pop_front();
                        state.queue.push_back(delivery);
                        Offer::DroppedQueueFull
                    }
                    QueueFullPolicy::DropNewest => return Offer::DroppedQueueFull,
                }
            }
        };
        self.notify.notify_one();
        outcome
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
            if let Some(delivery) = state.queue.pop_front() {
                out.push(delivery);
                moved += 1;
            }
        }
        if moved > 0 {
            self.queued.decrement(moved as f64);
        }
        moved
    }

    /// Puts deliveries back at the front (a connection that closed before sending them).
    pub fn requeue_front(&self, deliveries: Vec<Delivery>) {
        let mut state = self.lock();
        self.queued.increment(deliveries.len() as f64);
        for delivery in deliveries.into_iter().rev() {
            state.queue.push_front(delivery);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
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
            state.queue.retain(|d| d.qos != QoS::AtMostOnce);
        }
        let dropped = before - state.queue.len();
        if dropped > 0 {
            self.queued.decrement(dropped as f64);
        }
        dropped
    }

    /// Discards what is queued; the outbox stays usable.
    pub fn clear(&self) -> usize {
        let mut state = self.lock();
        let n = state.queue.len();
        state.queue.clear();
        if n > 0 {
            self.queued.decrement(n as f64);
        }
        n
    }

    /// Closes the outbox for good: later offers are refused. Returns how many were queued.
    pub fn close(&self) -> usize {
        let mut state = self.lock();
        state.closed = true;
        let n = state.queue.len();
        state.queue.clear();
        if n > 0 {
            self.queued.decrement(n as f64);
        }
        n
    }

    /// Wakes the consumer when something was queued (a stored permit if it is not waiting).
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}
