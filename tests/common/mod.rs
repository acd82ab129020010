//! Test helpers: a broker started in-process on 127.0.0.1:0 (never a fixed port), a raw
//! MQTT client for hostile and exact-byte tests, and a metrics scraper.
#![allow(dead_code)]

pub mod admin;
pub mod process;
pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use brokk::config::{Config, ListenerConfig};
use brokk::protocol::{self, Connect, Packet, Version};
use brokk::server::Server;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestBroker {
    server: Option<Server>,
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

pub fn test_config() -> Config {
    let mut config = Config::default();
    config.listeners.clear();
    config.listeners.insert(
        "tcp".to_string(),
        ListenerConfig {
            bind: "127.0.0.1:0".parse().expect("addr"),
            tls: None,
            tcp_keepalive: None,
            write_timeout: None,
            websocket: None,
            proxy_protocol: false,
        },
    );
    config.metrics.bind = "127.0.0.1:0".parse().expect("addr");
    config.admin.bind = "127.0.0.1:0".parse().expect("addr");
    // In memory unless a test asks for the disk store (and then in a temporary directory).
    config.storage.backend = brokk::config::StorageBackend::Memory;
    // Tests that leave messages unacknowledged need not wait the production drain.
    config.limits.shutdown_drain = std::time::Duration::from_secs(1);
    config
}

pub async fn start() -> TestBroker {
    start_with(|_| {}).await
}

pub async fn start_with(change: impl FnOnce(&mut Config)) -> TestBroker {
    let mut config = test_config();
    change(&mut config);
    let server = Server::start(config).await.expect("broker starts");
    let addr = server.local_addr("tcp").expect("tcp listener");
    let metrics = server.metrics_addr();
    let admin = server.admin_addr();
    TestBroker {
        server: Some(server),
        addr,
        metrics,
        admin,
    }
}

impl TestBroker {
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// Shuts the broker down and asserts it finished.
    pub async fn stop(mut self) {
        let server = self.server.take().expect("running");
        tokio::time::timeout(Duration::from_secs(15), server.shutdown())
            .await
            .expect("broker stops in time");
    }

    pub async fn metrics_text(&self) -> String {
        let addr = self.metrics.expect("metrics enabled");
        let mut stream = TcpStream::connect(addr).await.expect("metrics connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut body = String::new();
        tokio::time::timeout(WAIT, stream.read_to_string(&mut body))
            .await
            .expect("metrics in time")
            .expect("read");
        body
    }

    /// The value of one metric line, e.g. `metric(&text, "brokk_connections_closed_total{reason=\"aborted\"}")`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics_text().await, series)
    }

    /// Waits until `series` reaches at least `value` (metrics are updated after the socket
    /// closes, so a test awaits the count rather than sleeping).
    pub async fn wait_metric(&self, series: &str, value: f64) -> f64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = self.metric(series).await;
            if now >= value || tokio::time::Instant::now() > deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        // A failing test still must not leave the broker serving: signal it to stop.
        if let Some(server) = self.server.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(server.shutdown());
        }
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.trim().parse::<f64>().ok()
        })
        .unwrap_or(0.0)
}

/// A raw MQTT client: exact bytes out, decoded packets in.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    pub version: Version,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Raw::from_stream(stream, Version::V5)
    }

    /// A raw client on a socket the test opened itself (a chosen source address, say).
    pub fn from_stream(stream: TcpStream, version: Version) -> Raw {
        Raw {
            stream,
            buf: BytesMut::new(),
            version,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        // The broker may close first; a failed write shows up as a closed connection later.
        let _ = self.stream.write_all(bytes).await;
    }

    pub async fn send_packet(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        protocol::encode(packet, self.version, &mut out).expect("encode");
        self.send(&out).await;
    }

    /// The next packet, or `None` once the broker closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("a packet or a close in time")
    }

    /// The next packet within `limit` (`None` once the broker closed the connection).
    pub async fn recv_within(&mut self, limit: Duration) -> Option<Packet> {
        tokio::time::timeout(limit, self.recv_inner())
            .await
            .unwrap_or_else(|_| panic!("no packet and no close within {limit:?}"))
    }

    async fn recv_inner(&mut self) -> Option<Packet> {
        loop {
            match protocol::decode(&mut self.buf, Some(self.version), usize::MAX >> 4) {
                Ok(Some(packet)) => return Some(packet),
                Ok(None) => {}
                Err(error) => panic!("broker sent a bad packet: {error}"),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until the broker closes; returns what it sent before.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(packet) = self.recv().await {
            packets.push(packet);
        }
        packets
    }

    /// Sends CONNECT and returns the CONNACK.
    pub async fn connect(addr: SocketAddr, connect: Connect) -> (Raw, brokk::protocol::ConnAck) {
        let mut raw = Raw::open(addr).await;
        raw.version = connect.version;
        raw.send_packet(&Packet::Connect(Box::new(connect))).await;
        match raw.recv().await {
            Some(Packet::ConnAck(connack)) => (raw, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

pub fn connect_packet(version: Version, client_id: &str) -> Connect {
    Connect {
        keep_alive: 60,
        ..Connect::new(version, client_id)
    }
}

/// A plain PUBLISH packet (no properties, no DUP, no RETAIN).
pub fn publish(topic: &str, qos: brokk::protocol::QoS, packet_id: u16, payload: &[u8]) -> Packet {
    Packet::Publish(brokk::protocol::Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.to_string(),
        packet_id,
        payload: bytes::Bytes::copy_from_slice(payload),
        topic_alias: None,
        subscription_identifiers: Vec::new(),
        properties: Default::default(),
    })
}

pub const MIB: u64 = 1024 * 1024;

pub fn series(reason: &str) -> String {
    format!("brokk_connections_closed_total{{reason=\"{reason}\"}}")
}

/// Waits until the close counter for `reason` reaches `n` and asserts it is exactly `n`.
pub async fn closed_exactly(broker: &TestBroker, reason: &str, n: f64) {
    assert_eq!(broker.wait_metric(&series(reason), n).await, n, "{reason}");
}

pub async fn closed_at_least(broker: &TestBroker, reason: &str, n: f64) {
    let got = broker.wait_metric(&series(reason), n).await;
    assert!(got >= n, "{reason}: {got} < {n}");
}

/// Resident memory of this process (the broker runs in it).
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

pub fn assert_growth_below(before: u64, limit: u64, what: &str) {
    let after = rss();
    let growth = after.saturating_sub(before);
    // The figure itself, for `cargo nextest run --no-capture` (the issue notes quote them).
    eprintln!("{what}: resident memory grew by {} KiB", growth / 1024);
    assert!(
        growth < limit,
        "{what}: resident memory grew by {} MiB (limit {} MiB)",
        growth / MIB,
        limit / MIB
    );
}
