import fs from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Type } from '@sinclair/typebox';
import Fastify, { type FastifyInstance } from 'fastify';
import { startServer, type TestServer } from '../test/helpers/server.ts';
import { type BenchPair, definePair, perSecond } from './harness.ts';
import { type LoadGenerator, startLoad } from './lib/http-load.ts';

/**
 * What the gateway costs per request: Bantu's /healthz (helmet headers, CORS, request ids,
 * the auth hook, the metrics histogram, problem handlers) against a bare Fastify HTTPS
 * route on the same certificate answering the same JSON with the same response schema.
 * Both servers live in this process; the client is a worker thread (bench/lib/http-load.ts)
 * with 32 keep-alive connections and 32 requests in flight, a fixed count per measurement.
 * Both loggers are silent (Bantu at BANTU_LOG_LEVEL=silent, Fastify without a logger):
 * the pair measures the request pipeline, not log I/O.
 */
const REQUESTS = Number(process.env.BENCH_GATEWAY_REQUESTS ?? 30_000);
const CONCURRENCY = 32;

interface Ctx {
  bantu: TestServer;
  bare: FastifyInstance;
  bareOrigin: string;
  load: LoadGenerator;
}

async function bareFastify(cert: string, key: string): Promise<{ app: FastifyInstance; origin: string }> {
  const app = Fastify({ https: { cert, key } }) as unknown as FastifyInstance;
  app.get('/healthz', { schema: { response: { 200: Type.Object({ status: Type.Literal('ok') }) } } }, async () => ({ status: 'ok' as const }));
  await app.listen({ host: '127.0.0.1', port: 0 });
  return { app, origin: `https://127.0.0.1:${(app.server.address() as AddressInfo).port}` };
}

const rate = async (load: LoadGenerator, origin: string) => {
  const { elapsedMs } = await load.run({ origin, path: '/healthz', count: REQUESTS, concurrency: CONCURRENCY });
  return perSecond(REQUESTS, elapsedMs);
};

export const pairs: BenchPair[] = [
  definePair<Ctx>({
    name: 'gateway/healthz',
    description: `GET /healthz over HTTPS, ${CONCURRENCY} in flight on keep-alive connections, ${REQUESTS} requests per measurement`,
    labels: { a: 'bantu gateway', b: 'bare fastify' },
    unit: 'req/s',
    higherIsBetter: true,
    target: { ratio: 0.5, description: "the gateway's pipeline (security headers, request ids, auth hook, metrics) keeps at least half of bare Fastify's rate" },
    rounds: 7,
    warmup: 1,
    async setup() {
      const bantu = await startServer({ BANTU_LOG_LEVEL: 'silent' });
      try {
        const [cert, key] = await Promise.all([
          fs.readFile(path.join(bantu.dataDir, 'tls', 'cert.pem'), 'utf8'),
          fs.readFile(path.join(bantu.dataDir, 'tls', 'key.pem'), 'utf8'),
        ]);
        const bare = await bareFastify(cert, key);
        const load = await startLoad({ ca: cert });
        return { bantu, bare: bare.app, bareOrigin: bare.origin, load };
      } catch (error) {
        await bantu.close();
        throw error;
      }
    },
    a: (ctx) => rate(ctx.load, ctx.bantu.url),
    b: (ctx) => rate(ctx.load, ctx.bareOrigin),
    async teardown(ctx) {
      await ctx.load.close();
      await ctx.bare.close();
      await ctx.bantu.close();
    },
  }),
];
