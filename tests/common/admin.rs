//! The brokk binary with its admin API, `brokk ctl`, and raw HTTP requests, for the control
//! plane's tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// `[admin]` on a free port: a test's configuration starts with it and adds keys below.
pub const ADMIN: &str = "[admin]\nbind = \"127.0.0.1:0\"\n";

/// A brokk process on free ports: MQTT, metrics and the admin API, found in its log.
pub struct Binary {
    child: Child,
    lines: Receiver<String>,
    pub mqtt: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: tempfile::TempDir,
}

fn addr_in(line: &str) -> SocketAddr {
    line.split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

impl Binary {
    /// Starts brokk on `sections` (TOML appended after the listener and metrics sections; it
    /// must hold an `[admin]` section, [`ADMIN`] or one with more keys). Sessions live in
    /// memory unless `sections` has a `[storage]` section.
    pub fn start(sections: &str) -> Binary {
        let dir = tempfile::tempdir().expect("tempdir");
        Binary::start_in(dir, sections)
    }

    /// [`Binary::start`] with files the test already put in `dir`.
    pub fn start_in(dir: tempfile::TempDir, sections: &str) -> Binary {
        let config = dir.path().join("broker.toml");
        let storage = if sections.contains("[storage]") {
            ""
        } else {
            "[storage]\nbackend = \"memory\"\n"
        };
        let text = format!(
            "[listeners.tcp]\nbind = \"127.0.0.1:0\"\n[metrics]\nbind = \"127.0.0.1:0\"\n{storage}{sections}"
        );
        std::fs::write(&config, text).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_brokk"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("brokk starts");
        // brokk logs on stderr.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut mqtt, mut admin, mut metrics) = (None, None, None);
        while mqtt.is_none() || admin.is_none() || metrics.is_none() {
            let line = lines
                .recv_timeout(WAIT)
                .expect("brokk logs its listeners, admin API and metrics");
            if line.contains("listener=tcp") {
                mqtt = Some(addr_in(&line));
            } else if line.contains("admin API listening") {
                admin = Some(addr_in(&line));
            } else if line.contains("metrics at /metrics") {
                metrics = Some(addr_in(&line));
            }
        }
        Binary {
            child,
            lines,
            mqtt: mqtt.expect("mqtt"),
            admin: admin.expect("admin"),
            metrics: metrics.expect("metrics"),
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// `brokk ctl --admin URL ARGS...`, with no token or URL from this process's environment.
    pub async fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_with(args, &[]).await
    }

    /// [`Binary::ctl`] with environment variables set.
    pub async fn ctl_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_brokk"));
        command
            .kill_on_drop(true)
            .arg("ctl")
            .arg("--admin")
            .arg(self.url())
            .args(args)
            .env_remove("BROKK_ADMIN_TOKEN")
            .env_remove("BROKK_ADMIN_URL")
            .envs(env.iter().copied());
        tokio::time::timeout(WAIT, command.output())
            .await
            .expect("brokk ctl in time")
            .expect("brokk ctl runs")
    }

    /// `brokk ctl --json ARGS...`, which must succeed; its JSON.
    pub async fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all).await;
        assert!(out.status.success(), "brokk ctl {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = http(self.metrics, "GET", "/metrics", None).await;
        super::metric_value(&body, series)
    }

    /// Waits until `series` reaches `value` (counted after the socket closes).
    pub async fn wait_metric(&self, series: &str, value: f64) -> f64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = self.metric(series).await;
            if now >= value || tokio::time::Instant::now() > deadline {
                return now;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The next log line containing `text` (earlier lines are skipped).
    pub fn wait_log(&self, text: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("brokk never logged {text:?}"));
            if line.contains(text) {
                return line;
            }
        }
    }
}

impl Binary {
    /// Kills the process (SIGKILL: nothing is flushed on the way out) and hands back its
    /// directory, for a restart on the same files.
    pub fn kill(mut self) -> tempfile::TempDir {
        let fresh = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, fresh)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request; the status and the body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, token).await;
    (status, body)
}

/// One HTTP/1.1 request; the status, the header block and the body.
pub async fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8(response).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head.to_string(), body.to_string())
}

/// The body of a successful GET as JSON.
pub async fn get_json(addr: SocketAddr, path: &str, token: Option<&str>) -> serde_json::Value {
    let (status, body) = http(addr, "GET", path, token).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Percent-encoding for a path segment or a query value, as `brokk ctl` does it.
pub fn enc(text: &str) -> String {
    brokk::ctl::encode(text)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}
