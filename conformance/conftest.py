"""Fixtures: a brokk release binary on free ports, one broker per test.

`broker` is a broker on the default limits; `make_broker(limits={...}, session={...})` starts
one with overrides of `[limits]` / `[session]` keys. Teardown sends SIGTERM and asserts exit
code 0 within 10 s.
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BROKK_BIN", os.path.join(ROOT, "target", "release", "brokk"))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return '"%s"' % v


class Broker:
    def __init__(self, limits=None, session=None, auth=None):
        self.port = free_port()
        self.metrics_port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="brokk-conf-")
        self.config = os.path.join(self.dir.name, "broker.toml")
        lines = [
            "[listeners.tcp]",
            'bind = "127.0.0.1:%d"' % self.port,
            "[metrics]",
            'bind = "127.0.0.1:%d"' % self.metrics_port,
            "[admin]",
            'bind = "127.0.0.1:0"',
            "[storage]",
            'path = "%s"' % os.path.join(self.dir.name, "store"),
        ]
        limits = dict({"shutdown_drain": "300ms"}, **(limits or {}))
        for section, values in (("limits", limits), ("session", session), ("auth", auth)):
            if values:
                lines.append("[%s]" % section)
                lines += ["%s = %s" % (k, _toml_value(v)) for k, v in values.items()]
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log = open(os.path.join(self.dir.name, "brokk.log"), "w+")
        self.proc = subprocess.Popen([BIN, "--config", self.config],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("brokk exited early (%s): %s" % (self.proc.returncode, self.logs()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                self.ready_at = time.monotonic()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("brokk did not listen on %d in time" % self.port)

    def logs(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def metrics(self):
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=3) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.decode()

    def wait_metric(self, series, value, timeout=5.0):
        """Polls GET /metrics until the line `series value` appears (e.g. a session is parked)."""
        deadline = time.monotonic() + timeout
        want = "%s %s" % (series, value)
        while time.monotonic() < deadline:
            if any(line.strip() == want for line in self.metrics().splitlines()):
                return
            time.sleep(0.02)
        raise AssertionError("metric %r never showed up" % want)

    def stop(self):
        # brokk binds its listeners before it installs its SIGTERM handler: a SIGTERM in that
        # window kills it with the default action (exit -15). Give it a moment after readiness.
        young = 0.25 - (time.monotonic() - self.ready_at)
        if young > 0:
            time.sleep(young)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("brokk did not exit within 10 s of SIGTERM")
        self.log.close()
        self.dir.cleanup()
        assert code == 0, "brokk exited with %s" % code


@pytest.fixture
def make_broker():
    started = []

    def factory(limits=None, session=None, auth=None):
        b = Broker(limits, session, auth)
        started.append(b)
        return b

    yield factory
    for b in started:
        b.stop()


@pytest.fixture
def broker(make_broker):
    return make_broker()


@pytest.fixture
def port(broker):
    return broker.port
