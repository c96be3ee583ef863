import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import type { Deployment } from '../test/helpers/distributed.ts';
import { type BenchPair, definePair, median, mibPerSecond, perSecond } from './harness.ts';
import {
  adminClient,
  backendStats,
  cpuBoundRatio,
  cpuNotes,
  newest,
  type Reference,
  redisStats,
  restartGatewayAndFiles,
  running,
  type SideCpu,
  startFilesDeployment,
  startReference,
} from './lib/distributed.ts';
import { type LoadGenerator, startLoad } from './lib/http-load.ts';
import { cpuOfGroups } from './lib/proc-cpu.ts';
import { memoryKiB, receive, resetPeak, send, type TransferClient } from './lib/transfer.ts';

/**
 * Distributed mode against in-process (issue 14), `npm run bench -- --distributed` only: A is
 * a deployment of `bantu serve` processes (identity, the gateway, one or two files instances,
 * on the machine's PostgreSQL, NATS and Redis: test/helpers/distributed.ts), B is `bantu start`
 * on the same PostgreSQL and Redis with the same certificate (bench/lib/distributed.ts). The
 * same requests go to each side's HTTPS port; the difference is the gateway's hop to a files
 * process (a signed internal header, a keep-alive undici pool, the body streamed through).
 *
 * Every side is a set of child processes and the client is this process, so the CPU of each
 * is read from /proc around every measurement: the gateway, each files instance, identity,
 * the PostgreSQL backends of that side's databases, the machine's Redis (shared with anyone
 * else using it), this process (the client), and the rest of the machine. They are the pairs'
 * notes: per unit of work and as a share of one core, which says what a rate is bound by.
 */
const CONCURRENCY = 16;
const GETS = Number(process.env.BENCH_DIST_GETS ?? 6_000);
const MiB = 1024 * 1024;
const BIG = Number(process.env.BENCH_DIST_MIB ?? 100) * MiB;
/** Transfers of BIG bytes per measurement, one after the other (one alone is too short to time here). */
const TRANSFERS = Number(process.env.BENCH_DIST_TRANSFERS ?? 3);
const RSS_BYTES = Number(process.env.BENCH_DIST_RSS_MIB ?? 1024) * MiB;
/** How long a fresh process idles before its peak is reset and the upload starts. */
const RSS_SETTLE_MS = 1000;

interface Sides {
  deployment: Deployment;
  reference: Reference;
  admin: pg.Client;
  ca: string;
  cpu: { a: SideCpu[]; b: SideCpu[] };
  /** The machine's 1-minute load average as each measurement started (2 cores: above 2, something waits). */
  loads: number[];
}

async function startSides(files: number): Promise<Sides> {
  const deployment = await startFilesDeployment(files);
  let reference: Reference | undefined;
  try {
    const tls = { certFile: path.join(deployment.dataDir, 'tls', 'cert.pem'), keyFile: path.join(deployment.dataDir, 'tls', 'key.pem') };
    reference = await startReference(tls);
    const admin = await adminClient(deployment.env.DATABASE_URL as string);
    return { deployment, reference, admin, ca: deployment.ca, cpu: { a: [], b: [] }, loads: [] };
  } catch (error) {
    await reference?.close();
    await deployment.close();
    throw error;
  }
}

async function stopSides(sides: Sides): Promise<void> {
  await sides.admin.end();
  await sides.reference.close();
  await sides.deployment.close();
}

const stat = (pid: number | undefined) => (pid === undefined ? [] : [`/proc/${pid}/stat`]);

/** The stat files of each side's processes right now, by group (see the file's comment). */
async function groupsOf(sides: Sides, side: 'a' | 'b', perInstance: boolean): Promise<Record<string, string[]>> {
  const client = { 'client (this process)': stat(process.pid), 'redis-server (shared)': redisStats() };
  if (side === 'b') {
    return {
      'bantu start': stat(sides.reference.cli.child.pid),
      PostgreSQL: await backendStats(sides.admin, sides.reference.databaseUrl),
      ...client,
    };
  }
  const { deployment } = sides;
  const files = running(deployment, 'files');
  const groups: Record<string, string[]> = {
    gateway: stat(newest(deployment, 'gateway').child.pid),
    files: files.flatMap((p) => stat(p.child.pid)),
  };
  if (perInstance) for (const [i, p] of files.entries()) groups[`files #${i + 1}`] = stat(p.child.pid);
  return {
    ...groups,
    identity: running(deployment, 'identity').flatMap((p) => stat(p.child.pid)),
    PostgreSQL: await backendStats(sides.admin, deployment.env.DATABASE_URL as string),
    ...client,
  };
}

/** Runs `work` and records each group's CPU over it, per `units` of work; the groups are listed again at the end (new backends count). */
async function metered<T>(sides: Sides, side: 'a' | 'b', units: number, perInstance: boolean, work: () => Promise<T>): Promise<T> {
  sides.loads.push(os.loadavg()[0] ?? Number.NaN);
  const reading = cpuOfGroups(await groupsOf(sides, side, perInstance));
  const result = await work();
  const { groups, machine, elapsedMs } = reading(await groupsOf(sides, side, perInstance));
  // "files" is the sum of the instances: each instance is a detail, not counted again.
  const parts = Object.entries(groups);
  sides.cpu[side].push({
    groups: Object.fromEntries(parts.filter(([name]) => !name.startsWith('files #'))),
    detail: Object.fromEntries(parts.filter(([name]) => name.startsWith('files #'))),
    machine,
    elapsedMs,
    work: units,
  });
  return result;
}

function notesOf(sides: Sides, per: string): Record<string, string | number> {
  return {
    'CPU-bound ratio (B CPU per unit / A CPU per unit, every process of the side and the client)': cpuBoundRatio(sides.cpu.a, sides.cpu.b),
    ...cpuNotes('A', sides.cpu.a, per),
    ...cpuNotes('B', sides.cpu.b, per),
    ...loadNote(sides.loads),
  };
}

function loadNote(loads: readonly number[]): Record<string, string> {
  if (loads.length === 0) return {};
  return { 'load average (1 min) as measurements started': `${Math.min(...loads).toFixed(1)}..${Math.max(...loads).toFixed(1)} (median ${median(loads).toFixed(1)})` };
}

// ---------------------------------------------------------------------------------------------
// distributed/get-metadata, distributed/get-metadata-2-files

interface GetCtx extends Sides {
  load: LoadGenerator;
  /** Per side: the user's token and the file's id, and the file as that side answered in setup. */
  a: { token: string; file: Record<string, unknown>; origin: string };
  b: { token: string; file: Record<string, unknown>; origin: string };
  perInstance: boolean;
}

/** Registers a user and creates a 1 KiB file through one side; the token, and the file as GET answers it. */
async function userWithFile(request: Reference['request'], applicationKey: string): Promise<{ token: string; file: Record<string, unknown> }> {
  const registered = await request('POST', '/v1/auth/register', { basic: applicationKey, json: { email: 'bench@example.com', password: 'benchmark password 1', name: 'Bench' } });
  if (registered.status !== 201) throw new Error(`register: ${registered.status} ${registered.text}`);
  const token = registered.json.access_token as string;
  const created = await request('POST', '/v1/files?name=meta.bin', { auth: token, body: Buffer.alloc(1024, 1), headers: { 'content-type': 'application/octet-stream' } });
  if (created.status !== 201) throw new Error(`create: ${created.status} ${created.text}`);
  const read = await request('GET', `/v1/files/${created.json.id}`, { auth: token });
  if (read.status !== 200) throw new Error(`get: ${read.status} ${read.text}`);
  assert.deepEqual(read.json, created.json);
  return { token, file: read.json };
}

async function getSetup(files: number): Promise<GetCtx> {
  const sides = await startSides(files);
  try {
    const a = await userWithFile(sides.deployment.request, sides.deployment.keys.test.application_key);
    const b = await userWithFile(sides.reference.request, sides.reference.keys.test.application_key);
    const load = await startLoad({ ca: sides.ca });
    return { ...sides, load, a: { ...a, origin: sides.deployment.url }, b: { ...b, origin: sides.reference.url }, perInstance: files > 1 };
  } catch (error) {
    await stopSides(sides);
    throw error;
  }
}

async function getTeardown(ctx: GetCtx): Promise<void> {
  await ctx.load.close();
  await stopSides(ctx);
}

async function gets(ctx: GetCtx, side: 'a' | 'b'): Promise<number> {
  const { token, file, origin } = ctx[side];
  const { elapsedMs, sample } = await metered(ctx, side, GETS, ctx.perInstance, () =>
    ctx.load.run({ origin, path: `/v1/files/${file.id}`, count: GETS, concurrency: CONCURRENCY, headers: { authorization: `Bearer ${token}` } }),
  );
  assert.deepEqual(JSON.parse(sample), file, `${side === 'a' ? 'the deployment' : 'bantu start'} answered another file`);
  return perSecond(GETS, elapsedMs);
}

function getPair(name: string, files: number, target: BenchPair['target']): BenchPair {
  return definePair<GetCtx>({
    name,
    optIn: 'distributed',
    description:
      `GET /v1/files/{id} with a user JWT over HTTPS, ${CONCURRENCY} in flight, ${GETS} per measurement: A through the gateway process to ` +
      `${files === 1 ? 'one files process' : `${files} files processes (round robin)`} (bantu serve, machine PostgreSQL, NATS and Redis), B to bantu start ` +
      'on the same PostgreSQL and Redis with the same certificate; notes give the CPU of every process per request and as a share of one core',
    labels: { a: files === 1 ? 'gateway + files' : `gateway + ${files} files`, b: 'bantu start' },
    unit: 'req/s',
    higherIsBetter: true,
    target,
    rounds: 5,
    warmup: 1,
    setup: () => getSetup(files),
    a: (ctx) => gets(ctx, 'a'),
    b: (ctx) => gets(ctx, 'b'),
    notes: (ctx) => notesOf(ctx, 'req'),
    teardown: getTeardown,
  });
}

// ---------------------------------------------------------------------------------------------
// distributed/upload-100mib, distributed/download-100mib

interface TransferCtx extends Sides, TransferClient {
  /** SHA-256 of BIG bytes of `chunk` repeated: what each side must answer for every upload. */
  bigSha256: string;
  seq: number;
  /** Per side, a stored file of BIG bytes (downloads only). */
  bigId?: { a: string; b: string };
}

async function transferSetup(): Promise<TransferCtx> {
  const sides = await startSides(1);
  const chunk = randomBytes(MiB);
  const hash = createHash('sha256');
  for (let sent = 0; sent < BIG; sent += MiB) hash.update(chunk.subarray(0, Math.min(MiB, BIG - sent)));
  return { ...sides, chunk, bigSha256: hash.digest('hex'), seq: 0 };
}

function sideOf(ctx: Sides, side: 'a' | 'b'): { origin: string; key: string } {
  return side === 'a'
    ? { origin: ctx.deployment.url, key: ctx.deployment.keys.test.account_key }
    : { origin: ctx.reference.url, key: ctx.reference.keys.test.account_key };
}

/** One BIG raw upload to a side; checks it stored exactly the bytes sent; the file's id and the milliseconds it took. */
async function uploadBig(ctx: TransferCtx, side: 'a' | 'b'): Promise<{ id: string; ms: number }> {
  const { origin, key } = sideOf(ctx, side);
  const started = performance.now();
  const result = await send(ctx, 'POST', `${origin}/v1/files?name=big-${ctx.seq++}.bin`, BIG, { auth: key });
  const ms = performance.now() - started;
  if (result.status !== 201) throw new Error(`${side}: upload failed: ${result.status} ${result.body}`);
  const file = JSON.parse(result.body);
  if (file.size !== BIG || file.sha256 !== ctx.bigSha256) throw new Error(`${side}: stored other bytes: ${result.body}`);
  return { id: file.id, ms };
}

async function uploads(ctx: TransferCtx, side: 'a' | 'b'): Promise<number> {
  const ms = await metered(ctx, side, (BIG / MiB) * TRANSFERS, false, async () => {
    let total = 0;
    for (let i = 0; i < TRANSFERS; i++) total += (await uploadBig(ctx, side)).ms;
    return total;
  });
  return mibPerSecond(BIG * TRANSFERS, ms);
}

async function downloads(ctx: TransferCtx, side: 'a' | 'b'): Promise<number> {
  const { origin, key } = sideOf(ctx, side);
  const id = ctx.bigId?.[side];
  const ms = await metered(ctx, side, (BIG / MiB) * TRANSFERS, false, async () => {
    let total = 0;
    for (let i = 0; i < TRANSFERS; i++) {
      const started = performance.now();
      const size = await receive(ctx, `${origin}/v1/files/${id}/content`, key);
      total += performance.now() - started;
      if (size !== BIG) throw new Error(`${side}: short download: ${size} bytes`);
    }
    return total;
  });
  return mibPerSecond(BIG * TRANSFERS, ms);
}

// ---------------------------------------------------------------------------------------------
// distributed/upload-1gib-peak-rss

interface RssCtx extends Sides {
  /** Per A round, the growth of the gateway and of the files process (MiB). */
  growth: { gateway: number[]; files: number[] };
  seq: number;
}

/** Growth of each process's peak RSS (VmHWM after - VmRSS before, MiB) over `upload`, after a settle and a reset of the peaks. */
async function peakGrowth(pids: Record<string, number>, upload: () => Promise<void>): Promise<Record<string, number>> {
  await new Promise((resolve) => setTimeout(resolve, RSS_SETTLE_MS));
  const before: Record<string, number> = {};
  for (const [name, pid] of Object.entries(pids)) {
    await resetPeak(pid);
    before[name] = (await memoryKiB(pid)).rss;
  }
  await upload();
  const growth: Record<string, number> = {};
  for (const [name, pid] of Object.entries(pids)) growth[name] = ((await memoryKiB(pid)).hwm - (before[name] as number)) / 1024;
  return growth;
}

/** One RSS_BYTES upload of fresh random bytes to a side; removes the blob after (the disk holds one at a time). */
async function uploadHuge(ctx: RssCtx, side: 'a' | 'b'): Promise<void> {
  const { origin, key } = sideOf(ctx, side);
  const client = { ca: ctx.ca, chunk: randomBytes(MiB) };
  const result = await send(client, 'POST', `${origin}/v1/files?name=rss-${ctx.seq++}.bin`, RSS_BYTES, { auth: key });
  if (result.status !== 201) throw new Error(`${side}: upload failed: ${result.status} ${result.body}`);
  const file = JSON.parse(result.body);
  if (file.size !== RSS_BYTES) throw new Error(`${side}: stored ${file.size} bytes`);
  const dataDir = side === 'a' ? ctx.deployment.dataDir : ctx.reference.dataDir;
  const blob = path.join(dataDir, 'blobs', 'test', String(file.sha256).slice(0, 2), file.sha256);
  await fs.rm(blob);
}

// ---------------------------------------------------------------------------------------------

export const pairs: BenchPair[] = [
  getPair('distributed/get-metadata', 1, {
    ratio: 0.5,
    description: 'a metadata read through the gateway and a files process keeps at least half the in-process rate (issue 14)',
  }),
  // No target: on 2 cores a second files instance competes with the gateway for the same cores; the notes say which process is bound.
  getPair('distributed/get-metadata-2-files', 2, undefined),
  definePair<TransferCtx>({
    name: 'distributed/upload-100mib',
    optIn: 'distributed',
    description:
      `POST /v1/files of ${BIG / MiB} MiB raw body with an account key, ${TRANSFERS} one after the other per measurement: A through the gateway ` +
      'process to one files process (the body streamed through the proxy), B to bantu start on the same PostgreSQL and Redis; each answer checked (size, SHA-256)',
    labels: { a: 'gateway + files', b: 'bantu start' },
    unit: 'MiB/s',
    higherIsBetter: true,
    target: { ratio: 0.8, description: 'an upload streamed through the gateway to a files process keeps at least 80% of the in-process rate (issue 14)' },
    rounds: 5,
    warmup: 1,
    setup: transferSetup,
    a: (ctx) => uploads(ctx, 'a'),
    b: (ctx) => uploads(ctx, 'b'),
    notes: (ctx) => notesOf(ctx, 'MiB'),
    teardown: stopSides,
  }),
  definePair<TransferCtx>({
    name: 'distributed/download-100mib',
    optIn: 'distributed',
    description:
      `GET /v1/files/{id}/content of ${BIG / MiB} MiB with an account key, ${TRANSFERS} one after the other per measurement: A through the gateway ` +
      'process from one files process (streamed through the proxy), B from bantu start on the same PostgreSQL and Redis; each download counted to its size',
    labels: { a: 'gateway + files', b: 'bantu start' },
    unit: 'MiB/s',
    higherIsBetter: true,
    target: { ratio: 0.8, description: 'a download streamed from a files process through the gateway keeps at least 80% of the in-process rate (issue 14)' },
    rounds: 5,
    warmup: 1,
    async setup() {
      const ctx = await transferSetup();
      try {
        const a = await uploadBig(ctx, 'a');
        const b = await uploadBig(ctx, 'b');
        return { ...ctx, bigId: { a: a.id, b: b.id } };
      } catch (error) {
        await stopSides(ctx);
        throw error;
      }
    },
    a: (ctx) => downloads(ctx, 'a'),
    b: (ctx) => downloads(ctx, 'b'),
    notes: (ctx) => notesOf(ctx, 'MiB'),
    teardown: stopSides,
  }),
  definePair<RssCtx>({
    name: 'distributed/upload-1gib-peak-rss',
    optIn: 'distributed',
    description:
      `peak RSS growth during one ${RSS_BYTES / MiB} MiB raw upload, cold: A, every round a fresh gateway and a fresh files process (bantu serve; ` +
      'identity kept), figure = the larger growth of the two (each is in the notes); B, every round a fresh bantu start on the same PostgreSQL and Redis. ' +
      'Each process idles 1 s, its VmHWM is reset (/proc/<pid>/clear_refs), growth = VmHWM after the 201 - VmRSS before; the client is this process',
    labels: { a: 'gateway, files (larger)', b: 'bantu start' },
    unit: 'MiB',
    higherIsBetter: false,
    target: { max: 64, description: 'a 1 GiB upload streams through the gateway and the files process: neither one\'s peak RSS grows by more than 64 MiB (issue 14)' },
    rounds: 3,
    warmup: 0,
    async setup() {
      const sides = await startSides(1);
      return { ...sides, growth: { gateway: [], files: [] }, seq: 0 };
    },
    async a(ctx) {
      await restartGatewayAndFiles(ctx.deployment);
      ctx.loads.push(os.loadavg()[0] ?? Number.NaN);
      const pids = { gateway: newest(ctx.deployment, 'gateway').child.pid as number, files: newest(ctx.deployment, 'files').child.pid as number };
      const growth = await peakGrowth(pids, () => uploadHuge(ctx, 'a'));
      ctx.growth.gateway.push(growth.gateway as number);
      ctx.growth.files.push(growth.files as number);
      return Math.max(growth.gateway as number, growth.files as number);
    },
    async b(ctx) {
      await ctx.reference.restart();
      ctx.loads.push(os.loadavg()[0] ?? Number.NaN);
      const growth = await peakGrowth({ server: ctx.reference.cli.child.pid as number }, () => uploadHuge(ctx, 'b'));
      return growth.server as number;
    },
    notes: (ctx) => ({
      'A gateway growth per round (MiB)': ctx.growth.gateway.map((v) => v.toFixed(1)).join(', '),
      'A files growth per round (MiB)': ctx.growth.files.map((v) => v.toFixed(1)).join(', '),
      'A gateway growth, median (MiB)': median(ctx.growth.gateway),
      'A files growth, median (MiB)': median(ctx.growth.files),
      ...loadNote(ctx.loads),
    }),
    teardown: stopSides,
  }),
];
