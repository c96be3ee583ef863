import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import multipart from '@fastify/multipart';
import Fastify, { type FastifyInstance } from 'fastify';
import { runCli } from '../test/helpers/cli.ts';
import { makeTempDir, startServer, type TestServer } from '../test/helpers/server.ts';
import { type BenchPair, definePair, mibPerSecond } from './harness.ts';
import { fsyncFolder } from './lib/files-floor.ts';
import { type Form, formOf, memoryKiB, receive, resetPeak, send, stopChild } from './lib/transfer.ts';

/**
 * Files through the gateway (A) against a bare Node HTTPS server (B) that streams the same
 * bytes to or from a file with the same durability (write, fsync of the file, rename, fsync
 * of the folder) and no hashing, database or auth; for the multipart upload, a bare Fastify
 * route parsing the same multipart with @fastify/multipart. For the rate pairs both servers
 * and the client live in this process and share its CPU alike; the peak-RSS pair runs each
 * server in a child process of its own (see there). Small-request hot paths (metadata,
 * 1 KiB creates, lists) are in files-hot.bench.ts.
 */
const here = path.dirname(fileURLToPath(import.meta.url));
const MiB = 1024 * 1024;
const BIG = Number(process.env.BENCH_FILES_MIB ?? 100) * MiB;
/**
 * Transfers of BIG bytes per measurement of the rate pairs, one after the other: a single
 * 100 MiB transfer takes well under half a second here, too short to measure on a shared machine.
 */
const TRANSFERS = Number(process.env.BENCH_FILES_TRANSFERS ?? 3);
const RSS_BYTES = Number(process.env.BENCH_FILES_RSS_MIB ?? 1024) * MiB;

interface Ctx {
  bantu: TestServer;
  key: string;
  bare: https.Server;
  bareOrigin: string;
  bareDir: string;
  ca: string;
  chunk: Buffer;
  /** SHA-256 of BIG bytes of `chunk` repeated: what Bantu must answer for every upload. */
  bigSha256: string;
  seq: number;
  /** A stored file of BIG bytes in each server, for downloads. */
  bigId?: string;
  /** The multipart reference (files/upload-100mib-multipart only). */
  bareMultipart?: { app: FastifyInstance; origin: string };
}

/** The bare reference: PUT /upload/<name> streams to a temp file (fsync), renames it (fsync of the folder); GET /download/<name> streams it back. */
async function bareServer(cert: string, key: string, dir: string): Promise<{ server: https.Server; origin: string }> {
  const server = https.createServer({ cert, key }, (request, response) => {
    const name = path.basename(request.url ?? 'x');
    const file = path.join(dir, name);
    if (request.method === 'PUT') {
      const temp = `${file}.tmp`;
      pipeline(request, createWriteStream(temp, { flush: true, highWaterMark: MiB }))
        .then(() => fs.rename(temp, file))
        .then(() => fsyncFolder(dir))
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

/**
 * The multipart reference: POST /upload/<name> parses multipart/form-data with
 * @fastify/multipart (as Bantu's gateway does) and streams the `file` part to a temp file
 * (fsync), renames it, fsyncs the folder.
 */
async function bareMultipartServer(cert: string, key: string, dir: string): Promise<{ app: FastifyInstance; origin: string }> {
  const app = Fastify({ https: { cert, key } }) as unknown as FastifyInstance;
  await app.register(multipart, { throwFileSizeLimit: false });
  app.post<{ Params: { name: string } }>('/upload/:name', async (request, reply) => {
    const file = path.join(dir, path.basename(request.params.name));
    let stored = false;
    for await (const part of request.parts({ limits: { fileSize: Number.MAX_SAFE_INTEGER } })) {
      if (part.type !== 'file' || part.fieldname !== 'file' || stored) return reply.code(422).send({ ok: false });
      await pipeline(part.file, createWriteStream(`${file}.tmp`, { flush: true, highWaterMark: MiB }));
      stored = true;
    }
    if (!stored) return reply.code(422).send({ ok: false });
    await fs.rename(`${file}.tmp`, file);
    await fsyncFolder(dir);
    return reply.code(201).send({ ok: true });
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  return { app, origin: `https://127.0.0.1:${(app.server.address() as AddressInfo).port}` };
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
  const chunk = randomBytes(MiB);
  const hash = createHash('sha256');
  for (let sent = 0; sent < BIG; sent += MiB) hash.update(chunk.subarray(0, Math.min(MiB, BIG - sent)));
  return { bantu, key: bantu.keys.test.account_key, bare: bare.server, bareOrigin: bare.origin, bareDir, ca: cert, chunk, bigSha256: hash.digest('hex'), seq: 0 };
}

async function teardown(ctx: Ctx): Promise<void> {
  await ctx.bareMultipart?.app.close();
  await new Promise((resolve) => ctx.bare.close(resolve));
  await ctx.bantu.close();
}

/** One BIG upload to Bantu, raw or multipart; checks that Bantu stored exactly the bytes sent. Milliseconds. */
async function bantuUpload(ctx: Ctx, form?: Form): Promise<number> {
  const name = `bench-${ctx.seq++}.bin`;
  const started = performance.now();
  const result = await send(ctx, 'POST', `${ctx.bantu.url}/v1/files${form ? '' : `?name=${name}`}`, BIG, { auth: ctx.key, form: form ?? undefined });
  const ms = performance.now() - started;
  if (result.status !== 201) throw new Error(`upload failed: ${result.status} ${result.body}`);
  const file = JSON.parse(result.body);
  if (file.size !== BIG || file.sha256 !== ctx.bigSha256) throw new Error(`bantu stored other bytes: ${result.body}`);
  return ms;
}

/** One BIG upload to a bare reference (`origin` answers PUT raw, or POST multipart); checks the file it wrote. Milliseconds. */
async function bareUpload(ctx: Ctx, origin: string, form?: Form): Promise<number> {
  const name = `bench-${ctx.seq++}.bin`;
  const started = performance.now();
  const result = await send(ctx, form ? 'POST' : 'PUT', `${origin}/upload/${name}`, BIG, { form });
  const ms = performance.now() - started;
  if (result.status !== 201) throw new Error(`bare upload failed: ${result.status} ${result.body}`);
  const written = await fs.stat(path.join(ctx.bareDir, name));
  if (written.size !== BIG) throw new Error(`bare upload wrote ${written.size} bytes, not ${BIG}`);
  // The disk holds one at a time: the next round writes its own.
  await fs.rm(path.join(ctx.bareDir, name));
  return ms;
}

/** Runs `transfer` TRANSFERS times, one after the other, and gives the MiB/s over all of them (`transfer` returns its milliseconds). */
async function rateOf(transfer: () => Promise<number>): Promise<number> {
  let ms = 0;
  for (let i = 0; i < TRANSFERS; i++) ms += await transfer();
  return mibPerSecond(BIG * TRANSFERS, ms);
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

interface ChildServer {
  child: ChildProcess;
  origin: string;
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
    await resetPeak(pid);
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
    description: `POST /v1/files of ${BIG / MiB} MiB raw body (hashed, fsynced, recorded with its event), ${TRANSFERS} one after the other per measurement, vs a bare HTTPS server streaming it to a file with fsync`,
    labels: { a: 'bantu upload', b: 'bare https to file' },
    unit: 'MiB/s',
    higherIsBetter: true,
    target: { ratio: 0.8, description: 'a raw upload through the gateway, hashed and recorded, keeps at least 80% of a bare streamed write (issue 13)' },
    rounds: 5,
    warmup: 1,
    setup,
    teardown,
    a: (ctx) => rateOf(() => bantuUpload(ctx)),
    b: (ctx) => rateOf(() => bareUpload(ctx, ctx.bareOrigin)),
  }),
  definePair<Ctx>({
    name: 'files/upload-100mib-multipart',
    description:
      `POST /v1/files of ${BIG / MiB} MiB as the part \`file\` of a multipart/form-data body (hashed, fsynced, recorded with its event), ${TRANSFERS} one after ` +
      'the other per measurement, vs a bare Fastify ' +
      'HTTPS route parsing the same multipart with @fastify/multipart and streaming the part to a file with fsync',
    labels: { a: 'bantu multipart upload', b: 'bare fastify multipart to file' },
    unit: 'MiB/s',
    higherIsBetter: true,
    target: { ratio: 0.8, description: 'a multipart upload through the gateway keeps at least 80% of a bare multipart parse streamed to a file (issue 13)' },
    rounds: 5,
    warmup: 1,
    async setup() {
      const ctx = await setup();
      try {
        const [cert, key] = await Promise.all([
          fs.readFile(path.join(ctx.bantu.dataDir, 'tls', 'cert.pem'), 'utf8'),
          fs.readFile(path.join(ctx.bantu.dataDir, 'tls', 'key.pem'), 'utf8'),
        ]);
        return { ...ctx, bareMultipart: await bareMultipartServer(cert, key, ctx.bareDir) };
      } catch (error) {
        await teardown(ctx);
        throw error;
      }
    },
    teardown,
    // A fresh filename each time: Bantu takes the name of a new file from the part's filename.
    a: (ctx) => rateOf(() => bantuUpload(ctx, formOf(`multipart-${ctx.seq}.bin`))),
    b: (ctx) => rateOf(() => bareUpload(ctx, ctx.bareMultipart?.origin ?? '', formOf(`multipart-${ctx.seq}.bin`))),
  }),
  definePair<Ctx>({
    name: 'files/download-100mib',
    description: `GET /v1/files/{id}/content of ${BIG / MiB} MiB, ${TRANSFERS} one after the other per measurement, vs a bare HTTPS server streaming the same file`,
    labels: { a: 'bantu download', b: 'bare https from file' },
    unit: 'MiB/s',
    higherIsBetter: true,
    target: { ratio: 0.9, description: 'a download through the gateway keeps at least 90% of a bare streamed read (issue 13)' },
    rounds: 5,
    warmup: 1,
    async setup() {
      const ctx = await setup();
      try {
        const created = await send(ctx, 'POST', `${ctx.bantu.url}/v1/files?name=big.bin`, BIG, { auth: ctx.key });
        if (created.status !== 201) throw new Error(`upload failed: ${created.status} ${created.body}`);
        ctx.bigId = JSON.parse(created.body).id;
        const bare = await send(ctx, 'PUT', `${ctx.bareOrigin}/upload/big.bin`, BIG);
        if (bare.status !== 201) throw new Error(`bare upload failed: ${bare.status}`);
        return ctx;
      } catch (error) {
        await teardown(ctx);
        throw error;
      }
    },
    teardown,
    a: (ctx) =>
      rateOf(async () => {
        const started = performance.now();
        const size = await receive(ctx, `${ctx.bantu.url}/v1/files/${ctx.bigId}/content`, ctx.key);
        if (size !== BIG) throw new Error(`short download: ${size}`);
        return performance.now() - started;
      }),
    b: (ctx) =>
      rateOf(async () => {
        const started = performance.now();
        const size = await receive(ctx, `${ctx.bareOrigin}/download/big.bin`);
        if (size !== BIG) throw new Error(`short bare download: ${size}`);
        return performance.now() - started;
      }),
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
        const result = await send(client, 'POST', `${server.origin}/v1/files?name=rss-${ctx.seq++}.bin`, RSS_BYTES, { auth: server.key });
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
];
