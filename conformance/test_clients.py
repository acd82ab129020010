"""Interoperability with clients no one here wrote: paho-mqtt (PyPI) and Debian's
mosquitto-clients (mosquitto_pub / mosquitto_sub)."""
import queue
import time
import shutil
import subprocess

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

mosquitto = pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")


def paho_client(port, cid, protocol, **connect_kw):
    inbox = queue.Queue()
    connected = queue.Queue()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=protocol)
    c.on_connect = lambda cl, ud, flags, rc, props: connected.put((flags, rc, props))
    c.on_message = lambda cl, ud, msg: inbox.put(msg)
    c.subacks = queue.Queue()
    c.on_subscribe = lambda cl, ud, mid, codes, props: c.subacks.put(codes)
    c.connect("127.0.0.1", port, keepalive=30, **connect_kw)
    c.loop_start()
    flags, rc, props = connected.get(timeout=5)
    assert not rc.is_failure, rc
    c.inbox = inbox
    c.connack_props = props
    return c


def stop(*clients):
    for c in clients:
        c.disconnect()
        c.loop_stop()


def test_mqtt_7_0_0_2_paho_v311_qos2_and_retained(port):
    """MQTT-7.0.0-2, MQTT-3.1.4-4, MQTT-4.3.3-2, MQTT-3.3.1-6: paho-mqtt 3.1.1 clients connect,
    subscribe at QoS 2, exchange a QoS 2 message once, and a late subscriber gets the retained one."""
    sub = paho_client(port, "paho-sub", mqtt.MQTTv311)
    pub = paho_client(port, "paho-pub", mqtt.MQTTv311)
    result, _ = sub.subscribe("paho/#", qos=2)
    assert result == mqtt.MQTT_ERR_SUCCESS
    assert [c.value for c in sub.subacks.get(timeout=5)] == [2]
    info = pub.publish("paho/t", b"hello", qos=2, retain=True)
    info.wait_for_publish(5)
    msg = sub.inbox.get(timeout=5)
    assert (msg.topic, msg.payload, msg.qos) == ("paho/t", b"hello", 2)
    late = paho_client(port, "paho-late", mqtt.MQTTv311)
    late.subscribe("paho/t", qos=1)
    got = late.inbox.get(timeout=5)
    assert (got.payload, got.retain, got.qos) == (b"hello", 1, 1)
    with pytest.raises(queue.Empty):
        sub.inbox.get(timeout=0.3)
    stop(sub, pub, late)


def test_mqtt_3_3_2_17_paho_v5_properties_passthrough(port):
    """MQTT-3.3.2-17, MQTT-3.3.2-18, MQTT-3.3.2-15, MQTT-3.3.2-16, MQTT-3.3.2-4, MQTT-3.3.2-20, MQTT-3.3.4-3,
    MQTT-7.0.0-2: paho-mqtt 5.0: user properties, response topic, correlation data, payload format
    and content type arrive unaltered, with the subscription identifier."""
    sub = paho_client(port, "p5-sub", mqtt.MQTTv5)
    pub = paho_client(port, "p5-pub", mqtt.MQTTv5)
    assert sub.connack_props.ReceiveMaximum == 64
    sp = Properties(PacketTypes.SUBSCRIBE)
    sp.SubscriptionIdentifier = 42
    sub.subscribe("p5/+", qos=1, properties=sp)
    pp = Properties(PacketTypes.PUBLISH)
    pp.UserProperty = [("k1", "v1"), ("k2", "v2"), ("k1", "v3")]
    pp.ResponseTopic = "p5/reply"
    pp.CorrelationData = b"\x01\x02"
    pp.PayloadFormatIndicator = 1
    pp.ContentType = "application/json"
    assert [c.value for c in sub.subacks.get(timeout=5)] == [1]
    pub.publish("p5/req", b"{}", qos=1, properties=pp).wait_for_publish(5)
    msg = sub.inbox.get(timeout=5)
    props = msg.properties
    assert props.UserProperty == [("k1", "v1"), ("k2", "v2"), ("k1", "v3")]
    assert props.ResponseTopic == "p5/reply"
    assert props.CorrelationData == b"\x01\x02"
    assert props.PayloadFormatIndicator == 1
    assert props.ContentType == "application/json"
    assert props.SubscriptionIdentifier == [42]
    stop(sub, pub)


def test_mqtt_3_1_3_6_paho_v5_assigned_client_id(port):
    """MQTT-3.1.3-6, MQTT-3.2.2-16: paho-mqtt 5.0 with an empty client id gets an Assigned Client Identifier."""
    c = paho_client(port, "", mqtt.MQTTv5)
    assert c.connack_props.AssignedClientIdentifier
    stop(c)


def run(*args, timeout=10):
    return subprocess.run(args, capture_output=True, timeout=timeout, text=True)


@mosquitto
@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mqtt_3_3_1_6_mosquitto_retained(port, version):
    """MQTT-3.3.1-6, MQTT-3.3.1-8, MQTT-7.0.0-2: mosquitto_pub -r then mosquitto_sub: the subscriber gets the
    retained message (both protocol versions)."""
    topic = "mosq/%s" % version
    r = run("mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", version, "-q", "1", "-r",
            "-t", topic, "-m", "kept")
    assert r.returncode == 0, r.stderr
    r = run("mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", version, "-t", topic,
            "-C", "1", "-W", "5", "-v")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "%s kept" % topic


@mosquitto
def test_mqtt_3_3_2_17_mosquitto_v5_user_property(port):
    """MQTT-3.3.2-17, MQTT-7.0.0-2: mosquitto_pub -D publish user-property reaches mosquitto_sub unaltered."""
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5",
                            "-t", "mq5/t", "-C", "1", "-W", "8", "-F", "%p|%P"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # mosquitto_sub gives no readiness signal: publish (non-retained) until it has received one.
    deadline = time.monotonic() + 5
    out = None
    while time.monotonic() < deadline:
        r = run("mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-t", "mq5/t",
                "-m", "hi", "-D", "publish", "user-property", "origin", "mosquitto")
        assert r.returncode == 0, r.stderr
        try:
            out, err = sub.communicate(timeout=0.3)
            break
        except subprocess.TimeoutExpired:
            continue
    assert out is not None, "mosquitto_sub got nothing"
    assert out.strip() == "hi|origin:mosquitto"
