//! A session's outbound queue, shared between the publishers that fill it (through the
//! router's index, which holds an `Arc<Queue>` per subscription) and the connection that
//! drains it. It outlives connections: while the session waits for its client, messages keep
//! arriving here (up to `max_queue_depth_disconnected` / `max_queue_bytes_disconnected`).
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
    queue: VecDeque<Delivery>,
    /// What the queued deliveries cost against the byte limit (`Message::queue_cost`).
    bytes: usize,
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
    /// `brokk_queued_messages`, shared by every outbox; kept in step with each push and pop.
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
    /// Whether one more delivery of `cost` bytes fits. An empty queue takes any one message,
    /// so a byte limit below the largest packet never blocks a session for good.
    fn fits(&self, depth: usize, bytes: usize, cost: usize) -> bool {
        self.queue.len() < depth && (self.queue.is_empty() || self.bytes + cost <= bytes)
    }

    fn pop_front(&mut self) -> Option<Delivery> {
        let delivery = self.queue.pop_front()?;
        self.bytes -= delivery.message.queue_cost();
        Some(delivery)
    }
}

impl Queue {
    pub fn new(limits: QueueLimits, queued: metrics::Gauge) -> Queue {
        Queue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                bytes: 0,
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

    pub fn offer(&self, delivery: Delivery) -> Offer {
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
            if state.fits(depth, bytes, cost) {
                state.bytes += cost;
                state.queue.push_back(delivery);
                self.queued.increment(1.0);
                Offer::Queued
            } else {
                match self.limits.policy {
                    QueueFullPolicy::Disconnect => {
                        state.overflowed = true;
                        self.queued.decrement(state.queue.len() as f64);
                        state.queue.clear();
                        state.bytes = 0;
                        Offer::Overflowed
                    }
                    QueueFullPolicy::DropOldest => {
                        let mut dropped = 0;
                        while !state.fits(depth, bytes, cost) && state.pop_front().is_some() {
                            dropped += 1;
                        }
                        state.bytes += cost;
                        state.queue.push_back(delivery);
                        self.queued.decrement(dropped as f64 - 1.0);
                        Offer::DroppedQueueFull(dropped)
                    }
                    QueueFullPolicy::DropNewest => return Offer::DroppedQueueFull(1),
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
            if let Some(delivery) = state.pop_front() {
                out.push(delivery);
                moved += 1;
            }
        }
        if moved > 0 {
            self.queued.decrement(moved as f64);
        }
        moved
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
            state.bytes = state.queue.iter().map(|d| d.message.queue_cost()).sum();
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
        state.bytes = 0;
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
        state.bytes = 0;
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
