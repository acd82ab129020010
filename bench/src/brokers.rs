//! Starting brokk, Mosquitto, rumqttd and NATS (its MQTT support) side by side on free
//! loopback ports with equivalent settings.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Brokk,
    /// brokk with its durable store, `sync = "always"`: a QoS 1/2 PUBLISH is acknowledged
    /// once on disk. Runs the QoS 1 and 2 scenario rows only.
    BrokkDisk,
    Mosquitto,
    Rumqttd,
    /// nats-server's MQTT support (JetStream stores QoS 1 sessions; no QoS 2).
    Nats,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Brokk,
        Kind::BrokkDisk,
        Kind::Mosquitto,
        Kind::Rumqttd,
        Kind::Nats,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Brokk => "brokk",
            Kind::BrokkDisk => "brokk-disk",
            Kind::Mosquitto => "mosquitto",
            Kind::Rumqttd => "rumqttd",
            Kind::Nats => "nats",
        }
    }

    /// Its column in the table.
    pub fn idx(self) -> usize {
        Kind::ALL.iter().position(|&k| k == self).unwrap_or(0)
    }

    /// Whether it runs the scenarios at this QoS.
    pub fn runs_qos(self, qos: u8) -> bool {
        match self {
            Kind::BrokkDisk => qos >= 1,
            Kind::Nats => qos <= 1,
            _ => true,
        }
    }

    /// Whether it runs the connection rows (idle, storm, takeover) and the system-call counts.
    pub fn runs_connection_rows(self) -> bool {
        !matches!(self, Kind::BrokkDisk)
    }
}

#[derive(Clone)]
pub struct Settings {
    pub brokk_bin: PathBuf,
    /// Leave `[storage]` and `[admin]` out of brokk's config (binaries older than both).
    pub brokk_legacy_config: bool,
    pub mosquitto_bin: String,
    pub rumqttd_bin: String,
    pub nats_bin: String,
    pub dir: PathBuf,
    /// `taskset -c 0` for the broker.
    pub pinned: bool,
    pub queue_depth: usize,
    pub inflight: u16,
    /// brokk's `limits.queue_full_policy` (default `disconnect`); the flood uses `drop_oldest`,
    /// which drops (and counts) QoS 0 messages for a subscriber that cannot keep up, as
    /// Mosquitto does.
    pub brokk_queue_policy: Option<&'static str>,
}

pub struct Broker {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl Broker {
    pub fn start(kind: Kind, s: &Settings) -> Result<Broker, String> {
        std::fs::create_dir_all(&s.dir).map_err(|e| e.to_string())?;
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let (program, args, log) = match kind {
            Kind::Brokk => {
                let conf = s.dir.join("brokk.toml");
                let recent = if s.brokk_legacy_config {
                    ""
                } else {
                    "[storage]\nbackend = \"memory\"\n\n[admin]\nenabled = false\n\n"
                };
                write(
                    &conf,
                    &format!(
                        "[listeners.tcp]\nbind = \"127.0.0.1:{port}\"\n\n[metrics]\nenabled = false\n\n\
                         {recent}[limits]\nmax_connections = 1000000\nreceive_maximum = {inf}\nmax_inflight = {inf}\n\
                         max_queue_depth = {q}\nmax_queue_depth_disconnected = {q}\n{policy}",
                        inf = s.inflight,
                        q = s.queue_depth,
                        policy = s
                            .brokk_queue_policy
                            .map(|p| format!("queue_full_policy = \"{p}\"\n"))
                            .unwrap_or_default(),
                    ),
                );
                (
                    s.brokk_bin.display().to_string(),
                    vec!["--config".to_string(), conf.display().to_string()],
                    s.dir.join("brokk.log"),
                )
            }
            Kind::Mosquitto => {
                let conf = s.dir.join("mosquitto.conf");
                write(
                    &conf,
                    &format!(
                        "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n\
                         persistence false\nmax_queued_messages {q}\nmax_inflight_messages {inf}\n\
                         max_connections -1\nconnection_messages false\nlog_dest stderr\n\
                         log_type error\nlog_type warning\n",
                        inf = s.inflight,
                        q = s.queue_depth
                    ),
                );
                (
                    s.mosquitto_bin.clone(),
                    vec!["-c".to_string(), conf.display().to_string()],
                    s.dir.join("mosquitto.log"),
                )
            }
            Kind::BrokkDisk => {
                let conf = s.dir.join("brokk-disk.toml");
                let data = s.dir.join(format!("brokk-disk-data-{port}"));
                let _ = std::fs::remove_dir_all(&data);
                write(
                    &conf,
                    &format!(
                        "[listeners.tcp]\nbind = \"127.0.0.1:{port}\"\n\n[metrics]\nenabled = false\n\n\
                         [storage]\nbackend = \"disk\"\npath = \"{data}\"\nsync = \"always\"\n\n\
                         [admin]\nenabled = false\n\n\
                         [limits]\nmax_connections = 1000000\nreceive_maximum = {inf}\nmax_inflight = {inf}\n\
                         max_queue_depth = {q}\nmax_queue_depth_disconnected = {q}\n",
                        data = data.display(),
                        inf = s.inflight,
                        q = s.queue_depth
                    ),
                );
                (
                    s.brokk_bin.display().to_string(),
                    vec!["--config".to_string(), conf.display().to_string()],
                    s.dir.join("brokk-disk.log"),
                )
            }
            Kind::Rumqttd => {
                // rumqttd 0.20 (`cargo install rumqttd`): a v4 (MQTT 3.1.1) listener. It waits
                // `next_connection_delay_ms` after every accept (1 ms in its sample config):
                // 0 here, or storms would measure that pause.
                let conf = s.dir.join("rumqttd.toml");
                write(
                    &conf,
                    &format!(
                        "id = 0\n\n[router]\nid = 0\nmax_connections = 100000\n\
                         max_outgoing_packet_count = {q}\nmax_segment_size = 104857600\n\
                         max_segment_count = 10\n\n\
                         [v4.1]\nname = \"v4-1\"\nlisten = \"127.0.0.1:{port}\"\nnext_connection_delay_ms = 0\n\
                         [v4.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 1048576\n\
                         max_inflight_count = {inf}\ndynamic_filters = true\n",
                        inf = s.inflight,
                        q = s.queue_depth
                    ),
                );
                (
                    s.rumqttd_bin.clone(),
                    vec![
                        "--quiet".to_string(),
                        "-c".to_string(),
                        conf.display().to_string(),
                    ],
                    s.dir.join("rumqttd.log"),
                )
            }
            Kind::Nats => {
                // nats-server's MQTT support needs JetStream and a server name; QoS 1
                // subscriptions are JetStream consumers, `max_ack_pending` their in-flight window.
                let conf = s.dir.join("nats.conf");
                let store = s.dir.join(format!("nats-store-{port}"));
                let _ = std::fs::remove_dir_all(&store);
                write(
                    &conf,
                    &format!(
                        "server_name: bench\nlisten: 127.0.0.1:{nats_port}\nmax_connections: 1000000\n\
                         jetstream {{\n  store_dir: \"{store}\"\n}}\n\
                         mqtt {{\n  listen: 127.0.0.1:{port}\n  max_ack_pending: {inf}\n}}\n",
                        nats_port = free_port(),
                        store = store.display(),
                        inf = s.inflight,
                    ),
                );
                (
                    s.nats_bin.clone(),
                    vec!["-c".to_string(), conf.display().to_string()],
                    s.dir.join("nats.log"),
                )
            }
        };
        let logf = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = if s.pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", &program]);
            c
        } else {
            Command::new(&program)
        };
        cmd.args(&args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().map_err(|e| e.to_string())?)
            .stderr(logf);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let pid = child.id();
        let mut b = Broker {
            kind,
            addr,
            pid,
            child,
        };
        let t0 = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(b);
            }
            if let Ok(Some(status)) = b.child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("{} exited ({status}): {text}", kind.name()));
            }
            if t0.elapsed() > Duration::from_secs(10) {
                b.stop();
                return Err(format!("{} did not listen on {addr}", kind.name()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.alive() {
            self.stop();
        }
    }
}

/// System calls the process makes while `run` runs: `perf stat -e raw_syscalls:sys_enter`
/// (a kernel tracepoint counter: no slowdown), or `strace -c -f` if perf cannot.
pub struct SyscallCounter {
    child: Child,
    out: PathBuf,
    perf: bool,
}

impl SyscallCounter {
    pub fn start(pid: u32, dir: &Path) -> Option<SyscallCounter> {
        let out = dir.join(format!("syscalls-{pid}.txt"));
        let perf_ok = Command::new("perf")
            .args(["stat", "-e", "raw_syscalls:sys_enter", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let child = if perf_ok {
            Command::new("perf")
                .args([
                    "stat",
                    "-x",
                    ",",
                    "-e",
                    "raw_syscalls:sys_enter",
                    "-p",
                    &pid.to_string(),
                    "-o",
                ])
                .arg(&out)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?
        } else {
            Command::new("strace")
                .args(["-c", "-f", "-p", &pid.to_string(), "-o"])
                .arg(&out)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?
        };
        std::thread::sleep(Duration::from_millis(300));
        Some(SyscallCounter {
            child,
            out,
            perf: perf_ok,
        })
    }

    pub fn method(&self) -> &'static str {
        if self.perf {
            "perf raw_syscalls:sys_enter"
        } else {
            "strace -c -f"
        }
    }

    /// Stops counting (SIGINT) and returns the number of system calls.
    pub fn finish(mut self) -> Option<u64> {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).ok()?;
        if self.perf {
            text.lines()
                .find(|l| l.contains("raw_syscalls:sys_enter"))
                .and_then(|l| l.split(',').next())
                .and_then(|n| n.trim().parse().ok())
        } else {
            // The "total" line: % time, seconds, usecs/call, calls, errors, "total".
            text.lines()
                .find(|l| l.trim_end().ends_with("total"))
                .and_then(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.get(3).and_then(|n| n.parse().ok())
                })
        }
    }
}
