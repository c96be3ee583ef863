import { randomBytes } from 'node:crypto';
import { after, before } from 'node:test';
import pino from 'pino';
import { busContract } from '../src/adapters/bus/bus.contract.ts';
import { OutboxBus } from '../src/adapters/bus/outbox.ts';
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

busContract('outbox', {
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
});
