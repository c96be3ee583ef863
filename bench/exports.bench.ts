import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { request } from 'undici';
import { ZipFile } from 'yazl';
import { startServer, type TestServer } from '../test/helpers/server.ts';
import { definePair, mibPerSecond, runConcurrent } from './harness.ts';

/**
 * Zip exports.
 *
 * - throughput: a queued export of 1,000 files of 100 KiB, from POST /v1/exports to `ready`
 *   (A, MiB/s of content), against zipping the same files straight from a folder with the same
 *   library and settings (yazl, stored entries) into a file that is then fsynced (B). Target 0.7.
 * - memory: the server process's RSS growth while it exports 1 GiB (1,024 files of 1 MiB),
 *   sampled every 20 ms (A, MiB), against the same for the plain yazl zip of the same files (B).
 *   The target is absolute: under 64 MiB.
 */
const KiB = 1024;
const MiB = 1024 * KiB;

interface Ctx {
  server: TestServer;
  key: string;
  folder: string;
  files: number;
  size: number;
  round: number;
  peaks: { a: number[]; b: number[] };
}

async function seed(files: number, size: number): Promise<Ctx> {
  const server = await startServer({ BANTU_EXPORTS_MAX_RUNNING: '100', BANTU_EXPORTS_KEEP: '3', BANTU_LOG_LEVEL: 'silent' });
  const key = server.keys.test.account_key;
  const folder = path.join(server.dataDir, 'bench-source');
  await fsp.mkdir(folder);
  await runConcurrent(files, 8, async (i) => {
    const content = randomBytes(size);
    await fsp.writeFile(path.join(folder, `f${i}.bin`), content);
    const response = await request(`${server.url}/v1/files?name=f${i}.bin&path=/bench`, {
      method: 'POST',
      dispatcher: server.http,
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/octet-stream' },
      body: content,
    });
    const text = await response.body.text();
    if (response.statusCode !== 201) throw new Error(`upload failed: ${response.statusCode} ${text}`);
  });
  return { server, key, folder, files, size, round: 0, peaks: { a: [], b: [] } };
}

/** One queued export to `ready`; the elapsed ms. */
async function exportOnce(ctx: Ctx): Promise<number> {
  const started = performance.now();
  const created = await ctx.server.request('POST', '/v1/exports', { auth: ctx.key, json: { email: 'bench@example.com' } });
  if (created.status !== 202) throw new Error(`export refused: ${created.status} ${created.text}`);
  for (;;) {
    const status = await ctx.server.request('GET', `/v1/exports/${created.json.id}`, { auth: ctx.key });
    if (status.json.status === 'ready') break;
    if (status.json.status === 'failed') throw new Error(`export failed: ${status.json.error}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return performance.now() - started;
}

/** The same files zipped from the folder with yazl (stored entries), written and fsynced; the elapsed ms. */
async function plainZip(ctx: Ctx): Promise<number> {
  const started = performance.now();
  const zip = new ZipFile();
  for (let i = 0; i < ctx.files; i++) zip.addFile(path.join(ctx.folder, `f${i}.bin`), `files/bench/f${i}.bin`, { compress: false });
  zip.end();
  const out = path.join(ctx.server.dataDir, `plain-${ctx.round++}.zip`);
  await pipeline(zip.outputStream, fs.createWriteStream(out));
  const handle = await fsp.open(out, 'r');
  await handle.sync();
  await handle.close();
  await fsp.rm(out);
  return performance.now() - started;
}

/** Peak RSS growth (MiB) of this process while `work` runs, sampled every 20 ms. */
async function rssGrowth(work: () => Promise<unknown>): Promise<number> {
  const baseline = process.memoryUsage().rss;
  let peak = baseline;
  const timer = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 20);
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  return (Math.max(peak, process.memoryUsage().rss) - baseline) / MiB;
}

const THROUGHPUT_FILES = Number(process.env.BENCH_EXPORT_FILES ?? 1000);
const MEMORY_GIB = Number(process.env.BENCH_EXPORT_GIB ?? 1);

export const pairs = [
  definePair<Ctx>({
    name: 'exports/zip-1000x100KiB',
    description: 'A: a queued zip export of 1,000 files of 100 KiB, POST to ready (content MiB/s). B: yazl zipping the same files from a folder into a file, fsynced.',
    labels: { a: 'bantu export', b: 'yazl from disk' },
    unit: 'MiB/s',
    higherIsBetter: true,
    target: { ratio: 0.7, description: 'an export keeps at least 70% of the rate of zipping the same files straight from disk with the same library' },
    rounds: 3,
    setup: () => seed(THROUGHPUT_FILES, 100 * KiB),
    a: async (ctx) => mibPerSecond(ctx.files * ctx.size, await exportOnce(ctx)),
    b: async (ctx) => mibPerSecond(ctx.files * ctx.size, await plainZip(ctx)),
    teardown: async (ctx) => ctx.server?.close(),
  }),
  definePair<Ctx>({
    name: 'exports/rss-1GiB',
    description: "A: the server process's peak RSS growth during a queued export of 1 GiB (1,024 files of 1 MiB). B: the same process zipping the same files from disk with yazl.",
    labels: { a: 'bantu export', b: 'yazl from disk' },
    unit: 'MiB',
    higherIsBetter: false,
    target: { max: 64, description: 'a 1 GiB export grows the server by under 64 MiB' },
    rounds: 2,
    warmup: 0,
    setup: () => seed(Math.round(MEMORY_GIB * 1024), MiB),
    a: async (ctx) => {
      const growth = await rssGrowth(() => exportOnce(ctx));
      ctx.peaks.a.push(growth);
      return growth;
    },
    b: async (ctx) => {
      const growth = await rssGrowth(() => plainZip(ctx));
      ctx.peaks.b.push(growth);
      return growth;
    },
    notes: (ctx) => ({ 'rss growth A (MiB, per round)': ctx.peaks.a.map((v) => v.toFixed(1)).join(', '), 'rss growth B (MiB, per round)': ctx.peaks.b.map((v) => v.toFixed(1)).join(', ') }),
    teardown: async (ctx) => ctx.server?.close(),
  }),
];
