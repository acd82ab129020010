//! Recovery: a store holding 100,000 sessions and 1,000,000 queued messages (64 B..4 KiB
//! payloads, each message in one session's queue, 10 per session on average), then the time to
//! open it and rebuild what brokk keeps in memory (every session record, and per session the
//! sequence range of its queue with a check that it has no gap), and to read every payload.

use crate::engine::{self, Engine, Op, Table};
use crate::util::{self, Pool, Rng};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

pub const SESSIONS: u64 = 100_000;
pub const MESSAGES: u64 = 1_000_000;
const FILL_BATCH: u64 = 10_000;

pub fn fill(engine: Engine, dir: &Path) -> serde_json::Value {
    let _ = std::fs::remove_dir_all(dir);
    let t0 = Instant::now();
    let mut store = engine::open(engine, dir, engine::OpenOptions::default()).expect("open");
    for chunk in (0..SESSIONS)
        .collect::<Vec<_>>()
        .chunks(FILL_BATCH as usize)
    {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|&s| Op::Put(Table::Sessions, util::session_key(s), util::session_meta(s)))
            .collect();
        store.commit(&ops, true).expect("sessions");
    }
    let pool = Pool::new(1);
    let mut rng = Rng(2);
    let mut next_seq = vec![0u64; SESSIONS as usize];
    let mut payload_bytes = 0u64;
    for first in (0..MESSAGES).step_by(FILL_BATCH as usize) {
        let mut ops = Vec::with_capacity(2 * FILL_BATCH as usize);
        for id in first..(first + FILL_BATCH).min(MESSAGES) {
            let payload = pool.payload(&mut rng);
            payload_bytes += payload.len() as u64;
            let s = rng.below(SESSIONS);
            let seq = next_seq[s as usize];
            next_seq[s as usize] += 1;
            ops.push(Op::Put(Table::Messages, util::msg_key(id), payload));
            ops.push(Op::Put(
                Table::Queues,
                util::queue_key(s, seq),
                util::msg_key(id),
            ));
        }
        store.commit(&ops, true).expect("messages");
    }
    drop(store);
    let took = t0.elapsed().as_secs_f64();
    let disk = util::disk_usage(dir);
    let journal: u64 = util::files(dir)
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "jnl"))
        .map(|(_, n)| n)
        .sum();
    json!({
        "engine": engine.name(),
        "fill_secs": took,
        "payload_bytes": payload_bytes,
        "disk_bytes": disk,
        "disk_bytes_per_msg": disk as f64 / MESSAGES as f64,
        "payload_bytes_per_msg": payload_bytes as f64 / MESSAGES as f64,
        "files": util::files(dir).len(),
        "journal_bytes": journal,
    })
}

/// A client coming back: its queue read by a key range, each message by a point read. Returns
/// the mean time per session over 1,000 random sessions, in milliseconds.
fn resume(store: &dyn engine::Store) -> f64 {
    let mut rng = Rng(77);
    let t0 = Instant::now();
    let mut read = 0u64;
    for _ in 0..1000 {
        let s = rng.below(SESSIONS);
        let mut ids = Vec::new();
        store
            .range(
                Table::Queues,
                &util::queue_key(s, 0),
                &util::queue_key(s + 1, 0),
                &mut |_, v| ids.push(util::be_u64(v)),
            )
            .expect("range");
        for id in ids {
            read += store
                .get(Table::Messages, &util::msg_key(id))
                .expect("get")
                .map_or(0, |v| v.len() as u64);
        }
    }
    assert!(read > 0);
    t0.elapsed().as_secs_f64() // 1,000 sessions: seconds in total = milliseconds each
}

/// Opens the store and rebuilds brokk's in-memory view; with `payloads`, reads every message.
pub fn recover(engine: Engine, dir: &Path, payloads: bool) -> serde_json::Value {
    let t0 = Instant::now();
    let store = engine::open(engine, dir, engine::OpenOptions::default()).expect("open");
    let open = t0.elapsed().as_secs_f64();
    let sessions = store
        .scan(Table::Sessions, &mut |_, _| {})
        .expect("scan sessions");
    // Per session: (first seq, next seq); a gap is a queue entry not following its predecessor.
    let mut queues: HashMap<u64, (u64, u64)> = HashMap::with_capacity(sessions as usize);
    let mut gaps = 0u64;
    let entries = store
        .scan(Table::Queues, &mut |k, _| {
            let (s, seq) = (util::be_u64(&k[..8]), util::be_u64(&k[8..]));
            let e = queues.entry(s).or_insert((seq, seq));
            if e.1 != seq {
                gaps += 1;
            }
            e.1 = seq + 1;
        })
        .expect("scan queues");
    let index = t0.elapsed().as_secs_f64();
    let rss_index = util::rss();
    let resume_ms = resume(store.as_ref());
    let mut full = serde_json::Value::Null;
    let mut rss_full = serde_json::Value::Null;
    if payloads {
        let mut bytes = 0u64;
        let n = store
            .scan(Table::Messages, &mut |_, v| bytes += v.len() as u64)
            .expect("scan msgs");
        assert_eq!(n, MESSAGES, "messages");
        full = json!(t0.elapsed().as_secs_f64());
        rss_full = json!(util::rss());
    }
    json!({
        "engine": engine.name(),
        "open_secs": open,
        "index_secs": index,
        "full_secs": full,
        "sessions": sessions,
        "queue_entries": entries,
        "gaps": gaps,
        "rss_index_bytes": rss_index,
        "resume_ms_per_session": resume_ms,
        "rss_full_bytes": rss_full,
        "threads": util::threads(),
    })
}

/// Opens the store, commits one durable batch and says so, then waits to be killed.
pub fn hold(engine: Engine, dir: &Path) {
    let mut store = engine::open(engine, dir, engine::OpenOptions::default()).expect("open");
    let ops = vec![Op::Put(Table::Meta, b"hold".to_vec(), b"1".to_vec())];
    store.commit(&ops, true).expect("commit");
    println!("ready");
    loop {
        std::thread::park();
    }
}
