"""MQTT 5.0 server conformance over raw sockets (exact bytes).

Each test is named after the main statement it proves; the docstring lists every id it
proves, and conformance/statements-5.0.tsv maps them back here.
"""
import time

import pytest

import mqtt_raw as m
from mqtt_raw import (CONNACK, DISCONNECT, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBACK,
                      UNSUBACK, PINGRESP, Closed, Conn, connect, packet, pingreq, puback,
                      pubcomp, publish, pubrec, pubrel, s, sub_opts, subscribe, u16, unsubscribe)

V = 5


def conn(port, cid, **kw):
    return m.connected(port, cid, version=V, **kw)


def sub(port, cid, flt, opts=0, **kw):
    c = conn(port, cid, **kw)
    ack = c.subscribe([(flt, opts)])
    assert ack.codes == [opts & 3], ack
    return c


def closed_with(c, codes=None, timeout=3.0):
    """The broker closes; if it sent a DISCONNECT first its reason is in `codes`. Returns it."""
    got = c.expect_close(timeout)
    disc = [p for p in got if p.type == DISCONNECT]
    assert len(got) == len(disc) <= 1, got
    if disc and codes is not None:
        assert disc[0].reason in codes, disc[0]
    return disc[0] if disc else None


def refused(c, codes=None):
    got = c.expect_close()
    assert all(p.type in (CONNACK, DISCONNECT) for p in got), got
    for p in got:
        if p.type == CONNACK:
            assert p.reason >= 0x80 and p.session_present == 0, p
            if codes:
                assert p.reason in codes, p
        else:
            raise AssertionError("DISCONNECT before a successful CONNACK: %r" % p)
    return got


# ------------------------------------------------------------------ CONNECT / CONNACK
def test_mqtt_3_1_0_1_first_packet_must_be_connect(port):
    """MQTT-3.1.0-1, MQTT-3.14.0-1: SUBSCRIBE before CONNECT: closed, no DISCONNECT (no CONNACK yet)."""
    c = Conn(port, V)
    c.send(subscribe(1, [("a", 0)], version=V))
    assert c.expect_close() == []


def test_mqtt_3_1_0_2_second_connect_protocol_error(port):
    """MQTT-3.1.0-2, MQTT-3.2.0-2, MQTT-4.13.1-1, MQTT-3.14.4-1, MQTT-3.14.4-2: a second CONNECT gets no
    second CONNACK: DISCONNECT 0x82 (Protocol Error), then the close, nothing after it."""
    c = conn(port, "c2")
    c.send(connect("c2", version=V))
    closed_with(c, {0x82})


def test_mqtt_3_1_2_2_unsupported_version(port):
    """MQTT-3.1.2-2, MQTT-3.2.2-6, MQTT-3.2.2-7, MQTT-3.2.2-8, MQTT-4.13.2-1: protocol level 6:
    CONNACK 0x84 (or 0x01) with Session Present 0, then the close."""
    c = Conn(port, V)
    c.send(connect("lvl", version=6))
    got = c.expect_close()
    assert [(p.type, p.session_present) for p in got] == [(CONNACK, 0)]
    assert got[0].reason in (0x84, 0x01)


def test_mqtt_3_1_2_1_wrong_protocol_name(port):
    """MQTT-3.1.2-1: protocol name "MQTS": not accepted, closed (optionally after a refusing CONNACK:
    0x84, or 0x01 in the 3.1.1 layout since the version is unknown)."""
    c = Conn(port, V)
    c.send(connect("pn", version=V, proto_name="MQTS"))
    got = c.expect_close()
    assert all(p.type == CONNACK and p.reason in (0x84, 0x01) for p in got), got


def test_mqtt_3_1_2_3_reserved_flag(port):
    """MQTT-3.1.2-3, MQTT-3.1.4-1: CONNECT reserved flag 1 is malformed: closed, no success CONNACK."""
    c = Conn(port, V)
    c.send(connect("rsv", version=V, reserved=True))
    refused(c)


def test_mqtt_3_1_2_11_will_fields_without_will_flag(port):
    """MQTT-3.1.2-11, MQTT-3.1.2-13, MQTT-3.1.2-15, MQTT-3.1.4-1: Will QoS / Will Retain set without the
    Will Flag is malformed: closed."""
    for i, fl in enumerate((0x02 | 0x10, 0x02 | 0x20)):
        c = Conn(port, V)
        c.send(connect("wf%d" % i, version=V, flags=fl))
        refused(c)


def test_mqtt_3_1_2_14_will_qos_3(port):
    """MQTT-3.1.2-14: Will QoS 3: closed."""
    c = Conn(port, V)
    c.send(connect("w3", version=V, flags=0x02 | 0x04 | 0x18, will=dict(topic="w", payload=b"x")))
    refused(c)


def test_mqtt_3_1_2_9_will_fields_missing(port):
    """MQTT-3.1.2-9, MQTT-3.1.2-19, MQTT-3.1.2-21, MQTT-3.1.3-1: flags promise will / user name /
    password fields the payload lacks: closed."""
    for i, fl in enumerate((0x06, 0x82, 0x42)):
        c = Conn(port, V)
        c.send(packet(1, 0, s("MQTT") + bytes([5, fl]) + u16(60) + b"\x00" + s("m%d" % i)))
        refused(c)


def test_mqtt_3_1_2_18_payload_field_order(port):
    """MQTT-3.1.2-18, MQTT-3.1.2-20, MQTT-3.1.3-1, MQTT-3.1.3-3, MQTT-3.1.4-5, MQTT-3.2.2-1: a CONNECT with
    client id, will properties/topic/payload, user name and password in order is accepted:
    CONNACK 0x00 with the reserved acknowledge flag bits 0; one with no optional fields too."""
    c = Conn(port, V)
    ack = c.connect("order", will=dict(topic="o/w", payload=b"m", props=[(m.WILL_DELAY, 0)]),
                    username="u", password=b"p")
    assert (ack.reason, ack.ack_flags & 0xFE) == (0, 0)
    assert Conn(port, V).connect("order2").reason == 0


def test_mqtt_3_1_2_4_clean_start_discards(port):
    """MQTT-3.1.2-4, MQTT-3.1.4-4, MQTT-3.2.2-2: Clean Start 1 discards the session (Session Present 0,
    subscription gone)."""
    c = sub(port, "cs", "cs/t", 1, properties=[(m.SESSION_EXPIRY, 60)])
    c.disconnect()
    c = Conn(port, V)
    ack = c.connect("cs", clean=True)
    assert (ack.reason, ack.session_present) == (0, 0)
    conn(port, "csp").publish("cs/t", b"x", qos=1)
    c.expect_nothing(0.3)


def test_mqtt_3_1_2_5_clean_start_0_resumes(port):
    """MQTT-3.1.2-5, MQTT-3.1.2-25, MQTT-3.1.3-2, MQTT-3.2.2-3, MQTT-4.5.0-1, MQTT-4.1.0-1: Clean Start 0
    with a stored session (expiry 60): Session Present 1, the subscription and the QoS 1 message
    published meanwhile are there; QoS 0 is not queued for the offline session."""
    c = sub(port, "rs", "rs/#", 1, properties=[(m.SESSION_EXPIRY, 60)])
    c.disconnect()
    p = conn(port, "rsp")
    p.publish("rs/0", b"zero", qos=0)
    p.publish("rs/1", b"one", qos=1)
    c = Conn(port, V)
    ack = c.connect("rs", clean=False, properties=[(m.SESSION_EXPIRY, 60)])
    assert (ack.reason, ack.session_present) == (0, 1)
    got = c.recv_publish()
    assert (got.topic, got.payload) == ("rs/1", b"one")
    c.expect_nothing(0.3)


def test_mqtt_3_1_2_6_clean_start_0_new_session(port):
    """MQTT-3.1.2-6, MQTT-3.2.2-3: Clean Start 0 and no stored session: new session, Session Present 0."""
    c = Conn(port, V)
    ack = c.connect("new0", clean=False, properties=[(m.SESSION_EXPIRY, 10)])
    assert (ack.reason, ack.session_present) == (0, 0)


def test_mqtt_4_1_0_2_session_discarded_after_expiry(port):
    """MQTT-4.1.0-2, MQTT-3.1.2-25: a session with expiry 1 s is gone 2 s after its connection
    closed; with expiry 0 (absent) it ends with the connection."""
    c = sub(port, "exp1", "e/t", 1, clean=False, properties=[(m.SESSION_EXPIRY, 1)])
    c.disconnect()
    z = sub(port, "exp0", "e/t", 1, clean=False)
    z.disconnect()
    time.sleep(2.0)
    for cid in ("exp1", "exp0"):
        c = Conn(port, V)
        assert c.connect(cid, clean=False).session_present == 0


def test_mqtt_3_1_2_8_will_published_after_delay(port):
    """MQTT-3.1.2-7, MQTT-3.1.2-8, MQTT-3.1.2-16, MQTT-3.1.2-10: a will (Will Delay 1 s, expiry 10 s)
    is published once about 1 s after an abnormal close, non-retained."""
    w = sub(port, "ww", "will/#", 1)
    c = conn(port, "wd", properties=[(m.SESSION_EXPIRY, 10)],
             will=dict(topic="will/d", payload=b"late", qos=1, props=[(m.WILL_DELAY, 1)]))
    c.close()
    w.expect_nothing(0.6)
    got = w.recv_publish(timeout=3)
    assert (got.payload, got.retain, got.qos) == (b"late", False, 1)
    w.expect_nothing(0.3)


def test_mqtt_3_1_2_26_will_cancelled_by_reconnect(port):
    """MQTT-3.1.2-26: the client reconnects before the Will Delay passes: no will."""
    w = sub(port, "wcw", "wc/#")
    c = conn(port, "wc", properties=[(m.SESSION_EXPIRY, 10)],
             will=dict(topic="wc/d", payload=b"no", props=[(m.WILL_DELAY, 2)]))
    c.close()
    time.sleep(0.2)
    c = Conn(port, V)
    assert c.connect("wc", clean=False, properties=[(m.SESSION_EXPIRY, 10)]).session_present == 1
    w.expect_nothing(2.5)


def test_mqtt_3_1_2_17_will_retained_qos2(port):
    """MQTT-3.1.2-17, MQTT-3.2.2-12, MQTT-3.2.2-13: a QoS 2 will with Will Retain 1 is accepted (both are
    supported) and published retained."""
    c = conn(port, "wr", will=dict(topic="wr/t", payload=b"bye", qos=2, retain=True))
    c.close()
    time.sleep(0.2)
    late = sub(port, "wrl", "wr/t", 2)
    got = late.recv_publish()
    assert (got.payload, got.retain, got.qos) == (b"bye", True, 2)


def test_mqtt_3_14_4_3_normal_disconnect_discards_will(port):
    """MQTT-3.14.4-3, MQTT-3.1.2-10, MQTT-3.1.2-12: DISCONNECT 0x00 discards the will; a connection
    without will publishes nothing on an abnormal close; DISCONNECT 0x04 publishes the will."""
    w = sub(port, "dw", "dw/#")
    conn(port, "d0", will=dict(topic="dw/0", payload=b"x")).disconnect(reason=0)
    conn(port, "dn").close()
    w.expect_nothing(0.5)
    conn(port, "d4", will=dict(topic="dw/4", payload=b"y")).disconnect(reason=4)
    assert w.recv_publish().topic == "dw/4"


def test_mqtt_3_1_2_24_keep_alive_timeout(port):
    """MQTT-3.1.2-24, MQTT-3.2.2-22, MQTT-3.14.2-1, MQTT-3.14.2-2, MQTT-3.14.4-1, MQTT-3.14.4-2,
    MQTT-4.13.2-1: keep-alive 1 s, no Server Keep Alive in CONNACK: after 1.5 s of silence
    DISCONNECT 0x8D (no Session Expiry property), then the close."""
    c = conn(port, "ka", keepalive=1)
    assert c.connack.prop(m.SERVER_KEEP_ALIVE) is None
    t0 = time.monotonic()
    d = closed_with(c, {0x8D}, timeout=4)
    assert 1.4 <= time.monotonic() - t0 <= 3.0
    assert d is not None and d.prop(m.SESSION_EXPIRY) is None


def test_mqtt_3_2_2_21_server_keep_alive(make_broker):
    """MQTT-3.2.2-21 (server side): with max_keep_alive 2 s, a client asking 60 s is told Server Keep
    Alive 2 and closed after 3 s of silence."""
    b = make_broker(limits={"max_keep_alive": "2s"})
    c = conn(b.port, "ska", keepalive=60)
    assert c.connack.prop(m.SERVER_KEEP_ALIVE) == 2
    t0 = time.monotonic()
    closed_with(c, {0x8D}, timeout=6)
    assert 2.8 <= time.monotonic() - t0 <= 4.5


def test_mqtt_3_1_3_5_allows_23_alphanumerics(port):
    """MQTT-3.1.3-5: a 23-character alphanumeric client id is accepted."""
    assert Conn(port, V).connect("Zz9" * 7 + "aQ").reason == 0


def test_mqtt_3_1_3_6_assigned_client_identifier(port):
    """MQTT-3.1.3-6, MQTT-3.1.3-7, MQTT-3.2.2-16: an empty client id gets an Assigned Client Identifier
    in CONNACK, unique per connection, usable to resume the session."""
    a = conn(port, "", clean=False, properties=[(m.SESSION_EXPIRY, 30)])
    b = conn(port, "")
    ida, idb = a.connack.prop(m.ASSIGNED_CLIENT_ID), b.connack.prop(m.ASSIGNED_CLIENT_ID)
    assert ida and idb and ida != idb
    a.subscribe([("as/t", 1)])
    a.disconnect()
    c = Conn(port, V)
    assert c.connect(ida, clean=False, properties=[(m.SESSION_EXPIRY, 30)]).session_present == 1


def test_mqtt_3_1_3_4_client_id_not_utf8(port):
    """MQTT-3.1.3-4, MQTT-3.1.3-8, MQTT-1.5.4-1: an ill-formed UTF-8 client id: closed, no success."""
    c = Conn(port, V)
    c.send(packet(1, 0, s("MQTT") + bytes([5, 2]) + u16(60) + b"\x00" + s(b"\xed\xa0\x80")))
    refused(c)


def test_mqtt_3_1_3_9_will_topic_and_username_utf8(port):
    """MQTT-3.1.3-9, MQTT-3.1.3-10: ill-formed UTF-8 will topic / user name: closed, no success."""
    for i, kw in enumerate((dict(will=dict(topic=b"w\xff", payload=b"x")), dict(username=b"\xc3\x28"))):
        c = Conn(port, V)
        c.send(connect("u%d" % i, version=V, **kw))
        refused(c)


def test_mqtt_3_1_4_2_failed_authentication(make_broker):
    """MQTT-3.1.4-2, MQTT-3.1.4-6, MQTT-3.2.2-6, MQTT-3.2.2-7, MQTT-3.2.2-8, MQTT-4.13.2-1: anonymous
    connect to a broker that requires credentials: CONNACK 0x86/0x87 with Session Present 0,
    then the close; the pipelined retained PUBLISH is not processed."""
    b = make_broker(auth={"allow_anonymous": False})
    c = Conn(b.port, V)
    c.send(connect("anon", version=V) + publish("auth/t", b"x", retain=True, version=V))
    refused(c, {0x86, 0x87})


def test_mqtt_3_1_4_3_takeover(port):
    """MQTT-3.1.4-3, MQTT-3.14.2-1, MQTT-3.14.4-1, MQTT-3.14.4-2: a second connection with the same
    client id: the first gets DISCONNECT 0x8E and is closed; the new one works."""
    a = conn(port, "to")
    b = conn(port, "to")
    closed_with(a, {0x8E})
    assert b.is_open()


def test_mqtt_3_8_4_1_subscribe_pipelined_after_connect(port):
    """MQTT-3.8.4-1 (also MQTT-3.12.4-1): CONNECT+SUBSCRIBE+PINGREQ in one write: SUBACK and PINGRESP
    must follow CONNACK without further input from the client."""
    c = Conn(port, V)
    c.send(connect("pipe", version=V) + subscribe(1, [("p/t", 0)], version=V) + pingreq())
    assert c.recv().type == CONNACK
    assert c.recv(1.0).type == SUBACK
    assert c.recv(1.0).type == PINGRESP


def test_mqtt_3_2_0_1_connack_before_anything(port):
    """MQTT-3.2.0-1: with a message waiting for the resumed session, CONNACK still comes first."""
    c = sub(port, "cf", "cf/t", 1, properties=[(m.SESSION_EXPIRY, 30)])
    c.close()
    conn(port, "cfp").publish("cf/t", b"w", qos=1)
    c = Conn(port, V)
    c.send(connect("cf", version=V, clean=False, properties=[(m.SESSION_EXPIRY, 30)]))
    assert c.recv().type == CONNACK
    assert c.recv().type == PUBLISH


def test_mqtt_3_2_2_9_connack_capabilities(port):
    """MQTT-3.2.2-9, MQTT-3.2.2-10, MQTT-3.1.2-31, MQTT-4.12.0-6: CONNACK advertises no Maximum QoS
    below 2 (QoS 2 supported), no Response Information unless asked, no Authentication Method;
    SUBSCRIBE at QoS 0, 1 and 2 is granted."""
    c = conn(port, "cap")
    ack = c.connack
    assert ack.prop(m.MAXIMUM_QOS, 2) == 2
    assert ack.prop(m.RESPONSE_INFO) is None and ack.prop(m.AUTH_METHOD) is None
    assert ack.prop(m.RECEIVE_MAXIMUM) == 64 and ack.prop(m.TOPIC_ALIAS_MAXIMUM) == 64
    assert c.subscribe([("q/0", 0), ("q/1", 1), ("q/2", 2)]).codes == [0, 1, 2]


def test_mqtt_4_12_0_1_unsupported_auth_method(port):
    """MQTT-4.12.0-1: an Authentication Method the server does not support: CONNACK 0x8C/0x87, closed."""
    c = Conn(port, V)
    c.send(connect("am", version=V, properties=[(m.AUTH_METHOD, "SCRAM-SHA-999")]))
    refused(c, {0x8C, 0x87})


def test_mqtt_3_2_2_19_connack_respects_client_max_packet(make_broker):
    """MQTT-3.2.2-19, MQTT-3.2.2-20: a refused CONNACK to a client with Maximum Packet Size 16 carries no
    Reason String / User Property that would make it larger than 16 bytes."""
    b = make_broker(auth={"allow_anonymous": False})
    c = Conn(b.port, V)
    c.send(connect("mps", version=V, properties=[(m.MAXIMUM_PACKET_SIZE, 16)]))
    got = c.expect_close()
    for p in got:
        if len(p.body) + 2 > 16:
            assert p.prop(m.REASON_STRING) is None and p.prop(m.USER_PROPERTY) is None, p


# ------------------------------------------------------------------ data representation, flags
def test_mqtt_1_5_4_1_ill_formed_utf8(port):
    """MQTT-1.5.4-1, MQTT-3.3.2-1, MQTT-4.13.1-1: a topic with an encoded surrogate: DISCONNECT 0x81
    (or a bare close)."""
    c = conn(port, "u8")
    c.send(packet(3, 0, s(b"a\xed\xa0\x80") + b"\x00x"))
    closed_with(c, {0x81, 0x82})


def test_mqtt_1_5_4_2_null_character(port):
    """MQTT-1.5.4-2, MQTT-4.7.3-2: U+0000 in a topic name: closed."""
    c = conn(port, "nul")
    c.send(publish("a\x00", b"x", version=V))
    closed_with(c, {0x81, 0x82, 0x90})


def test_mqtt_1_5_4_3_bom_kept(port):
    """MQTT-1.5.4-3, MQTT-4.7.3-4: U+FEFF is not stripped: topic "\\ufeffv" is delivered as such and
    does not match the filter "v"."""
    b = sub(port, "bom", "\ufeffv")
    p = sub(port, "plain", "v")
    conn(port, "bp").publish("\ufeffv", b"x")
    assert b.recv_publish().topic == "\ufeffv"
    p.expect_nothing(0.3)


def test_mqtt_1_5_5_1_non_minimal_varint(port):
    """MQTT-1.5.5-1: a Remaining Length encoded in more bytes than needed (PINGREQ C0 80 00) is malformed."""
    c = conn(port, "vi")
    c.send(b"\xc0\x80\x00")
    closed_with(c, {0x81})


def test_mqtt_1_5_7_1_user_property_utf8(port):
    """MQTT-1.5.7-1: a User Property whose value is ill-formed UTF-8 is malformed: closed."""
    c = conn(port, "up")
    props = m.varint(1 + 2 + 1 + 2 + 2) + bytes([m.USER_PROPERTY]) + s("k") + s(b"\xff\xfe")
    c.send(packet(3, 0, s("t") + props + b"x"))
    closed_with(c, {0x81})


def test_mqtt_2_1_3_1_reserved_flags(port):
    """MQTT-2.1.3-1, MQTT-3.8.1-1, MQTT-3.10.1-1, MQTT-3.6.1-1: SUBSCRIBE / UNSUBSCRIBE / PUBREL with
    flags 0000: malformed, closed (DISCONNECT 0x81 allowed first)."""
    for i, data in enumerate((subscribe(1, [("a", 0)], version=V, flags=0),
                              unsubscribe(1, ["a"], version=V, flags=0))):
        c = conn(port, "rf%d" % i)
        c.send(data)
        closed_with(c, {0x81})
    c = conn(port, "rf2")
    c.send(publish("q2", b"x", qos=2, pid=3, version=V))
    assert c.recv_type(PUBREC).pid == 3
    c.send(pubrel(3, flags=0))
    closed_with(c, {0x81})


def test_mqtt_3_14_1_1_disconnect_reserved_bits(port):
    """MQTT-3.14.1-1: DISCONNECT with flag bits set is malformed: closed, and the will is published."""
    w = sub(port, "drw", "drb/#")
    c = conn(port, "drb", will=dict(topic="drb/w", payload=b"w"))
    c.send(b"\xe1\x00")
    closed_with(c, {0x81})
    assert w.recv_publish().payload == b"w"


def test_mqtt_3_15_1_1_auth_packet_refused(port):
    """MQTT-3.15.1-1: an AUTH packet (reserved flags set, and no Authentication Method in CONNECT) is
    refused: the connection is closed."""
    c = conn(port, "au")
    c.send(b"\xf1\x00")
    closed_with(c, {0x81, 0x82})


def test_mqtt_2_2_2_1_property_length_zero(port):
    """MQTT-2.2.2-1, MQTT-2.2.1-2, MQTT-4.3.1-1, MQTT-3.3.1-2: a forwarded QoS 0 PUBLISH without
    properties has a Property Length 0, no packet id, DUP 0: topic, 00, payload."""
    c = sub(port, "pl", "pl/t")
    conn(port, "plp").publish("pl/t", b"abc")
    got = c.recv_publish()
    assert (got.body, got.dup, got.qos) == (s("pl/t") + b"\x00abc", False, 0)


def test_mqtt_2_2_1_5_packet_ids_in_acks(port):
    """MQTT-2.2.1-5, MQTT-2.2.1-6, MQTT-3.8.4-1, MQTT-3.8.4-2, MQTT-3.10.4-4, MQTT-3.10.4-5, MQTT-3.3.4-1,
    MQTT-4.3.2-4, MQTT-4.3.3-8, MQTT-4.3.3-11, MQTT-3.4.2-1, MQTT-3.5.2-1, MQTT-3.7.2-1,
    MQTT-3.11.3-2: acks carry the packet id they answer and reason codes from the tables."""
    c = conn(port, "ids")
    assert c.subscribe([("ids/t", 1)], pid=0x1234).pid == 0x1234
    u = c.unsubscribe(["ids/t", "ids/none"], pid=0x4321)
    assert (u.pid, u.codes) == (0x4321, [0x00, 0x11])
    c.send(publish("ids/x", b"0", version=V))
    c.expect_nothing(0.2)
    c.send(publish("ids/x", b"1", qos=1, pid=0xBEEF, version=V))
    a = c.recv_type(PUBACK)
    assert a.pid == 0xBEEF and a.reason in (0x00, 0x10)
    c.send(publish("ids/x", b"2", qos=2, pid=0xCAFE, version=V))
    r = c.recv_type(PUBREC)
    assert r.pid == 0xCAFE and r.reason in (0x00, 0x10)
    c.send(pubrel(0xCAFE))
    pc = c.recv_type(PUBCOMP)
    assert pc.pid == 0xCAFE and pc.reason == 0
    c.send(pubrel(0x7777))
    assert c.recv_type(PUBCOMP).reason in (0x00, 0x92)


def test_mqtt_2_2_1_4_server_packet_ids(port):
    """MQTT-2.2.1-4, MQTT-4.3.2-1, MQTT-4.3.2-2, MQTT-4.3.3-1, MQTT-4.3.3-2, MQTT-4.3.3-4, MQTT-3.6.2-1:
    outgoing QoS 1/2 PUBLISHes have distinct non-zero ids and DUP 0; PUBREC gets a PUBREL with
    the same id and reason 0."""
    c = sub(port, "sid", "sid/#", 2)
    p = conn(port, "sidp")
    for i in range(3):
        p.publish("sid/1", b"%d" % i, qos=1, pid=1 + i)
        p.publish("sid/2", b"%d" % i, qos=2, pid=10 + i)
    got = [c.recv_publish(ack=False) for _ in range(6)]
    ids = [x.pid for x in got]
    assert 0 not in ids and len(set(ids)) == 6 and not any(x.dup for x in got)
    for x in got:
        if x.qos == 1:
            c.send(puback(x.pid))
        else:
            c.send(pubrec(x.pid))
            rel = c.recv_type(PUBREL)
            assert (rel.pid, rel.reason) == (x.pid, 0)
            c.send(pubcomp(x.pid))


# ------------------------------------------------------------------ PUBLISH
def test_mqtt_3_3_1_1_redelivery_with_dup(port):
    """MQTT-3.3.1-1, MQTT-4.4.0-1, MQTT-4.3.2-3, MQTT-4.6.0-1, MQTT-4.3.3-3: unacknowledged QoS 1/2
    messages are re-sent on resume, DUP 1, original ids, original order."""
    se = [(m.SESSION_EXPIRY, 60)]
    c = sub(port, "rd", "rd/#", 2, properties=se)
    p = conn(port, "rdp")
    p.publish("rd/a", b"1", qos=1, pid=1)
    p.publish("rd/b", b"2", qos=2, pid=2)
    p.publish("rd/a", b"3", qos=1, pid=3)
    first = [c.recv_publish(ack=False) for _ in range(3)]
    c.close()
    c = Conn(port, V)
    assert c.connect("rd", clean=False, properties=se).session_present == 1
    again = [c.recv_publish() for _ in range(3)]
    assert [(x.pid, x.payload) for x in again] == [(x.pid, x.payload) for x in first]
    assert all(x.dup for x in again)


def test_mqtt_4_3_3_6_pubrel_resent_not_publish(port):
    """MQTT-4.3.3-5, MQTT-4.3.3-6, MQTT-4.4.0-1: after PUBREC, resume re-sends the PUBREL (same id), not
    the PUBLISH."""
    se = [(m.SESSION_EXPIRY, 60)]
    c = sub(port, "pr", "pr/t", 2, properties=se)
    conn(port, "prp").publish("pr/t", b"x", qos=2)
    x = c.recv_publish(ack=False)
    c.send(pubrec(x.pid))
    assert c.recv_type(PUBREL).pid == x.pid
    c.close()
    c = Conn(port, V)
    c.connect("pr", clean=False, properties=se)
    p = c.recv()
    assert (p.type, p.pid) == (PUBREL, x.pid)
    c.send(pubcomp(x.pid))
    c.expect_nothing(0.3)


def test_mqtt_4_4_0_2_error_ack_not_retransmitted(port):
    """MQTT-4.4.0-2: a PUBACK with reason 0x80 acknowledges: the message is not re-sent on resume."""
    se = [(m.SESSION_EXPIRY, 60)]
    c = sub(port, "ea", "ea/t", 1, properties=se)
    conn(port, "eap").publish("ea/t", b"x", qos=1)
    x = c.recv_publish(ack=False)
    c.send(puback(x.pid, version=V, reason=0x80))
    c.is_open()
    c.close()
    c = Conn(port, V)
    assert c.connect("ea", clean=False, properties=se).session_present == 1
    c.expect_nothing(0.4)


def test_mqtt_3_3_1_3_dup_set_independently(port):
    """MQTT-3.3.1-3: incoming DUP 1 is not propagated to the subscriber."""
    c = sub(port, "dp", "dp", 1)
    conn(port, "dpp").publish("dp", b"x", qos=1, dup=True)
    assert c.recv_publish().dup is False


def test_mqtt_3_3_1_4_qos_3_malformed(port):
    """MQTT-3.3.1-4, MQTT-4.13.1-1: a PUBLISH with QoS 3: DISCONNECT 0x81, closed."""
    c = conn(port, "q3")
    c.send(packet(3, 0x06, s("a") + u16(1) + b"\x00x"))
    closed_with(c, {0x81})


def test_mqtt_3_3_1_5_retained_semantics(port):
    """MQTT-3.3.1-5, MQTT-3.3.1-6, MQTT-3.3.1-7, MQTT-3.3.1-8, MQTT-3.3.1-9, MQTT-3.8.4-8: retained messages
    replace each other, RETAIN 0 leaves them alone, an empty retained payload is forwarded and
    clears the topic (and is not stored); a new subscriber gets the retained one at min QoS."""
    p = conn(port, "rt")
    live = sub(port, "rtl", "rt/#", 2)
    p.publish("rt/a", b"old", qos=2, retain=True)
    p.publish("rt/a", b"new", qos=1, retain=True)
    p.publish("rt/a", b"plain", qos=1)
    p.publish("rt/b", b"gone", qos=1, retain=True)
    p.publish("rt/b", b"", qos=1, retain=True)
    assert [x.payload for x in (live.recv_publish() for _ in range(5))] == [b"old", b"new", b"plain", b"gone", b""]
    late = sub(port, "rtn", "rt/#", 2)
    got = late.recv_publish()
    assert (got.topic, got.payload, got.qos, got.retain) == ("rt/a", b"new", 1, True)
    late.expect_nothing(0.3)
    low = sub(port, "rt0", "rt/a", 0)
    assert low.recv_publish().qos == 0


def test_mqtt_3_3_1_9_retain_handling(port):
    """MQTT-3.3.1-9, MQTT-3.3.1-10, MQTT-3.3.1-11, MQTT-3.8.4-4: Retain Handling 0 sends retained on every
    subscribe (also when replacing), 1 only when the subscription is new, 2 never."""
    conn(port, "rhp").publish("rh/t", b"r", qos=1, retain=True)
    c = conn(port, "rh")
    for rh, expect in ((0, True), (0, True), (1, False), (2, False)):
        c.subscribe([("rh/t", sub_opts(1, rh=rh))])
        if expect:
            assert c.recv_publish().retain
        else:
            c.expect_nothing(0.3)
    d = conn(port, "rh1")
    d.subscribe([("rh/t", sub_opts(1, rh=1))])
    assert d.recv_publish().payload == b"r"
    e = conn(port, "rh2")
    e.subscribe([("rh/t", sub_opts(1, rh=2))])
    e.expect_nothing(0.3)


def test_mqtt_3_3_1_12_retain_as_published(port):
    """MQTT-3.3.1-12, MQTT-3.3.1-13: Retain As Published 0 clears RETAIN on live forwarding, 1 keeps it."""
    a = sub(port, "rap0", "rap/t", sub_opts(0, rap=False))
    b = sub(port, "rap1", "rap/t", sub_opts(0, rap=True))
    p = conn(port, "rapp")
    p.publish("rap/t", b"x", retain=True)
    p.publish("rap/t", b"y", retain=False)
    assert [x.retain for x in (a.recv_publish(), a.recv_publish())] == [False, False]
    assert [x.retain for x in (b.recv_publish(), b.recv_publish())] == [True, False]


def test_mqtt_3_3_2_2_wildcard_topic_name(port):
    """MQTT-3.3.2-2, MQTT-4.7.0-1, MQTT-4.13.1-1: PUBLISH to "a/+": DISCONNECT 0x90 (or 0x81/0x82)."""
    c = conn(port, "wc")
    c.send(publish("a/+", b"x", version=V))
    closed_with(c, {0x90, 0x81, 0x82})


def test_mqtt_3_3_2_3_topic_matches_filter(port):
    """MQTT-3.3.2-3: delivery through "tm/+/x" carries the published topic name."""
    c = sub(port, "tm", "tm/+/x")
    conn(port, "tmp").publish("tm/q/x", b"1")
    assert c.recv_publish().topic == "tm/q/x"


def test_mqtt_3_3_2_4_properties_forwarded_unaltered(port):
    """MQTT-3.3.2-4, MQTT-3.3.2-15, MQTT-3.3.2-16, MQTT-3.3.2-17, MQTT-3.3.2-18, MQTT-3.3.2-20: Payload Format
    Indicator, Response Topic, Correlation Data, User Properties (order and duplicates kept) and
    Content Type reach the subscriber unaltered, live and retained."""
    props = [(m.PAYLOAD_FORMAT, 1), (m.RESPONSE_TOPIC, "reply/here"), (m.CORRELATION_DATA, b"\x00\x01id"),
             (m.USER_PROPERTY, ("z", "1")), (m.USER_PROPERTY, ("a", "2")), (m.USER_PROPERTY, ("z", "0")),
             (m.CONTENT_TYPE, "text/plain; charset=utf-8")]
    c = sub(port, "pf", "pf/t", 1)
    conn(port, "pfp").publish("pf/t", "h\u00e9".encode(), qos=1, retain=True, properties=props)
    for got in (c.recv_publish(), sub(port, "pf2", "pf/t", 1).recv_publish()):
        assert got.prop(m.PAYLOAD_FORMAT) == 1
        assert got.prop(m.RESPONSE_TOPIC) == "reply/here"
        assert got.prop(m.CORRELATION_DATA) == b"\x00\x01id"
        assert got.props_all(m.USER_PROPERTY) == [("z", "1"), ("a", "2"), ("z", "0")]
        assert got.prop(m.CONTENT_TYPE) == "text/plain; charset=utf-8"


def test_mqtt_3_3_2_5_message_expiry(broker):
    """MQTT-3.3.2-5, MQTT-3.3.2-6: a message with Message Expiry 1 s waiting for an offline session is
    dropped after 2 s; one with 30 s arrives with the interval reduced by the time it waited."""
    port = broker.port
    se = [(m.SESSION_EXPIRY, 60)]
    c = sub(port, "me", "me/#", 1, properties=se)
    c.disconnect()
    broker.wait_metric('brokk_sessions{state="disconnected"}', 1)
    p = conn(port, "mep")
    p.publish("me/short", b"s", qos=1, properties=[(m.MESSAGE_EXPIRY, 1)])
    p.publish("me/long", b"l", qos=1, properties=[(m.MESSAGE_EXPIRY, 30)])
    time.sleep(2.1)
    c = Conn(port, V)
    c.connect("me", clean=False, properties=se)
    got = c.recv_publish()
    assert got.topic == "me/long"
    assert 26 <= got.prop(m.MESSAGE_EXPIRY) <= 28
    c.expect_nothing(0.3)


def test_mqtt_4_3_3_7_no_expiry_after_sending(port):
    """MQTT-4.3.3-7: a QoS 2 PUBLISH already sent is not expired: re-sent on resume after its expiry."""
    se = [(m.SESSION_EXPIRY, 60)]
    c = sub(port, "ne", "ne/t", 2, properties=se)
    conn(port, "nep").publish("ne/t", b"x", qos=2, properties=[(m.MESSAGE_EXPIRY, 1)])
    x = c.recv_publish(ack=False)
    c.close()
    time.sleep(1.6)
    c = Conn(port, V)
    c.connect("ne", clean=False, properties=se)
    again = c.recv_publish()
    assert (again.pid, again.dup) == (x.pid, True)


def test_mqtt_4_3_3_13_qos2_sequence_continues_after_expiry(port):
    """MQTT-4.3.3-13, MQTT-4.3.3-10: an inbound QoS 2 message whose expiry passes before PUBREL still
    gets PUBREC for a duplicate and PUBCOMP for the PUBREL."""
    c = conn(port, "qe")
    c.send(publish("qe/t", b"x", qos=2, pid=4, version=V, properties=[(m.MESSAGE_EXPIRY, 1)]))
    assert c.recv_type(PUBREC).pid == 4
    time.sleep(1.3)
    c.send(publish("qe/t", b"x", qos=2, pid=4, dup=True, version=V, properties=[(m.MESSAGE_EXPIRY, 1)]))
    assert c.recv_type(PUBREC).pid == 4
    c.send(pubrel(4))
    assert c.recv_type(PUBCOMP).pid == 4


def test_mqtt_4_3_3_10_exactly_once(port):
    """MQTT-4.3.3-10, MQTT-4.3.3-11, MQTT-4.3.3-12, MQTT-4.3.2-5: a re-sent QoS 2 PUBLISH before PUBREL is
    acknowledged but delivered once; after PUBCOMP the id starts a new message; after PUBACK a
    QoS 1 id is new as well."""
    c = sub(port, "eo", "eo", 2)
    p = conn(port, "eop")
    p.send(publish("eo", b"once", qos=2, pid=9, version=V))
    assert p.recv_type(PUBREC).pid == 9
    p.send(publish("eo", b"once", qos=2, pid=9, dup=True, version=V))
    assert p.recv_type(PUBREC).pid == 9
    p.send(pubrel(9))
    assert p.recv_type(PUBCOMP).pid == 9
    assert c.recv_publish().payload == b"once"
    c.expect_nothing(0.3)
    p.publish("eo", b"again", qos=2, pid=9)
    p.publish("eo", b"q1a", qos=1, pid=9)
    p.publish("eo", b"q1b", qos=1, pid=9, dup=True)
    assert [c.recv_publish().payload for _ in range(3)] == [b"again", b"q1a", b"q1b"]


def test_mqtt_3_3_2_7_topic_alias_not_carried_over(port):
    """MQTT-3.3.2-7, MQTT-3.3.2-12, MQTT-4.13.1-1: aliases 1 and 64 work within a connection; a new
    connection using alias 1 with an empty topic is a protocol error (0x82/0x94)."""
    c = sub(port, "tas", "ta/#")
    p = conn(port, "ta")
    p.send(publish("ta/one", b"1", version=V, properties=[(m.TOPIC_ALIAS, 1)]))
    p.send(publish("ta/max", b"2", version=V, properties=[(m.TOPIC_ALIAS, 64)]))
    p.send(publish("", b"3", version=V, properties=[(m.TOPIC_ALIAS, 1)]))
    p.send(publish("", b"4", version=V, properties=[(m.TOPIC_ALIAS, 64)]))
    assert [(x.topic, x.payload) for x in (c.recv_publish() for _ in range(4))] == \
        [("ta/one", b"1"), ("ta/max", b"2"), ("ta/one", b"3"), ("ta/max", b"4")]
    p.disconnect()
    q = conn(port, "ta")
    q.send(publish("", b"5", version=V, properties=[(m.TOPIC_ALIAS, 1)]))
    closed_with(q, {0x82, 0x94})
    c.expect_nothing(0.2)


def test_mqtt_3_3_2_8_topic_alias_zero_and_above_max(port):
    """MQTT-3.3.2-8 (inbound), MQTT-4.13.1-1: Topic Alias 0 or above the advertised maximum: DISCONNECT
    0x94, closed."""
    for i, alias in enumerate((0, 65)):
        c = conn(port, "tz%d" % i)
        c.send(publish("t", b"x", version=V, properties=[(m.TOPIC_ALIAS, alias)]))
        closed_with(c, {0x94, 0x82})


def test_mqtt_3_1_2_29_outbound_topic_alias(port):
    """MQTT-3.1.2-29, MQTT-3.1.2-30, MQTT-3.3.2-11, MQTT-3.3.2-8: a client with Topic Alias Maximum 1
    gets aliases no greater than 1 and never 0; a client without it gets no alias."""
    a = sub(port, "oa", "oa/#", properties=[(m.TOPIC_ALIAS_MAXIMUM, 1)])
    n = sub(port, "on", "oa/#")
    p = conn(port, "oap")
    for t in ("oa/x", "oa/y", "oa/x", "oa/x"):
        p.publish(t, b"v")
    topics = []
    for _ in range(4):
        got = a.recv_publish()
        alias = got.prop(m.TOPIC_ALIAS)
        assert alias in (None, 1)
        topics.append((got.topic, alias))
        assert n.recv_publish().prop(m.TOPIC_ALIAS) is None
    known = {}
    for topic, alias in topics:
        if topic:
            if alias:
                known[alias] = topic
        else:
            assert alias in known
    assert any(alias for _, alias in topics)


def test_mqtt_3_1_2_27_max_packet_size_to_client(port):
    """MQTT-3.1.2-27, MQTT-3.1.2-28: a message larger than the client's Maximum Packet Size is not sent
    to it (and does not block the next one); the connection stays up."""
    c = sub(port, "mp", "mp/t", 1, properties=[(m.MAXIMUM_PACKET_SIZE, 100)])
    p = conn(port, "mpp")
    p.publish("mp/t", b"x" * 200, qos=1)
    p.publish("mp/t", b"small", qos=1)
    got = c.recv_publish()
    assert got.payload == b"small" and len(got.body) + 2 <= 100
    c.expect_nothing(0.3)
    assert c.is_open()


def test_mqtt_3_14_2_3_small_max_packet_size_acks(port):
    """MQTT-3.4.2-2, MQTT-3.4.2-3, MQTT-3.5.2-2, MQTT-3.5.2-3, MQTT-3.6.2-2, MQTT-3.6.2-3, MQTT-3.7.2-2,
    MQTT-3.7.2-3, MQTT-3.9.2-1, MQTT-3.9.2-2, MQTT-3.11.2-1, MQTT-3.11.2-2, MQTT-3.1.2-32: with Maximum
    Packet Size 12 and Request Problem Information 0, acknowledgements carry no Reason String or
    User Property and fit in 12 bytes, even for a refused subscription."""
    c = conn(port, "sm", properties=[(m.MAXIMUM_PACKET_SIZE, 12), (m.REQUEST_PROBLEM_INFO, 0)])
    acks = [c.subscribe([("sm/t", 2)]), c.subscribe([("$share/nofilter", 1)], pid=2)]
    c.send(publish("sm/x", b"1", qos=1, pid=3, version=V))
    acks.append(c.recv_type(PUBACK))
    c.send(publish("sm/x", b"2", qos=2, pid=4, version=V))
    acks.append(c.recv_type(PUBREC))
    c.send(pubrel(4))
    acks.append(c.recv_type(PUBCOMP))
    conn(port, "smp").publish("sm/t", b"", qos=2)
    x = c.recv_type(PUBLISH)
    c.send(pubrec(x.pid))
    acks.append(c.recv_type(PUBREL))
    c.send(pubcomp(x.pid))
    acks.append(c.unsubscribe(["sm/t", "sm/none"], pid=5))
    for a in acks:
        assert len(a.body) + 2 <= 12, a
        assert a.prop(m.REASON_STRING) is None and a.prop(m.USER_PROPERTY) is None, a


def test_mqtt_3_14_2_3_disconnect_respects_max_packet_size(port):
    """MQTT-3.14.2-3, MQTT-3.14.2-4: keep-alive DISCONNECT to a client with Maximum Packet Size 5 (the
    smallest CONNACK) must not carry a Reason String that makes it larger than 5 bytes."""
    c = conn(port, "smd", keepalive=1, properties=[(m.MAXIMUM_PACKET_SIZE, 5)])
    assert len(c.connack.body) + 2 <= 5, c.connack
    d = closed_with(c, {0x8D}, timeout=4)
    assert d is None or len(d.body) + 2 <= 5, d


def test_mqtt_3_3_4_2_overlapping_subscriptions(port):
    """MQTT-3.3.4-2, MQTT-3.3.4-3, MQTT-3.3.4-4, MQTT-3.3.4-5: overlapping subscriptions with ids 1 (QoS 0)
    and 2 (QoS 2): delivered at QoS 2 and every copy carries the ids of the subscriptions it is
    for (one copy with both, or one copy per subscription with its own id)."""
    c = conn(port, "ov")
    c.subscribe([("ov/#", 0)], pid=1, properties=[(m.SUBSCRIPTION_ID, 1)])
    c.subscribe([("ov/t", 2)], pid=2, properties=[(m.SUBSCRIPTION_ID, 2)])
    conn(port, "ovp").publish("ov/t", b"x", qos=2)
    got = [c.recv_publish()]
    try:
        got.append(c.recv_publish(timeout=0.4))
    except TimeoutError:
        pass
    assert max(x.qos for x in got) == 2
    if len(got) == 1:
        assert sorted(got[0].props_all(m.SUBSCRIPTION_ID)) == [1, 2]
    else:
        assert sorted(x.prop(m.SUBSCRIPTION_ID) for x in got) == [1, 2]


def test_mqtt_3_3_4_9_receive_maximum_respected(port):
    """MQTT-3.3.4-9, MQTT-4.9.0-1, MQTT-4.9.0-2, MQTT-3.3.4-10, MQTT-4.9.0-3: a client with Receive
    Maximum 2 never has more than 2 unacknowledged QoS 1 PUBLISHes; PINGRESP, SUBACK still come;
    each PUBACK releases one more."""
    c = sub(port, "rm", "rm/t", 1, properties=[(m.RECEIVE_MAXIMUM, 2)])
    p = conn(port, "rmp")
    for i in range(5):
        p.publish("rm/t", b"%d" % i, qos=1, pid=i + 1)
    first = [c.recv_publish(ack=False) for _ in range(2)]
    c.expect_nothing(0.3)
    c.send(pingreq())
    assert c.recv_type(PINGRESP)
    assert c.subscribe([("rm/other", 0)], pid=9).codes == [0]
    seen = [x.payload for x in first]
    for x in first:
        c.send(puback(x.pid))
    while len(seen) < 5:
        x = c.recv_publish(ack=False)
        seen.append(x.payload)
        c.send(puback(x.pid))
    assert seen == [b"%d" % i for i in range(5)]


def test_mqtt_4_13_1_1_receive_maximum_exceeded(make_broker):
    """MQTT-4.13.1-1: more unacknowledged inbound QoS 2 PUBLISHes than Receive Maximum (2): DISCONNECT 0x93."""
    b = make_broker(limits={"receive_maximum": 2})
    c = conn(b.port, "rx")
    assert c.connack.prop(m.RECEIVE_MAXIMUM) == 2
    for i in range(3):
        c.send(publish("rx", b"x", qos=2, pid=i + 1, version=V))
    got = c.expect_close()
    assert got[-1].type == DISCONNECT and got[-1].reason == 0x93


def test_mqtt_4_6_0_6_ordered_topic(port):
    """MQTT-4.6.0-5, MQTT-4.6.0-6: one publisher, one topic, one QoS: delivered in publish order."""
    c = sub(port, "ord", "ord/t", 2)
    p = conn(port, "ordp")
    for qos in (0, 1):
        for i in range(25):
            p.send(publish("ord/t", b"%d/%d" % (qos, i), qos=qos, pid=i + 1, version=V))
    got = [c.recv_publish() for _ in range(50)]
    for qos in (0, 1):
        assert [x.payload for x in got if x.payload.startswith(b"%d/" % qos)] == \
            [b"%d/%d" % (qos, i) for i in range(25)]


# ------------------------------------------------------------------ SUBSCRIBE / UNSUBSCRIBE
def test_mqtt_3_8_3_2_subscribe_without_pairs(port):
    """MQTT-3.8.3-2, MQTT-3.10.3-2: SUBSCRIBE / UNSUBSCRIBE without any filter: closed (0x81/0x82)."""
    for i, data in enumerate((packet(8, 2, u16(1) + b"\x00"), packet(10, 2, u16(1) + b"\x00"))):
        c = conn(port, "np%d" % i)
        c.send(data)
        closed_with(c, {0x81, 0x82})


def test_mqtt_3_8_3_1_filters_utf8(port):
    """MQTT-3.8.3-1, MQTT-3.10.3-1: ill-formed UTF-8 filters in SUBSCRIBE / UNSUBSCRIBE: closed."""
    for i, data in enumerate((packet(8, 2, u16(1) + b"\x00" + s(b"\xff") + b"\x00"),
                              packet(10, 2, u16(1) + b"\x00" + s(b"\xc0\xaf")))):
        c = conn(port, "fu%d" % i)
        c.send(data)
        closed_with(c, {0x81})


def test_mqtt_3_8_3_5_reserved_option_bits(port):
    """MQTT-3.8.3-5: subscription options with reserved bits 6-7 set, Retain Handling 3 or QoS 3: malformed."""
    for i, opt in enumerate((0x40, 0x30, 0x03)):
        c = conn(port, "ro%d" % i)
        c.send(subscribe(1, [("a", opt)], version=V))
        closed_with(c, {0x81, 0x82})


def test_mqtt_3_8_3_3_no_local(port):
    """MQTT-3.8.3-3: No Local 1: the client's own messages are not forwarded back to it."""
    c = sub(port, "nl", "nl/t", sub_opts(0, no_local=True))
    c.publish("nl/t", b"own")
    conn(port, "nlp").publish("nl/t", b"other")
    assert c.recv_publish().payload == b"other"
    c.expect_nothing(0.3)


def test_mqtt_3_8_3_4_no_local_on_shared(port):
    """MQTT-3.8.3-4, MQTT-4.13.1-1: No Local on a shared subscription is a Protocol Error: DISCONNECT 0x82."""
    c = conn(port, "nls")
    c.send(subscribe(1, [("$share/g/t", sub_opts(0, no_local=True))], version=V))
    closed_with(c, {0x82})


def test_mqtt_3_8_4_3_resubscribe_replaces(port):
    """MQTT-3.8.4-3, MQTT-3.8.4-7: subscribing again replaces the subscription (QoS 0 -> 1, one copy),
    and its subscription id."""
    c = conn(port, "rp")
    c.subscribe([("rp/t", 0)], properties=[(m.SUBSCRIPTION_ID, 5)])
    assert c.subscribe([("rp/t", 1)], pid=2, properties=[(m.SUBSCRIPTION_ID, 6)]).codes == [1]
    conn(port, "rpp").publish("rp/t", b"x", qos=1)
    got = c.recv_publish()
    assert (got.qos, got.props_all(m.SUBSCRIPTION_ID)) == (1, [6])
    c.expect_nothing(0.3)


def test_mqtt_3_8_4_5_multiple_filters_one_suback(port):
    """MQTT-3.8.4-5, MQTT-3.8.4-6, MQTT-3.9.3-1, MQTT-3.9.3-2: one SUBSCRIBE with granted and
    refused filters gets one SUBACK with a code per filter, in order; well-formed filters brokk
    does not accept (a bad share name, deeper than limits.max_topic_levels) get 0x8F."""
    c = conn(port, "mf")
    deep = "/".join(["d"] * 200)
    ack = c.subscribe([("mf/a", 2), ("$share/g", 0), ("mf/b", 0), (deep, 1), ("mf/c", 1)])
    assert ack.codes == [2, 0x8F, 0, 0x8F, 1], ack.codes


def test_mqtt_4_7_1_1_malformed_filter_closes(port):
    """MQTT-4.7.1-1, MQTT-4.7.3-1: a malformed filter ("a/#/b", "a+", "", "#x") makes the SUBSCRIBE
    (or UNSUBSCRIBE) a Malformed Packet: DISCONNECT 0x81 and close, not a per-filter 0x8F (which
    is for filters that are well formed but not allowed)."""
    for i, flt in enumerate(("a/#/b", "a+", "", "#x")):
        c = conn(port, "mal%d" % i)
        c.send(subscribe(1, [("ok/t", 0), (flt, 0)], version=V))
        closed_with(c, {0x81})
    c = conn(port, "malu")
    c.send(unsubscribe(1, ["a/#/b"], version=V))
    closed_with(c, {0x81})


def test_mqtt_4_8_2_1_shared_subscription_syntax(port):
    """MQTT-4.8.2-1, MQTT-4.8.2-2: "$share//t", "$share/g", "$share/a+b/t" are invalid: 0x8F/0x80."""
    c = conn(port, "ss")
    ack = c.subscribe([("$share//t", 0), ("$share/g", 0), ("$share/a+b/t", 0), ("$share/g/t", 1)])
    assert all(x in (0x8F, 0x80) for x in ack.codes[:3]), ack.codes
    assert ack.codes[3] == 1


def test_mqtt_4_8_2_3_shared_subscription_delivery(port):
    """MQTT-4.8.2-3: each message to a shared group reaches exactly one member, at the member's
    granted QoS; no retained message on subscribe."""
    conn(port, "shr").publish("sh/t", b"ret", retain=True)
    a = sub(port, "sha", "$share/g/sh/t", 1)
    b = sub(port, "shb", "$share/g/sh/t", 0)
    a.expect_nothing(0.2)
    p = conn(port, "shp")
    for i in range(10):
        p.publish("sh/t", b"%d" % i, qos=2)
    got = {}
    for name, c, qos in (("a", a, 1), ("b", b, 0)):
        while True:
            try:
                x = c.recv_publish(timeout=0.4)
            except TimeoutError:
                break
            assert x.qos == qos
            got.setdefault(name, []).append(x.payload)
    assert sorted(sum(got.values(), [])) == sorted(b"%d" % i for i in range(10))


def test_mqtt_4_8_2_4_shared_redelivered_to_same_client(port):
    """MQTT-4.8.2-4, MQTT-4.8.2-6: an unacknowledged shared-subscription message is completed to the same
    client when it reconnects; one it refused with PUBACK 0x80 is not sent to another member."""
    se = [(m.SESSION_EXPIRY, 60)]
    a = sub(port, "sra", "$share/r/sr/t", 1, properties=se)
    p = conn(port, "srp")
    p.publish("sr/t", b"1", qos=1)
    x = a.recv_publish(ack=False)
    a.close()
    a = Conn(port, V)
    a.connect("sra", clean=False, properties=se)
    again = a.recv_publish(ack=False)
    assert (again.payload, again.dup) == (b"1", True)
    b = sub(port, "srb", "$share/r/sr/t", 1)
    a.send(puback(again.pid, version=V, reason=0x80))
    b.expect_nothing(0.4)


def test_mqtt_3_10_4_1_unsubscribe(port):
    """MQTT-3.10.4-1, MQTT-3.10.4-2, MQTT-3.10.4-6, MQTT-3.11.3-1, MQTT-3.11.3-2: filters are compared
    exactly ("u/+" does not remove "u/a"); several filters in one UNSUBSCRIBE get one UNSUBACK with
    codes in order (0x00 removed, 0x11 none existed); delivery stops."""
    c = conn(port, "us")
    c.subscribe([("u/a", 0), ("u/b", 0)])
    ack = c.unsubscribe(["u/+", "u/a", "u/b"], pid=7)
    assert (ack.pid, ack.codes) == (7, [0x11, 0x00, 0x00])
    conn(port, "usp").publish("u/a", b"x")
    c.expect_nothing(0.3)


def test_mqtt_3_10_4_3_unsubscribe_completes_inflight(port):
    """MQTT-3.10.4-3: a QoS 2 delivery under way completes after UNSUBSCRIBE."""
    c = sub(port, "ui", "ui", 2)
    conn(port, "uip").publish("ui", b"x", qos=2)
    x = c.recv_publish(ack=False)
    c.send(unsubscribe(2, ["ui"], version=V))
    c.send(pubrec(x.pid))
    assert c.recv_type(UNSUBACK).pid == 2
    assert c.recv_type(PUBREL).pid == x.pid
    c.send(pubcomp(x.pid))


def test_mqtt_4_7_2_1_dollar_topics(port):
    """MQTT-4.7.2-1: "#" and "+/y" do not match "$x/y"; "$x/#" does."""
    c = conn(port, "dl")
    c.subscribe([("#", 0), ("+/y", 0)])
    d = sub(port, "dl2", "$x/#")
    conn(port, "dlp").publish("$x/y", b"1")
    assert d.recv_publish().topic == "$x/y"
    c.expect_nothing(0.3)


def test_mqtt_4_7_1_2_wildcard_matching(port):
    """MQTT-4.7.1-2, MQTT-4.7.1-2, MQTT-4.7.3-4: "s/#" matches "s" and "s/a/b"; "/+" matches "/x";
    matching is case-sensitive and exact."""
    c = conn(port, "wm")
    c.subscribe([("s/#", 0), ("/+", 0), ("C/c", 0)])
    p = conn(port, "wmp")
    for t in ("s", "s/a/b", "/x", "c/c", "sx"):
        p.publish(t, t.encode())
    got = sorted(c.recv_publish().topic for _ in range(3))
    assert got == sorted(["s", "s/a/b", "/x"])
    c.expect_nothing(0.3)


def test_mqtt_4_7_3_3_longest_topic(port):
    """MQTT-4.7.3-3: a 65,535-byte topic name is accepted and delivered."""
    t = "L/" + "y" * 65533
    c = sub(port, "lt", "L/+")
    conn(port, "ltp").publish(t, b"z", qos=1)
    assert c.recv_publish().topic == t


def test_mqtt_3_12_4_1_pingresp(port):
    """MQTT-3.12.4-1: PINGREQ gets PINGRESP (D0 00)."""
    c = conn(port, "pg")
    c.send(pingreq())
    p = c.recv()
    assert (p.type, p.body) == (PINGRESP, b"")


def test_mqtt_4_13_1_1_packet_too_large(make_broker):
    """MQTT-4.13.1-1, MQTT-4.13.2-1: a packet over max_packet_size (advertised in CONNACK): DISCONNECT 0x95,
    closed."""
    b = make_broker(limits={"max_packet_size": 1024})
    c = conn(b.port, "big")
    assert c.connack.prop(m.MAXIMUM_PACKET_SIZE) == 1024
    c.send(publish("big", b"x" * 2000, version=V))
    closed_with(c, {0x95})


def test_mqtt_7_1_1_1_byte_at_a_time(port):
    """MQTT-7.1.1-1: packets split into one-byte writes are reassembled from the TCP stream."""
    c = Conn(port, V)
    data = connect("bytes", version=V, properties=[(m.SESSION_EXPIRY, 0)]) + pingreq()
    for i in range(len(data)):
        c.send(data[i:i + 1])
        time.sleep(0.001)
    assert c.recv().type == CONNACK
    assert c.recv().type == PINGRESP


# ------------------------------------------------------------------ order, takeover, sizes, acks
def test_mqtt_3_3_1_11_retain_handling_2_in_the_same_write(port):
    """MQTT-3.3.1-11, MQTT-3.8.4-5: a retained PUBLISH and, in the same write, a SUBSCRIBE to its topic
    with Retain Handling 2: the effects follow the packet order, so the retained message is stored
    before the subscription exists and is not sent: PUBACK, SUBACK, then nothing."""
    c = conn(port, "ord-rh2")
    c.send(publish("ord/rh2", b"r", qos=1, retain=True, pid=7, version=V)
           + subscribe(8, [("ord/rh2", sub_opts(1, rh=2))], version=V))
    assert c.recv_type(PUBACK).pid == 7
    assert c.recv_type(SUBACK).codes == [1]
    c.expect_nothing(0.4)
    conn(port, "ord-rh2-clear").publish("ord/rh2", b"", qos=1, retain=True)


def test_mqtt_3_10_4_2_publish_then_unsubscribe_in_the_same_write(port):
    """MQTT-3.10.4-2, MQTT-3.10.4-6: a QoS 1 PUBLISH to the client's own subscription followed in the same
    write by an UNSUBSCRIBE: the message arrived before the UNSUBSCRIBE, so it is delivered."""
    c = sub(port, "ord-unsub", "ord/unsub", 1)
    c.send(publish("ord/unsub", b"mine", qos=1, pid=9, version=V)
           + unsubscribe(10, ["ord/unsub"], version=V))
    assert c.recv_type(PUBACK).pid == 9
    assert c.recv_publish().payload == b"mine"
    assert c.recv_type(UNSUBACK).pid == 10
    conn(port, "ord-unsub-p").publish("ord/unsub", b"after", qos=1)
    c.expect_nothing(0.3)


def test_mqtt_3_1_2_6_expiry_0_session_is_not_taken_over(port):
    """MQTT-3.1.2-6, MQTT-3.1.2-25, MQTT-3.1.4-3: a connected session with Session Expiry 0 taken over by
    a CONNECT with Clean Start 0: the old connection is closed (0x8E), the new one gets Session
    Present 0 and the old subscription delivers nothing."""
    old = sub(port, "tk0", "tk0/t", 1)
    new = Conn(port, V)
    ack = new.connect("tk0", clean=False, properties=[(m.SESSION_EXPIRY, 60)])
    assert (ack.reason, ack.session_present) == (0, 0)
    closed_with(old, {0x8E})
    conn(port, "tk0-p").publish("tk0/t", b"x", qos=1)
    new.expect_nothing(0.3)


def test_mqtt_3_1_2_27_connack_fits_the_client_maximum(make_broker):
    """MQTT-3.1.2-27, MQTT-3.2.2-19, MQTT-3.2.2-20: a client declaring Maximum Packet Size 20 gets a
    successful CONNACK of at most 20 bytes (optional properties dropped); one declaring 4, which no
    CONNACK fits, is closed without one. The default (large) CONNACK still goes to others."""
    b = make_broker()
    c = Conn(b.port, V)
    ack = c.connect("cx20", properties=[(m.MAXIMUM_PACKET_SIZE, 20)])
    assert ack.reason == 0 and len(ack.body) + 2 <= 20, ack
    assert c.is_open()
    tiny = Conn(b.port, V)
    tiny.send(connect("cx4", version=V, properties=[(m.MAXIMUM_PACKET_SIZE, 4)]))
    assert tiny.expect_close() == []
    big = conn(b.port, "cxbig")
    assert len(big.connack.body) + 2 > 20


@pytest.mark.parametrize("wrong", ["pubrec", "pubcomp"])
def test_mqtt_4_13_1_1_wrong_ack_for_qos_1(port, wrong):
    """MQTT-4.13.1-1: a QoS 1 PUBLISH answered with PUBREC or PUBCOMP instead of PUBACK is a
    Protocol Error: DISCONNECT 0x82."""
    c = sub(port, "wa1" + wrong, "wa1/" + wrong, 1)
    conn(port, "wa1p" + wrong).publish("wa1/" + wrong, b"x", qos=1)
    p = c.recv_publish(ack=False)
    c.send({"pubrec": pubrec, "pubcomp": pubcomp}[wrong](p.pid))
    closed_with(c, {0x82})


def test_mqtt_4_13_1_1_wrong_ack_for_qos_2(port):
    """MQTT-4.13.1-1: a QoS 2 PUBLISH answered with PUBACK is a Protocol Error: DISCONNECT
    0x82; so is a PUBCOMP before the PUBREC."""
    c = sub(port, "wa2", "wa2/t", 2)
    conn(port, "wa2p").publish("wa2/t", b"x", qos=2)
    p = c.recv_publish(ack=False)
    c.send(puback(p.pid))
    closed_with(c, {0x82})
    d = sub(port, "wa2b", "wa2b/t", 2)
    conn(port, "wa2bp").publish("wa2b/t", b"x", qos=2)
    p = d.recv_publish(ack=False)
    d.send(pubcomp(p.pid))
    closed_with(d, {0x82})


def test_mqtt_3_1_2_8_clean_start_inside_the_will_delay(port):
    """MQTT-3.1.2-8, MQTT-3.1.2-26: the client comes back with Clean Start 1 before its Will Delay passed:
    the old session ends but its will is not published (brokk's reading: a new connection for the
    client id opened in time)."""
    w = sub(port, "wcsw", "wcs/#")
    c = conn(port, "wcs", properties=[(m.SESSION_EXPIRY, 10)],
             will=dict(topic="wcs/d", payload=b"no", props=[(m.WILL_DELAY, 1)]))
    c.close()
    time.sleep(0.1)
    c = Conn(port, V)
    assert c.connect("wcs", clean=True).session_present == 0
    w.expect_nothing(1.8)
