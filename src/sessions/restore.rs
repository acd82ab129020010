//! Sessions read back from the durable store at start: each waits for its client as if it had
//! just disconnected, with what is left of its expiry and of its will's delay (deadlines are
//! stored as wall-clock times). A session whose client was connected when brokk stopped lost
//! its connection then: its will fires, after its delay, as for any lost connection.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::logsafe::LogId;
use crate::sessions::store::{Recovered, RecoveredSession};

use super::state::SessionState;
use super::table::{ConnInfo, Counters};
use super::{SessionEnd, Sessions, timers};

/// What restoring found, for the log at start.
#[derive(Debug, Default)]
pub struct Restored {
    pub sessions: usize,
    pub queued: usize,
    pub retained: usize,
    pub lost: usize,
    /// Revoked users read back: their CONNECTs are refused again.
    pub revoked: Vec<Arc<str>>,
}

impl Sessions {
    /// Puts everything the store kept back in place.
    pub fn restore(self: &Arc<Self>, recovered: Recovered) -> Restored {
        let mut restored = Restored {
            retained: recovered.retained.len(),
            lost: recovered.lost.len(),
            revoked: recovered.revoked,
            ..Restored::default()
        };
        for user in &restored.revoked {
            self.recover_revoked(user.clone(), true);
        }
        for message in recovered.retained {
            self.routing.restore_retained(message);
        }
        for (client_id, _) in &recovered.lost {
            // Deleted from the store already; its client's next CONNECT sees no session.
            self.ended(client_id, SessionEnd::LostMessages);
        }
        for session in recovered.sessions {
            restored.sessions += 1;
            restored.queued += session.queue.pending;
            self.restore_one(session);
        }
        restored
    }

    fn restore_one(self: &Arc<Self>, stored: RecoveredSession) {
        let RecoveredSession {
            client_id,
            record,
            subscriptions,
            inbound_qos2,
            queue: span,
        } = stored;
        let mut state = Box::new(SessionState::new(client_id.clone(), record.version));
        state.set_user(record.user.clone());
        state.set_expiry_interval(record.expiry_interval);
        state.set_will(record.will.clone());
        for packet_id in inbound_qos2 {
            state.insert_inbound_qos2(packet_id);
        }
        let queue = self.new_queue();
        queue.restore(span.first, span.pending, span.bytes, span.next);
        for (filter, options) in subscriptions {
            self.routing
                .subscribe(&client_id, &queue, &filter, options.clone());
            state.insert_subscription(&filter, options);
        }
        state.set_persisted(true);
        let now = SystemTime::now();
        let left = |at: Option<SystemTime>, full: Duration| {
            at.map_or(full, |at| at.duration_since(now).unwrap_or(Duration::ZERO))
        };
        let expiry = left(
            record.expires_at,
            Duration::from_secs(u64::from(record.expiry_interval)),
        );
        let will_delay = record.will.as_ref().map(|w| {
            left(
                record.will_at,
                Duration::from_secs(u64::from(w.delay_interval)),
            )
        });
        let info = Arc::new(ConnInfo {
            user: record.user,
            peer: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            listener: Arc::from("-"),
            version: record.version,
            connected_at: now,
            counters: Counters::default(),
        });
        let generation = self.table.insert_waiting(state, queue, info, now);
        tracing::debug!(client_id = %LogId(&client_id), queued = span.pending, "session restored");
        timers::schedule_in(self, client_id, generation, will_delay, expiry);
    }
}
