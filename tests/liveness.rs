//! Server-side liveness against peers that really vanish: the client runs in a network
//! namespace the test creates, joined to the broker by a veth pair; the test then drops every
//! packet inside the namespace, as a dead NAT or a pulled cable would, without a FIN or RST.
//! brokk (the binary) must find the silent peer by itself with TCP keepalive, or the peer that
//! stopped acknowledging output with the user timeout, close it with `client_unresponsive`
//! naming the timer, and publish its will.
//!
//! Needs root (CAP_NET_ADMIN), `ip` (iproute2), `iptables` and `python3`; without them each
//! test says why and passes as skipped.

#![allow(dead_code)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use brokk::protocol::{Packet, QoS, RetainHandling, Subscribe, SubscriptionRequest, Version};
use common::process::BrokkProcess;
use common::*;

/// A network namespace with one end of a veth pair; the other end stays in the test's
/// namespace. Removed (with the pair) on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// `None` (and a line saying why) where namespaces cannot be made.
    fn create(tag: &str) -> Option<Netns> {
        let id = std::process::id() % 50_000;
        // A /30 of 10.201.0.0/16 per test process: tests run side by side.
        let subnet = (id % 16_000) * 4;
        let octets = |host: u32| {
            let n = (10 << 24) | (201 << 16) | subnet | host;
            Ipv4Addr::from(n)
        };
        let ns = Netns {
            name: format!("brokk-{tag}-{id}"),
            host_if: format!("bk{tag}{id}"),
            host_ip: octets(1),
            peer_ip: octets(2),
        };
        let peer_if = format!("bp{tag}{id}");
        let setup = || -> Result<(), String> {
            for tool in ["iptables", "python3"] {
                let found = Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .map_err(|e| e.to_string())?;
                if !found.success() {
                    return Err(format!("{tool} is not installed"));
                }
            }
            ip(&["netns", "add", &ns.name])?;
            ip(&[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &peer_if,
                "netns",
                &ns.name,
            ])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/30", ns.host_ip),
                "dev",
                &ns.host_if,
            ])?;
            ip(&["link", "set", &ns.host_if, "up"])?;
            let cidr = format!("{}/30", ns.peer_ip);
            ip(&["-n", &ns.name, "addr", "add", &cidr, "dev", &peer_if])?;
            ip(&["-n", &ns.name, "link", "set", &peer_if, "up"])?;
            ip(&["-n", &ns.name, "link", "set", "lo", "up"])
        };
        match setup() {
            Ok(()) => Some(ns),
            Err(why) => {
                eprintln!("SKIPPED: cannot create a network namespace for this test: {why}");
                None
            }
        }
    }

    /// A command run inside the namespace.
    fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// From now on the namespace neither answers nor sends anything.
    fn go_silent(&self) {
        for chain in ["INPUT", "OUTPUT"] {
            let status = self
                .exec("iptables")
                .args(["-A", chain, "-j", "DROP"])
                .status()
                .expect("iptables");
            assert!(status.success(), "iptables -A {chain} -j DROP");
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A 3.1.1 client with keep-alive 0 and a will on `will/<id>`, optionally subscribed to
/// `data/<id>`: it prints "ready" and then says nothing.
const CLIENT: &str = r#"
import socket, struct, sys, time
host, port, cid, subscribe = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
def s(b): return struct.pack("!H", len(b)) + b
def packet(first, body):
    n, out = len(body), b""
    while True:
        d, n = n % 128, n // 128
        out += bytes([d | (0x80 if n else 0)])
        if not n: break
    return bytes([first]) + out + body
body = s(b"MQTT") + bytes([4, 0x06]) + struct.pack("!H", 0) + s(cid.encode())
body += s(b"will/" + cid.encode()) + s(b"gone")
c = socket.create_connection((host, port))
c.sendall(packet(0x10, body))
assert c.recv(4)[:2] == b"\x20\x02"
if subscribe:
    c.sendall(packet(0x82, struct.pack("!H", 1) + s(b"data/" + cid.encode()) + b"\x00"))
    assert c.recv(5)[0] == 0x90
print("ready", flush=True)
time.sleep(600)
"#;

struct Client(Child);

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client(ns: &Netns, broker: SocketAddr, id: &str, subscribe: bool) -> Client {
    let mut child = ns
        .exec("python3")
        .args([
            "-c",
            CLIENT,
            &broker.ip().to_string(),
            &broker.port().to_string(),
            id,
        ])
        .arg(if subscribe { "1" } else { "0" })
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 in the namespace");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("read");
    assert_eq!(line.trim(), "ready", "the client did not connect");
    Client(child)
}

fn broker(ns: &Netns, dir: &tempfile::TempDir, listener_keys: &str) -> (BrokkProcess, SocketAddr) {
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[listeners.tcp]\nbind = \"{}:0\"\n{listener_keys}\n\
             [metrics]\nbind = \"127.0.0.1:0\"\n",
            ns.host_ip
        ),
    )
    .expect("write config");
    let mut brokk = BrokkProcess::start(
        ["--config", config.to_str().expect("path")],
        &[("RUST_LOG", "info")],
    );
    let addr = brokk.listener("tcp");
    (brokk, addr)
}

/// A v5 watcher subscribed to `filter`, connected from the test's own namespace.
async fn watcher(addr: SocketAddr, filter: &str) -> Raw {
    let (mut raw, connack) = Raw::connect(addr, connect_packet(Version::V5, "watcher")).await;
    assert_eq!(connack.reason_code, 0);
    raw.send_packet(&Packet::Subscribe(Subscribe {
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
    }))
    .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    raw
}

/// The next PUBLISH on `raw` within `limit`: its topic and payload.
async fn will_within(raw: &mut Raw, limit: Duration) -> (String, Vec<u8>) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match raw.recv_within(left).await {
            Some(Packet::Publish(p)) => return (p.topic, p.payload.to_vec()),
            Some(_) => {}
            None => panic!("the watcher was closed"),
        }
    }
}

#[tokio::test]
async fn keepalive_finds_a_silent_peer_and_publishes_its_will() {
    let Some(ns) = Netns::create("ka") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // Keepalive alone: the user timeout off, so only the probes can find the peer.
    let (mut brokk, addr) = broker(&ns, &dir, "tcp_keepalive = \"6s\"\nwrite_timeout = \"0s\"");
    let mut watch = watcher(addr, "will/#").await;
    let _client = client(&ns, addr, "silent", false);
    ns.go_silent();
    let silent_at = Instant::now();
    // 6 s of idle time, then 3 probes 1 s apart: found within 9 s (1.5 x), plus slack.
    let (topic, payload) = will_within(&mut watch, Duration::from_secs(13)).await;
    let took = silent_at.elapsed();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("will/silent", &b"gone"[..])
    );
    assert!(
        took >= Duration::from_secs(6),
        "closed before the idle time: {took:?}"
    );
    let line = brokk.wait_line(|l| l.contains("connection closed") && l.contains("silent"));
    assert!(
        line.contains("client_unresponsive") && line.contains("TCP keepalive"),
        "{line}"
    );
    eprintln!("keepalive: the silent peer was closed {took:?} after it went silent");
    assert!(brokk.stop().success());
}

#[tokio::test]
async fn unacknowledged_output_closes_after_the_write_timeout() {
    let Some(ns) = Netns::create("wt") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // The probes off: only the user timeout can end it.
    let (mut brokk, addr) = broker(&ns, &dir, "tcp_keepalive = \"0s\"\nwrite_timeout = \"3s\"");
    let mut watch = watcher(addr, "will/#").await;
    let _client = client(&ns, addr, "deaf", true);
    ns.go_silent();
    let silent_at = Instant::now();
    let (mut publisher, _) = Raw::connect(addr, connect_packet(Version::V5, "pub")).await;
    publisher
        .send_packet(&publish("data/deaf", QoS::AtMostOnce, 0, b"unheard"))
        .await;
    // 3 s of unacknowledged output, checked at the retransmission timer: within 10 s.
    let (topic, _) = will_within(&mut watch, Duration::from_secs(12)).await;
    let took = silent_at.elapsed();
    assert_eq!(topic, "will/deaf");
    assert!(
        took >= Duration::from_secs(3),
        "closed before the timeout: {took:?}"
    );
    let line = brokk.wait_line(|l| l.contains("connection closed") && l.contains("deaf"));
    assert!(
        line.contains("client_unresponsive") && line.contains("write_timeout"),
        "{line}"
    );
    eprintln!("write_timeout: the deaf peer was closed {took:?} after it went silent");
    assert!(brokk.stop().success());
}
