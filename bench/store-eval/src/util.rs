//! Shared pieces: a seeded generator, key encodings, payloads, process figures, children.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// SplitMix64: deterministic, so a verifier can regenerate what a writer wrote.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A payload length between 64 B and 4 KiB, log-uniform (mean about 970 B).
    pub fn payload_len(&mut self) -> usize {
        (64.0 * 2f64.powf(6.0 * self.unit())) as usize
    }
}

pub fn session_key(session: u64) -> Vec<u8> {
    session.to_be_bytes().to_vec()
}

pub fn queue_key(session: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&session.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn msg_key(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

pub fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Random (incompressible) bytes that payloads are cut from.
pub struct Pool(Vec<u8>);

impl Pool {
    pub fn new(seed: u64) -> Pool {
        let mut rng = Rng(seed);
        Pool((0..(1 << 20) + 4096).map(|_| rng.next() as u8).collect())
    }
    pub fn payload(&self, rng: &mut Rng) -> Vec<u8> {
        let len = rng.payload_len();
        let off = rng.below(1 << 20) as usize;
        self.0[off..off + len].to_vec()
    }
}

/// A session record of brokk's size (client id, subscriptions, deadlines): about 120 B.
pub fn session_meta(session: u64) -> Vec<u8> {
    let mut v = format!("client-{session:010}/sensors/{session}/#").into_bytes();
    v.resize(120, b'.');
    v
}

fn proc_status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Resident set size now, bytes.
pub fn rss() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

/// Peak resident set size, bytes.
pub fn rss_peak() -> u64 {
    proc_status_kb("VmHWM:") * 1024
}

/// Bytes this process caused to be written to the block layer (all threads).
pub fn io_write_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("write_bytes:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// CPU time of this process so far (user + system, all threads), seconds.
pub fn cpu_secs() -> f64 {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Threads of this process.
pub fn threads() -> u64 {
    proc_status_kb("Threads:")
}

/// Every file under `dir` with its size (apparent), sorted by path.
pub fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) => out.push((p, m.len())),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// Disk blocks in use under `dir`, bytes (what `du` says).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    files(dir)
        .iter()
        .filter_map(|(p, _)| std::fs::metadata(p).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// A finished child: exit status (None = killed by the timeout), stdout, stderr.
pub struct ChildOut {
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs this binary with `args`, killing it after `timeout`.
pub fn run_self(args: &[String], timeout: Duration) -> ChildOut {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    ChildOut {
        code: status.code(),
        timed_out,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// The last line of a child's stdout parsed as JSON.
pub fn last_json(out: &ChildOut) -> Option<serde_json::Value> {
    out.stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

/// The device's own cost of a durable 4 KiB write, in milliseconds (p50, p99) over 1,000 each:
/// appending to a file (the size changes, so the file system's journal commits too) and
/// overwriting a block of a file written before (data only, as in a preallocated log).
pub fn fsync_probe(dir: &Path) -> [(f64, f64); 2] {
    use std::io::{Seek, SeekFrom, Write};
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join("probe");
    let block = vec![7u8; 4096];
    let mut out = [(0.0, 0.0); 2];
    for (i, overwrite) in [false, true].into_iter().enumerate() {
        let mut f = std::fs::File::create(&path).expect("create");
        if overwrite {
            for _ in 0..1000 {
                f.write_all(&block).expect("write");
            }
            f.sync_all().expect("fsync");
            f.seek(SeekFrom::Start(0)).expect("seek");
        }
        let mut took = Vec::new();
        for _ in 0..1000 {
            let t = Instant::now();
            f.write_all(&block).expect("write");
            f.sync_data().expect("fdatasync");
            took.push(t.elapsed());
        }
        took.sort();
        out[i] = (percentile(&took, 0.5), percentile(&took, 0.99));
    }
    let _ = std::fs::remove_file(&path);
    out
}
