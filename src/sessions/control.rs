//! What the control plane asks of the sessions: one session in detail, kicks and revokes that
//! wait for their closes to finish, and the set of revoked users.
//!
//! The revoked set lives here, beside the sessions, because it is stored with them: every
//! change is a [`Change::Revoked`] for the session store, which a durable store replays at
//! start (through [`Sessions::recover_revoked`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::mailbox::{Control, Mailbox, SubscriptionList};
use super::store::{Change, Commit, StoreError};
use super::table::Holder;
use super::{SessionInfo, Sessions};

/// How long a kick or revoke waits for the connections it closes to finish closing (their
/// final DISCONNECT may wait for a slow peer); past it, the answer goes out while they finish.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long a connected session's connection has to list its subscriptions.
const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// How often a wait for a close looks again.
const CLOSE_POLL: Duration = Duration::from_millis(5);

/// One session with its subscriptions.
#[derive(Clone, Debug)]
pub struct SessionDetail {
    pub info: SessionInfo,
    pub subscriptions: SubscriptionList,
}

impl Sessions {
    /// `client_id`'s session with its subscription list. A connected session's list is held
    /// by its connection, which is asked through its mailbox (rather than copied on every
    /// SUBSCRIBE: idle connections and the subscribe path pay nothing for a rare question).
    pub async fn detail(&self, client_id: &str) -> Option<SessionDetail> {
        // A connection that ends while it is asked leaves its session waiting (or gone): look
        // again, a few times at most.
        for _ in 0..3 {
            let (info, holder) = self.table.detail(client_id)?;
            let subscriptions = match holder {
                Holder::Table(list) => list,
                Holder::Connection(mailbox) => match ask_subscriptions(&mailbox).await {
                    Some(list) => list,
                    None => continue,
                },
            };
            return Some(SessionDetail {
                info: SessionInfo {
                    subscriptions: subscriptions.len(),
                    ..info
                },
                subscriptions,
            });
        }
        let info = self.table.info(client_id)?;
        tracing::warn!(client_id = %crate::logsafe::LogId(client_id), "session detail: its connection did not answer");
        Some(SessionDetail {
            info,
            subscriptions: Vec::new(),
        })
    }

    /// `kick`, then waits (a few seconds at most) until the closed connection has let go of
    /// its session: when this returns, a discarded session is gone from listings.
    pub async fn kick_and_wait(&self, client_id: &str, discard: bool) -> bool {
        let (found, closing) = self.kick_connection(client_id, discard);
        if let Some(mailbox) = closing {
            wait_closed(&[mailbox]).await;
        }
        found
    }

    /// Revokes `user`: its CONNECTs are refused from now on (v5 CONNACK 0x87, 3.1.1 rc 5),
    /// and every session of the user is closed with `revoked` and ended. Returns how many
    /// sessions were ended, once the closes finished and the revoke is stored.
    pub async fn revoke(&self, user: &str) -> Result<usize, StoreError> {
        // Marked first, then the sessions looked for: a CONNECT racing with this either sees
        // the mark, or attached before the search and is found by it (see `connect`).
        let commit = self.mark_revoked(user, true);
        let (n, closing) = self.close_user(user);
        wait_closed(&closing).await;
        commit.await?;
        tracing::info!(user = %crate::logsafe::LogId(user), sessions = n, "user revoked");
        Ok(n)
    }

    /// Lifts a revoke; whether `user` was revoked.
    pub async fn restore_user(&self, user: &str) -> Result<bool, StoreError> {
        let was = self.is_revoked(user);
        self.mark_revoked(user, false).await?;
        if was {
            tracing::info!(user = %crate::logsafe::LogId(user), "user restored");
        }
        Ok(was)
    }

    pub fn is_revoked(&self, user: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(user)
    }

    /// Revoked users, sorted.
    pub fn revoked_users(&self) -> Vec<Arc<str>> {
        let mut users: Vec<Arc<str>> = self
            .revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        users.sort();
        users
    }

    /// Replays a stored revoke or restore at start (nothing is stored again).
    pub fn recover_revoked(&self, user: Arc<str>, revoked: bool) {
        self.set_revoked(user, revoked);
    }

    /// Changes the set; whether it changed.
    fn set_revoked(&self, user: Arc<str>, revoked: bool) -> bool {
        let mut set = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        if revoked {
            set.insert(user)
        } else {
            set.remove(&user)
        }
    }

    /// Changes the set and stores the change; the commit says when it is durable.
    fn mark_revoked(&self, user: &str, revoked: bool) -> Commit {
        let user: Arc<str> = Arc::from(user);
        if !self.set_revoked(user.clone(), revoked) || !self.store.durable() {
            return Commit::done();
        }
        self.store.submit(vec![Change::Revoked { user, revoked }])
    }
}

/// Asks a connection for its subscription list; `None` if it ended or did not answer.
async fn ask_subscriptions(mailbox: &Mailbox) -> Option<SubscriptionList> {
    let (reply, answer) = oneshot::channel();
    if !mailbox.send(Control::Subscriptions { reply }) {
        return None;
    }
    tokio::time::timeout(ANSWER_WAIT, answer).await.ok()?.ok()
}

/// Waits until every one of these connections has ended (its lease dropped, its session
/// left waiting, handed over or ended), at most [`CLOSE_WAIT`]. Polled: a notification would
/// cost every idle connection memory for what only an administrator waits for.
async fn wait_closed(mailboxes: &[Arc<Mailbox>]) {
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    while mailboxes.iter().any(|m| !m.is_closed()) {
        if tokio::time::Instant::now() >= deadline {
            tracing::debug!("admin: connections still closing after the wait");
            return;
        }
        tokio::time::sleep(CLOSE_POLL).await;
    }
}

#[cfg(test)]
mod tests;
