//! Group-committed appends and acknowledgements, the way brokk would drive the store.
//!
//! Publisher threads each keep a window of requests outstanding (like an MQTT client waiting for
//! PUBACKs). One committer thread takes whatever requests are waiting, up to the batch size, and
//! turns them into ONE atomic batch committed with ONE durable commit: per message a put of the
//! payload under its message id and a put of (session, seq) -> message id in each of 1..=4
//! session queues; and, for the oldest entries beyond a backlog of 25,000 queue entries, the
//! acknowledgements: delete (session, seq), and delete the message when no queue refers to it
//! any more (an in-memory reference count, as brokk would keep). Then every publisher in the
//! batch gets its answer.

use crate::engine::{self, Engine, Op, Table};
use crate::util::{self, Pool, Rng};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

pub const SESSIONS: u64 = 10_000;
const BACKLOG_ENTRIES: usize = 25_000;
const MAX_FANOUT: u64 = 4;

struct Request {
    payload: Vec<u8>,
    reply: Sender<()>,
}

pub struct Params {
    pub engine: Engine,
    pub batch: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

/// One commit: when it ended, how long it took, messages appended in it.
struct Commit {
    end: Instant,
    took: Duration,
    messages: u32,
}

struct Committer {
    store: Box<dyn engine::Store>,
    rng: Rng,
    next_id: u64,
    next_seq: Vec<u64>,
    backlog: VecDeque<(u64, u64, u64)>,
    refs: HashMap<u64, u32>,
}

impl Committer {
    fn ops_for(&mut self, reqs: &mut [Request]) -> Vec<Op> {
        let mut ops = Vec::with_capacity(reqs.len() * 8);
        for r in reqs.iter_mut() {
            let id = self.next_id;
            self.next_id += 1;
            ops.push(Op::Put(
                Table::Messages,
                util::msg_key(id),
                std::mem::take(&mut r.payload),
            ));
            let fanout = 1 + self.rng.below(MAX_FANOUT);
            let first = self.rng.below(SESSIONS);
            for i in 0..fanout {
                let s = (first + i * 997) % SESSIONS;
                let seq = self.next_seq[s as usize];
                self.next_seq[s as usize] += 1;
                ops.push(Op::Put(
                    Table::Queues,
                    util::queue_key(s, seq),
                    util::msg_key(id),
                ));
                self.backlog.push_back((s, seq, id));
            }
            self.refs.insert(id, fanout as u32);
        }
        while self.backlog.len() > BACKLOG_ENTRIES {
            let (s, seq, id) = self.backlog.pop_front().expect("non-empty");
            ops.push(Op::Del(Table::Queues, util::queue_key(s, seq)));
            let left = self.refs.get_mut(&id).expect("counted");
            *left -= 1;
            if *left == 0 {
                self.refs.remove(&id);
                ops.push(Op::Del(Table::Messages, util::msg_key(id)));
            }
        }
        ops
    }

    fn run(mut self, rx: Receiver<Request>, batch: usize, stop: Arc<AtomicBool>) -> Vec<Commit> {
        let mut commits = Vec::new();
        let mut reqs = Vec::with_capacity(batch);
        while !stop.load(Ordering::Relaxed) {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => reqs.push(r),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while reqs.len() < batch {
                match rx.try_recv() {
                    Ok(r) => reqs.push(r),
                    Err(_) => break,
                }
            }
            let ops = self.ops_for(&mut reqs);
            let t0 = Instant::now();
            self.store.commit(&ops, true).expect("commit");
            let end = Instant::now();
            commits.push(Commit {
                end,
                took: end - t0,
                messages: reqs.len() as u32,
            });
            for r in reqs.drain(..) {
                let _ = r.reply.send(());
            }
        }
        commits
    }
}

fn publisher(
    tx: Sender<Request>,
    window: usize,
    seed: u64,
    measure_from: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let pool = Pool::new(seed);
    let mut rng = Rng(seed);
    let (reply_tx, reply_rx) = mpsc::channel();
    let mut sent = VecDeque::new();
    let mut latencies = Vec::new();
    let send = |rng: &mut Rng, sent: &mut VecDeque<Instant>| {
        sent.push_back(Instant::now());
        tx.send(Request {
            payload: pool.payload(rng),
            reply: reply_tx.clone(),
        })
        .is_ok()
    };
    for _ in 0..window {
        if !send(&mut rng, &mut sent) {
            return latencies;
        }
    }
    loop {
        match reply_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => continue,
            Err(_) => break,
        }
        let t = sent.pop_front().expect("one per answer");
        if t >= measure_from {
            latencies.push(t.elapsed());
        }
        if stop.load(Ordering::Relaxed) || !send(&mut rng, &mut sent) {
            break;
        }
    }
    latencies
}

fn prepare(store: &mut dyn engine::Store) {
    let ops: Vec<Op> = (0..SESSIONS)
        .map(|s| Op::Put(Table::Sessions, util::session_key(s), util::session_meta(s)))
        .collect();
    store.commit(&ops, true).expect("sessions");
}

/// Runs one configuration in this process and returns its figures as JSON.
pub fn run(p: &Params, dir: &Path) -> serde_json::Value {
    let _ = std::fs::remove_dir_all(dir);
    let mut store = engine::open(p.engine, dir, engine::OpenOptions::default()).expect("open");
    prepare(store.as_mut());
    // The store's own threads: all but this one, before the benchmark starts any.
    let threads = util::threads() - 1;
    let committer = Committer {
        store,
        rng: Rng(7),
        next_id: 0,
        next_seq: vec![0; SESSIONS as usize],
        backlog: VecDeque::new(),
        refs: HashMap::new(),
    };
    // Twice the batch outstanding: while one batch commits, the next one fills up.
    let publishers = p.batch.clamp(1, 8);
    let window = (2 * p.batch).div_ceil(publishers).max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let measure_from = start + p.warmup;
    let batch = p.batch;
    let c_stop = stop.clone();
    let committer = std::thread::spawn(move || committer.run(rx, batch, c_stop));
    let pubs: Vec<_> = (0..publishers)
        .map(|i| {
            let (tx, stop) = (tx.clone(), stop.clone());
            std::thread::spawn(move || publisher(tx, window, 100 + i as u64, measure_from, stop))
        })
        .collect();
    drop(tx);
    std::thread::sleep(p.warmup);
    let (io0, cpu0) = (util::io_write_bytes(), util::cpu_secs());
    std::thread::sleep(p.measure);
    let (io1, cpu1) = (util::io_write_bytes(), util::cpu_secs());
    let measure_to = Instant::now();
    let rss = util::rss();
    stop.store(true, Ordering::Relaxed);
    let commits = committer.join().expect("committer");
    let mut latencies: Vec<Duration> = pubs
        .into_iter()
        .flat_map(|h| h.join().expect("pub"))
        .collect();
    latencies.sort();
    let used = Used {
        written: io1 - io0,
        cpu: cpu1 - cpu0,
        rss,
        threads,
    };
    summarize(
        p,
        &commits,
        (measure_from, measure_to),
        used,
        latencies,
        dir,
    )
}

/// What the measured window cost the process.
struct Used {
    written: u64,
    cpu: f64,
    rss: u64,
    threads: u64,
}

fn summarize(
    p: &Params,
    commits: &[Commit],
    (from, to): (Instant, Instant),
    used: Used,
    latencies: Vec<Duration>,
    dir: &Path,
) -> serde_json::Value {
    let window: Vec<&Commit> = commits
        .iter()
        .filter(|c| c.end >= from && c.end <= to)
        .collect();
    let secs = (to - from).as_secs_f64();
    let messages: u64 = window.iter().map(|c| c.messages as u64).sum();
    let mut took: Vec<Duration> = window.iter().map(|c| c.took).collect();
    took.sort();
    let commits_n = window.len() as f64;
    json!({
        "engine": p.engine.name(),
        "batch": p.batch,
        "secs": secs,
        "messages_per_s": messages as f64 / secs,
        "commits_per_s": commits_n / secs,
        "mean_batch": messages as f64 / commits_n.max(1.0),
        "commits_total": commits.len(),
        "commit_mean_ms": took.iter().sum::<Duration>().as_secs_f64() * 1000.0 / commits_n.max(1.0),
        "commit_p50_ms": util::percentile(&took, 0.50),
        "commit_p99_ms": util::percentile(&took, 0.99),
        "ack_p50_ms": util::percentile(&latencies, 0.50),
        "ack_p99_ms": util::percentile(&latencies, 0.99),
        "written_bytes_per_msg": used.written as f64 / (messages.max(1)) as f64,
        "cpu_us_per_msg": used.cpu * 1e6 / (messages.max(1)) as f64,
        "disk_bytes": util::disk_usage(dir),
        "rss_bytes": used.rss,
        "rss_peak_bytes": util::rss_peak(),
        "store_threads": used.threads,
    })
}
