// MQTT.js (Debian's node-mqtt) against brokk: a subscriber on `subUrl` and a publisher on
// `pubUrl` (ws:// or mqtt://), MQTT `version` (4 = 3.1.1, 5), `count` messages at `qos`.
// Prints one JSON line {"received": [...payloads in arrival order], "granted": N} and exits
// 0, or prints the error and exits 1. Run by tests/interop/test_websocket.py.
//
//   node mqttjs_roundtrip.js SUB_URL PUB_URL VERSION QOS COUNT TOPIC
'use strict'
const mqtt = require('mqtt')

const [subUrl, pubUrl, version, qosText, countText, topic] = process.argv.slice(2)
const qos = Number(qosText)
const count = Number(countText)
const options = { protocolVersion: Number(version), reconnectPeriod: 0, connectTimeout: 5000 }
const fail = (why) => { console.log(String(why)); process.exit(1) }
setTimeout(() => fail('timed out'), 15000).unref()

const received = []
const sub = mqtt.connect(subUrl, { ...options, clientId: 'mqttjs-sub-' + process.pid })
sub.on('error', fail)
sub.on('message', (_topic, payload) => {
  received.push(payload.toString())
  if (received.length === count) {
    console.log(JSON.stringify({ received, granted }))
    sub.end(false, () => process.exit(0))
  }
})
let granted = null
sub.on('connect', () => {
  sub.subscribe(topic, { qos }, (err, grants) => {
    if (err) fail(err)
    granted = grants[0].qos
    const pub = mqtt.connect(pubUrl, { ...options, clientId: 'mqttjs-pub-' + process.pid })
    pub.on('error', fail)
    pub.on('connect', async () => {
      for (let i = 0; i < count; i++) {
        await new Promise((resolve, reject) =>
          pub.publish(topic, `m${i}`, { qos }, (e) => (e ? reject(e) : resolve())))
      }
      pub.end()
    })
  })
})
