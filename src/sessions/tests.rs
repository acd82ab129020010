//! Each way a session ends: produced, counted once under its reason, and the table left as it
//! should be. Timers run on paused time.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::*;
use crate::close::CloseReason;
use crate::config::QueueFullPolicy;
use crate::metrics::Stats;
use crate::protocol::{QoS, Version};
use crate::router::SubscriptionOptions;
use crate::sessions::store::MemoryStore;

pub(super) struct Setup {
    pub(super) sessions: Arc<Sessions>,
    metrics: PrometheusHandle,
}

pub(super) fn setup(limits: Limits) -> Setup {
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let sessions = metrics::with_local_recorder(&recorder, || {
        let stats = Arc::new(Stats::new());
        let routing = Arc::new(Routing::new(stats.clone(), Vec::new()));
        Sessions::new(
            routing,
            Arc::new(MemoryStore),
            &limits,
            stats.queued.clone(),
        )
    });
    Setup { sessions, metrics }
}

impl Setup {
    pub(super) fn ended(&self, end: SessionEnd) -> f64 {
        let series = format!(
            "{}{{reason=\"{}\"}}",
            crate::metrics::SESSIONS_ENDED,
            end.label()
        );
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Every end reason's count, so a test asserts that only the expected one moved.
    fn ends(&self) -> Vec<(SessionEnd, f64)> {
        SessionEnd::ALL
            .iter()
            .map(|e| (*e, self.ended(*e)))
            .filter(|(_, n)| *n > 0.0)
            .collect()
    }

    pub(super) async fn connect(
        &self,
        id: &str,
        clean: bool,
        expiry: u32,
        will: Option<Will>,
    ) -> Lease {
        self.sessions
            .connect(ConnectRequest {
                remote: None,
                client_id: Arc::from(id),
                clean_start: clean,
                expiry_interval: expiry,
                will,
                info: ConnInfo {
                    user: Some(Arc::from("alice")),
                    peer: "127.0.0.1:1".parse().expect("addr"),
                    listener: Arc::from("tcp"),
                    version: Version::V5,
                    connected_at: SystemTime::now(),
                    counters: Counters::default(),
                },
            })
            .await
    }

    /// A second session subscribed to `topic`, to see wills and messages arrive.
    async fn watcher(&self, topic: &str) -> Lease {
        let mut lease = self.connect("watcher", true, 0, None).await;
        lease.subscribe(topic, options(QoS::AtLeastOnce));
        lease
    }
}

pub(super) fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        no_local: false,
        retain_as_published: false,
        subscription_identifier: None,
    }
}

fn will(delay: u32) -> Will {
    Will {
        topic: "wills".to_string(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        delay_interval: delay,
        properties: Default::default(),
    }
}

fn message(topic: &str) -> Arc<Message> {
    Arc::new(Message {
        topic: Arc::from(topic),
        payload: Bytes::from_static(b"m"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Bytes::new(),
        expires_at: None,
        stored: std::sync::OnceLock::new(),
    })
}

#[tokio::test]
async fn a_session_without_expiry_ends_with_its_connection() {
    let s = setup(Limits::default());
    let lease = s.connect("c", true, 0, None).await;
    assert!(!lease.session_present());
    lease
        .finish(CloseReason::ConnectionLost, false, false)
        .await;
    assert_eq!(s.ends(), [(SessionEnd::ConnectionClosed, 1.0)]);
    assert!(s.sessions.is_empty());
}

#[tokio::test]
async fn a_persistent_session_waits_and_resumes_without_ending() {
    let s = setup(Limits::default());
    let mut lease = s.connect("c", false, 60, None).await;
    lease.subscribe("t/#", options(QoS::AtLeastOnce));
    lease
        .finish(CloseReason::ConnectionLost, false, false)
        .await;
    assert_eq!(s.sessions.counts(), (0, 1));
    s.sessions.publish(&[message("t/1")], "p");
    let lease = s.connect("c", false, 60, None).await;
    assert!(lease.session_present());
    assert_eq!(lease.queue().len(), 1, "queued while away");
    assert_eq!(lease.state().subscription_count(), 1);
    assert!(s.ends().is_empty());
}

#[tokio::test]
async fn clean_start_ends_the_old_session_and_cancels_its_delayed_will() {
    let s = setup(Limits::default());
    let watcher = s.watcher("wills").await;
    let lease = s.connect("c", false, 60, Some(will(30))).await;
    lease
        .finish(CloseReason::ConnectionLost, false, false)
        .await;
    let lease = s.connect("c", true, 0, None).await;
    assert!(!lease.session_present());
    assert_eq!(s.ends(), [(SessionEnd::CleanStart, 1.0)]);
    // MQTT-3.1.2-8: its client came back within the delay: the will is not published.
    assert_eq!(watcher.queue().len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_session_fires_its_delayed_will_then_expires() {
    let s = setup(Limits::default());
    let watcher = s.watcher("wills").await;
    let lease = s.connect("c", false, 10, Some(will(4))).await;
    lease
        .finish(CloseReason::ConnectionLost, false, false)
        .await;
    tokio::time::sleep(Duration::from_millis(3_900)).await;
    assert_eq!(watcher.queue().len(), 0, "not before the delay");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(watcher.queue().len(), 1, "the will after 4 s");
    assert_eq!(s.sessions.counts(), (1, 1));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(s.ends(), [(SessionEnd::SessionExpired, 1.0)]);
    assert_eq!(s.sessions.counts(), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_session_that_ends_before_its_will_delay_publishes_the_will_then() {
    let s = setup(Limits::default());
    let watcher = s.watcher("wills").await;
    let lease = s.connect("c", false, 5, Some(will(60))).await;
    lease
        .finish(CloseReason::ConnectionLost, false, false)
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(s.ends(), [(SessionEnd::SessionExpired, 1.0)]);
    assert_eq!(
        watcher.queue().len(),
        1,
        "the session's end publishes the will"
    );
}

#[tokio::test]
async fn a_waiting_session_whose_queue_overflows_ends() {
    let s = setup(Limits {
        max_queue_depth_disconnected: 2,
        queue_full_policy: QueueFullPolicy::Disconnect,
        ..Limits::default()
    });
    let mut lease = s.connect("c", false, 60, None).await;
    lease.subscribe("t", options(QoS::AtLeastOnce));
    lease
        .finish(CloseReason::ConnectionLost, false, false)
        .await;
    for _ in 0..3 {
        s.sessions.publish(&[message("t")], "p");
    }
    assert_eq!(s.ends(), [(SessionEnd::QueueLimit, 1.0)]);
    assert!(s.sessions.is_empty());
    let lease = s.connect("c", false, 60, None).await;
    assert!(!lease.session_present(), "no silent resume after a loss");
}

#[tokio::test]
async fn a_kick_closes_the_connection_and_discards_or_keeps_the_session() {
    let s = setup(Limits::default());
    let lease = s.connect("c", false, 60, None).await;
    assert!(s.sessions.kick("c", true));
    match lease.mailbox().recv().await {
        Control::Close { reason, discard } => {
            assert_eq!((reason, discard), (CloseReason::ClosedByController, true));
        }
        other => panic!("expected a close, got {other:?}"),
    }
    lease
        .finish(CloseReason::ClosedByController, false, true)
        .await;
    assert_eq!(s.ends(), [(SessionEnd::Kicked, 1.0)]);
    assert!(s.sessions.is_empty());

    // keep_session: the connection goes, the session waits.
    let lease = s.connect("k", false, 60, None).await;
    assert!(s.sessions.kick("k", false));
    lease
        .finish(CloseReason::ClosedByController, false, false)
        .await;
    assert_eq!(s.sessions.counts(), (0, 1));
    // A waiting session is discarded by a kick too.
    assert!(s.sessions.kick("k", true));
    assert_eq!(s.ended(SessionEnd::Kicked), 2.0);
    assert!(!s.sessions.kick("nobody", true));
}

#[tokio::test]
async fn a_revoke_ends_every_session_of_the_user() {
    let s = setup(Limits::default());
    let waiting = s.connect("w", false, 60, None).await;
    waiting
        .finish(CloseReason::ConnectionLost, false, false)
        .await;
    let connected = s.connect("c", false, 60, None).await;
    assert_eq!(s.sessions.revoke_user("alice"), 2);
    assert_eq!(s.ended(SessionEnd::Revoked), 1.0, "the waiting one at once");
    assert!(matches!(
        connected.mailbox().recv().await,
        Control::Close {
            reason: CloseReason::Revoked,
            discard: true
        }
    ));
    connected.finish(CloseReason::Revoked, false, true).await;
    assert_eq!(s.ends(), [(SessionEnd::Revoked, 2.0)]);
    assert!(s.sessions.is_empty());
}

#[tokio::test]
async fn closes_that_lose_the_session_name_their_end() {
    let s = setup(Limits::default());
    for (id, reason, end) in [
        (
            "q",
            CloseReason::MessageQueueLimitReached,
            SessionEnd::QueueLimit,
        ),
        ("f", CloseReason::FailedOver, SessionEnd::FailedOver),
        ("l", CloseReason::LostMessages, SessionEnd::LostMessages),
    ] {
        let lease = s.connect(id, false, 60, None).await;
        lease.finish(reason, false, false).await;
        let survives = reason.session_survives();
        assert_eq!(s.ended(end), if survives { 0.0 } else { 1.0 }, "{reason}");
    }
}

#[tokio::test]
async fn a_takeover_hands_a_persistent_session_over_and_ends_a_clean_one() {
    let s = setup(Limits::default());
    // Persistent: handed over, Session Present 1.
    let mut old = s.connect("p", false, 60, None).await;
    old.subscribe("t", options(QoS::AtMostOnce));
    let sessions = s.sessions.clone();
    let new = tokio::spawn(async move {
        sessions
            .connect(ConnectRequest {
                remote: None,
                client_id: Arc::from("p"),
                clean_start: false,
                expiry_interval: 60,
                will: None,
                info: ConnInfo {
                    user: None,
                    peer: "127.0.0.1:2".parse().expect("addr"),
                    listener: Arc::from("tcp"),
                    version: Version::V5,
                    connected_at: SystemTime::now(),
                    counters: Counters::default(),
                },
            })
            .await
    });
    let Control::TakeOver { reply } = old.mailbox().recv().await else {
        panic!("expected a takeover");
    };
    old.hand_over_on_finish(reply);
    old.finish(CloseReason::SessionTakenOver, false, false)
        .await;
    let new = new.await.expect("task");
    assert!(new.session_present());
    assert_eq!(new.state().subscription_count(), 1);
    assert!(s.ends().is_empty());

    // Clean (expiry 0): never reused (MQTT-3.1.2-6), even by a Clean Start 0 takeover.
    let mut old = s.connect("c", true, 0, None).await;
    old.subscribe("t", options(QoS::AtMostOnce));
    let sessions = s.sessions.clone();
    let new = tokio::spawn(async move {
        let mut request_info = ConnInfo {
            user: None,
            peer: "127.0.0.1:2".parse().expect("addr"),
            listener: Arc::from("tcp"),
            version: Version::V5,
            connected_at: SystemTime::now(),
            counters: Counters::default(),
        };
        request_info.version = Version::V311;
        sessions
            .connect(ConnectRequest {
                remote: None,
                client_id: Arc::from("c"),
                clean_start: false,
                expiry_interval: 60,
                will: None,
                info: request_info,
            })
            .await
    });
    let Control::TakeOver { reply } = old.mailbox().recv().await else {
        panic!("expected a takeover");
    };
    old.hand_over_on_finish(reply);
    old.finish(CloseReason::SessionTakenOver, false, false)
        .await;
    let new = new.await.expect("task");
    assert!(!new.session_present());
    assert_eq!(new.state().subscription_count(), 0);
    assert_eq!(s.ends(), [(SessionEnd::ConnectionClosed, 1.0)]);
}

#[tokio::test]
async fn listings_show_connected_and_waiting_sessions() {
    let s = setup(Limits::default());
    let mut lease = s.connect("a", false, 60, None).await;
    lease.subscribe("x", options(QoS::AtMostOnce));
    lease.update_counters();
    let waiting = s.connect("b", false, 30, None).await;
    waiting
        .finish(CloseReason::ConnectionLost, false, false)
        .await;
    let all = s.sessions.list(None, 10, |_| true);
    assert_eq!(all.len(), 2);
    let a = s.sessions.info("a").expect("a");
    assert!(a.connected);
    assert_eq!((a.subscriptions, a.expiry_interval), (1, 60));
    let b = s.sessions.info("b").expect("b");
    assert!(!b.connected && b.disconnected_since.is_some());
    assert_eq!(b.user.as_deref(), Some("alice"));
}
