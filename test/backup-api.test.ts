import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Static } from '@sinclair/typebox';
import { sql } from 'kysely';
import type { VersionEntry } from '../src/services/backup/http/backup.schemas.ts';
import { backupBlobExists, createTenant, sha256, until, uploadRaw } from './helpers/files.ts';
import { startServer, type TestServer } from './helpers/server.ts';
import { inProcessOnly } from './helpers/shape.ts';

/** Every history entry of a file, following next_cursor. */
async function allVersions(server: TestServer, auth: string, id: string) {
  const entries: Array<Static<typeof VersionEntry>> = [];
  let cursor: string | null = null;
  do {
    const response = await server.request('GET', `/v1/files/${id}/versions?limit=20${cursor ? `&cursor=${cursor}` : ''}`, { auth });
    assert.equal(response.status, 200, response.text);
    entries.push(...response.json.data);
    cursor = response.json.next_cursor;
  } while (cursor);
  return entries;
}

async function waitForVersions(server: TestServer, auth: string, id: string, count: number) {
  await until(async () => {
    // 404 until the first entry of the file is backed up.
    const first = await server.request('GET', `/v1/files/${id}/versions?limit=1`, { auth });
    return first.status === 200 && (await allVersions(server, auth, id)).length >= count;
  }, `${count} backed-up entries of ${id}`);
  return allVersions(server, auth, id);
}

function replace(server: TestServer, auth: string, id: string, content: string | Buffer, contentType = 'application/octet-stream') {
  return server.request('PUT', `/v1/files/${id}/content`, { auth, body: content, headers: { 'content-type': contentType } });
}

describe('backup: versions API', () => {
  let server: TestServer;
  let key: string;
  before(async () => {
    server = await startServer();
    key = server.keys.test.account_key;
  });
  after(async () => server?.close());

  it('50 rapid updates of one file: 51 versions listed oldest first, each downloadable and byte-identical', async () => {
    const uploaded: Buffer[] = [Buffer.from('version 1 of the report')];
    const created = await uploadRaw(server, key, uploaded[0] as Buffer, { name: 'rapid.txt', contentType: 'text/plain' });
    assert.equal(created.status, 201, created.text);
    const id = created.json.id;
    for (let i = 2; i <= 51; i++) {
      // Every other version repeats an earlier content: content-addressing stores it once, history keeps both.
      const content = i % 10 === 0 ? (uploaded[0] as Buffer) : Buffer.from(`version ${i} of the report ${'x'.repeat(i)}`);
      uploaded.push(content);
      const response = await replace(server, key, id, content, 'text/plain');
      assert.equal(response.status, 200, response.text);
      assert.equal(response.json.version, i);
    }
    const versions = await waitForVersions(server, key, id, 51);
    assert.equal(versions.length, 51);
    assert.deepEqual(versions.map((v) => v.version), Array.from({ length: 51 }, (_, i) => i + 1));
    assert.deepEqual(versions.map((v) => v.event), ['File_create', ...Array(50).fill('File_update')]);
    for (const [i, entry] of versions.entries()) {
      const expected = uploaded[i] as Buffer;
      assert.equal(entry.sha256, sha256(expected));
      assert.equal(entry.size, expected.length);
      assert.equal(entry.name, 'rapid.txt');
      assert.equal(entry.content_type, 'text/plain');
      assert.ok(Date.parse(entry.backed_up_at) >= Date.parse(entry.created_at) - 1000);
      const content = await server.request('GET', `/v1/files/${id}/versions/${entry.version}/content`, { auth: key });
      assert.equal(content.status, 200);
      assert.equal(content.text, expected.toString(), `version ${entry.version}`);
      assert.equal(content.headers.etag, `"${entry.sha256}"`);
      assert.equal(content.headers['content-length'], String(expected.length));
      assert.equal(content.headers['content-type'], 'text/plain');
    }
    const ranged = await server.request('GET', `/v1/files/${id}/versions/2/content`, { auth: key, headers: { range: 'bytes=0-6' } });
    assert.equal(ranged.status, 206);
    assert.equal(ranged.text, 'version');
    const cached = await server.request('GET', `/v1/files/${id}/versions/2/content`, { auth: key, headers: { 'if-none-match': `"${versions[1]?.sha256}"` } });
    assert.equal(cached.status, 304);
    assert.equal((await server.request('GET', `/v1/files/${id}/versions/52/content`, { auth: key })).status, 404);
  });

  it('delete then restore: the file is back under its id with a new version and the old content', async () => {
    const created = await uploadRaw(server, key, 'first draft', { name: 'contract.txt', path: '/legal', contentType: 'text/plain' });
    const id = created.json.id;
    assert.equal((await replace(server, key, id, 'second draft', 'text/plain')).status, 200);
    assert.equal((await server.request('DELETE', `/v1/files/${id}`, { auth: key })).status, 204);
    assert.equal((await server.request('GET', `/v1/files/${id}`, { auth: key })).status, 404);

    const history = await waitForVersions(server, key, id, 3);
    assert.deepEqual(history.map((v) => [v.version, v.event]), [[1, 'File_create'], [2, 'File_update'], [2, 'File_delete']]);

    const restored = await server.request('POST', `/v1/files/${id}/versions/1/restore`, { auth: key });
    assert.equal(restored.status, 200, restored.text);
    assert.equal(restored.json.id, id);
    assert.equal(restored.json.version, 3);
    assert.equal(restored.json.sha256, sha256('first draft'));
    assert.equal(restored.json.path, '/legal');
    const content = await server.request('GET', `/v1/files/${id}/content`, { auth: key });
    assert.equal(content.status, 200);
    assert.equal(content.text, 'first draft');
    const listed = await server.request('GET', '/v1/files?path=/legal', { auth: key });
    assert.deepEqual(listed.json.data.map((f: { id: string }) => f.id), [id]);

    // The restore is a change like any other: the backup records it, as a file that came back.
    const after = await waitForVersions(server, key, id, 4);
    assert.deepEqual(after[3] && [after[3].version, after[3].event, after[3].sha256], [3, 'File_create', sha256('first draft')]);

    // A live file restored to an earlier version gets a File_update.
    const again = await server.request('POST', `/v1/files/${id}/versions/2/restore`, { auth: key });
    assert.equal(again.status, 200);
    assert.equal(again.json.version, 4);
    assert.equal((await server.request('GET', `/v1/files/${id}/content`, { auth: key })).text, 'second draft');
    const final = await waitForVersions(server, key, id, 5);
    assert.equal(final[4]?.event, 'File_update');
  });

  it('a restore whose name is taken by another live file answers 409 file_exists', async () => {
    const a = (await uploadRaw(server, key, 'a', { name: 'taken.txt', path: '/clash' })).json.id;
    assert.equal((await server.request('DELETE', `/v1/files/${a}`, { auth: key })).status, 204);
    await uploadRaw(server, key, 'b', { name: 'taken.txt', path: '/clash' });
    await waitForVersions(server, key, a, 2);
    const response = await server.request('POST', `/v1/files/${a}/versions/1/restore`, { auth: key });
    assert.equal(response.status, 409);
    assert.equal(response.json.code, 'file_exists');
  });

  it('same visibility as files: own files for users, all for admins and account keys, 404 for the rest, scopes for application keys', async () => {
    const app = server.keys.test.application_key;
    const register = async (email: string) => {
      const response = await server.request('POST', '/v1/auth/register', { auth: app, json: { email, password: 'correct horse battery', name: email } });
      assert.equal(response.status, 201, response.text);
      return response.json as { access_token: string; user: { id: string } };
    };
    const alice = await register('alice.backup@example.com');
    const bob = await register('bob.backup@example.com');
    const mine = (await uploadRaw(server, alice.access_token, 'alice private', { name: 'alice.txt' })).json.id;
    await server.request('DELETE', `/v1/files/${mine}`, { auth: alice.access_token });
    await waitForVersions(server, key, mine, 2);

    // The owner still sees the history of a deleted file; another user does not.
    assert.equal((await allVersions(server, alice.access_token, mine)).length, 2);
    for (const path of [`/v1/files/${mine}/versions`, `/v1/files/${mine}/versions/1/content`]) {
      assert.equal((await server.request('GET', path, { auth: bob.access_token })).status, 404, path);
    }
    assert.equal((await server.request('POST', `/v1/files/${mine}/versions/1/restore`, { auth: bob.access_token })).status, 404);

    const other = await createTenant(server, 'Backup Other Co');
    assert.equal((await server.request('GET', `/v1/files/${mine}/versions`, { auth: other.test.account_key })).status, 404);
    assert.equal((await server.request('GET', `/v1/files/${mine}/versions`, { auth: server.keys.live.account_key })).status, 404);
    assert.equal((await server.request('GET', `/v1/files/${mine}/versions`, { auth: server.operatorToken })).status, 403);

    assert.equal((await server.request('GET', `/v1/files/${mine}/versions`, { auth: app })).status, 403, 'no files:read');
    const reader = (await server.request('POST', '/v1/keys', { auth: key, json: { kind: 'application', name: 'backup reader', scopes: ['files:read'] } })).json.key;
    assert.equal((await server.request('GET', `/v1/files/${mine}/versions`, { auth: reader })).status, 200);
    assert.equal((await server.request('POST', `/v1/files/${mine}/versions/1/restore`, { auth: reader })).status, 403, 'no files:write');

    // The owner may restore their own deleted file.
    const back = await server.request('POST', `/v1/files/${mine}/versions/1/restore`, { auth: alice.access_token });
    assert.equal(back.status, 200, back.text);
    assert.equal(back.json.owner_id, alice.user.id);
    assert.equal((await server.request('GET', '/v1/backups/status', { auth: alice.access_token })).status, 403);
  });

  it('status counts the tenant\'s versions and bytes; retention policy: default keep all, settable by an account key only', async () => {
    await until(async () => (await server.request('GET', '/v1/backups/status', { auth: key })).json.pending_events === 0, 'an idle backup');
    const status = await server.request('GET', '/v1/backups/status', { auth: key });
    assert.equal(status.status, 200, status.text);
    assert.ok(status.json.versions >= 51 + 5);
    assert.ok(status.json.bytes > 0);
    assert.equal(status.json.dead_letters, 0);
    assert.ok(status.json.last_backup_at);
    const otherTenant = await createTenant(server, 'Backup Status Co');
    const empty = await server.request('GET', '/v1/backups/status', { auth: otherTenant.test.account_key });
    assert.deepEqual([empty.json.versions, empty.json.bytes, empty.json.last_backup_at], [0, 0, null]);

    assert.deepEqual((await server.request('GET', '/v1/backups/policy', { auth: key })).json, { keep: 'all' });
    const set = await server.request('PUT', '/v1/backups/policy', { auth: key, json: { keep_last: 3 } });
    assert.equal(set.status, 200, set.text);
    assert.deepEqual(set.json, { keep_last: 3 });
    assert.deepEqual((await server.request('GET', '/v1/backups/policy', { auth: key })).json, { keep_last: 3 });
    assert.deepEqual((await server.request('GET', '/v1/backups/policy', { auth: otherTenant.test.account_key })).json, { keep: 'all' });
    for (const body of [{ keep_last: 0 }, { keep_days: 'x' }, { keep: 'some' }, { keep_last: 2, keep_days: 3 }, { keep_last: 2, extra: true }]) {
      const bad = await server.request('PUT', '/v1/backups/policy', { auth: key, json: body });
      assert.equal(bad.status, 422, JSON.stringify(body));
    }
    const admin = await server.request('PUT', '/v1/backups/policy', { auth: server.keys.test.application_key, json: { keep: 'all' } });
    assert.equal(admin.status, 403);
    assert.equal((await server.request('PUT', '/v1/backups/policy', { auth: key, json: { keep: 'all' } })).json.keep, 'all');
  });

  it('retention keep_last N: the sweep keeps the last N versions of each file, never the current one or a deleted file\'s last, and drops unused blobs', { skip: inProcessOnly('runs the sweep through app.backup in-process') }, async () => {
    const tenant = await createTenant(server, 'Retention Co');
    const acc = tenant.test.account_key;
    const id = (await uploadRaw(server, acc, 'retention v1', { name: 'r.txt' })).json.id;
    for (let i = 2; i <= 5; i++) await replace(server, acc, id, `retention v${i}`);
    const gone = (await uploadRaw(server, acc, 'deleted soon', { name: 'd.txt' })).json.id;
    await replace(server, acc, gone, 'deleted soon v2');
    await server.request('DELETE', `/v1/files/${gone}`, { auth: acc });
    await waitForVersions(server, acc, id, 5);
    await waitForVersions(server, acc, gone, 3);

    assert.equal((await server.request('PUT', '/v1/backups/policy', { auth: acc, json: { keep_last: 1 } })).status, 200);
    const swept = await server.app.backup.sweep();
    assert.ok(swept.entries >= 5 && swept.blobs >= 5, JSON.stringify(swept));
    assert.deepEqual((await allVersions(server, acc, id)).map((v) => v.version), [5]);
    assert.deepEqual((await allVersions(server, acc, gone)).map((v) => [v.version, v.event]), [[2, 'File_update'], [2, 'File_delete']]);
    assert.equal((await server.request('GET', `/v1/files/${id}/versions/5/content`, { auth: acc })).text, 'retention v5');
    assert.equal((await server.request('GET', `/v1/files/${gone}/versions/2/content`, { auth: acc })).text, 'deleted soon v2');
    assert.equal((await server.request('GET', `/v1/files/${id}/versions/1/content`, { auth: acc })).status, 404);
    // Another tenant's history under "keep all" is untouched.
    assert.ok((await server.request('GET', '/v1/backups/status', { auth: key })).json.versions >= 56);
  });

  it('retention keep_days D: the sweep removes versions made more than D days ago, never a file\'s current version nor a deleted file\'s last', { skip: inProcessOnly('runs the sweep through app.backup in-process') }, async () => {
    const tenant = await createTenant(server, 'Retention Days Co');
    const acc = tenant.test.account_key;
    const upload = async (name: string, contents: string[]) => {
      const id = (await uploadRaw(server, acc, contents[0] as string, { name })).json.id as string;
      for (const content of contents.slice(1)) assert.equal((await replace(server, acc, id, content)).status, 200);
      return id;
    };
    // Every version old, the current one included.
    const old = await upload('old.txt', ['old v1', 'old v2', 'old v3']);
    // An old version, a recent one, the current one.
    const mixed = await upload('mixed.txt', ['mixed v1', 'mixed v2', 'mixed v3']);
    // Deleted long ago: its last version and the delete entry are all that is left of it.
    const gone = await upload('gone.txt', ['gone v1', 'gone v2']);
    assert.equal((await server.request('DELETE', `/v1/files/${gone}`, { auth: acc })).status, 204);
    for (const id of [old, mixed, gone]) await waitForVersions(server, acc, id, 3);

    // No clock to inject: the versions are made older in the test server's own database.
    const db = server.app.databases.environments.test;
    const age = (id: string, versions: number[], days: number) =>
      sql`update backup.version set created_at = now() - make_interval(days => ${days})
          where file_id = ${id} and version in (${sql.join(versions)})`.execute(db);
    await age(old, [1, 2, 3], 10);
    await age(mixed, [1], 10);
    await age(mixed, [2], 2);
    await age(gone, [1, 2], 10);

    assert.equal((await server.request('PUT', '/v1/backups/policy', { auth: acc, json: { keep_days: 5 } })).status, 200);
    const swept = await server.app.backup.sweep();
    assert.ok(swept.entries >= 4 && swept.blobs >= 4, JSON.stringify(swept));
    assert.deepEqual((await allVersions(server, acc, old)).map((v) => v.version), [3], 'only the current version, however old');
    assert.deepEqual((await allVersions(server, acc, mixed)).map((v) => v.version), [2, 3]);
    assert.deepEqual((await allVersions(server, acc, gone)).map((v) => [v.version, v.event]), [[2, 'File_update'], [2, 'File_delete']]);
    assert.equal((await server.request('GET', `/v1/files/${old}/versions/3/content`, { auth: acc })).text, 'old v3');
    assert.equal((await server.request('GET', `/v1/files/${mixed}/versions/2/content`, { auth: acc })).text, 'mixed v2');
    assert.equal((await server.request('GET', `/v1/files/${gone}/versions/2/content`, { auth: acc })).text, 'gone v2');
    assert.equal((await server.request('GET', `/v1/files/${old}/versions/1/content`, { auth: acc })).status, 404);
    // The bytes no version uses any more left the backup store.
    for (const content of ['old v1', 'old v2', 'mixed v1', 'gone v1']) {
      const digest = sha256(content);
      assert.equal(await backupBlobExists(server, 'test', digest), false, content);
    }
    // A second sweep finds nothing more to remove.
    assert.deepEqual(await server.app.backup.sweep(), { entries: 0, blobs: 0 });
  });

  it('exposes backup metrics', { skip: inProcessOnly("the backup's metrics are on the backup process's own /metrics, not the gateway's") }, async () => {
    const metrics = await server.request('GET', '/metrics');
    for (const name of ['backup_lag_events', 'backup_lag_seconds', 'backup_versions', 'backup_bytes', 'backup_dead_letters', 'backup_failed_tries', 'backup_record_lag_seconds']) {
      assert.match(metrics.text, new RegExp(`^${name}`, 'm'), name);
    }
    assert.match(metrics.text, /^backup_dead_letters\{environment="test",service="bantu"\} 0$/m);
  });
});
