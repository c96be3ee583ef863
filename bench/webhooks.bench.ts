import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { sql } from 'kysely';
import { Agent, request } from 'undici';
import { signedHeaders } from '../src/services/webhooks/domain/signing.ts';
import { startServer, type TestServer } from '../test/helpers/server.ts';
import { type Receiver, startReceiver } from '../test/helpers/webhook-receiver.ts';
import { type BenchPair, definePair, median, perSecond, runConcurrent } from './harness.ts';
import { type CpuSplit, cpuSince } from './lib/proc-cpu.ts';

/**
 * Webhook deliveries (issue 18), to receivers on loopback (BANTU_WEBHOOK_ALLOWED_NETWORKS).
 *
 * - throughput: EVENTS file events committed in one transaction (bus.append, as the files
 *   service writes them), timed from the commit to the receiver's 200 for the last of them (A,
 *   deliveries/s), against a bare loop that signs and POSTs the same bodies with undici, as many
 *   in flight as Bantu allows one endpoint (B). Target >= 0.6.
 * - latency: 10 endpoints; events committed one at a time at a steady rate; A is the p99 of
 *   commit-to-arrival over every delivery, B the p99 of the bare loop's POST-to-arrival for the
 *   same bodies to the same receivers. Target: A <= 100 ms.
 */
const EVENTS = Number(process.env.BENCH_WEBHOOK_EVENTS ?? 1000);
const LATENCY_EVENTS = Number(process.env.BENCH_WEBHOOK_LATENCY_EVENTS ?? 40);
const CONCURRENCY = 4; // BANTU_WEBHOOK_CONCURRENCY's default

interface Ctx {
  server: TestServer;
  receivers: Receiver[];
  secret: string;
  agent: Agent;
  tenantId: string;
  /** Per A round of the throughput pair, ms from the commit: every delivery row written, the first arrival, the last. */
  timeline: { rows: number[]; first: number[]; last: number[] };
  /** Per round, the share of the time this process's main thread was busy (event loop utilization), A and B. */
  busy: { a: number[]; b: number[] };
  /** Per round, CPU microseconds per delivery (main thread, other threads, PostgreSQL), A and B. */
  cpu: { a: CpuSplit[]; b: CpuSplit[] };
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

async function setup(endpoints: number): Promise<Ctx> {
  // No backup worker: these events name blobs that were never stored (see fileEvent), and
  // copying files is the backup pairs' measure, not this one's.
  const server = await startServer({ BANTU_WEBHOOK_ALLOWED_NETWORKS: '127.0.0.0/8', BANTU_BACKUP_WORKER: 'off' });
  const receivers: Receiver[] = [];
  let secret = '';
  for (let i = 0; i < endpoints; i++) {
    const receiver = await startReceiver(() => 200);
    receivers.push(receiver);
    const created = await server.request('POST', '/v1/webhooks', { auth: server.keys.test.account_key, json: { url: receiver.url, events: ['File_create'] } });
    if (created.status !== 201) throw new Error(`webhook registration failed: ${created.text}`);
    secret = created.json.secret;
  }
  // The tenant of the default keys, from a file event's own record: create one file and read it back.
  const file = await server.request('POST', '/v1/files?name=seed.txt', { auth: server.keys.test.account_key, body: 'seed', headers: { 'content-type': 'text/plain' } });
  const tenantId = (await server.app.bus.readSince('test', null, 1))?.[0]?.tenant_id;
  if (file.status !== 201 || !tenantId) throw new Error('no seed event');
  await untilReceived(receivers, 1);
  for (const receiver of receivers) receiver.received.length = 0;
  return { server, receivers, secret, agent: new Agent({ connections: 64 }), tenantId, timeline: { rows: [], first: [], last: [] }, busy: { a: [], b: [] }, cpu: { a: [], b: [] } };
}

/** Commits `count` File_create events in one transaction, as the files service would; resolves at the commit with their ids. */
async function commitEvents(ctx: Ctx, count: number): Promise<string[]> {
  const { server } = ctx;
  return server.app.databases.environments.test.transaction().execute(async (trx) => {
    const ids: string[] = [];
    for (let i = 0; i < count; i++) ids.push((await server.app.bus.append(trx, 'test', fileEvent(ctx.tenantId))).event_id);
    return ids;
  });
}

function fileEvent(tenantId: string) {
  const id = `fil_${randomBytes(8).toString('hex')}`;
  const now = new Date().toISOString();
  const file = { id, name: `${id}.txt`, path: '/', size: 4, content_type: 'text/plain', sha256: randomBytes(32).toString('hex'), version: 1, owner_id: null, created_at: now, updated_at: now };
  return { type: 'File_create', tenant_id: tenantId, actor: { type: 'key' as const, id: 'key_bench' }, owner_id: null, data: { file } };
}

/** CPU milliseconds over EVENTS deliveries, as microseconds per delivery (whole: the kernel counts 10 ms ticks). */
function perDelivery(split: CpuSplit): CpuSplit {
  const us = (ms: number) => Math.round((ms * 1000) / EVENTS);
  return { main: us(split.main), threads: us(split.threads), postgres: us(split.postgres) };
}

async function untilReceived(receivers: Receiver[], each: number, limitMs = 120_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (receivers.some((r) => r.received.length < each)) {
    if (Date.now() > deadline) throw new Error(`receivers got ${receivers.map((r) => r.received.length).join(',')} of ${each}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** The bare loop: sign and POST `bodies` to `url`, `concurrency` in flight. */
async function bareLoop(ctx: Ctx, url: string, bodies: string[], concurrency: number): Promise<number> {
  return runConcurrent(bodies.length, concurrency, async (i) => {
    const body = bodies[i] as string;
    const response = await request(url, {
      method: 'POST',
      dispatcher: ctx.agent,
      headers: { 'content-type': 'application/json', ...signedHeaders([ctx.secret], `evt_${i}`, Math.floor(Date.now() / 1000), body) },
      body,
    });
    await response.body.dump();
    if (response.statusCode !== 200) throw new Error(`receiver answered ${response.statusCode}`);
  });
}

const bodiesOf = (ctx: Ctx, n: number) => Array.from({ length: n }, () => JSON.stringify({ id: 'evt', type: 'File_create', occurred_at: new Date().toISOString(), environment: 'test', data: { file: fileEvent(ctx.tenantId).data.file, actor: { type: 'key', id: 'key_bench' } } }));

async function teardown(ctx: Ctx): Promise<void> {
  await ctx.agent.close();
  for (const receiver of ctx.receivers) await receiver.close();
  await ctx.server.close();
}

export const pairs: BenchPair[] = [
  definePair<Ctx>({
    name: 'webhooks/deliveries',
    description: `${EVENTS} file events committed at once to one endpoint: commit to the receiver's 200 for all`,
    labels: { a: 'bantu (commit to 200)', b: `sign + undici POST, ${CONCURRENCY} in flight` },
    unit: 'deliveries/s',
    higherIsBetter: true,
    target: { ratio: 0.6, description: 'deliveries keep 0.6 of a bare signing loop (issue 18)' },
    rounds: 4,
    warmup: 1,
    setup: () => setup(1),
    async a(ctx) {
      const [receiver] = ctx.receivers as [Receiver];
      const before = receiver.received.length;
      const ids = await commitEvents(ctx, EVENTS);
      const committed = performance.now();
      performance.mark('bench:window:start');
      const loop = performance.eventLoopUtilization();
      const cpu = cpuSince();
      const committedAt = Date.now();
      await untilReceived([receiver], before + EVENTS);
      const elapsed = performance.now() - committed;
      performance.mark('bench:window:end');
      ctx.busy.a.push(performance.eventLoopUtilization(loop).utilization);
      ctx.cpu.a.push(perDelivery(cpu()));
      const rows = await sql<{ last: Date }>`select max(created_at) as last from webhooks.delivery where event_id = any(${ids})`.execute(ctx.server.app.databases.environments.test);
      ctx.timeline.rows.push((rows.rows[0]?.last.getTime() ?? Number.NaN) - committedAt);
      ctx.timeline.first.push((receiver.received[before]?.at ?? Number.NaN) - committedAt);
      ctx.timeline.last.push((receiver.received.at(-1)?.at ?? Number.NaN) - committedAt);
      return perSecond(EVENTS, elapsed);
    },
    notes: (ctx) => ({
      'A ms from commit to every delivery row written (the consumer)': median(ctx.timeline.rows),
      'A ms from commit to the first arrival': median(ctx.timeline.first),
      'A ms from commit to the last arrival': median(ctx.timeline.last),
      // Sender, receiver and (in A) the consumer and the worker share one thread: both sides are bound by it.
      'A main thread busy, % of the time': Math.round(100 * median(ctx.busy.a)),
      'B main thread busy, % of the time': Math.round(100 * median(ctx.busy.b)),
      'A CPU us per delivery: main thread': median(ctx.cpu.a.map((c) => c.main)),
      'A CPU us per delivery: other threads': median(ctx.cpu.a.map((c) => c.threads)),
      'A CPU us per delivery: PostgreSQL': median(ctx.cpu.a.map((c) => c.postgres)),
      'B CPU us per delivery: main thread': median(ctx.cpu.b.map((c) => c.main)),
      'B CPU us per delivery: other threads': median(ctx.cpu.b.map((c) => c.threads)),
      'B CPU us per delivery: PostgreSQL': median(ctx.cpu.b.map((c) => c.postgres)),
    }),
    async b(ctx) {
      const [receiver] = ctx.receivers as [Receiver];
      const bodies = bodiesOf(ctx, EVENTS);
      const loop = performance.eventLoopUtilization();
      const cpu = cpuSince();
      performance.mark('bench:window:start');
      const rate = perSecond(EVENTS, await bareLoop(ctx, receiver.url, bodies, CONCURRENCY));
      performance.mark('bench:window:end');
      ctx.busy.b.push(performance.eventLoopUtilization(loop).utilization);
      ctx.cpu.b.push(perDelivery(cpu()));
      return rate;
    },
    teardown,
  }),

  definePair<Ctx>({
    name: 'webhooks/latency-10-endpoints',
    description: `${LATENCY_EVENTS} events one at a time (every 25 ms) to 10 endpoints: p99 of commit to arrival`,
    labels: { a: 'bantu p99 (commit to arrival)', b: 'bare POST p99 (send to arrival)' },
    unit: 'ms',
    higherIsBetter: false,
    target: { max: 100, description: 'event-to-delivery p99 with 10 endpoints at most 100 ms (issue 18)' },
    rounds: 4,
    warmup: 1,
    setup: () => setup(10),
    async a(ctx) {
      const starts = ctx.receivers.map((r) => r.received.length);
      const committedAt = new Map<string, number>();
      for (let i = 0; i < LATENCY_EVENTS; i++) {
        const [id] = await commitEvents(ctx, 1);
        // Wall clock on both sides: the receivers stamp arrivals with Date.now().
        committedAt.set(id as string, Date.now());
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      await untilReceived(ctx.receivers, Math.max(...starts) + LATENCY_EVENTS);
      const latencies: number[] = [];
      for (const [r, receiver] of ctx.receivers.entries()) {
        for (const entry of receiver.received.slice(starts[r])) {
          const at = committedAt.get(JSON.parse(entry.body).id);
          if (at === undefined) throw new Error('a delivery of an event this round did not commit');
          latencies.push(entry.at - at);
        }
      }
      if (latencies.length !== LATENCY_EVENTS * ctx.receivers.length) throw new Error(`got ${latencies.length} deliveries`);
      return percentile(latencies, 99);
    },
    async b(ctx) {
      const latencies: number[] = [];
      const bodies = bodiesOf(ctx, LATENCY_EVENTS);
      for (let i = 0; i < LATENCY_EVENTS; i++) {
        const sent = Date.now();
        const starts = ctx.receivers.map((r) => r.received.length);
        await Promise.all(ctx.receivers.map((receiver) => bareLoop(ctx, receiver.url, [bodies[i] as string], 1)));
        for (const [r, receiver] of ctx.receivers.entries()) latencies.push((receiver.received[starts[r] as number]?.at ?? Number.NaN) - sent);
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      return percentile(latencies, 99);
    },
    teardown,
  }),
];
