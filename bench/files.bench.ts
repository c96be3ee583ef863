import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { startServer, type TestServer } from '../test/helpers/server.ts';
import { type BenchPair, definePair, mibPerSecond, perSecond, runConcurrent } from './harness.ts';

/**
 * Files through the gateway (A) against a bare Node HTTPS server (B) that streams the same
 * bytes to or from a file with the same durability (write, fsync) and no hashing, database
 * or auth. Both servers and the client live in this process and share its CPU alike.
 */
const MiB = 1024 * 1024;
const BIG = Number(process.env.BENCH_FILES_MIB ?? 100) * MiB;
const RSS_BYTES = Number(process.env.BENCH_FILES_RSS_MIB ?? 1024) * MiB;
const CREATES = Number(process.env.BENCH_FILES_CREATES ?? 2000);
const CREATE_CONCURRENCY = 16;

interface Ctx {
  bantu: TestServer;
  key: string;
  bare: https.Server;
  bareOrigin: string;
  bareDir: string;
  ca: string;
  chunk: Buffer;
  seq: number;
  /** A stored file of BIG bytes in each server, for downloads. */
  bigId?: string;
}

/** The bare reference: PUT /upload/<name> streams to a file (then fsync), GET /download/<name> streams it back. */
async function bareServer(cert: string, key: string, dir: string): Promise<{ server: https.Server; origin: string }> {
  const server = https.createServer({ cert, key }, (request, response) => {
    const name = path.basename(request.url ?? 'x');
    const file = path.join(dir, name);
    if (request.method === 'PUT') {
      const temp = `${file}.tmp`;
      pipeline(request, createWriteStream(temp, { flush: true, highWaterMark: MiB }))
        .then(() => fs.rename(temp, file))
        .then(
          () => response.writeHead(201, { 'content-type': 'application/json' }).end('{"ok":true}'),
          () => response.writeHead(500).end(),
        );
      return;
    }
    fs.stat(file).then(
      (stats) => {
        response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': stats.size });
        pipeline(createReadStream(file, { highWaterMark: MiB }), response).catch(() => undefined);
      },
      () => response.writeHead(404).end(),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, origin: `https://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

/** Sends `bytes` (the same random MiB over and over) and resolves with the status and body. */
function send(ctx: Ctx, method: string, url: string, bytes: number, auth?: string, chunk = ctx.chunk): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = https.request(url, {
      method,
      ca: ctx.ca,
      agent: false,
      headers: { 'content-type': 'application/octet-stream', 'content-length': bytes, ...(auth ? { authorization: `Bearer ${auth}` } : {}) },
    });
    request.on('error', reject);
    request.on('response', (response) => {
      let body = '';
      response.on('data', (c) => (body += c));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    (async () => {
      let sent = 0;
      while (sent < bytes) {
        const piece = chunk.subarray(0, Math.min(chunk.length, bytes - sent));
        sent += piece.length;
        if (!request.write(piece)) await new Promise((r) => request.once('drain', r));
      }
      request.end();
    })().catch(reject);
  });
}

function receive(ctx: Ctx, url: string, auth?: string): Promise<number> {
  return new Promise((resolve, reject) => {
    https
      .get(url, { ca: ctx.ca, agent: false, headers: auth ? { authorization: `Bearer ${auth}` } : {} }, (response) => {
        let size = 0;
        response.on('data', (c: Buffer) => (size += c.length));
        response.on('end', () => resolve(size));
        response.on('error', reject);
      })
      .on('error', reject);
  });
}

async function setup(): Promise<Ctx> {
  const bantu = await startServer({ BANTU_LOG_LEVEL: 'silent' });
  const [cert, key] = await Promise.all([
    fs.readFile(path.join(bantu.dataDir, 'tls', 'cert.pem'), 'utf8'),
    fs.readFile(path.join(bantu.dataDir, 'tls', 'key.pem'), 'utf8'),
  ]);
  const bareDir = path.join(bantu.dataDir, 'bare');
  await fs.mkdir(bareDir);
  const bare = await bareServer(cert, key, bareDir);
  return { bantu, key: bantu.keys.test.account_key, bare: bare.server, bareOrigin: bare.origin, bareDir, ca: cert, chunk: randomBytes(MiB), seq: 0 };
}

async function teardown(ctx: Ctx): Promise<void> {
  await new Promise((resolve) => ctx.bare.close(resolve));
  await ctx.bantu.close();
}

async function bantuUpload(ctx: Ctx, bytes: number): Promise<{ ms: number; sha256: string }> {
  const started = performance.now();
  const result = await send(ctx, 'POST', `${ctx.bantu.url}/v1/files?name=bench-${ctx.seq++}.bin`, bytes, ctx.key);
  const ms = performance.now() - started;
  if (result.status !== 201) throw new Error(`upload failed: ${result.status} ${result.body}`);
  return { ms, sha256: JSON.parse(result.body).sha256 };
}

async function bareUpload(ctx: Ctx, bytes: number): Promise<number> {
  const started = performance.now();
  const result = await send(ctx, 'PUT', `${ctx.bareOrigin}/upload/bench-${ctx.seq++}.bin`, bytes);
  if (result.status !== 201) throw new Error(`bare upload failed: ${result.status}`);
  return performance.now() - started;
}

/** Peak RSS growth (MiB) of this process while `work` runs, sampled every 20 ms. */
async function peakRssGrowth(work: () => Promise<unknown>): Promise<number> {
  globalThis.gc?.();
  const base = process.memoryUsage.rss();
  let peak = base;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 20);
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  return (Math.max(peak, process.memoryUsage.rss()) - base) / MiB;
}

export const pairs: BenchPair<any>[] = [
  definePair<Ctx>({
    name: 'files/upload-100mib',
    description: `POST /v1/files of ${BIG / MiB} MiB raw body (hashed, fsynced, recorded with its event) vs a bare HTTPS server streaming it to a file with fsync`,
    labels: { a: 'bantu upload', b: 'bare https to file' },
    unit: 'MiB/s',
    higherIsBetter: true,
    target: { ratio: 0.6, description: 'an upload through the gateway, hashed and recorded, keeps at least 60% of a bare streamed write' },
    rounds: 5,
    warmup: 1,
    setup,
    teardown,
    async a(ctx) {
      return mibPerSecond(BIG, (await bantuUpload(ctx, BIG)).ms);
    },
    async b(ctx) {
      return mibPerSecond(BIG, await bareUpload(ctx, BIG));
    },
  }),
  definePair<Ctx>({
    name: 'files/download-100mib',
    description: `GET /v1/files/{id}/content of ${BIG / MiB} MiB vs a bare HTTPS server streaming the same file`,
    labels: { a: 'bantu download', b: 'bare https from file' },
    unit: 'MiB/s',
    higherIsBetter: true,
    target: { ratio: 0.85, description: 'a download through the gateway keeps at least 85% of a bare streamed read' },
    rounds: 5,
    warmup: 1,
    async setup() {
      const ctx = await setup();
      const created = await send(ctx, 'POST', `${ctx.bantu.url}/v1/files?name=big.bin`, BIG, ctx.key);
      ctx.bigId = JSON.parse(created.body).id;
      await send(ctx, 'PUT', `${ctx.bareOrigin}/upload/big.bin`, BIG);
      return ctx;
    },
    teardown,
    async a(ctx) {
      const started = performance.now();
      const size = await receive(ctx, `${ctx.bantu.url}/v1/files/${ctx.bigId}/content`, ctx.key);
      if (size !== BIG) throw new Error(`short download: ${size}`);
      return mibPerSecond(BIG, performance.now() - started);
    },
    async b(ctx) {
      const started = performance.now();
      const size = await receive(ctx, `${ctx.bareOrigin}/download/big.bin`);
      if (size !== BIG) throw new Error(`short bare download: ${size}`);
      return mibPerSecond(BIG, performance.now() - started);
    },
  }),
  definePair<Ctx>({
    name: 'files/upload-1gib-peak-rss',
    description: `peak RSS growth of the process (server and client) during one ${RSS_BYTES / MiB} MiB upload; target: bantu under 64 MiB`,
    labels: { a: 'bantu upload', b: 'bare https to file' },
    unit: 'MiB',
    higherIsBetter: false,
    // The target is absolute (Bantu under 64 MiB of growth: see median A); a ratio to a bare stream of a few hundred KiB says little.
    rounds: 3,
    warmup: 0,
    setup,
    teardown,
    async a(ctx) {
      let sha = '';
      const growth = await peakRssGrowth(async () => (sha = (await bantuUpload(ctx, RSS_BYTES)).sha256));
      // Free the disk between rounds: the blob is the same bytes each time.
      await fs.rm(path.join(ctx.bantu.dataDir, 'blobs', 'test', sha.slice(0, 2), sha), { force: true });
      return growth;
    },
    async b(ctx) {
      const growth = await peakRssGrowth(() => bareUpload(ctx, RSS_BYTES));
      for (const name of await fs.readdir(ctx.bareDir)) await fs.rm(path.join(ctx.bareDir, name), { force: true });
      return growth;
    },
  }),
  definePair<Ctx>({
    name: 'files/create-4kib',
    description: `${CREATES} creates of 4 KiB files, ${CREATE_CONCURRENCY} in flight: bantu (hash, fsync, rename, transaction with event) vs bare (write, fsync, rename)`,
    labels: { a: 'bantu creates', b: 'bare https creates' },
    unit: 'ops/s',
    higherIsBetter: true,
    rounds: 5,
    warmup: 1,
    setup,
    teardown,
    async a(ctx) {
      const ms = await runConcurrent(CREATES, CREATE_CONCURRENCY, async () => {
        const result = await send(ctx, 'POST', `${ctx.bantu.url}/v1/files?name=small-${ctx.seq++}.bin`, 4096, ctx.key, randomBytes(4096));
        if (result.status !== 201) throw new Error(`create failed: ${result.status} ${result.body}`);
      });
      return perSecond(CREATES, ms);
    },
    async b(ctx) {
      const ms = await runConcurrent(CREATES, CREATE_CONCURRENCY, async () => {
        const result = await send(ctx, 'PUT', `${ctx.bareOrigin}/upload/small-${ctx.seq++}.bin`, 4096, undefined, randomBytes(4096));
        if (result.status !== 201) throw new Error(`bare create failed: ${result.status}`);
      });
      return perSecond(CREATES, ms);
    },
  }),
];
