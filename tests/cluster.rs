//! The cluster (issue 15) end to end: three NATS servers clustered with routes and JetStream,
//! three brokk nodes joined through them, all on 127.0.0.x with free ports and temporary
//! directories, driven by raw MQTT clients. Needs Debian's nats-server (scripts/test installs
//! it); without it the tests fail saying so.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use brokk::protocol::{
    Ack, Connect, Disconnect, Packet, Publish, QoS, RetainHandling, Subscribe, SubscriptionRequest,
    Version,
};
use common::process::BrokkProcess;
use common::{Raw, WAIT, connect_packet};

/// Joining a fresh NATS cluster waits for its JetStream leaders.
const JOIN_WAIT: Duration = Duration::from_secs(40);

fn nats_server() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nats-server is missing: tests/cluster.rs needs Debian's nats-server \
                 (apt-get install nats-server; scripts/test installs it)"
            )
        })
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

struct Nats {
    child: Child,
    url: String,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Node {
    process: BrokkProcess,
    addr: SocketAddr,
    metrics: SocketAddr,
}

struct Cluster {
    nodes: Vec<Node>,
    nats: Vec<Nats>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `backend`: `storage.backend` of the nodes ("memory" or "disk").
    fn start(backend: &str) -> Cluster {
        let bin = nats_server();
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts: Vec<IpAddr> = (1..=3).map(|i| ip(100 + i)).collect();
        let client_ports: Vec<u16> = hosts.iter().map(|h| free_port(*h)).collect();
        let route_ports: Vec<u16> = hosts.iter().map(|h| free_port(*h)).collect();
        let routes: Vec<String> = hosts
            .iter()
            .zip(&route_ports)
            .map(|(h, p)| format!("nats://{h}:{p}"))
            .collect();
        let mut nats = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let store = dir.path().join(format!("nats{i}"));
            let child = Command::new(&bin)
                .args(["--server_name", &format!("nats{i}")])
                .args(["-a", &host.to_string()])
                .args(["-p", &client_ports[i].to_string()])
                .args(["-js", "-sd", &store.display().to_string()])
                .args(["--cluster_name", "brokk-test"])
                .args(["--cluster", &routes[i]])
                .args(["--routes", &routes.join(",")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server starts");
            nats.push(Nats {
                child,
                url: format!("nats://{host}:{}", client_ports[i]),
            });
        }
        // Every NATS server listens before a node tries it.
        let deadline = std::time::Instant::now() + WAIT;
        for (host, port) in hosts.iter().zip(&client_ports) {
            while std::net::TcpStream::connect((*host, *port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "nats-server on {host}:{port} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let urls: Vec<String> = nats.iter().map(|n| format!("{:?}", n.url)).collect();
        let mut nodes = Vec::new();
        for i in 1..=3u8 {
            let host = ip(110 + i);
            let config = dir.path().join(format!("n{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[listeners.tcp]\nbind = \"{host}:0\"\n[metrics]\nbind = \"{host}:0\"\n\
                     [admin]\nenabled = false\n[limits]\nshutdown_drain = \"1s\"\n\
                     [storage]\nbackend = \"{backend}\"\npath = \"n{i}-data\"\nsync = \"never\"\n\
                     [cluster]\nenabled = true\nnode = \"n{i}\"\nnats = [{}]\n",
                    urls.join(", "),
                ),
            )
            .expect("write config");
            let config = config.display().to_string();
            let process = BrokkProcess::start(
                ["--config", config.as_str()],
                &[("BROKK_STORAGE__BACKEND", backend)],
            );
            nodes.push(Node {
                process,
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                metrics: SocketAddr::from(([0, 0, 0, 0], 0)),
            });
        }
        for node in &mut nodes {
            node.process
                .wait_line_within(JOIN_WAIT, |l| l.contains("cluster node joined"));
            node.addr = node.process.listener("tcp");
            let line = node
                .process
                .wait_line(|l| l.contains("metrics at /metrics"));
            node.metrics = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.parse().ok())
                .expect("the metrics address");
        }
        Cluster {
            nodes,
            nats,
            _dir: dir,
        }
    }

    fn addr(&self, node: usize) -> SocketAddr {
        self.nodes[node].addr
    }

    /// The value of one metric series on `node`, once it reaches `at_least` (or WAIT passed).
    async fn metric(&self, node: usize, series: &str, at_least: f64) -> f64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut stream = tokio::net::TcpStream::connect(self.nodes[node].metrics)
                .await
                .expect("metrics");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .expect("request");
            let mut text = String::new();
            stream.read_to_string(&mut text).await.expect("read");
            let value = common::metric_value(&text, series);
            if value >= at_least || tokio::time::Instant::now() > deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, node: usize, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.nodes[node].process.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, node) in self.nodes.iter_mut().enumerate() {
                node.process.drain_lines();
                eprintln!("--- node n{} said:\n{}", i + 1, node.process.log());
            }
        }
    }
}

fn v5(client_id: &str) -> Connect {
    connect_packet(Version::V5, client_id)
}

/// A client whose session outlives its connection (v5, clean start 0, expiry 300 s).
fn persistent(client_id: &str) -> Connect {
    Connect {
        clean_start: false,
        session_expiry_interval: Some(300),
        ..v5(client_id)
    }
}

fn subscribe(packet_id: u16, filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
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

fn publish(topic: &str, qos: QoS, packet_id: u16, payload: &str, retain: bool) -> Packet {
    Packet::Publish(Publish {
        retain,
        ..match common::publish(topic, qos, packet_id, payload.as_bytes()) {
            Packet::Publish(p) => p,
            _ => unreachable!(),
        }
    })
}

async fn subscribed(client: &mut Raw, packet_id: u16, filter: &str, qos: QoS) {
    client.send_packet(&subscribe(packet_id, filter, qos)).await;
    match client.recv().await {
        Some(Packet::SubAck(ack)) => assert_eq!(ack.reason_codes, vec![qos as u8], "{filter}"),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Publishes with the whole QoS handshake.
async fn published(client: &mut Raw, topic: &str, qos: QoS, packet_id: u16, payload: &str) {
    publish_retained(client, topic, qos, packet_id, payload, false).await;
}

async fn publish_retained(
    client: &mut Raw,
    topic: &str,
    qos: QoS,
    packet_id: u16,
    payload: &str,
    retain: bool,
) {
    client
        .send_packet(&publish(topic, qos, packet_id, payload, retain))
        .await;
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => assert!(matches!(client.recv().await, Some(Packet::PubAck(_)))),
        QoS::ExactlyOnce => {
            assert!(matches!(client.recv().await, Some(Packet::PubRec(_))));
            client
                .send_packet(&Packet::PubRel(Ack::success(packet_id)))
                .await;
            assert!(matches!(client.recv().await, Some(Packet::PubComp(_))));
        }
    }
}

/// The next application message, acknowledged as its QoS asks.
async fn received(client: &mut Raw) -> Publish {
    loop {
        match client.recv().await {
            Some(Packet::Publish(p)) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        client
                            .send_packet(&Packet::PubAck(Ack::success(p.packet_id)))
                            .await
                    }
                    QoS::ExactlyOnce => {
                        client
                            .send_packet(&Packet::PubRec(Ack::success(p.packet_id)))
                            .await
                    }
                }
                return p;
            }
            Some(Packet::PubRel(ack)) => {
                client
                    .send_packet(&Packet::PubComp(Ack::success(ack.packet_id)))
                    .await
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

/// Publishes `topic` at QoS 0 from `publisher` until `subscriber` receives it: the
/// subscriber's node has joined the NATS subjects its subscriptions need.
async fn until_routed(publisher: &mut Raw, subscriber: &mut Raw, topic: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        publish_retained(publisher, topic, QoS::AtMostOnce, 0, "probe", false).await;
        let got = tokio::time::timeout(Duration::from_millis(200), subscriber.recv()).await;
        match got {
            Ok(Some(Packet::Publish(p))) if p.topic == topic => break,
            Ok(Some(Packet::Publish(p))) => panic!("unexpected {p:?}"),
            Ok(other) => panic!("expected the probe, got {other:?}"),
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "{topic} never arrived"
            ),
        }
    }
    // Probes still under way arrive before the next publish.
    while let Ok(Some(Packet::Publish(p))) =
        tokio::time::timeout(Duration::from_millis(300), subscriber.recv()).await
    {
        assert_eq!(p.topic, topic);
    }
}

/// PINGREQ answered (a QoS 2 exchange still finishing is completed on the way).
async fn pinged(client: &mut Raw) {
    client.send_packet(&Packet::PingReq).await;
    loop {
        match client.recv().await {
            Some(Packet::PingResp) => return,
            Some(Packet::PubRel(ack)) => {
                client
                    .send_packet(&Packet::PubComp(Ack::success(ack.packet_id)))
                    .await
            }
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
}

fn disconnect_of(packets: &[Packet]) -> Option<&Disconnect> {
    packets.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d),
        _ => None,
    })
}

/// A subscriber on each node to `ROUND/#` at QoS 2 (the one on node 3 also to `ROUND/+` at
/// QoS 1: two of its filters match every message), each reached by a probe through the
/// cluster before it returns.
async fn subscribers(cluster: &Cluster, publisher: &mut Raw, round: &str) -> Vec<Raw> {
    let mut subscribers = Vec::new();
    for node in 0..3 {
        let (mut client, _) =
            Raw::connect(cluster.addr(node), v5(&format!("sub{node}{round}"))).await;
        subscribed(&mut client, 1, &format!("{round}/#"), QoS::ExactlyOnce).await;
        if node == 2 {
            subscribed(&mut client, 2, &format!("{round}/+"), QoS::AtLeastOnce).await;
        }
        subscribed(
            &mut client,
            3,
            &format!("ready/{round}/{node}"),
            QoS::AtMostOnce,
        )
        .await;
        until_routed(publisher, &mut client, &format!("ready/{round}/{node}")).await;
        subscribers.push(client);
    }
    subscribers
}

/// QoS 0/1/2 from node 1 reach every subscriber once each (local and remote; the node with
/// two matching subscriptions still delivers one copy), at min(published, granted) QoS.
async fn exactly_once_everywhere(publisher: &mut Raw, subscribers: &mut [Raw], round: &str) {
    published(
        publisher,
        &format!("{round}/q0"),
        QoS::AtMostOnce,
        0,
        "zero",
    )
    .await;
    published(
        publisher,
        &format!("{round}/q1"),
        QoS::AtLeastOnce,
        11,
        "one",
    )
    .await;
    published(
        publisher,
        &format!("{round}/q2"),
        QoS::ExactlyOnce,
        12,
        "two",
    )
    .await;
    published(
        publisher,
        &format!("{round}/end"),
        QoS::AtLeastOnce,
        13,
        "end",
    )
    .await;
    for (node, client) in subscribers.iter_mut().enumerate() {
        // QoS 0 travels on the topic's subject, QoS 1/2 node to node: across topics the
        // two may arrive in either order.
        let mut got = Vec::new();
        for _ in 0..4 {
            let p = received(client).await;
            got.push((p.topic.clone(), p.qos));
        }
        got.sort();
        pinged(client).await;
        assert_eq!(
            got,
            vec![
                (format!("{round}/end"), QoS::AtLeastOnce),
                (format!("{round}/q0"), QoS::AtMostOnce),
                (format!("{round}/q1"), QoS::AtLeastOnce),
                (format!("{round}/q2"), QoS::ExactlyOnce),
            ],
            "node {node}: each message once"
        );
    }
}

/// A node that cannot reach NATS does not start, and says which key to look at.
#[test]
fn an_unreachable_nats_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port(ip(1));
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[listeners.tcp]\nbind = \"127.0.0.1:0\"\n[metrics]\nenabled = false\n\
             [cluster]\nenabled = true\nnode = \"lonely\"\nnats = [\"nats://127.0.0.1:{port}\"]\n"
        ),
    )
    .expect("write");
    let output = common::process::run(["--config", &config.display().to_string()], &[]);
    assert_eq!(output.status.code(), Some(1));
    let said = common::process::stderr(&output);
    assert!(said.contains("cluster.nats: cannot connect"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_takeover_retained_and_a_lost_nats_server() {
    // The disk store (the default): a waiting session's stored messages move with it.
    let mut cluster = Cluster::start("disk");
    let (mut publisher, _) = Raw::connect(cluster.addr(0), v5("publisher")).await;

    let mut first = subscribers(&cluster, &mut publisher, "a").await;
    exactly_once_everywhere(&mut publisher, &mut first, "a").await;
    let members = cluster.metric(1, "brokk_cluster_members", 3.0).await;
    assert_eq!(members, 3.0, "cluster members seen by node 2");
    assert!(
        cluster
            .metric(1, "brokk_cluster_remote_deliveries_total", 4.0)
            .await
            >= 4.0
    );
    drop(first);
    // Connected before a NATS server dies (at the end).
    let mut second = subscribers(&cluster, &mut publisher, "b").await;

    // A retained message set on node 3 is seen by a subscriber on node 1.
    let (mut setter, _) = Raw::connect(cluster.addr(2), v5("setter")).await;
    publish_retained(&mut setter, "r/x", QoS::AtLeastOnce, 1, "kept", true).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (mut reader, _) = Raw::connect(cluster.addr(0), v5(&format!("reader{attempt}"))).await;
        reader
            .send_packet(&subscribe(1, "r/#", QoS::AtLeastOnce))
            .await;
        assert!(matches!(reader.recv().await, Some(Packet::SubAck(_))));
        match tokio::time::timeout(Duration::from_millis(300), reader.recv()).await {
            Ok(Some(Packet::Publish(p))) => {
                assert!(p.retain);
                assert_eq!(&p.payload[..], b"kept");
                break;
            }
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "retained never seen on node 1"
            ),
        }
    }

    // Cross-node takeover of a connected session: 0x8E for the old client, Session Present
    // for the new one, the subscription kept.
    let (mut old, ack) = Raw::connect(cluster.addr(0), persistent("mover")).await;
    assert!(!ack.session_present);
    subscribed(&mut old, 1, "m/#", QoS::AtLeastOnce).await;
    let (mut new, ack) = Raw::connect(cluster.addr(1), persistent("mover")).await;
    assert!(ack.session_present, "the session came from node 1");
    let closing = old.until_closed().await;
    let d = disconnect_of(&closing).expect("the old client is told");
    assert_eq!(d.reason_code, 0x8E, "session taken over, as on one node");
    subscribed(&mut new, 2, "ready/m", QoS::AtMostOnce).await;
    until_routed(&mut publisher, &mut new, "ready/m").await;
    published(&mut publisher, "m/live", QoS::AtLeastOnce, 21, "live").await;
    assert_eq!(
        received(&mut new).await.topic,
        "m/live",
        "subscription moved"
    );

    // A message queued for the waiting session on node 2 moves with it to node 1.
    new.send_packet(&Packet::Disconnect(Disconnect::with_reason(0, None)))
        .await;
    assert!(new.until_closed().await.is_empty());
    let (mut local, _) = Raw::connect(cluster.addr(1), v5("local-pub")).await;
    published(&mut local, "m/queued", QoS::AtLeastOnce, 1, "waiting").await;
    let (mut back, ack) = Raw::connect(cluster.addr(0), persistent("mover")).await;
    assert!(ack.session_present);
    let p = received(&mut back).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("m/queued", &b"waiting"[..])
    );

    // Simultaneous CONNECTs with one client id on the three nodes leave exactly one.
    let (a, b, c) = tokio::join!(
        Raw::connect(cluster.addr(0), v5("racer")),
        Raw::connect(cluster.addr(1), v5("racer")),
        Raw::connect(cluster.addr(2), v5("racer")),
    );
    let mut racers: Vec<Raw> = [a, b, c]
        .into_iter()
        .filter(|(_, ack)| ack.reason_code == 0)
        .map(|(raw, _)| raw)
        .collect();
    let mut closed = vec![false; racers.len()];
    let deadline = tokio::time::Instant::now() + WAIT;
    while closed.iter().filter(|c| !**c).count() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "more than one racer stays connected"
        );
        for (i, racer) in racers.iter_mut().enumerate() {
            if closed[i] {
                continue;
            }
            if let Ok(None | Some(Packet::Disconnect(_))) =
                tokio::time::timeout(Duration::from_millis(50), racer.recv()).await
            {
                closed[i] = true;
            }
        }
    }
    let survivor = closed.iter().position(|c| !c).expect("one racer stays");
    let racer = &mut racers[survivor];
    racer.send_packet(&Packet::PingReq).await;
    assert_eq!(
        racer.recv().await,
        Some(Packet::PingResp),
        "the survivor is served"
    );

    // One NATS server of three dies: connected clients stay connected and their messages
    // still reach every node once (the nodes that used it reconnect to another).
    let mut dead = cluster.nats.remove(2);
    dead.child.kill().expect("kill nats-server");
    dead.child.wait().expect("reaped");
    // A node whose NATS server died reconnects to another within moments; what is published
    // in that moment travels at most once (core NATS): the round starts once every node
    // hears again.
    for (node, client) in second.iter_mut().enumerate() {
        until_routed(&mut publisher, client, &format!("ready/b/{node}")).await;
    }
    exactly_once_everywhere(&mut publisher, &mut second, "b").await;
    for client in &mut second {
        pinged(client).await;
    }
    publisher.send_packet(&Packet::PingReq).await;
    assert_eq!(publisher.recv().await, Some(Packet::PingResp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_fails_over_and_a_stopping_node_drains() {
    let mut cluster = Cluster::start("memory");

    // Node 1 is paused; the client reconnects on node 2 (taken without node 1's answer).
    // Resumed, node 1 finds its copy stale and closes it with failed_over (0x9C).
    let (mut stale, _) = Raw::connect(cluster.addr(0), persistent("paused")).await;
    cluster.signal(0, "-STOP");
    let (_fresh, ack) = Raw::connect(cluster.addr(1), persistent("paused")).await;
    assert_eq!(ack.reason_code, 0);
    cluster.signal(0, "-CONT");
    let closing = stale.until_closed().await;
    let d = disconnect_of(&closing).expect("the stale client is told");
    assert_eq!(d.reason_code, 0x9C);
    assert_eq!(d.reason_string.as_deref(), Some("failed_over"));
    cluster.nodes[0]
        .process
        .wait_line(|l| l.contains("connection closed") && l.contains("failed_over"));

    // SIGTERM on node 3: its v5 client gets 0x9C with a live node as Server Reference, and
    // resumes its session there.
    let (mut drained, _) = Raw::connect(cluster.addr(2), persistent("drained")).await;
    subscribed(&mut drained, 1, "d/#", QoS::AtLeastOnce).await;
    cluster.signal(2, "-TERM");
    let closing = drained.until_closed().await;
    let d = disconnect_of(&closing).expect("the client is told");
    assert_eq!(d.reason_code, 0x9C, "use another server");
    let reference: SocketAddr = d
        .server_reference
        .as_deref()
        .expect("a Server Reference")
        .parse()
        .expect("an address");
    assert!(
        reference == cluster.addr(0) || reference == cluster.addr(1),
        "{reference} is a live node"
    );
    let (mut resumed, ack) = Raw::connect(reference, persistent("drained")).await;
    assert!(ack.session_present, "the session waited on {reference}");
    let other = if reference == cluster.addr(0) { 1 } else { 0 };
    let (mut publisher, _) = Raw::connect(cluster.addr(other), v5("late-pub")).await;
    subscribed(&mut resumed, 2, "ready/d", QoS::AtMostOnce).await;
    until_routed(&mut publisher, &mut resumed, "ready/d").await;
    published(&mut publisher, "d/after", QoS::AtLeastOnce, 1, "x").await;
    assert_eq!(received(&mut resumed).await.topic, "d/after");
    let node = cluster.nodes.remove(2);
    drop(node);
}

/// Leaves a persistent session waiting (clean DISCONNECT, the session outlives it).
async fn left(mut client: Raw) {
    client
        .send_packet(&Packet::Disconnect(Disconnect::with_reason(0, None)))
        .await;
    client.until_closed().await;
}

/// Every message acknowledged to a publisher, on the node that held the waiting session or on
/// another, survives `kill -9` of that node: replicated on the NATS cluster before the PUBACK
/// (the nodes keep nothing on disk here). A client back before the dead node's heartbeat aged out
/// takes its session from the cluster's copy (the dead node cannot answer); a live node
/// adopts the other one once the node is taken for dead, so that messages published after
/// the kill are queued for it as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_acknowledged_message() {
    let mut cluster = Cluster::start("memory");
    for id in ["early", "late"] {
        let (mut client, _) = Raw::connect(cluster.addr(0), persistent(id)).await;
        subscribed(&mut client, 1, "k/#", QoS::ExactlyOnce).await;
        left(client).await;
    }
    let (mut publisher, _) = Raw::connect(cluster.addr(0), v5("k-pub")).await;
    for i in 1..=20u16 {
        let qos = if i % 2 == 0 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        published(&mut publisher, &format!("k/{i}"), qos, i, "acked").await;
    }
    // From another node: node 1 stored them before node 2 acknowledged them.
    let (mut remote, _) = Raw::connect(cluster.addr(1), v5("k-remote")).await;
    for i in 21..=30u16 {
        published(&mut remote, &format!("k/{i}"), QoS::AtLeastOnce, i, "acked").await;
    }
    cluster.signal(0, "-KILL");

    let expect: Vec<String> = (1..=30).map(|i| format!("k/{i}")).collect();
    let (mut early, ack) = Raw::connect(cluster.addr(1), persistent("early")).await;
    assert_eq!(ack.reason_code, 0);
    assert!(
        ack.session_present,
        "the session comes from the cluster's copy"
    );
    let mut got = Vec::new();
    for _ in 0..30 {
        let p = received(&mut early).await;
        assert_eq!(&p.payload[..], b"acked");
        got.push(p.topic.clone());
    }
    assert_eq!(got, expect, "every acknowledged message, in order, once");

    // Node 2 or 3 adopts "late" once node 1 is taken for dead; what is published after
    // that is queued for it too.
    let adopted = async {
        let deadline = tokio::time::Instant::now() + JOIN_WAIT;
        loop {
            let n2 = cluster
                .metric(1, "brokk_cluster_handovers_total", 0.0)
                .await;
            let n3 = cluster
                .metric(2, "brokk_cluster_handovers_total", 0.0)
                .await;
            // "early" counted one on node 2.
            if n2 + n3 >= 2.0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no node adopted the dead node's session"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    adopted.await;
    let (mut late_pub, _) = Raw::connect(cluster.addr(1), v5("k-pub2")).await;
    let (mut probe, _) = Raw::connect(cluster.addr(2), v5("k-probe")).await;
    subscribed(&mut probe, 1, "k/#", QoS::AtMostOnce).await;
    until_routed(&mut late_pub, &mut probe, "k/probe").await;
    published(&mut late_pub, "k/after", QoS::AtLeastOnce, 1, "acked").await;
    let (mut late, ack) = Raw::connect(cluster.addr(2), persistent("late")).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    loop {
        let p = received(&mut late).await;
        if p.topic == "k/probe" {
            continue;
        }
        got.push(p.topic.clone());
        if p.topic == "k/after" {
            break;
        }
    }
    let mut want = expect.clone();
    want.push("k/after".to_string());
    assert_eq!(
        got, want,
        "the acknowledged messages, then the one published after"
    );
    pinged(&mut late).await;
    let node = cluster.nodes.remove(0);
    drop(node);
}
