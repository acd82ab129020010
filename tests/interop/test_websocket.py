"""MQTT over WebSocket against three client families: paho-mqtt (transport="websockets"),
MQTT.js (Debian's node-mqtt: its library and its `mqtt` command) and a real browser (headless
chromium running tests/interop/browser/mqtt-ws.html). Messages cross between WebSocket and TCP
clients both ways, MQTT 3.1.1 and 5.0, QoS 0, 1 and 2.

scripts/interop installs node-mqtt and chromium when they are missing; where one cannot be
found here anyway the tests that need it are skipped with the reason.
"""

import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from test_paho import PROTOCOLS, Conn

HERE = Path(__file__).resolve().parent
WAIT = 10.0
# Debian's node-mqtt keeps its modules (and those of its `mqtt` command) in /usr/share/nodejs.
NODE_ENV = {**os.environ, "NODE_PATH": "/usr/share/nodejs"}


def ws(broker, version, **kw):
    return Conn(broker, version, transport="websockets", **kw)


@pytest.mark.parametrize("version", PROTOCOLS)
@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("direction", ["ws-to-tcp", "tcp-to-ws", "ws-to-ws"])
def test_paho_over_websocket(broker, uid, version, qos, direction):
    topic = f"ws/{direction}/{uid}"
    sub_ws, pub_ws = {"ws-to-tcp": (False, True), "tcp-to-ws": (True, False),
                      "ws-to-ws": (True, True)}[direction]
    made = []
    try:
        sub = (ws if sub_ws else Conn)(broker, version, client_id=f"sub-{uid}")
        made.append(sub)
        sub.connect()
        assert sub.subscribe(topic, qos)[0].value == qos
        pub = (ws if pub_ws else Conn)(broker, version, client_id=f"pub-{uid}")
        made.append(pub)
        pub.connect()
        payloads = [f"{direction}-{version}-{qos}-{i}".encode() for i in range(20)]
        for p in payloads:
            pub.publish(topic, p, qos=qos)
        got = sub.get_n(len(payloads))
        assert [m.payload for m in got] == payloads
        assert all(m.qos == qos for m in got)
        pub.disconnect()
        sub.disconnect()
    finally:
        for c in made:
            c.close()


def test_paho_takeover_across_transports(broker, uid):
    """A TCP CONNECT takes over a WebSocket client's session (v5: 0x8E), and the session
    with its subscription goes on over TCP."""
    topic = f"ws/takeover/{uid}"
    first = ws(broker, "5.0", client_id=f"t-{uid}", clean=False, session_expiry=60)
    second = Conn(broker, "5.0", client_id=f"t-{uid}", clean=False, session_expiry=60)
    pub = Conn(broker, "5.0", client_id=f"p-{uid}")
    try:
        first.connect()
        first.subscribe(topic, 1)
        second.connect()
        assert second.session_present, "the WebSocket client's session moved to TCP"
        rc, _ = first.disconnects.get(timeout=WAIT)
        assert rc.value == 0x8E, rc
        pub.connect()
        pub.publish(topic, b"after takeover", qos=1)
        assert second.get().payload == b"after takeover"
    finally:
        for c in (first, second, pub):
            c.close()


def node_or_skip():
    if not shutil.which("node") or not Path("/usr/share/nodejs/mqtt").is_dir():
        pytest.skip("MQTT.js (Debian's node-mqtt) is not installed")


@pytest.mark.parametrize("version", ["4", "5"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mqttjs_over_websocket(broker, uid, version, qos):
    """MQTT.js: a WebSocket subscriber gets a TCP publisher's messages, and a TCP subscriber
    a WebSocket publisher's, in order."""
    node_or_skip()
    ws_url = f"ws://{broker.host}:{broker.ws_port}/mqtt"
    tcp_url = f"mqtt://{broker.host}:{broker.port}"
    for sub_url, pub_url in ((ws_url, tcp_url), (tcp_url, ws_url)):
        out = subprocess.run(
            ["node", str(HERE / "mqttjs_roundtrip.js"), sub_url, pub_url, version, str(qos), "10",
             f"js/{uid}/{version}/{qos}"],
            capture_output=True, text=True, timeout=30, env=NODE_ENV)
        assert out.returncode == 0, f"{sub_url} <- {pub_url}: {out.stdout}{out.stderr}"
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["granted"] == qos
        assert result["received"] == [f"m{i}" for i in range(10)]


def test_mqtt_command_over_websocket(broker, uid):
    """The README's example: Debian's `mqtt subscribe -l ws` gets `mqtt publish -C ws`."""
    node_or_skip()
    if not shutil.which("mqtt"):
        pytest.skip("no mqtt command")
    topic = f"cli/{uid}"
    common = ["-h", broker.host, "-p", str(broker.ws_port), "--path", "/mqtt", "-t", topic, "-q", "1"]
    sub = subprocess.Popen(["mqtt", "subscribe", "-l", "ws", "-v", *common],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=NODE_ENV)
    try:
        broker.wait_metric("brokk_subscriptions", "", lambda v: v >= 1, "the subscriber subscribed")
        pub = subprocess.run(["mqtt", "publish", "-C", "ws", *common, "-m", "from the command"],
                             capture_output=True, text=True, timeout=30, env=NODE_ENV)
        assert pub.returncode == 0, pub.stdout + pub.stderr
        line = sub.stdout.readline()
        assert line.strip() == f"{topic} from the command", line
    finally:
        sub.kill()
        sub.wait()


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class PageServer:
    """Serves tests/interop/browser over HTTP; GET /hold answers once the page has reported
    (GET /report), which holds the page's load event, and so chromium's --dump-dom, until
    the exchange is over."""

    def __init__(self):
        self.reported = threading.Event()
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(HERE / "browser"), **k)

            def log_message(self, *_):
                pass

            def do_GET(self):
                if self.path.startswith("/hold"):
                    outer.reported.wait(WAIT * 2)
                    self.send_response(204)
                    self.end_headers()
                elif self.path.startswith("/report"):
                    outer.reported.set()
                    self.send_response(204)
                    self.end_headers()
                else:
                    super().do_GET()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.reported.set()
        self.server.shutdown()
        self.server.server_close()


def test_browser_websocket(broker, uid, tmp_path):
    """Headless chromium: new WebSocket(url, "mqtt") gets the subprotocol echoed, CONNECT,
    SUBSCRIBE and a QoS 1 PUBLISH (the last two in one WebSocket message) are answered, and
    the message comes back to the page."""
    browser = chromium_binary()
    if browser is None:
        pytest.skip("no chromium (scripts/interop installs Debian's)")
    pages = PageServer()
    try:
        url = (f"http://127.0.0.1:{pages.port}/mqtt-ws.html?"
               f"url=ws://{broker.host}:{broker.ws_port}/mqtt&topic=browser/{uid}")
        out = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
            capture_output=True, text=True, timeout=60)
    finally:
        pages.close()
    dom = out.stdout
    assert "<title>OK</title>" in dom, f"the page says:\n{dom}\n{out.stderr[-2000:]}"
    assert '"open:mqtt"' in dom and '"payload:hello from the browser"' in dom, dom
    assert "browser-client" in broker.log()
