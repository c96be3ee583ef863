import fs from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { hash, verify } from '@node-rs/argon2';
import Fastify, { type FastifyInstance } from 'fastify';
import { ARGON2_OPTIONS } from '../src/services/identity/domain/passwords.ts';
import { User } from '../src/services/identity/http/identity.schemas.ts';
import { startServer, type TestServer } from '../test/helpers/server.ts';
import { type BenchPair, definePair, perSecond, runConcurrent } from './harness.ts';
import { type LoadGenerator, startLoad } from './lib/http-load.ts';

/**
 * Identity's two hot paths, each against the floor it cannot beat:
 *
 * - identity/login: POST /v1/auth/login over HTTPS (key check, throttle check, user lookup,
 *   argon2id verify, session insert, audit entry, EdDSA signature) against a bare loop of
 *   the same argon2id verification in-process, with the same number in flight. argon2id
 *   (19 MiB, t=2) dominates by design, so the login should keep most of the bare rate.
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

export const pairs: BenchPair[] = [
  definePair<Ctx>({
    name: 'identity/login',
    description: `POST /v1/auth/login over HTTPS, ${LOGIN_CONCURRENCY} in flight, ${LOGINS} logins per measurement, vs the same count of bare argon2id verifications`,
    labels: { a: 'bantu login', b: 'bare argon2id verify' },
    unit: 'ops/s',
    higherIsBetter: true,
    target: { ratio: 0.85, description: 'a login costs little more than its argon2id verification' },
    rounds: 5,
    warmup: 1,
    setup,
    async a(ctx) {
      const { elapsedMs } = await ctx.load.run({
        origin: ctx.bantu.url,
        path: '/v1/auth/login',
        method: 'POST',
        headers: { authorization: `Bearer ${ctx.appKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ email: 'bench@example.com', password: PASSWORD }),
        count: LOGINS,
        concurrency: LOGIN_CONCURRENCY,
      });
      return perSecond(LOGINS, elapsedMs);
    },
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
