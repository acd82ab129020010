//! The durable store against the binary: what brokk acknowledged survives `kill -9`, retained
//! messages and cleared ones stay as they were, stored deadlines keep their wall-clock time,
//! damage is found and said (`lost_messages`), and `backend = "memory"` really keeps nothing.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brokk::protocol::{
    Ack, Connect, Packet, QoS, RetainHandling, Subscribe, SubscriptionRequest, Version, Will,
};
use bytes::Bytes;
use common::*;

/// A brokk process on a store directory of its own.
struct Brokk {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

fn config_with(dir: &Path, backend: &str, limits: &str) -> PathBuf {
    let path = dir.join("broker.toml");
    std::fs::write(
        &path,
        format!(
            "[listeners.tcp]\nbind = \"127.0.0.1:0\"\n\n[metrics]\nenabled = false\n\n[admin]\nenabled = false\n\n\
             [storage]\nbackend = \"{backend}\"\npath = \"{}\"\nsync = \"always\"\n\n\
             [limits]\nshutdown_drain = \"300ms\"\n{limits}",
            dir.join("store").display()
        ),
    )
    .expect("config");
    path
}

impl Brokk {
    fn start(dir: &Path, backend: &str) -> Brokk {
        Brokk::start_with(dir, backend, "")
    }

    fn start_with(dir: &Path, backend: &str, limits: &str) -> Brokk {
        let config = config_with(dir, backend, limits);
        let mut child = Command::new(env!("CARGO_BIN_EXE_brokk"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("brokk starts");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // Logs may go to either stream: read both.
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let (tx, lines) = (tx.clone(), lines.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().expect("log").push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let addr = loop {
            let line = rx.recv_timeout(WAIT).expect("brokk logs its listener");
            if line.contains("listening") && line.contains("listener=tcp") {
                let addr = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .expect("addr");
                break addr.parse::<SocketAddr>().expect("socket address");
            }
        };
        Brokk {
            child,
            addr,
            dir: dir.to_path_buf(),
            lines,
        }
    }

    /// `kill -9`: nothing is flushed, nothing is said.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert_eq!(exit.code(), Some(0));
    }

    fn log(&self) -> String {
        self.lines.lock().expect("log").join("\n")
    }
}

impl Drop for Brokk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

fn persistent(id: &str) -> Connect {
    Connect {
        clean_start: false,
        session_expiry_interval: Some(3600),
        ..connect_packet(Version::V5, id)
    }
}

async fn subscribe(raw: &mut Raw, filter: &str, qos: QoS) {
    raw.send_packet(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscriptionRequest {
            filter: filter.to_string(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }],
        subscription_identifier: None,
        user_properties: Vec::new(),
    }))
    .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
}

async fn disconnect(mut raw: Raw) {
    raw.send_packet(&Packet::Disconnect(
        brokk::protocol::Disconnect::with_reason(0, None),
    ))
    .await;
    raw.until_closed().await;
}

/// Publishes `n` messages at `qos` over `topics` topics and waits for every acknowledgement
/// (QoS 2: PUBREC, then PUBREL/PUBCOMP), at most 32 unacknowledged at a time (the broker's
/// Receive Maximum is 64). Payload `"{qos}:{topic}:{i}"`.
async fn publish_acknowledged(raw: &mut Raw, qos: QoS, topics: usize, n: usize, first_id: u16) {
    let (mut sent, mut acked) = (0, 0);
    while acked < n {
        while sent < n && sent - acked < 32 {
            let topic = format!("d/{}", sent % topics);
            let payload = format!("{}:{}:{sent}", qos as u8, sent % topics);
            raw.send_packet(&publish(
                &topic,
                qos,
                first_id + sent as u16,
                payload.as_bytes(),
            ))
            .await;
            sent += 1;
        }
        match raw.recv().await {
            Some(Packet::PubAck(_)) => acked += 1,
            Some(Packet::PubRec(ack)) => {
                raw.send_packet(&Packet::PubRel(Ack::success(ack.packet_id)))
                    .await;
            }
            Some(Packet::PubComp(_)) => acked += 1,
            other => panic!("expected acknowledgements, got {other:?}"),
        }
    }
}

/// Receives (and acknowledges) until `want` distinct payloads arrived and the stream is quiet;
/// returns how many times each payload came, in the order first seen per topic.
async fn receive_all(
    raw: &mut Raw,
    want: usize,
) -> (HashMap<String, usize>, BTreeMap<String, Vec<String>>) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while seen.len() < want {
        match raw.recv().await {
            Some(Packet::Publish(p)) => {
                let payload = String::from_utf8(p.payload.to_vec()).expect("utf-8");
                let count = seen.entry(payload.clone()).or_insert(0);
                *count += 1;
                if *count == 1 {
                    order.entry(p.topic.clone()).or_default().push(payload);
                }
                match p.qos {
                    QoS::AtLeastOnce => {
                        raw.send_packet(&Packet::PubAck(Ack::success(p.packet_id)))
                            .await
                    }
                    QoS::ExactlyOnce => {
                        raw.send_packet(&Packet::PubRec(Ack::success(p.packet_id)))
                            .await
                    }
                    QoS::AtMostOnce => {}
                }
            }
            Some(Packet::PubRel(ack)) => {
                raw.send_packet(&Packet::PubComp(Ack::success(ack.packet_id)))
                    .await
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("closed after {} of {want}", seen.len()),
        }
    }
    (seen, order)
}

/// Every acknowledged QoS 1 and QoS 2 message reaches an offline persistent subscriber and a
/// connected one after `kill -9` and a restart: QoS 2 exactly once, order per topic kept.
#[tokio::test]
async fn acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().expect("dir");
    let brokk = Brokk::start(dir.path(), "disk");
    let (mut offline, ack) = Raw::connect(brokk.addr, persistent("offline")).await;
    assert!(!ack.session_present);
    subscribe(&mut offline, "d/#", QoS::ExactlyOnce).await;
    disconnect(offline).await;
    let (mut online, _) = Raw::connect(brokk.addr, persistent("online")).await;
    subscribe(&mut online, "d/#", QoS::ExactlyOnce).await;
    let (mut publisher, _) = Raw::connect(brokk.addr, connect_packet(Version::V5, "pub")).await;
    publish_acknowledged(&mut publisher, QoS::AtLeastOnce, 4, 150, 1).await;
    publish_acknowledged(&mut publisher, QoS::ExactlyOnce, 4, 150, 1000).await;
    brokk.kill();

    let brokk = Brokk::start(dir.path(), "disk");
    assert!(brokk.log().contains("store recovered"), "{}", brokk.log());
    for id in ["offline", "online"] {
        let (mut raw, ack) = Raw::connect(brokk.addr, persistent(id)).await;
        assert!(ack.session_present, "{id}: the session survived");
        let (seen, order) =
            tokio::time::timeout(Duration::from_secs(30), receive_all(&mut raw, 300))
                .await
                .expect("everything in time");
        for (payload, count) in &seen {
            if payload.starts_with("2:") {
                assert_eq!(*count, 1, "{id}: QoS 2 {payload} exactly once");
            }
        }
        for (topic, payloads) in order {
            for qos in ["1:", "2:"] {
                let numbers: Vec<usize> = payloads
                    .iter()
                    .filter(|p| p.starts_with(qos))
                    .map(|p| {
                        p.rsplit(':')
                            .next()
                            .and_then(|n| n.parse().ok())
                            .expect("n")
                    })
                    .collect();
                let mut sorted = numbers.clone();
                sorted.sort_unstable();
                assert_eq!(numbers, sorted, "{id}: order on {topic} at QoS {qos}");
            }
        }
        disconnect(raw).await;
    }
    brokk.stop();
}

/// `kill -9` in the middle of a stream: every message acknowledged before the kill arrives
/// after the restart (group commit never acknowledges a message before its batch is on disk).
#[tokio::test]
async fn kill_9_mid_stream_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("dir");
    let roomy =
        "max_queue_depth_disconnected = 10000000\nmax_queue_bytes_disconnected = 10000000000\n";
    let brokk = Brokk::start_with(dir.path(), "disk", roomy);
    let (mut sub, _) = Raw::connect(brokk.addr, persistent("sub")).await;
    subscribe(&mut sub, "s/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let mut publishers = Vec::new();
    for p in 0..4u16 {
        let (raw, _) =
            Raw::connect(brokk.addr, connect_packet(Version::V5, &format!("p{p}"))).await;
        publishers.push(raw);
    }
    // Four publishers stream QoS 1 with 16 in flight each; each records what was acknowledged.
    let mut tasks = Vec::new();
    for (p, mut raw) in publishers.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut in_flight = std::collections::VecDeque::new();
            for i in 0..u16::MAX {
                let id = i % 60_000 + 1;
                raw.send_packet(&publish(
                    &format!("s/{p}"),
                    QoS::AtLeastOnce,
                    id,
                    format!("{p}:{i}").as_bytes(),
                ))
                .await;
                in_flight.push_back(format!("{p}:{i}"));
                while in_flight.len() >= 16 {
                    match tokio::time::timeout(Duration::from_secs(5), raw.recv()).await {
                        Ok(Some(Packet::PubAck(_))) => acked.extend(in_flight.pop_front()),
                        _ => return acked,
                    }
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    brokk.kill();
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.expect("publisher"));
    }
    assert!(
        acked.len() > 100,
        "only {} acknowledged before the kill",
        acked.len()
    );
    println!("{} messages acknowledged before kill -9", acked.len());
    let brokk = Brokk::start_with(dir.path(), "disk", roomy);
    let (mut sub, ack) = Raw::connect(brokk.addr, persistent("sub")).await;
    assert!(ack.session_present);
    let mut missing: std::collections::HashSet<String> = acked.into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !missing.is_empty() && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), sub.recv()).await {
            Ok(Some(Packet::Publish(p))) => {
                missing.remove(&String::from_utf8(p.payload.to_vec()).expect("utf-8"));
                sub.send_packet(&Packet::PubAck(Ack::success(p.packet_id)))
                    .await;
            }
            other => panic!(
                "{} acknowledged messages missing, then {other:?}",
                missing.len()
            ),
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost",
        missing.len()
    );
    brokk.stop();
}

/// Retained messages survive a restart; a cleared one stays cleared.
#[tokio::test]
async fn retained_messages_survive_and_cleared_ones_stay_cleared() {
    let dir = tempfile::tempdir().expect("dir");
    let brokk = Brokk::start(dir.path(), "disk");
    let (mut p, _) = Raw::connect(brokk.addr, connect_packet(Version::V5, "p")).await;
    for (topic, payload) in [
        ("r/kept", &b"kept"[..]),
        ("r/cleared", b"soon gone"),
        ("r/cleared", b""),
    ] {
        let mut packet = publish(topic, QoS::AtLeastOnce, 1, payload);
        if let Packet::Publish(p) = &mut packet {
            p.retain = true;
        }
        p.send_packet(&packet).await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    brokk.kill();
    let brokk = Brokk::start(dir.path(), "disk");
    let (mut s, _) = Raw::connect(brokk.addr, connect_packet(Version::V5, "s")).await;
    subscribe(&mut s, "r/#", QoS::AtMostOnce).await;
    match s.recv().await {
        Some(Packet::Publish(p)) => {
            assert_eq!((p.topic.as_str(), &p.payload[..]), ("r/kept", &b"kept"[..]));
            assert!(p.retain);
        }
        other => panic!("expected the retained message, got {other:?}"),
    }
    s.send(&[0xC0, 0x00]).await;
    assert_eq!(
        s.recv().await,
        Some(Packet::PingResp),
        "nothing else is retained"
    );
    brokk.stop();
}

/// A delayed will and a session's expiry keep their wall-clock deadlines across a restart.
#[tokio::test]
async fn delayed_wills_and_expiry_keep_their_deadlines_across_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let brokk = Brokk::start(dir.path(), "disk");
    let device = Connect {
        clean_start: false,
        session_expiry_interval: Some(6),
        will: Some(Will {
            topic: "status/dev".to_string(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            delay_interval: 3,
            properties: Default::default(),
        }),
        ..connect_packet(Version::V5, "dev")
    };
    let (raw, _) = Raw::connect(brokk.addr, device).await;
    // The connection is lost (no DISCONNECT): the will waits 3 s, the session 6 s.
    drop(raw);
    let lost_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    brokk.kill();
    let brokk = Brokk::start(dir.path(), "disk");
    let (mut watcher, _) = Raw::connect(brokk.addr, connect_packet(Version::V5, "w")).await;
    subscribe(&mut watcher, "status/#", QoS::AtLeastOnce).await;
    match tokio::time::timeout(Duration::from_secs(10), watcher.recv()).await {
        Ok(Some(Packet::Publish(p))) => assert_eq!(&p.payload[..], b"offline"),
        other => panic!("expected the will, got {other:?}"),
    }
    let fired = lost_at.elapsed();
    assert!(
        fired >= Duration::from_millis(2_500) && fired < Duration::from_millis(4_500),
        "the will fired {fired:?} after the connection was lost, not 3 s"
    );
    // The session expires 6 s after the loss, not 6 s after the restart.
    tokio::time::sleep_until((lost_at + Duration::from_millis(6_500)).into()).await;
    let (_raw, ack) = Raw::connect(brokk.addr, persistent("dev")).await;
    assert!(!ack.session_present, "expired on its wall-clock deadline");
    brokk.stop();
}

/// Damage to one session's stored queue: brokk starts, that session ends with
/// `lost_messages` (its client sees Session Present 0), the others resume.
#[tokio::test]
async fn a_damaged_record_ends_its_session_and_only_it() {
    let dir = tempfile::tempdir().expect("dir");
    let brokk = Brokk::start(dir.path(), "disk");
    for id in ["damaged", "intact"] {
        let (mut raw, _) = Raw::connect(brokk.addr, persistent(id)).await;
        subscribe(&mut raw, &format!("{id}/#"), QoS::AtLeastOnce).await;
        disconnect(raw).await;
    }
    let (mut p, _) = Raw::connect(brokk.addr, connect_packet(Version::V5, "p")).await;
    for (i, id) in ["damaged", "intact"].iter().enumerate() {
        p.send_packet(&publish(
            &format!("{id}/x"),
            QoS::AtLeastOnce,
            i as u16 + 1,
            b"m",
        ))
        .await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    brokk.stop();
    damage_first_queue_entry(&dir.path().join("store"), "damaged");

    let brokk = Brokk::start(dir.path(), "disk");
    let (_raw, ack) = Raw::connect(brokk.addr, persistent("damaged")).await;
    assert!(!ack.session_present, "never a silent resume over a loss");
    let (mut intact, ack) = Raw::connect(brokk.addr, persistent("intact")).await;
    assert!(ack.session_present);
    assert!(matches!(intact.recv().await, Some(Packet::Publish(p)) if p.topic == "intact/x"));
    let log = brokk.log();
    assert!(
        log.contains("lost_messages") && log.contains("damaged"),
        "{log}"
    );
    brokk.stop();
}

/// Overwrites the value of `client_id`'s first queue entry with bytes that fail their checksum
/// (the store is closed; fjall is opened directly, as a damaged disk would leave it).
fn damage_first_queue_entry(store: &Path, client_id: &str) {
    let db = fjall::Database::builder(store.join("queues"))
        .open()
        .expect("open queues");
    let queue = db
        .keyspace("queue", fjall::KeyspaceCreateOptions::default)
        .expect("queue keyspace");
    let mut prefix = (client_id.len() as u16).to_be_bytes().to_vec();
    prefix.extend_from_slice(client_id.as_bytes());
    let key = queue
        .prefix(&prefix)
        .next()
        .expect("an entry")
        .into_inner()
        .expect("readable")
        .0;
    queue
        .insert(
            key.to_vec(),
            b"\x01\x03garbage that fails its checksum".to_vec(),
        )
        .expect("damage");
    db.persist(fjall::PersistMode::SyncAll).expect("persist");
}

/// A store database that cannot be opened at all: brokk moves it aside, starts, and every
/// session it held ends with `lost_messages`.
#[tokio::test]
async fn an_unreadable_store_does_not_stop_brokk() {
    let dir = tempfile::tempdir().expect("dir");
    let brokk = Brokk::start(dir.path(), "disk");
    let (mut raw, _) = Raw::connect(brokk.addr, persistent("gone")).await;
    subscribe(&mut raw, "g/#", QoS::AtLeastOnce).await;
    disconnect(raw).await;
    brokk.stop();
    std::fs::write(dir.path().join("store/queues/version"), b"not a version").expect("damage");
    let brokk = Brokk::start(dir.path(), "disk");
    let (_raw, ack) = Raw::connect(brokk.addr, persistent("gone")).await;
    assert!(!ack.session_present);
    assert!(brokk.log().contains("moved aside"), "{}", brokk.log());
    brokk.stop();
}

/// `backend = "memory"` keeps nothing across a restart (the option is real).
#[tokio::test]
async fn the_memory_backend_keeps_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let brokk = Brokk::start(dir.path(), "memory");
    let (mut raw, _) = Raw::connect(brokk.addr, persistent("m")).await;
    subscribe(&mut raw, "m/#", QoS::AtLeastOnce).await;
    disconnect(raw).await;
    brokk.stop();
    let brokk = Brokk::start(dir.path(), "memory");
    let (_raw, ack) = Raw::connect(brokk.addr, persistent("m")).await;
    assert!(!ack.session_present);
    assert!(!dir.path().join("store").exists(), "nothing was written");
    brokk.stop();
}
