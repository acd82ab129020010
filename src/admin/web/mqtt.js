// A small MQTT 3.1.1 client over WebSocket (binary frames, subprotocol "mqtt"), enough for the
// console's live topic viewer: CONNECT, SUBSCRIBE, UNSUBSCRIBE, PUBLISH at QoS 0 and 1 both
// ways, PINGREQ, DISCONNECT. MQTT 3.1.1 section numbers in the comments.

const enc = new TextEncoder();

// 2.2.3 Remaining Length: 7 bits a byte, at most 4 bytes.
function remainingLength(n) {
  const out = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  if (out.length > 4) throw new Error("packet too large");
  return out;
}

// 1.5.3 UTF-8 string: two length bytes, then the bytes.
function str(s) {
  const b = typeof s === "string" ? enc.encode(s) : s;
  if (b.length > 0xffff) throw new Error("string longer than 65535 bytes");
  return [b.length >> 8, b.length & 0xff, ...b];
}

function packet(firstByte, body) {
  return new Uint8Array([firstByte, ...remainingLength(body.length), ...body]);
}

export function encodeConnect({ clientId, username, password, keepAlive = 60, clean = true }) {
  let flags = clean ? 0x02 : 0; // 3.1.2.3
  const payload = [...str(clientId)];
  if (username) { flags |= 0x80; payload.push(...str(username)); }
  if (username && password) { flags |= 0x40; payload.push(...str(password)); }
  const header = [...str("MQTT"), 4, flags, keepAlive >> 8, keepAlive & 0xff];
  return packet(0x10, [...header, ...payload]);
}

export function encodeSubscribe(id, filter, qos) {
  return packet(0x82, [id >> 8, id & 0xff, ...str(filter), qos]); // 3.8.1: flags 0010
}

export function encodeUnsubscribe(id, filter) {
  return packet(0xa2, [id >> 8, id & 0xff, ...str(filter)]);
}

export function encodePublish(topic, payload, { qos = 0, retain = false, id = 0 } = {}) {
  const body = [...str(topic)];
  if (qos > 0) body.push(id >> 8, id & 0xff);
  const bytes = typeof payload === "string" ? enc.encode(payload) : payload;
  for (const b of bytes) body.push(b);
  return packet(0x30 | (qos << 1) | (retain ? 1 : 0), body);
}

// Splits a byte stream into packets: [{type, flags, body}], and the bytes left over.
export function decode(buffer) {
  const packets = [];
  let at = 0;
  for (;;) {
    if (buffer.length - at < 2) break;
    let length = 0, multiplier = 1, i = at + 1, complete = false;
    for (let n = 0; n < 4 && i < buffer.length; n++, i++) {
      length += (buffer[i] & 0x7f) * multiplier;
      multiplier *= 128;
      if ((buffer[i] & 0x80) === 0) { complete = true; i++; break; }
    }
    if (!complete) {
      if (i - at - 1 >= 4) throw new Error("malformed remaining length");
      break;
    }
    if (buffer.length - i < length) break;
    packets.push({ type: buffer[at] >> 4, flags: buffer[at] & 0x0f, body: buffer.subarray(i, i + length) });
    at = i + length;
  }
  return { packets, rest: buffer.slice(at) };
}

export function parsePublish(flags, body) {
  const qos = (flags >> 1) & 3;
  const topicLength = (body[0] << 8) | body[1];
  const topic = new TextDecoder().decode(body.subarray(2, 2 + topicLength));
  let at = 2 + topicLength;
  let id = 0;
  if (qos > 0) { id = (body[at] << 8) | body[at + 1]; at += 2; }
  return { topic, qos, retain: (flags & 1) === 1, dup: (flags & 8) === 8, id, payload: body.slice(at) };
}

// 3.2.2.3 CONNACK return codes.
const CONNACK = ["accepted", "unacceptable protocol version", "identifier rejected",
  "server unavailable", "bad user name or password", "not authorized"];

export class MqttClient {
  constructor(url) {
    this.url = url;
    this.nextId = 1;
    this.pending = new Map(); // packet id -> {resolve, reject}
    this.buffer = new Uint8Array(0);
    this.onmessage = () => {};
    this.onclose = () => {};
    this.connected = false;
  }

  id() {
    const id = this.nextId;
    this.nextId = this.nextId === 0xffff ? 1 : this.nextId + 1;
    return id;
  }

  connect(options) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this.url, "mqtt");
      } catch (e) {
        reject(e);
        return;
      }
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      this.connack = { resolve, reject };
      ws.onopen = () => ws.send(encodeConnect(options));
      ws.onmessage = (event) => this.receive(new Uint8Array(event.data));
      ws.onerror = () => {};
      ws.onclose = (event) => {
        const wasConnected = this.connected;
        this.connected = false;
        clearInterval(this.pinger);
        const why = event.reason || `WebSocket closed (code ${event.code})`;
        if (this.connack) { this.connack.reject(new Error(why)); this.connack = null; }
        for (const p of this.pending.values()) p.reject(new Error(why));
        this.pending.clear();
        if (wasConnected) this.onclose(why);
      };
      const keepAlive = options.keepAlive ?? 60;
      this.pinger = setInterval(() => {
        if (this.connected) ws.send(new Uint8Array([0xc0, 0])); // PINGREQ
      }, (keepAlive * 1000) / 2);
    });
  }

  receive(bytes) {
    const joined = new Uint8Array(this.buffer.length + bytes.length);
    joined.set(this.buffer);
    joined.set(bytes, this.buffer.length);
    let decoded;
    try {
      decoded = decode(joined);
    } catch (e) {
      this.ws.close();
      return;
    }
    this.buffer = decoded.rest;
    for (const p of decoded.packets) this.handle(p);
  }

  handle({ type, flags, body }) {
    const id = body.length >= 2 ? (body[0] << 8) | body[1] : 0;
    switch (type) {
      case 2: { // CONNACK
        const code = body[1];
        const c = this.connack;
        this.connack = null;
        if (!c) return;
        if (code === 0) { this.connected = true; c.resolve(); }
        else { c.reject(new Error(`CONNACK refused: ${CONNACK[code] ?? code}`)); this.ws.close(); }
        break;
      }
      case 3: { // PUBLISH
        const message = parsePublish(flags, body);
        if (message.qos === 1) this.ws.send(new Uint8Array([0x40, 2, message.id >> 8, message.id & 0xff]));
        if (message.qos === 2) this.ws.send(new Uint8Array([0x50, 2, message.id >> 8, message.id & 0xff]));
        this.onmessage(message);
        break;
      }
      case 6: // PUBREL (the QoS 2 exchange this client receives): PUBCOMP
        this.ws.send(new Uint8Array([0x70, 2, id >> 8, id & 0xff]));
        break;
      case 4: // PUBACK
      case 9: // SUBACK
      case 11: { // UNSUBACK
        const p = this.pending.get(id);
        if (p) { this.pending.delete(id); p.resolve(body.subarray(2)); }
        break;
      }
      default:
        break; // PINGRESP and anything else
    }
  }

  request(bytes, id) {
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(bytes);
    });
  }

  async subscribe(filter, qos = 0) {
    const id = this.id();
    const granted = await this.request(encodeSubscribe(id, filter, qos), id);
    if (granted[0] === 0x80) throw new Error(`subscription to ${filter} refused`);
    return granted[0];
  }

  async unsubscribe(filter) {
    const id = this.id();
    await this.request(encodeUnsubscribe(id, filter), id);
  }

  async publish(topic, payload, { qos = 0, retain = false } = {}) {
    if (qos === 0) {
      this.ws.send(encodePublish(topic, payload, { qos, retain }));
      return;
    }
    const id = this.id();
    await this.request(encodePublish(topic, payload, { qos: 1, retain, id }), id);
  }

  disconnect() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.connected = false;
      this.ws.send(new Uint8Array([0xe0, 0]));
      this.ws.close();
    }
    clearInterval(this.pinger);
  }
}
