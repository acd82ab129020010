"""Fixtures for the interoperability tests: a brokk broker on free loopback ports.

The broker binary is `$BROKK_BIN` when set, else `target/debug/brokk` at the repository root.
Each test gets a fresh broker (it starts in a few milliseconds), so no retained message,
session or subscription leaks from one test into another.
"""

import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BROKK_BIN = Path(os.environ.get("BROKK_BIN", REPO / "target" / "debug" / "brokk"))
STARTUP_DEADLINE = 10.0
# Every broker runs with this acl_file (Mosquitto's syntax), as Paho's interoperability
# broker does: anything goes, except `test/nosubscribe` (its test_subscribe_failure).
ACL = "topic readwrite #\ntopic deny test/nosubscribe\n"
SHUTDOWN_DEADLINE = 10.0


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free at the moment we return)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, proc: subprocess.Popen, deadline: float) -> None:
    end = time.monotonic() + deadline
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"brokk exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > end:
                raise RuntimeError(f"brokk did not listen on {host}:{port} within {deadline}s")
            time.sleep(0.02)


class Broker:
    def __init__(self, host, port, metrics_port, proc, log_path, ws_port):
        self.host = host
        self.port = port
        self.metrics_port = metrics_port
        # MQTT over WebSocket: ws://host:ws_port/mqtt
        self.ws_port = ws_port
        self.proc = proc
        self.log_path = log_path

    # The fixture yields (host, port, metrics_port); let it be unpacked like a tuple too.
    def __iter__(self):
        return iter((self.host, self.port, self.metrics_port))

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of the broker's Prometheus metrics, e.g. metric("brokk_sessions",
        'state="connected"'); 0 when the sample is absent."""
        url = f"http://{self.host}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        want = name + (("{" + labels + "}") if labels else "")
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == want:
                return float(value)
        return 0.0

    def wait_metric(self, name: str, labels: str, pred, what: str, deadline: float = 10.0) -> float:
        """Poll a metric until pred(value) holds; fail with `what` after the deadline."""
        end = time.monotonic() + deadline
        while True:
            v = self.metric(name, labels)
            if pred(v):
                return v
            if time.monotonic() > end:
                pytest.fail(f"{what}: {name}{{{labels}}} stayed at {v}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _start_broker(tmp_path: Path, attempts: int = 3) -> Broker:
    if not BROKK_BIN.exists():
        pytest.fail(f"brokk binary not found at {BROKK_BIN} (run `cargo build --bin brokk` or set BROKK_BIN)")
    last_error = None
    for attempt in range(attempts):
        host = "127.0.0.1"
        port, metrics_port, ws_port = free_port(), free_port(), free_port()
        while len({port, metrics_port, ws_port}) < 3:
            metrics_port, ws_port = free_port(), free_port()
        config = tmp_path / f"broker-{attempt}.toml"
        acl = tmp_path / "acl"
        acl.write_text(ACL)
        config.write_text(
            f'[listeners.tcp]\nbind = "{host}:{port}"\n\n'
            f'[listeners.ws]\nbind = "{host}:{ws_port}"\nwebsocket = {{ path = "/mqtt" }}\n\n'
            f'[metrics]\nenabled = true\nbind = "{host}:{metrics_port}"\n\n'
            '[admin]\nbind = "127.0.0.1:0"\n\n'
            '[limits]\nconnect_timeout = "5s"\n\n'
            f'[storage]\npath = "{tmp_path / f"store-{attempt}"}"\n\n'
            f'[auth]\nacl_file = "{acl}"\n'
        )
        log_path = tmp_path / f"brokk-{attempt}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [str(BROKK_BIN), "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1", "RUST_LOG": os.environ.get("RUST_LOG", "info")},
        )
        log.close()
        try:
            wait_for_port(host, port, proc, STARTUP_DEADLINE)
            wait_for_port(host, ws_port, proc, STARTUP_DEADLINE)
            return Broker(host, port, metrics_port, proc, log_path, ws_port)
        except RuntimeError as e:
            # Another process may have taken one of the ports between free_port() and bind.
            last_error = f"{e}\n--- brokk output ---\n{log_path.read_text(errors='replace')}"
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    pytest.fail(f"could not start brokk: {last_error}")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def broker(request, tmp_path):
    """A running brokk; yields a Broker that unpacks as (host, port, metrics_port).

    On teardown sends SIGTERM and asserts the broker exits 0 within 10 s. The broker's
    output is printed when the test (or the shutdown) failed.
    """
    b = _start_broker(tmp_path)
    try:
        yield b
    finally:
        failed = False
        problem = None
        if b.proc.poll() is None:
            b.proc.send_signal(signal.SIGTERM)
            try:
                code = b.proc.wait(timeout=SHUTDOWN_DEADLINE)
            except subprocess.TimeoutExpired:
                b.proc.kill()
                b.proc.wait()
                code = None
                problem = f"brokk did not exit within {SHUTDOWN_DEADLINE}s of SIGTERM (killed)"
        else:
            code = b.proc.returncode
            problem = f"brokk died during the test with code {code}"
        if problem is None and code != 0:
            problem = f"brokk exited with code {code} after SIGTERM (expected 0)"
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            failed = True
        if failed or problem:
            print(f"\n--- brokk output ({b.log_path}) ---\n{b.log()}--- end of brokk output ---")
        if problem:
            pytest.fail(problem)


@pytest.fixture
def uid():
    """A short unique suffix for topics and client ids."""
    return uuid.uuid4().hex[:10]
