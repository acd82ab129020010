"""brokk against the paho-mqtt Python client (2.x, callback API version 2).

Every wait is on a threading.Event or a queue.Queue with a deadline; nothing sleeps to
synchronise. Each client runs its own network thread calling `loop()`, which (unlike
`loop_start()`) never reconnects by itself, so a closed connection stays closed.
"""

import queue
import threading
import time

import pytest

paho = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.client import CallbackAPIVersion, MQTTv311, MQTTv5  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.reasoncodes import ReasonCode  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402

WAIT = 10.0
PROTOCOLS = {"3.1.1": MQTTv311, "5.0": MQTTv5}


class Conn:
    """A paho client with its callbacks turned into queues and events."""

    def __init__(self, broker, version, client_id="", clean=True, session_expiry=None,
                 will=None, connect_properties=None, transport="tcp"):
        """`transport`: "tcp", or "websockets" for MQTT over WebSocket (the broker's ws listener)."""
        self.broker = broker
        self.version = version
        self.v5 = version == "5.0"
        self.transport = transport
        kwargs = {}
        if not self.v5:
            kwargs["clean_session"] = clean
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=client_id, protocol=PROTOCOLS[version],
                                  transport=transport, **kwargs)
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        self.clean = clean
        self.session_expiry = session_expiry
        self.connect_properties = connect_properties
        if will:
            self.client.will_set(**will)
        self.connected = threading.Event()
        self.connack = None
        self.messages = queue.Queue()
        self.subacks = {}
        self.unsubacks = {}
        self.disconnects = queue.Queue()
        self._stop = threading.Event()
        self._thread = None
        c = self.client
        c.on_connect = self._on_connect
        c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_disconnect = lambda _c, _u, flags, rc, props: self.disconnects.put((rc, props))

    def _on_connect(self, _c, _u, flags, rc, props):
        self.connack = (flags, rc, props)
        self.connected.set()

    def _on_subscribe(self, _c, _u, mid, rcs, props):
        self.subacks.setdefault(mid, queue.Queue()).put(rcs)

    def _on_unsubscribe(self, _c, _u, mid, rcs, props):
        self.unsubacks.setdefault(mid, queue.Queue()).put(rcs)

    def _net(self):
        while not self._stop.is_set():
            if self.client.loop(timeout=0.05) != paho.MQTT_ERR_SUCCESS:
                return  # connection gone: no automatic reconnect

    def connect(self, expect_success=True):
        kwargs = {"keepalive": 30}
        if self.v5:
            props = self.connect_properties or Properties(PacketTypes.CONNECT)
            if self.session_expiry is not None:
                props.SessionExpiryInterval = self.session_expiry
            kwargs["clean_start"] = self.clean
            kwargs["properties"] = props
        port = self.broker.ws_port if self.transport == "websockets" else self.broker.port
        self.client.connect(self.broker.host, port, **kwargs)
        self._thread = threading.Thread(target=self._net, daemon=True)
        self._thread.start()
        assert self.connected.wait(WAIT), "no CONNACK"
        flags, rc, _ = self.connack
        if expect_success:
            assert not rc.is_failure, f"CONNECT refused: {rc}"
        return self

    @property
    def session_present(self):
        return bool(self.connack[0].session_present)

    def subscribe(self, topic, qos=0, options=None, properties=None):
        if options is not None:
            result, mid = self.client.subscribe(topic, options=options, properties=properties)
        else:
            result, mid = self.client.subscribe(topic, qos, properties=properties)
        assert result == paho.MQTT_ERR_SUCCESS
        rcs = self._ack(self.subacks, mid, "SUBACK")
        assert all(not rc.is_failure for rc in rcs), f"SUBSCRIBE {topic} refused: {rcs}"
        return rcs

    def unsubscribe(self, topic):
        result, mid = self.client.unsubscribe(topic)
        assert result == paho.MQTT_ERR_SUCCESS
        return self._ack(self.unsubacks, mid, "UNSUBACK")

    def _ack(self, table, mid, what):
        # The callback may run before or after this: both sides setdefault the same queue.
        try:
            return table.setdefault(mid, queue.Queue()).get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no {what}")

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published(), f"publish to {topic} not completed at QoS {qos}"
        return info

    def get(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no message within {timeout}s")

    def get_n(self, n):
        return [self.get() for _ in range(n)]

    def disconnect(self, properties=None):
        self.client.disconnect(properties=properties)
        self._thread.join(WAIT)
        assert not self._thread.is_alive()

    def drop(self):
        """Close the TCP connection without DISCONNECT (an abrupt client loss)."""
        self._stop.set()
        self._thread.join(WAIT)
        self.client.socket().close()

    def close(self):
        self._stop.set()
        if self._thread:
            self._thread.join(WAIT)
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture
def conns(broker):
    made = []

    def make(version, **kw):
        c = Conn(broker, version, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def probe_after(conn, topic, marker="probe"):
    """Publish a non-retained marker to `topic` from `conn` (subscribed to it) and return every
    message that arrived before the marker: anything the broker queued for this subscriber
    earlier comes first."""
    conn.publish(topic, marker, qos=1)
    before = []
    while True:
        m = conn.get()
        if m.topic == topic and m.payload == marker.encode() and not m.retain:
            return before
        before.append(m)


# --- publish / subscribe --------------------------------------------------------------------

@pytest.mark.parametrize("version", PROTOCOLS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_sub(conns, uid, version, qos):
    topic = f"paho/qos/{uid}"
    sub = conns(version, client_id=f"sub-{uid}").connect()
    assert sub.subscribe(topic, qos)[0].value == qos  # granted QoS (v3 ints wrapped as ReasonCode)
    pub = conns(version, client_id=f"pub-{uid}").connect()
    payloads = [f"{version}-{qos}-{i}".encode() for i in range(30)]
    for p in payloads:
        pub.publish(topic, p, qos=qos)
    got = sub.get_n(len(payloads))
    assert [m.payload for m in got] == payloads  # in order [MQTT-4.6.0-6]
    assert all(m.qos == qos and m.topic == topic and not m.retain for m in got)
    pub.disconnect()
    sub.disconnect()


@pytest.mark.parametrize("version", PROTOCOLS)
def test_qos_downgrade_to_subscription(conns, uid, version):
    topic = f"paho/downgrade/{uid}"
    sub = conns(version).connect()
    sub.subscribe(topic, 1)
    pub = conns(version).connect()
    pub.publish(topic, b"two", qos=2)
    m = sub.get()
    assert (m.payload, m.qos) == (b"two", 1)


@pytest.mark.parametrize("version", PROTOCOLS)
def test_empty_client_id_is_assigned(conns, version):
    c = conns(version, client_id="").connect()
    if c.v5:
        assigned = getattr(c.connack[2], "AssignedClientIdentifier", None)
        assert assigned, "v5 CONNACK must carry Assigned Client Identifier [MQTT-3.2.2-16]"
    c.disconnect()


# --- authorisation --------------------------------------------------------------------------

@pytest.mark.parametrize("version", PROTOCOLS)
def test_subscribe_failure(conns, version):
    """Paho's interoperability test_subscribe_failure: a filter the broker does not allow
    (the conftest's acl_file denies test/nosubscribe) is refused in the SUBACK, 0x80 in 3.1.1.
    In 5.0 brokk says why, 0x87 Not authorized, where Paho's own test broker answers 0x80
    Unspecified error: both are failures to the client."""
    c = conns(version, client_id="subscribe failure").connect()
    result, mid = c.client.subscribe("test/nosubscribe", 2)
    assert result == paho.MQTT_ERR_SUCCESS
    rcs = c._ack(c.subacks, mid, "SUBACK")
    assert len(rcs) == 1 and rcs[0].is_failure, rcs
    assert rcs[0].value == (0x87 if c.v5 else 0x80), rcs
    # The refusal is the filter's alone: the connection goes on.
    assert c.subscribe("test/subscribe", 2)[0].value == 2
    c.disconnect()


# --- retained messages ----------------------------------------------------------------------

@pytest.mark.parametrize("version", PROTOCOLS)
def test_retained_set_replace_clear(conns, uid, version):
    topic = f"paho/retained/{uid}"
    pub = conns(version).connect()

    def retained():
        s = conns(version).connect()
        s.subscribe(topic, 1)
        got = probe_after(s, topic)
        s.disconnect()
        assert all(m.retain for m in got), got
        assert len(got) <= 1, [m.payload for m in got]
        return got[0].payload if got else None

    pub.publish(topic, b"first", qos=1, retain=True)
    assert retained() == b"first"
    pub.publish(topic, b"second", qos=1, retain=True)
    assert retained() == b"second"
    pub.publish(topic, b"", qos=1, retain=True)  # [MQTT-3.3.1-10]
    assert retained() is None


@pytest.mark.parametrize("version", PROTOCOLS)
def test_retained_wildcard_subscription(conns, uid, version):
    pub = conns(version).connect()
    for i in range(3):
        pub.publish(f"paho/rw/{uid}/{i}", f"r{i}".encode(), qos=1, retain=True)
    s = conns(version).connect()
    s.subscribe(f"paho/rw/{uid}/+", 1)
    got = probe_after(s, f"paho/rw/{uid}/probe")
    assert sorted(m.payload for m in got) == [b"r0", b"r1", b"r2"]
    assert all(m.retain for m in got)


def test_v5_subscription_options(conns, uid):
    """No Local, Retain As Published and Retain Handling 2 ([MQTT-3.8.3-3], -3.3.1-12/13, -3.3.1-11)."""
    topic = f"paho/opts/{uid}"
    other = conns("5.0").connect()
    other.publish(topic, b"old", qos=1, retain=True)

    c = conns("5.0").connect()
    # Retain Handling 2: no retained messages at subscribe time.
    c.subscribe(topic, options=SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True,
                                                retainHandling=2))
    c.publish(topic, b"mine", qos=1)  # No Local: not sent back
    other.publish(topic, b"live-retained", qos=1, retain=True)
    m = c.get()
    assert (m.payload, m.retain) == (b"live-retained", True)  # Retain As Published
    other.publish(topic, b"plain", qos=1)
    m = c.get()
    assert (m.payload, m.retain) == (b"plain", False)


# --- wills ----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", PROTOCOLS)
@pytest.mark.parametrize("will_qos", [0, 1, 2])
def test_will_on_abrupt_close(conns, uid, version, will_qos):
    topic = f"paho/will/{uid}"
    watcher = conns(version).connect()
    watcher.subscribe(topic, 2)
    dying = conns(version, client_id=f"dying-{uid}",
                  will={"topic": topic, "payload": b"gone", "qos": will_qos}).connect()
    dying.drop()
    m = watcher.get()
    assert (m.topic, m.payload, m.qos) == (topic, b"gone", will_qos)


@pytest.mark.parametrize("version", PROTOCOLS)
def test_no_will_after_clean_disconnect(broker, conns, uid, version):
    topic = f"paho/will/{uid}"
    watcher = conns(version).connect()
    watcher.subscribe(topic, 1)
    polite = conns(version, client_id=f"polite-{uid}",
                   will={"topic": topic, "payload": b"gone", "qos": 1}).connect()
    closed = broker.metric("brokk_connections_closed_total", 'reason="closed_by_client"')
    polite.disconnect()
    broker.wait_metric("brokk_connections_closed_total", 'reason="closed_by_client"',
                       lambda v: v > closed, "the DISCONNECT was never counted")
    assert [m.payload for m in probe_after(watcher, topic)] == []


def test_v5_disconnect_with_will_message_fires_will(conns, uid):
    """DISCONNECT with reason 0x04 (Disconnect with Will Message) publishes the will [MQTT-3.14.4-3 context]."""
    topic = f"paho/will04/{uid}"
    watcher = conns("5.0").connect()
    watcher.subscribe(topic, 1)
    c = conns("5.0", will={"topic": topic, "payload": b"asked", "qos": 1}).connect()
    props = Properties(PacketTypes.DISCONNECT)
    c.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4),
                        properties=props)
    c._thread.join(WAIT)
    assert watcher.get().payload == b"asked"


def test_v5_will_delay(conns, uid):
    """A will with Will Delay Interval is not sent when the session resumes within the delay."""
    topic = f"paho/willdelay/{uid}"
    cid = f"wd-{uid}"
    watcher = conns("5.0").connect()
    watcher.subscribe(topic, 1)
    will_props = Properties(PacketTypes.WILLMESSAGE)
    will_props.WillDelayInterval = 30
    dying = conns("5.0", client_id=cid, clean=False, session_expiry=60,
                  will={"topic": topic, "payload": b"late", "qos": 1, "properties": will_props}).connect()
    dying.drop()
    back = conns("5.0", client_id=cid, clean=False, session_expiry=0).connect()
    assert back.session_present
    back.disconnect()
    assert [m.payload for m in probe_after(watcher, topic)] == []


# --- persistent sessions --------------------------------------------------------------------

@pytest.mark.parametrize("version", PROTOCOLS)
@pytest.mark.parametrize("qos", [1, 2])
def test_persistent_session_receives_offline_messages(conns, uid, version, qos):
    topic = f"paho/persist/{uid}"
    cid = f"persist-{uid}"
    session = {"clean": False, "session_expiry": 300 if version == "5.0" else None}
    first = conns(version, client_id=cid, **session).connect()
    assert not first.session_present
    first.subscribe(topic, qos)
    first.disconnect()

    pub = conns(version).connect()
    payloads = [f"offline-{i}".encode() for i in range(5)]
    for p in payloads:
        pub.publish(topic, p, qos=qos)

    back = conns(version, client_id=cid, **session).connect()
    assert back.session_present, "CONNACK session present must be 1 [MQTT-3.2.2-2]"
    got = back.get_n(len(payloads))
    assert [m.payload for m in got] == payloads
    assert all(m.qos == qos for m in got)
    # The subscription survived as well: a live message arrives without re-subscribing.
    pub.publish(topic, b"live", qos=qos)
    assert back.get().payload == b"live"
    back.disconnect()


@pytest.mark.parametrize("version", PROTOCOLS)
def test_persistent_session_after_abrupt_close(conns, uid, version):
    """Messages queued while a persistent client is gone, even after it vanished without DISCONNECT."""
    topic = f"paho/persist-drop/{uid}"
    cid = f"pd-{uid}"
    session = {"clean": False, "session_expiry": 300 if version == "5.0" else None}
    first = conns(version, client_id=cid, **session).connect()
    first.subscribe(topic, 1)
    first.drop()  # the broker may or may not have noticed by the time of the publish
    pub = conns(version).connect()
    pub.publish(topic, b"while-away", qos=1)
    back = conns(version, client_id=cid, **session).connect()
    assert back.session_present
    assert back.get().payload == b"while-away"


@pytest.mark.parametrize("version", PROTOCOLS)
def test_clean_session_discards_state(conns, uid, version):
    topic = f"paho/clean/{uid}"
    cid = f"clean-{uid}"
    persistent = {"clean": False, "session_expiry": 300 if version == "5.0" else None}
    first = conns(version, client_id=cid, **persistent).connect()
    first.subscribe(topic, 1)
    first.disconnect()
    fresh = conns(version, client_id=cid, clean=True).connect()
    assert not fresh.session_present, "clean start/session discards the old session [MQTT-3.2.2-1]"
    conns(version).connect().publish(topic, b"nobody", qos=1)
    fresh.subscribe(f"paho/clean-probe/{uid}", 1)
    assert [m.payload for m in probe_after(fresh, f"paho/clean-probe/{uid}")] == []


def test_v5_session_expiry_zero_ends_session(conns, uid):
    topic = f"paho/expiry0/{uid}"
    cid = f"e0-{uid}"
    first = conns("5.0", client_id=cid, clean=False, session_expiry=0).connect()
    first.subscribe(topic, 1)
    first.disconnect()
    back = conns("5.0", client_id=cid, clean=False, session_expiry=0).connect()
    assert not back.session_present


# --- shared subscriptions -------------------------------------------------------------------

@pytest.mark.parametrize("version", PROTOCOLS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_shared_subscription(conns, uid, version, qos):
    topic = f"paho/shared/{uid}"
    end_topic = f"paho/shared-end/{uid}"
    members = []
    for i in range(3):
        m = conns(version, client_id=f"m{i}-{uid}").connect()
        m.subscribe(f"$share/g{uid}/{topic}", qos)
        m.subscribe(end_topic, 1)
        members.append(m)
    pub = conns(version).connect()
    n = 30
    payloads = [f"{i}".encode() for i in range(n)]
    for p in payloads:
        pub.publish(topic, p, qos=qos)
    seen = [[] for _ in members]
    deadline = time.monotonic() + WAIT
    while sum(map(len, seen)) < n:
        assert time.monotonic() < deadline, f"group got {sum(map(len, seen))} of {n}"
        for i, m in enumerate(members):
            try:
                msg = m.messages.get(timeout=0.02)
            except queue.Empty:
                continue
            assert msg.topic == topic and msg.qos == qos
            seen[i].append(msg.payload)
    pub.publish(end_topic, b"end", qos=1)
    for i, m in enumerate(members):
        while (msg := m.get()).topic != end_topic:
            seen[i].append(msg.payload)
    assert sorted(sum(seen, []), key=int) == payloads, f"exactly once across the group: {seen}"


def test_v5_shared_and_plain_subscription_both_receive(conns, uid):
    topic = f"paho/shared-plain/{uid}"
    a = conns("5.0").connect()
    a.subscribe(f"$share/g/{topic}", 1)
    b = conns("5.0").connect()
    b.subscribe(topic, 1)
    conns("5.0").connect().publish(topic, b"x", qos=1)
    assert a.get().payload == b"x"
    assert b.get().payload == b"x"


def test_v5_shared_subscription_survives_member_leaving(conns, uid):
    topic = f"paho/shared-leave/{uid}"
    a = conns("5.0").connect()
    a.subscribe(f"$share/g/{topic}", 1)
    b = conns("5.0").connect()
    b.subscribe(f"$share/g/{topic}", 1)
    a.disconnect()
    pub = conns("5.0").connect()
    for i in range(5):
        pub.publish(topic, f"{i}".encode(), qos=1)
    assert [m.payload for m in b.get_n(5)] == [f"{i}".encode() for i in range(5)]


# --- v5 specifics ---------------------------------------------------------------------------

def test_v5_session_takeover_reason_code(conns, uid):
    cid = f"takeover-{uid}"
    first = conns("5.0", client_id=cid).connect()
    second = conns("5.0", client_id=cid).connect()
    try:
        rc, _props = first.disconnects.get(timeout=WAIT)
    except queue.Empty:
        pytest.fail("the first client was not disconnected")
    assert rc.value == 0x8E, f"expected SessionTakenOver (142), got {rc.value} {rc}"
    # The second one is fine.
    second.subscribe(f"paho/takeover/{uid}", 1)
    second.publish(f"paho/takeover/{uid}", b"ok", qos=1)
    assert second.get().payload == b"ok"


def test_v311_session_takeover_closes_first(conns, uid):
    cid = f"takeover311-{uid}"
    first = conns("3.1.1", client_id=cid).connect()
    conns("3.1.1", client_id=cid).connect()
    try:
        first.disconnects.get(timeout=WAIT)
    except queue.Empty:
        pytest.fail("the first client was not disconnected [MQTT-3.1.4-2]")


def test_v5_properties_pass_through(conns, uid):
    topic = f"paho/props/{uid}"
    sub = conns("5.0").connect()
    sub.subscribe(topic, 1)
    pub = conns("5.0").connect()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k1", "v1"), ("k2", "v2"), ("k1", "again")]
    props.ContentType = "application/json"
    props.ResponseTopic = f"paho/reply/{uid}"
    props.CorrelationData = b"\x00\x01corr"
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 120
    pub.publish(topic, b'{"a": 1}', qos=1, properties=props)
    m = sub.get()
    p = m.properties
    assert m.payload == b'{"a": 1}'
    # Order of user properties is kept [MQTT-3.3.2-18].
    assert p.UserProperty == [("k1", "v1"), ("k2", "v2"), ("k1", "again")]
    assert p.ContentType == "application/json"
    assert p.ResponseTopic == f"paho/reply/{uid}"
    assert p.CorrelationData == b"\x00\x01corr"
    assert p.PayloadFormatIndicator == 1
    assert 0 < p.MessageExpiryInterval <= 120


def test_v5_topic_alias_from_client(conns, uid):
    topic = f"paho/alias/{uid}"
    sub = conns("5.0").connect()
    sub.subscribe(topic, 1)
    pub = conns("5.0").connect()
    maximum = getattr(pub.connack[2], "TopicAliasMaximum", 0)
    if not maximum:
        pytest.skip("broker grants no topic aliases")
    first = Properties(PacketTypes.PUBLISH)
    first.TopicAlias = 1
    pub.publish(topic, b"a1", qos=1, properties=first)
    pub.publish("", b"a2", qos=1, properties=first)
    assert [m.payload for m in sub.get_n(2)] == [b"a1", b"a2"]


def test_v5_subscription_identifier(conns, uid):
    topic = f"paho/subid/{uid}"
    c = conns("5.0").connect()
    if getattr(c.connack[2], "SubscriptionIdentifierAvailable", 1) == 0:
        pytest.skip("broker has no subscription identifiers")
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 42
    c.subscribe(topic, 1, properties=props)
    conns("5.0").connect().publish(topic, b"x", qos=1)
    m = c.get()
    assert m.properties.SubscriptionIdentifier == [42]


def test_v5_unsubscribe_stops_delivery(conns, uid):
    topic = f"paho/unsub/{uid}"
    c = conns("5.0").connect()
    c.subscribe(topic, 1)
    c.subscribe(f"{topic}/probe", 1)
    rcs = c.unsubscribe(topic)
    assert all(not rc.is_failure for rc in rcs)
    conns("5.0").connect().publish(topic, b"after", qos=1)
    assert probe_after(c, f"{topic}/probe") == []
