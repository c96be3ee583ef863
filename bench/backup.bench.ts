import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { sql } from 'kysely';
import pino from 'pino';
import { request } from 'undici';
import { DiskBlobStore } from '../src/adapters/blob/disk.ts';
import { OutboxBus } from '../src/adapters/bus/outbox.ts';
import { registerConsumers } from '../src/platform/module.ts';
import { createBackupService } from '../src/services/backup/plugin.ts';
import { startServer, type TestServer } from '../test/helpers/server.ts';
import { type BenchPair, definePair, perSecond, runConcurrent } from './harness.ts';

/**
 * The backup service under load.
 *
 * - lag: uploads at half of their measured capacity (open loop, a fixed rate) with the
 *   backup worker running in-process (embedded shape). A is the p50 / p99 time from a change
 *   committing to its version being durably backed up (backed_up_at - occurred_at); B is the
 *   p50 / p99 latency of the uploads themselves in the same conditions (the client's own wait
 *   for a durable store), so the ratio says how many uploads' worth the backup trails by.
 *   The absolute target is p99 under 500 ms.
 * - drain: a backlog of small changes made while no worker ran, then drained by a worker
 *   (A, events/s) against copying the same blobs with fs.copyFile plus the same durability
 *   (fsync of the file and of its folder) (B, files/s).
 * - upload throughput with the worker running (A) vs a server without it (B).
 */
const KiB = 1024;
const CHANGES = Number(process.env.BENCH_BACKUP_CHANGES ?? 10_000);
const LAG_SECONDS = Number(process.env.BENCH_BACKUP_LAG_SECONDS ?? 3);
const UPLOADS = Number(process.env.BENCH_BACKUP_UPLOADS ?? 600);
const CONCURRENCY = 16;
const silent = pino({ level: 'silent' });

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

let seq = 0;
/** One 4 KiB upload of fresh bytes (so the backup really copies each one); resolves with its latency. */
async function upload(server: TestServer, bytes = 4 * KiB): Promise<{ ms: number; id: string }> {
  const started = performance.now();
  const response = await request(`${server.url}/v1/files?name=b-${process.pid}-${seq++}.bin`, {
    method: 'POST',
    dispatcher: server.http,
    headers: { authorization: `Bearer ${server.keys.test.account_key}`, 'content-type': 'application/octet-stream' },
    body: randomBytes(bytes),
  });
  const text = await response.body.text();
  if (response.statusCode !== 201) throw new Error(`upload failed: ${response.statusCode} ${text}`);
  return { ms: performance.now() - started, id: JSON.parse(text).id };
}

async function backedUpCount(server: TestServer): Promise<number> {
  const result = await sql<{ n: number }>`select count(*)::int as n from backup.version`.execute(server.app.databases.environments.test);
  return result.rows[0]?.n ?? 0;
}

async function waitForCount(server: TestServer, count: number, limitMs = 300_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while ((await backedUpCount(server)) < count) {
    if (Date.now() > deadline) throw new Error(`the backup did not reach ${count} versions`);
    // Not too often: counting a growing table takes CPU from the worker being measured.
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Uploads at a fixed rate for LAG_SECONDS, not waiting for one before sending the next. */
async function openLoop(server: TestServer, rate: number): Promise<Array<{ ms: number; id: string }>> {
  const count = Math.max(1, Math.round(rate * LAG_SECONDS));
  const interval = 1000 / rate;
  const started = performance.now();
  const sent: Array<Promise<{ ms: number; id: string }>> = [];
  for (let i = 0; i < count; i++) {
    const due = started + i * interval;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
    sent.push(upload(server));
  }
  return Promise.all(sent);
}

interface LagCtx {
  server: TestServer;
  rate: number;
}

function lagPair(p: 50 | 99): BenchPair<LagCtx> {
  return definePair<LagCtx>({
    name: `backup/lag-p${p}`,
    description:
      `4 KiB uploads at half of their measured capacity for ${LAG_SECONDS} s, backup worker in-process: p${p} of commit -> durably backed up (A) ` +
      `vs p${p} of the uploads' own latency (B)${p === 99 ? '; absolute target: p99 lag under 500 ms' : ''}`,
    labels: { a: `backup lag p${p}`, b: `upload latency p${p}` },
    unit: 'ms',
    higherIsBetter: false,
    // Absolute (issue 6), on the p99 pair only: no target was set for the p50.
    ...(p === 99 ? { target: { max: 500, description: 'a committed change is durably backed up within 500 ms at p99 while uploads run at half capacity' } } : {}),
    rounds: 3,
    warmup: 1,
    async setup() {
      const server = await startServer({ BANTU_LOG_LEVEL: 'silent' });
      const ms = await runConcurrent(UPLOADS / 2, CONCURRENCY, async () => void (await upload(server)));
      const rate = perSecond(UPLOADS / 2, ms) / 2;
      await waitForCount(server, UPLOADS / 2);
      return { server, rate };
    },
    async a(ctx) {
      const before = await backedUpCount(ctx.server);
      const done = await openLoop(ctx.server, ctx.rate);
      await waitForCount(ctx.server, before + done.length);
      const result = await sql<{ ms: number }>`
        select extract(epoch from backed_up_at - occurred_at) * 1000 as ms from backup.version
        where file_id = any(${done.map((d) => d.id)})`.execute(ctx.server.app.databases.environments.test);
      return percentile(result.rows.map((r) => Number(r.ms)), p);
    },
    async b(ctx) {
      const before = await backedUpCount(ctx.server);
      const done = await openLoop(ctx.server, ctx.rate);
      await waitForCount(ctx.server, before + done.length);
      return percentile(
        done.map((d) => d.ms),
        p,
      );
    },
    async teardown(ctx) {
      await ctx?.server.close();
    },
  });
}

interface DrainCtx {
  server: TestServer;
  shas: string[];
  copyDir: string;
}

/** Forgets everything the backup did, so the next worker drains the whole backlog again. */
async function resetBackup(ctx: DrainCtx): Promise<void> {
  const db = ctx.server.app.databases.environments.test;
  await sql`delete from backup.version`.execute(db);
  await sql`delete from bus.consumer_cursor where consumer = 'backup'`.execute(db);
  await fs.rm(path.join(ctx.server.dataDir, 'backups'), { recursive: true, force: true });
}

async function fsyncPath(target: string): Promise<void> {
  const handle = await fs.open(target, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export const pairs: BenchPair[] = [
  lagPair(50),
  lagPair(99),
  definePair<DrainCtx>({
    name: 'backup/drain',
    description: `backlog of ${CHANGES} changes (1 KiB creates) made with the worker off, then drained by a worker (A, events/s) vs fs.copyFile + fsync of file and folder of the same blobs (B, files/s)`,
    labels: { a: 'backup drain', b: 'fs.copyFile + fsync' },
    unit: 'ops/s',
    higherIsBetter: true,
    target: { ratio: 0.7, description: 'draining a backlog keeps >= 70% of the rate of durably copying the same files' },
    rounds: 3,
    warmup: 0,
    async setup() {
      const server = await startServer({ BANTU_LOG_LEVEL: 'silent', BANTU_BACKUP_WORKER: 'off' });
      await runConcurrent(CHANGES, CONCURRENCY, async () => void (await upload(server, KiB)));
      const result = await sql<{ sha256: string }>`select data->'file'->>'sha256' as sha256 from bus.outbox where type like 'File_%'`.execute(
        server.app.databases.environments.test,
      );
      const copyDir = path.join(server.dataDir, 'copies');
      return { server, shas: result.rows.map((r) => r.sha256), copyDir };
    },
    async a(ctx) {
      await resetBackup(ctx);
      const { server } = ctx;
      const bus = new OutboxBus(server.app.databases, silent);
      const open = (root: string) => Promise.all([DiskBlobStore.open(path.join(root, 'live')), DiskBlobStore.open(path.join(root, 'test'))]);
      const [sourceLive, sourceTest] = await open(path.join(server.dataDir, 'blobs'));
      const [storeLive, storeTest] = await open(path.join(server.dataDir, 'backups'));
      const backup = createBackupService({
        databases: server.app.databases,
        sources: { live: sourceLive, test: sourceTest },
        store: { live: storeLive, test: storeTest },
        bus,
        worker: true,
        maxAttempts: 5,
        sweepEveryMs: 3600_000,
        logger: silent,
      });
      registerConsumers(bus, [backup]);
      const started = performance.now();
      await bus.start();
      await waitForCount(server, ctx.shas.length);
      const ms = performance.now() - started;
      await bus.close();
      return perSecond(ctx.shas.length, ms);
    },
    async b(ctx) {
      await fs.rm(ctx.copyDir, { recursive: true, force: true });
      const folders = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
      await Promise.all(folders.map((f) => fs.mkdir(path.join(ctx.copyDir, f), { recursive: true })));
      const from = path.join(ctx.server.dataDir, 'blobs', 'test');
      const started = performance.now();
      // One at a time, as the worker goes: copy, fsync the copy, fsync its folder.
      for (const sha of ctx.shas) {
        const target = path.join(ctx.copyDir, sha.slice(0, 2), sha);
        await fs.copyFile(path.join(from, sha.slice(0, 2), sha), target);
        await fsyncPath(target);
        await fsyncPath(path.dirname(target));
      }
      return perSecond(ctx.shas.length, performance.now() - started);
    },
    async teardown(ctx) {
      await ctx?.server.close();
    },
  }),
  definePair<{ withBackup: TestServer; without: TestServer }>({
    name: 'backup/upload-throughput',
    description: `${UPLOADS} uploads of 4 KiB, ${CONCURRENCY} in flight: server with the backup worker in-process (A) vs BANTU_BACKUP_WORKER=off (B)`,
    labels: { a: 'uploads, backup on', b: 'uploads, backup off' },
    unit: 'req/s',
    higherIsBetter: true,
    target: { ratio: 0.7, description: 'running the backup keeps >= 70% of the upload rate' },
    rounds: 3,
    warmup: 1,
    async setup() {
      const [withBackup, without] = await Promise.all([
        startServer({ BANTU_LOG_LEVEL: 'silent' }),
        startServer({ BANTU_LOG_LEVEL: 'silent', BANTU_BACKUP_WORKER: 'off' }),
      ]);
      return { withBackup, without };
    },
    async a(ctx) {
      const before = await backedUpCount(ctx.withBackup);
      const ms = await runConcurrent(UPLOADS, CONCURRENCY, async () => void (await upload(ctx.withBackup)));
      // Not measured: let the backlog drain so it does not weigh on the next side.
      await waitForCount(ctx.withBackup, before + UPLOADS);
      return perSecond(UPLOADS, ms);
    },
    async b(ctx) {
      const ms = await runConcurrent(UPLOADS, CONCURRENCY, async () => void (await upload(ctx.without)));
      return perSecond(UPLOADS, ms);
    },
    async teardown(ctx) {
      await Promise.all([ctx?.withBackup.close(), ctx?.without.close()]);
    },
  }),
];
