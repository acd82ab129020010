"""brokk against Debian's mosquitto_pub / mosquitto_sub (package mosquitto-clients).

Every subscriber runs with `-W 10` so nothing can hang. Readiness is never a sleep: a
subscriber also subscribes to a private "ready" topic, and the test publishes to it every
100 ms (a bounded number of times) until the subscriber prints it; only then are the real
messages published. Each subscriber prints `qos|retain|topic|payload` (`-F '%q|%r|%t|%p'`).
"""

import queue
import shutil
import signal
import subprocess
import threading
import time

import pytest

MOSQUITTO_PUB = shutil.which("mosquitto_pub")
MOSQUITTO_SUB = shutil.which("mosquitto_sub")

pytestmark = pytest.mark.skipif(
    not (MOSQUITTO_PUB and MOSQUITTO_SUB),
    reason="mosquitto-clients is not installed (scripts/interop installs it)",
)

VERSIONS = {"3.1.1": "mqttv311", "5.0": "mqttv5"}
WAIT = 10.0  # seconds: the deadline of every wait in this file
FORMAT = "%q|%r|%t|%p"


def pub(broker, version, topic, *messages, qos=0, retain=False, null=False, extra=()):
    """Publish with mosquitto_pub; several messages go out over one connection (-l)."""
    args = [MOSQUITTO_PUB, "-h", broker.host, "-p", str(broker.port), "-V", VERSIONS[version],
            "-q", str(qos), "-t", topic, *extra]
    if retain:
        args.append("-r")
    if null:
        args.append("-n")
        stdin = None
    elif len(messages) == 1:
        args += ["-m", messages[0]]
        stdin = None
    else:
        args.append("-l")
        stdin = "".join(m + "\n" for m in messages)
    r = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=WAIT)
    assert r.returncode == 0, f"mosquitto_pub {args} failed ({r.returncode}): {r.stderr}"


class Sub:
    """A mosquitto_sub process whose output lines are read into a queue."""

    def __init__(self, broker, version, topics, qos=0, extra=(), ready=True, uid="x"):
        self.broker = broker
        self.version = version
        self.ready_topic = f"interop/ready/{uid}/{id(self)}" if ready else None
        args = [MOSQUITTO_SUB, "-h", broker.host, "-p", str(broker.port), "-V", VERSIONS[version],
                "-q", str(qos), "-W", "10", "-F", FORMAT, *extra]
        for t in topics:
            args += ["-t", t]
        if self.ready_topic:
            args += ["-t", self.ready_topic]  # last, so the real filters are in place first
        self.args = args
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1)
        self.lines = queue.Queue()
        self.stderr = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    @staticmethod
    def _read(stream, q):
        for line in stream:
            q.put(line.rstrip("\n"))
        q.put(None)

    def _read_err(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_ready(self):
        """Publish to the ready topic every 100 ms until this subscriber prints it."""
        assert self.ready_topic
        for _ in range(int(WAIT / 0.1)):
            pub(self.broker, self.version, self.ready_topic, "ready")
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            assert line is not None, f"mosquitto_sub exited early: {''.join(self.stderr)}"
            assert line.endswith(f"|{self.ready_topic}|ready"), f"unexpected before ready: {line}"
            return self
        pytest.fail(f"mosquitto_sub never became ready: {''.join(self.stderr)}")

    def messages(self, n, timeout=WAIT):
        """The next n messages (other than ready probes) as (qos, retain, topic, payload)."""
        out = []
        end = time.monotonic() + timeout
        while len(out) < n:
            left = end - time.monotonic()
            if left <= 0:
                pytest.fail(f"got {len(out)} of {n} messages: {out}; stderr: {''.join(self.stderr)}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"mosquitto_sub exited after {len(out)} of {n} messages: {out}; "
                            f"rc={self.proc.wait()} stderr: {''.join(self.stderr)}")
            m = parse(line)
            if m[2] != self.ready_topic:
                out.append(m)
        return out

    def rest(self):
        """Wait for the process to exit and return every remaining message."""
        rc = self.proc.wait(timeout=WAIT + 5)
        out = []
        while True:
            line = self.lines.get(timeout=WAIT)
            if line is None:
                break
            m = parse(line)
            if m[2] != self.ready_topic:
                out.append(m)
        return rc, out

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def parse(line):
    qos, retain, topic, payload = line.split("|", 3)
    return int(qos), int(retain), topic, payload


@pytest.fixture
def subs():
    started = []
    yield started
    for s in started:
        s.stop(signal.SIGKILL)


# --- publish / subscribe at every QoS -------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_pub_sub_qos(broker, subs, uid, version, pub_qos, sub_qos):
    topic = f"interop/qos/{uid}"
    s = Sub(broker, version, [topic], qos=sub_qos, uid=uid)
    subs.append(s)
    s.wait_ready()
    payloads = [f"m{i}-{version}-{pub_qos}" for i in range(5)]
    pub(broker, version, topic, *payloads, qos=pub_qos)
    got = s.messages(5)
    granted = min(pub_qos, sub_qos)
    assert got == [(granted, 0, topic, p) for p in payloads]


@pytest.mark.parametrize("version", VERSIONS)
def test_wildcards_and_cross_version(broker, subs, uid, version):
    """A subscriber of one version receives, through + and # filters, from a publisher of the other."""
    other = "5.0" if version == "3.1.1" else "3.1.1"
    s = Sub(broker, version, [f"interop/wild/{uid}/+/x", f"interop/wild/{uid}/deep/#"], qos=1, uid=uid)
    subs.append(s)
    s.wait_ready()
    pub(broker, other, f"interop/wild/{uid}/a/x", "plus", qos=1)
    pub(broker, other, f"interop/wild/{uid}/a/y", "no-match", qos=1)
    pub(broker, other, f"interop/wild/{uid}/deep/1/2", "hash", qos=1)
    got = s.messages(2)
    assert [m[3] for m in got] == ["plus", "hash"]


# --- retained messages ----------------------------------------------------------------------

def retained_now(broker, version, topic, uid):
    """The retained message a new subscriber to `topic` receives, or None when there is none.

    Uses --retained-only: mosquitto_sub prints retained messages and exits on the first
    non-retained one, which the test publishes every 100 ms until it exits.
    """
    s = Sub(broker, version, [topic], qos=1, extra=["--retained-only"], ready=False, uid=uid)
    try:
        for _ in range(int(WAIT / 0.1)):
            if s.proc.poll() is not None:
                break
            pub(broker, version, topic, "not-retained", qos=1)
            try:
                s.proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        rc, got = s.rest()
    finally:
        s.stop(signal.SIGKILL)
    assert rc == 0, f"mosquitto_sub --retained-only exited {rc}: {''.join(s.stderr)}"
    assert all(m[1] == 1 for m in got), got
    assert len(got) <= 1, got
    return got[0][3] if got else None


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_set_replace_clear(broker, subs, uid, version):
    topic = f"interop/retained/{uid}"
    pub(broker, version, topic, "first", qos=1, retain=True)
    s = Sub(broker, version, [topic], qos=1, extra=["-C", "1"], ready=False, uid=uid)
    subs.append(s)
    rc, got = s.rest()
    assert rc == 0 and got == [(1, 1, topic, "first")], (rc, got, s.stderr)

    pub(broker, version, topic, "second", qos=2, retain=True)
    assert retained_now(broker, version, topic, uid) == "second"

    # A retained message with an empty payload clears it [MQTT-3.3.1-10/11].
    pub(broker, version, topic, qos=1, retain=True, null=True)
    assert retained_now(broker, version, topic, uid) is None


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_flag_on_live_delivery(broker, subs, uid, version):
    """A retained publish to an existing subscriber arrives with retain 0 (3.1.1 [MQTT-3.3.1-9];
    v5 without Retain As Published)."""
    topic = f"interop/retained-live/{uid}"
    s = Sub(broker, version, [topic], qos=1, uid=uid)
    subs.append(s)
    s.wait_ready()
    pub(broker, version, topic, "live", qos=1, retain=True)
    assert s.messages(1) == [(1, 0, topic, "live")]


# --- wills ----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("will_qos", [0, 1, 2])
def test_will_fires_on_abrupt_close(broker, subs, uid, version, will_qos):
    will_topic = f"interop/will/{uid}"
    watcher = Sub(broker, version, [will_topic], qos=2, uid=uid)
    subs.append(watcher)
    watcher.wait_ready()
    dying = Sub(broker, version, [f"interop/will-client/{uid}"], qos=0, uid=uid + "d",
                extra=["-i", f"dying-{uid}", "--will-topic", will_topic,
                       "--will-payload", "gone", "--will-qos", str(will_qos)])
    subs.append(dying)
    dying.wait_ready()
    dying.stop(signal.SIGKILL)  # the socket closes without DISCONNECT
    assert watcher.messages(1) == [(will_qos, 0, will_topic, "gone")]


@pytest.mark.parametrize("version", VERSIONS)
def test_will_not_sent_after_clean_disconnect(broker, subs, uid, version):
    will_topic = f"interop/will/{uid}"
    watcher = Sub(broker, version, [will_topic], qos=1, uid=uid)
    subs.append(watcher)
    watcher.wait_ready()
    closed_before = broker.metric("brokk_connections_closed_total", 'reason="closed_by_client"')
    polite = Sub(broker, version, [f"interop/will-client/{uid}"], qos=0, uid=uid + "p",
                 extra=["-i", f"polite-{uid}", "--will-topic", will_topic, "--will-payload", "gone",
                        "-C", "1"])
    subs.append(polite)
    polite.wait_ready()  # the ready message is its one (-C 1): it sends DISCONNECT and exits
    rc, _ = polite.rest()
    assert rc == 0
    broker.wait_metric("brokk_connections_closed_total", 'reason="closed_by_client"',
                lambda v: v > closed_before, "the clean DISCONNECT was never counted")
    # Anything the broker would have sent on the close is on its way by now; a marker on the
    # same watcher must be the next thing it sees.
    pub(broker, version, will_topic, "marker", qos=1)
    assert watcher.messages(1) == [(1, 0, will_topic, "marker")]


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_will(broker, subs, uid, version):
    will_topic = f"interop/will-retained/{uid}"
    dying = Sub(broker, version, [f"interop/will-client/{uid}"], qos=0, uid=uid,
                extra=["-i", f"dying-{uid}", "--will-topic", will_topic, "--will-payload", "last",
                       "--will-qos", "1", "--will-retain"])
    subs.append(dying)
    dying.wait_ready()
    dying.stop(signal.SIGKILL)
    # No subscriber was there when it fired: a later one gets it as a retained message.
    s = Sub(broker, version, [will_topic], qos=1, extra=["-C", "1"], ready=False, uid=uid)
    subs.append(s)
    rc, got = s.rest()
    assert rc == 0 and got == [(1, 1, will_topic, "last")], (rc, got, s.stderr)


# --- persistent sessions --------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [1, 2])
def test_persistent_session_gets_offline_messages(broker, subs, uid, version, qos):
    topic = f"interop/persist/{uid}"
    cid = f"persist-{uid}"
    session = ["-c", "-i", cid] + (["-x", "300"] if version == "5.0" else [])
    # Subscribe and leave (-E: exit once the SUBACK arrived).
    first = Sub(broker, version, [topic], qos=qos, extra=[*session, "-E"], ready=False, uid=uid)
    subs.append(first)
    rc, got = first.rest()
    assert rc == 0 and got == [], (rc, got, first.stderr)
    broker.wait_metric("brokk_sessions", 'state="disconnected"', lambda v: v >= 1,
                "the session did not wait for its client")

    payloads = [f"offline-{i}" for i in range(3)]
    pub(broker, version, topic, *payloads, qos=qos)

    back = Sub(broker, version, [topic], qos=qos, extra=[*session, "-C", "3"], ready=False, uid=uid)
    subs.append(back)
    rc, got = back.rest()
    assert rc == 0, (rc, back.stderr)
    assert got == [(qos, 0, topic, p) for p in payloads]


@pytest.mark.parametrize("version", VERSIONS)
def test_clean_session_discards_offline_messages(broker, subs, uid, version):
    """Without -c the session ends with the connection: nothing is kept for the next one."""
    topic = f"interop/clean/{uid}"
    cid = f"clean-{uid}"
    first = Sub(broker, version, [topic], qos=1, extra=["-i", cid, "-E"], ready=False, uid=uid)
    subs.append(first)
    assert first.rest() == (0, [])
    broker.wait_metric("brokk_sessions", 'state="connected"', lambda v: v == 0,
                "the clean session was not dropped")
    assert broker.metric("brokk_sessions", 'state="disconnected"') == 0
    pub(broker, version, topic, "lost", qos=1)
    back = Sub(broker, version, [topic], qos=1, extra=["-i", cid], uid=uid)
    subs.append(back)
    back.wait_ready()
    pub(broker, version, topic, "fresh", qos=1)
    assert back.messages(1) == [(1, 0, topic, "fresh")]


# --- shared subscriptions -------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_shared_subscription_delivers_each_message_once(broker, subs, uid, version, qos):
    topic = f"interop/shared/{uid}"
    end_topic = f"interop/shared-end/{uid}"
    members = []
    for i in range(2):
        s = Sub(broker, version, [f"$share/g{uid}/{topic}", end_topic], qos=qos, uid=f"{uid}{i}")
        subs.append(s)
        members.append(s)
    for s in members:
        s.wait_ready()
    n = 20
    payloads = [f"s{i}" for i in range(n)]
    pub(broker, version, topic, *payloads, qos=qos)
    # Collect until the group has all n, then send an end marker to every member (a plain
    # subscription): whatever a member printed before it is what that member got.
    seen = [[], []]
    end = time.monotonic() + WAIT
    while len(seen[0]) + len(seen[1]) < n:
        if time.monotonic() > end:
            pytest.fail(f"the group got {len(seen[0]) + len(seen[1])} of {n}: {seen}")
        for i, s in enumerate(members):
            try:
                line = s.lines.get(timeout=0.05)
            except queue.Empty:
                continue
            assert line is not None, f"member {i} exited: {''.join(s.stderr)}"
            m = parse(line)
            if m[2] != s.ready_topic:
                assert m[2] == topic and m[0] == qos, m
                seen[i].append(m[3])
    pub(broker, version, end_topic, "end", qos=1)
    for i, s in enumerate(members):
        while True:
            (m,) = s.messages(1)
            if m[2] == end_topic:
                break
            seen[i].append(m[3])
    both = sorted(seen[0] + seen[1], key=lambda p: int(p[1:]))
    assert both == payloads, f"each message exactly once across the group: {seen}"
    for i, s in enumerate(members):
        # Per member, the publisher's order is kept.
        assert seen[i] == sorted(seen[i], key=lambda p: int(p[1:])), seen[i]
