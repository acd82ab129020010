//! Timers of a waiting session: its delayed will and its expiry. One task per waiting session,
//! aborted by the table when the client comes back (so reconnecting clients do not pile up
//! sleeping tasks); tokio's clock, so tests run them on paused time.

use std::sync::Arc;
use std::time::Duration;

use super::{SessionEnd, Sessions};

/// After a session was left waiting at `generation`: fires its delayed will when the delay
/// passes and ends it when its expiry passes, unless its client came back first.
pub(super) fn schedule(
    sessions: &Arc<Sessions>,
    client_id: Arc<str>,
    generation: u64,
    will_delay: Option<u32>,
    expiry: u32,
) {
    let seconds = |s: u32| Duration::from_secs(u64::from(s));
    schedule_in(
        sessions,
        client_id,
        generation,
        will_delay.map(seconds),
        seconds(expiry),
    );
}

/// [`schedule`] with what is left of each delay (a session restored from the store).
pub(super) fn schedule_in(
    sessions: &Arc<Sessions>,
    client_id: Arc<str>,
    generation: u64,
    will_delay: Option<Duration>,
    expiry: Duration,
) {
    let weak = Arc::downgrade(sessions);
    let will_delay = will_delay.filter(|d| *d < expiry);
    let id = client_id.clone();
    let timer = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        if let Some(delay) = will_delay {
            tokio::time::sleep_until(start + delay).await;
            let Some(sessions) = weak.upgrade() else {
                return;
            };
            match sessions.table.take_will(&id, generation) {
                Some(Some(will)) => sessions.publish_will(will, &id),
                Some(None) => {}
                None => return,
            }
        }
        tokio::time::sleep_until(start + expiry).await;
        let Some(sessions) = weak.upgrade() else {
            return;
        };
        if let Some((state, queue)) = sessions.table.expire(&id, generation) {
            sessions.end(state, &queue, SessionEnd::SessionExpired);
        }
    });
    sessions
        .table
        .set_timer(&client_id, generation, timer.abort_handle());
}
