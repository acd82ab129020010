//! Flood: publishers send QoS 0 messages as fast as the broker reads them, `batch` PUBLISH
//! packets per write, to one subscriber on a wildcard (fan-in). What the broker delivers per
//! second and per CPU-second when nothing paces the load, and how much of what was sent it
//! delivered (QoS 0 may be dropped under overload; nothing else here is measured).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{self, Res, Stamp, Template, next_frame};
use crate::load::connect_many;
use crate::procstat;
use brokk::protocol::QoS;

#[derive(Clone, Debug, Default, Serialize)]
pub struct FloodResult {
    pub publishers: usize,
    pub batch: usize,
    pub payload: usize,
    pub window_s: f64,
    pub sent: u64,
    pub received: u64,
    pub delivered_per_s: f64,
    pub broker_cpu_s: f64,
    pub deliveries_per_broker_cpu_s: f64,
}

pub async fn flood(
    addr: SocketAddr,
    pid: Option<u32>,
    publishers: usize,
    batch: usize,
    payload: usize,
    secs: f64,
) -> Res<FloodResult> {
    let nonce = format!("{}-{}", std::process::id(), client::now_ns());
    let mut sub = connect_many(addr, vec![format!("fs{nonce}")], true)
        .await?
        .remove(0);
    client::subscribe(&mut sub, &format!("f{nonce}/+"), QoS::AtMostOnce).await?;
    let pubs = connect_many(
        addr,
        (0..publishers).map(|i| format!("fp{nonce}-{i}")).collect(),
        true,
    )
    .await?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (received, stop) = (received.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut r, _w) = sub.into_split();
            let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
            while !stop.load(Ordering::Relaxed) {
                if buf.capacity() - buf.len() < 64 * 1024 {
                    buf.reserve(256 * 1024);
                }
                let read = tokio::time::timeout(Duration::from_millis(200), r.read_buf(&mut buf));
                match read.await {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(_)) => {}
                    Err(_) => continue,
                }
                let mut off = 0;
                let mut n = 0;
                while let Some((b1, _, total)) = next_frame(&buf[off..]) {
                    if b1 >> 4 == 3 {
                        n += 1;
                    }
                    off += total;
                }
                let _ = buf.split_to(off);
                received.fetch_add(n, Ordering::Relaxed);
            }
        })
    };
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let b0 = procstat::sample_opt(pid);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, stream) in pubs.into_iter().enumerate() {
        let sent = sent.clone();
        let template = Template::new(&format!("f{nonce}/{i}"), QoS::AtMostOnce, payload);
        tasks.push(tokio::spawn(async move {
            let (_r, mut w) = stream.into_split();
            let stamp = Stamp {
                sent_ns: 0,
                phase: 0,
                publisher: i as u32,
                seq: 0,
            };
            let mut out = Vec::new();
            for _ in 0..batch {
                template.stamp(&mut out, 0, &stamp);
            }
            while Instant::now() < deadline {
                if w.write_all(&out).await.is_err() {
                    return;
                }
                sent.fetch_add(batch as u64, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    // What is still on its way arrives within a moment once the publishers stop.
    let mut last = received.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = received.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let window = start.elapsed().as_secs_f64();
    let b1 = procstat::sample_opt(pid);
    stop.store(true, Ordering::Relaxed);
    let _ = counter.await;
    let broker_cpu = b1.cpu_secs - b0.cpu_secs;
    Ok(FloodResult {
        publishers,
        batch,
        payload,
        window_s: window,
        sent: sent.load(Ordering::Relaxed),
        received: last,
        delivered_per_s: last as f64 / window,
        broker_cpu_s: broker_cpu,
        deliveries_per_broker_cpu_s: if broker_cpu > 0.0 {
            last as f64 / broker_cpu
        } else {
            0.0
        },
    })
}
