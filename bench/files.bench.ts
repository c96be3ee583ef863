import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { runCli } from '../test/helpers/cli.ts';
import { makeTempDir, startServer, type TestServer } from '../test/helpers/server.ts';
import { type BenchPair, definePair, mibPerSecond, perSecond, runConcurrent } from './harness.ts';

/**
 * Files through the gateway (A) against a bare Node HTTPS server (B) that streams the same
 * bytes to or from a file with the same durability (write, fsync) and no hashing, database
 * or auth. For the rate pairs both servers and the client live in this process and share its
 * CPU alike; the peak-RSS pair runs each server in a child process of its own (see there).
 */
const here = path.dirname(fileURLToPath(import.meta.url));
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
function send(ctx: Pick<Ctx, 'ca' | 'chunk'>, method: string, url: string, bytes: number, auth?: string, chunk = ctx.chunk): Promise<{ status: number; body: string }> {
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

/*
 * Peak RSS of a server during one upload, cold: each measurement starts a fresh server
 * process (Bantu: the real `bantu start` CLI; bare: bench/lib/bare-upload-server.mjs), lets it
 * settle, resets the kernel's high-water mark of its resident set (Linux: "5" written to
 * /proc/<pid>/clear_refs sets VmHWM to the current VmRSS), reads VmRSS, sends the upload from
 * this process, and reads VmHWM once the server has answered. Growth = VmHWM after - VmRSS
 * before: the server's own peak over the upload, exact (no sampling), unaffected by the client
 * and by memory an earlier upload left behind. Linux only.
 */
const RSS_SETTLE_MS = 1000;

/** VmRSS and VmHWM (peak RSS since start or the last reset) of a process, in KiB. */
async function memoryKiB(pid: number): Promise<{ rss: number; hwm: number }> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  return { rss: field('VmRSS'), hwm: field('VmHWM') };
}

interface ChildServer {
  child: ChildProcess;
  origin: string;
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  await exited;
  clearTimeout(timer);
}

/** A real `bantu start` on `dataDir` (backup worker off: the pair measures the upload, not a 1 GiB backup copy after it). */
async function spawnBantu(dataDir: string): Promise<ChildServer & { key: string }> {
  const cli = runCli(['start'], { BANTU_DATA_DIR: dataDir, BANTU_PORT: '0', BANTU_LOG_LEVEL: 'error', BANTU_BACKUP_WORKER: 'off' });
  try {
    const origin = await cli.ready(120_000);
    const tenant = JSON.parse(await fs.readFile(path.join(dataDir, 'secrets', 'default-tenant.json'), 'utf8'));
    return { child: cli.child, origin, key: tenant.keys.test.account_key };
  } catch (error) {
    await stopChild(cli.child);
    throw error;
  }
}

async function spawnBare(dataDir: string, dir: string): Promise<ChildServer> {
  const script = path.join(here, 'lib', 'bare-upload-server.mjs');
  const child = spawn(process.execPath, [script, path.join(dataDir, 'tls', 'cert.pem'), path.join(dataDir, 'tls', 'key.pem'), dir], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise<string>((resolve, reject) => {
    child.stdout?.once('data', (chunk) => resolve(String(chunk).trim()));
    child.once('exit', (code) => reject(new Error(`bare upload server exited with ${code}`)));
  });
  return { child, origin: `https://127.0.0.1:${port}` };
}

/** Runs `upload` against a fresh `server` and returns the growth of the server's peak RSS in MiB; stops the server. */
async function coldPeakGrowth(server: ChildServer, upload: () => Promise<void>): Promise<number> {
  try {
    const pid = server.child.pid as number;
    await new Promise((resolve) => setTimeout(resolve, RSS_SETTLE_MS));
    await fs.writeFile(`/proc/${pid}/clear_refs`, '5');
    const before = await memoryKiB(pid);
    await upload();
    const after = await memoryKiB(pid);
    return (after.hwm - before.rss) / 1024;
  } finally {
    await stopChild(server.child);
  }
}

interface RssCtx {
  /** One Bantu data dir for every round (initialised in setup); its certificate also serves the bare server. */
  dataDir: string;
  bareDir: string;
  ca: string;
  seq: number;
}

export const pairs: BenchPair[] = [
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
  definePair<RssCtx>({
    name: 'files/upload-1gib-peak-rss',
    description:
      `peak RSS growth of the SERVER process during one ${RSS_BYTES / MiB} MiB upload, cold: every round starts a fresh server process ` +
      '(A: the real `bantu start` CLI, backup worker off; B: a bare Node HTTPS server streaming to a file with fsync), waits 1 s, resets its ' +
      'VmHWM (/proc/<pid>/clear_refs), then growth = VmHWM after the 201 - VmRSS before; the client is this process, fresh random bytes each round',
    labels: { a: 'bantu upload', b: 'bare https to file' },
    unit: 'MiB',
    higherIsBetter: false,
    // Absolute (issue 4). B is the floor (what streaming the bytes costs anyway), not the bound.
    target: { max: 64, description: 'a 1 GiB upload streams: the server\'s peak RSS grows by less than 64 MiB' },
    rounds: 3,
    warmup: 0,
    async setup() {
      // First start (database init, tenant creation) here, so that every round is a restart of equal cost.
      const dataDir = await makeTempDir('bantu-bench-rss-');
      try {
        const first = await spawnBantu(dataDir);
        await stopChild(first.child);
        const bareDir = path.join(dataDir, 'bare');
        await fs.mkdir(bareDir);
        return { dataDir, bareDir, ca: await fs.readFile(path.join(dataDir, 'tls', 'cert.pem'), 'utf8'), seq: 0 };
      } catch (error) {
        await fs.rm(dataDir, { recursive: true, force: true });
        throw error;
      }
    },
    async teardown(ctx) {
      await fs.rm(ctx.dataDir, { recursive: true, force: true });
    },
    async a(ctx) {
      const server = await spawnBantu(ctx.dataDir);
      const client = { ca: ctx.ca, chunk: randomBytes(MiB) };
      let sha = '';
      const growth = await coldPeakGrowth(server, async () => {
        const result = await send(client, 'POST', `${server.origin}/v1/files?name=rss-${ctx.seq++}.bin`, RSS_BYTES, server.key);
        if (result.status !== 201) throw new Error(`upload failed: ${result.status} ${result.body}`);
        sha = JSON.parse(result.body).sha256;
      });
      // Free the disk between rounds (the server is stopped; its row may point to a missing blob, which no round reads).
      await fs.rm(path.join(ctx.dataDir, 'blobs', 'test', sha.slice(0, 2), sha), { force: true });
      return growth;
    },
    async b(ctx) {
      const server = await spawnBare(ctx.dataDir, ctx.bareDir);
      const client = { ca: ctx.ca, chunk: randomBytes(MiB) };
      const growth = await coldPeakGrowth(server, async () => {
        const result = await send(client, 'PUT', `${server.origin}/upload/rss-${ctx.seq++}.bin`, RSS_BYTES);
        if (result.status !== 201) throw new Error(`bare upload failed: ${result.status}`);
      });
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
