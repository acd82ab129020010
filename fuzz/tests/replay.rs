//! Replays the seed corpus and every saved regression input through the targets without
//! libFuzzer (`cargo test` in `fuzz/`), and keeps the committed seeds in step with
//! `src/seeds.rs` (`BROKK_FUZZ_WRITE_SEEDS=1 cargo test` rewrites them).

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 6] = [
    ("decode", brokk_fuzz::decode_target),
    ("framing", brokk_fuzz::framing_target),
    ("connection", brokk_fuzz::connection::connection_target),
    ("router", brokk_fuzz::router::router_target),
    (
        "store_format",
        brokk_fuzz::store_format::store_format_target,
    ),
    ("websocket", brokk_fuzz::websocket::websocket_target),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn seeds_are_current() {
    let write = std::env::var_os("BROKK_FUZZ_WRITE_SEEDS").is_some();
    for (target, name, bytes) in brokk_fuzz::seeds::all() {
        let path = root()
            .join("corpus")
            .join(target)
            .join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
            std::fs::write(&path, &bytes).expect("write seed");
        } else {
            let on_disk = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (BROKK_FUZZ_WRITE_SEEDS=1)", path.display()));
            assert_eq!(on_disk, bytes, "{} is stale", path.display());
        }
    }
}

#[test]
fn seeds_pass() {
    for (target, name, bytes) in brokk_fuzz::seeds::all() {
        let (_, run) = TARGETS.iter().find(|(t, _)| *t == target).expect("target");
        eprintln!("{target}: seed-{name}");
        run(&bytes);
    }
}

#[test]
fn regressions_pass() {
    for (target, run) in TARGETS {
        for path in files(&root().join("regressions").join(target)) {
            eprintln!("{target}: {}", path.display());
            run(&std::fs::read(&path).expect("read regression input"));
        }
    }
}
