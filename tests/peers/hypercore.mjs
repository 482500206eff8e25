// Hypercore 11 catch-up, for the replication benchmark's side-by-side row: a writer core
// holds COUNT entries of 256 bytes; a fresh reader core on its own storage replicates
// all of them over a stream pair in this process (Hypercore's own example setup), and
// the time from the reader's start to its last verified, stored entry is measured.
// Usage: node tests/peers/hypercore.mjs COUNT   → prints one JSON line.
import Hypercore from 'hypercore'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

const count = Number(process.argv[2] || 100000)
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'murmur-hypercore-'))
try {
  const writer = new Hypercore(path.join(tmp, 'writer'))
  await writer.ready()
  const entry = (i) => {
    let s = `catch/up#${i}#`
    while (s.length < 256) s += String.fromCharCode(97 + ((s.length * 7 + i) % 26))
    return Buffer.from(s)
  }
  for (let start = 0; start < count; start += 1000) {
    const batch = []
    for (let i = start; i < Math.min(start + 1000, count); i++) batch.push(entry(i))
    await writer.append(batch)
  }
  const reader = new Hypercore(path.join(tmp, 'reader'), writer.key)
  await reader.ready()
  const t0 = process.hrtime.bigint()
  const a = writer.replicate(true)
  const b = reader.replicate(false)
  a.pipe(b).pipe(a)
  await reader.download({ start: 0, end: count }).done()
  const secs = Number(process.hrtime.bigint() - t0) / 1e9
  if (reader.contiguousLength !== count) throw new Error(`reader holds ${reader.contiguousLength} of ${count}`)
  console.log(JSON.stringify({ system: 'hypercore', version: '11', count, secs, per_s: count / secs }))
  a.destroy()
  b.destroy()
  await reader.close()
  await writer.close()
} finally {
  fs.rmSync(tmp, { recursive: true, force: true })
}
