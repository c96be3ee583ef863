import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import pino from 'pino';
import { type BusHarness, busContract } from '../src/adapters/bus/bus.contract.ts';
import { busStartStopContract } from '../src/adapters/bus/bus-start-stop.contract.ts';
import { OutboxBus } from '../src/adapters/bus/outbox.ts';
import { cursorOf, saveCursor } from '../src/adapters/bus/outbox-cursor.ts';
import { dropDatabases, ENVIRONMENTS, migrate, openDatabases } from '../src/adapters/db/pg.ts';
import { migrationPlan } from '../src/platform/platform.ts';
import { startServer, type TestServer } from './helpers/server.ts';

/**
 * The EventBus contract on the outbox driver, on real PostgreSQL: the test server's (embedded,
 * or the machine's with BANTU_TEST_DATABASE_URL). Each fixture gets databases of its own on
 * that server, with only the bus's migrations (and the roles they grant to), so that counts
 * such as `status().pending` see nothing but the test's events.
 */
const silent = pino({ level: 'silent' });
const OPTIONS = { retryBaseMs: 20, retryMaxMs: 200, pollMs: 50 };
const busMigrations = migrationPlan([]).environment;

let server: TestServer;
before(async () => {
  server = await startServer();
});
after(async () => server?.close());

const harness: BusHarness = {
  retryBaseMs: OPTIONS.retryBaseMs,
  async open() {
    const base = server.app.databases.controlUrl;
    const name = `bus_contract_${randomBytes(4).toString('hex')}`;
    const databases = await openDatabases(base, name);
    await Promise.all(ENVIRONMENTS.map((environment) => migrate(databases.environments[environment], busMigrations)));
    let bus = new OutboxBus(databases, silent, OPTIONS);
    return {
      get bus() {
        return bus;
      },
      write: (environment, work) => databases.environments[environment].transaction().execute((trx) => work(trx)),
      async restart() {
        await bus.close();
        bus = new OutboxBus(databases, silent, OPTIONS);
        return bus;
      },
      async close() {
        await bus.close();
        await databases.close();
        await dropDatabases(base, name);
      },
    };
  },
};
busContract('outbox', harness);
busStartStopContract('outbox', harness);

describe('outbox lowLatency consumers', () => {
  it('cannot be registered to start on demand: notifications feed them from the start', async () => {
    const fixture = await harness.open();
    try {
      assert.throws(() => fixture.bus.consume('fast', async () => undefined, { lowLatency: true, autoStart: false }), /lowLatency/);
    } finally {
      await fixture.close();
    }
  });
});

describe('outbox status and ephemeral consumers', () => {
  it('leave no cursor behind: the history of a name that never consumes durably is still pruned', async () => {
    const base = server.app.databases.controlUrl;
    const name = `bus_status_${randomBytes(4).toString('hex')}`;
    const databases = await openDatabases(base, name);
    const bus = new OutboxBus(databases, silent, OPTIONS);
    try {
      await Promise.all(ENVIRONMENTS.map((environment) => migrate(databases.environments[environment], busMigrations)));
      bus.consume('live-only', async () => undefined, { ephemeral: true });
      await bus.start();
      const event = { type: 'Probe', tenant_id: 'ten_x', actor: { type: 'system', id: 'test' }, owner_id: null, data: {} } as const;
      await databases.environments.test.transaction().execute((trx) => bus.append(trx, 'test', event));
      const status = (await bus.status('live-only')).find((s) => s.environment === 'test');
      assert.equal(status?.pending, 1, 'a name without a cursor counts from the start of the history');
      await sql`update bus.outbox set occurred_at = now() - interval '2 hours'`.execute(databases.environments.test);
      assert.equal(await bus.prune(1), 1, 'no cursor holds the event back');
    } finally {
      await bus.close();
      await databases.close();
      await dropDatabases(base, name);
    }
  });
});

describe('outbox cursor saves', () => {
  it('commit the new position without leaving synchronous_commit off on their pooled connection', async () => {
    const base = server.app.databases.controlUrl;
    const name = `bus_cursor_${randomBytes(4).toString('hex')}`;
    const databases = await openDatabases(base, name);
    // One connection only, so the statement after the save runs on the connection that saved.
    const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: databases.environmentUrls.test, max: 1 }) }) });
    try {
      await migrate(databases.environments.test, busMigrations);
      await cursorOf(db, 'probe');
      await saveCursor(db, 'probe', { xid: '42', id: 7 });
      const saved = await cursorOf(db, 'probe');
      assert.deepEqual({ xid: saved.xid, id: Number(saved.id) }, { xid: '42', id: 7 });
      const setting = await sql<{ synchronous_commit: string }>`show synchronous_commit`.execute(db);
      assert.equal(setting.rows[0]?.synchronous_commit, 'on', 'the unflushed commit is for the cursor save alone');
    } finally {
      await db.destroy();
      await databases.close();
      await dropDatabases(base, name);
    }
  });
});
