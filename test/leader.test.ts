import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import pino from 'pino';
import { type Leadership, leadership } from '../src/adapters/db/leader.ts';
import { dropDatabases, openDatabases } from '../src/adapters/db/pg.ts';
import { until } from './helpers/files.ts';
import { startServer, type TestServer } from './helpers/server.ts';

/**
 * Leader election on real PostgreSQL: the test server's (embedded, or the machine's with
 * BANTU_TEST_DATABASE_URL), each test on a control database of its own, so that only its
 * contenders meet there.
 */
const silent = pino({ level: 'silent' });

let server: TestServer;
before(async () => {
  server = await startServer();
});
after(async () => server?.close());

/** A contender that records what its leadership did, in order. */
interface Contender {
  leadership: Leadership;
  /** `elected` and `deposed`, in the order they ran. */
  calls: string[];
  /** `deposing` while its onDeposed runs; `overlaps` counts the others' elections meanwhile. */
  state: { deposing: boolean; overlaps: number };
}

async function withDatabase(work: (url: string, admin: pg.Client) => Promise<void>): Promise<void> {
  const base = server.app.databases.controlUrl;
  const name = `leader_${randomBytes(4).toString('hex')}`;
  const databases = await openDatabases(base, name);
  await databases.close();
  const admin = new pg.Client({ connectionString: databases.controlUrl });
  await admin.connect();
  try {
    await work(databases.controlUrl, admin);
  } finally {
    await admin.end();
    await dropDatabases(base, name);
  }
}

/** `count` contenders for `name`; `stopMs` makes each onDeposed take that long. */
function contenders(url: string, name: string, count: number, options: { stopMs?: number } = {}): Contender[] {
  const all: Contender[] = [];
  for (let i = 0; i < count; i++) {
    const calls: string[] = [];
    const state = { deposing: false, overlaps: 0 };
    const led = leadership(url, name, {
      logger: silent,
      onElected() {
        for (const other of all) if (other.state !== state && other.state.deposing) other.state.overlaps++;
        calls.push('elected');
      },
      async onDeposed() {
        state.deposing = true;
        if (options.stopMs) await new Promise((resolve) => setTimeout(resolve, options.stopMs));
        calls.push('deposed');
        state.deposing = false;
      },
    });
    all.push({ leadership: led, calls, state });
  }
  return all;
}

const leaders = (all: Contender[]) => all.filter((c) => c.leadership.leading);

/** The backend that holds the leadership lock of `name` (the standby's connection holds none). */
async function lockHolder(admin: pg.Client, name: string): Promise<number> {
  const result = await admin.query<{ pid: number }>(
    `select l.pid from pg_locks l join pg_stat_activity a on a.pid = l.pid
     where l.locktype = 'advisory' and l.granted and a.application_name = $1`,
    [`bantu leader ${name}`],
  );
  assert.equal(result.rows.length, 1, 'one connection holds the lock');
  return result.rows[0]?.pid as number;
}

describe('leadership', () => {
  it('of two contenders, one leads; the other takes over when the leader loses its connection, and the deposed one stopped its work', async () => {
    await withDatabase(async (url, admin) => {
      const all = contenders(url, 'work', 2);
      try {
        const decided = await Promise.all(all.map((c) => c.leadership.decided));
        assert.deepEqual([...decided].sort(), [false, true], 'one elected at its first try, the other standing by');
        const [first, second] = [all[decided.indexOf(true)], all[decided.indexOf(false)]] as [Contender, Contender];
        assert.deepEqual(leaders(all), [first]);
        assert.deepEqual(first.calls, ['elected']);
        assert.deepEqual(second.calls, []);

        // The leader's lock connection dies (as when its server side is killed, or a failover).
        const holder = await lockHolder(admin, 'work');
        await admin.query('select pg_terminate_backend($1)', [holder]);
        await until(() => second.calls.includes('elected'), 'the standby to take over');
        await until(() => first.calls.includes('deposed'), 'the deposed leader to stop its work');
        assert.deepEqual(first.calls, ['elected', 'deposed']);
        assert.deepEqual(second.calls, ['elected']);
        assert.notEqual(await lockHolder(admin, 'work'), holder);
        // The deposed one reconnects and stands by: one leader still.
        await until(() => leaders(all).length === 1 && leaders(all)[0] === second, 'one leader after the takeover');

        // And takes over in turn when the new leader closes.
        await second.leadership.close();
        await until(() => first.calls.length === 3, 'the first to lead again');
        assert.deepEqual(first.calls, ['elected', 'deposed', 'elected']);
        assert.deepEqual(second.calls, ['elected', 'deposed']);
        assert.deepEqual(leaders(all), [first]);
      } finally {
        await Promise.all(all.map((c) => c.leadership.close()));
      }
      assert.deepEqual(leaders(all), []);
      assert.deepEqual(all[0]?.calls.at(-1), 'deposed', 'close stops the work of the one that led');
    });
  });

  it('a closing leader releases the lock only once its work has stopped, so no two run at once', async () => {
    await withDatabase(async (url) => {
      // A stop slower than the standby's retries: its election must wait for it.
      const all = contenders(url, 'slow-stop', 2, { stopMs: 1500 });
      try {
        const decided = await Promise.all(all.map((c) => c.leadership.decided));
        const [first, second] = [all[decided.indexOf(true)], all[decided.indexOf(false)]] as [Contender, Contender];
        await first.leadership.close();
        await until(() => second.leadership.leading, 'the standby to take over');
        assert.deepEqual(first.calls, ['elected', 'deposed']);
        assert.equal(first.state.overlaps, 0, "the standby's work did not start before the closing leader's had stopped");
      } finally {
        await Promise.all(all.map((c) => c.leadership.close()));
      }
    });
  });

  it('leaderships of different names do not exclude each other', async () => {
    await withDatabase(async (url) => {
      const [a] = contenders(url, 'one', 1);
      const [b] = contenders(url, 'two', 1);
      try {
        assert.deepEqual(await Promise.all([a?.leadership.decided, b?.leadership.decided]), [true, true]);
      } finally {
        await Promise.all([a?.leadership.close(), b?.leadership.close()]);
      }
    });
  });

  it('a contender whose database cannot be reached stands by, and leads once it can', async () => {
    const base = server.app.databases.controlUrl;
    const name = `leader_${randomBytes(4).toString('hex')}`;
    const url = new URL(base);
    url.pathname = `/${name}`;
    const [contender] = contenders(url.toString(), 'late', 1);
    try {
      // The database does not exist yet: the first try fails.
      assert.equal(await contender?.leadership.decided, false);
      assert.equal(contender?.leadership.leading, false);
      const databases = await openDatabases(base, name);
      await databases.close();
      await until(() => contender?.leadership.leading === true, 'election once the database exists');
      assert.deepEqual(contender?.calls, ['elected']);
    } finally {
      await contender?.leadership.close();
      await dropDatabases(base, name);
    }
  });
});
