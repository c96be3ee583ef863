import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Static } from '@sinclair/typebox';
import type { VersionEntry } from '../../src/services/backup/http/backup.schemas.ts';
import { type CliProcess, runCli } from '../helpers/cli.ts';
import { backedUp, sha256, until, uploadRaw } from '../helpers/files.ts';
import { startServer, type TestServer } from '../helpers/server.ts';

/**
 * The backup worker as its own process (`bantu serve backup`, distributed mode) against the
 * test server's database and data dir, while the server itself runs without a worker. It
 * registers on the machine's NATS, under a prefix of this file's own.
 */
const NATS_PREFIX = `t${randomBytes(4).toString('hex')}`;

function startWorker(server: TestServer, env: Record<string, string> = {}): CliProcess {
  return runCli(['serve', 'backup'], {
    DATABASE_URL: server.app.databases.controlUrl,
    NATS_URL: process.env.NATS_URL ?? 'nats://127.0.0.1:4222',
    BANTU_NATS_PREFIX: NATS_PREFIX,
    BANTU_DATA_DIR: server.dataDir,
    BANTU_LOG_LEVEL: 'error',
    ...env,
  });
}

async function workerReady(worker: CliProcess): Promise<void> {
  await until(() => {
    if (worker.child.exitCode !== null) throw new Error(`backup worker exited ${worker.child.exitCode}: ${worker.stderr()}`);
    return worker.stdout().includes('backup is running');
  }, 'the backup worker to start');
}

async function stopWorker(worker: CliProcess): Promise<void> {
  if (worker.child.exitCode === null && worker.child.signalCode === null) worker.child.kill('SIGTERM');
  const exit = await worker.exited;
  assert.ok(exit.code === 0 || exit.signal !== null, `worker exit ${JSON.stringify(exit)}: ${worker.stderr()}`);
}

/** One backup gauge of the test environment, as GET /metrics shows it. */
async function metric(server: TestServer, name: string): Promise<number> {
  const text = (await server.request('GET', '/metrics')).text;
  const match = new RegExp(`^${name}\\{environment="test",service="bantu"\\} (\\S+)$`, 'm').exec(text);
  assert.ok(match, `${name} in /metrics`);
  return Number(match[1]);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Where the files service keeps a blob (the backup copies from there). */
const filesBlob = (server: TestServer, digest: string) => path.join(server.dataDir, 'blobs', 'test', digest.slice(0, 2), digest);

/**
 * Makes the test environment's backup store unusable the way a lost mount or a dead disk does,
 * even for root (whom chmod does not stop): its root folder replaced by a regular file, so
 * every stat, mkdir and open under it fails (ENOTDIR). `mend` puts the folder back as it was.
 */
async function breakBackupStore(server: TestServer): Promise<{ mend(): Promise<void> }> {
  const root = path.join(server.dataDir, 'backups', 'test');
  const away = `${root}.away`;
  await fs.rename(root, away);
  await fs.writeFile(root, 'not a folder');
  return {
    async mend() {
      await fs.rm(root);
      await fs.rename(away, root);
    },
  };
}

async function history(server: TestServer, auth: string, id: string): Promise<Array<Static<typeof VersionEntry>>> {
  const response = await server.request('GET', `/v1/files/${id}/versions?limit=200`, { auth });
  if (response.status === 404) return [];
  assert.equal(response.status, 200, response.text);
  return response.json.data;
}

/** What a client was told was stored: one history entry each, in order. */
type Expected = Map<string, Array<{ version: number; event: string; sha256: string; content?: string }>>;

function expect(expected: Expected, file: { id: string; version: number; sha256: string }, event: string, content?: string) {
  const list = expected.get(file.id) ?? [];
  list.push({ version: file.version, event, sha256: file.sha256, content });
  expected.set(file.id, list);
}

async function assertAllBackedUp(server: TestServer, auth: string, expected: Expected): Promise<void> {
  const total = [...expected.values()].reduce((n, list) => n + list.length, 0);
  await until(async () => {
    let seen = 0;
    for (const id of expected.keys()) seen += (await history(server, auth, id)).length;
    return seen >= total;
  }, `${total} backed-up entries`, 120_000);
  for (const [id, list] of expected) {
    const entries = await history(server, auth, id);
    // Exactly the acknowledged changes, each once, in order.
    assert.deepEqual(
      entries.map((e) => [e.version, e.event, e.sha256]),
      list.map((e) => [e.version, e.event, e.sha256]),
      `history of ${id}`,
    );
    for (const entry of list) {
      if (entry.content === undefined || entry.event === 'File_delete') continue;
      const content = await server.request('GET', `/v1/files/${id}/versions/${entry.version}/content`, { auth });
      assert.equal(content.status, 200);
      assert.equal(content.text, entry.content, `${id} version ${entry.version}`);
    }
  }
}

/** Runs a backup worker process until every expected version is backed up, then stops it. */
async function backUpWithWorker(server: TestServer, auth: string, expected: Expected, env: Record<string, string> = {}): Promise<void> {
  const worker = startWorker(server, env);
  try {
    await workerReady(worker);
    await assertAllBackedUp(server, auth, expected);
  } finally {
    await stopWorker(worker);
  }
}

describe('backup worker as its own process', () => {
  let server: TestServer;
  let key: string;
  /** The poison events the tests below make, for the re-drive at the end. */
  const poisoned: Array<{ id: string; sha256: string; content: string }> = [];
  const status = async () => (await server.request('GET', '/v1/backups/status', { auth: key })).json;
  before(async () => {
    server = await startServer({ BANTU_BACKUP_WORKER: 'off' });
    key = server.keys.test.account_key;
  });
  after(async () => server?.close());

  it('backup stopped, 100 changes made, backup started: all 100 appear, none twice', async () => {
    const expected: Expected = new Map();
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) {
      const content = `file ${i} v1`;
      const created = await uploadRaw(server, key, content, { name: `catchup-${i}.txt`, path: '/catchup' });
      assert.equal(created.status, 201, created.text);
      ids.push(created.json.id);
      expect(expected, created.json, 'File_create', content);
    }
    for (let round = 2; round <= 9; round++) {
      for (const id of ids) {
        const content = `file ${id} v${round}`;
        const updated = await server.request('PUT', `/v1/files/${id}/content`, { auth: key, body: content, headers: { 'content-type': 'text/plain' } });
        assert.equal(updated.status, 200, updated.text);
        expect(expected, updated.json, 'File_update', content);
      }
    }
    for (const id of ids.slice(0, 5)) {
      const renamed = await server.request('PATCH', `/v1/files/${id}`, { auth: key, json: { name: `renamed-${id}.txt` } });
      assert.equal(renamed.status, 200, renamed.text);
      expect(expected, renamed.json, 'File_update');
    }
    for (const id of ids.slice(5)) {
      const file = (await server.request('GET', `/v1/files/${id}`, { auth: key })).json;
      assert.equal((await server.request('DELETE', `/v1/files/${id}`, { auth: key })).status, 204);
      expect(expected, file, 'File_delete');
    }
    assert.equal([...expected.values()].reduce((n, list) => n + list.length, 0), 100);
    // Nothing is backed up while no worker runs.
    const before = await server.request('GET', '/v1/backups/status', { auth: key });
    assert.equal(before.json.versions, 0);
    assert.ok(before.json.pending_events >= 100, before.text);

    await backUpWithWorker(server, key, expected);
    const status = await server.request('GET', '/v1/backups/status', { auth: key });
    assert.equal(status.json.versions, 100);
    assert.equal(status.json.pending_events, 0);
  });

  it('backup_lag_seconds is the age of the oldest change not yet backed up: near 0 for a new change after an idle spell, then growing', async () => {
    // The test above left everything backed up and no worker running: stay idle a while.
    await sleep(2500);
    assert.equal(await metric(server, 'backup_lag_seconds'), 0, 'nothing pending');
    const created = await uploadRaw(server, key, 'after an idle spell', { name: 'idle.txt' });
    assert.equal(created.status, 201);
    await sleep(600); // past the metrics' snapshot cache
    const fresh = await metric(server, 'backup_lag_seconds');
    // Not the time since the last backed-up change (at least 2.5 s).
    assert.ok(fresh >= 0.5 && fresh < 2, `lag right after the change: ${fresh}`);
    await sleep(1500);
    const later = await metric(server, 'backup_lag_seconds');
    assert.ok(later >= fresh + 1.4 && later < fresh + 3, `lag 1.5 s later: ${later} (was ${fresh})`);
    assert.equal(await metric(server, 'backup_lag_events'), 1);

    const worker = startWorker(server);
    try {
      await workerReady(worker);
      await until(async () => (await status()).pending_events === 0, 'the backup to catch up');
    } finally {
      await stopWorker(worker);
    }
    await until(async () => (await metric(server, 'backup_lag_seconds')) === 0, 'the lag back to 0');
  });

  it('the worker killed (kill -9) again and again during a stream of updates: every acknowledged version present and verified, none duplicated', async () => {
    const expected: Expected = new Map();
    const files: string[] = [];
    for (let i = 0; i < 4; i++) {
      const content = `stream ${i} v1 ${'.'.repeat(i * 1000)}`;
      const created = await uploadRaw(server, key, content, { name: `stream-${i}.bin`, path: '/stream' });
      files.push(created.json.id);
      expect(expected, created.json, 'File_create', content);
    }
    let writing = true;
    const writers = files.map(async (id, n) => {
      for (let v = 2; v <= 40; v++) {
        const content = `stream ${n} v${v} ${'#'.repeat((v * 997) % 5000)}`;
        const response = await server.request('PUT', `/v1/files/${id}/content`, { auth: key, body: content, headers: { 'content-type': 'application/octet-stream' } });
        assert.equal(response.status, 200, response.text);
        expect(expected, response.json, 'File_update', content);
      }
    });
    const stream = Promise.all(writers).finally(() => (writing = false));

    let kills = 0;
    while (writing || kills < 3) {
      const worker = startWorker(server);
      await workerReady(worker);
      // Let it work for a while (a random spell, so kills land at different points), then kill -9.
      await new Promise((resolve) => setTimeout(resolve, 100 + Math.floor(Math.random() * 600)));
      worker.child.kill('SIGKILL');
      const exit = await worker.exited;
      assert.equal(exit.signal, 'SIGKILL');
      kills++;
    }
    await stream;
    assert.ok(kills >= 3);

    await backUpWithWorker(server, key, expected);
    // Every stored byte re-hashed by the real CLI.
    const verify = runCli(['backup', 'verify'], { DATABASE_URL: server.app.databases.controlUrl, BANTU_DATA_DIR: server.dataDir, BANTU_LOG_LEVEL: 'error' });
    const exit = await verify.exited;
    assert.equal(exit.code, 0, verify.stdout() + verify.stderr());
    assert.match(verify.stdout(), /all intact/);
    // No temp file left behind by the killed copies once a store is opened again.
    const tmp = await fs.readdir(path.join(server.dataDir, 'backups', 'test', 'tmp'));
    assert.deepEqual(tmp, []);
  });

  it('a poison event (its blob is gone) lands in the dead letters after its tries; later events still get backed up', async () => {
    const poison = await uploadRaw(server, key, 'bytes that will vanish', { name: 'poison.txt' });
    assert.equal(poison.status, 201);
    await fs.rm(filesBlob(server, poison.json.sha256));
    poisoned.push({ id: poison.json.id, sha256: poison.json.sha256, content: 'bytes that will vanish' });
    const healthy = await uploadRaw(server, key, 'healthy after the poison', { name: 'healthy.txt' });
    assert.equal(healthy.status, 201);
    const expected: Expected = new Map();
    expect(expected, healthy.json, 'File_create', 'healthy after the poison');
    const deadBefore = (await server.request('GET', '/v1/backups/status', { auth: key })).json.dead_letters;

    await backUpWithWorker(server, key, expected, { BANTU_BACKUP_MAX_ATTEMPTS: '2' });
    assert.deepEqual(await history(server, key, poison.json.id), [], 'nothing recorded for the poison event');
    const status = await server.request('GET', '/v1/backups/status', { auth: key });
    assert.equal(status.json.dead_letters, deadBefore + 1);
    const metrics = await server.request('GET', '/metrics');
    assert.match(metrics.text, new RegExp(`^backup_dead_letters\\{environment="test",service="bantu"\\} ${deadBefore + 1}$`, 'm'));
    assert.equal(sha256('healthy after the poison'), healthy.json.sha256);
  });

  it('a checksum mismatch (the files store holds other bytes than the event names) is poison: a dead letter, in the status and the metrics; later events still backed up', async () => {
    const honest = 'the bytes the client was told were stored';
    const tampered = await uploadRaw(server, key, honest, { name: 'tampered.txt' });
    assert.equal(tampered.status, 201);
    await fs.writeFile(filesBlob(server, tampered.json.sha256), 'other bytes than the event names');
    poisoned.push({ id: tampered.json.id, sha256: tampered.json.sha256, content: honest });
    const healthy = await uploadRaw(server, key, 'healthy after the mismatch', { name: 'healthy-2.txt' });
    const expected: Expected = new Map();
    expect(expected, healthy.json, 'File_create', 'healthy after the mismatch');
    const deadBefore = (await status()).dead_letters;

    await backUpWithWorker(server, key, expected, { BANTU_BACKUP_MAX_ATTEMPTS: '2' });
    assert.deepEqual(await history(server, key, tampered.json.id), [], 'the wrong bytes are never recorded as that version');
    const after = await status();
    assert.equal(after.dead_letters, deadBefore + 1);
    assert.equal(after.pending_events, 0);
    assert.equal(await metric(server, 'backup_dead_letters'), deadBefore + 1);
  });

  it('the backup store unwritable (its root replaced by a file): the backup stalls without a dead letter, then backs up every version once the store is back', async () => {
    const deadBefore = (await status()).dead_letters;
    // No drain after leaving the registry (no gateway routes to it here): the stop is the worker's alone.
    const worker = startWorker(server, { BANTU_BACKUP_MAX_ATTEMPTS: '2', BANTU_SERVICE_DRAIN_MS: '0' });
    const expected: Expected = new Map();
    try {
      await workerReady(worker);
      const store = await breakBackupStore(server);
      try {
        const ids: string[] = [];
        for (let i = 0; i < 3; i++) {
          const content = `written during the outage ${i}`;
          const created = await uploadRaw(server, key, content, { name: `outage-${i}.txt`, path: '/outage' });
          assert.equal(created.status, 201, created.text);
          ids.push(created.json.id);
          expect(expected, created.json, 'File_create', content);
        }
        const updated = await server.request('PUT', `/v1/files/${ids[0]}/content`, { auth: key, body: 'outage 0, second version', headers: { 'content-type': 'text/plain' } });
        assert.equal(updated.status, 200, updated.text);
        expect(expected, updated.json, 'File_update', 'outage 0, second version');

        // Twice its 2 tries: before the fix, the events were dead letters by now.
        await until(
          async () => (await metric(server, 'backup_failed_tries')) >= 4 || (await status()).dead_letters > deadBefore,
          'the worker to fail again and again',
        );
        const during = await status();
        assert.equal(during.dead_letters, deadBefore, 'a failing backup store sets nothing aside');
        assert.equal(during.pending_events, 4, 'every change waits');
        assert.ok((await metric(server, 'backup_lag_seconds')) > 0);
        for (const id of ids) assert.deepEqual(await history(server, key, id), []);
      } finally {
        await store.mend();
      }
      // The same worker, without a restart, catches up on its own.
      await assertAllBackedUp(server, key, expected);
      await until(async () => (await metric(server, 'backup_failed_tries')) === 0, 'the failing state to clear');
    } finally {
      await stopWorker(worker);
    }
    const after = await status();
    assert.equal(after.dead_letters, deadBefore);
    assert.equal(after.pending_events, 0);
  });

  it('a worker retrying a failing store still stops promptly on SIGTERM; the next one backs up what waited', async () => {
    // No drain after leaving the registry (no gateway routes to it here): the stop is the worker's alone.
    const worker = startWorker(server, { BANTU_BACKUP_MAX_ATTEMPTS: '2', BANTU_SERVICE_DRAIN_MS: '0' });
    const expected: Expected = new Map();
    try {
      await workerReady(worker);
      const store = await breakBackupStore(server);
      try {
        const created = await uploadRaw(server, key, 'waiting through a shutdown', { name: 'shutdown.txt' });
        expect(expected, created.json, 'File_create', 'waiting through a shutdown');
        // After 7 failed tries the next is 12.8 s away (200 ms doubling): the shutdown must not
        // wait for it. The bound is that wait, not a speed: a loaded machine took 3.4 s to stop.
        await until(async () => (await metric(server, 'backup_failed_tries')) >= 7, 'the worker to back off');
        const stopping = Date.now();
        worker.child.kill('SIGTERM');
        const exit = await worker.exited;
        assert.equal(exit.code, 0, worker.stderr());
        assert.ok(Date.now() - stopping < 10_000, `stopped in ${Date.now() - stopping} ms, as if it had waited for the next try`);
      } finally {
        await store.mend();
      }
    } finally {
      await stopWorker(worker);
    }
    await backUpWithWorker(server, key, expected);
  });

  it('bantu backup retry-dead-letters backs up each dead letter whose cause is fixed and names those still failing; it works on a stopped data dir too', async () => {
    const [vanished, tampered] = poisoned;
    assert.ok(vanished && tampered, 'the poison tests ran');
    assert.equal((await status()).dead_letters, 2);
    const cli = (env: Record<string, string | undefined>) => runCli(['backup', 'retry-dead-letters'], { BANTU_DATA_DIR: server.dataDir, BANTU_LOG_LEVEL: 'error', ...env });

    // The vanished blob is found again; the tampered one is still wrong.
    await fs.writeFile(filesBlob(server, vanished.sha256), vanished.content);
    const first = cli({ DATABASE_URL: server.app.databases.controlUrl });
    assert.equal((await first.exited).code, 1, first.stdout() + first.stderr());
    const out = first.stdout();
    assert.match(out, new RegExp(`^BACKED UP environment=test tenant=\\S+ event=evt_\\d+ type=File_create file=${vanished.id} version=1$`, 'm'));
    assert.match(out, new RegExp(`^STILL FAILING environment=test tenant=\\S+ event=evt_\\d+ type=File_create file=${tampered.id} version=1 attempts=3: checksum mismatch`, 'm'));
    assert.match(out, /^retried 2 dead letters: 1 backed up, 1 remain$/m);
    const entries = await history(server, key, vanished.id);
    assert.deepEqual(entries.map((e) => [e.version, e.event, e.sha256]), [[1, 'File_create', vanished.sha256]]);
    assert.equal((await server.request('GET', `/v1/files/${vanished.id}/versions/1/content`, { auth: key })).text, vanished.content);
    assert.equal((await status()).dead_letters, 1);
    assert.equal(await metric(server, 'backup_dead_letters'), 1);

    // Mended too; this time with the server stopped: the tool starts the data dir's PostgreSQL itself.
    await fs.writeFile(filesBlob(server, tampered.sha256), tampered.content);
    await server.app.close();
    const external = process.env.BANTU_TEST_DATABASE_URL ? { DATABASE_URL: server.app.databases.controlUrl } : {};
    const second = cli(external);
    assert.equal((await second.exited).code, 0, second.stdout() + second.stderr());
    assert.match(second.stdout(), new RegExp(`^BACKED UP environment=test tenant=\\S+ event=evt_\\d+ type=File_create file=${tampered.id} version=1$`, 'm'));
    assert.match(second.stdout(), /^retried 1 dead letters: 1 backed up, 0 remain$/m);
    // Nothing left to retry.
    const third = cli(external);
    assert.equal((await third.exited).code, 0, third.stdout() + third.stderr());
    assert.match(third.stdout(), /^retried 0 dead letters: 0 backed up, 0 remain$/m);
  });
});

describe('usage while the backup worker runs elsewhere (BANTU_BACKUP_WORKER=off)', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ BANTU_BACKUP_WORKER: 'off' });
  });
  after(async () => server?.close());

  it('reports what the backup store holds: nothing until `bantu serve backup` records the versions, then their bytes', async () => {
    const key = server.keys.test.account_key;
    assert.equal((await uploadRaw(server, key, 'abcdef', { name: 'a.txt' })).status, 201);
    assert.equal((await uploadRaw(server, key, 'xyz', { name: 'b.txt' })).status, 201);
    const waiting = await server.request('GET', '/v1/usage', { auth: key });
    assert.equal(waiting.json.bytes, 9);
    assert.equal(waiting.json.backup_bytes, 0, 'no worker has copied anything yet');

    const worker = startWorker(server);
    try {
      await workerReady(worker);
      const status = await backedUp(server, key, 2);
      assert.equal(status.bytes, 9);
    } finally {
      await stopWorker(worker);
    }
    const held = await server.request('GET', '/v1/usage', { auth: key });
    assert.equal(held.json.backup_bytes, 9);
  });
});
