use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::message::Message;
use crate::protocol::{QoS, Version};
use crate::router::SubscriptionOptions;
use crate::sessions::state::OutboundState;
use crate::sessions::store::SessionRecord;

fn message(topic: &str, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        topic: Arc::from(topic),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Bytes::new(),
        expires_at: None,
        stored: Default::default(),
    })
}

fn record(expiry: u32) -> SessionRecord {
    SessionRecord {
        version: Version::V5,
        expiry_interval: expiry,
        expires_at: None,
        will: None,
        will_at: None,
        user: Some(Arc::from("alice")),
    }
}

fn session(id: &str) -> Change {
    Change::Session {
        client_id: Arc::from(id),
        record: record(3600),
    }
}

fn queued(id: &str, seq: u64, m: &Arc<Message>) -> Change {
    Change::Queued {
        client_id: Arc::from(id),
        seq,
        message: m.clone(),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_identifiers: vec![7],
    }
}

fn delivered(id: &str, seq: u64) -> Change {
    Change::Delivered {
        client_id: Arc::from(id),
        seq,
    }
}

async fn commit(store: &DiskStore, changes: Vec<Change>) {
    store.submit(changes).await.expect("committed");
}

fn reopen(dir: &Path) -> DiskStore {
    DiskStore::open(dir, Sync::Always).expect("open")
}

#[tokio::test]
async fn sessions_subscriptions_and_queues_survive_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let store = reopen(dir.path());
    let shared = message("t/1", b"one");
    let options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: false,
        subscription_identifier: Some(7),
    };
    commit(
        &store,
        vec![
            session("a"),
            session("b"),
            Change::Subscribed {
                client_id: Arc::from("a"),
                filter: "t/#".into(),
                options: options.clone(),
            },
            queued("a", 1, &shared),
            queued("a", 2, &message("t/2", b"two")),
            queued("b", 1, &shared),
            Change::InFlight {
                client_id: Arc::from("a"),
                seq: 1,
                packet_id: 9,
                state: OutboundState::AwaitingPubRec,
            },
            Change::InboundQos2 {
                client_id: Arc::from("a"),
                packet_id: 5,
                pending: true,
            },
            Change::Retained {
                topic: Arc::from("r"),
                message: Some(message("r", b"kept")),
            },
            Change::Revoked {
                user: Arc::from("mallory"),
                revoked: true,
            },
        ],
    )
    .await;
    drop(store);

    let store = reopen(dir.path());
    let recovered = tokio::task::spawn_blocking({
        let store = Arc::new(store);
        let s = store.clone();
        move || (s.recover(), store)
    })
    .await
    .expect("task");
    let (recovered, store) = (recovered.0.expect("recovered"), recovered.1);
    assert!(recovered.lost.is_empty(), "{:?}", recovered.lost);
    assert_eq!(recovered.sessions.len(), 2);
    let a = &recovered.sessions[0];
    assert_eq!(&*a.client_id, "a");
    assert_eq!(a.subscriptions, vec![("t/#".to_string(), options)]);
    assert_eq!(a.inbound_qos2, vec![5]);
    assert_eq!((a.queue.first, a.queue.next, a.queue.pending), (1, 3, 2));
    assert_eq!(a.record.user.as_deref(), Some("alice"));
    assert_eq!(recovered.retained.len(), 1);
    assert_eq!(&*recovered.revoked[0], "mallory");

    let loaded = store.load(Arc::from("a"), 1, 10).await.expect("load");
    assert_eq!(loaded.next, 3);
    let seqs: Vec<u64> = loaded.deliveries.iter().map(|d| d.seq).collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(
        loaded.deliveries[0].inflight,
        Some((9, OutboundState::AwaitingPubRec))
    );
    assert_eq!(
        loaded.deliveries[0].message.payload,
        Bytes::from_static(b"one")
    );
    assert_eq!(loaded.deliveries[0].subscription_identifiers, [7]);
}

#[tokio::test]
async fn out_of_order_acks_leave_no_hole_and_messages_go_with_their_last_entry() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Arc::new(reopen(dir.path()));
    let shared = message("t", b"x");
    let mut changes = vec![session("a"), session("b"), queued("b", 1, &shared)];
    for seq in 1..=4 {
        changes.push(queued("a", seq, &shared));
    }
    commit(&store, changes).await;
    // 3 and 2 before 1: marked, then all three go when 1 is done.
    commit(&store, vec![delivered("a", 3), delivered("a", 2)]).await;
    let loaded = store.load(Arc::from("a"), 1, 10).await.expect("load");
    let seqs: Vec<u64> = loaded.deliveries.iter().map(|d| d.seq).collect();
    assert_eq!(seqs, [1, 4], "done entries are skipped");
    commit(&store, vec![delivered("a", 1)]).await;
    let loaded = store.load(Arc::from("a"), 1, 10).await.expect("load");
    assert_eq!(loaded.deliveries.len(), 1);
    assert_eq!(loaded.deliveries[0].seq, 4);
    commit(&store, vec![delivered("a", 4), delivered("b", 1)]).await;
    let s = store.clone();
    let recovered = tokio::task::spawn_blocking(move || s.recover())
        .await
        .expect("task")
        .expect("recovered");
    assert!(recovered.sessions.iter().all(|s| s.queue.pending == 0));
    assert!(recovered.lost.is_empty());
}

#[tokio::test]
async fn a_hole_in_a_stored_queue_is_a_loss() {
    let dir = tempfile::tempdir().expect("dir");
    let store = reopen(dir.path());
    let m = message("t", b"x");
    commit(
        &store,
        vec![
            session("holey"),
            session("whole"),
            queued("holey", 1, &m),
            queued("holey", 3, &m),
            queued("whole", 1, &m),
        ],
    )
    .await;
    drop(store);
    let store = reopen(dir.path());
    let recovered = tokio::task::spawn_blocking(move || store.recover())
        .await
        .expect("task")
        .expect("recovered");
    assert_eq!(recovered.lost.len(), 1);
    assert_eq!(&*recovered.lost[0].0, "holey");
    assert!(
        recovered.lost[0].1.contains("missing"),
        "{}",
        recovered.lost[0].1
    );
    assert_eq!(recovered.sessions.len(), 1);
    assert_eq!(&*recovered.sessions[0].client_id, "whole");
}

#[tokio::test]
async fn a_damaged_queue_database_ends_every_stored_session() {
    let dir = tempfile::tempdir().expect("dir");
    let store = reopen(dir.path());
    commit(
        &store,
        vec![session("a"), queued("a", 1, &message("t", b"x"))],
    )
    .await;
    drop(store);
    std::fs::write(dir.path().join("queues").join("version"), b"garbage").expect("damage");
    let store = reopen(dir.path());
    let recovered = tokio::task::spawn_blocking(move || store.recover())
        .await
        .expect("task")
        .expect("recovered");
    assert!(recovered.sessions.is_empty());
    assert_eq!(recovered.lost.len(), 1);
    assert!(
        recovered.lost[0].1.contains("damaged"),
        "{}",
        recovered.lost[0].1
    );
    let aside = std::fs::read_dir(dir.path())
        .expect("list")
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("queues.damaged-")
        });
    assert!(aside, "the damaged database is kept aside");
}

#[tokio::test]
async fn a_store_behind_its_commit_mark_lost_acknowledged_writes() {
    let dir = tempfile::tempdir().expect("dir");
    let store = reopen(dir.path());
    commit(
        &store,
        vec![session("a"), queued("a", 1, &message("t", b"x"))],
    )
    .await;
    drop(store);
    std::fs::write(dir.path().join(COMMITS_FILE), b"1000 1000\n").expect("mark");
    let store = reopen(dir.path());
    let recovered = tokio::task::spawn_blocking(move || store.recover())
        .await
        .expect("task")
        .expect("recovered");
    assert_eq!(recovered.lost.len(), 1);
    assert!(
        recovered.lost[0].1.contains("behind"),
        "{}",
        recovered.lost[0].1
    );
}

#[tokio::test]
async fn a_session_gone_takes_everything_with_it() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Arc::new(reopen(dir.path()));
    let m = message("t", b"x");
    commit(
        &store,
        vec![
            session("a"),
            queued("a", 1, &m),
            queued("a", 2, &m),
            Change::SessionGone {
                client_id: Arc::from("a"),
            },
        ],
    )
    .await;
    let s = store.clone();
    let recovered = tokio::task::spawn_blocking(move || s.recover())
        .await
        .expect("task")
        .expect("recovered");
    assert!(recovered.sessions.is_empty() && recovered.lost.is_empty());
    tokio::time::sleep(Duration::from_millis(1)).await;
}
