// publish→follow side by side, as a user lives with it: one client publishes 256-byte
// messages at 1,000/s, another follows the same topic; the time from just before each
// publish to its arrival at the follower. Same client language (Node.js), payloads and
// rate for every system, in one run, all on loopback. Run by scripts/bench-peers, which
// starts the servers; this file only measures.
//
// It also measures MQTT QoS 1 both ways into murmur's own MQTT listener and into
// Mosquitto with the same mqtt.js client: publish→receive as above, and publish
// throughput (as fast as PUBACKs come, 100 in flight).
//
// Usage: node bench.mjs <murmur-fsync-socket> <murmur-os-socket> <mqtt-port> <nats-port> <murmur-mqtt-port>

import http from "node:http";
import mqtt from "mqtt";
import { connect, AckPolicy, DeliverPolicy, RetentionPolicy, StorageType } from "nats";

const COUNT = Number(process.env.BENCH_COUNT ?? 3000);
const RATE = 1000; // messages per second
const PAYLOAD = 256;
const [fsyncSock, osSock, mqttPort, natsPort, murmurMqttPort] = process.argv.slice(2);

const now = () => Number(process.hrtime.bigint()) / 1e6; // ms
const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));

/// A 256-byte payload carrying the message index.
function payload(i) {
  const head = `${i}:`;
  return head + "x".repeat(PAYLOAD - head.length);
}
const indexOf = (text) => Number(String(text).slice(0, String(text).indexOf(":")));

/// Publishes COUNT messages at RATE with `publish(i)`; `sent[i]` is the send time.
async function paced(publish, sent) {
  const t0 = now();
  for (let i = 0; i < COUNT; i++) {
    const due = t0 + (i * 1000) / RATE;
    const wait = due - now();
    if (wait > 0) await sleep(wait);
    sent[i] = now();
    await publish(i);
  }
}

/// Waits until every message arrived (or 20 s), then returns sorted latencies (ms).
async function collect(got, sent) {
  const deadline = now() + 20000;
  while (got.filter((x) => x !== undefined).length < COUNT && now() < deadline) await sleep(10);
  const lat = [];
  for (let i = 0; i < COUNT; i++) if (got[i] !== undefined) lat.push(got[i] - sent[i]);
  lat.sort((a, b) => a - b);
  return { lat, lost: COUNT - lat.length };
}

const pct = (s, p) => (s.length ? s[Math.min(s.length - 1, Math.ceil(s.length * p) - 1)] : NaN);

// --- murmur: HTTP over its Unix socket, keep-alive; follow is an NDJSON stream ---
async function murmur(socket) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const sent = [], got = [];
  const follow = http.get({
    socketPath: socket,
    path: "/v1/follow?format=ndjson&pattern=bench/peers",
    headers: { Host: "murmur" },
  });
  await new Promise((resolve, reject) => {
    follow.on("response", (res) => {
      let buf = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => {
        const t = now();
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!line) continue;
          const ev = JSON.parse(line);
          got[indexOf(ev.data)] = t;
        }
      });
      resolve();
    });
    follow.on("error", reject);
  });
  const post = (i) =>
    new Promise((resolve, reject) => {
      const body = JSON.stringify({ topic: "bench/peers", data: payload(i) });
      const req = http.request(
        {
          socketPath: socket,
          path: "/v1/events",
          method: "POST",
          agent,
          headers: {
            Host: "murmur",
            "Content-Type": "application/json",
            "Content-Length": Buffer.byteLength(body),
          },
        },
        (res) => {
          res.resume();
          res.on("end", () => (res.statusCode === 200 ? resolve() : reject(new Error(`HTTP ${res.statusCode}`))));
        },
      );
      req.on("error", reject);
      req.end(body);
    });
  await paced(post, sent);
  const r = await collect(got, sent);
  follow.destroy();
  agent.destroy();
  return r;
}

// --- MQTT 3.1.1: Mosquitto, or murmur's listener ---
async function mosquitto(qos, port = mqttPort) {
  // A fresh options object per client: mqtt.js writes the client id into it.
  const opts = (id) => ({ host: "127.0.0.1", port: Number(port), protocolVersion: 4, clientId: `bench-${id}-${qos}` });
  const sub = await mqtt.connectAsync(opts("sub"));
  const pub = await mqtt.connectAsync(opts("pub"));
  const sent = [], got = [];
  sub.on("message", (_topic, msg) => (got[indexOf(msg.toString())] = now()));
  await sub.subscribeAsync(`bench/qos${qos}`, { qos });
  await paced((i) => pub.publishAsync(`bench/qos${qos}`, payload(i), { qos }), sent);
  const r = await collect(got, sent);
  await sub.endAsync();
  await pub.endAsync();
  return r;
}

/// MQTT QoS 1 publish throughput: COUNT messages as fast as the broker acknowledges,
/// `window` in flight; returns messages/s (to the last PUBACK).
async function mqttThroughput(port, window = 100) {
  const pub = await mqtt.connectAsync({ host: "127.0.0.1", port: Number(port), protocolVersion: 4, clientId: "bench-tput" });
  const n = COUNT * 3;
  const t0 = now();
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      await pub.publishAsync("bench/tput", payload(i), { qos: 1 });
    }
  };
  await Promise.all(Array.from({ length: window }, worker));
  const secs = (now() - t0) / 1000;
  await pub.endAsync();
  return n / secs;
}

// --- NATS JetStream, one replica, file storage; publish waits for the stream's ack ---
async function jetstream() {
  const nc = await connect({ servers: `127.0.0.1:${natsPort}` });
  const jsm = await nc.jetstreamManager();
  await jsm.streams.add({
    name: "BENCH",
    subjects: ["bench.>"],
    storage: StorageType.File,
    num_replicas: 1,
    retention: RetentionPolicy.Limits,
  }).catch(() => {});
  const js = nc.jetstream();
  await jsm.consumers.add("BENCH", {
    durable_name: "follow",
    ack_policy: AckPolicy.None,
    deliver_policy: DeliverPolicy.New,
  });
  const consumer = await js.consumers.get("BENCH", "follow");
  const sent = [], got = [];
  const messages = await consumer.consume();
  (async () => {
    for await (const m of messages) got[indexOf(m.string())] = now();
  })();
  await paced((i) => js.publish("bench.peers", payload(i)), sent);
  const r = await collect(got, sent);
  await messages.close();
  await nc.close();
  return r;
}

const runs = [
  ["murmur, store.sync = fsync (signed, durable before ack)", () => murmur(fsyncSock)],
  ["murmur, store.sync = os", () => murmur(osSock)],
  ["murmur MQTT listener, QoS 1 (fsync: PUBACK once durable)", () => mosquitto(1, murmurMqttPort)],
  ["murmur MQTT listener, QoS 0", () => mosquitto(0, murmurMqttPort)],
  ["Mosquitto 2, QoS 0", () => mosquitto(0)],
  ["Mosquitto 2, QoS 1", () => mosquitto(1)],
  ["NATS JetStream, R1, file storage", () => jetstream()],
];

console.log(`publish→follow, ${COUNT} messages of ${PAYLOAD} bytes at ${RATE}/s, one publisher and one follower (Node.js ${process.version}), loopback`);
console.log("");
console.log("| system | p50 (ms) | p99 (ms) | max (ms) | lost |");
console.log("|---|---:|---:|---:|---:|");
const results = {};
const only = process.env.BENCH_ONLY; // a substring of the system names, to run a subset
for (const [name, run] of runs.filter(([n]) => !only || n.includes(only))) {
  try {
    const { lat, lost } = await run();
    results[name] = lat;
    console.log(`| ${name} | ${pct(lat, 0.5).toFixed(2)} | ${pct(lat, 0.99).toFixed(2)} | ${pct(lat, 1).toFixed(2)} | ${lost} |`);
  } catch (e) {
    console.log(`| ${name} | failed: ${e.message} | | | |`);
    if (process.env.BENCH_DEBUG) console.error(e);
  }
}
const m = results[runs[0][0]];
if (m) {
  console.log("");
  console.log("murmur (fsync) against each, p50 and p99 ratios (below 1 means murmur is faster):");
  for (const [name] of runs.slice(1)) {
    const o = results[name];
    if (!o) continue;
    console.log(`- ${name}: ${(pct(m, 0.5) / pct(o, 0.5)).toFixed(2)}× / ${(pct(m, 0.99) / pct(o, 0.99)).toFixed(2)}×`);
  }
}
const mm = results[runs[2][0]], mq = results["Mosquitto 2, QoS 1"];
if (mm && mq) {
  console.log(`- murmur's MQTT listener, QoS 1, against Mosquitto QoS 1 (same client): ${(pct(mm, 0.5) / pct(mq, 0.5)).toFixed(2)}× / ${(pct(mm, 0.99) / pct(mq, 0.99)).toFixed(2)}×`);
}
if (!only || only.includes("throughput")) {
  console.log("");
  console.log(`MQTT QoS 1 publish throughput, ${COUNT * 3} messages of ${PAYLOAD} bytes, 100 in flight, one mqtt.js client:`);
  try {
    const m = await mqttThroughput(murmurMqttPort);
    const q = await mqttThroughput(mqttPort);
    console.log(`- murmur MQTT listener (signed, fsynced before PUBACK): ${m.toFixed(0)} messages/s`);
    console.log(`- Mosquitto 2 (no persistence): ${q.toFixed(0)} messages/s`);
    console.log(`- murmur ÷ Mosquitto: ${(m / q).toFixed(2)}×`);
  } catch (e) {
    console.log(`throughput failed: ${e.message}`);
  }
}
process.exit(0);
