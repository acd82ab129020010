//! Prints the results under target/results as the Markdown tables of README.md.

use serde_json::Value;
use std::path::Path;

fn load(dir: &Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mib(b: f64) -> String {
    format!("{:.0}", b / (1 << 20) as f64)
}

pub fn print(dir: &Path) {
    if let Some(p) = load(dir, "fsync-probe") {
        println!("fdatasync of 4 KiB (ms, p50 / p99) per round:\n");
        for r in p.as_array().into_iter().flatten() {
            let a = &r["append_4k_fdatasync_ms"];
            let o = &r["overwrite_4k_fdatasync_ms"];
            println!(
                "- append {:.2} / {:.2}, overwrite {:.2} / {:.2}",
                f(&a[0]),
                f(&a[1]),
                f(&o[0]),
                f(&o[1])
            );
        }
        println!();
    }
    if let Some(t) = load(dir, "throughput") {
        throughput(t.as_array().map(Vec::as_slice).unwrap_or(&[]));
    }
    if let Some(r) = load(dir, "recovery") {
        recovery(r.as_array().map(Vec::as_slice).unwrap_or(&[]));
    }
    if let Some(c) = load(dir, "crash") {
        println!(
            "| store | kills | store as acknowledged | in-flight batch found | open after kill, max |"
        );
        println!("|---|---|---|---|---|");
        for r in c.as_array().into_iter().flatten() {
            println!(
                "| {} | {} | {} | {} | {:.0} ms |",
                s(&r["engine"]),
                r["trials"],
                r["ok"],
                r["inflight_batch_present"],
                f(&r["open_ms_max"])
            );
        }
        println!();
    }
    if let Some(c) = load(dir, "corrupt") {
        for r in c.as_array().into_iter().flatten() {
            let check = if r["check_integrity"] == Value::Bool(true) {
                " (integrity check on open)"
            } else {
                ""
            };
            println!(
                "{}{check}: {} of {} flips: {}",
                s(&r["engine"]),
                r["trials"],
                r["trials"],
                r["outcomes"]
            );
            println!("  by file: {}", r["by_file"]);
            for (k, v) in r["examples"].as_object().into_iter().flatten() {
                println!("  e.g. {k}: {}", s(v));
            }
        }
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn s(v: &Value) -> String {
    v.as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| v.to_string())
}

fn throughput(rows: &[Value]) {
    println!(
        "| store | batch | msgs/s median (min-max) | fsyncs/s | commit p50 / p99 ms | ack p50 / p99 ms \
         | written B/msg | CPU us/msg | RSS MiB | disk MiB | threads |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut keys: Vec<(String, u64)> = Vec::new();
    for r in rows {
        let k = (s(&r["engine"]), r["batch"].as_u64().unwrap_or(0));
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.sort_by_key(|k| k.1);
    for (e, b) in keys {
        let runs: Vec<&Value> = rows
            .iter()
            .filter(|r| s(&r["engine"]) == e && r["batch"].as_u64() == Some(b))
            .collect();
        let m = |k: &str| median(runs.iter().map(|r| f(&r[k])).collect());
        let all: Vec<f64> = runs.iter().map(|r| f(&r["messages_per_s"])).collect();
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = all.iter().copied().fold(0.0, f64::max);
        println!(
            "| {e} | {b} | {:.0} ({lo:.0}-{hi:.0}) | {:.0} | {:.2} / {:.1} | {:.2} / {:.1} | {:.0} | {:.0} | {} | {} | {} |",
            m("messages_per_s"),
            m("commits_per_s"),
            m("commit_p50_ms"),
            m("commit_p99_ms"),
            m("ack_p50_ms"),
            m("ack_p99_ms"),
            m("written_bytes_per_msg"),
            m("cpu_us_per_msg"),
            mib(m("rss_bytes")),
            mib(m("disk_bytes")),
            m("store_threads"),
        );
    }
    println!();
}

fn recovery(rows: &[Value]) {
    println!(
        "| store | fill | on disk (B/msg) | journal MiB | open after kill -9 (cold) | + index | open clean (cold) \
         | + index | warm: open / + index / + all payloads | RSS after index / all MiB | resume ms/session cold / warm |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let k = &r["after_kill"];
        let c = &r["clean_cold"];
        let w = &r["clean_warm_full"];
        println!(
            "| {} | {:.1} s | {:.0} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} / {:.2} / {:.2} s | {} / {} | {:.2} / {:.2} |",
            s(&r["engine"]),
            f(&r["fill"]["fill_secs"]),
            f(&r["fill"]["disk_bytes_per_msg"]),
            mib(f(&r["fill"]["journal_bytes"])),
            f(&k["open_secs"]),
            f(&k["index_secs"]),
            f(&c["open_secs"]),
            f(&c["index_secs"]),
            f(&w["open_secs"]),
            f(&w["index_secs"]),
            f(&w["full_secs"]),
            mib(f(&c["rss_index_bytes"])),
            mib(f(&w["rss_full_bytes"])),
            f(&c["resume_ms_per_session"]),
            f(&w["resume_ms_per_session"]),
        );
        if let Some(q) = r.get("after_kill_quickrepair") {
            println!(
                "| {} (last commit with quick repair) | | | | {:.2} s | {:.2} s | | | | | |",
                s(&r["engine"]),
                f(&q["open_secs"]),
                f(&q["index_secs"])
            );
        }
    }
    println!();
}
