// Hypercore 11 catch-up, for the replication benchmark's side-by-side row, set up as
// murmur's catch-up is: two processes on loopback TCP. A writer process holds COUNT
// entries of 256 bytes and serves them; a fresh reader process, on its own storage,
// connects and replicates all of them (Hypercore's own replication protocol, Noise
// encrypted like murmur's). Measured from the reader's start to its last verified,
// stored entry.
// Usage: node tests/peers/hypercore.mjs COUNT   → prints one JSON line.
import Hypercore from 'hypercore'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fork } from 'node:child_process'

const count = Number(process.argv[2] || 100000)
const role = process.argv[3] || 'main'

function entry (i) {
  let s = `catch/up#${i}#`
  while (s.length < 256) s += String.fromCharCode(97 + ((s.length * 7 + i) % 26))
  return Buffer.from(s)
}

if (role === 'writer') {
  // Child: build the core, serve it on a loopback port, report the key and port.
  const dir = process.argv[4]
  const writer = new Hypercore(path.join(dir, 'writer'))
  await writer.ready()
  for (let start = 0; start < count; start += 1000) {
    const batch = []
    for (let i = start; i < Math.min(start + 1000, count); i++) batch.push(entry(i))
    await writer.append(batch)
  }
  const server = net.createServer((socket) => {
    const stream = writer.replicate(false)
    socket.pipe(stream).pipe(socket)
    socket.on('error', () => {})
    stream.on('error', () => {})
  })
  server.listen(0, '127.0.0.1', () => {
    process.send({ key: writer.key.toString('hex'), port: server.address().port })
  })
  process.on('message', async () => {
    server.close()
    await writer.close()
    process.exit(0)
  })
} else {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'murmur-hypercore-'))
  const child = fork(new URL(import.meta.url).pathname, [String(count), 'writer', tmp])
  try {
    const { key, port } = await new Promise((resolve, reject) => {
      child.once('message', resolve)
      child.once('exit', (code) => reject(new Error(`writer exited with ${code}`)))
    })
    const reader = new Hypercore(path.join(tmp, 'reader'), Buffer.from(key, 'hex'))
    await reader.ready()
    const t0 = process.hrtime.bigint()
    const socket = net.connect(port, '127.0.0.1')
    const stream = reader.replicate(true)
    socket.pipe(stream).pipe(socket)
    await reader.download({ start: 0, end: count }).done()
    const secs = Number(process.hrtime.bigint() - t0) / 1e9
    if (reader.contiguousLength !== count) throw new Error(`reader holds ${reader.contiguousLength} of ${count}`)
    console.log(JSON.stringify({ system: 'hypercore', version: '11', transport: 'tcp loopback, two processes', count, secs, per_s: count / secs }))
    socket.destroy()
    await reader.close()
  } finally {
    child.send('stop')
    await new Promise((resolve) => child.once('exit', resolve))
    fs.rmSync(tmp, { recursive: true, force: true })
  }
}
