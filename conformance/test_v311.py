"""MQTT 3.1.1 server conformance over raw sockets (exact bytes).

Each test is named after the main statement it proves; the docstring lists every id it
proves, and conformance/statements-3.1.1.tsv maps them back here.
"""
import time

import pytest

from mqtt_raw import (CONNACK, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBACK, UNSUBACK,
                      PINGRESP, Closed, Conn, connect, connected, disconnect, packet, pingreq,
                      puback, pubcomp, publish, pubrec, pubrel, s, subscribe, u16, unsubscribe)

V = 4


def sub(port, cid, flt, qos=0, clean=True):
    c = connected(port, cid, clean=clean)
    ack = c.subscribe([(flt, qos)])
    assert ack.codes == [qos]
    return c


# ------------------------------------------------------------------ CONNECT / CONNACK
def test_mqtt_3_1_0_1_first_packet_must_be_connect(port):
    """MQTT-3.1.0-1, MQTT-4.8.0-1: a PUBLISH before CONNECT closes the connection, nothing is sent."""
    c = Conn(port, V)
    c.send(publish("a", b"x"))
    assert c.expect_close() == []


def test_mqtt_3_1_0_2_second_connect_is_a_violation(port):
    """MQTT-3.1.0-2: a second CONNECT on the same connection closes it."""
    c = connected(port, "c2")
    c.send(connect("c2"))
    assert c.expect_close() == []


def test_mqtt_3_1_2_1_wrong_protocol_name(port):
    """MQTT-3.1.2-1: protocol name other than "MQTT": the server does not accept the CONNECT."""
    c = Conn(port, V)
    c.send(connect("pn", proto_name="MQTX"))
    got = c.expect_close()
    assert all(p.type != CONNACK or p.reason != 0 for p in got)


def test_mqtt_3_1_2_2_unsupported_level_gets_rc_1(port):
    """MQTT-3.1.2-2, MQTT-3.2.2-4, MQTT-3.2.2-5, MQTT-3.1.4-5: level 7 gets CONNACK 0x01 with Session
    Present 0, then the close; a PUBLISH pipelined after the refused CONNECT is not processed."""
    c = Conn(port, V)
    c.send(connect("lvl", version=7, clean=False) + publish("lvl/t", b"kept?", retain=True))
    got = c.expect_close()
    assert [(p.type, p.reason, p.session_present) for p in got] == [(CONNACK, 1, 0)]
    check = connected(port, "lvl-check")
    check.subscribe("lvl/t")
    check.expect_nothing(0.3)


def test_mqtt_3_1_2_3_reserved_connect_flag(port):
    """MQTT-3.1.2-3, MQTT-3.1.4-1, MQTT-3.2.2-6: reserved flag 1: closed without any CONNACK."""
    c = Conn(port, V)
    c.send(connect("rsv", reserved=True))
    assert c.expect_close() == []


def test_mqtt_3_1_2_4_clean_session_0_resumes(port):
    """MQTT-3.1.2-4, MQTT-3.1.2-5, MQTT-3.1.3-2, MQTT-3.2.2-2, MQTT-4.1.0-1, MQTT-4.5.0-1, MQTT-3.1.4-3:
    a clean-session-0 session keeps its subscription; QoS 1/2 messages published while the
    client is away are stored and delivered on resume, Session Present 1."""
    c = sub(port, "cs0", "cs0/#", qos=2, clean=False)
    c.disconnect()
    pub = connected(port, "cs0-pub")
    pub.publish("cs0/1", b"one", qos=1)
    pub.publish("cs0/2", b"two", qos=2, pid=2)
    c = Conn(port, V)
    ack = c.connect("cs0", clean=False)
    assert (ack.reason, ack.session_present) == (0, 1)
    got = [c.recv_publish() for _ in range(2)]
    assert [(p.topic, p.payload, p.qos) for p in got] == [("cs0/1", b"one", 1), ("cs0/2", b"two", 2)]


def test_mqtt_3_2_2_3_no_session_means_present_0(port):
    """MQTT-3.2.2-3, MQTT-3.1.2-4: clean session 0 without stored state: Session Present 0."""
    c = Conn(port, V)
    ack = c.connect("fresh-cs0", clean=False)
    assert (ack.reason, ack.session_present) == (0, 0)


def test_mqtt_3_1_2_6_clean_session_1_discards(port):
    """MQTT-3.1.2-6, MQTT-3.2.2-1, MQTT-3.1.4-3: clean session 1 discards the stored session (Session
    Present 0, no subscription left) and its state is not reused afterwards."""
    c = sub(port, "cs1", "cs1/t", qos=1, clean=False)
    c.disconnect()
    c = Conn(port, V)
    ack = c.connect("cs1", clean=True)
    assert (ack.reason, ack.session_present) == (0, 0)
    connected(port, "cs1-pub").publish("cs1/t", b"x", qos=1)
    c.expect_nothing(0.3)
    c.disconnect()
    c = Conn(port, V)
    assert c.connect("cs1", clean=False).session_present == 0


def test_mqtt_3_1_2_7_retained_survive_session_end(port):
    """MQTT-3.1.2-7: retained messages are not deleted when the publisher's session ends."""
    p = connected(port, "rp", clean=True)
    p.publish("keep/r", b"stay", qos=1, retain=True)
    p.disconnect()
    s2 = connected(port, "rs")
    s2.subscribe([("keep/r", 1)])
    m = s2.recv_publish()
    assert (m.payload, m.retain) == (b"stay", True)


def test_mqtt_3_1_2_8_will_published_on_abnormal_close(port):
    """MQTT-3.1.2-8, MQTT-3.1.2-9, MQTT-3.1.2-16, MQTT-3.1.2-10: the will of a connection closed
    without DISCONNECT is published, non-retained (Will Retain 0), and only once."""
    w = sub(port, "will-watch", "will/#", qos=1)
    c = connected(port, "dier", will=dict(topic="will/a", payload=b"gone", qos=1))
    c.close()
    m = w.recv_publish()
    assert (m.topic, m.payload, m.qos, m.retain) == ("will/a", b"gone", 1, False)
    w.expect_nothing(0.3)
    late = sub(port, "will-late", "will/#", qos=1)
    late.expect_nothing(0.3)


def test_mqtt_3_1_2_17_will_retain_published_retained(port):
    """MQTT-3.1.2-17: Will Retain 1: the will is published as a retained message."""
    c = connected(port, "wr", will=dict(topic="willr/a", payload=b"bye", qos=0, retain=True))
    c.close()
    time.sleep(0.2)
    late = sub(port, "wr-late", "willr/#", qos=1)
    m = late.recv_publish()
    assert (m.payload, m.retain) == (b"bye", True)


def test_mqtt_3_14_4_3_disconnect_discards_will(port):
    """MQTT-3.14.4-3, MQTT-3.1.2-10, MQTT-3.1.2-8: after DISCONNECT the will is not published."""
    w = sub(port, "dw", "dwill/#")
    c = connected(port, "dd", will=dict(topic="dwill/a", payload=b"no"))
    c.disconnect()
    w.expect_nothing(0.5)


def test_mqtt_3_1_2_12_no_will_flag_no_will(port):
    """MQTT-3.1.2-12: without the Will Flag an abnormal close publishes nothing."""
    w = sub(port, "nw", "#")
    c = connected(port, "nwc")
    c.close()
    w.expect_nothing(0.5)


def test_mqtt_3_1_2_11_will_qos_without_will_flag(port):
    """MQTT-3.1.2-11, MQTT-3.1.2-13, MQTT-3.1.4-1: Will QoS 1 with Will Flag 0 is refused by closing."""
    c = Conn(port, V)
    c.send(connect("wq", flags=0x02 | 0x08))
    assert all(p.type != CONNACK or p.reason != 0 for p in c.expect_close())


def test_mqtt_3_1_2_15_will_retain_without_will_flag(port):
    """MQTT-3.1.2-15, MQTT-3.1.4-1: Will Retain 1 with Will Flag 0 is refused by closing."""
    c = Conn(port, V)
    c.send(connect("wrt", flags=0x02 | 0x20))
    assert all(p.type != CONNACK or p.reason != 0 for p in c.expect_close())


def test_mqtt_3_1_2_14_will_qos_3(port):
    """MQTT-3.1.2-14: Will QoS 3 is malformed: closed."""
    c = Conn(port, V)
    c.send(packet(1, 0, s("MQTT") + bytes([4, 0x1E]) + u16(60) + s("wq3") + s("w/t") + s(b"x")))
    assert all(p.type != CONNACK or p.reason != 0 for p in c.expect_close())


def test_mqtt_3_1_2_9_will_flag_without_will_fields(port):
    """MQTT-3.1.2-9, MQTT-3.1.3-1, MQTT-3.1.4-1: Will Flag 1 but the payload stops after the client id: closed."""
    c = Conn(port, V)
    c.send(packet(1, 0, s("MQTT") + bytes([4, 0x06]) + u16(60) + s("wf")))
    assert all(p.type != CONNACK or p.reason != 0 for p in c.expect_close())


def test_mqtt_3_1_2_19_username_flag_without_username(port):
    """MQTT-3.1.2-19, MQTT-3.1.2-21, MQTT-3.1.4-1: User Name / Password flags set but fields missing: closed."""
    c = Conn(port, V)
    c.send(packet(1, 0, s("MQTT") + bytes([4, 0xC2]) + u16(60) + s("uf")))
    assert all(p.type != CONNACK or p.reason != 0 for p in c.expect_close())


def test_mqtt_3_1_2_18_flags_0_fields_absent_accepted(port):
    """MQTT-3.1.2-18, MQTT-3.1.2-20, MQTT-3.1.3-1, MQTT-3.1.3-3: payload fields in order client id, will
    topic, will message, user name, password are parsed; with the flags 0 none is expected."""
    c = Conn(port, V)
    ack = c.connect("order", will=dict(topic="o/w", payload=b"m"), username="u", password=b"p")
    assert ack.reason == 0
    c2 = Conn(port, V)
    assert c2.connect("order2").reason == 0


def test_mqtt_3_1_2_22_password_without_username(port):
    """MQTT-3.1.2-22, MQTT-3.1.4-1: in 3.1.1 Password Flag 1 with User Name Flag 0 is invalid."""
    c = Conn(port, V)
    c.send(packet(1, 0, s("MQTT") + bytes([4, 0x42]) + u16(60) + s("pw") + s(b"secret")))
    assert all(p.type != CONNACK or p.reason != 0 for p in c.expect_close())


def test_mqtt_3_1_2_24_keep_alive_one_and_a_half(port):
    """MQTT-3.1.2-24: keep-alive 1 s, silence: the server closes after 1.5 s (not before)."""
    c = connected(port, "ka", keepalive=1)
    t0 = time.monotonic()
    got = c.expect_close(timeout=4.0)
    elapsed = time.monotonic() - t0
    assert got == []
    assert 1.4 <= elapsed <= 3.0, elapsed


def test_mqtt_3_1_3_5_allows_23_alphanumerics(port):
    """MQTT-3.1.3-5, MQTT-3.1.4-4: a 23-character alphanumeric client id is accepted with rc 0."""
    c = Conn(port, V)
    ack = c.connect("aB3" * 7 + "xY")
    assert (ack.type, ack.reason) == (CONNACK, 0)


def test_mqtt_3_1_3_6_empty_client_id_gets_unique_id(port):
    """MQTT-3.1.3-6: two clean-session clients with empty ids both stay connected (unique ids)."""
    a = connected(port, "", clean=True)
    b = connected(port, "", clean=True)
    assert a.is_open() and b.is_open()


def test_mqtt_3_1_3_8_empty_id_with_clean_session_0(port):
    """MQTT-3.1.3-8, MQTT-3.1.3-9, MQTT-3.2.2-4, MQTT-3.2.2-5: empty id with clean session 0: CONNACK
    0x02 (identifier rejected), Session Present 0, then the close."""
    c = Conn(port, V)
    c.send(connect("", clean=False))
    got = c.expect_close()
    assert [(p.type, p.reason, p.session_present) for p in got] == [(CONNACK, 2, 0)]


def test_mqtt_3_1_3_4_client_id_not_utf8(port):
    """MQTT-3.1.3-4, MQTT-1.5.3-1: an ill-formed UTF-8 client id closes the connection."""
    c = Conn(port, V)
    c.send(packet(1, 0, s("MQTT") + bytes([4, 2]) + u16(60) + s(b"a\xed\xa0\x80")))
    assert all(p.type != CONNACK or p.reason != 0 for p in c.expect_close())


def test_mqtt_3_1_3_10_will_topic_not_utf8(port):
    """MQTT-3.1.3-10: an ill-formed UTF-8 will topic closes the connection."""
    c = Conn(port, V)
    c.send(connect("wt", will=dict(topic=b"w\xff", payload=b"x")))
    assert all(p.type != CONNACK or p.reason != 0 for p in c.expect_close())


def test_mqtt_3_1_3_11_username_not_utf8(port):
    """MQTT-3.1.3-11: an ill-formed UTF-8 user name closes the connection."""
    c = Conn(port, V)
    c.send(connect("un", username=b"u\xc3\x28"))
    assert all(p.type != CONNACK or p.reason != 0 for p in c.expect_close())


def test_mqtt_3_1_4_2_takeover_closes_existing(port):
    """MQTT-3.1.4-2: a second CONNECT with the same client id closes the first connection."""
    a = connected(port, "dup-id")
    b = connected(port, "dup-id")
    assert a.expect_close() == []
    assert b.is_open()


def test_mqtt_3_2_0_1_connack_first(port):
    """MQTT-3.2.0-1: the first packet the server sends is CONNACK, even when a message for the
    client's stored session is waiting."""
    c = sub(port, "first", "first/t", qos=1, clean=False)
    c.close()
    connected(port, "firstp").publish("first/t", b"q", qos=1)
    c = Conn(port, V)
    c.send(connect("first", clean=False))
    assert c.recv().type == CONNACK
    assert c.recv().type == PUBLISH


def test_mqtt_3_8_4_1_subscribe_pipelined_after_connect(port):
    """MQTT-3.8.4-1 (also MQTT-3.12.4-1): CONNECT+SUBSCRIBE+PINGREQ written at once (a client need not
    wait for CONNACK): the server must answer SUBACK and PINGRESP without further input."""
    c = Conn(port, V)
    c.send(connect("pipe") + subscribe(1, [("f/t", 0)]) + pingreq())
    assert c.recv().type == CONNACK
    assert c.recv(1.0).type == SUBACK
    assert c.recv(1.0).type == PINGRESP


# ------------------------------------------------------------------ UTF-8, flags, ids
def test_mqtt_1_5_3_1_ill_formed_utf8_topic(port):
    """MQTT-1.5.3-1, MQTT-3.3.2-1: a PUBLISH topic with a UTF-16 surrogate encoding closes the connection."""
    c = connected(port, "u8")
    c.send(packet(3, 0, s(b"a\xed\xa0\x80") + b"x"))
    assert c.expect_close() == []


def test_mqtt_1_5_3_2_null_character_topic(port):
    """MQTT-1.5.3-2, MQTT-4.7.3-2: U+0000 in a topic name closes the connection."""
    c = connected(port, "nul")
    c.send(publish("a\x00b", b"x"))
    assert c.expect_close() == []


def test_mqtt_1_5_3_3_bom_not_stripped(port):
    """MQTT-1.5.3-3, MQTT-4.7.3-4: U+FEFF at the start of a topic is kept: a subscriber to "\\ufeffz"
    gets it with the exact topic bytes, a subscriber to "z" does not."""
    bom = sub(port, "bom", "\ufeffz")
    plain = sub(port, "plain", "z")
    connected(port, "bomp").publish("\ufeffz", b"x")
    m = bom.recv_publish()
    assert m.topic == "\ufeffz"
    plain.expect_nothing(0.3)


def test_mqtt_2_2_2_2_invalid_fixed_header_flags(port):
    """MQTT-2.2.2-1, MQTT-2.2.2-2, MQTT-3.8.1-1: SUBSCRIBE with flags 0000 closes the connection."""
    c = connected(port, "fl")
    c.send(subscribe(1, [("a", 0)], flags=0))
    assert c.expect_close() == []


def test_mqtt_2_2_2_2_pingreq_flags(port):
    """MQTT-2.2.2-2: PINGREQ with a reserved flag bit set closes the connection."""
    c = connected(port, "flp")
    c.send(b"\xc1\x00")
    assert c.expect_close() == []


def test_mqtt_3_6_1_1_pubrel_flags(port):
    """MQTT-3.6.1-1: PUBREL with flags 0000 closes the connection."""
    c = connected(port, "prf")
    c.send(publish("q2", b"x", qos=2, pid=5))
    assert c.recv_type(PUBREC).pid == 5
    c.send(pubrel(5, flags=0))
    assert c.expect_close() == []


def test_mqtt_3_10_1_1_unsubscribe_flags(port):
    """MQTT-3.10.1-1: UNSUBSCRIBE with flags 0000 closes the connection."""
    c = connected(port, "uf")
    c.send(unsubscribe(1, ["a"], flags=0))
    assert c.expect_close() == []


def test_mqtt_3_14_1_1_disconnect_reserved_bits(port):
    """MQTT-3.14.1-1: DISCONNECT with reserved flag bits set is not a normal disconnect: the
    connection is closed and the will is published."""
    w = sub(port, "drw", "drb/#")
    c = connected(port, "drb", will=dict(topic="drb/w", payload=b"w"))
    c.send(b"\xe1\x00")
    c.expect_close()
    assert w.recv_publish().payload == b"w"


def test_mqtt_2_3_1_7_ack_packet_ids(port):
    """MQTT-2.3.1-7, MQTT-2.3.1-6, MQTT-3.8.4-1, MQTT-3.8.4-2, MQTT-3.10.4-4, MQTT-3.3.4-1,
    MQTT-4.3.2-2, MQTT-4.3.3-2: SUBACK, UNSUBACK, PUBACK, PUBREC, PUBCOMP carry the packet id of
    the packet they answer; QoS 0 gets no answer."""
    c = connected(port, "ids")
    assert c.subscribe([("ids/t", 1)], pid=0x1234).pid == 0x1234
    assert c.unsubscribe("ids/t", pid=0x4321).pid == 0x4321
    c.send(publish("ids/x", b"0", qos=0))
    c.expect_nothing(0.2)
    c.send(publish("ids/x", b"1", qos=1, pid=0xBEEF))
    assert c.recv_type(PUBACK).pid == 0xBEEF
    c.send(publish("ids/x", b"2", qos=2, pid=0xCAFE))
    assert c.recv_type(PUBREC).pid == 0xCAFE
    c.send(pubrel(0xCAFE))
    assert c.recv_type(PUBCOMP).pid == 0xCAFE


def test_mqtt_2_3_1_4_server_packet_ids(port):
    """MQTT-2.3.1-1, MQTT-2.3.1-4, MQTT-2.3.1-5, MQTT-2.3.1-6, MQTT-4.3.1-1, MQTT-4.3.2-1, MQTT-4.3.3-1,
    MQTT-3.3.1-2: outgoing QoS>0 PUBLISHes carry distinct non-zero ids while unacknowledged, DUP 0;
    QoS 0 ones carry no id (topic then payload) and DUP 0; the server's PUBREL reuses the id."""
    s1 = sub(port, "sid", "sid/#", qos=2)
    p = connected(port, "sidp")
    p.publish("sid/0", b"zero", qos=0)
    m0 = s1.recv_publish()
    assert (m0.qos, m0.dup, m0.payload, m0.body) == (0, False, b"zero", s("sid/0") + b"zero")
    for i in range(4):
        p.publish("sid/1", b"%d" % i, qos=1, pid=10 + i)
        p.publish("sid/2", b"%d" % i, qos=2, pid=20 + i)
    got = [s1.recv_publish(ack=False) for _ in range(8)]
    ids = [m.pid for m in got]
    assert 0 not in ids and len(set(ids)) == 8
    assert all(not m.dup for m in got)
    for m in got:
        if m.qos == 1:
            s1.send(puback(m.pid))
        else:
            s1.send(pubrec(m.pid))
            assert s1.recv_type(PUBREL).pid == m.pid
            s1.send(pubcomp(m.pid))


# ------------------------------------------------------------------ PUBLISH and QoS
def test_mqtt_3_3_1_1_dup_on_redelivery(port):
    """MQTT-3.3.1-1, MQTT-4.4.0-1, MQTT-4.3.2-1, MQTT-4.6.0-1: unacknowledged QoS 1 messages are
    re-sent on resume, DUP 1, same ids, original order."""
    c = sub(port, "redl", "redl/#", qos=1, clean=False)
    p = connected(port, "redlp")
    for i in range(3):
        p.publish("redl/t", b"%d" % i, qos=1, pid=i + 1)
    first = [c.recv_publish(ack=False) for _ in range(3)]
    assert not any(m.dup for m in first)
    c.close()
    c = Conn(port, V)
    assert c.connect("redl", clean=False).session_present == 1
    again = [c.recv_publish() for _ in range(3)]
    assert [(m.pid, m.payload) for m in again] == [(m.pid, m.payload) for m in first]
    assert all(m.dup for m in again)


def test_mqtt_4_4_0_1_pubrel_resent_on_resume(port):
    """MQTT-4.4.0-1, MQTT-4.3.3-1: after PUBREC the server owes PUBREL; on resume it re-sends the
    PUBREL (not the PUBLISH) with the same id."""
    c = sub(port, "rel", "rel/#", qos=2, clean=False)
    connected(port, "relp").publish("rel/t", b"x", qos=2)
    m = c.recv_publish(ack=False)
    c.send(pubrec(m.pid))
    assert c.recv_type(PUBREL).pid == m.pid
    c.close()
    c = Conn(port, V)
    assert c.connect("rel", clean=False).session_present == 1
    p = c.recv()
    assert (p.type, p.pid) == (PUBREL, m.pid)
    c.send(pubcomp(m.pid))
    c.expect_nothing(0.3)


def test_mqtt_3_3_1_3_dup_not_propagated(port):
    """MQTT-3.3.1-3: an incoming PUBLISH with DUP 1 reaches subscribers with DUP 0."""
    c = sub(port, "dupn", "dupn", qos=1)
    connected(port, "dupnp").publish("dupn", b"x", qos=1, dup=True)
    assert c.recv_publish().dup is False


def test_mqtt_3_3_1_4_qos_3_closes(port):
    """MQTT-3.3.1-4: a PUBLISH with both QoS bits set closes the connection."""
    c = connected(port, "q3")
    c.send(packet(3, 0x06, s("a") + u16(1) + b"x"))
    assert c.expect_close() == []


def test_mqtt_3_3_1_5_retained_stored_with_qos(port):
    """MQTT-3.3.1-5, MQTT-3.3.1-6, MQTT-3.3.1-8, MQTT-3.8.4-6: a retained QoS 1 message is kept and sent
    to a later subscriber with RETAIN 1 at min(QoS 1, granted)."""
    connected(port, "rq").publish("rq/t", b"r", qos=1, retain=True)
    c2 = sub(port, "rq2", "rq/+", qos=2)
    m = c2.recv_publish()
    assert (m.topic, m.payload, m.retain, m.qos) == ("rq/t", b"r", True, 1)
    c0 = sub(port, "rq0", "rq/#", qos=0)
    assert c0.recv_publish().qos == 0


def test_mqtt_3_3_1_7_qos0_retained_replaces(port):
    """MQTT-3.3.1-7: a QoS 0 retained message replaces the previous retained message."""
    p = connected(port, "r0")
    p.publish("r0/t", b"old", qos=1, retain=True)
    p.publish("r0/t", b"new", qos=0, retain=True)
    p.is_open()
    c = sub(port, "r0s", "r0/t", qos=1)
    m = c.recv_publish()
    assert (m.payload, m.qos) == (b"new", 0)
    c.expect_nothing(0.3)


def test_mqtt_3_3_1_9_retain_0_for_established(port):
    """MQTT-3.3.1-9: a retained message matching an established subscription is forwarded with RETAIN 0."""
    c = sub(port, "r9", "r9/t")
    connected(port, "r9p").publish("r9/t", b"x", retain=True)
    assert c.recv_publish().retain is False


def test_mqtt_3_3_1_10_empty_retained_clears(port):
    """MQTT-3.3.1-10, MQTT-3.3.1-11: an empty retained PUBLISH is forwarded normally and removes the
    retained message; it is not stored itself."""
    p = connected(port, "r10")
    p.publish("r10/t", b"v", qos=1, retain=True)
    live = sub(port, "r10l", "r10/t")
    assert live.recv_publish().payload == b"v"
    p.publish("r10/t", b"", qos=1, retain=True)
    m = live.recv_publish()
    assert m.payload == b""
    late = sub(port, "r10late", "r10/#")
    late.expect_nothing(0.3)


def test_mqtt_3_3_1_12_retain_0_keeps_retained(port):
    """MQTT-3.3.1-12: RETAIN 0 neither stores nor replaces nor removes the retained message."""
    p = connected(port, "r12")
    p.publish("r12/t", b"kept", qos=1, retain=True)
    p.publish("r12/t", b"", qos=1)
    p.publish("r12/t", b"transient", qos=1)
    c = sub(port, "r12s", "r12/t")
    assert c.recv_publish().payload == b"kept"
    c.expect_nothing(0.3)


def test_mqtt_3_3_2_2_wildcard_in_topic_name(port):
    """MQTT-3.3.2-2, MQTT-4.7.1-1: '+' or '#' in a PUBLISH topic name closes the connection."""
    for i, topic in enumerate(("a/+", "a/#")):
        c = connected(port, "wc%d" % i)
        c.send(publish(topic, b"x"))
        assert c.expect_close() == []


def test_mqtt_3_3_2_3_topic_name_matches_filter(port):
    """MQTT-3.3.2-3: a message delivered through a wildcard filter carries the published topic name."""
    c = sub(port, "tn", "tn/+/x")
    connected(port, "tnp").publish("tn/abc/x", b"1")
    assert c.recv_publish().topic == "tn/abc/x"


def test_mqtt_4_3_2_2_puback_then_same_id_is_new(port):
    """MQTT-4.3.2-2: after PUBACK, a PUBLISH with the same id (even DUP 1) is a new publication."""
    c = sub(port, "q1n", "q1n")
    p = connected(port, "q1np")
    p.publish("q1n", b"a", qos=1, pid=7)
    p.publish("q1n", b"b", qos=1, pid=7, dup=True)
    assert [c.recv_publish().payload for _ in range(2)] == [b"a", b"b"]


def test_mqtt_4_3_3_2_qos2_exactly_once(port):
    """MQTT-4.3.3-2: a re-sent QoS 2 PUBLISH before PUBREL is answered with PUBREC but not delivered
    twice; PUBREL gets PUBCOMP; after PUBCOMP the same id is a new message."""
    c = sub(port, "eo", "eo", qos=2)
    p = connected(port, "eop")
    p.send(publish("eo", b"once", qos=2, pid=9))
    assert p.recv_type(PUBREC).pid == 9
    p.send(publish("eo", b"once", qos=2, pid=9, dup=True))
    assert p.recv_type(PUBREC).pid == 9
    p.send(pubrel(9))
    assert p.recv_type(PUBCOMP).pid == 9
    assert c.recv_publish().payload == b"once"
    c.expect_nothing(0.3)
    p.publish("eo", b"again", qos=2, pid=9)
    assert c.recv_publish().payload == b"again"


def test_mqtt_3_3_5_1_overlapping_max_qos(port):
    """MQTT-3.3.5-1: overlapping subscriptions (QoS 0 and QoS 2): the message arrives at QoS 2."""
    c = connected(port, "ov")
    c.subscribe([("ov/#", 0), ("ov/t", 2)])
    connected(port, "ovp").publish("ov/t", b"x", qos=2)
    got = [c.recv_publish()]
    try:
        got.append(c.recv_publish(timeout=0.3))
    except TimeoutError:
        pass
    assert max(m.qos for m in got) == 2


def test_mqtt_4_6_0_6_ordered_topic(port):
    """MQTT-4.6.0-5, MQTT-4.6.0-6: messages from one client on one topic and QoS arrive in order."""
    c = sub(port, "ord", "ord/t", qos=2)
    p = connected(port, "ordp")
    for qos in (0, 1, 2):
        for i in range(20):
            p.send(publish("ord/t", b"%d/%d" % (qos, i), qos=qos, pid=100 + i))
            if qos == 2:
                p.recv_type(PUBREC)
                p.send(pubrel(100 + i))
    got = [c.recv_publish() for _ in range(60)]
    for qos in (0, 1, 2):
        seq = [m.payload for m in got if m.payload.startswith(b"%d/" % qos)]
        assert seq == [b"%d/%d" % (qos, i) for i in range(20)]


# ------------------------------------------------------------------ SUBSCRIBE / UNSUBSCRIBE
def test_mqtt_3_8_3_3_subscribe_without_filters(port):
    """MQTT-3.8.3-3: a SUBSCRIBE with no topic filter closes the connection."""
    c = connected(port, "nof")
    c.send(packet(8, 2, u16(1)))
    assert c.expect_close() == []


def test_mqtt_3_8_3_4_subscribe_reserved_bits(port):
    """MQTT-3.8.3-4: requested QoS 3 or reserved bits set in the QoS byte close the connection."""
    for i, opt in enumerate((3, 0x04)):
        c = connected(port, "rb%d" % i)
        c.send(subscribe(1, [("a", opt)]))
        assert c.expect_close() == []


def test_mqtt_3_8_3_1_filter_not_utf8(port):
    """MQTT-3.8.3-1: an ill-formed UTF-8 topic filter closes the connection."""
    c = connected(port, "fu8")
    c.send(packet(8, 2, u16(1) + s(b"a\xff") + b"\x00"))
    assert c.expect_close() == []


def test_mqtt_3_8_4_3_resubscribe_replaces(port):
    """MQTT-3.8.4-3, MQTT-3.8.4-6: subscribing again to the same filter replaces the subscription
    (new max QoS, one copy per message) and re-sends the retained message."""
    connected(port, "rsp").publish("rs/t", b"ret", qos=2, retain=True)
    c = sub(port, "rs", "rs/t", qos=0)
    assert c.recv_publish().qos == 0
    assert c.subscribe([("rs/t", 2)]).codes == [2]
    m = c.recv_publish()
    assert (m.payload, m.retain, m.qos) == (b"ret", True, 2)
    connected(port, "rsp2").publish("rs/t", b"live", qos=2)
    assert c.recv_publish().qos == 2
    c.expect_nothing(0.3)


def test_mqtt_3_8_4_4_multiple_filters(port):
    """MQTT-3.8.4-4, MQTT-3.8.4-5, MQTT-3.9.3-1, MQTT-3.9.3-2: one SUBSCRIBE with several filters is
    handled like several, with one SUBACK holding a granted QoS per filter, in order; an
    invalid filter gets 0x80 (or the connection is closed) without affecting the others."""
    c = connected(port, "mf")
    ack = c.subscribe([("mf/a", 2), ("mf/b", 0), ("mf/c", 1)])
    assert ack.codes == [2, 0, 1]
    c.send(subscribe(2, [("mf/d", 1), ("mf/#/x", 1)]))
    try:
        ack = c.recv_type(SUBACK)
        assert ack.codes == [1, 0x80]
    except Closed:
        pass


def test_mqtt_4_7_1_2_hash_must_be_last(port):
    """MQTT-4.7.1-2, MQTT-4.8.0-1: "a/#/b" and "a#" are invalid filters: the SUBSCRIBE is malformed
    and the connection is closed."""
    for i, flt in enumerate(("a/#/b", "a#")):
        c = connected(port, "hl%d" % i)
        c.send(subscribe(1, [(flt, 0)]))
        assert c.expect_close() == []


def test_mqtt_4_7_1_3_plus_whole_level(port):
    """MQTT-4.7.1-3: "a+/b" is an invalid filter: SUBACK 0x80 or close."""
    c = connected(port, "pl")
    c.send(subscribe(1, [("a+/b", 0)]))
    try:
        assert c.recv_type(SUBACK).codes == [0x80]
    except Closed:
        pass


def test_mqtt_4_7_1_2_wildcard_matching(port):
    """MQTT-4.7.1-2, MQTT-4.7.1-3, MQTT-3.8.3-2: "sport/#" matches "sport" and below; "+" matches
    exactly one level (including an empty one); "+/+" and "/+" match "/x"."""
    c = connected(port, "wm")
    c.subscribe([("sport/#", 0)], pid=1)
    c.subscribe([("p/+", 0)], pid=2)
    c.subscribe([("/+", 0)], pid=3)
    p = connected(port, "wmp")
    for t in ("sport", "sport/x/y", "p/a", "p/a/b", "p/", "/x", "sportx"):
        p.publish(t, t.encode())
    p.is_open()
    got = []
    while True:
        try:
            got.append(c.recv_publish(timeout=0.4).topic)
        except TimeoutError:
            break
    assert sorted(got) == sorted(["sport", "sport/x/y", "p/a", "p/", "/x"])


def test_mqtt_4_7_2_1_dollar_topics(port):
    """MQTT-4.7.2-1: "#" and "+/x" do not match topics starting with "$"; "$SYS/#" does."""
    c = connected(port, "dl")
    c.subscribe([("#", 0), ("+/x", 0)])
    d = sub(port, "dl2", "$app/#")
    connected(port, "dlp").publish("$app/x", b"x")
    assert d.recv_publish().topic == "$app/x"
    c.expect_nothing(0.3)


def test_mqtt_4_7_3_1_empty_topic_name(port):
    """MQTT-4.7.3-1: a zero-length topic name closes the connection; a zero-length filter is refused."""
    c = connected(port, "et")
    c.send(publish("", b"x"))
    assert c.expect_close() == []
    c = connected(port, "ef")
    c.send(subscribe(1, [("", 0)]))
    try:
        assert c.recv_type(SUBACK).codes == [0x80]
    except Closed:
        pass


def test_mqtt_4_7_3_3_long_topic(port):
    """MQTT-4.7.3-3: a topic of 65,535 bytes (the longest encodable) is accepted and routed."""
    t = "L/" + "x" * 65533
    c = sub(port, "lt", "L/#")
    connected(port, "ltp").publish(t, b"y", qos=1)
    assert c.recv_publish().topic == t


def test_mqtt_4_7_3_4_no_normalisation(port):
    """MQTT-4.7.3-4: no case folding, no trailing-slash or Unicode normalisation in matching."""
    c = connected(port, "nn")
    c.subscribe([("Nn/a", 0), ("nn/\u00e4", 0)])
    p = connected(port, "nnp")
    for t in ("nn/a", "Nn/a/", "nn/a\u0308", "Nn/a"):
        p.publish(t, b"x")
    assert c.recv_publish().topic == "Nn/a"
    c.expect_nothing(0.3)


def test_mqtt_3_10_4_1_unsubscribe_exact_match(port):
    """MQTT-3.10.4-1, MQTT-3.10.4-2, MQTT-3.10.4-5: UNSUBSCRIBE "un/+" leaves "un/a" in place; UNSUBSCRIBE
    "un/a" stops new deliveries; an UNSUBSCRIBE matching nothing still gets UNSUBACK."""
    c = connected(port, "un")
    c.subscribe([("un/a", 0)])
    assert c.unsubscribe("un/+", pid=3).pid == 3
    p = connected(port, "unp")
    p.publish("un/a", b"1")
    assert c.recv_publish().payload == b"1"
    assert c.unsubscribe("un/a", pid=4).pid == 4
    p.publish("un/a", b"2")
    c.expect_nothing(0.3)
    assert c.unsubscribe("never/subscribed", pid=5).pid == 5


def test_mqtt_3_10_4_6_unsubscribe_multiple(port):
    """MQTT-3.10.4-6: one UNSUBSCRIBE with several filters removes them all, one UNSUBACK."""
    c = connected(port, "um")
    c.subscribe([("um/a", 0), ("um/b", 0), ("um/c", 0)])
    c.send(unsubscribe(9, ["um/a", "um/b"]))
    assert c.recv_type(UNSUBACK).pid == 9
    p = connected(port, "ump")
    for t in ("um/a", "um/b", "um/c"):
        p.publish(t, b"x")
    assert c.recv_publish().topic == "um/c"
    c.expect_nothing(0.3)


def test_mqtt_3_10_4_3_unsubscribe_completes_inflight(port):
    """MQTT-3.10.4-3: a QoS 2 delivery under way still completes after UNSUBSCRIBE."""
    c = sub(port, "uif", "uif", qos=2)
    connected(port, "uifp").publish("uif", b"x", qos=2)
    m = c.recv_publish(ack=False)
    c.send(unsubscribe(2, ["uif"]))
    c.send(pubrec(m.pid))
    assert c.recv_type(UNSUBACK).pid == 2
    assert c.recv_type(PUBREL).pid == m.pid
    c.send(pubcomp(m.pid))


def test_mqtt_3_10_3_2_unsubscribe_without_filters(port):
    """MQTT-3.10.3-2: UNSUBSCRIBE without a filter closes the connection."""
    c = connected(port, "unf")
    c.send(packet(10, 2, u16(1)))
    assert c.expect_close() == []


def test_mqtt_3_10_3_1_unsubscribe_not_utf8(port):
    """MQTT-3.10.3-1: an ill-formed UTF-8 filter in UNSUBSCRIBE closes the connection."""
    c = connected(port, "unu")
    c.send(packet(10, 2, u16(1) + s(b"\xc0\xaf")))
    assert c.expect_close() == []


def test_mqtt_3_12_4_1_pingresp(port):
    """MQTT-3.12.4-1: PINGREQ is answered with PINGRESP (exact bytes D0 00)."""
    c = connected(port, "ping")
    c.send(pingreq())
    p = c.recv()
    assert (p.type, p.flags, p.body) == (PINGRESP, 0, b"")


def test_mqtt_4_1_0_2_session_lasts_connection(port):
    """MQTT-4.1.0-2: a clean session keeps its subscriptions for as long as it is connected."""
    c = sub(port, "sl", "sl/t", qos=1)
    p = connected(port, "slp")
    for i in range(3):
        time.sleep(0.1)
        p.publish("sl/t", b"%d" % i, qos=1)
        assert c.recv_publish().payload == b"%d" % i


def test_mqtt_4_8_0_2_oversize_packet_closes(make_broker):
    """MQTT-4.8.0-2: a packet the server cannot take (above max_packet_size) closes the connection."""
    b = make_broker(limits={"max_packet_size": 1024})
    c = connected(b.port, "big")
    c.send(publish("big", b"x" * 2000))
    assert c.expect_close() == []


def test_mqtt_7_1_1_1_tcp_transport(port):
    """MQTT-7.1.1-1: the server speaks MQTT over TCP, an ordered lossless byte stream, and copes
    with a packet split across many writes."""
    c = Conn(port, V)
    data = connect("tcp") + pingreq()
    for i in range(len(data)):
        c.send(data[i:i + 1])
        time.sleep(0.001)
    assert c.recv().type == CONNACK
    assert c.recv().type == PINGRESP


# ------------------------------------------------------------------ order, takeover, acks, will topic
def test_mqtt_3_10_4_2_publish_then_unsubscribe_in_the_same_write(port):
    """MQTT-3.10.4-2, MQTT-3.10.4-6: a QoS 1 PUBLISH to the client's own subscription followed in the same
    write by an UNSUBSCRIBE: the message came before the UNSUBSCRIBE, so it is delivered."""
    c = sub(port, "ord-unsub", "ord/unsub", qos=1)
    c.send(publish("ord/unsub", b"mine", qos=1, pid=9) + unsubscribe(10, ["ord/unsub"]))
    assert c.recv_type(PUBACK).pid == 9
    assert c.recv_publish().payload == b"mine"
    assert c.recv_type(UNSUBACK).pid == 10


def test_mqtt_3_1_2_6_clean_session_is_not_taken_over(port):
    """MQTT-3.1.2-6, MQTT-3.1.4-2: a connected clean session (CleanSession 1) taken over by a CONNECT with
    CleanSession 0: the old connection is closed, the new one gets Session Present 0 and the old
    subscription delivers nothing."""
    old = sub(port, "tk1", "tk1/t", qos=1)
    new = Conn(port, V)
    ack = new.connect("tk1", clean=False)
    assert (ack.reason, ack.session_present) == (0, 0)
    assert old.expect_close() == []
    connected(port, "tk1-p").publish("tk1/t", b"x", qos=1)
    new.expect_nothing(0.3)


@pytest.mark.parametrize("wrong", ["pubrec", "pubcomp"])
def test_mqtt_4_8_0_1_wrong_ack_closes(port, wrong):
    """MQTT-4.8.0-1: a QoS 1 PUBLISH answered with PUBREC or PUBCOMP is a protocol violation: closed."""
    c = sub(port, "wa1" + wrong, "wa1/" + wrong, qos=1)
    connected(port, "wa1p" + wrong).publish("wa1/" + wrong, b"x", qos=1)
    p = c.recv_publish(ack=False)
    c.send({"pubrec": pubrec, "pubcomp": pubcomp}[wrong](p.pid))
    assert c.expect_close() == []


def test_mqtt_4_8_0_1_puback_for_qos_2_closes(port):
    """MQTT-4.8.0-1: a QoS 2 PUBLISH answered with PUBACK is a protocol violation: closed."""
    c = sub(port, "wa2", "wa2/t", qos=2)
    connected(port, "wa2p").publish("wa2/t", b"x", qos=2)
    p = c.recv_publish(ack=False)
    c.send(puback(p.pid))
    assert c.expect_close() == []


def test_mqtt_3_1_4_1_empty_will_topic_closes_without_connack(port):
    """MQTT-3.1.4-1, MQTT-4.7.3-1: a CONNECT whose Will Topic is empty is malformed: closed without a
    CONNACK (not rc 3, which would invite a retry)."""
    c = Conn(port, V)
    c.send(connect("ewt", will=dict(topic="", payload=b"x")))
    assert c.expect_close() == []
