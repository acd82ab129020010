//! The brokk binary as a child process: its stderr (where it logs) read line by line, its
//! listeners found from the "listening" lines, SIGTERM to stop it. For tests of what an
//! operator sees: exit codes, log lines, start-up checks.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use super::WAIT;

pub const BIN: &str = env!("CARGO_BIN_EXE_brokk");

/// Runs the binary to completion (for `--check-config`, `passwd`, failed starts). The test
/// process's `RUST_LOG` does not leak in.
pub fn run<I, S>(args: I, envs: &[(&str, &str)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        // In memory unless a test says otherwise: no store in the working directory.
        .env("BROKK_STORAGE__BACKEND", "memory")
        // The admin API on a free port: tests run side by side.
        .env("BROKK_ADMIN__BIND", "127.0.0.1:0")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("brokk runs")
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub struct BrokkProcess {
    child: Child,
    lines: Receiver<String>,
    stdout: tempfile::NamedTempFile,
    /// Every stderr line read so far.
    pub seen: Vec<String>,
}

impl BrokkProcess {
    /// Starts `brokk ARGS` with `envs` (on top of the test's environment minus `RUST_LOG`).
    pub fn start<I, S>(args: I, envs: &[(&str, &str)]) -> BrokkProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let stdout = tempfile::NamedTempFile::new().expect("tempfile");
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .env("BROKK_STORAGE__BACKEND", "memory")
            // The admin API on a free port: tests run side by side.
            .env("BROKK_ADMIN__BIND", "127.0.0.1:0")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout.reopen().expect("reopen"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("brokk starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        BrokkProcess {
            child,
            lines,
            stdout,
            seen: Vec::new(),
        }
    }

    /// The first line (seen or to come) for which `want` holds; panics with everything seen
    /// after `WAIT`, or when brokk's stderr ends first.
    pub fn wait_line(&mut self, want: impl Fn(&str) -> bool) -> String {
        self.wait_line_within(WAIT, want)
    }

    /// [`BrokkProcess::wait_line`] with another limit than `WAIT`.
    pub fn wait_line_within(
        &mut self,
        limit: std::time::Duration,
        want: impl Fn(&str) -> bool,
    ) -> String {
        if let Some(line) = self.seen.iter().find(|line| want(line)) {
            return line.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no such line within {limit:?}; brokk said:\n{}", self.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("brokk's stderr ended; it said:\n{}", self.log())
                }
            }
        }
    }

    /// The address of listener `name`, from its "listening" line.
    pub fn listener(&mut self, name: &str) -> SocketAddr {
        let tag = format!("listener={name} ");
        let line = self.wait_line(|line| line.contains("listening") && line.contains(&tag));
        field(&line, "addr")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads what brokk logged so far without waiting.
    pub fn drain_lines(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// What brokk wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.stdout.path()).expect("read stdout")
    }

    pub fn log(&self) -> String {
        self.seen.join("\n")
    }

    /// SIGTERM, then the exit status (brokk drains and exits 0).
    pub fn stop(mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        // Keep draining stderr so brokk never blocks on a full pipe while stopping.
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            self.seen.push(line);
        }
        self.child.wait().expect("wait")
    }
}

impl Drop for BrokkProcess {
    fn drop(&mut self) {
        // A failing test must not leave a broker behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `key=value` in a text log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split_whitespace().next()
}
