import fs from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { hash, verify } from '@node-rs/argon2';
import Fastify, { type FastifyInstance } from 'fastify';
import pg from 'pg';
import { ARGON2_OPTIONS } from '../src/services/identity/domain/passwords.ts';
import { User } from '../src/services/identity/http/identity.schemas.ts';
import { startServer, type TestServer } from '../test/helpers/server.ts';
import { type BenchPair, definePair, median, perSecond, runConcurrent } from './harness.ts';
import { type LoadGenerator, startLoad } from './lib/http-load.ts';
import { type CpuSplit, cpuSince, machineBusyMs } from './lib/proc-cpu.ts';

/**
 * Identity's two hot paths, each against the floor it cannot beat:
 *
 * - identity/login-floor: POST /v1/auth/login over HTTPS (key check, throttle check, user
 *   lookup, argon2id verify, session insert, audit entry, EdDSA signature) against the
 *   simplest server doing the unavoidable part of a login: a bare Fastify HTTPS route on the
 *   same certificate that runs a trivial query (`select 1`) on the same PostgreSQL, the same
 *   argon2id verification (same ARGON2_OPTIONS, same password), a second trivial query, and
 *   answers a small JSON. Same load client, same number in flight, same count. This is the
 *   login pair with a target: what it measures is what Bantu's own code adds. Its notes give
 *   each side's CPU per login (main thread, argon2id's threads, PostgreSQL) and how busy the
 *   machine was: both sides keep the 2 cores busy, so the ratio follows the CPU ratio.
 * - identity/login: the same logins against a bare loop of the argon2id verification
 *   in-process. Information only, no target: on this 2-core machine even the floor above
 *   stays at about 0.83 of that loop (HTTPS and two queries alone cost that much), so a
 *   target on it judged costs Bantu cannot remove. It still shows what argon2id alone allows.
 * - identity/users-me: GET /v1/users/me with a user access token (JWT verification, a
 *   tenant-bound read of the user) against a bare Fastify HTTPS route answering the same
 *   JSON with the same response schema.
 *
 * The HTTP client is the worker-thread load generator (bench/lib/http-load.ts).
 */
// About 3 s per side at ~80 logins/s: shorter measurements swung the ratio by ±0.1 between rounds.
const LOGINS = Number(process.env.BENCH_LOGINS ?? 240);
const LOGIN_CONCURRENCY = Number(process.env.BENCH_LOGIN_CONCURRENCY ?? 4);
const ME_REQUESTS = Number(process.env.BENCH_ME_REQUESTS ?? 20_000);
const ME_CONCURRENCY = 32;
const PASSWORD = 'benchmark password 1';

interface Ctx {
  bantu: TestServer;
  load: LoadGenerator;
  appKey: string;
  accessToken: string;
  passwordHash: string;
  /** Bantu's certificate and key, for the bare servers. */
  tls: { cert: string; key: string };
  bare: FastifyInstance;
  bareOrigin: string;
}

async function setup(): Promise<Ctx> {
  const bantu = await startServer({ BANTU_LOG_LEVEL: 'silent' });
  try {
    const appKey = bantu.keys.test.application_key;
    const registered = await bantu.request('POST', '/v1/auth/register', { basic: appKey, json: { email: 'bench@example.com', password: PASSWORD, name: 'Bench' } });
    if (registered.status !== 201) throw new Error(`register: ${registered.status} ${registered.text}`);
    const [cert, key] = await Promise.all([
      fs.readFile(path.join(bantu.dataDir, 'tls', 'cert.pem'), 'utf8'),
      fs.readFile(path.join(bantu.dataDir, 'tls', 'key.pem'), 'utf8'),
    ]);
    // The bare side answers exactly what /v1/users/me answers, through the same schema.
    const body = registered.json.user;
    const bare = Fastify({ https: { cert, key } }) as unknown as FastifyInstance;
    bare.get('/v1/users/me', { schema: { response: { 200: User } } }, async () => body);
    await bare.listen({ host: '127.0.0.1', port: 0 });
    return {
      bantu,
      load: await startLoad({ ca: cert }),
      appKey,
      accessToken: registered.json.access_token,
      passwordHash: await hash(PASSWORD, ARGON2_OPTIONS),
      tls: { cert, key },
      bare,
      bareOrigin: `https://127.0.0.1:${(bare.server.address() as AddressInfo).port}`,
    };
  } catch (error) {
    await bantu.close();
    throw error;
  }
}

async function teardown(ctx: Ctx): Promise<void> {
  await ctx.load.close();
  await ctx.bare.close();
  await ctx.bantu.close();
}

interface FloorCtx extends Ctx {
  /** The floor's own connections to Bantu's PostgreSQL, opened once (a login does not connect). */
  pool: pg.Pool;
  floor: FastifyInstance;
  floorOrigin: string;
  /** The load generator's thread, left out of the CPU figures. */
  loadThread: Set<number>;
  /** CPU microseconds per login of each side's rounds, and the machine's busy cores (% of one core). */
  cpu: { a: Array<CpuSplit & { machine: number }>; b: Array<CpuSplit & { machine: number }> };
}

/** Everything `setup` starts, plus the login floor: a pg Pool and a bare Fastify HTTPS server. */
async function setupFloor(): Promise<FloorCtx> {
  const ctx = await setup();
  // The test application key logs in to the `test` environment: query the database Bantu's login uses.
  // One connection per login in flight, so no request waits for the pool.
  const pool = new pg.Pool({ connectionString: ctx.bantu.app.databases.environmentUrls.test, max: LOGIN_CONCURRENCY });
  const floor = Fastify({ https: ctx.tls }) as unknown as FastifyInstance;
  try {
    // The unavoidable part of a login and nothing else: a read before the verification (the
    // user), the same argon2id verification of the password sent, a write after it (the
    // session), each reduced to a trivial query. A wrong password answers 500, which fails the run.
    floor.post('/v1/auth/login', async (request) => {
      await pool.query('select 1');
      if (!(await verify(ctx.passwordHash, (request.body as { password: string }).password))) throw new Error('verify failed');
      await pool.query('select 1');
      return { ok: true };
    });
    await floor.listen({ host: '127.0.0.1', port: 0 });
    const loadThread = new Set<number>();
    const tid = await ctx.load.threadId();
    if (tid !== undefined) loadThread.add(tid);
    return { ...ctx, pool, floor, floorOrigin: `https://127.0.0.1:${(floor.server.address() as AddressInfo).port}`, loadThread, cpu: { a: [], b: [] } };
  } catch (error) {
    await floor.close();
    await pool.end();
    await teardown(ctx);
    throw error;
  }
}

async function teardownFloor(ctx: FloorCtx): Promise<void> {
  await ctx.floor.close();
  // Before Bantu stops its PostgreSQL: a connection the server drops while idle in the pool is an unhandled error.
  await ctx.pool.end();
  await teardown(ctx);
}

/** LOGINS logins with LOGIN_CONCURRENCY in flight against `origin`, the same requests for Bantu and the floor; logins/s. */
async function loginRate(ctx: Ctx, origin: string): Promise<number> {
  const { elapsedMs } = await ctx.load.run({
    origin,
    path: '/v1/auth/login',
    method: 'POST',
    headers: { authorization: `Bearer ${ctx.appKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ email: 'bench@example.com', password: PASSWORD }),
    count: LOGINS,
    concurrency: LOGIN_CONCURRENCY,
  });
  return perSecond(LOGINS, elapsedMs);
}

/** loginRate, noting the CPU each login cost: main thread, other threads (argon2id runs on libuv's pool), PostgreSQL, and the whole machine. */
async function measuredLoginRate(ctx: FloorCtx, origin: string, into: Array<CpuSplit & { machine: number }>): Promise<number> {
  const cpu = cpuSince(ctx.loadThread);
  const machineBefore = machineBusyMs();
  const started = performance.now();
  const rate = await loginRate(ctx, origin);
  const elapsed = performance.now() - started;
  const split = cpu();
  const us = (ms: number) => Math.round((ms * 1000) / LOGINS);
  into.push({ main: us(split.main), threads: us(split.threads), postgres: us(split.postgres), machine: Math.round((100 * (machineBusyMs() - machineBefore)) / elapsed) });
  return rate;
}

export const pairs: BenchPair[] = [
  definePair<FloorCtx>({
    name: 'identity/login-floor',
    description:
      `POST /v1/auth/login over HTTPS, ${LOGIN_CONCURRENCY} in flight, ${LOGINS} logins per measurement, vs the same requests to a bare Fastify HTTPS route ` +
      '(same certificate) doing select 1, the same argon2id verification, select 1 on the same PostgreSQL',
    labels: { a: 'bantu login', b: 'bare https + 2 queries + argon2id' },
    unit: 'ops/s',
    higherIsBetter: true,
    target: { ratio: 0.9, description: 'a login keeps at least 90% of the rate of a bare HTTPS route doing the same argon2id verification between two trivial queries' },
    rounds: 5,
    warmup: 1,
    setup: setupFloor,
    a: (ctx) => measuredLoginRate(ctx, ctx.bantu.url, ctx.cpu.a),
    b: (ctx) => measuredLoginRate(ctx, ctx.floorOrigin, ctx.cpu.b),
    notes: (ctx) => {
      const out: Record<string, number> = {};
      for (const side of ['a', 'b'] as const) {
        const rounds = ctx.cpu[side];
        out[`${side.toUpperCase()} CPU us per login: main thread`] = median(rounds.map((c) => c.main));
        out[`${side.toUpperCase()} CPU us per login: other threads (argon2id)`] = median(rounds.map((c) => c.threads));
        out[`${side.toUpperCase()} CPU us per login: PostgreSQL`] = median(rounds.map((c) => c.postgres));
        out[`${side.toUpperCase()} machine busy, % of one core (2 cores = 200%)`] = median(rounds.map((c) => c.machine));
      }
      return out;
    },
    teardown: teardownFloor,
  }),
  definePair<Ctx>({
    name: 'identity/login',
    description:
      `POST /v1/auth/login over HTTPS, ${LOGIN_CONCURRENCY} in flight, ${LOGINS} logins per measurement, vs the same count of bare argon2id verifications. ` +
      'Information only, no target: the target is on identity/login-floor, because on 2 cores even that floor (HTTPS and two trivial queries around the ' +
      'same verification) measured about 0.83 of this bare loop',
    labels: { a: 'bantu login', b: 'bare argon2id verify' },
    unit: 'ops/s',
    higherIsBetter: true,
    rounds: 5,
    warmup: 1,
    setup,
    a: (ctx) => loginRate(ctx, ctx.bantu.url),
    async b(ctx) {
      const elapsedMs = await runConcurrent(LOGINS, LOGIN_CONCURRENCY, async () => {
        if (!(await verify(ctx.passwordHash, PASSWORD))) throw new Error('verify failed');
      });
      return perSecond(LOGINS, elapsedMs);
    },
    teardown,
  }),
  definePair<Ctx>({
    name: 'identity/users-me',
    description: `GET /v1/users/me with a user access token over HTTPS, ${ME_CONCURRENCY} in flight, ${ME_REQUESTS} requests per measurement, vs a bare Fastify route with the same JSON`,
    labels: { a: 'bantu /v1/users/me', b: 'bare fastify' },
    unit: 'req/s',
    higherIsBetter: true,
    target: { ratio: 0.5, description: 'JWT verification and the user read keep at least half of bare Fastify\'s rate' },
    rounds: 5,
    warmup: 1,
    setup,
    async a(ctx) {
      const { elapsedMs } = await ctx.load.run({
        origin: ctx.bantu.url,
        path: '/v1/users/me',
        headers: { authorization: `Bearer ${ctx.accessToken}` },
        count: ME_REQUESTS,
        concurrency: ME_CONCURRENCY,
      });
      return perSecond(ME_REQUESTS, elapsedMs);
    },
    async b(ctx) {
      const { elapsedMs } = await ctx.load.run({ origin: ctx.bareOrigin, path: '/v1/users/me', count: ME_REQUESTS, concurrency: ME_CONCURRENCY });
      return perSecond(ME_REQUESTS, elapsedMs);
    },
    teardown,
  }),
];
