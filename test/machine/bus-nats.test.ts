import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import pino from 'pino';
import { type BusHarness, busContract } from '../../src/adapters/bus/bus.contract.ts';
import { busStartStopContract } from '../../src/adapters/bus/bus-start-stop.contract.ts';
import { NatsBus, type NatsBusOptions } from '../../src/adapters/bus/nats-bus.ts';
import { streamName } from '../../src/adapters/bus/nats-relay.ts';
import { type Databases, dropDatabases, ENVIRONMENTS, migrate, openDatabases } from '../../src/adapters/db/pg.ts';
import type { BusEvent } from '../../src/core/events.ts';
import { lockSubject } from '../../src/core/ports.ts';
import { migrationPlan } from '../../src/platform/platform.ts';
import { until } from '../helpers/files.ts';

/**
 * The EventBus contract on the NATS JetStream driver, against the machine's NATS
 * (NATS_URL, default 127.0.0.1:4222) and PostgreSQL (BANTU_TEST_DATABASE_URL). Each fixture
 * gets databases of its own and a NATS prefix of its own (streams removed at its close), and
 * relays from its bus's start.
 */
const silent = pino({ level: 'silent' });
const NATS_URL = process.env.NATS_URL ?? 'nats://127.0.0.1:4222';
const PG_URL = process.env.BANTU_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const RETRIES = { retryBaseMs: 20, retryMaxMs: 200, pollMs: 50 };
const busMigrations = migrationPlan([]).environment;
const filePrefix = `tbus${randomBytes(3).toString('hex')}`;

let nc: NatsConnection;
before(async () => {
  nc = await connect({ servers: NATS_URL });
});
after(async () => nc?.close());

function natsBusOptions(prefix: string, relay: NatsBusOptions['relay'] = 'with-bus', maxDeliver = 5): NatsBusOptions {
  return { ...RETRIES, streams: { prefix, replicas: 1, storage: 'file', maxAgeHours: 1 }, durable: { maxDeliver, ackWaitMs: 2_000 }, relay };
}

const harness: BusHarness = {
  retryBaseMs: RETRIES.retryBaseMs,
  async open() {
    const name = `bus_nats_${randomBytes(4).toString('hex')}`;
    const prefix = `${filePrefix}_${randomBytes(3).toString('hex')}`;
    const databases = await openDatabases(PG_URL, name);
    await Promise.all(ENVIRONMENTS.map((environment) => migrate(databases.environments[environment], busMigrations)));
    let bus = new NatsBus(databases, nc, silent, natsBusOptions(prefix));
    return {
      get bus() {
        return bus;
      },
      write: (environment, work) => databases.environments[environment].transaction().execute((trx) => work(trx)),
      async restart() {
        await bus.close();
        bus = new NatsBus(databases, nc, silent, natsBusOptions(prefix));
        return bus;
      },
      async close() {
        await bus.close();
        const jsm = await jetstreamManager(nc);
        for (const environment of ENVIRONMENTS) await jsm.streams.delete(streamName(prefix, environment)).catch(() => undefined);
        await databases.close();
        await dropDatabases(PG_URL, name);
      },
    };
  },
};
busContract('nats', harness);
busStartStopContract('nats', harness);

/**
 * Processes that die with events in hand, each on a connection of its own that the test
 * closes (the server then holds their messages unacknowledged, as after a kill -9): a relay
 * of its own, so that the consumers' deaths do not stop it.
 */
describe('NATS driver: a work consumer taken over from a process that died', () => {
  const actor = { type: 'system', id: 'bus-nats' } as const;
  let databases: Databases;
  let relay: NatsBus;
  let prefix: string;
  let name: string;
  const connections: NatsConnection[] = [];
  const buses: NatsBus[] = [];
  const release: Array<() => void> = [];

  before(async () => {
    name = `bus_nats_${randomBytes(4).toString('hex')}`;
    prefix = `${filePrefix}_${randomBytes(3).toString('hex')}`;
    databases = await openDatabases(PG_URL, name);
    await Promise.all(ENVIRONMENTS.map((environment) => migrate(databases.environments[environment], busMigrations)));
    relay = new NatsBus(databases, nc, silent, natsBusOptions(prefix));
    await relay.start();
  });
  after(async () => {
    for (const done of release) done();
    for (const connection of connections) await connection.close().catch(() => undefined);
    for (const bus of buses) await bus.close();
    await relay?.close();
    const jsm = await jetstreamManager(nc);
    for (const environment of ENVIRONMENTS) await jsm.streams.delete(streamName(prefix, environment)).catch(() => undefined);
    await databases?.close();
    await dropDatabases(PG_URL, name);
  });

  /** A process's bus on a connection of its own, with `consumer` registered and started. */
  async function startProcess(consumer: string, handler: (event: BusEvent) => Promise<void>, maxDeliver = 5): Promise<NatsConnection> {
    const connection = await connect({ servers: NATS_URL });
    connections.push(connection);
    const bus = new NatsBus(databases, connection, silent, natsBusOptions(prefix, 'none', maxDeliver));
    buses.push(bus);
    bus.consumeBatch(consumer, async (events) => {
      for (const event of events) await handler(event);
    });
    await bus.start();
    return connection;
  }

  const append = (subject: string, seq: number) =>
    databases.environments.test.transaction().execute(async (trx) => {
      await lockSubject(trx, subject);
      return relay.append(trx, 'test', { type: 'Handover', tenant_id: 'ten_bus_nats', actor, owner_id: null, data: { subject, seq } });
    });
  /** Never settles until the test ends: a handler stuck in a process about to die. */
  const stuck = () => new Promise<void>((resolve) => release.push(resolve));

  it("keeps each file's commit order: what the dead process held comes again before anything newer", async () => {
    const subjects = ['f0', 'f1'];
    const firstSeen: string[] = [];
    let dead = false;
    const first = await startProcess('handover', async (event) => {
      if (dead) return;
      if (event.data.subject === 'f1' && event.data.seq === 3) return stuck();
      firstSeen.push(`${event.data.subject}:${event.data.seq}`);
    });
    for (let seq = 1; seq <= 6; seq++) for (const subject of subjects) await append(subject, seq);
    await until(() => firstSeen.includes('f0:3'), 'the first process up to the stuck event');
    // Its connection gone with events in hand and unacknowledged: a process killed -9.
    dead = true;
    await first.close();
    for (let seq = 7; seq <= 10; seq++) for (const subject of subjects) await append(subject, seq);

    const secondSeen: Array<{ subject: string; seq: number }> = [];
    await startProcess('handover', async (event) => void secondSeen.push({ subject: event.data.subject as string, seq: event.data.seq as number }));
    for (let seq = 11; seq <= 12; seq++) for (const subject of subjects) await append(subject, seq);
    await until(() => subjects.every((subject) => secondSeen.some((e) => e.subject === subject && e.seq === 12)), 'every event at the second process', 30_000);
    for (const subject of subjects) {
      const seqs = secondSeen.filter((e) => e.subject === subject).map((e) => e.seq);
      // At least once: it may begin with events the first one had handled; never one out of order.
      const sorted = [...seqs].sort((a, b) => a - b);
      assert.deepEqual(seqs, sorted, `${subject}: in commit order at the second process: ${seqs.join(',')}`);
      const handledByFirst = firstSeen.filter((key) => key.startsWith(`${subject}:`)).map((key) => Number(key.split(':')[1]));
      const all = new Set([...handledByFirst, ...seqs]);
      assert.deepEqual([...all].sort((a, b) => a - b), Array.from({ length: 12 }, (_, i) => i + 1), `${subject}: no event lost`);
    }
    assert.ok(secondSeen.some((e) => e.subject === 'f1' && e.seq === 3), 'the event the dead process held');
  });

  it('an event whose handler took max_deliver processes down is set aside as a dead letter, and the events behind it go on', async () => {
    const seen: number[] = [];
    const poison = await append('p', 1);
    // Two processes (max_deliver 2) take it in turn and die in its handler.
    for (let death = 1; death <= 2; death++) {
      let taken = false;
      const dying = await startProcess(
        'crashes',
        async (event) => {
          if (event.event_id !== poison.event_id) return;
          taken = true;
          return stuck();
        },
        2,
      );
      await until(() => taken, `process ${death} to take the poison event`, 30_000);
      await dying.close();
    }
    await append('p', 2);
    await startProcess('crashes', async (event) => void (event.data.subject === 'p' && seen.push(event.data.seq as number)), 2);
    await until(() => seen.includes(2), 'the event behind it', 30_000);
    assert.deepEqual([...new Set(seen)], [2], 'the poison event was not handed over a third time');
    const letters = (await relay.status('crashes')).reduce((sum, status) => sum + status.deadLetters, 0);
    assert.equal(letters, 1, 'the poison event alone is a dead letter: the others in its batch passed their own try');
    const replayed = await relay.redeliverDeadLetters('crashes', async () => undefined);
    assert.deepEqual(replayed.delivered.map((letter) => letter.event.event_id), [poison.event_id], 'replayed from PostgreSQL on demand');
  });
});
