//! Why a session ended. A connection ends with exactly one [`crate::close::CloseReason`]; a
//! session, which may outlive many connections, ends with exactly one [`SessionEnd`], logged
//! once and counted once in `brokk_sessions_ended_total{reason}`.

use crate::close::CloseReason;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionEnd {
    /// Its connection closed and it had no expiry (3.1.1 clean session, v5 Session Expiry 0).
    ConnectionClosed,
    /// A CONNECT with clean start for its client id replaced it.
    CleanStart,
    /// It waited for its client longer than its Session Expiry Interval.
    SessionExpired,
    /// Its queue overflowed under `queue_full_policy = "disconnect"`.
    QueueLimit,
    /// An administrator discarded it (admin API, `brokk ctl kick`).
    Kicked,
    /// Its user was revoked (admin API, or a reload that removed the user).
    Revoked,
    /// It moved to another node of the cluster.
    FailedOver,
    /// brokk could not deliver its messages without a gap (a damaged store).
    LostMessages,
}

impl SessionEnd {
    pub const ALL: [SessionEnd; 8] = [
        SessionEnd::ConnectionClosed,
        SessionEnd::CleanStart,
        SessionEnd::SessionExpired,
        SessionEnd::QueueLimit,
        SessionEnd::Kicked,
        SessionEnd::Revoked,
        SessionEnd::FailedOver,
        SessionEnd::LostMessages,
    ];

    /// The label in `brokk_sessions_ended_total{reason}` and in the log.
    pub fn label(self) -> &'static str {
        match self {
            SessionEnd::ConnectionClosed => "connection_closed",
            SessionEnd::CleanStart => "clean_start",
            SessionEnd::SessionExpired => "session_expired",
            SessionEnd::QueueLimit => "message_queue_limit_reached",
            SessionEnd::Kicked => "closed_by_controller",
            SessionEnd::Revoked => "revoked",
            SessionEnd::FailedOver => "failed_over",
            SessionEnd::LostMessages => "lost_messages",
        }
    }

    /// The end a connection's close brings to a session that does not survive it.
    pub fn after_close(reason: CloseReason, discard: bool) -> SessionEnd {
        match reason {
            CloseReason::MessageQueueLimitReached => SessionEnd::QueueLimit,
            CloseReason::Revoked => SessionEnd::Revoked,
            CloseReason::LostMessages => SessionEnd::LostMessages,
            CloseReason::FailedOver => SessionEnd::FailedOver,
            CloseReason::ClosedByController if discard => SessionEnd::Kicked,
            _ => SessionEnd::ConnectionClosed,
        }
    }
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique() {
        let mut labels: Vec<&str> = SessionEnd::ALL.iter().map(|e| e.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), SessionEnd::ALL.len());
    }

    #[test]
    fn a_close_maps_to_one_end() {
        use CloseReason as C;
        assert_eq!(
            SessionEnd::after_close(C::MessageQueueLimitReached, false),
            SessionEnd::QueueLimit
        );
        assert_eq!(
            SessionEnd::after_close(C::ClosedByController, true),
            SessionEnd::Kicked
        );
        assert_eq!(
            SessionEnd::after_close(C::ClosedByController, false),
            SessionEnd::ConnectionClosed
        );
        assert_eq!(
            SessionEnd::after_close(C::ConnectionLost, false),
            SessionEnd::ConnectionClosed
        );
    }
}
