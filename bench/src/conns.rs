//! Connection scenarios: a connect storm, idle connections, a takeover storm.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{self, DISCONNECT};
use crate::load::connect_many;
use crate::procstat;

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds")
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StormResult {
    pub connects: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub connects_per_s: f64,
    pub connack_p50_ms: f64,
    pub connack_p99_ms: f64,
    pub connack_max_ms: f64,
    pub broker_cpu_s: f64,
    pub gen_cpu_s: f64,
}

/// `total` connections, `concurrency` at a time: TCP connect, CONNECT, CONNACK, DISCONNECT,
/// close with RST. Latency is from the start of the TCP connect to the CONNACK.
pub async fn storm(
    addr: SocketAddr,
    total: usize,
    concurrency: usize,
    pid: Option<u32>,
) -> StormResult {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let all = Arc::new(Mutex::new(hist()));
    let b0 = procstat::sample_opt(pid);
    let g0 = procstat::self_cpu();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let tag = std::process::id();
    for _ in 0..concurrency {
        let (next, errors, all) = (next.clone(), errors.clone(), all.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                match client::connect(addr, &format!("st{tag}-{i}"), true).await {
                    Ok((mut s, lat)) => {
                        h.saturating_record(lat.as_micros().max(1) as u64);
                        let _ = s.write_all(&DISCONNECT).await;
                    }
                    Err(e) => {
                        // The first few errors are printed: a connect that fails after minutes
                        // is a SYN that was never answered (listen backlog overflow).
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("    storm connect {i} failed: {e}");
                        }
                    }
                }
            }
            all.lock().unwrap().add(&h).expect("bounds");
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let b1 = procstat::sample_opt(pid);
    let h = all.lock().unwrap();
    StormResult {
        connects: h.len(),
        errors: errors.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        connects_per_s: h.len() as f64 / elapsed,
        connack_p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        connack_p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        connack_max_ms: h.max() as f64 / 1000.0,
        broker_cpu_s: b1.cpu_secs - b0.cpu_secs,
        gen_cpu_s: procstat::self_cpu() - g0,
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct IdleResult {
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub bytes_per_connection: f64,
    pub connect_s: f64,
}

/// Opens `n` connections that then sit idle; the broker's resident memory before and after.
pub async fn idle(
    addr: SocketAddr,
    n: usize,
    pid: Option<u32>,
    hold: Duration,
) -> Result<IdleResult, String> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = procstat::sample_opt(pid);
    let t0 = Instant::now();
    let tag = std::process::id();
    let ids = (0..n).map(|i| format!("idle{tag}-{i}")).collect();
    let streams = connect_many(addr, ids, true)
        .await
        .map_err(|e| e.to_string())?;
    let connect_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(hold).await;
    let after = procstat::sample_opt(pid);
    drop(streams);
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(IdleResult {
        connections: n,
        rss_before_kib: before.rss_kib,
        rss_after_kib: after.rss_kib,
        bytes_per_connection: (after.rss_kib as f64 - before.rss_kib as f64) * 1024.0 / n as f64,
        connect_s,
    })
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TakeoverResult {
    pub takeovers: u64,
    pub errors: u64,
    pub old_closed: u64,
    pub elapsed_s: f64,
    pub takeovers_per_s: f64,
    pub connack_p50_ms: f64,
    pub connack_p99_ms: f64,
    pub broker_cpu_s: f64,
}

/// `ids` client ids, each connected `rounds + 1` times in a row (clean session off) while
/// the previous connection is still open: every connect after the first takes the session
/// over. Counts the old connections the broker closed.
pub async fn takeover(
    addr: SocketAddr,
    ids: usize,
    rounds: usize,
    concurrency: usize,
    pid: Option<u32>,
) -> TakeoverResult {
    // At most `concurrency` connects in progress at once (as in the storm): hundreds of SYNs
    // at the same instant overflow listen backlogs and measure TCP's 1 s SYN retransmit.
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let tag = std::process::id();
    let names: Vec<String> = (0..ids).map(|i| format!("tk{tag}-{i}")).collect();
    let mut first = match connect_many(addr, names.clone(), false).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("  takeover: initial connections failed: {e}");
            return TakeoverResult::default();
        }
    };
    let errors = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let all = Arc::new(Mutex::new(hist()));
    let b0 = procstat::sample_opt(pid);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let mut watchers = tokio::task::JoinSet::new();
    let watchers_tx = Arc::new(Mutex::new(Vec::new()));
    for (name, stream) in names.iter().cloned().zip(first.drain(..)) {
        let (errors, closed, all, wt) = (
            errors.clone(),
            closed.clone(),
            all.clone(),
            watchers_tx.clone(),
        );
        let permits = permits.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut cur = stream;
            for _ in 0..rounds {
                let permit = permits.acquire().await.expect("semaphore open");
                let connected = client::connect(addr, &name, false).await;
                drop(permit);
                match connected {
                    Ok((s, lat)) => {
                        h.saturating_record(lat.as_micros().max(1) as u64);
                        let mut old = std::mem::replace(&mut cur, s);
                        let closed = closed.clone();
                        wt.lock().unwrap().push(tokio::spawn(async move {
                            let mut b = [0u8; 256];
                            let end = tokio::time::timeout(Duration::from_secs(5), async {
                                loop {
                                    match old.read(&mut b).await {
                                        Ok(0) | Err(_) => return true,
                                        Ok(_) => {}
                                    }
                                }
                            })
                            .await;
                            if end == Ok(true) {
                                closed.fetch_add(1, Ordering::Relaxed);
                            }
                        }));
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            all.lock().unwrap().add(&h).expect("bounds");
            cur
        }));
    }
    let mut last = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            last.push(s);
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let b1 = procstat::sample_opt(pid);
    for w in watchers_tx.lock().unwrap().drain(..) {
        watchers.spawn(async move {
            let _ = w.await;
        });
    }
    while watchers.join_next().await.is_some() {}
    drop(last);
    // Clear the sessions: one clean connect per id.
    if let Ok(streams) = connect_many(addr, names, true).await {
        for mut s in streams {
            let _ = s.write_all(&DISCONNECT).await;
        }
    }
    let h = all.lock().unwrap();
    TakeoverResult {
        takeovers: h.len(),
        errors: errors.load(Ordering::Relaxed),
        old_closed: closed.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        takeovers_per_s: h.len() as f64 / elapsed,
        connack_p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        connack_p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        broker_cpu_s: b1.cpu_secs - b0.cpu_secs,
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FillResult {
    pub sessions: usize,
    pub messages: u64,
    pub connect_s: f64,
    pub publish_s: f64,
    pub messages_per_s: f64,
}

/// Fills a broker's store: `sessions` persistent sessions (clean session 0), each subscribed
/// to `f/<i>` at QoS 1 and then disconnected, then `messages` QoS 1 messages spread over their
/// topics, every one acknowledged (64 in flight). For the restart figure: kill the broker
/// after this, start it again, and time the recovery.
pub async fn fill(
    addr: SocketAddr,
    sessions: usize,
    messages: u64,
    payload: usize,
) -> Result<FillResult, String> {
    let started = Instant::now();
    let mut done = 0;
    while done < sessions {
        let n = (sessions - done).min(2000);
        let ids: Vec<String> = (done..done + n).map(|i| format!("fill-{i}")).collect();
        let streams = connect_many(addr, ids, false)
            .await
            .map_err(|e| e.to_string())?;
        let mut tasks = tokio::task::JoinSet::new();
        for (k, mut stream) in streams.into_iter().enumerate() {
            let topic = format!("f/{}", done + k);
            tasks.spawn(async move {
                client::subscribe(&mut stream, &topic, brokk::protocol::QoS::AtLeastOnce).await?;
                stream.write_all(&DISCONNECT).await?;
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        done += n;
    }
    let connect_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (mut stream, _) = client::connect(addr, "fill-publisher", true)
        .await
        .map_err(|e| e.to_string())?;
    let body = vec![b'x'; payload];
    let mut buf = bytes::BytesMut::new();
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < messages {
        let mut out = bytes::BytesMut::new();
        while sent < messages && sent - acked < 64 {
            let publish = brokk::protocol::Publish {
                dup: false,
                qos: brokk::protocol::QoS::AtLeastOnce,
                retain: false,
                topic: format!("f/{}", sent % sessions as u64),
                packet_id: (sent % 65_000) as u16 + 1,
                payload: bytes::Bytes::copy_from_slice(&body),
                topic_alias: None,
                subscription_identifiers: Vec::new(),
                properties: Default::default(),
            };
            brokk::protocol::encode_publish(&publish, brokk::protocol::Version::V311, &mut out)
                .map_err(|e| e.to_string())?;
            sent += 1;
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
        }
        match client::read_packet(&mut stream, &mut buf)
            .await
            .map_err(|e| e.to_string())?
        {
            brokk::protocol::Packet::PubAck(_) => acked += 1,
            other => return Err(format!("expected PUBACK, got {other:?}")),
        }
    }
    let publish_s = started.elapsed().as_secs_f64();
    Ok(FillResult {
        sessions,
        messages,
        connect_s,
        publish_s,
        messages_per_s: messages as f64 / publish_s,
    })
}
