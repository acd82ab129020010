//! `kill -9` in the middle of writing. A child writes numbered batches, each committed durably
//! and atomically, and prints a batch's number once its commit has returned; the parent kills it
//! at a random moment, then a verifier opens the store and compares it with what the numbers say
//! must be there. The same store is reused across trials (the writer continues after the last
//! batch it finds), so recovery after recovery is exercised too.
//!
//! Batch k: the meta key `last` = k; messages 8k..8k+8 (payloads derived from their ids) each in
//! three session queues; and the acknowledgement of batch k-50 (its queue entries and messages
//! deleted). So after batch L the store holds exactly batches L-49..=L.

use crate::engine::{self, Engine, Op, Table};
use crate::util::{self, Pool, Rng};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PER_BATCH: u64 = 8;
pub const KEEP: u64 = 50;
const FANOUT: u64 = 3;
const SESSIONS: u64 = 1000;

pub fn payload(pool: &Pool, id: u64) -> Vec<u8> {
    pool.payload(&mut Rng(id))
}

fn entries(id: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..FANOUT).map(move |i| ((id * 7 + i * 331) % SESSIONS, id))
}

/// The operations of batch `k` (with `acks`, also the deletion of batch k-KEEP).
pub fn batch_ops(pool: &Pool, k: u64, acks: bool) -> Vec<Op> {
    let mut ops = vec![Op::Put(
        Table::Meta,
        b"last".to_vec(),
        k.to_be_bytes().to_vec(),
    )];
    for id in k * PER_BATCH..(k + 1) * PER_BATCH {
        ops.push(Op::Put(
            Table::Messages,
            util::msg_key(id),
            payload(pool, id),
        ));
        for (s, seq) in entries(id) {
            ops.push(Op::Put(
                Table::Queues,
                util::queue_key(s, seq),
                util::msg_key(id),
            ));
        }
    }
    if acks && k > KEEP {
        let old = k - KEEP;
        for id in old * PER_BATCH..(old + 1) * PER_BATCH {
            for (s, seq) in entries(id) {
                ops.push(Op::Del(Table::Queues, util::queue_key(s, seq)));
            }
            ops.push(Op::Del(Table::Messages, util::msg_key(id)));
        }
    }
    ops
}

pub fn last_batch(store: &dyn engine::Store) -> engine::Res<u64> {
    Ok(store
        .get(Table::Meta, b"last")?
        .map(|v| util::be_u64(&v))
        .unwrap_or(0))
}

/// Child: writes batches after the last one found until killed.
pub fn writer(engine: Engine, dir: &Path) {
    let mut store = engine::open(engine, dir, engine::OpenOptions::default()).expect("open");
    let pool = Pool::new(9);
    let mut k = last_batch(store.as_ref()).expect("last");
    loop {
        k += 1;
        store
            .commit(&batch_ops(&pool, k, true), true)
            .expect("commit");
        println!("{k}");
    }
}

/// What a store should hold once batches `first..=last` are its live ones.
pub struct Mismatch {
    pub missing: u64,
    pub wrong: u64,
    pub extra: u64,
}

/// Compares messages and queues with batches `first..=last`; counts what differs.
pub fn compare(store: &dyn engine::Store, first: u64, last: u64) -> engine::Res<Mismatch> {
    let pool = Pool::new(9);
    let live = |id: u64| id / PER_BATCH >= first && id / PER_BATCH <= last;
    let mut m = Mismatch {
        missing: 0,
        wrong: 0,
        extra: 0,
    };
    let (mut msgs, mut queued) = (0u64, 0u64);
    store.scan(Table::Messages, &mut |k, v| {
        let id = util::be_u64(k);
        if !live(id) {
            m.extra += 1;
        } else {
            msgs += 1;
            if v != payload(&pool, id).as_slice() {
                m.wrong += 1;
            }
        }
    })?;
    store.scan(Table::Queues, &mut |k, v| {
        let (s, seq) = (util::be_u64(&k[..8]), util::be_u64(&k[8..]));
        if !live(seq) || !entries(seq).any(|e| e == (s, seq)) {
            m.extra += 1;
        } else {
            queued += 1;
            if util::be_u64(v) != seq {
                m.wrong += 1;
            }
        }
    })?;
    let n = if last >= first { last - first + 1 } else { 0 };
    m.missing = (n * PER_BATCH - msgs) + (n * PER_BATCH * FANOUT - queued);
    Ok(m)
}

/// Child: opens after a kill and checks the store against `acked`, the last acknowledged batch.
pub fn verify(engine: Engine, dir: &Path, acked: u64) {
    let t0 = Instant::now();
    let store = match engine::open(engine, dir, engine::OpenOptions::default()) {
        Ok(s) => s,
        Err(e) => {
            println!("{}", json!({"ok": false, "error": format!("open: {e}")}));
            return;
        }
    };
    let open_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let result = last_batch(store.as_ref()).and_then(|last| {
        let m = compare(store.as_ref(), last.saturating_sub(KEEP - 1).max(1), last)?;
        Ok((last, m))
    });
    let out = match result {
        Ok((last, m)) => json!({
            "ok": last >= acked && last <= acked + 1 && m.missing + m.wrong + m.extra == 0,
            "last": last, "acked": acked, "open_ms": open_ms,
            "missing": m.missing, "wrong": m.wrong, "extra": m.extra,
        }),
        Err(e) => json!({"ok": false, "error": format!("read: {e}")}),
    };
    println!("{out}");
}

/// Parent: `trials` kills at random moments; returns a summary.
pub fn run(engine: Engine, dir: &Path, trials: u32) -> serde_json::Value {
    let _ = std::fs::remove_dir_all(dir);
    let exe = std::env::current_exe().expect("exe");
    let dir_s = dir.display().to_string();
    let mut rng = Rng(42);
    let (mut ok, mut inflight_kept, mut commits) = (0u32, 0u32, 0u64);
    let mut failures = Vec::new();
    let mut open_ms = Vec::new();
    for trial in 0..trials {
        let mut child = Command::new(&exe)
            .args(["crash-writer", engine.name(), &dir_s])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let out = child.stdout.take().expect("stdout");
        let acked = Arc::new(Mutex::new((0u64, 0u64)));
        let a = acked.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(k) = line.trim().parse::<u64>() {
                    let mut g = a.lock().expect("lock");
                    g.0 = k;
                    g.1 += 1;
                }
            }
        });
        // Let the writer get going, then kill it at a random point of its stream of commits.
        let started = Instant::now();
        while acked.lock().expect("lock").1 == 0 && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(50_000 + rng.below(700_000)));
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        reader.join().expect("reader");
        let (k, n) = *acked.lock().expect("lock");
        commits += n;
        let v = util::run_self(
            &[
                "crash-verify".into(),
                engine.name().into(),
                dir_s.clone(),
                k.to_string(),
            ],
            Duration::from_secs(300),
        );
        let res = util::last_json(&v).unwrap_or_else(|| json!({"ok": false, "error": v.stderr}));
        if res["ok"].as_bool() == Some(true) {
            ok += 1;
            if res["last"].as_u64() == Some(k + 1) {
                inflight_kept += 1;
            }
            open_ms.push(res["open_ms"].as_f64().unwrap_or(0.0));
        } else {
            failures.push(json!({"trial": trial, "result": res}));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    open_ms.sort_by(f64::total_cmp);
    json!({
        "engine": engine.name(), "trials": trials, "ok": ok,
        "inflight_batch_present": inflight_kept,
        "acked_commits_total": commits,
        "open_ms_max": open_ms.last().copied().unwrap_or(0.0),
        "failures": failures,
    })
}
