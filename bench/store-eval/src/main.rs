//! store-eval: fjall and redb on brokk's session-store write pattern. See README.md.
//!
//!   store-eval all [throughput] [recovery] [crash] [corrupt]   everything (or those parts)
//!   store-eval report                                          the results as Markdown tables
//!   store-eval crash STORE TRIALS                              kill -9 trials for one store
//!   store-eval corrupt STORE TRIALS [--check-integrity]        byte-flip trials for one store
//!
//! Everything else is a child process the parts start (each figure from a fresh process).

mod corrupt;
mod crash;
mod engine;
mod recovery;
mod report;
mod throughput;
mod util;

use engine::Engine;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target")
}

fn engine(s: &str) -> Engine {
    Engine::parse(s).unwrap_or_else(|| panic!("unknown engine {s}"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match a(0) {
        "all" => all(&args[1..]),
        "report" => report::print(&root().join("results")),
        "throughput" => {
            let p = throughput::Params {
                engine: engine(a(1)),
                batch: a(2).parse().expect("batch"),
                warmup: Duration::from_secs_f64(a(3).parse().expect("warmup")),
                measure: Duration::from_secs_f64(a(4).parse().expect("measure")),
            };
            println!("{}", throughput::run(&p, Path::new(a(5))));
        }
        "fill" => println!("{}", recovery::fill(engine(a(1)), Path::new(a(2)))),
        "recover" => {
            println!(
                "{}",
                recovery::recover(engine(a(1)), Path::new(a(2)), a(3) == "--payloads")
            )
        }
        "hold" => recovery::hold(engine(a(1)), Path::new(a(2))),
        "crash" => {
            let dir = root().join("data").join(format!("crash-{}", a(1)));
            println!(
                "{}",
                crash::run(engine(a(1)), &dir, a(2).parse().expect("trials"))
            );
        }
        "corrupt" => {
            let dir = root().join("data").join(format!("corrupt-{}", a(1)));
            let check = a(3) == "--check-integrity";
            println!(
                "{}",
                corrupt::run(engine(a(1)), &dir, a(2).parse().expect("trials"), check)
            );
        }
        "crash-writer" => crash::writer(engine(a(1)), Path::new(a(2))),
        "crash-verify" => crash::verify(engine(a(1)), Path::new(a(2)), a(3).parse().expect("k")),
        "corrupt-build" => corrupt::build(engine(a(1)), Path::new(a(2))),
        "corrupt-check" => {
            corrupt::check(engine(a(1)), Path::new(a(2)), a(3) == "--check-integrity")
        }
        _ => {
            eprintln!(
                "usage: store-eval all [throughput] [recovery] [crash] [corrupt] | report \
                 | crash STORE TRIALS | corrupt STORE TRIALS [--check-integrity]"
            );
            std::process::exit(2);
        }
    }
}

fn all(parts: &[String]) {
    let want = |p: &str| parts.is_empty() || parts.iter().any(|x| x == p);
    let results = root().join("results");
    std::fs::create_dir_all(&results).expect("results dir");
    let data = root().join("data");
    let save = |name: &str, v: &serde_json::Value| {
        let path = results.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(v).expect("json")).expect("write");
        eprintln!("{name}: {v}");
    };
    if want("throughput") {
        // Rounds, each engine once per batch size and round, the order rotated per round: the
        // machine is shared and its disk's speed varies, so the report takes medians.
        let engines = [
            "fjall",
            "fjall-syncdata",
            "fjall-small",
            "redb",
            "redb-quickrepair",
        ];
        let (mut rows, mut probes) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let [append, overwrite] = util::fsync_probe(&data);
            probes.push(
                json!({"round": round, "append_4k_fdatasync_ms": [append.0, append.1],
                               "overwrite_4k_fdatasync_ms": [overwrite.0, overwrite.1]}),
            );
            for batch in [1usize, 16, 256] {
                for i in 0..engines.len() {
                    let e = engines[(i + round) % engines.len()];
                    let mut v = throughput_child(e, batch, &data);
                    v["round"] = json!(round);
                    eprintln!("{v}");
                    rows.push(v);
                }
            }
        }
        save("fsync-probe", &json!(probes));
        save("throughput", &json!(rows));
    }
    if want("recovery") {
        let mut rows = Vec::new();
        for e in ["fjall", "fjall-small", "redb"] {
            rows.push(recovery_run(engine(e), &data.join(format!("rec-{e}"))));
            save("recovery", &json!(rows));
        }
    }
    if want("crash") {
        let mut rows = Vec::new();
        for e in ["fjall", "redb", "redb-quickrepair"] {
            let v = crash::run(engine(e), &data.join(format!("crash-{e}")), 30);
            eprintln!("{v}");
            rows.push(v);
        }
        save("crash", &json!(rows));
    }
    if want("corrupt") {
        let mut rows = Vec::new();
        for (e, check) in [("fjall", false), ("redb", false), ("redb", true)] {
            let v = corrupt::run(engine(e), &data.join(format!("corrupt-{e}")), 200, check);
            eprintln!("{v}");
            rows.push(v);
        }
        save("corrupt", &json!(rows));
    }
}

/// Throughput rounds; each run is 2 s of warm-up and 10 s measured.
const ROUNDS: usize = 3;

fn throughput_child(e: &str, batch: usize, data: &Path) -> serde_json::Value {
    let dir = data.join(format!("tp-{e}-{batch}"));
    let args: Vec<String> = ["throughput", e, &batch.to_string(), "2", "10"]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.display().to_string()])
        .collect();
    let out = util::run_self(&args, Duration::from_secs(300));
    let _ = std::fs::remove_dir_all(&dir);
    util::last_json(&out)
        .unwrap_or_else(|| json!({"engine": e, "batch": batch, "error": out.stderr}))
}

/// Drops the page cache so that the next open reads from the disk; false where not permitted.
fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn child(args: &[&str], timeout_s: u64) -> serde_json::Value {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = util::run_self(&args, Duration::from_secs(timeout_s));
    util::last_json(&out).unwrap_or_else(|| json!({"error": out.stderr, "code": out.code}))
}

/// Starts `hold` (open, one durable commit), and kills it with SIGKILL once it has committed.
fn kill_while_open(e: &str, dir: &str) {
    let exe = std::env::current_exe().expect("exe");
    let mut c = Command::new(exe)
        .args(["hold", e, dir])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn hold");
    let mut line = String::new();
    let _ = BufReader::new(c.stdout.take().expect("stdout")).read_line(&mut line);
    assert_eq!(line.trim(), "ready", "hold did not commit");
    c.kill().expect("SIGKILL");
    c.wait().expect("wait");
}

fn recovery_run(e: Engine, dir: &Path) -> serde_json::Value {
    let d = dir.display().to_string();
    let name = e.name();
    let fill = child(&["fill", name, &d], 3600);
    eprintln!("fill: {fill}");
    // First a kill -9 of a process that has the freshly filled store open (fjall then replays
    // the journal the fill left, redb repairs), then clean restarts, cold and warm.
    kill_while_open(name, &d);
    let cold = drop_caches();
    let killed = child(&["recover", name, &d], 3600);
    drop_caches();
    let clean_cold = child(&["recover", name, &d], 600);
    let clean_warm = child(&["recover", name, &d, "--payloads"], 600);
    let mut v = json!({
        "engine": name, "cold_cache": cold, "fill": fill,
        "clean_cold": clean_cold, "clean_warm_full": clean_warm, "after_kill": killed,
    });
    if e == Engine::Redb {
        kill_while_open("redb-quickrepair", &d);
        drop_caches();
        v["after_kill_quickrepair"] = child(&["recover", name, &d], 3600);
    }
    let _ = std::fs::remove_dir_all(dir);
    eprintln!("recovery: {v}");
    v
}
