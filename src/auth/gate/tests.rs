use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A task that blocks its gate thread until the returned sender is dropped or sent to.
fn blocker() -> (mpsc::Sender<()>, impl FnOnce() -> u32 + Send + 'static) {
    let (tx, rx) = mpsc::channel::<()>();
    (tx, move || {
        let _ = rx.recv();
        0
    })
}

/// Runs a blocker on `gate` and returns once a gate thread is busy with it.
async fn occupy(
    gate: &Arc<Gate<u32>>,
) -> (
    mpsc::Sender<()>,
    tokio::task::JoinHandle<Result<u32, GateError>>,
) {
    let (release, task) = blocker();
    let (started_tx, started) = oneshot::channel();
    let gate = gate.clone();
    let running = tokio::spawn(async move {
        gate.run(ip("10.0.0.1"), move || {
            let _ = started_tx.send(());
            task()
        })
        .await
    });
    started.await.unwrap();
    (release, running)
}

/// Waits (briefly polling) until `n` jobs are queued.
async fn until_waiting<T: Send + 'static>(gate: &Gate<T>, n: usize) {
    for _ in 0..500 {
        if gate.waiting() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("waiting is {}, expected {n}", gate.waiting());
}

#[tokio::test]
async fn at_most_workers_run_at_once() {
    let gate = Arc::new(Gate::<usize>::new(2, 100, Duration::from_secs(10)).unwrap());
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (gate, running, peak) = (gate.clone(), running.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            gate.run(ip("10.0.0.1"), move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                running.fetch_sub(1, Ordering::SeqCst);
                i
            })
            .await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), Ok(i));
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_full_queue_refuses_at_once() {
    let gate = Arc::new(Gate::<u32>::new(1, 2, Duration::from_secs(10)).unwrap());
    let (release, running) = occupy(&gate).await;
    let mut queued = Vec::new();
    for _ in 0..2 {
        let gate = gate.clone();
        queued.push(tokio::spawn(
            async move { gate.run(ip("10.0.0.1"), || 1).await },
        ));
    }
    until_waiting(&gate, 2).await;
    assert_eq!(
        gate.run(ip("10.0.0.1"), || 9).await,
        Err(GateError::QueueFull)
    );
    drop(release);
    assert_eq!(running.await.unwrap(), Ok(0));
    for task in queued {
        assert_eq!(task.await.unwrap(), Ok(1));
    }
}

#[tokio::test]
async fn waiting_past_the_timeout_is_refused() {
    let gate = Arc::new(Gate::<u32>::new(1, 10, Duration::from_millis(50)).unwrap());
    let (release, running) = occupy(&gate).await;
    let started = std::time::Instant::now();
    assert_eq!(
        gate.run(ip("10.0.0.2"), || 1).await,
        Err(GateError::TimedOut)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(gate.waiting(), 0, "the timed-out job left the queue");
    drop(release);
    assert_eq!(running.await.unwrap(), Ok(0));
}

#[tokio::test]
async fn sources_take_turns() {
    let gate = Arc::new(Gate::<&'static str>::new(1, 1000, Duration::from_secs(30)).unwrap());
    let (release, task) = blocker();
    let (started_tx, started) = oneshot::channel();
    let first = tokio::spawn({
        let gate = gate.clone();
        async move {
            gate.run(ip("10.0.0.1"), move || {
                let _ = started_tx.send(());
                task();
                "first"
            })
            .await
        }
    });
    started.await.unwrap();
    // A flood of 50 from one address, then one check from another.
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (gate, order) = (gate.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            gate.run(ip("10.0.0.1"), move || {
                order.lock().unwrap().push("flood");
                "flood"
            })
            .await
        }));
    }
    until_waiting(&gate, 50).await;
    let legit = tokio::spawn({
        let (gate, order) = (gate.clone(), order.clone());
        async move {
            gate.run(ip("10.0.0.2"), move || {
                order.lock().unwrap().push("legit");
                "legit"
            })
            .await
        }
    });
    until_waiting(&gate, 51).await;
    drop(release);
    assert_eq!(first.await.unwrap(), Ok("first"));
    assert_eq!(legit.await.unwrap(), Ok("legit"));
    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok("flood"));
    }
    let order = order.lock().unwrap();
    let at = order.iter().position(|s| *s == "legit").unwrap();
    assert!(at <= 1, "the other address waited for {at} flood checks");
}

#[tokio::test]
async fn a_full_queue_makes_room_for_another_source() {
    let gate = Arc::new(Gate::<u32>::new(1, 4, Duration::from_secs(30)).unwrap());
    let (release, first) = occupy(&gate).await;
    let mut flood = Vec::new();
    for n in 0..4 {
        let runner = gate.clone();
        flood.push(tokio::spawn(async move {
            runner.run(ip("10.0.0.1"), move || n).await
        }));
        until_waiting(&gate, n as usize + 1).await;
    }
    // Full of one source: the same source is refused, another gets a place.
    assert_eq!(
        gate.run(ip("10.0.0.1"), || 9).await,
        Err(GateError::QueueFull)
    );
    let other = tokio::spawn({
        let gate = gate.clone();
        async move { gate.run(ip("10.0.0.2"), || 7).await }
    });
    // The flood's newest place went to the other source.
    assert_eq!(
        flood.pop().unwrap().await.unwrap(),
        Err(GateError::QueueFull)
    );
    drop(release);
    assert_eq!(first.await.unwrap(), Ok(0));
    assert_eq!(other.await.unwrap(), Ok(7));
    for (n, task) in flood.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), Ok(n as u32));
    }
}

#[tokio::test]
async fn a_panic_is_reported_and_the_thread_survives() {
    let gate = Gate::<u32>::new(1, 10, Duration::from_secs(10)).unwrap();
    assert_eq!(
        gate.run(ip("10.0.0.1"), || panic!("boom")).await,
        Err(GateError::Panicked)
    );
    assert_eq!(gate.run(ip("10.0.0.1"), || 5).await, Ok(5));
}

#[tokio::test]
async fn a_client_that_leaves_gives_its_place_back() {
    let gate = Arc::new(Gate::<u32>::new(1, 10, Duration::from_secs(30)).unwrap());
    let (release, first) = occupy(&gate).await;
    let leaving = tokio::spawn({
        let gate = gate.clone();
        async move { gate.run(ip("10.0.0.3"), || 1).await }
    });
    until_waiting(&gate, 1).await;
    leaving.abort();
    until_waiting(&gate, 0).await;
    drop(release);
    assert_eq!(first.await.unwrap(), Ok(0));
}

#[test]
fn sources_group_ipv6_by_64() {
    assert_eq!(
        Source::of(ip("2001:db8:1:2::1")),
        Source::of(ip("2001:db8:1:2:ffff::9"))
    );
    assert_ne!(
        Source::of(ip("2001:db8:1:2::1")),
        Source::of(ip("2001:db8:1:3::1"))
    );
    assert_eq!(
        Source::of(ip("::ffff:10.0.0.1")),
        Source::of(ip("10.0.0.1"))
    );
    assert_ne!(Source::of(ip("10.0.0.1")), Source::of(ip("10.0.0.2")));
}
