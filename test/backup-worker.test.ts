import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type CliProcess, runCli } from './helpers/cli.ts';
import { sha256, uploadRaw, until } from './helpers/files.ts';
import { startServer, type TestServer } from './helpers/server.ts';

/**
 * The backup worker as its own process (`bantu serve backup`, distributed mode) against the
 * test server's database and data dir, while the server itself runs without a worker.
 */
function startWorker(server: TestServer, env: Record<string, string> = {}): CliProcess {
  return runCli(['serve', 'backup'], {
    DATABASE_URL: server.app.databases.controlUrl,
    BANTU_DATA_DIR: server.dataDir,
    BANTU_LOG_LEVEL: 'error',
    ...env,
  });
}

async function workerReady(worker: CliProcess): Promise<void> {
  await until(() => {
    if (worker.child.exitCode !== null) throw new Error(`backup worker exited ${worker.child.exitCode}: ${worker.stderr()}`);
    return worker.stdout().includes('backup worker is running');
  }, 'the backup worker to start');
}

async function stopWorker(worker: CliProcess): Promise<void> {
  if (worker.child.exitCode === null && worker.child.signalCode === null) worker.child.kill('SIGTERM');
  const exit = await worker.exited;
  assert.ok(exit.code === 0 || exit.signal !== null, `worker exit ${JSON.stringify(exit)}: ${worker.stderr()}`);
}

async function history(server: TestServer, auth: string, id: string): Promise<Array<Record<string, any>>> {
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

describe('backup worker as its own process', () => {
  let server: TestServer;
  let key: string;
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

    const worker = startWorker(server);
    try {
      await workerReady(worker);
      await assertAllBackedUp(server, key, expected);
    } finally {
      await stopWorker(worker);
    }
    const status = await server.request('GET', '/v1/backups/status', { auth: key });
    assert.equal(status.json.versions, 100);
    assert.equal(status.json.pending_events, 0);
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

    const last = startWorker(server);
    try {
      await workerReady(last);
      await assertAllBackedUp(server, key, expected);
    } finally {
      await stopWorker(last);
    }
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
    await fs.rm(path.join(server.dataDir, 'blobs', 'test', poison.json.sha256.slice(0, 2), poison.json.sha256));
    const healthy = await uploadRaw(server, key, 'healthy after the poison', { name: 'healthy.txt' });
    assert.equal(healthy.status, 201);
    const expected: Expected = new Map();
    expect(expected, healthy.json, 'File_create', 'healthy after the poison');
    const deadBefore = (await server.request('GET', '/v1/backups/status', { auth: key })).json.dead_letters;

    const worker = startWorker(server, { BANTU_BACKUP_MAX_ATTEMPTS: '2' });
    try {
      await workerReady(worker);
      await assertAllBackedUp(server, key, expected);
    } finally {
      await stopWorker(worker);
    }
    assert.deepEqual(await history(server, key, poison.json.id), [], 'nothing recorded for the poison event');
    const status = await server.request('GET', '/v1/backups/status', { auth: key });
    assert.equal(status.json.dead_letters, deadBefore + 1);
    const metrics = await server.request('GET', '/metrics');
    assert.match(metrics.text, new RegExp(`^backup_dead_letters\\{environment="test"\\} ${deadBefore + 1}$`, 'm'));
    assert.equal(sha256('healthy after the poison'), healthy.json.sha256);
  });
});
