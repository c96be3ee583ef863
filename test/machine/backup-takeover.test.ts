import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { eventIdOf } from '../../src/adapters/bus/outbox.ts';
import { type CliProcess, runCli } from '../helpers/cli.ts';
import { until, uploadRaw } from '../helpers/files.ts';
import { startServer, type TestServer } from '../helpers/server.ts';

/**
 * Issue 14's takeover test: two `bantu serve backup` processes, spawned as an operator would,
 * against the machine's PostgreSQL (a database of this test's own) and the folders of a
 * server that writes but runs no worker itself. One leads and backs up; it is killed with -9
 * in the middle of the writes; the other takes over, and every version ends up backed up
 * exactly once.
 */
const SECRET = randomBytes(32).toString('hex');

const NATS_PREFIX = `t${randomBytes(4).toString('hex')}`;
let server: TestServer;
before(async () => {
  server = await startServer({ BANTU_BACKUP_WORKER: 'off', BANTU_SECRET_KEY: SECRET });
});
after(async () => server?.close());

function startWorker(): CliProcess {
  return runCli(['serve', 'backup'], {
    DATABASE_URL: server.app.databases.controlUrl,
    BANTU_DATA_DIR: server.dataDir,
    BANTU_BACKUP_DIR: path.join(server.dataDir, 'backups'),
    BANTU_SECRET_KEY: SECRET,
    NATS_URL: process.env.NATS_URL ?? 'nats://127.0.0.1:4222',
    BANTU_NATS_PREFIX: NATS_PREFIX,
    // The leadership's lines (elected, standing by) are info.
    BANTU_LOG_LEVEL: 'info',
  });
}

const running = (worker: CliProcess) => /backup is running at/.test(worker.stdout());
const leads = (worker: CliProcess) => /backup is running at .*, leading/.test(worker.stdout());
/** The leadership's log line (pino JSON on stdout) when elected. */
const elected = (worker: CliProcess) => worker.stdout().includes('"msg":"elected leader of backup: running its work"');

/** Entries of the test environment's backup history, by event id: more than one for an id would be a double backup. */
async function recorded(): Promise<Map<string, number>> {
  const rows = await sql<{ event_id: string; n: number }>`select event_id, count(*)::int as n from backup.version group by event_id`.execute(
    server.app.databases.environments.test,
  );
  return new Map(rows.rows.map((row) => [row.event_id, row.n]));
}

/** The test environment's file events, as the outbox holds them. */
async function fileEvents(): Promise<string[]> {
  const rows = await sql<{ id: number }>`select id from bus.outbox where type like 'File_%' order by xid, id`.execute(server.app.databases.environments.test);
  return rows.rows.map((row) => eventIdOf(row.id));
}

describe('backup workers: one leads, the other takes over after kill -9', () => {
  it('backs every version up exactly once across the takeover', async () => {
    const key = server.keys.test.account_key;
    const workers = [startWorker(), startWorker()];
    try {
      await until(() => {
        for (const worker of workers) if (worker.child.exitCode !== null) throw new Error(`worker exited: ${worker.stderr()}`);
        return workers.every(running);
      }, 'both workers to start', 60_000);
      assert.equal(workers.filter(leads).length, 1, workers.map((w) => w.stdout()).join('\n---\n'));
      const leader = workers.find(leads) as CliProcess;
      const standby = workers.find((w) => w !== leader) as CliProcess;
      assert.match(standby.stdout(), /standing by: another process runs the worker/);

      // What the clients were told was stored: per file, [version, event, sha256], in order.
      const expected = new Map<string, Array<[number, string, string]>>();
      const note = (file: { id: string; version: number; sha256: string }, event: string) => {
        expected.set(file.id, [...(expected.get(file.id) ?? []), [file.version, event, file.sha256]]);
      };
      const ids: string[] = [];
      const writes: Array<() => Promise<void>> = [];
      for (let i = 0; i < 20; i++) {
        writes.push(async () => {
          const created = await uploadRaw(server, key, `file ${i} v1`, { name: `takeover-${i}.txt`, path: '/takeover' });
          assert.equal(created.status, 201, created.text);
          ids.push(created.json.id);
          note(created.json, 'File_create');
        });
      }
      for (let round = 2; round <= 3; round++) {
        for (let i = 0; i < 20; i++) {
          writes.push(async () => {
            const id = ids[i] as string;
            const updated = await server.request('PUT', `/v1/files/${id}/content`, { auth: key, body: `file ${i} v${round}`, headers: { 'content-type': 'text/plain' } });
            assert.equal(updated.status, 200, updated.text);
            note(updated.json, 'File_update');
          });
        }
      }
      for (let i = 0; i < 20; i += 5) {
        writes.push(async () => {
          const id = ids[i] as string;
          const file = (await server.request('GET', `/v1/files/${id}`, { auth: key })).json;
          assert.equal((await server.request('DELETE', `/v1/files/${id}`, { auth: key })).status, 204);
          note(file, 'File_delete');
        });
      }

      // The first half, then kill -9 the leader once it has backed up some of it, then the rest.
      const half = Math.floor(writes.length / 2);
      for (const write of writes.slice(0, half)) await write();
      await until(async () => (await recorded()).size >= 10, 'the leader to back up some versions', 60_000);
      assert.ok(standby.child.exitCode === null);
      assert.equal(elected(standby), false, 'the standby has not led so far');
      leader.child.kill('SIGKILL');
      assert.equal((await leader.exited).signal, 'SIGKILL');
      const beforeTakeover = (await recorded()).size;
      for (const write of writes.slice(half)) await write();

      await until(() => elected(standby), 'the standby to take over', 30_000);
      const events = await fileEvents();
      assert.equal(events.length, writes.length, 'one file event per write');
      assert.ok(beforeTakeover < events.length, 'the leader was killed with versions still to back up');
      await until(async () => (await recorded()).size === events.length, `${events.length} versions backed up`, 120_000);

      // Exactly once: every event has one entry, and no entry has another event.
      const entries = await recorded();
      assert.deepEqual([...entries.keys()].sort(), [...events].sort());
      assert.deepEqual([...new Set(entries.values())], [1]);
      for (const [id, list] of expected) {
        const history = await server.request('GET', `/v1/files/${id}/versions?limit=200`, { auth: key });
        assert.equal(history.status, 200, history.text);
        assert.deepEqual(
          history.json.data.map((e: { version: number; event: string; sha256: string }) => [e.version, e.event, e.sha256]),
          list,
          `history of ${id}`,
        );
      }
      // The worker records a version, then moves its cursor past the event: the count of pending
      // events reaches 0 a moment after the last version is recorded.
      let status = { pending_events: -1, versions: -1 };
      await until(async () => {
        status = (await server.request('GET', '/v1/backups/status', { auth: key })).json;
        return status.pending_events === 0;
      }, 'no pending events', 30_000);
      assert.equal(status.versions, events.length);

      // And the bytes are all in the backup store, intact.
      const verify = runCli(['backup', 'verify'], {
        DATABASE_URL: server.app.databases.controlUrl,
        BANTU_DATA_DIR: server.dataDir,
        BANTU_SECRET_KEY: SECRET,
        BANTU_LOG_LEVEL: 'error',
      });
      assert.equal((await verify.exited).code, 0, verify.stdout() + verify.stderr());
      assert.match(verify.stdout(), new RegExp(`holding ${events.length} versions: all intact`));
    } finally {
      for (const worker of workers) if (worker.child.exitCode === null && worker.child.signalCode === null) worker.child.kill('SIGTERM');
      const exits = await Promise.all(workers.map((worker) => worker.exited));
      // The standby stops cleanly on SIGTERM (the leader was killed).
      assert.ok(exits.some((exit) => exit.code === 0), JSON.stringify(exits));
    }
  });
});
