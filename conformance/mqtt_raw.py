"""A small raw MQTT 3.1.1 / 5.0 packet builder and reader for exact-byte conformance tests.

Encoders return `bytes`; `Conn` wraps a TCP socket and reads whole packets with a Remaining
Length parser and a timeout; `decode` turns a packet into a `Packet` with named fields.
"""
import socket
import struct
import time

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)
NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
         7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
         12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH"}

# v5 property identifiers
PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTH_METHOD = 0x15
AUTH_DATA = 0x16
REQUEST_PROBLEM_INFO = 0x17
WILL_DELAY = 0x18
REQUEST_RESPONSE_INFO = 0x19
RESPONSE_INFO = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_AVAILABLE = 0x28
SUBSCRIPTION_ID_AVAILABLE = 0x29
SHARED_AVAILABLE = 0x2A

_BYTE, _TWO, _FOUR, _VAR, _STR, _BIN, _PAIR = "byte", "two", "four", "var", "str", "bin", "pair"
PROP_TYPES = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VAR, 0x11: _FOUR,
    0x12: _STR, 0x13: _TWO, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE, 0x18: _FOUR, 0x19: _BYTE,
    0x1A: _STR, 0x1C: _STR, 0x1F: _STR, 0x21: _TWO, 0x22: _TWO, 0x23: _TWO, 0x24: _BYTE,
    0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR, 0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}


# ---------------------------------------------------------------- primitive encoders
def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def u16(n):
    return struct.pack(">H", n)


def u32(n):
    return struct.pack(">I", n)


def s(v):
    """UTF-8 string (or raw bytes) with its two-byte length."""
    b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
    return u16(len(b)) + b


def props(items):
    """Encode v5 properties from a list of (id, value); returns Property Length + properties."""
    body = bytearray()
    for pid, val in items or []:
        body += varint(pid)
        kind = PROP_TYPES[pid]
        if kind == _BYTE:
            body.append(val)
        elif kind == _TWO:
            body += u16(val)
        elif kind == _FOUR:
            body += u32(val)
        elif kind == _VAR:
            body += varint(val)
        elif kind in (_STR, _BIN):
            body += s(val)
        elif kind == _PAIR:
            body += s(val[0]) + s(val[1])
    return varint(len(body)) + bytes(body)


def packet(ptype, flags, body):
    return bytes([(ptype << 4) | flags]) + varint(len(body)) + bytes(body)


# ---------------------------------------------------------------- packet encoders
def connect(client_id="", version=4, clean=True, keepalive=60, will=None, username=None,
            password=None, properties=None, proto_name="MQTT", reserved=False, flags=None):
    """CONNECT. will = dict(topic, payload, qos=0, retain=False, props=[]) ."""
    f = 0
    if clean:
        f |= 0x02
    if will is not None:
        f |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
    if password is not None:
        f |= 0x40
    if username is not None:
        f |= 0x80
    if reserved:
        f |= 0x01
    if flags is not None:
        f = flags
    vh = s(proto_name) + bytes([version, f]) + u16(keepalive)
    if version == 5:
        vh += props(properties)
    pl = s(client_id)
    if will is not None:
        if version == 5:
            pl += props(will.get("props"))
        pl += s(will["topic"]) + s(will.get("payload", b""))
    if username is not None:
        pl += s(username)
    if password is not None:
        pl += s(password)
    return packet(CONNECT, 0, vh + pl)


def publish(topic, payload=b"", qos=0, retain=False, dup=False, pid=None, version=4,
            properties=None, flags=None):
    if isinstance(payload, str):
        payload = payload.encode()
    f = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    if flags is not None:
        f = flags
    vh = s(topic)
    if qos > 0 or (flags is not None and (flags >> 1) & 3):
        vh += u16(pid if pid is not None else 1)
    if version == 5:
        vh += props(properties)
    return packet(PUBLISH, f, vh + payload)


def ack(ptype, pid, version=4, reason=None, properties=None, flags=None):
    """PUBACK / PUBREC / PUBREL / PUBCOMP / UNSUBACK-style acknowledgement."""
    if flags is None:
        flags = 0x02 if ptype == PUBREL else 0
    body = u16(pid)
    if version == 5 and (reason is not None or properties):
        body += bytes([reason or 0])
        if properties:
            body += props(properties)
    return packet(ptype, flags, body)


def puback(pid, **kw):
    return ack(PUBACK, pid, **kw)


def pubrec(pid, **kw):
    return ack(PUBREC, pid, **kw)


def pubrel(pid, **kw):
    return ack(PUBREL, pid, **kw)


def pubcomp(pid, **kw):
    return ack(PUBCOMP, pid, **kw)


def subscribe(pid, topics, version=4, properties=None, flags=0x02):
    """topics: list of (filter, options byte). In 3.1.1 the options byte is the QoS."""
    body = u16(pid)
    if version == 5:
        body += props(properties)
    for flt, opts in topics:
        body += s(flt) + bytes([opts])
    return packet(SUBSCRIBE, flags, body)


def sub_opts(qos=0, no_local=False, rap=False, rh=0):
    return qos | (0x04 if no_local else 0) | (0x08 if rap else 0) | (rh << 4)


def unsubscribe(pid, filters, version=4, properties=None, flags=0x02):
    body = u16(pid)
    if version == 5:
        body += props(properties)
    for flt in filters:
        body += s(flt)
    return packet(UNSUBSCRIBE, flags, body)


def pingreq():
    return b"\xc0\x00"


def disconnect(version=4, reason=None, properties=None):
    if version == 5 and (reason is not None or properties):
        body = bytes([reason or 0]) + (props(properties) if properties else b"")
        return packet(DISCONNECT, 0, body)
    return b"\xe0\x00"


# ---------------------------------------------------------------- decoding
class Packet:
    def __init__(self, ptype, flags, body, version):
        self.type = ptype
        self.flags = flags
        self.body = bytes(body)
        self.version = version
        self.props = []
        self.reason = None
        self.pid = None
        self._decode()

    def __repr__(self):
        fields = {k: v for k, v in self.__dict__.items() if k not in ("body", "version")}
        return "<%s %r>" % (NAMES.get(self.type, self.type), fields)

    def prop(self, pid, default=None):
        for k, v in self.props:
            if k == pid:
                return v
        return default

    def props_all(self, pid):
        return [v for k, v in self.props if k == pid]

    def _decode(self):
        b, v5 = self.body, self.version == 5
        t = self.type
        if t == CONNACK:
            self.session_present = b[0] & 1
            self.ack_flags = b[0]
            self.reason = b[1]
            if v5 and len(b) > 2:
                self.props, _ = read_props(b, 2)
        elif t == PUBLISH:
            self.dup = bool(self.flags & 0x08)
            self.qos = (self.flags >> 1) & 3
            self.retain = bool(self.flags & 1)
            n = struct.unpack(">H", b[:2])[0]
            self.topic = b[2:2 + n].decode("utf-8")
            i = 2 + n
            if self.qos:
                self.pid = struct.unpack(">H", b[i:i + 2])[0]
                i += 2
            if v5:
                self.props, i = read_props(b, i)
            self.payload = b[i:]
        elif t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            self.pid = struct.unpack(">H", b[:2])[0]
            self.reason = b[2] if len(b) > 2 else 0
            if len(b) > 3:
                self.props, _ = read_props(b, 3)
        elif t in (SUBACK, UNSUBACK):
            self.pid = struct.unpack(">H", b[:2])[0]
            i = 2
            if v5:
                self.props, i = read_props(b, i)
            self.codes = list(b[i:])
        elif t == DISCONNECT:
            self.reason = b[0] if b else 0
            if len(b) > 1:
                self.props, _ = read_props(b, 1)
        elif t == AUTH:
            self.reason = b[0] if b else 0


def read_varint(b, i):
    mult, val = 1, 0
    while True:
        c = b[i]
        i += 1
        val += (c & 0x7F) * mult
        if not c & 0x80:
            return val, i
        mult *= 128


def read_props(b, i):
    length, i = read_varint(b, i)
    end = i + length
    out = []
    while i < end:
        pid, i = read_varint(b, i)
        kind = PROP_TYPES[pid]
        if kind == _BYTE:
            val = b[i]
            i += 1
        elif kind == _TWO:
            val = struct.unpack(">H", b[i:i + 2])[0]
            i += 2
        elif kind == _FOUR:
            val = struct.unpack(">I", b[i:i + 4])[0]
            i += 4
        elif kind == _VAR:
            val, i = read_varint(b, i)
        elif kind in (_STR, _BIN):
            n = struct.unpack(">H", b[i:i + 2])[0]
            raw = b[i + 2:i + 2 + n]
            val = raw.decode("utf-8") if kind == _STR else bytes(raw)
            i += 2 + n
        else:
            n = struct.unpack(">H", b[i:i + 2])[0]
            k = b[i + 2:i + 2 + n].decode()
            i += 2 + n
            n = struct.unpack(">H", b[i:i + 2])[0]
            val = (k, b[i + 2:i + 2 + n].decode())
            i += 2 + n
        out.append((pid, val))
    return out, end


class Closed(Exception):
    pass


class Conn:
    """One TCP connection speaking raw MQTT."""

    def __init__(self, port, version=4, timeout=3.0, host="127.0.0.1"):
        self.version = version
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        self.pending = []  # packets read ahead by recv_type, handed out first by recv

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete packet in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no complete packet in time")
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            raise Closed("connection closed by broker")
        self.buf += chunk

    def recv(self, timeout=None):
        """Next packet, decoded; raises TimeoutError, or Closed on EOF."""
        if self.pending:
            return self.pending.pop(0)
        return self._read(timeout)

    def _read(self, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self.buf) >= 2:
                try:
                    length, i = read_varint(self.buf, 1)
                except IndexError:
                    length, i = None, None
                if length is not None and len(self.buf) >= i + length:
                    first = self.buf[0]
                    body = bytes(self.buf[i:i + length])
                    del self.buf[:i + length]
                    return Packet(first >> 4, first & 0x0F, body, self.version)
            self._fill(deadline)

    def recv_type(self, ptype, timeout=None):
        """Next packet of that type; other packets read meanwhile stay queued for recv()
        (PINGRESPs are dropped). A DISCONNECT from the broker fails the wait."""
        for i, p in enumerate(self.pending):
            if p.type == ptype:
                return self.pending.pop(i)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            p = self._read(max(0.001, deadline - time.monotonic()))
            if p.type == ptype:
                return p
            if p.type == DISCONNECT:
                raise AssertionError("expected %s, got %r" % (NAMES[ptype], p))
            if p.type != PINGRESP:
                self.pending.append(p)

    def expect_nothing(self, timeout=0.4):
        try:
            p = self.recv(timeout)
        except TimeoutError:
            return
        raise AssertionError("expected no packet, got %r" % (p,))

    def expect_close(self, timeout=3.0):
        """Wait for the broker to close; returns the packets it sent before closing."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                got.append(self.recv(max(0.01, deadline - time.monotonic())))
            except Closed:
                return got
            except TimeoutError:
                raise AssertionError("broker did not close the connection; got %r" % (got,))

    def is_open(self, timeout=0.3):
        """PINGREQ round trip: True when the connection still answers."""
        try:
            self.send(pingreq())
            while True:
                p = self.recv(timeout)
                if p.type == PINGRESP:
                    return True
        except (Closed, TimeoutError, OSError):
            return False

    # ------------------------------------------------------------ conveniences
    def connect(self, client_id="", **kw):
        kw.setdefault("version", self.version)
        self.send(connect(client_id, **kw))
        return self.recv_type(CONNACK)

    def subscribe(self, filters, pid=1, properties=None):
        """filters: str, or list of (filter, options). Returns the SUBACK."""
        if isinstance(filters, str):
            filters = [(filters, 0)]
        self.send(subscribe(pid, filters, version=self.version, properties=properties))
        return self.recv_type(SUBACK)

    def unsubscribe(self, filters, pid=1, properties=None):
        if isinstance(filters, str):
            filters = [filters]
        self.send(unsubscribe(pid, filters, version=self.version, properties=properties))
        return self.recv_type(UNSUBACK)

    def publish(self, topic, payload=b"", qos=0, retain=False, pid=1, properties=None, dup=False):
        """Publish and complete the QoS flow; returns the PUBACK / PUBCOMP (None for QoS 0)."""
        self.send(publish(topic, payload, qos=qos, retain=retain, pid=pid, dup=dup,
                          version=self.version, properties=properties))
        if qos == 1:
            return self.recv_type(PUBACK)
        if qos == 2:
            rec = self.recv_type(PUBREC)
            assert rec.pid == pid
            self.send(pubrel(pid))
            return self.recv_type(PUBCOMP)
        return None

    def recv_publish(self, timeout=None, ack=True):
        """Next PUBLISH; acknowledges QoS 1 (PUBACK) and QoS 2 (PUBREC/PUBREL/PUBCOMP)."""
        p = self.recv_type(PUBLISH, timeout)
        if ack and p.qos == 1:
            self.send(puback(p.pid))
        elif ack and p.qos == 2:
            self.send(pubrec(p.pid))
            rel = self.recv_type(PUBREL)
            assert rel.pid == p.pid
            self.send(pubcomp(p.pid))
        return p

    def disconnect(self, reason=None, properties=None):
        try:
            self.send(disconnect(self.version, reason, properties))
        except OSError:
            pass
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def connected(port, client_id="", version=4, **kw):
    """A Conn that has completed CONNECT/CONNACK with reason 0."""
    c = Conn(port, version)
    ack = c.connect(client_id, **kw)
    assert ack.reason == 0, ack
    c.connack = ack
    return c


def refused_or_closed(conn, timeout=3.0):
    """The broker must close; returns the packets it sent first (CONNACK / DISCONNECT)."""
    return conn.expect_close(timeout)
