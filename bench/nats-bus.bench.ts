import { randomBytes } from 'node:crypto';
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { sql } from 'kysely';
import pino from 'pino';
import { NatsBus } from '../src/adapters/bus/nats-bus.ts';
import { RELAY_CONSUMER, streamName } from '../src/adapters/bus/nats-relay.ts';
import { type Databases, dropDatabases, ENVIRONMENTS, migrate, openDatabases } from '../src/adapters/db/pg.ts';
import type { NewEvent } from '../src/core/events.ts';
import { migrationPlan } from '../src/platform/platform.ts';
import { type PrivateNats, startPrivateNats } from '../test/helpers/nats.ts';
import { startServer, type TestServer } from '../test/helpers/server.ts';
import { type BenchPair, definePair, median, perSecond, runConcurrent } from './harness.ts';

/**
 * The event bus on NATS JetStream (issue 15), on a nats-server of its own and the embedded
 * PostgreSQL of a test server (databases of its own, the bus's migrations only).
 *
 * A: events per second from commit to a work consumer's handler, through the NATS driver:
 * `WRITERS` writers each commit one event per transaction (the outbox), the relay publishes
 * them, a durable pull consumer hands them over (consumeBatch) and acknowledges them.
 * B: the same number of events of the same size published with ack straight to a JetStream
 * stream by the same number of publishers, and consumed (explicit acks) by a durable pull
 * consumer, with the same client library, on the same nats-server.
 * Each side's figure ends when its consumer has had the last event.
 *
 * bus/nats-commit-to-ack-floor runs the same A against a B that pays the same commits: each
 * writer commits the event's row (one insert, one transaction, into a plain table of the same
 * database) and then publishes it with ack to the raw stream, whose consumer acknowledges it.
 * That is the least any transport behind a committed write can do; A's distance from it is
 * what the outbox, the relay and the driver's consumer add. Information for now: issue 15's
 * target is on bus/nats-commit-to-ack, whose B commits nothing.
 */
const EVENTS = Number(process.env.BENCH_NATS_EVENTS ?? 3_000);
const WRITERS = Number(process.env.BENCH_NATS_WRITERS ?? 8);
const silent = pino({ level: 'silent' });
const actor = { type: 'system', id: 'bench' } as const;

interface Ctx {
  nats: PrivateNats;
  server: TestServer;
  databases: Databases;
  dbName: string;
  nc: NatsConnection;
  bus: NatsBus;
  handled: () => number;
  /** Per round of A, the rate of one part of its work alone (the commits; in the drain, the relay), to tell what bounds it. */
  commitRates: number[];
  raw: { publish: (i: number) => Promise<void>; consumed: () => number; start: () => Promise<void>; stop: () => void };
}

/** A: WRITERS writers commit EVENTS events, one per transaction, through the bus; events/s until the consumer had the last. */
async function commitToAck(ctx: Ctx): Promise<number> {
  const goal = ctx.handled() + EVENTS;
  const started = performance.now();
  const committing = await runConcurrent(EVENTS, WRITERS, async (i) => {
    await ctx.databases.environments.test.transaction().execute((trx) => ctx.bus.append(trx, 'test', event(i)));
  });
  ctx.commitRates.push(perSecond(EVENTS, committing));
  await until(() => ctx.handled() >= goal);
  return perSecond(EVENTS, performance.now() - started);
}

/** What bounds A in both commit-to-ack pairs: its commits alone. */
const commitsAlone = (ctx: Ctx) => ({ 'A commits alone, events/s (median of every round)': median(ctx.commitRates) });

/** The floor's table: the event's row, committed as A's outbox row is, without the bus. */
const FLOOR_TABLE = 'public.bench_floor_event';

/** B of the floor pair: each event's row committed, then published with ack to the raw stream; events/s until its consumer had the last. */
async function commitThenPublish(ctx: Ctx): Promise<number> {
  const db = ctx.databases.environments.test;
  const goal = ctx.raw.consumed() + EVENTS;
  const started = performance.now();
  await runConcurrent(EVENTS, WRITERS, async (i) => {
    await db.transaction().execute((trx) => sql`insert into ${sql.raw(FLOOR_TABLE)} (body) values (${JSON.stringify(event(i))}::jsonb)`.execute(trx));
    await ctx.raw.publish(i);
  });
  await until(() => ctx.raw.consumed() >= goal);
  return perSecond(EVENTS, performance.now() - started);
}

const event = (i: number): NewEvent => ({ type: 'File_update', tenant_id: 'ten_bench', actor, owner_id: 'usr_bench', data: { file: { id: `fil_${i % 64}`, name: `bench-${i % 64}.txt`, version: i } } });

async function until(condition: () => boolean, limitMs = 120_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('the consumer did not get every event in time');
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** B: a stream, publishers with ack, and a durable pull consumer acknowledging each message. */
async function rawJetStream(nc: NatsConnection, prefix: string): Promise<Ctx['raw']> {
  const jsm = await jetstreamManager(nc);
  const stream = `${prefix}_raw`;
  await jsm.streams.add({ name: stream, subjects: [`${prefix}.raw.>`] });
  await jsm.consumers.add(stream, { durable_name: 'raw', ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, max_ack_pending: 200 });
  const js = jetstream(nc);
  const consumer = await js.consumers.get(stream, 'raw');
  let consumed = 0;
  let messages: Awaited<ReturnType<typeof consumer.consume>> | undefined;
  const start = async () => {
    const running = await consumer.consume({ max_messages: 200 });
    messages = running;
    (async () => {
      for await (const message of running) {
        message.json();
        message.ack();
        consumed++;
      }
    })().catch(() => undefined);
  };
  await start();
  let n = 0;
  return {
    async publish(i: number) {
      const body = JSON.stringify({ event_id: `evt_${String(++n).padStart(12, '0')}`, environment: 'test', occurred_at: new Date().toISOString(), ...event(i) });
      await js.publish(`${prefix}.raw.File_update`, body, { msgID: `raw_${n}` });
    },
    consumed: () => consumed,
    start,
    stop: () => messages?.stop(),
  };
}

async function open(name: string): Promise<Ctx> {
  const nats = await startPrivateNats();
  const server = await startServer({ BANTU_BACKUP_WORKER: 'off' });
  const dbName = `bench_bus_${randomBytes(4).toString('hex')}`;
  const base = server.app.databases.controlUrl;
  const databases = await openDatabases(base, dbName);
  await Promise.all(ENVIRONMENTS.map((environment) => migrate(databases.environments[environment], migrationPlan([]).environment)));
  const nc = await connect({ servers: nats.url });
  const bus = new NatsBus(databases, nc, silent, {
    streams: { prefix: `b${name}`, replicas: 1, storage: 'file', maxAgeHours: 1 },
    durable: { maxDeliver: 20, ackWaitMs: 30_000 },
    relay: 'with-bus',
  });
  let handled = 0;
  bus.consumeBatch(name, async (events) => {
    handled += events.length;
  });
  await bus.start();
  const raw = await rawJetStream(nc, `raw${name}`);
  return { nats, server, databases, dbName, nc, bus, handled: () => handled, commitRates: [], raw };
}

async function close(ctx: Ctx): Promise<void> {
  ctx.raw?.stop();
  await ctx.bus?.close();
  await ctx.nc?.close();
  await ctx.databases?.close();
  if (ctx.server) await dropDatabases(ctx.server.app.databases.controlUrl, ctx.dbName).catch(() => undefined);
  await ctx.server?.close();
  await ctx.nats?.close();
}

export const pairs: BenchPair[] = [
  definePair<Ctx>({
    name: 'bus/nats-commit-to-ack',
    description: `${EVENTS} events, ${WRITERS} writers: commit to a JetStream work consumer through the outbox and the relay (A) vs raw JetStream publish-with-ack and consume (B)`,
    labels: { a: 'bantu NATS bus', b: 'raw JetStream' },
    unit: 'events/s',
    higherIsBetter: true,
    target: { ratio: 0.5, description: 'events go from commit to a consumer at half the rate of raw JetStream publish and consume (issue 15)' },
    rounds: 5,
    warmup: 1,
    setup: () => open('bench'),
    a: commitToAck,
    async b(ctx) {
      const goal = ctx.raw.consumed() + EVENTS;
      const started = performance.now();
      await runConcurrent(EVENTS, WRITERS, (i) => ctx.raw.publish(i));
      await until(() => ctx.raw.consumed() >= goal);
      return perSecond(EVENTS, performance.now() - started);
    },
    notes: commitsAlone,
    teardown: close,
  }),
  definePair<Ctx>({
    name: 'bus/nats-commit-to-ack-floor',
    description: `${EVENTS} events, ${WRITERS} writers: commit to a JetStream work consumer through the outbox and the relay (A) vs each event's row committed in a transaction of its own, then published with ack to raw JetStream and consumed (B)`,
    labels: { a: 'bantu NATS bus', b: 'commit, then raw JetStream' },
    unit: 'events/s',
    higherIsBetter: true,
    rounds: 5,
    warmup: 1,
    async setup() {
      const ctx = await open('floor');
      await sql`create table if not exists ${sql.raw(FLOOR_TABLE)} (id bigserial primary key, body jsonb not null)`.execute(ctx.databases.environments.test);
      return ctx;
    },
    a: commitToAck,
    b: commitThenPublish,
    notes: commitsAlone,
    teardown: close,
  }),
  definePair<Ctx>({
    name: 'bus/nats-drain',
    description: `a backlog of ${EVENTS} committed events relayed and consumed through the NATS driver once its relay and consumer start (A) vs the same count already in a raw JetStream stream, consumed with explicit acks (B)`,
    labels: { a: 'bantu NATS bus', b: 'raw JetStream' },
    unit: 'events/s',
    higherIsBetter: true,
    rounds: 5,
    warmup: 1,
    setup: () => open('drain'),
    notes: (ctx) => ({ 'A relay alone (outbox to stream), events/s (median of every round)': median(ctx.commitRates) }),
    async a(ctx) {
      // The backlog, while neither the relay nor the consumer runs (not timed).
      await Promise.all([ctx.bus.stopConsumer(RELAY_CONSUMER), ctx.bus.stopConsumer('drain')]);
      const goal = ctx.handled() + EVENTS;
      await runConcurrent(EVENTS, WRITERS, async (i) => {
        await ctx.databases.environments.test.transaction().execute((trx) => ctx.bus.append(trx, 'test', event(i)));
      });
      const jsm = await jetstreamManager(ctx.nc);
      const stream = streamName('bdrain', 'test');
      const inStream = (await jsm.streams.info(stream).catch(() => null))?.state.messages ?? 0;
      const started = performance.now();
      ctx.bus.startConsumer(RELAY_CONSUMER);
      ctx.bus.startConsumer('drain');
      // When the relay had published the backlog: its share of the drain (the notes).
      while (((await jsm.streams.info(stream).catch(() => null))?.state.messages ?? 0) < inStream + EVENTS) await new Promise((resolve) => setTimeout(resolve, 20));
      const relayedAt = performance.now();
      await until(() => ctx.handled() >= goal);
      const ended = performance.now();
      ctx.commitRates.push(perSecond(EVENTS, relayedAt - started));
      return perSecond(EVENTS, ended - started);
    },
    async b(ctx) {
      ctx.raw.stop();
      const goal = ctx.raw.consumed() + EVENTS;
      await runConcurrent(EVENTS, WRITERS, (i) => ctx.raw.publish(i));
      const started = performance.now();
      await ctx.raw.start();
      await until(() => ctx.raw.consumed() >= goal);
      return perSecond(EVENTS, performance.now() - started);
    },
    teardown: close,
  }),
];
