//! Damage: a cleanly closed store of BATCHES batches (no acknowledgements, so every batch stays),
//! copied, one random byte of one file flipped, then opened and read in full by a child process.
//! Outcomes: the open fails (refused), a read fails (detected), the child panics, aborts or hangs,
//! data differs or is missing without any error (silent), or nothing changed (the byte was not in
//! use, or was repaired).

use crate::crash;
use crate::engine::{self, Engine};
use crate::util::{self, Pool, Rng};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub const BATCHES: u64 = 2500;

/// Child: builds the pristine store. fjall gets its first half flushed into table files and the
/// second half left in the journal, so that both kinds of file are hit.
pub fn build(engine: Engine, dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let mut store = engine::open(engine, dir, engine::OpenOptions::default()).expect("open");
    let pool = Pool::new(9);
    for k in 1..=BATCHES {
        store
            .commit(&crash::batch_ops(&pool, k, false), true)
            .expect("commit");
        if k == BATCHES / 2 {
            store.flush().expect("flush");
        }
    }
}

/// Child: opens the (damaged) store and reads everything.
pub fn check(engine: Engine, dir: &Path, check_integrity: bool) {
    let opts = engine::OpenOptions {
        check_integrity,
        ..Default::default()
    };
    let store = match engine::open(engine, dir, opts) {
        Ok(s) => s,
        Err(e) => {
            println!("{}", json!({"outcome": "refused", "error": e}));
            return;
        }
    };
    let res = crash::last_batch(store.as_ref())
        .and_then(|last| Ok((last, crash::compare(store.as_ref(), 1, BATCHES)?)));
    let out = match res {
        Err(e) => json!({"outcome": "detected", "error": e}),
        Ok((last, m)) if last == BATCHES && m.missing + m.wrong + m.extra == 0 => {
            json!({"outcome": "unchanged"})
        }
        Ok((last, m)) => json!({
            "outcome": "silent", "last": last,
            "missing": m.missing, "wrong": m.wrong, "extra": m.extra,
        }),
    };
    println!("{out}");
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    for (p, _) in util::files(from) {
        let rel = p.strip_prefix(from).expect("under");
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&p, &dst).expect("copy");
    }
}

/// A file's kind for the summary: its name with digits dropped (`tables/12` -> `tables/#`).
fn kind(rel: &Path) -> String {
    let s = rel.display().to_string();
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parent: `trials` single-byte flips; returns outcome counts, overall and per file kind.
pub fn run(engine: Engine, dir: &Path, trials: u32, check_integrity: bool) -> serde_json::Value {
    let pristine = dir.join("pristine");
    let exe_args = |cmd: &str, d: &Path| {
        vec![
            cmd.to_string(),
            engine.name().into(),
            d.display().to_string(),
        ]
    };
    let b = util::run_self(
        &exe_args("corrupt-build", &pristine),
        Duration::from_secs(600),
    );
    assert_eq!(b.code, Some(0), "build failed: {}", b.stderr);
    // What a flip can hit: each file up to its last non-zero byte (fjall preallocates its
    // journal, redb its regions; a flip in never-written zeros only says that they are unused).
    let files: Vec<_> = util::files(&pristine)
        .into_iter()
        .map(|(p, _)| {
            let bytes = std::fs::read(&p).expect("read");
            let used = bytes
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| i as u64 + 1);
            (p, used)
        })
        .collect();
    let layout: Vec<_> = util::files(&pristine)
        .iter()
        .map(|(p, n)| {
            json!([
                p.strip_prefix(&pristine)
                    .expect("under")
                    .display()
                    .to_string(),
                n
            ])
        })
        .collect();
    let total: u64 = files.iter().map(|f| f.1).sum();
    let mut rng = Rng(1234);
    let mut outcomes: BTreeMap<String, u32> = BTreeMap::new();
    let mut by_kind: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    let mut examples: BTreeMap<String, String> = BTreeMap::new();
    let trial_dir = dir.join("trial");
    for t in 0..trials {
        copy_dir(&pristine, &trial_dir);
        // Even trials: any used byte (files weighted by used size); odd: any file, equally likely.
        let (path, len) = if t % 2 == 0 {
            let mut at = rng.below(total);
            files
                .iter()
                .find(|f| {
                    if at < f.1 {
                        true
                    } else {
                        at -= f.1;
                        false
                    }
                })
                .expect("file")
        } else {
            let nonempty: Vec<_> = files.iter().filter(|f| f.1 > 0).collect();
            nonempty[rng.below(nonempty.len() as u64) as usize]
        };
        let rel = path.strip_prefix(&pristine).expect("under");
        let target = trial_dir.join(rel);
        let mut bytes = std::fs::read(&target).expect("read");
        let off = rng.below(*len) as usize;
        bytes[off] ^= 1 << rng.below(8);
        std::fs::write(&target, &bytes).expect("write");
        let mut args = exe_args("corrupt-check", &trial_dir);
        if check_integrity {
            args.push("--check-integrity".into());
        }
        let out = util::run_self(&args, Duration::from_secs(60));
        let (outcome, detail) = classify(&out);
        *outcomes.entry(outcome.clone()).or_default() += 1;
        *by_kind
            .entry(kind(rel))
            .or_default()
            .entry(outcome.clone())
            .or_default() += 1;
        examples
            .entry(outcome)
            .or_insert(format!("{} @{off}: {detail}", rel.display()));
    }
    let _ = std::fs::remove_dir_all(dir);
    json!({
        "engine": engine.name(), "check_integrity": check_integrity, "trials": trials,
        "outcomes": outcomes, "by_file": by_kind, "examples": examples, "layout": layout,
    })
}

fn classify(out: &util::ChildOut) -> (String, String) {
    if out.timed_out {
        return ("hang".into(), String::new());
    }
    if out.stderr.contains("panicked") {
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains("panicked"))
            .unwrap_or("");
        let next = out
            .stderr
            .lines()
            .skip_while(|l| !l.contains("panicked"))
            .nth(1)
            .unwrap_or("");
        return ("panic".into(), format!("{line} {next}"));
    }
    match util::last_json(out) {
        Some(v) => {
            let o = v["outcome"].as_str().unwrap_or("?").to_string();
            (o, v.to_string())
        }
        None => (
            format!("exit {:?}", out.code),
            out.stderr.chars().take(300).collect(),
        ),
    }
}
