//! brokk-bench: an MQTT load generator for brokk (and, side by side, Mosquitto).
//! See bench/README.md.

mod brokers;
mod client;
mod conns;
mod flood;
mod load;
mod procstat;
mod suite;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use load::{Load, LoadSpec, PhaseSpec, Scenario, qos_of};

#[derive(Parser)]
#[command(
    name = "brokk-bench",
    about = "MQTT 3.1.1 load generator: latency, throughput, connection storms"
)]
struct Cli {
    /// Generator worker threads (default: 2, or 1 with --pin-generator).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Pin the generator to CPU 1 (the suite's --pinned does this too).
    #[arg(long, global = true)]
    pin_generator: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Target {
    #[arg(long, default_value = "127.0.0.1:1883")]
    addr: SocketAddr,
    /// The broker's pid: its CPU time and resident memory are read from /proc.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// MQTT over WebSocket: every client upgrades to ws://ADDR/PATH first (`addr` is then
    /// the broker's WebSocket listener).
    #[arg(long)]
    ws_path: Option<String>,
    /// Subscribers connect here instead of `addr` (another node of a brokk cluster).
    #[arg(long)]
    sub_addr: Option<SocketAddr>,
    /// More broker processes whose CPU time counts (the other nodes of a cluster).
    #[arg(long)]
    also_pid: Vec<u32>,
}

impl Target {
    async fn load(&self, spec: LoadSpec) -> client::Res<Load> {
        let mut pids: Vec<u32> = self.broker_pid.into_iter().collect();
        pids.extend(&self.also_pid);
        Load::setup_split(self.addr, self.sub_addr.unwrap_or(self.addr), pids, spec).await
    }
}

#[derive(clap::Args, Clone)]
struct LoadArgs {
    #[arg(long, value_enum, default_value = "pairs")]
    scenario: Scenario,
    #[arg(long, default_value_t = 100)]
    clients: usize,
    #[arg(long, default_value_t = 0)]
    qos: u8,
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Subscribers keep their sessions (clean session 0): what a durable store stores.
    #[arg(long)]
    persistent: bool,
}

// Parsed once per run: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// One fixed-rate run: latency percentiles, sent/received/lost, broker CPU.
    Load {
        #[command(flatten)]
        t: Target,
        #[command(flatten)]
        l: LoadArgs,
        /// Deliveries per second (all subscribers together).
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
    },
    /// Steps the rate up until delivery < 99.9% or p99 > 10 ms.
    Max {
        #[command(flatten)]
        t: Target,
        #[command(flatten)]
        l: LoadArgs,
        #[arg(long, default_value_t = 25_000.0)]
        start: f64,
        #[arg(long, default_value_t = 2.0)]
        step_secs: f64,
        #[arg(long, default_value_t = 2)]
        bisect: u32,
    },
    /// Connection storm: connects per second and CONNACK latency.
    Storm {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value_t = 20_000)]
        total: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Idle connections: the broker's resident memory per connection.
    Idle {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        /// Keep them open this many seconds before measuring.
        #[arg(long, default_value_t = 1.0)]
        hold: f64,
    },
    /// Takeover storm: the same client ids connect again and again while connected.
    Takeover {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value_t = 500)]
        ids: usize,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Connects in progress at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Fills a durable store: persistent sessions, then QoS 1 messages queued for them.
    Fill {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value_t = 100_000)]
        sessions: usize,
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
    /// CI smoke: a few seconds of fan-out and pairs at QoS 0 and 1; exits 1 if anything is lost.
    Smoke {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
    },
    /// Everything against brokk and Mosquitto, interleaved, several rounds; one table.
    Suite(suite::SuiteOpts),
}

fn main() {
    let cli = Cli::parse();
    let pin = cli.pin_generator || matches!(&cli.cmd, Cmd::Suite(o) if o.pinned);
    if pin && !procstat::pin_self(1) {
        eprintln!("warning: could not pin the generator to CPU 1");
    }
    let threads = cli.threads.unwrap_or(if pin { 1 } else { 2 });
    client::epoch();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(run(cli.cmd));
    rt.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}

fn json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap());
}

async fn run(cmd: Cmd) -> i32 {
    let target = match &cmd {
        Cmd::Load { t, .. }
        | Cmd::Max { t, .. }
        | Cmd::Storm { t, .. }
        | Cmd::Idle { t, .. }
        | Cmd::Takeover { t, .. }
        | Cmd::Fill { t, .. }
        | Cmd::Smoke { t, .. } => Some(t),
        Cmd::Suite(_) => None,
    };
    if let Some(path) = target.and_then(|t| t.ws_path.clone()) {
        client::use_websocket(path);
    }
    match cmd {
        Cmd::Load {
            t,
            l,
            rate,
            secs,
            warmup,
        } => {
            let spec = LoadSpec {
                scenario: l.scenario,
                clients: l.clients,
                qos: qos_of(l.qos),
                persistent: l.persistent,
            };
            let mut load = match t.load(spec).await {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("setup: {e}");
                    return 2;
                }
            };
            let r = load
                .run_phase(&PhaseSpec {
                    rate,
                    payload: l.payload,
                    duration: Duration::from_secs_f64(secs),
                    warmup: Duration::from_secs_f64(warmup),
                })
                .await;
            json(&r);
            0
        }
        Cmd::Max {
            t,
            l,
            start,
            step_secs,
            bisect,
        } => {
            let spec = LoadSpec {
                scenario: l.scenario,
                clients: l.clients,
                qos: qos_of(l.qos),
                persistent: l.persistent,
            };
            let mut load = match t.load(spec).await {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("setup: {e}");
                    return 2;
                }
            };
            let (best, steps) = load
                .find_max(
                    l.payload,
                    start,
                    Duration::from_secs_f64(step_secs),
                    Duration::from_millis(300),
                    bisect,
                    8e6,
                )
                .await;
            json(&serde_json::json!({"best": best, "steps": steps}));
            0
        }
        Cmd::Storm {
            t,
            total,
            concurrency,
        } => {
            json(&conns::storm(t.addr, total, concurrency, t.broker_pid).await);
            0
        }
        Cmd::Idle {
            t,
            connections,
            hold,
        } => {
            match conns::idle(
                t.addr,
                connections,
                t.broker_pid,
                Duration::from_secs_f64(hold),
            )
            .await
            {
                Ok(r) => {
                    json(&r);
                    0
                }
                Err(e) => {
                    eprintln!("idle: {e}");
                    2
                }
            }
        }
        Cmd::Takeover {
            t,
            ids,
            rounds,
            concurrency,
        } => {
            json(&conns::takeover(t.addr, ids, rounds, concurrency, t.broker_pid).await);
            0
        }
        Cmd::Fill {
            t,
            sessions,
            messages,
            payload,
        } => match conns::fill(t.addr, sessions, messages, payload).await {
            Ok(result) => {
                json(&result);
                0
            }
            Err(error) => {
                eprintln!("fill: {error}");
                1
            }
        },
        Cmd::Smoke { t, secs, rate } => smoke(t, secs, rate).await,
        Cmd::Suite(o) => suite::run(o).await,
    }
}

async fn smoke(t: Target, secs: f64, rate: f64) -> i32 {
    let mut failed = 0;
    for (scenario, clients) in [(Scenario::FanOut, 50), (Scenario::Pairs, 100)] {
        for q in [0u8, 1] {
            let spec = LoadSpec {
                scenario,
                clients,
                qos: qos_of(q),
                persistent: false,
            };
            let mut load = match t.load(spec).await {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("FAIL {}×{clients} q{q}: setup: {e}", scenario.label());
                    failed += 1;
                    continue;
                }
            };
            let r = load
                .run_phase(&PhaseSpec {
                    rate,
                    payload: 64,
                    duration: Duration::from_secs_f64(secs),
                    warmup: Duration::from_millis(200),
                })
                .await;
            let ok = r.healthy && r.lost == 0 && r.received == r.expected && r.sent > 0;
            println!(
                "{} {}×{clients} q{q}: sent {} expected {} received {} lost {} p50 {:.0} µs p99 {:.0} µs p999 {:.0} µs broker CPU {:.2} s",
                if ok { "ok  " } else { "FAIL" },
                scenario.label(),
                r.sent,
                r.expected,
                r.received,
                r.lost,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.broker_cpu_s
            );
            if !ok {
                failed += 1;
            }
        }
    }
    if failed > 0 { 1 } else { 0 }
}
