//! `brokk-bench suite`: every scenario against brokk (in memory, and with its durable store for
//! the QoS 1/2 rows), Mosquitto, rumqttd and NATS, interleaved, for several rounds; one table of
//! medians with the ratio brokk / Mosquitto. Any message lost fails the run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::brokers::{Broker, Kind, Settings, SyscallCounter};
use crate::conns;
use crate::load::{Load, LoadSpec, PhaseSpec, Scenario, qos_of};
use crate::procstat;

#[derive(clap::Args, Clone, Debug)]
pub struct SuiteOpts {
    /// Rounds; each round restarts both brokers and runs every scenario against both.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Broker on CPU 0 (taskset -c 0), generator on CPU 1: per-core comparison.
    #[arg(long)]
    pub pinned: bool,
    #[arg(long, default_value = "../target/release/brokk")]
    pub brokk_bin: PathBuf,
    /// The brokk binary predates `[storage]` and `[admin]` (comparisons with earlier commits):
    /// its config leaves both sections out (it had no store and no admin API).
    #[arg(long)]
    pub brokk_legacy_config: bool,
    #[arg(long, default_value = "mosquitto")]
    pub mosquitto_bin: String,
    /// rumqttd (`cargo install rumqttd`); skipped, with a note, if it cannot be started.
    #[arg(long, default_value = "rumqttd")]
    pub rumqttd_bin: String,
    /// nats-server (Debian `nats-server`); skipped, with a note, if it cannot be started.
    #[arg(long, default_value = "nats-server")]
    pub nats_bin: String,
    /// Only these brokers (brokk, brokk-disk, mosquitto, rumqttd, nats; comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Working directory for configs and broker logs.
    #[arg(long, default_value = "target/bench-run")]
    pub dir: PathBuf,
    /// Raw results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Clients per scenario (publishers, subscribers or pairs).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// The larger pairs scenario (0 = skip).
    #[arg(long, default_value_t = 1000)]
    pub large_pairs: usize,
    /// QoS levels.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub qos: Vec<u8>,
    /// Payload sizes of the fixed-rate latency runs.
    #[arg(long, value_delimiter = ',', default_value = "64,1024")]
    pub payloads: Vec<usize>,
    /// Payload sizes of the maximum-throughput search.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub max_payloads: Vec<usize>,
    /// Deliveries per second of the fixed-rate latency runs.
    #[arg(long, default_value_t = 20_000.0)]
    pub latency_rate: f64,
    #[arg(long, default_value_t = 1.5)]
    pub latency_secs: f64,
    #[arg(long, default_value_t = 1.0)]
    pub step_secs: f64,
    #[arg(long, default_value_t = 0.25)]
    pub warmup_secs: f64,
    #[arg(long, default_value_t = 1)]
    pub bisect: u32,
    #[arg(long, default_value_t = 25_000.0)]
    pub start_rate: f64,
    #[arg(long, default_value_t = 4_000_000.0)]
    pub max_rate: f64,
    /// Idle connections (stay well under the 20,000 open-files limit per process).
    #[arg(long, default_value_t = 5000)]
    pub idle: usize,
    #[arg(long, default_value_t = 20_000)]
    pub storm: usize,
    #[arg(long, default_value_t = 64)]
    pub storm_concurrency: usize,
    #[arg(long, default_value_t = 500)]
    pub takeover_ids: usize,
    #[arg(long, default_value_t = 10)]
    pub takeover_rounds: usize,
    /// Deliveries per second of the system-call count runs (QoS 0, 64 B); 0 = skip them.
    #[arg(long, default_value_t = 100_000.0)]
    pub syscall_rate: f64,
    /// Seconds of the fan-in flood (publishers as fast as the broker reads, QoS 0, 64 B, one
    /// wildcard subscriber); 0 = skip it.
    #[arg(long, default_value_t = 5.0)]
    pub flood_secs: f64,
    #[arg(long, default_value_t = 10)]
    pub flood_publishers: usize,
    /// PUBLISH packets per write in the flood.
    #[arg(long, default_value_t = 16)]
    pub flood_batch: usize,
    #[arg(long, default_value_t = 100_000)]
    pub queue_depth: usize,
    #[arg(long, default_value_t = 64)]
    pub inflight: u16,
}

struct Row {
    key: String,
    higher_better: bool,
}

#[derive(Default, Serialize)]
pub struct Record {
    pub round: usize,
    pub broker: String,
    pub what: String,
    pub result: serde_json::Value,
}

struct Table {
    rows: Vec<Row>,
    vals: HashMap<String, [Vec<f64>; Kind::ALL.len()]>,
    records: Vec<Record>,
    /// The brokers that ran, in column order.
    columns: Vec<Kind>,
    /// Every run that lost messages: the run fails.
    losses: Vec<String>,
}

fn idx(k: Kind) -> usize {
    k.idx()
}

impl Table {
    fn put(&mut self, key: &str, higher_better: bool, k: Kind, v: f64) {
        if !self.vals.contains_key(key) {
            self.rows.push(Row {
                key: key.to_string(),
                higher_better,
            });
            self.vals.insert(key.to_string(), Default::default());
        }
        self.vals.get_mut(key).unwrap()[idx(k)].push(v);
    }

    fn record<T: Serialize>(&mut self, round: usize, k: Kind, what: &str, r: &T) {
        self.records.push(Record {
            round,
            broker: k.name().to_string(),
            what: what.to_string(),
            result: serde_json::to_value(r).unwrap_or_default(),
        });
    }

    fn render(&self) -> String {
        let mut out = String::from("| figure |");
        for k in &self.columns {
            out.push_str(&format!(" {} |", k.name()));
        }
        out.push_str(" brokk / mosquitto |\n|---|");
        for _ in &self.columns {
            out.push_str("---:|");
        }
        out.push_str("---:|\n");
        for r in &self.rows {
            let v = &self.vals[&r.key];
            let b = median(&v[Kind::Brokk.idx()]);
            let m = median(&v[Kind::Mosquitto.idx()]);
            let ratio = match (b, m) {
                (Some(b), Some(m)) if m != 0.0 => format!("{:.2}", b / m),
                _ => "–".to_string(),
            };
            let mark = if r.higher_better { "↑" } else { "↓" };
            out.push_str(&format!("| {} {mark} |", r.key));
            for k in &self.columns {
                out.push_str(&format!(" {} |", fmt(median(&v[k.idx()]))));
            }
            out.push_str(&format!(" {ratio} |\n"));
        }
        out
    }
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x.abs() >= 100.0 => format!("{:.0}", x),
        Some(x) if x.abs() >= 10.0 => format!("{:.1}", x),
        Some(x) => format!("{:.2}", x),
    }
}

fn rate_label(r: f64) -> String {
    if r >= 1000.0 {
        format!("{}k/s", (r / 1000.0).round())
    } else {
        format!("{r}/s")
    }
}

pub async fn run(o: SuiteOpts) -> i32 {
    let started = Instant::now();
    let settings = Settings {
        brokk_bin: o.brokk_bin.clone(),
        brokk_legacy_config: o.brokk_legacy_config,
        mosquitto_bin: o.mosquitto_bin.clone(),
        rumqttd_bin: o.rumqttd_bin.clone(),
        nats_bin: o.nats_bin.clone(),
        dir: o.dir.clone(),
        pinned: o.pinned,
        queue_depth: o.queue_depth,
        inflight: o.inflight,
        brokk_queue_policy: None,
    };
    let mut kinds: Vec<Kind> = Kind::ALL.to_vec();
    if !o.only.is_empty() {
        kinds.retain(|k| o.only.iter().any(|n| n == k.name()));
    }
    // A peer that cannot be started is left out with the reason; brokk and Mosquitto must run.
    kinds.retain(|&k| match Broker::start(k, &settings) {
        Ok(mut b) => {
            b.stop();
            true
        }
        Err(e) if matches!(k, Kind::Rumqttd | Kind::Nats) => {
            eprintln!("{} left out: {e}", k.name());
            false
        }
        Err(_) => true,
    });
    let mut t = Table {
        rows: Vec::new(),
        vals: HashMap::new(),
        records: Vec::new(),
        columns: kinds.clone(),
        losses: Vec::new(),
    };
    let mut loads_seen = Vec::new();
    let mut best_rates: HashMap<String, f64> = HashMap::new();
    let mut scenarios = vec![
        (Scenario::FanIn, o.clients),
        (Scenario::FanOut, o.clients),
        (Scenario::Pairs, o.clients),
    ];
    if o.large_pairs > 0 {
        scenarios.push((Scenario::Pairs, o.large_pairs));
    }
    for round in 0..o.rounds {
        let mut order = kinds.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        eprintln!(
            "== round {} of {} (order: {:?}), load {}",
            round + 1,
            o.rounds,
            order,
            procstat::loadavg()
        );
        loads_seen.push(procstat::loadavg());
        let mut brokers: Vec<Broker> = Vec::new();
        for &k in &order {
            match Broker::start(k, &settings) {
                Ok(b) => brokers.push(b),
                Err(e) => {
                    eprintln!("cannot start {}: {e}", k.name());
                    return 2;
                }
            }
        }
        // Idle connections first, on fresh processes (freed memory would hide growth).
        for b in brokers.iter().filter(|b| b.kind.runs_connection_rows()) {
            eprintln!("  {} idle x{}", b.kind.name(), o.idle);
            match conns::idle(b.addr, o.idle, Some(b.pid), Duration::from_secs(1)).await {
                Ok(r) => {
                    t.put(
                        &format!(
                            "idle: resident memory per connection ({} conns, bytes)",
                            o.idle
                        ),
                        false,
                        b.kind,
                        r.bytes_per_connection,
                    );
                    t.record(round, b.kind, "idle", &r);
                }
                Err(e) => eprintln!("    idle failed: {e}"),
            }
        }
        for b in brokers.iter().filter(|b| b.kind.runs_connection_rows()) {
            eprintln!("  {} connection storm x{}", b.kind.name(), o.storm);
            let r = conns::storm(b.addr, o.storm, o.storm_concurrency, Some(b.pid)).await;
            eprintln!(
                "    {:.0} connects/s, CONNACK p99 {:.2} ms, errors {}",
                r.connects_per_s, r.connack_p99_ms, r.errors
            );
            t.put("storm: connects per second", true, b.kind, r.connects_per_s);
            t.put("storm: CONNACK p50 (ms)", false, b.kind, r.connack_p50_ms);
            t.put("storm: CONNACK p99 (ms)", false, b.kind, r.connack_p99_ms);
            t.put("storm: errors", false, b.kind, r.errors as f64);
            t.put(
                "storm: broker CPU-ms per connect",
                false,
                b.kind,
                r.broker_cpu_s * 1000.0 / r.connects.max(1) as f64,
            );
            t.record(round, b.kind, "storm", &r);
        }
        for b in brokers.iter().filter(|b| b.kind.runs_connection_rows()) {
            eprintln!(
                "  {} takeover storm {}x{}",
                b.kind.name(),
                o.takeover_ids,
                o.takeover_rounds
            );
            let r = conns::takeover(
                b.addr,
                o.takeover_ids,
                o.takeover_rounds,
                o.storm_concurrency,
                Some(b.pid),
            )
            .await;
            eprintln!(
                "    {:.0} takeovers/s, CONNACK p99 {:.2} ms, old closed {}/{}",
                r.takeovers_per_s, r.connack_p99_ms, r.old_closed, r.takeovers
            );
            t.put(
                "takeover: takeovers per second",
                true,
                b.kind,
                r.takeovers_per_s,
            );
            t.put(
                "takeover: CONNACK p99 (ms)",
                false,
                b.kind,
                r.connack_p99_ms,
            );
            t.put(
                "takeover: old connection closed (%)",
                true,
                b.kind,
                100.0 * r.old_closed as f64 / r.takeovers.max(1) as f64,
            );
            t.record(round, b.kind, "takeover", &r);
        }
        for &(scenario, clients) in &scenarios {
            for &q in &o.qos {
                for b in brokers.iter_mut().filter(|b| b.kind.runs_qos(q)) {
                    let name = format!("{}×{} q{}", scenario.label(), clients, q);
                    eprintln!("  {} {name}", b.kind.name());
                    let spec = LoadSpec {
                        scenario,
                        clients,
                        qos: qos_of(q),
                        persistent: false,
                    };
                    let mut load = match Load::setup(b.addr, Some(b.pid), spec).await {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("    setup failed: {e}");
                            continue;
                        }
                    };
                    for &payload in &o.payloads {
                        let r = load
                            .run_phase(&PhaseSpec {
                                rate: o.latency_rate,
                                payload,
                                duration: Duration::from_secs_f64(o.latency_secs),
                                warmup: Duration::from_secs_f64(o.warmup_secs),
                            })
                            .await;
                        eprintln!(
                            "    {payload} B @{}: p50 {:.0} p99 {:.0} p999 {:.0} us, lost {}",
                            rate_label(o.latency_rate),
                            r.p50_us,
                            r.p99_us,
                            r.p999_us,
                            r.lost
                        );
                        let key = format!("{name} {payload}B @{}", rate_label(o.latency_rate));
                        t.put(&format!("{key}: p50 (µs)"), false, b.kind, r.p50_us);
                        t.put(&format!("{key}: p99 (µs)"), false, b.kind, r.p99_us);
                        t.put(&format!("{key}: p999 (µs)"), false, b.kind, r.p999_us);
                        t.put(&format!("{key}: lost"), false, b.kind, r.lost as f64);
                        if r.lost > 0 {
                            t.losses.push(format!(
                                "{} {key}: {} of {} lost (round {})",
                                b.kind.name(),
                                r.lost,
                                r.sent,
                                round + 1
                            ));
                        }
                        t.record(round, b.kind, &key, &r);
                        if !load.healthy() {
                            let _ = load.rebuild().await;
                        }
                    }
                    for &payload in &o.max_payloads {
                        let key = format!("{name} {payload}B max");
                        let bk = format!("{key} {}", b.kind.name());
                        let start = best_rates.get(&bk).map(|r| r * 0.7).unwrap_or(o.start_rate);
                        let (best, steps) = load
                            .find_max(
                                payload,
                                start,
                                Duration::from_secs_f64(o.step_secs),
                                Duration::from_secs_f64(o.warmup_secs),
                                o.bisect,
                                o.max_rate,
                            )
                            .await;
                        let best = best.unwrap_or_default();
                        best_rates.insert(bk, best.rate_target.max(o.start_rate / 8.0));
                        eprintln!(
                            "    {payload} B max: {:.0} deliveries/s, {:.0} per broker CPU-s, broker CPU {:.0}%, generator CPU {:.0}%",
                            best.delivered_per_s,
                            best.deliveries_per_broker_cpu_s,
                            100.0 * best.broker_cpu_s / best.window_s.max(1e-9),
                            100.0 * best.gen_cpu_s / best.window_s.max(1e-9)
                        );
                        t.put(
                            &format!("{key}: sustainable deliveries/s"),
                            true,
                            b.kind,
                            best.delivered_per_s,
                        );
                        t.put(
                            &format!("{key}: deliveries per broker CPU-s"),
                            true,
                            b.kind,
                            best.deliveries_per_broker_cpu_s,
                        );
                        t.put(
                            &format!("{key}: p99 at that rate (µs)"),
                            false,
                            b.kind,
                            best.p99_us,
                        );
                        t.put(
                            &format!("{key}: broker CPU (%)"),
                            false,
                            b.kind,
                            100.0 * best.broker_cpu_s / best.window_s.max(1e-9),
                        );
                        t.put(
                            &format!("{key}: generator CPU (%)"),
                            false,
                            b.kind,
                            100.0 * best.gen_cpu_s / best.window_s.max(1e-9),
                        );
                        t.record(round, b.kind, &key, &steps);
                    }
                    drop(load);
                    if !b.alive() {
                        eprintln!("    {} died; restarting it", b.kind.name());
                        if let Ok(nb) = Broker::start(b.kind, &settings) {
                            *b = nb;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        for mut b in brokers {
            b.stop();
        }
    }
    // System calls per message, on fresh brokers, QoS 0, 64 B, at a fixed rate.
    if o.syscall_rate > 0.0 {
        eprintln!(
            "== system-call counts at {} (QoS 0, 64 B)",
            rate_label(o.syscall_rate)
        );
        for &k in kinds.iter().filter(|k| k.runs_connection_rows()) {
            let Ok(b) = Broker::start(k, &settings) else {
                continue;
            };
            for &(scenario, clients) in &scenarios[..3.min(scenarios.len())] {
                let spec = LoadSpec {
                    scenario,
                    clients,
                    qos: qos_of(0),
                    persistent: false,
                };
                let Ok(mut load) = Load::setup(b.addr, Some(b.pid), spec).await else {
                    continue;
                };
                // Warm the connections up, then count over one fixed run.
                let phase = PhaseSpec {
                    rate: o.syscall_rate,
                    payload: 64,
                    duration: Duration::from_secs(2),
                    warmup: Duration::from_millis(200),
                };
                let _ = load
                    .run_phase(&PhaseSpec {
                        duration: Duration::from_millis(500),
                        ..phase.clone()
                    })
                    .await;
                let Some(counter) = SyscallCounter::start(b.pid, &o.dir) else {
                    continue;
                };
                let method = counter.method();
                let r = load.run_phase(&phase).await;
                let Some(calls) = counter.finish() else {
                    eprintln!("    syscall count unavailable");
                    continue;
                };
                let per = calls as f64 / r.received.max(1) as f64;
                let per_in_out = calls as f64 / (r.received + r.sent).max(1) as f64;
                eprintln!(
                    "  {} {}×{}: {calls} system calls ({method}), {} delivered: {:.2} per delivery, {:.2} per message in or out",
                    k.name(),
                    scenario.label(),
                    clients,
                    r.received,
                    per,
                    per_in_out
                );
                let key = format!(
                    "{}×{} q0 64B @{}",
                    scenario.label(),
                    clients,
                    rate_label(o.syscall_rate)
                );
                t.put(
                    &format!("{key}: broker system calls per delivery"),
                    false,
                    k,
                    per,
                );
                t.put(
                    &format!("{key}: broker system calls per message in+out"),
                    false,
                    k,
                    per_in_out,
                );
                t.record(
                    0,
                    k,
                    &format!("{key} syscalls"),
                    &serde_json::json!({"calls": calls, "method": method, "phase": r}),
                );
            }
        }
    }
    // Fan-in flood, on fresh brokers: nothing paces the publishers.
    if o.flood_secs > 0.0 {
        eprintln!(
            "== fan-in flood: {} publishers, QoS 0, 64 B, {} per write, {} s",
            o.flood_publishers, o.flood_batch, o.flood_secs
        );
        let key = format!(
            "fan-in flood×{} q0 64B, {} per write",
            o.flood_publishers, o.flood_batch
        );
        // A subscriber that cannot keep up loses QoS 0 messages (counted) rather than its
        // session, as with Mosquitto's queue limit: the row compares forwarding, not policies.
        let flood_settings = Settings {
            brokk_queue_policy: Some("drop_oldest"),
            ..settings.clone()
        };
        for &k in kinds.iter().filter(|k| k.runs_connection_rows()) {
            let Ok(mut b) = Broker::start(k, &flood_settings) else {
                continue;
            };
            match crate::flood::flood(
                b.addr,
                Some(b.pid),
                o.flood_publishers,
                o.flood_batch,
                64,
                o.flood_secs,
            )
            .await
            {
                Ok(r) => {
                    eprintln!(
                        "  {} flood: sent {}, delivered {} ({:.0}/s), {:.0} per broker CPU-s",
                        k.name(),
                        r.sent,
                        r.received,
                        r.delivered_per_s,
                        r.deliveries_per_broker_cpu_s
                    );
                    t.put(
                        &format!("{key}: deliveries per broker CPU-s"),
                        true,
                        k,
                        r.deliveries_per_broker_cpu_s,
                    );
                    t.put(&format!("{key}: deliveries/s"), true, k, r.delivered_per_s);
                    t.put(
                        &format!("{key}: delivered of sent (%)"),
                        true,
                        k,
                        100.0 * r.received as f64 / r.sent.max(1) as f64,
                    );
                    t.put(
                        &format!("{key}: broker CPU (%)"),
                        false,
                        k,
                        100.0 * r.broker_cpu_s / r.window_s.max(1e-9),
                    );
                    t.record(0, k, &key, &r);
                }
                Err(e) => eprintln!("  {} flood failed: {e}", k.name()),
            }
            b.stop();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let table = t.render();
    println!(
        "\nbrokk-bench suite: {} round(s), {}, load average at round starts: {}; took {:.0} s\n",
        o.rounds,
        if o.pinned {
            "pinned (broker on CPU 0, generator on CPU 1)"
        } else {
            "unpinned (broker and generator share both CPUs)"
        },
        loads_seen.join(" / "),
        secs
    );
    println!("{table}");
    println!(
        "Medians over rounds. Rates are deliveries (messages received by subscribers) per second; ↑ higher is better, ↓ lower is better."
    );
    if let Some(path) = &o.json {
        let v = serde_json::json!({"options": format!("{o:?}"), "table": table, "records": t.records, "secs": secs});
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()) {
            eprintln!("cannot write {}: {e}", path.display());
        }
    }
    if !t.losses.is_empty() {
        println!("\nFAILED: messages were lost:");
        for loss in &t.losses {
            println!("- {loss}");
        }
        return 1;
    }
    0
}
