//! Message load: fan-in, fan-out and pairs, at a fixed rate or stepped to the maximum.
//!
//! Publishers are driven in groups: one task owns the write halves of up to `GROUP`
//! connections, wakes every millisecond, and writes each connection's due messages as one
//! buffer (one system call per connection per tick, however many messages). Each
//! subscriber connection has its own task that reads big buffers, counts and timestamps every
//! PUBLISH, and answers QoS 1/2 with one write per read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{ReadHalf, Stream, WriteHalf};
use brokk::protocol::QoS;
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{self, Res, Stamp, Template, ack, next_frame, now_ns, publish_parts};
use crate::procstat;

/// Publisher connections per writer task.
const GROUP: usize = 25;
/// Outbound QoS 1/2 window per publisher (brokk's receive_maximum and Mosquitto's
/// max_inflight_messages are set to at least this).
pub const WINDOW: u32 = 64;
/// At most this many messages per connection per tick (a lagging generator catches up
/// gradually instead of writing megabytes at once).
const MAX_PER_TICK: u64 = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Scenario {
    /// N publishers on N topics, one subscriber on a wildcard.
    FanIn,
    /// One publisher, N subscribers on its topic.
    FanOut,
    /// N publishers, each with its own subscriber.
    Pairs,
}

impl Scenario {
    pub fn label(self) -> &'static str {
        match self {
            Scenario::FanIn => "fan-in",
            Scenario::FanOut => "fan-out",
            Scenario::Pairs => "pairs",
        }
    }
}

pub fn qos_of(q: u8) -> QoS {
    QoS::from_u8(q).expect("qos 0, 1 or 2")
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub scenario: Scenario,
    /// Publishers (fan-in), subscribers (fan-out) or pairs.
    pub clients: usize,
    pub qos: QoS,
    /// Subscribers connect with clean session 0: with a durable store their QoS 1/2 messages
    /// are stored before they are acknowledged to the publisher.
    pub persistent: bool,
}

#[derive(Clone, Debug)]
pub struct PhaseSpec {
    /// Deliveries (messages received by subscribers) per second, all together.
    pub rate: f64,
    pub payload: usize,
    pub duration: Duration,
    /// Sent and counted, but not in the latency histogram.
    pub warmup: Duration,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseResult {
    pub rate_target: f64,
    pub payload: usize,
    pub target_sent: u64,
    pub sent: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub delivered_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub broker_cpu_s: f64,
    pub broker_rss_kib: u64,
    pub gen_cpu_s: f64,
    pub window_s: f64,
    pub deliveries_per_broker_cpu_s: f64,
    pub healthy: bool,
}

impl PhaseResult {
    /// Sustainable: at least 99.9% delivered, the generator kept the rate, p99 within 10 ms.
    pub fn sustainable(&self) -> bool {
        self.healthy
            && self.received as f64 >= 0.999 * self.expected as f64
            && self.sent as f64 >= 0.99 * self.target_sent as f64
            && self.p99_us <= 10_000.0
    }
}

struct Ctl {
    phase: AtomicU32,
    warm_ns: AtomicU64,
    last_rx_ns: AtomicU64,
    broken: AtomicBool,
}

struct SubStats {
    received: u64,
    hist: Histogram<u64>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

struct PhaseCmd {
    id: u32,
    rate_per_pub: f64,
    payload: usize,
    start: Instant,
    warm: Instant,
    end: Instant,
    sent: AtomicU64,
    done: AtomicUsize,
}

struct PubConn {
    writer: Arc<tokio::sync::Mutex<WriteHalf>>,
    index: u32,
    topic: String,
    inflight: Arc<AtomicU32>,
    offset: f64,
    next_pid: u16,
    seq: u64,
}

pub struct Load {
    addr: SocketAddr,
    /// Where the subscribers connect (another cluster node; `addr` by default).
    sub_addr: SocketAddr,
    /// The broker processes whose CPU time counts (every node of a cluster).
    pids: Vec<u32>,
    spec: LoadSpec,
    ctl: Arc<Ctl>,
    subs: Vec<Arc<Mutex<SubStats>>>,
    tasks: Vec<JoinHandle<()>>,
    cmd_tx: watch::Sender<Option<Arc<PhaseCmd>>>,
    groups: usize,
    publishers: usize,
    fanout: u64,
    next_phase: u32,
}

static NONCE: AtomicU32 = AtomicU32::new(0);

/// Connects `ids` in parallel (at most 128 handshakes at once), in order.
pub async fn connect_many(addr: SocketAddr, ids: Vec<String>, clean: bool) -> Res<Vec<Stream>> {
    let mut set = tokio::task::JoinSet::new();
    let mut out: Vec<Option<Stream>> = (0..ids.len()).map(|_| None).collect();
    let mut it = ids.into_iter().enumerate();
    let mut pending = 0;
    loop {
        while pending < 128 {
            let Some((i, id)) = it.next() else { break };
            set.spawn(async move { (i, client::connect(addr, &id, clean).await) });
            pending += 1;
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        pending -= 1;
        let (i, r) = joined?;
        out[i] = Some(r?.0);
    }
    Ok(out.into_iter().map(|s| s.expect("connected")).collect())
}

impl Load {
    pub async fn setup(addr: SocketAddr, pid: Option<u32>, spec: LoadSpec) -> Res<Load> {
        Load::setup_split(addr, addr, pid.into_iter().collect(), spec).await
    }

    /// Publishers on `addr`, subscribers on `sub_addr` (two nodes of a cluster); broker CPU
    /// summed over `pids`.
    pub async fn setup_split(
        addr: SocketAddr,
        sub_addr: SocketAddr,
        pids: Vec<u32>,
        spec: LoadSpec,
    ) -> Res<Load> {
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            NONCE.fetch_add(1, Ordering::Relaxed)
        );
        let n = spec.clients;
        let (pub_topics, sub_filters): (Vec<String>, Vec<String>) = match spec.scenario {
            Scenario::FanIn => (
                (0..n).map(|i| format!("b{nonce}/in/{i}")).collect(),
                vec![format!("b{nonce}/in/+")],
            ),
            Scenario::FanOut => (
                vec![format!("b{nonce}/out")],
                vec![format!("b{nonce}/out"); n],
            ),
            Scenario::Pairs => (
                (0..n).map(|i| format!("b{nonce}/p/{i}")).collect(),
                (0..n).map(|i| format!("b{nonce}/p/{i}")).collect(),
            ),
        };
        let fanout = match spec.scenario {
            Scenario::FanOut => n as u64,
            _ => 1,
        };
        let ctl = Arc::new(Ctl {
            phase: AtomicU32::new(0),
            warm_ns: AtomicU64::new(0),
            last_rx_ns: AtomicU64::new(0),
            broken: AtomicBool::new(false),
        });
        let mut tasks = Vec::new();
        let mut subs = Vec::new();
        // Subscribers first, so that nothing published is missed.
        let sub_ids = (0..sub_filters.len())
            .map(|i| format!("bs{nonce}-{i}"))
            .collect();
        let streams = connect_many(sub_addr, sub_ids, !spec.persistent).await?;
        for (mut stream, filter) in streams.into_iter().zip(&sub_filters) {
            client::subscribe(&mut stream, filter, spec.qos).await?;
            let stats = Arc::new(Mutex::new(SubStats {
                received: 0,
                hist: new_hist(),
            }));
            subs.push(stats.clone());
            tasks.push(tokio::spawn(subscriber(stream, stats, ctl.clone())));
        }
        let pub_ids = (0..pub_topics.len())
            .map(|i| format!("bp{nonce}-{i}"))
            .collect();
        let streams = connect_many(addr, pub_ids, true).await?;
        let (cmd_tx, _) = watch::channel(None);
        let publishers = streams.len();
        let mut conns = Vec::new();
        for (i, (stream, topic)) in streams.into_iter().zip(pub_topics).enumerate() {
            let (r, w) = stream.into_split();
            let writer = Arc::new(tokio::sync::Mutex::new(w));
            let inflight = Arc::new(AtomicU32::new(0));
            tasks.push(tokio::spawn(publisher_acks(
                r,
                writer.clone(),
                inflight.clone(),
                ctl.clone(),
            )));
            conns.push(PubConn {
                writer,
                index: i as u32,
                topic,
                inflight,
                // Spread the connections' sends evenly over each one's period.
                offset: i as f64 / publishers as f64,
                next_pid: 0,
                seq: 0,
            });
        }
        let mut groups = 0;
        while !conns.is_empty() {
            let rest = conns.split_off(conns.len().min(GROUP));
            let group = std::mem::replace(&mut conns, rest);
            tasks.push(tokio::spawn(publisher_group(
                group,
                cmd_tx.subscribe(),
                spec.qos,
                ctl.clone(),
            )));
            groups += 1;
        }
        Ok(Load {
            addr,
            sub_addr,
            pids,
            spec,
            ctl,
            subs,
            tasks,
            cmd_tx,
            groups,
            publishers,
            fanout,
            next_phase: 1,
        })
    }

    /// CPU seconds and resident memory (KiB) of the broker processes, summed.
    fn broker_cpu(&self) -> procstat::ProcSample {
        let mut total = procstat::ProcSample::default();
        for pid in &self.pids {
            let s = procstat::sample_opt(Some(*pid));
            total.cpu_secs += s.cpu_secs;
            total.rss_kib += s.rss_kib;
        }
        total
    }

    pub fn healthy(&self) -> bool {
        !self.ctl.broken.load(Ordering::Relaxed)
    }

    pub fn teardown(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Closes every connection and opens them again (after a broker dropped one).
    pub async fn rebuild(&mut self) -> Res<()> {
        self.teardown();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fresh = Load::setup_split(
            self.addr,
            self.sub_addr,
            self.pids.clone(),
            self.spec.clone(),
        )
        .await?;
        let _ = std::mem::replace(self, fresh);
        Ok(())
    }

    /// Waits until nothing has arrived for 200 ms (a backlog from an overloaded step is
    /// gone), at most 15 s.
    async fn quiesce(&self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            let last = self.ctl.last_rx_ns.load(Ordering::Relaxed);
            if now_ns().saturating_sub(last) > 200_000_000 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn received(&self) -> u64 {
        self.subs.iter().map(|s| s.lock().unwrap().received).sum()
    }

    pub async fn run_phase(&mut self, p: &PhaseSpec) -> PhaseResult {
        if self.tasks.is_empty() {
            // Torn down and not rebuilt (the broker refused new connections): nothing runs,
            // and the publishers' groups would never report.
            return PhaseResult {
                rate_target: p.rate,
                payload: p.payload,
                healthy: false,
                ..PhaseResult::default()
            };
        }
        self.quiesce().await;
        for s in &self.subs {
            let mut s = s.lock().unwrap();
            s.received = 0;
            s.hist.reset();
        }
        let id = self.next_phase;
        self.next_phase += 1;
        let start = Instant::now() + Duration::from_millis(20);
        let warm = start + p.warmup;
        let end = warm + p.duration;
        let rate_per_pub = p.rate / self.fanout as f64 / self.publishers as f64;
        let target_sent =
            (rate_per_pub * (end - start).as_secs_f64()).floor() as u64 * self.publishers as u64;
        self.ctl.phase.store(id, Ordering::SeqCst);
        self.ctl
            .warm_ns
            .store((warm - client::epoch()).as_nanos() as u64, Ordering::SeqCst);
        let cmd = Arc::new(PhaseCmd {
            id,
            rate_per_pub,
            payload: p.payload.max(client::STAMP_LEN),
            start,
            warm,
            end,
            sent: AtomicU64::new(0),
            done: AtomicUsize::new(0),
        });
        let b0 = self.broker_cpu();
        let g0 = procstat::self_cpu();
        let _ = self.cmd_tx.send(Some(cmd.clone()));
        while cmd.done.load(Ordering::SeqCst) < self.groups {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sent = cmd.sent.load(Ordering::SeqCst);
        let expected = sent * self.fanout;
        // Drain: until everything arrived, or no progress for 1 s, or 10 s.
        let drain_start = Instant::now();
        let mut last = self.received();
        let mut last_progress = Instant::now();
        while last < expected && drain_start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = self.received();
            if now != last {
                last = now;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > Duration::from_secs(1) {
                break;
            }
        }
        let b1 = self.broker_cpu();
        let g1 = procstat::self_cpu();
        let window = start.elapsed().as_secs_f64();
        let mut hist = new_hist();
        let mut received = 0;
        for s in &self.subs {
            let s = s.lock().unwrap();
            received += s.received;
            hist.add(&s.hist).expect("same bounds");
        }
        let broker_cpu = b1.cpu_secs - b0.cpu_secs;
        PhaseResult {
            rate_target: p.rate,
            payload: p.payload,
            target_sent,
            sent,
            expected,
            received,
            lost: expected.saturating_sub(received),
            delivered_per_s: received as f64 / (end - start).as_secs_f64(),
            p50_us: hist.value_at_quantile(0.50) as f64,
            p99_us: hist.value_at_quantile(0.99) as f64,
            p999_us: hist.value_at_quantile(0.999) as f64,
            max_us: hist.max() as f64,
            broker_cpu_s: broker_cpu,
            broker_rss_kib: b1.rss_kib,
            gen_cpu_s: g1 - g0,
            window_s: window,
            deliveries_per_broker_cpu_s: if broker_cpu > 0.0 {
                received as f64 / broker_cpu
            } else {
                0.0
            },
            healthy: self.healthy(),
        }
    }

    /// Steps the rate up (doubling from `start_rate`) until a step is not sustainable, then
    /// bisects `bisect` times. Returns the best sustainable step and all steps.
    pub async fn find_max(
        &mut self,
        payload: usize,
        start_rate: f64,
        step: Duration,
        warmup: Duration,
        bisect: u32,
        cap: f64,
    ) -> (Option<PhaseResult>, Vec<PhaseResult>) {
        let mut steps = Vec::new();
        let mut best: Option<PhaseResult> = None;
        let mut fail: Option<f64> = None;
        let mut rate = start_rate;
        let mut downs = 0;
        loop {
            let r = self.step(rate, payload, step, warmup).await;
            let ok = r.sustainable();
            steps.push(r.clone());
            if ok {
                best = Some(r);
                if fail.is_some() || rate * 2.0 > cap {
                    break;
                }
                rate *= 2.0;
            } else {
                fail = Some(rate);
                // An overloaded broker holds a backlog that would spill into the next step:
                // reconnect (clean sessions), so that the broker drops it.
                self.ctl.broken.store(true, Ordering::Relaxed);
                if best.is_some() {
                    break;
                }
                downs += 1;
                if downs > 3 {
                    return (None, steps);
                }
                rate /= 2.0;
            }
        }
        if let (Some(hi), Some(b)) = (fail, best.as_ref()) {
            let (mut lo, mut hi) = (b.rate_target, hi);
            if hi > lo {
                for _ in 0..bisect {
                    let mid = (lo * hi).sqrt();
                    let r = self.step(mid, payload, step, warmup).await;
                    steps.push(r.clone());
                    if r.sustainable() {
                        best = Some(r);
                        lo = mid;
                    } else {
                        self.ctl.broken.store(true, Ordering::Relaxed);
                        hi = mid;
                    }
                }
            }
        }
        (best, steps)
    }

    async fn step(
        &mut self,
        rate: f64,
        payload: usize,
        step: Duration,
        warmup: Duration,
    ) -> PhaseResult {
        if !self.healthy()
            && let Err(e) = self.rebuild().await
        {
            eprintln!("  rebuild failed: {e}");
        }
        let r = self
            .run_phase(&PhaseSpec {
                rate,
                payload,
                duration: step,
                warmup,
            })
            .await;
        eprintln!(
            "    step {:>9.0}/s: delivered {:>9.0}/s lost {} p99 {:.0} us{}",
            rate,
            r.delivered_per_s,
            r.lost,
            r.p99_us,
            if r.sustainable() {
                ""
            } else {
                "  (not sustainable)"
            }
        );
        r
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.teardown();
    }
}

async fn subscriber(mut stream: Stream, stats: Arc<Mutex<SubStats>>, ctl: Arc<Ctl>) {
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut acks = Vec::with_capacity(4096);
    loop {
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(256 * 1024);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                ctl.broken.store(true, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
        }
        let phase = ctl.phase.load(Ordering::Relaxed);
        let warm = ctl.warm_ns.load(Ordering::Relaxed);
        let now = now_ns();
        let mut off = 0;
        let mut any = false;
        {
            let mut st = stats.lock().unwrap();
            while let Some((b1, hl, total)) = next_frame(&buf[off..]) {
                let frame = &buf[off..off + total];
                match b1 >> 4 {
                    3 => {
                        let (pid, payload) = publish_parts(frame, hl);
                        match (b1 >> 1) & 3 {
                            1 => ack(&mut acks, 0x40, pid),
                            2 => ack(&mut acks, 0x50, pid),
                            _ => {}
                        }
                        any = true;
                        if let Some(s) = Stamp::read(payload)
                            && s.phase == phase
                        {
                            st.received += 1;
                            if s.sent_ns >= warm {
                                st.hist.saturating_record(
                                    (now.saturating_sub(s.sent_ns) / 1000).max(1),
                                );
                            }
                        }
                    }
                    6 if total >= hl + 2 => {
                        let pid = u16::from_be_bytes([frame[hl], frame[hl + 1]]);
                        ack(&mut acks, 0x70, pid);
                    }
                    _ => {}
                }
                off += total;
            }
        }
        buf.advance(off);
        if any {
            ctl.last_rx_ns.store(now, Ordering::Relaxed);
        }
        if !acks.is_empty() {
            if stream.write_all(&acks).await.is_err() {
                ctl.broken.store(true, Ordering::Relaxed);
                return;
            }
            acks.clear();
        }
    }
}

/// Reads a publisher's acknowledgements: PUBACK and PUBCOMP free window slots; a PUBREC is
/// answered with PUBREL at once (Mosquitto routes a QoS 2 message only on PUBREL).
async fn publisher_acks(
    mut reader: ReadHalf,
    writer: Arc<tokio::sync::Mutex<WriteHalf>>,
    inflight: Arc<AtomicU32>,
    ctl: Arc<Ctl>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut rel = Vec::new();
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                ctl.broken.store(true, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
        }
        let mut off = 0;
        let mut freed = 0;
        while let Some((b1, hl, total)) = next_frame(&buf[off..]) {
            let frame = &buf[off..off + total];
            if total >= hl + 2 {
                let pid = u16::from_be_bytes([frame[hl], frame[hl + 1]]);
                match b1 >> 4 {
                    4 | 7 => freed += 1,
                    5 => ack(&mut rel, 0x62, pid),
                    _ => {}
                }
            }
            off += total;
        }
        buf.advance(off);
        if freed > 0 {
            inflight.fetch_sub(freed, Ordering::Relaxed);
        }
        if !rel.is_empty() {
            let mut w = writer.lock().await;
            if w.write_all(&rel).await.is_err() {
                ctl.broken.store(true, Ordering::Relaxed);
                return;
            }
            rel.clear();
        }
    }
}

async fn publisher_group(
    mut conns: Vec<PubConn>,
    mut rx: watch::Receiver<Option<Arc<PhaseCmd>>>,
    qos: QoS,
    ctl: Arc<Ctl>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let Some(cmd) = rx.borrow_and_update().clone() else {
            continue;
        };
        let templates: Vec<Template> = conns
            .iter()
            .map(|c| Template::new(&c.topic, qos, cmd.payload))
            .collect();
        let mut sent = vec![0u64; conns.len()];
        tokio::time::sleep_until(cmd.start.into()).await;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let done = now >= cmd.end;
            let t = (now.min(cmd.end) - cmd.start).as_secs_f64();
            for (i, c) in conns.iter_mut().enumerate() {
                let due =
                    ((cmd.rate_per_pub * t + c.offset).floor() as u64).saturating_sub(sent[i]);
                let mut n = due.min(MAX_PER_TICK);
                if qos != QoS::AtMostOnce {
                    let room = WINDOW.saturating_sub(c.inflight.load(Ordering::Relaxed));
                    n = n.min(room as u64);
                }
                if n == 0 {
                    continue;
                }
                buf.clear();
                let stamp_ns = now_ns();
                for _ in 0..n {
                    c.next_pid = c.next_pid.wrapping_add(1);
                    if c.next_pid == 0 {
                        c.next_pid = 1;
                    }
                    templates[i].stamp(
                        &mut buf,
                        c.next_pid,
                        &Stamp {
                            sent_ns: stamp_ns,
                            phase: cmd.id,
                            publisher: c.index,
                            seq: c.seq,
                        },
                    );
                    c.seq += 1;
                }
                if qos != QoS::AtMostOnce {
                    c.inflight.fetch_add(n as u32, Ordering::Relaxed);
                }
                sent[i] += n;
                let mut w = c.writer.lock().await;
                if w.write_all(&buf).await.is_err() {
                    ctl.broken.store(true, Ordering::Relaxed);
                }
            }
            if done {
                break;
            }
        }
        let _ = cmd.warm;
        cmd.sent.fetch_add(sent.iter().sum(), Ordering::SeqCst);
        cmd.done.fetch_add(1, Ordering::SeqCst);
    }
}
