import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import pg from 'pg';
import { startServer, type TestServer } from '../test/helpers/server.ts';
import { type BenchPair, definePair, median, perSecond } from './harness.ts';
import { createFloorTable, startFilesFloor } from './lib/files-floor.ts';
import { type LoadGenerator, type LoadRun, startLoad } from './lib/http-load.ts';
import { type CpuSplit, cpuSince } from './lib/proc-cpu.ts';

/**
 * Files' hot paths against their floors (issue 13, "Hot paths at their floor"): each is a
 * user-JWT request to Bantu (A) against the same request to a bare Fastify HTTPS server on
 * the same certificate and the same PostgreSQL doing only the unavoidable part of the work
 * (B, bench/lib/files-floor.ts): verify the JWT with jose against Bantu's published keys,
 * then one query (reads) or an fsynced file and one insert (creates).
 *
 * - files/get-metadata: GET /v1/files/{id} of one of the user's files.
 * - files/create-1kib: multipart POST /v1/files of 1 KiB, a new name and new content each.
 * - files/list: GET /v1/files?path=&limit=50 in a folder of 10,000 files.
 *
 * The client is the worker-thread load generator (bench/lib/http-load.ts), 16 in flight on
 * 16 keep-alive connections (as the issue measured). Each measurement checks the first
 * answer of each side: the same JSON for the reads (same rows), the same shape for creates.
 * The backup worker is off: its copy of each new file is measured by backup/upload-throughput.
 * Both servers live in this process's main thread, so the CPU each side used per request is
 * read from /proc around every measurement and reported as the pair's notes: the main thread
 * (the server's JavaScript, TLS, pg), the other threads but the load client's (libuv's pool,
 * which does the file system calls, and V8's helper threads, which also collect some of the
 * client's garbage: compare them between sides, not alone), and the embedded PostgreSQL.
 */
const CONCURRENCY = 16;
const GETS = Number(process.env.BENCH_FILES_GETS ?? 8_000);
const LISTS = Number(process.env.BENCH_FILES_LISTS ?? 2_000);
const CREATES = Number(process.env.BENCH_FILES_CREATES ?? 800);
const LIST_FOLDER_FILES = Number(process.env.BENCH_FILES_LIST_FOLDER ?? 10_000);
const LIST_FOLDER = '/bench-list';
const CREATE_FOLDER = '/bench-create';
const FLOOR_POOL = 10;
/** Floor only: verify the token's signature on every request instead of once per token (Bantu verifies once). */
const VERIFY_EVERY_REQUEST = process.env.BENCH_FLOOR_VERIFY_EVERY === '1';

interface Ctx {
  bantu: TestServer;
  load: LoadGenerator;
  /** The load generator's thread, left out of the CPU figures. */
  clientThread: Set<number>;
  token: string;
  userId: string;
  pool: pg.Pool;
  floor: FastifyInstance;
  floorOrigin: string;
  cpu: { a: CpuSplit[]; b: CpuSplit[] };
}

async function setup(): Promise<Ctx> {
  const bantu = await startServer({ BANTU_LOG_LEVEL: 'silent', BANTU_BACKUP_WORKER: 'off' });
  const opened: Array<() => Promise<unknown>> = [() => bantu.close()];
  try {
    const registered = await bantu.request('POST', '/v1/auth/register', {
      basic: bantu.keys.test.application_key,
      json: { email: 'bench@example.com', password: 'benchmark password 1', name: 'Bench' },
    });
    if (registered.status !== 201) throw new Error(`register: ${registered.status} ${registered.text}`);
    const jwks = await bantu.request('GET', '/.well-known/jwks.json');
    if (jwks.status !== 200) throw new Error(`jwks: ${jwks.status}`);
    const [cert, key] = await Promise.all([
      fs.readFile(path.join(bantu.dataDir, 'tls', 'cert.pem'), 'utf8'),
      fs.readFile(path.join(bantu.dataDir, 'tls', 'key.pem'), 'utf8'),
    ]);
    // As many connections as Bantu's own pool per environment (adapters/db/pg.ts: 10), not
    // one per request in flight: on 2 cores, 16 backends ran the list select alone at about
    // 1,000/s where 10 ran it at about 1,700/s, and the floor should not pay for a pool size.
    const pool = new pg.Pool({ connectionString: bantu.app.databases.environmentUrls.test, max: FLOOR_POOL });
    // An idle connection that PostgreSQL drops (it stops at teardown before every socket has
    // closed) must not crash the run; a query that fails still fails its request, and the run.
    pool.on('error', (error) => {
      if (!pool.ending) console.error(`  floor pool: an idle connection failed: ${error.message}`);
    });
    opened.unshift(() => pool.end());
    await createFloorTable(pool);
    const floor = await startFilesFloor({
      tls: { cert, key },
      pool,
      jwks: jwks.json,
      issuer: bantu.url,
      dir: path.join(bantu.dataDir, 'bench-floor'),
      verifyEveryRequest: VERIFY_EVERY_REQUEST,
    });
    opened.unshift(() => floor.app.close());
    const load = await startLoad({ ca: cert });
    const clientThread = await load.threadId();
    return {
      bantu,
      load,
      clientThread: new Set(clientThread === undefined ? [] : [clientThread]),
      token: registered.json.access_token,
      userId: registered.json.user.id,
      pool,
      floor: floor.app,
      floorOrigin: floor.origin,
      cpu: { a: [], b: [] },
    };
  } catch (error) {
    for (const close of opened) await close();
    throw error;
  }
}

async function teardown(ctx: Ctx): Promise<void> {
  await ctx.load.close();
  await ctx.floor.close();
  // Before Bantu stops its PostgreSQL: a connection the server drops while idle in the pool is an unhandled error.
  await ctx.pool.end();
  await ctx.bantu.close();
}

/**
 * One measurement on one side: `count` requests of `run` against that side's origin with the
 * user's token, 16 in flight; records the CPU it took, checks the first answer; requests/s.
 */
async function measure(ctx: Ctx, side: 'a' | 'b', run: Omit<LoadRun, 'origin' | 'concurrency'>, check: (answer: unknown) => void): Promise<number> {
  const origin = side === 'a' ? ctx.bantu.url : ctx.floorOrigin;
  const cpu = cpuSince(ctx.clientThread);
  const { elapsedMs, sample } = await ctx.load.run({
    ...run,
    origin,
    concurrency: CONCURRENCY,
    headers: { authorization: `Bearer ${ctx.token}`, ...run.headers },
  });
  const used = cpu();
  ctx.cpu[side].push({ main: used.main / run.count, threads: used.threads / run.count, postgres: used.postgres / run.count });
  try {
    check(JSON.parse(sample));
  } catch (error) {
    throw new Error(`${side === 'a' ? 'bantu' : 'floor'} answered what it should not (${run.method ?? 'GET'} ${run.path}): ${sample.slice(0, 500)}`, { cause: error });
  }
  return perSecond(run.count, elapsedMs);
}

/** Notes: the median CPU milliseconds per request of each side, by where it was spent. */
function cpuNotes(ctx: Ctx, per: string): Record<string, number> {
  const notes: Record<string, number> = {};
  for (const side of ['a', 'b'] as const) {
    const label = side === 'a' ? 'bantu' : 'floor';
    const rounds = ctx.cpu[side];
    notes[`${label} main-thread CPU ms/${per}`] = median(rounds.map((r) => r.main));
    notes[`${label} other threads (pool, V8 helpers) CPU ms/${per}`] = median(rounds.map((r) => r.threads));
    notes[`${label} PostgreSQL CPU ms/${per}`] = median(rounds.map((r) => r.postgres));
    notes[`${label} total CPU ms/${per}`] = median(rounds.map((r) => r.main + r.threads + r.postgres));
  }
  return notes;
}

/** The File object's fields and what type each has, to compare the shape of two answers. */
function shapeOf(file: Record<string, unknown>): Record<string, string> {
  return Object.fromEntries(Object.entries(file).map(([key, value]) => [key, value === null ? 'null' : typeof value]));
}

// A multipart body of one `file` part with 1,024 bytes of content: `{n}` (12 digits, a new
// number each request, see LoadRun.numbered) and 1,012 random characters.
const BOUNDARY = 'bantubenchboundary7d3f';
const CREATE_CONTENT = `{n}${randomBytes(759).toString('base64url')}`;
const CREATE_BODY =
  `--${BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="c.bin"\r\nContent-Type: application/octet-stream\r\n\r\n` +
  `${CREATE_CONTENT}\r\n--${BOUNDARY}--\r\n`;

interface GetCtx extends Ctx {
  /** GET /v1/files/{id}'s answer, as Bantu gave it in setup. */
  file: Record<string, unknown>;
}

interface CreateCtx extends Ctx {
  /** The shape of a File object (fields and types), from a create Bantu answered in setup. */
  shape: Record<string, string>;
}

interface ListCtx extends Ctx {
  /** The first page of the folder, as Bantu gave it in setup. */
  page: { data: unknown[]; next_cursor: string | null };
  /** How long setup took to create the folder's files through the API. */
  seedSeconds: number;
}

export const pairs: BenchPair[] = [
  definePair<GetCtx>({
    name: 'files/get-metadata',
    description:
      `GET /v1/files/{id} with a user JWT over HTTPS, ${CONCURRENCY} in flight, ${GETS} per measurement, vs the same requests to a bare Fastify HTTPS route ` +
      `(same certificate) that verifies the JWT with jose (${VERIFY_EVERY_REQUEST ? 'on every request' : 'once per token, as Bantu does'}) and runs the same select ` +
      'of the file row by id, tenant and owner on the same PostgreSQL (one statement), answering the same JSON through the same schema',
    labels: { a: 'bantu get', b: 'bare https + jwt + 1 select' },
    unit: 'req/s',
    higherIsBetter: true,
    target: { ratio: 0.6, description: "reading a file's metadata keeps at least 60% of the rate of a bare route verifying the same JWT and running the one select" },
    rounds: 5,
    warmup: 1,
    async setup() {
      const ctx = await setup();
      try {
        const created = await ctx.bantu.request('POST', '/v1/files?name=meta.bin', {
          auth: ctx.token,
          body: Buffer.alloc(1024, 1),
          headers: { 'content-type': 'application/octet-stream' },
        });
        if (created.status !== 201) throw new Error(`create: ${created.status} ${created.text}`);
        return { ...ctx, file: created.json };
      } catch (error) {
        await teardown(ctx);
        throw error;
      }
    },
    a: (ctx) => measure(ctx, 'a', { path: `/v1/files/${ctx.file.id}`, count: GETS }, (answer) => assert.deepEqual(answer, ctx.file)),
    b: (ctx) => measure(ctx, 'b', { path: `/v1/files/${ctx.file.id}`, count: GETS }, (answer) => assert.deepEqual(answer, ctx.file)),
    notes: (ctx) => cpuNotes(ctx, 'request'),
    teardown,
  }),
  definePair<CreateCtx>({
    name: 'files/create-1kib',
    description:
      `multipart POST /v1/files of 1 KiB (a new name and new content each) with a user JWT over HTTPS, ${CONCURRENCY} in flight, ${CREATES} per measurement, ` +
      'vs the same requests to a bare Fastify HTTPS route (same certificate) that verifies the JWT, parses the multipart with @fastify/multipart, writes ' +
      'the part to a temp file with fsync (hashing it), renames it, fsyncs the folder and inserts one row (one statement) into a table of its own on the same ' +
      'PostgreSQL, answering a File object; notes give the CPU per create of each side (main thread, other threads, PostgreSQL)',
    labels: { a: 'bantu creates', b: 'bare https + fsync + 1 insert' },
    unit: 'ops/s',
    higherIsBetter: true,
    target: { ratio: 0.7, description: 'a 1 KiB create keeps at least 70% of the rate of a bare route doing the fsynced write and the one insert' },
    rounds: 5,
    warmup: 1,
    async setup() {
      const ctx = await setup();
      try {
        const created = await ctx.bantu.request('POST', `/v1/files?path=${CREATE_FOLDER}&name=shape.bin`, {
          auth: ctx.token,
          body: CREATE_BODY.replaceAll('{n}', '0'.repeat(12)),
          headers: { 'content-type': `multipart/form-data; boundary=${BOUNDARY}` },
        });
        if (created.status !== 201) throw new Error(`create: ${created.status} ${created.text}`);
        return { ...ctx, shape: shapeOf(created.json) };
      } catch (error) {
        await teardown(ctx);
        throw error;
      }
    },
    a: (ctx) => create(ctx, 'a'),
    b: (ctx) => create(ctx, 'b'),
    notes: (ctx) => cpuNotes(ctx, 'create'),
    teardown,
  }),
  definePair<ListCtx>({
    name: 'files/list',
    description:
      `GET /v1/files?path=${LIST_FOLDER}&limit=50 in a folder of ${LIST_FOLDER_FILES} files with a user JWT over HTTPS, ${CONCURRENCY} in flight, ${LISTS} per ` +
      'measurement, vs the same requests to a bare Fastify HTTPS route (same certificate) that verifies the JWT and runs the select Bantu runs (files.repo.ts ' +
      'listFiles: tenant, owner, folder, newest first, limit 51) on the same PostgreSQL (one statement), answering the same page through the same schema',
    labels: { a: 'bantu list', b: 'bare https + jwt + 1 select' },
    unit: 'req/s',
    higherIsBetter: true,
    target: { ratio: 0.6, description: 'listing a page of 50 keeps at least 60% of the rate of a bare route verifying the same JWT and running the same select' },
    rounds: 5,
    warmup: 1,
    async setup() {
      const ctx = await setup();
      try {
        // Through the API, 16 in flight: the rows are Bantu's own, as its creates leave them.
        const seeded = await ctx.load.run({
          origin: ctx.bantu.url,
          path: `/v1/files?path=${LIST_FOLDER}&name=l-{n}.bin`,
          method: 'POST',
          headers: { authorization: `Bearer ${ctx.token}`, 'content-type': 'application/octet-stream' },
          body: 'x',
          count: LIST_FOLDER_FILES,
          concurrency: CONCURRENCY,
          numbered: true,
          expectStatus: 201,
        });
        const page = await ctx.bantu.request('GET', `/v1/files?path=${LIST_FOLDER}&limit=50`, { auth: ctx.token });
        if (page.status !== 200 || page.json.data.length !== 50 || !page.json.next_cursor) throw new Error(`list: ${page.status} ${page.text.slice(0, 300)}`);
        return { ...ctx, page: page.json, seedSeconds: seeded.elapsedMs / 1000 };
      } catch (error) {
        await teardown(ctx);
        throw error;
      }
    },
    a: (ctx) => measure(ctx, 'a', { path: `/v1/files?path=${LIST_FOLDER}&limit=50`, count: LISTS }, (answer) => assert.deepEqual(answer, ctx.page)),
    b: (ctx) => measure(ctx, 'b', { path: `/v1/files?path=${LIST_FOLDER}&limit=50`, count: LISTS }, (answer) => assert.deepEqual(answer, ctx.page)),
    notes: (ctx) => ({ ...cpuNotes(ctx, 'request'), [`setup: seconds to create the ${LIST_FOLDER_FILES} files (raw 1-byte POSTs, ${CONCURRENCY} in flight)`]: ctx.seedSeconds }),
    teardown,
  }),
];

/** CREATES multipart creates against one side; each answer's first is checked to be a new 1 KiB File object of the user's. */
function create(ctx: CreateCtx, side: 'a' | 'b'): Promise<number> {
  return measure(
    ctx,
    side,
    {
      path: `/v1/files?path=${CREATE_FOLDER}&name=c-{n}.bin`,
      method: 'POST',
      headers: { 'content-type': `multipart/form-data; boundary=${BOUNDARY}` },
      body: CREATE_BODY,
      count: CREATES,
      numbered: true,
      expectStatus: 201,
    },
    (answer) => {
      const file = answer as Record<string, unknown>;
      assert.deepEqual(shapeOf(file), ctx.shape);
      assert.equal(file.size, 1024);
      assert.equal(file.path, CREATE_FOLDER);
      assert.match(String(file.name), /^c-\d{12}\.bin$/);
      assert.equal(file.owner_id, ctx.userId);
      assert.equal(file.version, 1);
      assert.equal(file.content_type, 'application/octet-stream');
      assert.match(String(file.sha256), /^[0-9a-f]{64}$/);
    },
  );
}
