// Load generator thread for bench/lib/http-load.ts. Plain JavaScript so it needs no loader.
// It runs on its own event loop (its own core), so the client does not steal the server's
// thread. One undici Pool per origin, kept alive across rounds: each measured round
// reuses warm TLS connections, as a real client with keep-alive would.
import fs from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { Pool } from 'undici';

const pools = new Map();

function poolFor(origin, connections) {
  let pool = pools.get(origin);
  if (!pool) {
    pool = new Pool(origin, { connections, pipelining: 1, connect: { ca: workerData.ca, rejectUnauthorized: true }, keepAliveTimeout: 60_000 });
    pools.set(origin, pool);
  }
  return pool;
}

// Numbers that `numbered` runs put in place of `{n}`: unique for the life of this thread.
let sequence = 0;
const numberedOf = (text) => (typeof text === 'string' && text.includes('{n}') ? text.replaceAll('{n}', String(sequence).padStart(12, '0')) : text);

async function run({ origin, path, method = 'GET', headers = {}, body, count, concurrency, expectStatus = 200, numbered = false }) {
  const pool = poolFor(origin, concurrency);
  let next = 0;
  let bytes = 0;
  let failure;
  let sample;
  const worker = async () => {
    while (failure === undefined) {
      if (next >= count) return;
      const first = next++ === 0;
      const request = numbered ? { path: numberedOf(path), body: numberedOf(body) } : { path, body };
      if (numbered) sequence++;
      try {
        const response = await pool.request({ path: request.path, method, headers, body: request.body });
        // The first answer's body is kept (the others only counted), so the caller can check what the server said.
        const chunks = [];
        for await (const chunk of response.body) {
          bytes += chunk.length;
          if (first) chunks.push(chunk);
        }
        if (first) sample = Buffer.concat(chunks).toString('utf8');
        if (response.statusCode !== expectStatus) throw new Error(`${method} ${request.path}: status ${response.statusCode}, expected ${expectStatus}: ${first ? sample.slice(0, 300) : ''}`);
      } catch (error) {
        failure ??= error;
      }
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  const elapsedMs = performance.now() - started;
  if (failure) throw failure;
  return { elapsedMs, bytes, sample };
}

parentPort.on('message', async ({ id, op, args }) => {
  try {
    if (op === 'run') parentPort.postMessage({ id, ok: true, value: await run(args) });
    // The OS thread id (Linux), so a diagnostic can read this thread's CPU time in /proc.
    else if (op === 'thread-id') parentPort.postMessage({ id, ok: true, value: fs.existsSync('/proc/thread-self') ? Number(fs.readlinkSync('/proc/thread-self').split('/').pop()) : undefined });
    else if (op === 'close') {
      await Promise.all([...pools.values()].map((pool) => pool.close()));
      pools.clear();
      parentPort.postMessage({ id, ok: true });
    }
  } catch (error) {
    parentPort.postMessage({ id, ok: false, error: error instanceof Error ? error.message : String(error) });
  }
});
