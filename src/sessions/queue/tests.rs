use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::message::Message;

fn limits(depth: usize, policy: QueueFullPolicy) -> QueueLimits {
    QueueLimits {
        depth,
        depth_disconnected: depth,
        bytes: usize::MAX,
        bytes_disconnected: usize::MAX,
        policy,
    }
}

fn delivery(qos: QoS, payload: &'static [u8]) -> Delivery {
    let message = Arc::new(Message {
        topic: Arc::from("t"),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
        properties: Bytes::new(),
        expires_at: None,
        stored: Default::default(),
    });
    Delivery::new(message, qos, false, vec![])
}

fn drain(queue: &Queue) -> Vec<u64> {
    let mut out = Vec::new();
    queue.drain(100, 100, &mut out);
    out.iter().map(|d| d.seq).collect()
}

#[test]
fn sequence_numbers_and_policies() {
    let q = Queue::new(
        limits(2, QueueFullPolicy::DropOldest),
        metrics::Gauge::noop(),
    );
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, b"1")),
        Offer::Queued {
            seq: 1,
            stored: false
        }
    );
    q.offer(delivery(QoS::AtLeastOnce, b"2"));
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, b"3")),
        Offer::DroppedQueueFull(1)
    );
    assert_eq!(drain(&q), [2, 3]);

    let q = Queue::new(
        limits(1, QueueFullPolicy::DropNewest),
        metrics::Gauge::noop(),
    );
    q.offer(delivery(QoS::AtLeastOnce, b"1"));
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, b"2")),
        Offer::DroppedQueueFull(1)
    );
    assert_eq!(drain(&q), [1]);

    let q = Queue::new(
        limits(1, QueueFullPolicy::Disconnect),
        metrics::Gauge::noop(),
    );
    q.offer(delivery(QoS::AtLeastOnce, b"1"));
    assert_eq!(q.offer(delivery(QoS::AtLeastOnce, b"2")), Offer::Overflowed);
    assert!(q.is_overflowed() && q.is_empty());
    assert_eq!(q.offer(delivery(QoS::AtLeastOnce, b"3")), Offer::Closed);
}

#[test]
fn byte_limits_count_but_an_empty_queue_takes_one() {
    let q = Queue::new(
        QueueLimits {
            bytes: 10,
            ..limits(100, QueueFullPolicy::DropNewest)
        },
        metrics::Gauge::noop(),
    );
    assert!(matches!(
        q.offer(delivery(QoS::AtLeastOnce, &[0; 500])),
        Offer::Queued { .. }
    ));
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, b"x")),
        Offer::DroppedQueueFull(1)
    );
}

#[test]
fn a_persistent_queue_keeps_its_stored_deliveries_out_of_memory_while_waiting() {
    let q = Queue::new(
        limits(100, QueueFullPolicy::Disconnect),
        metrics::Gauge::noop(),
    );
    q.set_persistent(true);
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, b"1")),
        Offer::Queued {
            seq: 1,
            stored: true
        }
    );
    assert_eq!(
        q.offer(delivery(QoS::AtMostOnce, b"2")),
        Offer::Queued {
            seq: 2,
            stored: false
        }
    );
    // The client leaves with seq 1 in memory and seq 0 (say) in flight.
    q.set_connected(false);
    q.park([]);
    assert_eq!(
        q.offer(delivery(QoS::AtMostOnce, b"x")),
        Offer::NotQueuedOffline
    );
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, b"3")),
        Offer::Queued {
            seq: 3,
            stored: true
        }
    );
    assert_eq!(q.len(), 2, "stored only: counted, not in memory");
    assert_eq!(drain(&q), Vec::<u64>::new());
    assert_eq!(
        q.backlog_to_load(10),
        None,
        "nothing is read while the client is away"
    );
    // The client is back: the backlog is read in front of what comes meanwhile.
    q.set_connected(true);
    let backlog = q.backlog_to_load(10).expect("a backlog");
    assert_eq!(backlog, Backlog { from: 1, count: 2 });
    assert_eq!(q.backlog_to_load(10), None, "one read at a time");
    // Arriving while the backlog is read: stored only, so the order holds.
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, b"4")),
        Offer::Queued {
            seq: 4,
            stored: true
        }
    );
    let mut first = delivery(QoS::AtLeastOnce, b"1");
    first.seq = 1;
    let mut third = delivery(QoS::AtLeastOnce, b"3");
    third.seq = 3;
    q.loaded(vec![first, third], 4);
    assert_eq!(drain(&q), [1, 3]);
    let backlog = q.backlog_to_load(10).expect("the rest");
    assert_eq!(backlog, Backlog { from: 4, count: 1 });
    let mut fourth = delivery(QoS::AtLeastOnce, b"4");
    fourth.seq = 4;
    q.loaded(vec![fourth], 5);
    assert_eq!(drain(&q), [4]);
    assert!(q.is_empty());
    // Caught up: new deliveries stay in memory again (and are stored).
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, b"5")),
        Offer::Queued {
            seq: 5,
            stored: true
        }
    );
    assert_eq!(drain(&q), [5]);
}

#[test]
fn a_restored_queue_is_all_backlog() {
    let q = Queue::new(
        limits(100, QueueFullPolicy::Disconnect),
        metrics::Gauge::noop(),
    );
    q.restore(10, 3, 300, 13);
    assert_eq!(q.len(), 3);
    q.set_connected(true);
    assert_eq!(q.backlog_to_load(10), Some(Backlog { from: 10, count: 3 }));
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, b"x")),
        Offer::Queued {
            seq: 13,
            stored: true
        }
    );
}
