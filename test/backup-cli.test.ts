import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { runCli } from './helpers/cli.ts';
import { rotBackupBlob, until, uploadRaw } from './helpers/files.ts';
import { startServer, type TestServer } from './helpers/server.ts';
import { inProcessOnly } from './helpers/shape.ts';

/** The real CLI against a test server's database (external, or the server's embedded one) and data dir. */
function cli(server: TestServer, args: string[]) {
  return runCli(args, { DATABASE_URL: server.app.databases.controlUrl, BANTU_DATA_DIR: server.dataDir, BANTU_LOG_LEVEL: 'error', ...server.s3?.env });
}

async function backedUp(server: TestServer, key: string): Promise<void> {
  await until(async () => (await server.request('GET', '/v1/backups/status', { auth: key })).json.pending_events === 0, 'the backup to catch up');
}

const pause = () => new Promise((resolve) => setTimeout(resolve, 30));

describe('bantu backup verify', { skip: inProcessOnly('stops the server with app.close() and verifies on its data dir alone') }, () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(async () => server?.close());

  it('finds a flipped byte in a stored version and exits non-zero naming it (server stopped)', async () => {
    const key = server.keys.test.account_key;
    const good = (await uploadRaw(server, key, 'intact content', { name: 'good.txt' })).json;
    const bad = (await uploadRaw(server, key, 'content that will rot on disk', { name: 'bad.txt' })).json;
    const bad2 = (await server.request('PUT', `/v1/files/${bad.id}/content`, { auth: key, body: 'second version, also rotting', headers: { 'content-type': 'text/plain' } })).json;
    await backedUp(server, key);
    const clean = cli(server, ['backup', 'verify']);
    assert.equal((await clean.exited).code, 0, clean.stdout() + clean.stderr());
    assert.match(clean.stdout(), /verified 3 blobs holding 3 versions: all intact/);

    for (const sha of [bad.sha256, bad2.sha256]) await rotBackupBlob(server, 'test', sha, 3);
    // The server is stopped: without DATABASE_URL the tool starts the data dir's embedded PostgreSQL itself.
    await server.app.close();
    const external = process.env.BANTU_TEST_DATABASE_URL ? { DATABASE_URL: server.app.databases.controlUrl } : {};
    const verify = runCli(['backup', 'verify'], { BANTU_DATA_DIR: server.dataDir, BANTU_LOG_LEVEL: 'error', ...external, ...server.s3?.env });
    const exit = await verify.exited;
    assert.equal(exit.code, 1, verify.stdout() + verify.stderr());
    const out = verify.stdout();
    assert.match(out, new RegExp(`DAMAGED environment=test tenant=\\S+ file=${bad.id} version=1 event=File_create sha256=${bad.sha256}: checksum mismatch`));
    assert.match(out, new RegExp(`DAMAGED environment=test tenant=\\S+ file=${bad.id} version=2 event=File_update sha256=${bad2.sha256}: checksum mismatch`));
    assert.doesNotMatch(out, new RegExp(good.id));
    assert.match(out, /2 blobs damaged \(2 versions\)/);
  });
});

describe('bantu backup restore', () => {
  let server: TestServer;
  let key: string;
  let tenantId: string;
  before(async () => {
    server = await startServer();
    const created = await server.request('POST', '/v1/tenants', { auth: server.operatorToken, json: { name: 'Point In Time Co' } });
    tenantId = created.json.id;
    key = created.json.keys.test.account_key;
  });
  after(async () => server?.close());

  const put = (id: string, content: string) => server.request('PUT', `/v1/files/${id}/content`, { auth: key, body: content, headers: { 'content-type': 'text/plain' } });
  const content = async (id: string) => {
    const response = await server.request('GET', `/v1/files/${id}/content`, { auth: key });
    return response.status === 200 ? response.text : response.status;
  };

  it('--as-of restores the tenant exactly to its state then: later files removed, deleted ones back, changed ones with their old content', async () => {
    const upload = async (name: string, text: string) => (await uploadRaw(server, key, text, { name, path: '/pit', contentType: 'text/plain' })).json.id as string;
    const changed = await upload('changed.txt', 'changed v1');
    assert.equal((await put(changed, 'changed v2')).status, 200);
    const deletedLater = await upload('deleted-later.txt', 'deleted later v1');
    const deletedBefore = await upload('deleted-before.txt', 'deleted before v1');
    assert.equal((await server.request('DELETE', `/v1/files/${deletedBefore}`, { auth: key })).status, 204);
    const renamed = await upload('renamed.txt', 'renamed v1');
    const untouched = await upload('untouched.txt', 'untouched v1');
    await backedUp(server, key);

    await pause();
    const asOf = new Date().toISOString();
    await pause();

    assert.equal((await put(changed, 'changed v3 after')).status, 200);
    assert.equal((await server.request('DELETE', `/v1/files/${deletedLater}`, { auth: key })).status, 204);
    assert.equal((await server.request('PATCH', `/v1/files/${renamed}`, { auth: key, json: { name: 'renamed-after.txt', path: '/elsewhere' } })).status, 200);
    const createdAfter = await upload('created-after.txt', 'created after');
    await backedUp(server, key);

    const restore = cli(server, ['backup', 'restore', '--tenant', tenantId, '--env', 'test', '--as-of', asOf]);
    const exit = await restore.exited;
    assert.equal(exit.code, 0, restore.stdout() + restore.stderr());
    assert.match(restore.stdout(), /3 restored, 1 removed, 1 unchanged/);
    // Not a terminal: plain progress lines on stderr.
    assert.match(restore.stderr(), /^restore: 4\/4 /m);

    const live = (await server.request('GET', '/v1/files?limit=200', { auth: key })).json.data as Array<{ id: string; name: string; path: string }>;
    assert.deepEqual(
      live.map((f) => [f.id, f.path, f.name]).sort(),
      [
        [changed, '/pit', 'changed.txt'],
        [deletedLater, '/pit', 'deleted-later.txt'],
        [renamed, '/pit', 'renamed.txt'],
        [untouched, '/pit', 'untouched.txt'],
      ].sort(),
    );
    assert.equal(await content(changed), 'changed v2');
    assert.equal(await content(deletedLater), 'deleted later v1');
    assert.equal(await content(renamed), 'renamed v1');
    assert.equal(await content(untouched), 'untouched v1');
    assert.equal(await content(deletedBefore), 404);
    assert.equal(await content(createdAfter), 404);
    // Restores are new versions, recorded by the backup like any change: history is never rewritten.
    await backedUp(server, key);
    const history = (await server.request('GET', `/v1/files/${changed}/versions`, { auth: key })).json.data;
    assert.deepEqual(history.map((v: { version: number }) => v.version), [1, 2, 3, 4]);
  });

  it('--file ID [--version N] restores one file; unknown files and bad arguments fail', async () => {
    const id = (await uploadRaw(server, key, 'one v1', { name: 'one.txt', contentType: 'text/plain' })).json.id;
    await put(id, 'one v2');
    await server.request('DELETE', `/v1/files/${id}`, { auth: key });
    await backedUp(server, key);

    const latest = cli(server, ['backup', 'restore', '--tenant', tenantId, '--env', 'test', '--file', id]);
    assert.equal((await latest.exited).code, 0, latest.stderr());
    assert.match(latest.stdout(), new RegExp(`restored ${id} \\(one.txt\\) from version 2: now version 3`));
    assert.equal(await content(id), 'one v2');

    const first = cli(server, ['backup', 'restore', '--tenant', tenantId, '--env', 'test', '--file', id, '--version', '1']);
    assert.equal((await first.exited).code, 0, first.stderr());
    assert.equal(await content(id), 'one v1');

    const otherEnv = cli(server, ['backup', 'restore', '--tenant', tenantId, '--env', 'live', '--file', id]);
    assert.equal((await otherEnv.exited).code, 1);
    assert.match(otherEnv.stderr(), /not_found/);

    const both = cli(server, ['backup', 'restore', '--tenant', tenantId, '--env', 'test', '--file', id, '--as-of', new Date().toISOString()]);
    assert.equal((await both.exited).code, 2);
    const badEnv = cli(server, ['backup', 'restore', '--tenant', tenantId, '--env', 'prod', '--file', id]);
    assert.equal((await badEnv.exited).code, 2);
  });
});
