//! MQTT over WebSocket (ws and wss) and the PROXY protocol, from raw clients: a tungstenite
//! client where frames are sent whole, bytes on a TCP socket where a frame must be cut short
//! or lie about its size (MQTT 5.0 and 3.1.1 section 6; RFC 6455).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use brokk::config::{ListenerConfig, TlsConfig, WebSocketConfig};
use brokk::protocol::{self, Packet, QoS, RetainHandling, Subscribe, SubscriptionRequest, Version};
use bytes::{Bytes, BytesMut};
use common::admin::{get_json, http_full};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A WebSocket MQTT client: bytes out in the frames the test chooses, packets in.
struct Ws {
    ws: WebSocketStream<Box<dyn Io>>,
    buf: BytesMut,
    version: Version,
    /// The subprotocol the server answered with.
    protocol: Option<String>,
    /// The close frame the server sent, once it did.
    close: Option<(CloseCode, String)>,
}

impl Ws {
    async fn open(addr: SocketAddr, path: &str) -> Ws {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Ws::over(Box::new(stream), addr, path, Some("mqtt"))
            .await
            .expect("upgrade")
    }

    async fn over(
        stream: Box<dyn Io>,
        addr: SocketAddr,
        path: &str,
        protocol: Option<&str>,
    ) -> Result<Ws, tungstenite::Error> {
        let mut request = format!("ws://{addr}{path}")
            .into_client_request()
            .expect("request");
        if let Some(protocol) = protocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", protocol.parse().expect("header"));
        }
        let (ws, response) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async_with_config(request, stream, None),
        )
        .await
        .expect("upgrade in time")?;
        let protocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().expect("ascii").to_string());
        Ok(Ws {
            ws,
            buf: BytesMut::new(),
            version: Version::V5,
            protocol,
            close: None,
        })
    }

    async fn send(&mut self, message: Message) {
        // The broker may close first; that shows up as a close later.
        let _ = self.ws.send(message).await;
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.send(Message::Binary(Bytes::copy_from_slice(bytes)))
            .await;
    }

    fn encode(&self, packet: &Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        protocol::encode(packet, self.version, &mut out).expect("encode");
        out.to_vec()
    }

    async fn send_packet(&mut self, packet: &Packet) {
        let bytes = self.encode(packet);
        self.send_bytes(&bytes).await;
    }

    /// The next packet, or `None` once the broker closed.
    async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("a packet or a close in time")
    }

    async fn recv_inner(&mut self) -> Option<Packet> {
        loop {
            match protocol::decode(&mut self.buf, Some(self.version), 1 << 24) {
                Ok(Some(packet)) => return Some(packet),
                Ok(None) => {}
                Err(error) => panic!("broker sent a bad packet: {error}"),
            }
            match self.ws.next().await {
                Some(Ok(Message::Binary(data))) => self.buf.extend_from_slice(&data),
                Some(Ok(Message::Close(frame))) => {
                    if let Some(frame) = frame {
                        self.close = Some((frame.code, frame.reason.to_string()));
                    }
                }
                Some(Ok(Message::Text(text))) => panic!("broker sent text: {text}"),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    async fn connect(addr: SocketAddr, version: Version, client_id: &str) -> Ws {
        let mut ws = Ws::open(addr, "/mqtt").await;
        ws.version = version;
        ws.send_packet(&Packet::Connect(Box::new(connect_packet(
            version, client_id,
        ))))
        .await;
        match ws.recv().await {
            Some(Packet::ConnAck(c)) => assert_eq!(c.reason_code, 0, "CONNACK"),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        ws
    }

    async fn until_closed(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(packet) = self.recv().await {
            packets.push(packet);
        }
        packets
    }
}

fn listener(websocket: bool) -> ListenerConfig {
    ListenerConfig {
        websocket: websocket.then(WebSocketConfig::default),
        ..ListenerConfig::new("127.0.0.1:0".parse().expect("addr"))
    }
}

/// A broker with its TCP listener and a WebSocket listener `ws` on /mqtt.
async fn broker_with(change: impl FnOnce(&mut brokk::config::Config)) -> (TestBroker, SocketAddr) {
    let broker = start_with(|c| {
        c.listeners.insert("ws".to_string(), listener(true));
        change(c);
    })
    .await;
    let ws = broker.server().local_addr("ws").expect("ws listener");
    (broker, ws)
}

fn subscribe(filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscriptionRequest {
            filter: filter.to_string(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }],
        subscription_identifier: None,
        user_properties: vec![],
    })
}

/// The close history's latest entry for a connection that never sent CONNECT (no client id),
/// waited for.
async fn last_anonymous_close(broker: &TestBroker, seen: usize) -> serde_json::Value {
    let admin = broker.admin.expect("admin");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = get_json(admin, "/v1/closes?limit=100", None).await;
        let closes = page["closes"].as_array().expect("closes").clone();
        if closes.len() > seen {
            return closes[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new close: {page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn closes(broker: &TestBroker) -> usize {
    let page = get_json(broker.admin.expect("admin"), "/v1/closes?limit=100", None).await;
    page["closes"].as_array().expect("closes").len()
}

/// [MQTT-6.0.0-2] [MQTT-6.0.0-4]: a packet split over several WebSocket messages (and over
/// continuation frames), several packets in one message, the subprotocol echoed; QoS 1 and 2
/// across WebSocket and TCP both ways; pings answered.
#[tokio::test]
async fn packets_span_frames_and_frames_hold_packets() {
    let (broker, addr) = broker_with(|_| {}).await;
    let mut ws = Ws::open(addr, "/mqtt").await;
    assert_eq!(ws.protocol.as_deref(), Some("mqtt"), "subprotocol echoed");

    // CONNECT in three binary messages.
    let connect = ws.encode(&Packet::Connect(Box::new(connect_packet(
        Version::V5,
        "ws-split",
    ))));
    ws.send_bytes(&connect[..1]).await;
    ws.send_bytes(&connect[1..5]).await;
    ws.send_bytes(&connect[5..]).await;
    assert!(matches!(ws.recv().await, Some(Packet::ConnAck(c)) if c.reason_code == 0));

    // SUBSCRIBE and a QoS 1 PUBLISH to it in one message.
    let mut both = ws.encode(&subscribe("ws/#", QoS::AtLeastOnce));
    both.extend(ws.encode(&publish("ws/a", QoS::AtLeastOnce, 7, b"one frame")));
    ws.send_bytes(&both).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(ws.recv().await.expect("packet"));
    }
    assert!(matches!(got[0], Packet::SubAck(_)), "{got:?}");
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::PubAck(a) if a.packet_id == 7)),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::Publish(p) if &p.payload[..] == b"one frame")),
        "{got:?}"
    );

    // A QoS 2 PUBLISH in one fragmented message (a binary frame and two continuations),
    // to a TCP subscriber.
    let (mut tcp, _) = Raw::connect(broker.addr, connect_packet(Version::V311, "tcp-sub")).await;
    tcp.send_packet(&subscribe("ws/#", QoS::ExactlyOnce)).await;
    assert!(matches!(tcp.recv().await, Some(Packet::SubAck(_))));
    let packet = ws.encode(&publish("ws/b", QoS::ExactlyOnce, 8, b"fragmented"));
    let (a, rest) = packet.split_at(2);
    let (b, c) = rest.split_at(5);
    for (part, opcode, fin) in [
        (a, OpCode::Data(Data::Binary), false),
        (b, OpCode::Data(Data::Continue), false),
        (c, OpCode::Data(Data::Continue), true),
    ] {
        let frame = Frame::message(Bytes::copy_from_slice(part), opcode, fin);
        ws.send(Message::Frame(frame)).await;
    }
    let mut pubrec = false;
    for _ in 0..3 {
        match ws.recv().await.expect("packet") {
            Packet::PubRec(r) if r.packet_id == 8 => pubrec = true,
            Packet::Publish(p) => assert_eq!(&p.payload[..], b"fragmented"),
            Packet::PubAck(_) => {}
            other => panic!("unexpected {other:?}"),
        }
        if pubrec {
            break;
        }
    }
    assert!(pubrec, "PUBREC for the fragmented QoS 2 PUBLISH");
    match tcp.recv().await {
        Some(Packet::Publish(p)) => {
            assert_eq!(&p.payload[..], b"fragmented");
            assert_eq!(p.qos, QoS::ExactlyOnce);
        }
        other => panic!("the TCP subscriber got {other:?}"),
    }

    // And back: TCP publishes, the WebSocket subscriber receives.
    tcp.send_packet(&publish("ws/c", QoS::AtLeastOnce, 9, b"from tcp"))
        .await;
    let mut from_tcp = false;
    for _ in 0..4 {
        if let Some(Packet::Publish(p)) = ws.recv().await
            && &p.payload[..] == b"from tcp"
        {
            from_tcp = true;
            break;
        }
    }
    assert!(
        from_tcp,
        "the WebSocket client got the TCP client's message"
    );

    // A ping frame is answered with a pong carrying its payload.
    ws.send(Message::Ping(Bytes::from_static(b"hi"))).await;
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            match ws.ws.next().await {
                Some(Ok(Message::Pong(data))) => return data,
                Some(Ok(_)) => {}
                other => panic!("no pong: {other:?}"),
            }
        }
    })
    .await
    .expect("pong in time");
    assert_eq!(&pong[..], b"hi");

    // The per-listener series count the WebSocket connection under its listener.
    let open = broker
        .metric("brokk_listener_connections{listener=\"ws\"}")
        .await;
    assert!(
        open >= 1.0,
        "brokk_listener_connections{{listener=\"ws\"}} = {open}"
    );
    broker.stop().await;
}

/// [MQTT-6.0.0-1]: a text frame closes the connection, 3.1.1 and 5.0: a v5 client is told
/// 0x81, the close frame says 1003, the close is `invalid_inbound_message` under the
/// listener's label.
#[tokio::test]
async fn a_text_frame_closes_the_connection() {
    let (broker, addr) = broker_with(|_| {}).await;
    for (version, client_id) in [(Version::V5, "texter-5"), (Version::V311, "texter-311")] {
        let mut ws = Ws::connect(addr, version, client_id).await;
        ws.send(Message::Text("hello".into())).await;
        let last = ws.until_closed().await;
        if version == Version::V5 {
            assert!(
                matches!(last.last(), Some(Packet::Disconnect(d)) if d.reason_code == 0x81),
                "{last:?}"
            );
        } else {
            assert!(last.is_empty(), "3.1.1 has no server DISCONNECT: {last:?}");
        }
        let (code, reason) = ws.close.clone().expect("a close frame");
        assert_eq!(code, CloseCode::Unsupported, "{reason}");
        let query = format!("/v1/closes?client_id={client_id}");
        let deadline = tokio::time::Instant::now() + WAIT;
        let close = loop {
            let page = get_json(broker.admin.expect("admin"), &query, None).await;
            if let Some(close) = page["closes"].as_array().and_then(|c| c.first()) {
                break close.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "no close recorded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(close["reason"], "invalid_inbound_message", "{close}");
        let detail = close["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("text frame"), "{close}");
    }
    let series = "brokk_listener_connections_closed_total{listener=\"ws\",reason=\"invalid_inbound_message\"}";
    assert!(broker.wait_metric(series, 2.0).await >= 2.0);
    broker.stop().await;
}

/// Reads raw WebSocket frames until the socket ends; the close frame's code, if one came.
async fn raw_close_code(stream: &mut TcpStream) -> Option<u16> {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut all))
        .await
        .expect("closed in time");
    // Server frames are unmasked; walk them.
    let mut at = 0;
    while at + 2 <= all.len() {
        let opcode = all[at] & 0x0f;
        let mut len = usize::from(all[at + 1] & 0x7f);
        let mut head = 2;
        if len == 126 {
            len = usize::from(u16::from_be_bytes([all[at + 2], all[at + 3]]));
            head = 4;
        } else if len == 127 {
            return None;
        }
        let payload = &all[at + head..(at + head + len).min(all.len())];
        if opcode == 8 && payload.len() >= 2 {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
        at += head + len;
    }
    None
}

/// The upgrade request by hand; returns the socket after the 101 answer.
async fn raw_upgrade(stream: &mut TcpStream) {
    stream
        .write_all(
            b"GET /mqtt HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Protocol: mqtt\r\n\r\n",
        )
        .await
        .expect("send");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("answer in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "closed during the upgrade: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the RFC 6455 example key's accept value: {head}"
    );
}

/// A frame announcing more than `max_packet_size` is refused from its header: the broker
/// closes (1009, `message_too_large`) without waiting for the payload it will never buffer.
#[tokio::test]
async fn an_oversized_frame_is_refused_from_its_header() {
    let (broker, addr) = broker_with(|c| c.limits.max_packet_size = 4096).await;
    let seen = closes(&broker).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    raw_upgrade(&mut stream).await;
    // FIN + binary, masked, 64-bit length 16 MiB, a mask key, and no payload at all.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(16u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    stream.write_all(&frame).await.expect("send");
    assert_eq!(raw_close_code(&mut stream).await, Some(1009));
    let close = last_anonymous_close(&broker, seen).await;
    assert_eq!(close["reason"], "message_too_large", "{close}");
    broker.stop().await;
}

/// Requests that are no WebSocket upgrade get HTTP 4xx answers, and the listener goes on
/// serving.
#[tokio::test]
async fn bad_upgrade_requests_get_4xx_and_the_broker_keeps_serving() {
    let (broker, addr) = broker_with(|_| {}).await;
    let (status, _, body) = http_full(addr, "GET", "/elsewhere", None).await;
    assert_eq!(status, 404, "{body}");
    let (status, head, _) = http_full(addr, "GET", "/mqtt", None).await;
    assert_eq!(status, 426, "no Upgrade header");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    let (status, _, _) = http_full(addr, "POST", "/mqtt", None).await;
    assert_eq!(status, 405);

    let raw = |request: &'static str| async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
            .await
            .expect("answer in time")
            .expect("read");
        String::from_utf8_lossy(&answer).into_owned()
    };
    let upgrade = "GET /mqtt HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\n";
    let bad_key = raw(Box::leak(
        format!("{upgrade}Sec-WebSocket-Key: not-a-key\r\n\r\n").into_boxed_str(),
    ))
    .await;
    assert!(bad_key.starts_with("HTTP/1.1 400"), "{bad_key}");
    let chat = raw(Box::leak(
        format!(
            "{upgrade}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
        )
        .into_boxed_str(),
    ))
    .await;
    assert!(chat.starts_with("HTTP/1.1 400"), "{chat}");
    let garbage = raw("\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");

    // Still serving, and `mqttv3.1` is accepted and echoed too.
    let stream = TcpStream::connect(addr).await.expect("connect");
    let ws = Ws::over(Box::new(stream), addr, "/mqtt", Some("mqttv3.1"))
        .await
        .expect("upgrade");
    assert_eq!(ws.protocol.as_deref(), Some("mqttv3.1"));
    let mut ws = Ws::connect(addr, Version::V311, "after-4xx").await;
    ws.send_packet(&Packet::PingReq).await;
    assert!(matches!(ws.recv().await, Some(Packet::PingResp)));
    broker.stop().await;
}

/// An upgrade that never completes is closed at `connect_timeout` (`client_unresponsive`).
#[tokio::test]
async fn a_slow_upgrade_is_closed_at_connect_timeout() {
    let (broker, addr) =
        broker_with(|c| c.limits.connect_timeout = Duration::from_millis(400)).await;
    let seen = closes(&broker).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = tokio::time::Instant::now();
    stream
        .write_all(b"GET /mqtt HTTP/1.1\r\nHost: slow\r\n")
        .await
        .expect("send");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(read.is_ok_and(|n| n == 0), "closed without an answer");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    let close = last_anonymous_close(&broker, seen).await;
    assert_eq!(close["reason"], "client_unresponsive", "{close}");
    assert!(
        close["detail"]
            .as_str()
            .is_some_and(|d| d.contains("WebSocket")),
        "{close}"
    );
    broker.stop().await;
}

/// A WebSocket client whose socket ends without a close frame is `connection_lost`, as over
/// TCP (not a protocol violation), and its will fires.
#[tokio::test]
async fn a_socket_ending_without_a_close_frame_is_connection_lost() {
    let (broker, addr) = broker_with(|_| {}).await;
    let (mut watcher, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "watcher")).await;
    watcher
        .send_packet(&subscribe("wills/#", QoS::AtMostOnce))
        .await;
    assert!(matches!(watcher.recv().await, Some(Packet::SubAck(_))));
    let mut ws = Ws::open(addr, "/mqtt").await;
    let mut connect = connect_packet(Version::V5, "dropper");
    connect.will = Some(brokk::protocol::Will {
        topic: "wills/dropper".to_string(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
        delay_interval: 0,
    });
    ws.send_packet(&Packet::Connect(Box::new(connect))).await;
    assert!(matches!(ws.recv().await, Some(Packet::ConnAck(c)) if c.reason_code == 0));
    drop(ws);
    match watcher.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"gone"),
        other => panic!("no will: {other:?}"),
    }
    let page = get_json(
        broker.admin.expect("admin"),
        "/v1/closes?client_id=dropper",
        None,
    )
    .await;
    assert_eq!(page["closes"][0]["reason"], "connection_lost", "{page}");
    broker.stop().await;
}

/// A client id connected over WebSocket is taken over by a TCP CONNECT (the WebSocket client
/// gets 0x8E) and back again.
#[tokio::test]
async fn sessions_move_between_websocket_and_tcp() {
    let (broker, addr) = broker_with(|_| {}).await;
    let mut ws = Ws::connect(addr, Version::V5, "mover").await;
    let (mut tcp, connack) = Raw::connect(broker.addr, connect_packet(Version::V5, "mover")).await;
    assert_eq!(connack.reason_code, 0);
    let last = ws.until_closed().await;
    assert!(
        matches!(last.last(), Some(Packet::Disconnect(d)) if d.reason_code == 0x8E),
        "the WebSocket client is told: {last:?}"
    );
    assert_eq!(
        ws.close,
        Some((CloseCode::Normal, "session_taken_over".to_string())),
        "the close frame names the reason"
    );
    let mut ws_again = Ws::connect(addr, Version::V5, "mover").await;
    let last = tcp.until_closed().await;
    assert!(
        matches!(last.last(), Some(Packet::Disconnect(d)) if d.reason_code == 0x8E),
        "the TCP client is told: {last:?}"
    );
    let session = get_json(broker.admin.expect("admin"), "/v1/sessions/mover", None).await;
    assert_eq!(session["listener"], "ws", "{session}");
    // A stopping broker: DISCONNECT 0x8B, then close frame 1001 "server_shutdown".
    let stopping = tokio::spawn(broker.stop());
    let last = ws_again.until_closed().await;
    assert!(
        matches!(last.last(), Some(Packet::Disconnect(d)) if d.reason_code == 0x8B),
        "{last:?}"
    );
    assert_eq!(
        ws_again.close,
        Some((CloseCode::Away, "server_shutdown".to_string()))
    );
    stopping.await.expect("stopped");
}

/// wss: TLS, then the upgrade, then MQTT, with a CA made at test time.
#[tokio::test]
async fn wss_serves_mqtt() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("sign");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("server.pem"), cert.pem()).expect("write");
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).expect("write");
    let broker = start_with(|c| {
        c.listeners.insert(
            "wss".to_string(),
            ListenerConfig {
                tls: Some(TlsConfig {
                    cert: dir.path().join("server.pem"),
                    key: dir.path().join("server.key"),
                    client_ca: None,
                    handshake_timeout: Duration::from_secs(5),
                    identity_as_username: false,
                    crl: None,
                }),
                ..listener(true)
            },
        );
    })
    .await;
    let addr = broker.server().local_addr("wss").expect("wss listener");
    let connector = common::tls::connector(&ca.pem(), None);
    let socket = TcpStream::connect(addr).await.expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector
        .connect(name, socket)
        .await
        .expect("TLS handshake");
    let mut ws = Ws::over(Box::new(tls), addr, "/mqtt", Some("mqtt"))
        .await
        .expect("upgrade over TLS");
    assert_eq!(ws.protocol.as_deref(), Some("mqtt"));
    ws.send_packet(&Packet::Connect(Box::new(connect_packet(
        Version::V5,
        "secure",
    ))))
    .await;
    assert!(matches!(ws.recv().await, Some(Packet::ConnAck(c)) if c.reason_code == 0));
    ws.send_packet(&subscribe("s/#", QoS::AtLeastOnce)).await;
    assert!(matches!(ws.recv().await, Some(Packet::SubAck(_))));
    ws.send_packet(&publish("s/1", QoS::AtLeastOnce, 3, b"over wss"))
        .await;
    let mut delivered = false;
    for _ in 0..2 {
        if let Some(Packet::Publish(p)) = ws.recv().await {
            delivered = &p.payload[..] == b"over wss";
        }
    }
    assert!(delivered, "the message came back over wss");
    // A plain client on the wss port gets no upgrade: TLS comes first.
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET /mqtt HTTP/1.1\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 101"));
    broker.stop().await;
}

/// A PROXY protocol v2 header for TCP over IPv4 from `source`.
fn proxy_v2(source: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(source) = source else {
        panic!("IPv4 only here")
    };
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    out.extend_from_slice(&source.ip().octets());
    out.extend_from_slice(&[127, 0, 0, 1]);
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&1883u16.to_be_bytes());
    out
}

/// `proxy_protocol = true`: the header's source address is the client's peer in the admin API
/// and the close history, over TCP (v1) and WebSocket (v2); a truncated, oversized or missing
/// header closes the connection with `invalid_inbound_message`; without the option the same
/// bytes are an invalid first packet.
#[tokio::test]
async fn proxy_protocol_headers_name_the_peer() {
    let broker = start_with(|c| {
        c.listeners.insert(
            "proxied".to_string(),
            ListenerConfig {
                proxy_protocol: true,
                ..listener(false)
            },
        );
        c.listeners.insert(
            "proxied-ws".to_string(),
            ListenerConfig {
                proxy_protocol: true,
                ..listener(true)
            },
        );
    })
    .await;
    let admin = broker.admin.expect("admin");
    let proxied = broker.server().local_addr("proxied").expect("listener");
    let proxied_ws = broker.server().local_addr("proxied-ws").expect("listener");

    // v1 before MQTT.
    let mut stream = TcpStream::connect(proxied).await.expect("connect");
    stream
        .write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 1883\r\n")
        .await
        .expect("send");
    let mut v1 = Raw::from_stream(stream, Version::V311);
    v1.send_packet(&Packet::Connect(Box::new(connect_packet(
        Version::V311,
        "via-v1",
    ))))
    .await;
    assert!(matches!(v1.recv().await, Some(Packet::ConnAck(c)) if c.reason_code == 0));
    let session = get_json(admin, "/v1/sessions/via-v1", None).await;
    assert_eq!(session["peer"], "192.0.2.7:40000", "{session}");

    // v2 before the WebSocket upgrade.
    let mut stream = TcpStream::connect(proxied_ws).await.expect("connect");
    stream
        .write_all(&proxy_v2("198.51.100.9:1234".parse().expect("addr")))
        .await
        .expect("send");
    let mut ws = Ws::over(Box::new(stream), proxied_ws, "/mqtt", Some("mqtt"))
        .await
        .expect("upgrade after the header");
    ws.send_packet(&Packet::Connect(Box::new(connect_packet(
        Version::V5,
        "via-v2",
    ))))
    .await;
    assert!(matches!(ws.recv().await, Some(Packet::ConnAck(c)) if c.reason_code == 0));
    let session = get_json(admin, "/v1/sessions/via-v2", None).await;
    assert_eq!(session["peer"], "198.51.100.9:1234", "{session}");
    assert_eq!(session["listener"], "proxied-ws", "{session}");
    // ... and in the close history.
    ws.send_packet(&Packet::Disconnect(
        brokk::protocol::Disconnect::with_reason(0, None),
    ))
    .await;
    let _ = ws.until_closed().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = get_json(admin, "/v1/closes?client_id=via-v2", None).await;
        if let Some(close) = page["closes"].as_array().and_then(|c| c.first()) {
            assert_eq!(close["peer"], "198.51.100.9:1234", "{close}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no close recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Bad headers: truncated (the socket ends inside it), oversized, missing.
    let mut oversized = b"PROXY TCP4 ".to_vec();
    oversized.extend(std::iter::repeat_n(b'1', 200));
    let mut huge_v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    huge_v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let connect = {
        let mut out = BytesMut::new();
        protocol::encode(
            &Packet::Connect(Box::new(connect_packet(Version::V311, "no-header"))),
            Version::V311,
            &mut out,
        )
        .expect("encode");
        out.to_vec()
    };
    let cases: [(&[u8], bool, &str); 4] = [
        (b"PROXY TCP4 192.0.2.7 127.0.", true, "truncated"),
        (&oversized, false, "too long"),
        (&huge_v2, false, "too long"),
        (&connect, false, "no PROXY header"),
    ];
    for (bytes, shut, words) in cases {
        let seen = closes(&broker).await;
        let mut stream = TcpStream::connect(proxied).await.expect("connect");
        stream.write_all(bytes).await.expect("send");
        if shut {
            stream.shutdown().await.expect("shutdown");
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
            .await
            .expect("closed in time");
        assert!(rest.is_empty(), "{words}: no answer but the close");
        let close = last_anonymous_close(&broker, seen).await;
        assert_eq!(
            close["reason"], "invalid_inbound_message",
            "{words}: {close}"
        );
        let detail = close["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(words), "{words}: {close}");
    }

    // Without the option, a PROXY header is just an invalid first packet.
    let seen = closes(&broker).await;
    let mut plain = Raw::open(broker.addr).await;
    plain
        .send(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 1883\r\n")
        .await;
    assert!(plain.until_closed().await.is_empty());
    let close = last_anonymous_close(&broker, seen).await;
    assert_eq!(close["reason"], "invalid_inbound_message", "{close}");
    assert!(
        close["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    );
    broker.stop().await;
}
