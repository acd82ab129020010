use super::*;
use crate::sessions::queue::QueueLimits;

fn queue() -> Arc<Queue> {
    Arc::new(Queue::new(
        QueueLimits::from_config(&crate::config::Limits::default()),
        metrics::Gauge::noop(),
    ))
}

fn session(id: &str) -> Box<SessionState> {
    Box::new(SessionState::new(Arc::from(id), Version::V5))
}

fn info(user: Option<&str>) -> Arc<ConnInfo> {
    Arc::new(ConnInfo {
        user: user.map(Arc::from),
        peer: "127.0.0.1:1".parse().expect("addr"),
        listener: Arc::from("tcp"),
        version: Version::V5,
        connected_at: SystemTime::now(),
        counters: Counters::default(),
    })
}

fn attach(table: &Table, id: &Arc<str>) -> Attached {
    table.attach(id, Mailbox::new(), false, info(None), queue)
}

#[test]
fn stale_connection_cannot_remove_its_successor() {
    let table = Table::new();
    let id: Arc<str> = Arc::from("c");
    let first = attach(&table, &id);
    let second = attach(&table, &id);
    assert!(matches!(second.previous, Previous::Connected(_)));
    assert!(matches!(
        table.detach("c", first.generation, session("c"), false),
        Detached::NotOwner(_)
    ));
    assert!(matches!(
        table.detach("c", first.generation, session("c"), true),
        Detached::NotOwner(_)
    ));
    assert_eq!(table.counts(), (1, 0));
    assert!(matches!(
        table.detach("c", second.generation, session("c"), true),
        Detached::Kept
    ));
    assert_eq!(table.counts(), (0, 1));
}

#[test]
fn reconnect_cancels_expiry_and_delayed_will() {
    let table = Table::new();
    let id: Arc<str> = Arc::from("c");
    let first = attach(&table, &id);
    assert!(matches!(
        table.detach("c", first.generation, session("c"), true),
        Detached::Kept
    ));
    let second = attach(&table, &id);
    assert!(matches!(second.previous, Previous::Waiting(_)));
    assert!(table.take_will("c", first.generation).is_none());
    assert!(table.expire("c", first.generation).is_none());
    assert_eq!(table.len(), 1);
}

#[test]
fn concurrent_attaches_leave_one_owner() {
    let table = Arc::new(Table::new());
    let id: Arc<str> = Arc::from("c");
    let mut threads = Vec::new();
    for _ in 0..8 {
        let table = table.clone();
        let id = id.clone();
        threads.push(std::thread::spawn(move || attach(&table, &id).generation));
    }
    let generations: Vec<u64> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    assert_eq!(table.counts(), (1, 0));
    let newest = generations.iter().copied().max().expect("some");
    for generation in generations {
        let outcome = table.detach("c", generation, session("c"), false);
        assert_eq!(
            matches!(outcome, Detached::Removed(..)),
            generation == newest
        );
    }
    assert!(table.is_empty());
}

#[test]
fn listing_pages_in_client_id_order_with_a_filter() {
    let table = Table::new();
    for i in (0..50).rev() {
        let id: Arc<str> = Arc::from(format!("c{i:02}"));
        let user = if i % 2 == 0 { "even" } else { "odd" };
        let attached = table.attach(&id, Mailbox::new(), false, info(Some(user)), queue);
        if i % 5 == 0 {
            table.detach(&id, attached.generation, session(&id), true);
        }
    }
    let first = table.list(None, 10, |_| true);
    let ids: Vec<&str> = first.iter().map(|s| &*s.client_id).collect();
    assert_eq!(ids, (0..10).map(|i| format!("c{i:02}")).collect::<Vec<_>>());
    assert!(!first[0].connected && first[1].connected);
    let next = table.list(Some("c09"), 10, |_| true);
    assert_eq!(&*next[0].client_id, "c10");
    let even = table.list(None, 100, |s| s.user.as_deref() == Some("even"));
    assert_eq!(even.len(), 25);
    assert_eq!(table.ids_of_user("odd").len(), 25);
    assert!(table.info("c07").is_some_and(|s| s.connected));
    assert_eq!(table.presence("c05"), Some(false));
    assert!(table.discard_waiting("c05").is_some());
    assert_eq!(table.presence("c05"), None);
}
