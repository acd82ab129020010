//! Revokes, restores, details and kicks that wait, on the sessions alone.

use std::sync::Arc;

use crate::close::CloseReason;
use crate::config::Limits;
use crate::protocol::QoS;
use crate::sessions::tests::{options, setup};
use crate::sessions::{Control, SessionEnd};

#[tokio::test]
async fn a_revoke_marks_the_user_closes_its_sessions_and_restore_lifts_it() {
    let s = setup(Limits::default());
    let waiting = s.connect("w", false, 60, None).await;
    waiting
        .finish(CloseReason::ConnectionLost, false, false)
        .await;
    let connected = s.connect("c", false, 60, None).await;
    let sessions = s.sessions.clone();
    let revoke = tokio::spawn(async move { sessions.revoke("alice").await });
    // The connection is told, closes, and only then does the revoke answer.
    assert!(matches!(
        connected.mailbox().recv().await,
        Control::Close {
            reason: CloseReason::Revoked,
            discard: true
        }
    ));
    assert!(!revoke.is_finished());
    connected.finish(CloseReason::Revoked, false, true).await;
    assert_eq!(revoke.await.expect("task").expect("stored"), 2);
    assert_eq!(s.ended(SessionEnd::Revoked), 2.0);
    assert!(s.sessions.is_revoked("alice") && !s.sessions.is_revoked("bob"));
    assert_eq!(s.sessions.revoked_users(), [Arc::<str>::from("alice")]);
    assert!(s.sessions.restore_user("alice").await.expect("stored"));
    assert!(!s.sessions.is_revoked("alice"));
    assert!(!s.sessions.restore_user("alice").await.expect("stored"));
}

/// A CONNECT that checked the user before the revoke marked it, and attaches after the revoke
/// looked for sessions, is closed at attach.
#[tokio::test]
async fn a_connect_that_raced_a_revoke_is_closed_at_attach() {
    let s = setup(Limits::default());
    s.sessions.recover_revoked(Arc::from("alice"), true);
    let lease = s.connect("late", true, 0, None).await;
    assert!(matches!(
        lease.mailbox().recv().await,
        Control::Close {
            reason: CloseReason::Revoked,
            discard: true
        }
    ));
}

#[tokio::test]
async fn details_come_from_the_table_or_from_the_connection() {
    let s = setup(Limits::default());
    let mut waiting = s.connect("w", false, 60, None).await;
    waiting.subscribe("b/#", options(QoS::AtLeastOnce));
    waiting.subscribe("a", options(QoS::AtMostOnce));
    waiting
        .finish(CloseReason::ConnectionLost, false, false)
        .await;
    let detail = s.sessions.detail("w").await.expect("waiting session");
    assert!(!detail.info.connected);
    let filters: Vec<&str> = detail
        .subscriptions
        .iter()
        .map(|(f, _)| f.as_str())
        .collect();
    assert_eq!(filters, ["a", "b/#"]);

    let mut connected = s.connect("c", true, 0, None).await;
    connected.subscribe("x/+", options(QoS::ExactlyOnce));
    let sessions = s.sessions.clone();
    let asked = tokio::spawn(async move { sessions.detail("c").await });
    // The connection answers from its main loop.
    match connected.mailbox().recv().await {
        Control::Subscriptions { reply } => {
            reply
                .send(connected.subscription_list())
                .expect("asker waits");
        }
        other => panic!("expected a question, got {other:?}"),
    }
    let detail = asked.await.expect("task").expect("connected session");
    assert!(detail.info.connected);
    assert_eq!(detail.info.subscriptions, 1);
    assert_eq!(detail.subscriptions[0].0, "x/+");
    assert_eq!(detail.subscriptions[0].1.qos, QoS::ExactlyOnce);
    assert!(s.sessions.detail("nobody").await.is_none());
}

#[tokio::test]
async fn a_connection_that_ends_while_asked_leaves_its_session_waiting_to_be_read() {
    let s = setup(Limits::default());
    let mut lease = s.connect("c", false, 60, None).await;
    lease.subscribe("t", options(QoS::AtLeastOnce));
    let sessions = s.sessions.clone();
    let asked = tokio::spawn(async move { sessions.detail("c").await });
    // The question arrives, the connection ends without answering (its mailbox closes).
    assert!(matches!(
        lease.mailbox().recv().await,
        Control::Subscriptions { .. }
    ));
    lease
        .finish(CloseReason::ConnectionLost, false, false)
        .await;
    let detail = asked.await.expect("task").expect("session waits");
    assert!(!detail.info.connected);
    assert_eq!(detail.subscriptions.len(), 1);
}

#[tokio::test]
async fn a_kick_and_wait_returns_once_the_session_is_gone() {
    let s = setup(Limits::default());
    let lease = s.connect("c", false, 60, None).await;
    let sessions = s.sessions.clone();
    let kick = tokio::spawn(async move { sessions.kick_and_wait("c", true).await });
    assert!(matches!(
        lease.mailbox().recv().await,
        Control::Close {
            reason: CloseReason::ClosedByController,
            discard: true
        }
    ));
    lease
        .finish(CloseReason::ClosedByController, false, true)
        .await;
    assert!(kick.await.expect("task"));
    assert!(s.sessions.info("c").is_none());
    assert!(!s.sessions.kick_and_wait("c", true).await);
}
