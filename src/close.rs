//! Why a connection ended. Every connection ends with exactly one [`CloseReason`]; it is sent
//! to a v5 client (reason code and, as Reason String, the label), logged once and counted once
//! in `brokk_connections_closed_total{reason}`.

/// The fixed list of close reasons (labels in the README and docs/close-reasons.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer closed the socket (EOF) without a DISCONNECT.
    ConnectionLost,
    /// A read, write or TLS handshake failed.
    IoException,
    /// No inbound packet within 1.5 x keep-alive, `connection_ttl`, or `connect_timeout`.
    ClientUnresponsive,
    /// The session's outbound queue hit its limit under `queue_full_policy = "disconnect"`.
    MessageQueueLimitReached,
    /// The client sent DISCONNECT.
    ClosedByClient,
    /// An inbound packet larger than `max_packet_size`.
    MessageTooLarge,
    /// A broker bug or resource failure.
    InternalError,
    /// A malformed packet or a protocol violation; the v5 code says which.
    InvalidInboundMessage(InvalidKind),
    /// Refused at CONNECT (authentication, connection limit, bad protocol level).
    Aborted,
    /// Messages the session needed were lost (reserved: persistence and clustering).
    LostMessages,
    /// An administrator closed it (reserved: admin API).
    ClosedByController,
    /// The session moved to another node (reserved: clustering).
    FailedOver,
    /// The client's credentials expired: its token's `exp` passed without a renewal.
    Expired,
    /// The client's credentials were revoked: a reload no longer accepts its login, or a v5
    /// re-authentication failed (and, with the admin API, an administrator's revoke).
    Revoked,
    /// Another connection with the same client id took the session over.
    SessionTakenOver,
    /// The broker is shutting down.
    ServerShutdown,
}

/// Which rule an invalid inbound message broke; picks the v5 reason code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidKind {
    /// 0x81 Malformed Packet.
    Malformed,
    /// 0x82 Protocol Error.
    Protocol,
    /// 0x90 Topic Name Invalid.
    TopicName,
    /// 0x93 Receive Maximum exceeded.
    ReceiveMaximum,
    /// 0x94 Topic Alias invalid.
    TopicAlias,
}

impl CloseReason {
    /// Every reason, in the documented order (invalid inbound once, as `Malformed`).
    pub const ALL: [CloseReason; 16] = [
        CloseReason::ConnectionLost,
        CloseReason::IoException,
        CloseReason::ClientUnresponsive,
        CloseReason::MessageQueueLimitReached,
        CloseReason::ClosedByClient,
        CloseReason::MessageTooLarge,
        CloseReason::InternalError,
        CloseReason::InvalidInboundMessage(InvalidKind::Malformed),
        CloseReason::Aborted,
        CloseReason::LostMessages,
        CloseReason::ClosedByController,
        CloseReason::FailedOver,
        CloseReason::Expired,
        CloseReason::Revoked,
        CloseReason::SessionTakenOver,
        CloseReason::ServerShutdown,
    ];

    /// The snake_case label used in metrics, logs and the v5 Reason String.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ConnectionLost => "connection_lost",
            CloseReason::IoException => "io_exception",
            CloseReason::ClientUnresponsive => "client_unresponsive",
            CloseReason::MessageQueueLimitReached => "message_queue_limit_reached",
            CloseReason::ClosedByClient => "closed_by_client",
            CloseReason::MessageTooLarge => "message_too_large",
            CloseReason::InternalError => "internal_error",
            CloseReason::InvalidInboundMessage(_) => "invalid_inbound_message",
            CloseReason::Aborted => "aborted",
            CloseReason::LostMessages => "lost_messages",
            CloseReason::ClosedByController => "closed_by_controller",
            CloseReason::FailedOver => "failed_over",
            CloseReason::Expired => "expired",
            CloseReason::Revoked => "revoked",
            CloseReason::SessionTakenOver => "session_taken_over",
            CloseReason::ServerShutdown => "server_shutdown",
        }
    }

    /// The v5 DISCONNECT reason code the server sends before closing, or `None` when the
    /// server sends no DISCONNECT (the peer is gone, or closed it itself, or the close
    /// happens before CONNACK, where the answer is a CONNACK refusal instead).
    pub fn disconnect_code(self) -> Option<u8> {
        match self {
            CloseReason::ConnectionLost
            | CloseReason::IoException
            | CloseReason::ClosedByClient
            | CloseReason::Aborted => None,
            CloseReason::ClientUnresponsive => Some(0x8D),
            CloseReason::MessageQueueLimitReached => Some(0x97),
            CloseReason::MessageTooLarge => Some(0x95),
            CloseReason::InternalError => Some(0x83),
            CloseReason::InvalidInboundMessage(kind) => Some(match kind {
                InvalidKind::Malformed => 0x81,
                InvalidKind::Protocol => 0x82,
                InvalidKind::TopicName => 0x90,
                InvalidKind::ReceiveMaximum => 0x93,
                InvalidKind::TopicAlias => 0x94,
            }),
            CloseReason::LostMessages => Some(0x80),
            CloseReason::ClosedByController => Some(0x98),
            CloseReason::FailedOver => Some(0x9C),
            CloseReason::Expired => Some(0xA0),
            CloseReason::Revoked => Some(0x87),
            CloseReason::SessionTakenOver => Some(0x8E),
            CloseReason::ServerShutdown => Some(0x8B),
        }
    }

    /// Whether a persistent session (clean start 0 with an expiry) survives this close and
    /// waits for its client. The queue-limit and lost-message reasons discard it so the
    /// returning client sees Session Present 0: loss is never silent.
    pub fn session_survives(self) -> bool {
        !matches!(
            self,
            CloseReason::MessageQueueLimitReached
                | CloseReason::LostMessages
                | CloseReason::Revoked
                | CloseReason::Aborted
        )
    }

    /// Whether the will message fires (MQTT-3.1.2-8: on every close but a normal DISCONNECT;
    /// a DISCONNECT with 0x04 is handled by the connection, which asks for it explicitly).
    /// A takeover fires it too (MQTT-3.1.4-3), subject to the v5 will delay. A session that
    /// failed over to another cluster node does not: its client is alive and connected (or
    /// told to connect) there, and the will stays with the session.
    pub fn fires_will(self) -> bool {
        !matches!(self, CloseReason::ClosedByClient | CloseReason::FailedOver)
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_contract_list_and_unique() {
        let labels: Vec<&str> = CloseReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            [
                "connection_lost",
                "io_exception",
                "client_unresponsive",
                "message_queue_limit_reached",
                "closed_by_client",
                "message_too_large",
                "internal_error",
                "invalid_inbound_message",
                "aborted",
                "lost_messages",
                "closed_by_controller",
                "failed_over",
                "expired",
                "revoked",
                "session_taken_over",
                "server_shutdown",
            ]
        );
    }

    #[test]
    fn codes_match_the_spec_table() {
        assert_eq!(CloseReason::SessionTakenOver.disconnect_code(), Some(0x8E));
        assert_eq!(
            CloseReason::ClientUnresponsive.disconnect_code(),
            Some(0x8D)
        );
        assert_eq!(CloseReason::MessageTooLarge.disconnect_code(), Some(0x95));
        assert_eq!(
            CloseReason::MessageQueueLimitReached.disconnect_code(),
            Some(0x97)
        );
        assert_eq!(CloseReason::ServerShutdown.disconnect_code(), Some(0x8B));
        assert_eq!(
            CloseReason::ClosedByController.disconnect_code(),
            Some(0x98)
        );
        assert_eq!(CloseReason::InternalError.disconnect_code(), Some(0x83));
        assert_eq!(
            CloseReason::InvalidInboundMessage(InvalidKind::ReceiveMaximum).disconnect_code(),
            Some(0x93)
        );
    }

    #[test]
    fn queue_limit_discards_the_session() {
        assert!(!CloseReason::MessageQueueLimitReached.session_survives());
        assert!(CloseReason::ConnectionLost.session_survives());
        assert!(CloseReason::SessionTakenOver.session_survives());
    }
}
