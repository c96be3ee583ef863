import pino from 'pino';
import { OutboxBus } from '../../src/adapters/bus/outbox.ts';
import { openDatabases } from '../../src/adapters/db/pg.ts';
import type { App, StartedApp } from '../../src/app.ts';
import { startDeployment } from './distributed.ts';
import { SHARED_POSTGRES_IDLE_MS, type StartOptions, type TestServer } from './server.ts';

/**
 * `startServer` in the distributed shape (BANTU_TEST_SHAPE=distributed): a deployment of
 * `bantu serve` processes (gateway, identity, two files, notifications, backup, webhooks) on the machine's
 * PostgreSQL, NATS and Redis, each given the test's env, behind the TestServer the suites know.
 *
 * What a test may have without the in-process objects: `app.databases` (a connection of its own
 * to the deployment's databases) and `app.bus` (an outbox bus on them, not started: readSince,
 * status, prune). Everything else of `app`, and `started`, throws an error saying so.
 * BANTU_BACKUP_WORKER=off starts no backup process.
 */
export async function startDistributedServer(env: Record<string, string>, options: StartOptions): Promise<TestServer> {
  if (options.sameInstallationAs) throw unavailable('startServer({ sameInstallationAs })');
  const destination = options.logDestination;
  const echo = process.env.BANTU_TEST_LOG_LEVEL !== undefined;
  const deployment = await startDeployment({
    env,
    instances: { identity: 1, files: 2, notifications: 1, backup: env.BANTU_BACKUP_WORKER === 'off' ? 0 : 1, exports: 1, webhooks: 1 },
    output: (_service, line) => {
      // The log is the JSON lines; the rest is the banner (identity's prints the default tenant's keys once).
      const logged = line.startsWith('{');
      if (logged) destination?.write(`${line}\n`);
      // Errors always (a 500 in CI then shows its cause), everything with BANTU_TEST_LOG_LEVEL.
      if (echo || (logged && /^\{"level":(50|60),/.test(line))) process.stderr.write(`${line}\n`);
    },
  });
  let databases: Awaited<ReturnType<typeof openDatabases>>;
  try {
    // The test's own SQL beside the deployment's processes: a few connections are enough.
    databases = await openDatabases(deployment.env.DATABASE_URL as string, undefined, 4, SHARED_POSTGRES_IDLE_MS);
  } catch (error) {
    await deployment.close();
    throw error;
  }
  const bus = new OutboxBus(databases, pino({ level: 'silent' }));
  const app = {
    databases,
    bus,
    get gateway(): never {
      throw unavailable('server.app.gateway');
    },
    get identity(): never {
      throw unavailable('server.app.identity');
    },
    get files(): never {
      throw unavailable('server.app.files');
    },
    get backup(): never {
      throw unavailable('server.app.backup');
    },
    get exports(): never {
      throw unavailable('server.app.exports');
    },
    isLeading(): never {
      throw unavailable('server.app.isLeading()');
    },
    start: () => Promise.reject(unavailable('server.app.start()')),
    close: () => Promise.reject(unavailable('server.app.close()')),
  } satisfies App;
  return {
    app,
    get started(): StartedApp {
      throw unavailable('server.started');
    },
    url: deployment.url,
    dataDir: deployment.dataDir,
    operatorToken: deployment.operatorToken,
    secretKey: deployment.env.BANTU_SECRET_KEY as string,
    keys: deployment.keys,
    ca: deployment.ca,
    http: deployment.http,
    request: deployment.request,
    async close() {
      await bus.close();
      await databases.close();
      await deployment.close();
    },
  };
}

function unavailable(what: string): Error {
  return new Error(
    `${what} is not available in the distributed test shape (BANTU_TEST_SHAPE=distributed): every service runs in a bantu serve process of its own. ` +
      "Skip the test there with { skip: inProcessOnly('<why>') } from test/helpers/shape.ts",
  );
}
