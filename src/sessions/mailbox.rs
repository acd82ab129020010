//! A connected session's mailbox: the sessions module (a takeover, an administrator, a reload)
//! drops a [`Control`] in, the connection takes it out. Tens of bytes, where a channel would
//! cost a kilobyte per idle connection; closed when the connection ends, so late senders learn
//! it at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

use crate::close::CloseReason;
use crate::router::SubscriptionOptions;

use super::state::SessionState;

/// A session's subscriptions, sorted by filter.
pub type SubscriptionList = Vec<(String, SubscriptionOptions)>;

/// What a connection is asked to do.
#[derive(Debug)]
pub enum Control {
    /// Another CONNECT took the client id: close with `session_taken_over` and hand the
    /// session over through `reply` (`None` when it does not survive).
    TakeOver {
        reply: oneshot::Sender<Option<Box<SessionState>>>,
    },
    /// This node is draining and the session moves to another node: close with
    /// `failed_over` (v5 0x9C) and hand the session over through `reply`.
    Migrate {
        reply: oneshot::Sender<Option<Box<SessionState>>>,
    },
    /// Close with `reason`; `discard` ends the session too (a kick, a revoke).
    Close { reason: CloseReason, discard: bool },
    /// An administrator asks for the session's subscriptions (which the connection holds
    /// while connected): answer through `reply` and go on.
    Subscriptions {
        reply: oneshot::Sender<SubscriptionList>,
    },
}

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

    /// The next control message, if one is waiting.
    pub fn try_recv(&self) -> Option<Control> {
        self.lock().queue.pop_front()
    }

    /// Notified after every [`Mailbox::send`]: a connection keeps one long-lived wait on it
    /// and takes what arrived with [`Mailbox::try_recv`] (a permit is stored when nobody
    /// waits, so a send between a `try_recv` and the next wait is not missed).
    pub fn notify(&self) -> &Notify {
        &self.notify
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

    /// Whether the connection has ended (its lease is gone, so its session has been left
    /// waiting, handed over or ended).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// No more messages: later sends fail, and queued ones are dropped (a waiting taker sees
    /// its reply channel close).
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_arrive_in_order_and_a_closed_mailbox_refuses() {
        let mailbox = Mailbox::new();
        assert!(mailbox.send(Control::Close {
            reason: CloseReason::Revoked,
            discard: true
        }));
        let (reply, replied) = oneshot::channel();
        assert!(mailbox.send(Control::TakeOver { reply }));
        assert!(matches!(
            mailbox.recv().await,
            Control::Close {
                reason: CloseReason::Revoked,
                ..
            }
        ));
        mailbox.close();
        assert!(replied.await.is_err(), "a queued takeover learns at once");
        assert!(!mailbox.send(Control::Close {
            reason: CloseReason::Revoked,
            discard: false
        }));
    }
}
