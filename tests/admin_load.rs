//! Listing sessions while 10,000 clients connect and disconnect: every listing is consistent
//! (client-id order, no duplicates, every session present throughout is there) and the
//! listings do not stall a publisher (its round trips are measured meanwhile).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use brokk::protocol::{
    Disconnect, Packet, QoS, RetainHandling, Subscribe, SubscriptionRequest, Version,
};
use common::admin::{enc, get_json};
use common::*;

const CHURN: usize = 10_000;
const CHURNERS: usize = 50;
const STABLE: usize = 300;
const PAGE: usize = 50;

/// One full listing, page by page: the client ids in the order listed.
async fn list_all(admin: std::net::SocketAddr) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/sessions?limit={PAGE}&after={}", enc(a)),
            None => format!("/v1/sessions?limit={PAGE}"),
        };
        let page = get_json(admin, &path, None).await;
        pages += 1;
        for s in page["sessions"].as_array().expect("sessions") {
            ids.push(s["client_id"].as_str().expect("id").to_string());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return (ids, pages),
        }
    }
}

/// A client that publishes to itself and measures each round trip until `done`.
async fn round_trips(addr: std::net::SocketAddr, done: Arc<AtomicBool>) -> Vec<Duration> {
    let (mut echo, _) = Raw::connect(addr, connect_packet(Version::V5, "echo")).await;
    // Without it, Nagle's algorithm and delayed ACKs add 40 ms to every round trip.
    echo.stream.set_nodelay(true).expect("nodelay");
    echo.send_packet(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscriptionRequest {
            filter: "rtt".to_string(),
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }],
        subscription_identifier: None,
        user_properties: vec![],
    }))
    .await;
    assert!(matches!(echo.recv().await, Some(Packet::SubAck(_))));
    let mut samples = Vec::new();
    let mut id: u16 = 1;
    while !done.load(Ordering::Relaxed) {
        id = id.wrapping_add(1).max(1);
        let sent = Instant::now();
        echo.send_packet(&publish("rtt", QoS::AtLeastOnce, id, b"ping"))
            .await;
        // Its PUBACK and the delivery back, in either order.
        let (mut acked, mut delivered) = (false, false);
        while !(acked && delivered) {
            match echo.recv().await {
                Some(Packet::PubAck(a)) if a.packet_id == id => acked = true,
                Some(Packet::Publish(p)) => {
                    delivered = true;
                    let ack = brokk::protocol::Ack::success(p.packet_id);
                    echo.send_packet(&Packet::PubAck(ack)).await;
                }
                Some(_) => {}
                None => panic!("echo client closed"),
            }
        }
        samples.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_stay_consistent_while_10000_clients_come_and_go() {
    let broker = start().await;
    let admin = broker.admin.expect("admin API");
    let addr = broker.addr;
    let mut stable = Vec::new();
    let mut stable_ids = Vec::new();
    for i in 0..STABLE {
        let id = format!("stable-{i:04}");
        let (client, _) = Raw::connect(addr, connect_packet(Version::V5, &id)).await;
        stable.push(client);
        stable_ids.push(id);
    }
    let done = Arc::new(AtomicBool::new(false));
    // On a thread of its own, so the test's own clients do not delay it: its round trips
    // measure the broker.
    let echo = {
        let done = done.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(round_trips(addr, done))
        })
    };
    let churners: Vec<_> = (0..CHURNERS)
        .map(|worker| {
            tokio::spawn(async move {
                for n in (worker..CHURN).step_by(CHURNERS) {
                    let id = format!("churn-{n:05}");
                    let (mut client, ack) =
                        Raw::connect(addr, connect_packet(Version::V5, &id)).await;
                    assert_eq!(ack.reason_code, 0);
                    client
                        .send_packet(&Packet::Disconnect(Disconnect::with_reason(0, None)))
                        .await;
                    client.until_closed().await;
                }
            })
        })
        .collect();
    let lister = {
        let (done, stable_ids) = (done.clone(), stable_ids.clone());
        tokio::spawn(async move {
            let mut listings = 0;
            let mut pages = 0;
            let mut slowest = Duration::ZERO;
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (ids, n) = list_all(admin).await;
                slowest = slowest.max(started.elapsed());
                assert!(
                    ids.windows(2).all(|w| w[0] < w[1]),
                    "a listing is in client-id order without duplicates"
                );
                let missing: Vec<&String> = stable_ids
                    .iter()
                    .filter(|id| ids.binary_search(id).is_err())
                    .collect();
                assert!(
                    missing.is_empty(),
                    "present throughout, yet not listed: {missing:?}"
                );
                listings += 1;
                pages += n;
            }
            (listings, pages, slowest)
        })
    };
    let started = Instant::now();
    for churner in churners {
        churner.await.expect("churner");
    }
    let churn_time = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let (listings, pages, slowest) = lister.await.expect("lister");
    let mut samples = echo.join().expect("echo");
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    eprintln!(
        "{CHURN} connect/disconnect cycles in {churn_time:?}; {listings} full listings \
         ({pages} pages of {PAGE}, slowest listing {slowest:?}); publisher round trips: \
         {} samples, median {:?}, p99 {:?}, max {:?}",
        samples.len(),
        at(0.5),
        at(0.99),
        samples.last().copied().unwrap_or_default()
    );
    assert!(listings >= 3, "only {listings} listings during the churn");
    assert!(samples.len() >= 50, "only {} round trips", samples.len());
    // Generous for a debug build on two shared cores: a listing that held the broker would
    // show as round trips of its own length.
    assert!(
        at(0.99) < Duration::from_millis(500),
        "p99 round trip {:?}",
        at(0.99)
    );
    // The last churners' sessions end just after their sockets close.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (ids, _) = list_all(admin).await;
        if ids.len() == STABLE {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} sessions left, expected the {STABLE} stable ones",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stable);
    broker.stop().await;
}
