//! Time-based behaviour on tokio's paused clock: connections run over in-memory duplex streams
//! (`connection::serve` takes any `AsyncRead + AsyncWrite`), so when every task waits the clock
//! jumps to the next timer. Keep-alive, `connection_ttl`, `connect_timeout`, `write_timeout`,
//! will delay and session expiry are checked to the millisecond in microseconds of real time.

use std::sync::Arc;
use std::time::Duration;

use brokk::auth::{Authenticator, PeerIdentity};
use brokk::broker::Broker;
use brokk::config::Config;
use brokk::connection::{ConnectionContext, serve};
use brokk::protocol::{
    self, Connect, Packet, QoS, RetainHandling, Subscribe, SubscriptionRequest, Version, Will,
};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio::time::Instant;

struct Harness {
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    _stop: watch::Sender<bool>,
}

fn harness(change: impl FnOnce(&mut Config)) -> Harness {
    let mut config = Config::default();
    change(&mut config);
    let auth = Authenticator::from_config(&config.auth).expect("auth");
    let (stop, shutdown) = watch::channel(false);
    Harness {
        broker: Arc::new(Broker::new(config, auth)),
        shutdown,
        _stop: stop,
    }
}

/// A client on one end of a duplex stream, the broker's connection task on the other.
struct Client {
    stream: DuplexStream,
    buf: BytesMut,
    version: Version,
}

impl Harness {
    fn open(&self, buffer: usize) -> Client {
        let (client, server) = tokio::io::duplex(buffer);
        let ctx = ConnectionContext {
            broker: self.broker.clone(),
            peer: "127.0.0.1:1".parse().expect("addr"),
            listener: Arc::from("test"),
            over_limit: false,
            shutdown: self.shutdown.clone(),
            identity: PeerIdentity::None,
        };
        tokio::spawn(serve(ctx, server));
        Client {
            stream: client,
            buf: BytesMut::new(),
            version: Version::V5,
        }
    }

    async fn connect(&self, connect: Connect) -> Client {
        let mut client = self.open(64 * 1024);
        client.version = connect.version;
        client.send(&Packet::Connect(Box::new(connect))).await;
        match client.recv().await {
            Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason_code, 0),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        client
    }
}

impl Client {
    async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        protocol::encode(packet, self.version, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    /// The next packet, or `None` when the broker closed the stream.
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) =
                protocol::decode(&mut self.buf, Some(self.version), usize::MAX >> 4).expect("valid")
            {
                return Some(packet);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until the broker closes; the last packet it sent.
    async fn closed(&mut self) -> Option<Packet> {
        let mut last = None;
        while let Some(packet) = self.recv().await {
            last = Some(packet);
        }
        last
    }
}

fn v5(id: &str, keep_alive: u16) -> Connect {
    Connect {
        keep_alive,
        ..Connect::new(Version::V5, id)
    }
}

fn disconnect_code(packet: Option<Packet>) -> Option<u8> {
    match packet {
        Some(Packet::Disconnect(d)) => Some(d.reason_code),
        _ => None,
    }
}

/// MQTT-3.1.2-24: no packet within 1.5 x keep-alive closes the connection (0x8D). Only inbound
/// packets move the deadline; messages the broker sends to the client do not.
#[tokio::test(start_paused = true)]
async fn keep_alive_closes_at_one_and_a_half_times_after_the_last_packet() {
    let h = harness(|_| {});
    let mut c = h.connect(v5("ka", 10)).await;
    c.send(&subscribe("t")).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
    tokio::time::sleep(Duration::from_millis(14_900)).await;
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp), "alive at 14.9 s");
    let last = Instant::now();
    // Outbound traffic in between does not count as the client being alive.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut publisher = h.connect(v5("pub", 0)).await;
    publisher.send(&publish("t")).await;
    assert!(matches!(c.recv().await, Some(Packet::Publish(_))));
    assert_eq!(disconnect_code(c.closed().await), Some(0x8D));
    assert_eq!(last.elapsed(), Duration::from_secs(15));
}

fn subscribe(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscriptionRequest {
            filter: filter.to_string(),
            qos: QoS::AtMostOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }],
        subscription_identifier: None,
        user_properties: Vec::new(),
    })
}

fn publish(topic: &str) -> Packet {
    Packet::Publish(protocol::Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.to_string(),
        packet_id: 0,
        payload: Bytes::from_static(b"m"),
        topic_alias: None,
        subscription_identifiers: Vec::new(),
        properties: Default::default(),
    })
}

/// `connection_ttl` closes a silent connection whatever keep-alive it asked for (0 here).
#[tokio::test(start_paused = true)]
async fn connection_ttl_closes_silent_clients_without_keep_alive() {
    let h = harness(|c| c.limits.connection_ttl = Duration::from_secs(5));
    let started = Instant::now();
    let mut c = h.connect(v5("ttl", 0)).await;
    assert_eq!(disconnect_code(c.closed().await), Some(0x8D));
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

/// A socket that sends no CONNECT is closed after `connect_timeout`.
#[tokio::test(start_paused = true)]
async fn connect_timeout_closes_a_silent_socket() {
    let h = harness(|c| c.limits.connect_timeout = Duration::from_secs(2));
    let started = Instant::now();
    let mut c = h.open(1024);
    assert_eq!(c.closed().await, None);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

/// A client that stops reading is no longer read from once its unread output passes the
/// high-water mark, and is closed when that lasts `write_timeout` (no DISCONNECT is attempted:
/// it would not be read either).
#[tokio::test(start_paused = true)]
async fn write_timeout_closes_a_client_that_stops_reading() {
    let h = harness(|c| c.limits.write_timeout = Duration::from_secs(3));
    let mut c = h.connect(v5("mute", 0)).await;
    // Pipe of 16 KiB: the broker's answers back up quickly.
    let flood: Vec<u8> = [0xC0u8, 0x00].repeat(32 * 1024);
    let mut sent = 0;
    let started = Instant::now();
    while let Ok(Ok(())) =
        tokio::time::timeout(Duration::from_secs(60), c.stream.write_all(&flood)).await
    {
        sent += flood.len();
        if sent > 64 * 1024 * 1024 {
            panic!("the broker kept reading");
        }
    }
    // The broker stopped reading, then closed the stream: the write failed.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

fn will(delay: u32) -> Will {
    Will {
        topic: "status/dev".to_string(),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: false,
        delay_interval: delay,
        properties: Default::default(),
    }
}

async fn watcher(h: &Harness) -> Client {
    let mut w = h.connect(v5("watcher", 0)).await;
    w.send(&subscribe("status/#")).await;
    assert!(matches!(w.recv().await, Some(Packet::SubAck(_))));
    w
}

/// v5 §3.1.3.2.2: a will with a delay is published when the delay passes, and the waiting
/// session ends at its expiry; both measured from the close.
#[tokio::test(start_paused = true)]
async fn will_delay_then_session_expiry() {
    let h = harness(|_| {});
    let mut w = watcher(&h).await;
    let device = Connect {
        clean_start: false,
        session_expiry_interval: Some(10),
        will: Some(will(4)),
        ..v5("dev", 0)
    };
    let c = h.connect(device).await;
    drop(c);
    let closed = Instant::now();
    match w.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(p.payload, Bytes::from_static(b"offline")),
        other => panic!("expected the will, got {other:?}"),
    }
    assert_eq!(closed.elapsed(), Duration::from_secs(4));
    assert_eq!(h.broker.sessions.counts(), (1, 1));
    tokio::time::sleep_until(closed + Duration::from_millis(9_999)).await;
    assert_eq!(
        h.broker.sessions.counts(),
        (1, 1),
        "still waiting at 9.999 s"
    );
    tokio::time::sleep_until(closed + Duration::from_secs(10)).await;
    tokio::task::yield_now().await;
    assert_eq!(h.broker.sessions.counts(), (1, 0), "expired at 10 s");
}

/// A client back within the will delay cancels the will (MQTT-3.1.3-9), with Clean Start 0
/// (the session resumes) or 1 (it is replaced): it is back either way (MQTT-3.1.2-8).
#[tokio::test(start_paused = true)]
async fn returning_within_the_will_delay_cancels_the_will() {
    let h = harness(|_| {});
    let mut w = watcher(&h).await;
    for clean_start in [false, true] {
        let device = Connect {
            clean_start: false,
            session_expiry_interval: Some(60),
            will: Some(will(5)),
            ..v5("dev", 0)
        };
        drop(h.connect(device).await);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let back = Connect {
            clean_start,
            session_expiry_interval: Some(60),
            ..v5("dev", 0)
        };
        let mut again = h.connect(back).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        w.send(&Packet::PingReq).await;
        assert_eq!(
            w.recv().await,
            Some(Packet::PingResp),
            "no will (clean start {clean_start})"
        );
        again
            .send(&Packet::Disconnect(protocol::Disconnect::with_reason(
                0, None,
            )))
            .await;
        again.closed().await;
    }
}
