//! Target `connection`: the connection state machine fed with arbitrary packet sequences,
//! in-process over `tokio::io::duplex` (no sockets), on a current-thread runtime with paused
//! time so the broker's timeouts (connect timeout, keep-alive, drain) fire as soon as
//! everything is idle.
//!
//! Input layout:
//!
//! ```text
//! byte 0   flags: bit 0  client A speaks 5.0 (else 3.1.1)
//!                 bit 1  client B speaks 5.0
//!                 bit 2  two clients sharing the broker (A and B)
//!                 bit 3  the harness sends a valid CONNECT for each client first
//!                        (else the input must carry its own CONNECT)
//!                 bit 4  B connects with A's client identifier (a takeover)
//!                 bit 5  persistent sessions (clean start 0, 5.0 session expiry 30 s)
//!                 bit 6  clients close their side (EOF) before the broker shuts down
//!                 bit 7  the first CONNECT carries a user name (the spawn_blocking path)
//! then     chunks: [control] [length] [length bytes]
//!                 control bit 0: the chunk goes to client B (when there are two)
//!                 control bit 1: let the broker run (10 ms of paused time) after writing
//! ```
//!
//! Checked: no panic anywhere (libFuzzer aborts on any panic, spawned tasks included), every
//! connection task ends after shutdown within the drain bound, everything the broker writes
//! to a client decodes as that client's protocol version, and no session is left connected
//! once every connection task has ended.

use std::sync::Arc;
use std::time::Duration;

use brokk::auth::Authenticator;
use brokk::broker::Broker;
use brokk::config::Config;
use brokk::connection::{ConnectionContext, serve};
use brokk::protocol::{self, Connect, Packet, Version};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long (paused time) a connection task may take to end after shutdown is signalled.
/// The broker's own bounds are the drain deadline plus the close-write timeout.
const FINISH_BOUND: Duration = Duration::from_secs(60);

/// The broker configuration the target runs with: small limits so queues fill, packets are
/// refused as too large and timeouts are short.
pub fn config() -> Config {
    let mut config = Config::default();
    config.listeners.clear();
    config.metrics.enabled = false;
    config.limits.max_packet_size = 4096;
    config.limits.connect_timeout = Duration::from_secs(2);
    config.limits.receive_maximum = 4;
    config.limits.max_inflight = 4;
    config.limits.max_queue_depth = 8;
    config.limits.max_queue_depth_disconnected = 8;
    config.limits.shutdown_drain = Duration::from_secs(1);
    config.session.max_session_expiry = Duration::from_secs(60);
    config
}

/// The CONNECT the harness sends for a client when flag bit 3 is set.
pub fn connect_packet(version: Version, client_id: &str, persistent: bool) -> Connect {
    Connect {
        clean_start: !persistent,
        keep_alive: 30,
        session_expiry_interval: (persistent && version == Version::V5).then_some(30),
        ..Connect::new(version, client_id)
    }
}

/// Splits the chunk section of an input into `(control, bytes)` pairs; a truncated last
/// chunk keeps what is there.
pub fn chunks(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let [control, len, rest @ ..] = data {
        let len = usize::from(*len).min(rest.len());
        out.push((*control, &rest[..len]));
        data = &rest[len..];
    }
    out
}

/// Builds an input from its parts (the seed generator's inverse of [`chunks`]).
pub fn input(flags: u8, chunks: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![flags];
    for (control, bytes) in chunks {
        for piece in bytes.chunks(255) {
            out.push(*control);
            out.push(piece.len() as u8);
            out.extend_from_slice(piece);
        }
    }
    out
}

struct Client {
    writer: tokio::io::WriteHalf<DuplexStream>,
    reader: JoinHandle<usize>,
    server: JoinHandle<()>,
}

pub fn connection_target(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(run(flags, rest));
}

async fn run(flags: u8, rest: &[u8]) {
    let config = config();
    let auth = Authenticator::from_config(&config.auth).expect("authenticator");
    let broker = Arc::new(Broker::new(config, auth));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let two = flags & 0b100 != 0;
    let harness_connects = flags & 0b1000 != 0;
    let persistent = flags & 0b10_0000 != 0;
    let mut clients = Vec::new();
    for index in 0..if two { 2 } else { 1 } {
        let version = if flags & (1 << index) != 0 {
            Version::V5
        } else {
            Version::V311
        };
        let id = if index == 1 && flags & 0b1_0000 == 0 {
            "fuzz-b"
        } else {
            "fuzz-a"
        };
        let (client, server_side) = tokio::io::duplex(64 * 1024);
        let ctx = ConnectionContext {
            broker: broker.clone(),
            peer: "127.0.0.1:1".parse().expect("peer address"),
            listener: std::sync::Arc::from("fuzz"),
            over_limit: false,
            shutdown: shutdown_rx.clone(),
            identity: brokk::auth::PeerIdentity::None,
        };
        let server = tokio::spawn(serve(ctx, server_side));
        let (mut read_half, mut writer) = tokio::io::split(client);
        // Only when the harness wrote the CONNECT is the stream's version known.
        let known = harness_connects.then_some(version);
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let mut packets = 0;
            loop {
                if let Some(version) = known {
                    loop {
                        match protocol::decode(&mut buf, Some(version), usize::MAX >> 4) {
                            Ok(Some(_)) => packets += 1,
                            Ok(None) => break,
                            Err(error) => panic!("the broker sent a bad packet: {error}"),
                        }
                    }
                } else {
                    buf.clear();
                }
                match read_half.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return packets,
                    Ok(_) => {}
                }
            }
        });
        if harness_connects {
            let mut connect = connect_packet(version, id, persistent);
            if index == 0 && flags & 0x80 != 0 {
                connect.username = Some("user".into());
            }
            let mut out = BytesMut::new();
            protocol::encode(&Packet::Connect(Box::new(connect)), version, &mut out)
                .expect("encode CONNECT");
            let _ = writer.write_all(&out).await;
            // Let the CONNECT be handled (and a takeover happen) in a fixed order.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        clients.push(Client {
            writer,
            reader,
            server,
        });
    }

    for (control, bytes) in chunks(rest) {
        let index = usize::from(control & 1).min(clients.len() - 1);
        let client = &mut clients[index];
        // The broker may have closed (or stopped reading): a write that cannot complete in
        // 10 ms of paused time is abandoned rather than blocking the run.
        let _ =
            tokio::time::timeout(Duration::from_millis(10), client.writer.write_all(bytes)).await;
        if control & 0b10 != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(10)).await;

    if flags & 0b100_0000 != 0 {
        for client in &mut clients {
            let _ = client.writer.shutdown().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = shutdown_tx.send(true);

    for client in clients {
        match tokio::time::timeout(FINISH_BOUND, client.server).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => std::panic::resume_unwind(error.into_panic()),
            Err(_) => panic!("a connection task did not finish after shutdown"),
        }
        drop(client.writer);
        match tokio::time::timeout(FINISH_BOUND, client.reader).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => std::panic::resume_unwind(error.into_panic()),
            Err(_) => panic!("the broker's side of a connection was not closed"),
        }
    }
    let (connected, _) = broker.sessions.counts();
    assert_eq!(
        connected, 0,
        "a session is still connected after every connection ended"
    );
}
