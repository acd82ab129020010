//! Soak: connect/disconnect and takeover cycles, many thousands of them, then proof that
//! nothing leaked: no connection, session, subscription or task left behind, and resident
//! memory after the cycles close to what it was after a warm-up.
//!
//! `BROKK_SOAK_CYCLES` sets the number of cycles (default sized for the debug build in CI);
//! `scripts/soak` runs hundreds of thousands in release mode.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use brokk::protocol::{
    Ack, ConnAck, Disconnect, Packet, Publish, QoS, RetainHandling, Subscribe, SubscriptionRequest,
    Version,
};
use bytes::Bytes;
use common::{Raw, WAIT, connect_packet, start_with};
use tokio::net::TcpSocket;

/// Cycles when `BROKK_SOAK_CYCLES` is not set: about 30 s of the debug build on two busy cores.
const DEFAULT_CYCLES: usize = 10_000;
/// Concurrent client tasks.
const TASKS: usize = 16;
/// Allowed growth of resident memory between the end of the warm-up and the end.
const RSS_GROWTH_LIMIT: u64 = 20 * 1024 * 1024;
/// The broker's maximum session expiry. Each time a persistent session is left waiting its
/// expiry timer task is spawned, and it stays (asleep) until the expiry passes even when the
/// client comes back first; a short maximum lets every one of them end before the task
/// count is compared.
const MAX_SESSION_EXPIRY: Duration = Duration::from_secs(2);

/// Source addresses rotate over 127.0.0.2..=127.0.0.250 so that sockets in TIME_WAIT never
/// exhaust one address's ephemeral ports.
static SOURCE: AtomicUsize = AtomicUsize::new(0);

/// A raw client (common's `Raw`) on a socket of its own: a rotating 127.0.0.x source address.
struct Client {
    raw: Raw,
}

impl Client {
    async fn open(addr: SocketAddr, version: Version) -> Client {
        let n = SOURCE.fetch_add(1, Ordering::Relaxed);
        let source = Ipv4Addr::new(127, 0, 0, 2 + (n % 249) as u8);
        let socket = TcpSocket::new_v4().expect("socket");
        // Close with RST: at hundreds of thousands of cycles the TIME_WAIT sockets that the
        // broker's side keeps after its own close would otherwise make new SYNs on reused
        // loopback ports wait for retransmission (a loopback artefact, not a broker limit).
        socket.set_zero_linger().expect("linger");
        socket
            .bind(SocketAddr::from((source, 0)))
            .expect("bind a loopback source address");
        let stream = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let _ = stream.set_nodelay(true);
        Client {
            raw: Raw::from_stream(stream, version),
        }
    }

    async fn send(&mut self, packet: &Packet) {
        self.raw.send_packet(packet).await;
    }

    /// The next packet, `None` once the broker closed the connection.
    async fn recv(&mut self) -> Option<Packet> {
        self.raw.recv().await
    }

    /// Connects and returns the client with its CONNACK.
    async fn connect(
        addr: SocketAddr,
        version: Version,
        id: &str,
        clean: bool,
        expiry: Option<u32>,
    ) -> (Client, ConnAck) {
        let mut client = Client::open(addr, version).await;
        let mut connect = connect_packet(version, id);
        connect.clean_start = clean;
        connect.session_expiry_interval = expiry;
        client.send(&Packet::Connect(Box::new(connect))).await;
        match client.recv().await {
            Some(Packet::ConnAck(connack)) => {
                assert_eq!(connack.reason_code, 0, "{id}: CONNACK refused");
                (client, connack)
            }
            other => panic!("{id}: expected CONNACK, got {other:?}"),
        }
    }

    /// Reads until `want` matches, acknowledging any PUBLISH on the way; returns what
    /// matched. Panics on a close.
    async fn until(&mut self, what: &str, mut want: impl FnMut(&Packet) -> bool) -> Packet {
        loop {
            let Some(packet) = self.recv().await else {
                panic!("closed while waiting for {what}");
            };
            if want(&packet) {
                return packet;
            }
            self.ack(&packet).await;
        }
    }

    async fn ack(&mut self, packet: &Packet) {
        match packet {
            Packet::Publish(p) if p.qos == QoS::AtLeastOnce => {
                self.send(&Packet::PubAck(Ack::success(p.packet_id))).await;
            }
            Packet::Publish(p) if p.qos == QoS::ExactlyOnce => {
                self.send(&Packet::PubRec(Ack::success(p.packet_id))).await;
            }
            Packet::PubRel(a) => self.send(&Packet::PubComp(Ack::success(a.packet_id))).await,
            _ => {}
        }
    }

    /// Subscribes to `filter` at QoS 1, publishes one QoS 1 message to `topic` (matched by
    /// the filter) and waits for both the PUBACK and the message's delivery.
    async fn round(&mut self, filter: &str, topic: &str) {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscriptionRequest {
                filter: filter.to_string(),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
            }],
            subscription_identifier: None,
            user_properties: Vec::new(),
        }))
        .await;
        self.until("SUBACK", |p| matches!(p, Packet::SubAck(_)))
            .await;
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.to_string(),
            packet_id: 2,
            payload: Bytes::from_static(b"soak"),
            topic_alias: None,
            subscription_identifiers: Vec::new(),
            properties: Default::default(),
        }))
        .await;
        let (mut acked, mut delivered) = (false, false);
        while !(acked && delivered) {
            let packet = self
                .until("PUBACK and delivery", |p| {
                    matches!(p, Packet::PubAck(a) if a.packet_id == 2)
                        || matches!(p, Packet::Publish(m) if m.topic == topic)
                })
                .await;
            match &packet {
                Packet::PubAck(_) => acked = true,
                _ => delivered = true,
            }
            self.ack(&packet).await;
        }
    }

    /// Sends DISCONNECT (with a v5 Session Expiry Interval when given) and waits for the
    /// broker to close.
    async fn disconnect(mut self, expiry: Option<u32>) {
        let mut disconnect = Disconnect::with_reason(0, None);
        disconnect.session_expiry_interval = expiry;
        self.send(&Packet::Disconnect(disconnect)).await;
        self.closed().await;
    }

    /// Reads (acknowledging nothing) until the broker closes the connection.
    async fn closed(&mut self) {
        while self.recv().await.is_some() {}
    }
}

/// One cycle; the kind and version follow from the cycle number, identifiers from the task.
async fn cycle(addr: SocketAddr, task: usize, n: usize) {
    let version = if (n / 4).is_multiple_of(2) {
        Version::V311
    } else {
        Version::V5
    };
    match n % 4 {
        // Clean session: subscribe, publish, receive, disconnect.
        0 => {
            let id = format!("soak-c-{task}");
            let (mut c, _) = Client::connect(addr, version, &id, true, None).await;
            c.round(&format!("soak/c/{task}/#"), &format!("soak/c/{task}/m"))
                .await;
            c.disconnect(None).await;
        }
        // Persistent session. 5.0: Session Expiry 300 s at CONNECT, 0 at DISCONNECT, so the
        // session ends with the connection. 3.1.1: Clean Session 0, so the session (and its
        // subscription) persists and the next such cycle of this task resumes it; the
        // cleanup phase ends them.
        1 => {
            let (id, expiry, end) = match version {
                Version::V5 => (format!("soak-p5-{task}"), Some(300), Some(0)),
                Version::V311 => (format!("soak-p3-{task}"), None, None),
            };
            let (mut c, _) = Client::connect(addr, version, &id, false, expiry).await;
            c.round(&format!("soak/p/{task}/#"), &format!("soak/p/{task}/m"))
                .await;
            c.disconnect(end).await;
        }
        // Takeover: the same identifier from two clients alternately.
        2 => {
            let id = format!("soak-t-{task}");
            let (mut first, _) = Client::connect(addr, version, &id, true, None).await;
            let (mut second, _) = Client::connect(addr, version, &id, true, None).await;
            first.closed().await;
            let (third, _) = Client::connect(addr, version, &id, true, None).await;
            second.closed().await;
            third.disconnect(None).await;
        }
        // Connect, one QoS 0 publish nobody receives, disconnect.
        _ => {
            let id = format!("soak-q-{task}");
            let (mut c, _) = Client::connect(addr, version, &id, true, None).await;
            c.send(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: format!("soak/none/{task}"),
                packet_id: 0,
                payload: Bytes::from_static(b"x"),
                topic_alias: None,
                subscription_identifiers: Vec::new(),
                properties: Default::default(),
            }))
            .await;
            c.disconnect(None).await;
        }
    }
}

/// Runs cycles `from..to` on `TASKS` concurrent tasks.
async fn run_cycles(addr: SocketAddr, from: usize, to: usize) {
    let next = Arc::new(AtomicUsize::new(from));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= to {
                    return;
                }
                cycle(addr, task, n).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("cycle task");
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| {
            let kib = line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?;
            kib.trim().parse::<u64>().ok()
        })
        .expect("VmRSS")
        * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Polls `check` until it holds or `WAIT` passes; returns whether it held.
async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_disconnect_and_takeover_cycles_leak_nothing() {
    let cycles: usize = std::env::var("BROKK_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CYCLES);
    let broker = start_with(|config| config.session.max_session_expiry = MAX_SESSION_EXPIRY).await;
    let addr = broker.addr;
    let runtime = tokio::runtime::Handle::current().metrics();
    let tasks_before = runtime.num_alive_tasks();

    let warmup = (cycles / 10).clamp(cycles.min(2_000), 20_000);
    let started = Instant::now();
    run_cycles(addr, 0, warmup).await;
    let rss_warm = rss_bytes();
    run_cycles(addr, warmup, cycles).await;
    // End the 3.1.1 persistent sessions: a clean-session connect discards each.
    for task in 0..TASKS {
        let id = format!("soak-p3-{task}");
        let (c, _) = Client::connect(addr, Version::V311, &id, true, None).await;
        c.disconnect(None).await;
    }
    let elapsed = started.elapsed();

    let server = broker.server().broker();
    let connections_closed =
        eventually(async || broker.metric("brokk_connections").await == 0.0).await;
    let sessions_gone = eventually(async || server.sessions.counts() == (0, 0)).await;
    // The last expiry timers end MAX_SESSION_EXPIRY after the last persistent disconnect.
    tokio::time::sleep(MAX_SESSION_EXPIRY).await;
    let tasks_back = eventually(async || runtime.num_alive_tasks() <= tasks_before).await;
    let rss_end = rss_bytes();
    let connects = broker
        .metric("brokk_connects_total{protocol=\"5.0\",result=\"accepted\"}")
        .await
        + broker
            .metric("brokk_connects_total{protocol=\"3.1.1\",result=\"accepted\"}")
            .await;
    eprintln!(
        "soak: {cycles} cycles ({connects} accepted connections) in {:.1} s ({:.0} cycles/s); \
         RSS after warm-up ({warmup} cycles) {:.1} MiB, at the end {:.1} MiB; \
         sessions {:?}, subscriptions {}, alive tasks {} (before {tasks_before})",
        elapsed.as_secs_f64(),
        cycles as f64 / elapsed.as_secs_f64(),
        mib(rss_warm),
        mib(rss_end),
        server.sessions.counts(),
        server.sessions.subscription_count(),
        runtime.num_alive_tasks(),
    );

    assert!(
        connections_closed,
        "brokk_connections is {}, not 0",
        broker.metric("brokk_connections").await
    );
    assert!(
        sessions_gone,
        "sessions left (connected, disconnected): {:?}",
        server.sessions.counts()
    );
    assert_eq!(
        server.sessions.subscription_count(),
        0,
        "subscriptions left"
    );
    assert!(
        tasks_back,
        "{} tasks alive, {tasks_before} before the cycles",
        runtime.num_alive_tasks()
    );
    assert!(
        rss_end <= rss_warm + RSS_GROWTH_LIMIT,
        "resident memory grew from {:.1} MiB to {:.1} MiB",
        mib(rss_warm),
        mib(rss_end)
    );
    broker.stop().await;
}
