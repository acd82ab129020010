use super::*;

fn closed(client_id: Option<&str>, reason: CloseReason) -> Closed<'_> {
    Closed {
        client_id,
        user: Some("alice"),
        peer: "127.0.0.1:1".parse().expect("addr"),
        reason,
        detail: None,
        duration_ms: 1,
    }
}

fn ids(records: &[CloseRecord]) -> Vec<Option<&str>> {
    records.iter().map(|r| r.client_id.as_deref()).collect()
}

#[test]
fn newest_first_and_bounded_by_count() {
    let history = CloseHistory::new(3);
    for id in ["a", "b", "c", "d"] {
        history.record(closed(Some(id), CloseReason::ConnectionLost));
    }
    let all = history.query(&Query {
        limit: 10,
        ..Query::default()
    });
    assert_eq!(ids(&all), [Some("d"), Some("c"), Some("b")]);
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [3, 2, 1],
        "sequence numbers go on across evictions"
    );
    let none = history.query(&Query {
        client_id: Some("a"),
        limit: 10,
        ..Query::default()
    });
    assert!(none.is_empty(), "an evicted record leaves the index too");
}

#[test]
fn by_client_id_reason_and_before() {
    let history = CloseHistory::new(100);
    for i in 0..10 {
        let id = if i % 2 == 0 { "even" } else { "odd" };
        let reason = if i < 5 {
            CloseReason::ConnectionLost
        } else {
            CloseReason::ClosedByController
        };
        history.record(closed(Some(id), reason));
    }
    history.record(closed(None, CloseReason::ClientUnresponsive));
    let even = history.query(&Query {
        client_id: Some("even"),
        limit: 100,
        ..Query::default()
    });
    assert_eq!(
        even.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [8, 6, 4, 2, 0]
    );
    let page = history.query(&Query {
        client_id: Some("even"),
        before: Some(6),
        limit: 2,
        ..Query::default()
    });
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 2]);
    let kicked = history.query(&Query {
        reason: Some("closed_by_controller"),
        limit: 100,
        ..Query::default()
    });
    assert_eq!(kicked.len(), 5);
    let latest = history.query(&Query {
        limit: 1,
        ..Query::default()
    });
    assert_eq!(latest[0].client_id, None);
    assert_eq!(latest[0].reason, CloseReason::ClientUnresponsive);
}

#[test]
fn bounded_by_bytes_and_details_are_cut() {
    let history = CloseHistory::with_limits(1000, 10 * 1024);
    let long = "x".repeat(4096);
    for _ in 0..10 {
        history.record(closed(Some(&long), CloseReason::ConnectionLost));
    }
    assert!(history.len() < 3, "{} records kept", history.len());
    let detail = "é".repeat(1000);
    history.record(Closed {
        detail: Some(&detail),
        ..closed(Some("d"), CloseReason::IoException)
    });
    let latest = history.query(&Query {
        limit: 1,
        ..Query::default()
    });
    let kept = latest[0].detail.as_deref().expect("detail");
    assert!(kept.len() <= MAX_DETAIL && kept.chars().all(|c| c == 'é'));
}

#[test]
fn zero_capacity_keeps_nothing() {
    let history = CloseHistory::new(0);
    history.record(closed(Some("a"), CloseReason::ConnectionLost));
    assert!(history.is_empty());
}

/// A query for one client visits that client's records, not the whole ring.
#[test]
fn a_query_by_client_id_does_not_scan_the_ring() {
    let history = CloseHistory::new(100_000);
    for i in 0..100_000 {
        history.record(closed(Some(&format!("c{i}")), CloseReason::ConnectionLost));
    }
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        let found = history.query(&Query {
            client_id: Some("c500"),
            limit: 100,
            ..Query::default()
        });
        assert_eq!(found.len(), 1);
    }
    // 1,000 scans of 100,000 records would take seconds even optimised.
    assert!(started.elapsed() < std::time::Duration::from_millis(500));
}

#[test]
fn closes_filter_by_user() {
    let history = CloseHistory::new(10);
    history.record(closed(Some("a"), CloseReason::Revoked));
    let mut bob = closed(Some("b"), CloseReason::Revoked);
    bob.user = Some("bob");
    history.record(bob);
    let found = history.query(&Query {
        user: Some("bob"),
        limit: 10,
        ..Query::default()
    });
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].client_id.as_deref(), Some("b"));
    let alice = history.query(&Query {
        user: Some("alice"),
        reason: Some("revoked"),
        limit: 10,
        ..Query::default()
    });
    assert_eq!(alice.len(), 1);
}
