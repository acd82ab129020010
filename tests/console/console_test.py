#!/usr/bin/env python3
"""The web console in headless Chromium against a running brokk.

Drives Debian's `chromium` over the DevTools protocol (websocket-client) through every page:
a wrong token is refused and the page says so; the right one logs in; the overview shows the
connected clients; a client started with mosquitto_sub is found on the sessions page, kicked
(with the confirmation) and its `closed_by_controller` close appears, explained, in the close
history; a user is revoked (its client closed with `revoked`) and restored; in the live topic
viewer, connected over brokk's WebSocket listener, a message published by mosquitto_pub
arrives and one published from its form reaches mosquitto_sub. Screenshots of each page go to target/console-screenshots/.

Run by scripts/console-test (which makes the venv and finds the binaries); environment:
BROKK_BIN, CHROMIUM, SCREENSHOTS.
"""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import websocket  # websocket-client

REPO = Path(__file__).resolve().parents[2]
BROKK = os.environ.get("BROKK_BIN", str(REPO / "target" / "debug" / "brokk"))
CHROMIUM = os.environ.get("CHROMIUM", "chromium")
SHOTS = Path(os.environ.get("SCREENSHOTS", REPO / "target" / "console-screenshots"))
TOKEN = "console-test-token-7f3a9c2e1b"
WAIT = 15.0

processes = []


def spawn(args, **kwargs):
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kwargs)
    processes.append(proc)
    return proc


def stop_all():
    for proc in reversed(processes):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in reversed(processes):
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(what, check, timeout=WAIT, interval=0.1):
    """Polls check() until it returns something truthy; fails naming `what` at the deadline."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(interval)


def log_addr(log_path, pattern):
    """The address a brokk log line names (ports are 0 in the configuration)."""
    def find():
        text = Path(log_path).read_text(errors="replace")
        m = re.search(pattern + r".*?addr=(\S+)", text)
        return m.group(1) if m else None
    return wait_until(f"log line {pattern!r}", find)


def api(admin, path):
    """A GET on the admin API with the token; {} on a 404."""
    request = urllib.request.Request(f"http://{admin}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return {}
        raise


class Browser:
    """One page of a headless Chromium, over the DevTools protocol."""

    def __init__(self, profile):
        self.proc = spawn(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={profile}",
             "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(profile) / "DevToolsActivePort"
        port = wait_until("Chromium's DevToolsActivePort", lambda: port_file.exists() and port_file.read_text().split("\n")[0])
        targets = wait_until("a page target", lambda: [
            t for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5))
            if t["type"] == "page"])
        self.ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=WAIT, suppress_origin=True)
        self.next_id = 0
        self.errors = []
        self.call("Runtime.enable")
        self.call("Page.enable")

    def call(self, method, **params):
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})
            if message.get("method") == "Runtime.exceptionThrown":
                self.errors.append(message["params"]["exceptionDetails"].get("exception", {}).get("description", "?"))
            if message.get("method") == "Runtime.consoleAPICalled" and message["params"]["type"] == "error":
                self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in message["params"]["args"]))

    def eval(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, what, expression, timeout=WAIT):
        """Polls `expression` until truthy (a throw, as while the page loads, counts as not yet)."""
        guarded = (f"(() => {{ try {{ const v = ({expression}); return v instanceof Node ? true : v; }} "
                   f"catch (e) {{ return null; }} }})()")
        return wait_until(what, lambda: self.eval(guarded), timeout)

    def goto(self, url):
        self.call("Page.navigate", url=url)

    def text(self, selector):
        return self.eval(f"document.querySelector({json.dumps(selector)})?.innerText ?? null")

    def fill(self, form, values):
        """Sets the named fields of `form` and submits it."""
        js = f"""(() => {{
          const form = document.querySelector({json.dumps(form)});
          for (const [name, value] of Object.entries({json.dumps(values)})) {{
            const field = form.elements[name];
            if (field.type === "checkbox") field.checked = value; else field.value = value;
          }}
          form.requestSubmit();
          return true;
        }})()"""
        assert self.eval(js)

    def click(self, selector):
        assert self.eval(f"(() => {{ const el = document.querySelector({json.dumps(selector)}); if (!el) return false; el.click(); return true; }})()"), f"no {selector}"

    def confirm(self, expect):
        """Answers the confirmation dialog with its OK button after checking its text."""
        text = self.wait("the confirmation dialog", "document.querySelector('#confirm').open && document.querySelector('#confirm-text').textContent")
        assert expect in text, f"the confirmation says {text!r}"
        self.click("#confirm-ok")

    def screenshot(self, name):
        # Lets fonts and layout settle: two animation frames.
        self.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")
        shown = self.eval("document.querySelector('main').innerText")
        assert not re.search(r"\b(null|undefined|NaN)\b|\[object ", shown), f"{name}: a value leaked as text:\n{shown}"
        data = self.call("Page.captureScreenshot", format="png")["data"]
        SHOTS.mkdir(parents=True, exist_ok=True)
        (SHOTS / f"{name}.png").write_bytes(base64.b64decode(data))

    def viewport(self, width, height, mobile):
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)


def main():
    started = time.monotonic()
    shutil.rmtree(SHOTS, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix="brokk-console-"))
    try:
        run(tmp)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"console: PASSED in {time.monotonic() - started:.1f}s; screenshots in {SHOTS}")


def run(tmp):
    for tool in ("mosquitto_sub", "mosquitto_pub"):
        assert shutil.which(tool), f"{tool} is missing (apt-get install mosquitto-clients)"
    (tmp / "token").write_text(TOKEN + "\n")
    passwd = tmp / "passwd"
    for user in ("alice", "bob"):
        subprocess.run([BROKK, "passwd", str(passwd), user], input=f"pw-{user}\n", text=True, check=True,
                       stdout=subprocess.DEVNULL)
    config = tmp / "broker.toml"
    config.write_text(
        '[listeners.tcp]\nbind = "127.0.0.1:0"\n'
        '[listeners.ws]\nbind = "127.0.0.1:0"\nwebsocket = { path = "/mqtt" }\n'
        '[metrics]\nbind = "127.0.0.1:0"\n'
        '[admin]\nbind = "127.0.0.1:0"\ntoken_file = "token"\n'
        '[auth]\nallow_anonymous = true\npassword_file = "passwd"\n'
        '[storage]\nbackend = "memory"\n')
    log_path = tmp / "brokk.log"
    env = {**os.environ, "NO_COLOR": "1", "RUST_LOG": "info"}
    spawn([BROKK, "--config", str(config)], stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env)
    try:
        admin = log_addr(log_path, "admin API listening")
        mqtt = log_addr(log_path, "listening listener=tcp")
        log_addr(log_path, "listening listener=ws")
        run_browser(tmp, admin, mqtt)
    except BaseException:
        print("--- brokk log ---\n" + log_path.read_text(errors="replace"), file=sys.stderr)
        raise


def run_browser(tmp, admin, mqtt):
    host, port = mqtt.rsplit(":", 1)
    base = f"http://{admin}/"
    # Two clients: one anonymous (to kick), one logged in as alice (to revoke).
    spawn(["mosquitto_sub", "-h", host, "-p", port, "-i", "sensor-kick-me", "-q", "1", "-c", "-t", "plant/+/temp"],
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    spawn(["mosquitto_sub", "-h", host, "-p", port, "-i", "alice-phone", "-u", "alice", "-P", "pw-alice",
           "-t", "chat/#"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    b = Browser(tmp / "chromium")
    try:
        steps(b, base, admin, host, port)
    except BaseException:
        try:
            b.screenshot("failure")
            print(f"--- page at the failure (target/console-screenshots/failure.png) ---\n"
                  f"{b.eval('location.href')}\n{b.eval('document.body.innerText')}\n"
                  f"JavaScript errors: {b.errors}", file=sys.stderr)
        except BaseException as e:
            print(f"(no page state: {e})", file=sys.stderr)
        raise


def steps(b, base, admin, host, port):
    b.goto(base)
    b.wait("the login form", "!document.querySelector('#login').hidden")

    # A wrong token is refused, and the page says so.
    b.fill("#login-form", {"token": "not-the-token-at-all"})
    refusal = b.wait("the refusal", "!document.querySelector('#login-error').hidden && document.querySelector('#login-error').textContent")
    assert "Refused" in refusal and "wrong token" in refusal, refusal
    assert b.eval("sessionStorage.getItem('brokk.token')") is None, "a refused token was kept"
    b.screenshot("login-refused")

    # The right one logs in; the token lives in sessionStorage.
    b.fill("#login-form", {"token": TOKEN})
    b.wait("the overview", "document.body.dataset.page === 'overview' && document.querySelector('#fig-connections')")
    assert b.eval("sessionStorage.getItem('brokk.token')") == TOKEN
    b.wait("two connections on the overview", "document.querySelector('#fig-connections .value').textContent === '2'")
    b.screenshot("overview")

    # Sessions: search by prefix, open the client, kick it with the confirmation.
    b.goto(base + "#/sessions?prefix=sensor-")
    b.wait("the sensor in the sessions list", "document.querySelector('#sessions tr[data-client-id=\"sensor-kick-me\"]')")
    assert b.eval("document.querySelectorAll('#sessions tbody tr').length") == 1, "the prefix search returned others"
    b.goto(base + "#/sessions")
    b.wait("both clients listed", "document.querySelectorAll('#sessions tbody tr').length === 2")
    b.screenshot("sessions")
    b.click('#sessions tr[data-client-id="sensor-kick-me"] a')
    b.wait("the session's page", "document.querySelector('#subscriptions') && document.querySelector('#kick')")
    facts = b.text("#session-facts")
    assert "connected" in facts and "127.0.0.1" in facts and "tcp" in facts, facts
    assert "plant/+/temp" in b.text("#subscriptions")
    b.screenshot("session")
    b.click("#kick")
    b.confirm("closed_by_controller")
    result = b.wait("the kick's close", "document.querySelector('#action-result')?.innerText")
    assert "closed_by_controller" in result and "administrator kicked" in result, result
    b.screenshot("session-kicked")

    # The close history shows it, explained in one line.
    b.goto(base + "#/closes?reason=closed_by_controller")
    row = b.wait("the kick in the history", "document.querySelector('#closes tr[data-reason=\"closed_by_controller\"]')?.innerText")
    assert "sensor-kick-me" in row and "administrator kicked" in row, row
    assert "0x98" in b.text("#reason-explained")

    # Users: alice is revoked (her client closed with `revoked`) and restored.
    b.goto(base + "#/users")
    b.wait("alice among the users with sessions", "document.querySelector('#users-seen tr[data-user=\"alice\"] button')")
    b.click('#users-seen tr[data-user="alice"] button')
    b.confirm("Revoke alice")
    result = b.wait("the revoke's close", "document.querySelector('#action-result')?.innerText")
    assert "alice-phone" in result and "revoked" in result, result
    b.wait("alice in the revoked list", "document.querySelector('#revoked tr[data-user=\"alice\"]')")
    b.screenshot("users")
    refused = subprocess.run(["mosquitto_pub", "-h", host, "-p", port, "-u", "alice", "-P", "pw-alice",
                              "-t", "chat/x", "-m", "hi"], capture_output=True, text=True, timeout=WAIT)
    assert refused.returncode != 0, "a revoked user connected"
    b.click('#revoked tr[data-user="alice"] button')
    b.confirm("Restore alice")
    b.wait("alice restored", "!document.querySelector('#revoked tr[data-user=\"alice\"]') && document.querySelector('#action-result')?.innerText.includes('restored')")
    subprocess.run(["mosquitto_pub", "-h", host, "-p", port, "-u", "alice", "-P", "pw-alice",
                    "-t", "chat/x", "-m", "hi"], check=True, capture_output=True, timeout=WAIT)

    # The viewer's MQTT codec, byte for byte (MQTT 3.1.1 sections 3.1, 3.8, 3.3, 2.2.3).
    codec = b.eval("""import('/console/mqtt.js').then(m => {
      const hex = (a) => [...a].map(b => b.toString(16).padStart(2, '0')).join('');
      const big = m.encodePublish('t', new Uint8Array(200));
      const split = m.decode(new Uint8Array([0x90, 3, 0, 1, 0, 0xd0, 0, 0x30]));
      return {
        connect: hex(m.encodeConnect({clientId: 'c', username: 'u', password: 'p', keepAlive: 30})),
        subscribe: hex(m.encodeSubscribe(1, 'a/#', 1)),
        publish: hex(m.encodePublish('a', 'hi', {qos: 1, retain: true, id: 5})),
        bigHeader: hex(big.subarray(0, 3)), bigLength: big.length,
        split: split.packets.map(p => p.type), rest: split.rest.length,
        parsed: m.parsePublish(2, new Uint8Array([0, 1, 0x61, 0, 9, 0x6f, 0x6b])),
      };
    })""")
    # Remaining length 19: "MQTT", level 4, flags user+password+clean, keep-alive 30; c, u, p.
    assert codec["connect"] == "1013" "00044d515454" "04" "c2" "001e" "000163" "000175" "000170", codec
    assert codec["subscribe"] == "8208" "0001" "0003612f23" "01", codec
    assert codec["publish"] == "330700016100056869", codec
    # 203 bytes of remaining length take two bytes: 0xcb 0x01.
    assert codec["bigHeader"] == "30cb01" and codec["bigLength"] == 206, codec
    assert codec["split"] == [9, 13] and codec["rest"] == 1, codec
    assert codec["parsed"]["topic"] == "a" and codec["parsed"]["id"] == 9, codec

    # The live topic viewer.
    b.goto(base + "#/live")
    b.wait("the viewer connected", "document.querySelector('#live-status')?.classList.contains('ok')")
    viewer = api(admin, "/v1/sessions?prefix=brokk-console-")["sessions"]
    assert len(viewer) == 1 and viewer[0]["listener"] == "ws", viewer
    b.fill("#live-subscribe", {"filter": "plant/#", "qos": "1"})
    b.wait("the subscription", "document.querySelector('#live-subscriptions li[data-filter=\"plant/#\"]')")
    subprocess.run(["mosquitto_pub", "-h", host, "-p", port, "-t", "plant/7/temp", "-q", "1",
                    "-m", "21.5 C from mosquitto_pub"], check=True, timeout=WAIT)
    row = b.wait("the message in the viewer", "document.querySelector('#messages tr[data-topic=\"plant/7/temp\"]')?.innerText")
    assert "21.5 C from mosquitto_pub" in row, row
    # The publish form: the browser's message reaches mosquitto_sub.
    sub = subprocess.Popen(["mosquitto_sub", "-h", host, "-p", port, "-i", "from-browser", "-t", "plant/from-browser",
                            "-C", "1", "-W", "10"], stdout=subprocess.PIPE, text=True)
    processes.append(sub)
    wait_until("mosquitto_sub subscribed", lambda: api(admin, "/v1/sessions/from-browser").get("subscriptions"))
    b.fill("#live-publish", {"topic": "plant/from-browser", "payload": "hello from the console", "qos": "1"})
    out, _ = sub.communicate(timeout=WAIT)
    assert out.strip() == "hello from the console", out
    b.wait("the viewer's own message", "document.querySelector('#messages tr[data-topic=\"plant/from-browser\"]')")
    b.wait("the publish acknowledged", "document.querySelector('#live-action').textContent === 'published to plant/from-browser'")
    assert b.eval("document.querySelector('#live-status').classList.contains('ok')"), b.text("#live-status")
    b.screenshot("live")

    # The history now holds kicks, revokes, refusals and goodbyes; the overview counts them.
    b.goto(base + "#/closes")
    b.wait("the history", "document.querySelectorAll('#closes tbody tr').length >= 3")
    b.screenshot("closes")
    b.goto(base + "#/overview")
    b.wait("the kick counted on the overview", "document.querySelector('#closes-by-reason li[data-key=\"closed_by_controller\"]')")
    b.wait("the refusal counted on the overview", "document.querySelector('#refusals-by-code li[data-key=\"banned\"]')")
    b.screenshot("overview")

    # On a phone: no page is wider than the screen (wide tables scroll inside their card).
    b.viewport(390, 844, True)
    for page, ready in [("overview", "#fig-connections"), ("sessions", "#sessions"), ("closes", "#closes"),
                        ("users", "#revoked"), ("live", "#live-status")]:
        b.goto(base + f"#/{page}")
        b.wait(f"the {page} page on a phone", f"document.body.dataset.page === '{page}' && document.querySelector('{ready}')")
        width = b.eval("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1] + 1, f"the {page} page is {width[0]}px wide on a {width[1]}px screen"
        if page in ("overview", "closes"):
            b.screenshot(f"{page}-phone")

    # Logging out forgets the token.
    b.viewport(1280, 900, False)
    b.click("#logout")
    assert b.eval("sessionStorage.getItem('brokk.token')") is None
    assert not b.errors, f"JavaScript errors: {b.errors}"


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"console: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
