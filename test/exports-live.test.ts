import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import v8 from 'node:v8';
import vm from 'node:vm';
import { sql } from 'kysely';
import { request } from 'undici';
import { withTenant } from '../src/adapters/db/pg.ts';
import type { TenantPrincipal } from '../src/core/principal.ts';
import type { FilesExportPort } from '../src/core/service-ports.ts';
import { openLiveExport } from '../src/services/exports/domain/live-export.ts';
import { FilesExportSource } from '../src/services/files/domain/export-source.ts';
import { insertFile } from '../src/services/files/repo/files.repo.ts';
import { createTenant, sha256, uploadRaw } from './helpers/files.ts';
import { startServer, type TestServer } from './helpers/server.ts';
import { inProcessOnly } from './helpers/shape.ts';

/** `GET /v1/exports/files`: the visible File objects now, as a JSON array or NDJSON. */

const exportFiles = (server: TestServer, auth: string, options: { ndjson?: boolean; query?: string } = {}) =>
  server.request('GET', `/v1/exports/files${options.query ? `?${options.query}` : ''}`, {
    auth,
    headers: options.ndjson ? { accept: 'application/x-ndjson' } : {},
  });

const ndjsonLines = (text: string) =>
  text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line));

const idsOf = (files: Array<{ id: string }>) => files.map((f) => f.id);

describe('live export', () => {
  let server: TestServer;
  let key: string;
  const uploaded: Array<{ id: string } & Record<string, unknown>> = [];
  before(async () => {
    server = await startServer();
    key = server.keys.test.account_key;
    for (const [name, path] of [
      ['a.txt', '/'],
      ['q1.pdf', '/reports'],
      ['q2.pdf', '/reports/2026'],
      ['other.txt', '/reports-old'],
      ['100%_done.txt', '/re_orts'],
    ]) {
      const response = await uploadRaw(server, key, `content of ${name}`, { name, path, contentType: 'text/plain' });
      assert.equal(response.status, 201, response.text);
      uploaded.push(response.json);
    }
  });
  after(async () => server?.close());

  it('streams a JSON array of the File objects, oldest first, exactly as the files API shows them', async () => {
    const response = await exportFiles(server, key);
    assert.equal(response.status, 200, response.text);
    assert.match(String(response.headers['content-type']), /^application\/json; charset=utf-8/);
    assert.ok(Array.isArray(response.json));
    assert.deepEqual(response.json, uploaded, 'every file, in upload (id) order, same objects');
    for (const file of uploaded) {
      const one = await server.request('GET', `/v1/files/${file.id}`, { auth: key });
      assert.deepEqual(response.json.find((f: { id: string }) => f.id === file.id), one.json);
    }
  });

  it('streams NDJSON, one File object per line, with Accept: application/x-ndjson', async () => {
    const response = await exportFiles(server, key, { ndjson: true });
    assert.equal(response.status, 200);
    assert.match(String(response.headers['content-type']), /^application\/x-ndjson/);
    assert.ok(response.text.endsWith('\n'));
    assert.equal(response.text.split('\n').length, uploaded.length + 1);
    assert.deepEqual(ndjsonLines(response.text), uploaded);
    const refused = await exportFiles(server, key, { query: '' });
    assert.deepEqual(refused.json, uploaded);
    const q0 = await server.request('GET', '/v1/exports/files', { auth: key, headers: { accept: 'application/x-ndjson;q=0, application/json' } });
    assert.ok(Array.isArray(q0.json), 'q=0 refuses NDJSON: JSON then');
  });

  it('filters by folder prefix: the folder and its subfolders, not a sibling sharing the prefix; LIKE characters are literal', async () => {
    const reports = await exportFiles(server, key, { query: 'path=/reports' });
    assert.deepEqual(
      reports.json.map((f: { name: string }) => f.name),
      ['q1.pdf', 'q2.pdf'],
    );
    const trailing = await exportFiles(server, key, { query: 'path=reports/', ndjson: true });
    assert.deepEqual(ndjsonLines(trailing.text).map((f) => f.name), ['q1.pdf', 'q2.pdf'], 'normalised like every path');
    const deep = await exportFiles(server, key, { query: 'path=/reports/2026' });
    assert.deepEqual(deep.json.map((f: { name: string }) => f.name), ['q2.pdf']);
    const underscore = await exportFiles(server, key, { query: `path=${encodeURIComponent('/re_orts')}` });
    assert.deepEqual(underscore.json.map((f: { name: string }) => f.name), ['100%_done.txt'], '_ is not a wildcard');
    const root = await exportFiles(server, key, { query: 'path=/' });
    assert.equal(root.json.length, uploaded.length);
    const none = await exportFiles(server, key, { query: 'path=/nothing/here' });
    assert.equal(none.status, 200);
    assert.deepEqual(none.json, []);
    const noneNd = await exportFiles(server, key, { query: 'path=/nothing/here', ndjson: true });
    assert.equal(noneNd.text, '');
  });

  it('answers bad input with problem+json, before any byte of the export', async () => {
    for (const query of ['path=/a/../b', `path=${encodeURIComponent('/a\u0001b')}`, 'path=/a\\b', 'unknown=1', `path=${'a'.repeat(3000)}`]) {
      const response = await exportFiles(server, key, { query });
      assert.equal(response.status, 422, `${query}: ${response.text}`);
      assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
      assert.equal(response.json.code, 'validation_failed');
    }
    assert.equal((await server.request('GET', '/v1/exports/files')).status, 401);
    assert.equal((await exportFiles(server, server.operatorToken)).status, 403);
    const noScope = await exportFiles(server, server.keys.test.application_key);
    assert.equal(noScope.status, 403);
    assert.equal(noScope.json.code, 'forbidden');
  });
});

describe('live export visibility', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(async () => server?.close());

  it('gives a user their own files, an account key or admin every file, and another tenant or environment none', async () => {
    const app = server.keys.test.application_key;
    const register = async (email: string) => {
      const response = await server.request('POST', '/v1/auth/register', { auth: app, json: { email, password: 'correct horse battery', name: email } });
      assert.equal(response.status, 201, response.text);
      return response.json.access_token as string;
    };
    const alice = await register('alice@example.com');
    const bob = await register('bob@example.com');
    const aliceFile = (await uploadRaw(server, alice, 'alice', { name: 'mine.txt' })).json;
    const bobFile = (await uploadRaw(server, bob, 'bob', { name: 'mine.txt' })).json;
    const tenantFile = (await uploadRaw(server, server.keys.test.account_key, 'tenant', { name: 'shared.txt' })).json;
    const liveFile = (await uploadRaw(server, server.keys.live.account_key, 'live', { name: 'live.txt' })).json;

    assert.deepEqual(idsOf((await exportFiles(server, alice)).json), [aliceFile.id]);
    assert.deepEqual(idsOf(ndjsonLines((await exportFiles(server, bob, { ndjson: true })).text)), [bobFile.id]);
    assert.deepEqual(idsOf((await exportFiles(server, server.keys.test.account_key)).json), [aliceFile.id, bobFile.id, tenantFile.id]);
    assert.deepEqual(idsOf((await exportFiles(server, server.keys.live.account_key)).json), [liveFile.id], 'the live environment sees only its own');

    const admin = await server.request('POST', '/v1/users', {
      auth: server.keys.test.account_key,
      json: { email: 'admin@example.com', password: 'correct horse battery', name: 'Admin', role: 'admin' },
    });
    assert.equal(admin.status, 201, admin.text);
    const login = await server.request('POST', '/v1/auth/login', { auth: app, json: { email: 'admin@example.com', password: 'correct horse battery' } });
    assert.deepEqual(idsOf((await exportFiles(server, login.json.access_token)).json), [aliceFile.id, bobFile.id, tenantFile.id]);

    const reader = await server.request('POST', '/v1/keys', { auth: server.keys.test.account_key, json: { kind: 'application', name: 'reader', scopes: ['files:read'] } });
    assert.deepEqual(idsOf((await exportFiles(server, reader.json.key)).json), [aliceFile.id, bobFile.id, tenantFile.id], 'an app key with files:read acts for the tenant');

    const other = await createTenant(server, 'Other Co');
    assert.deepEqual((await exportFiles(server, other.test.account_key)).json, []);
    assert.equal((await exportFiles(server, other.live.account_key, { ndjson: true })).text, '');

    // A deleted file leaves the export.
    assert.equal((await server.request('DELETE', `/v1/files/${bobFile.id}`, { auth: bob })).status, 204);
    assert.deepEqual((await exportFiles(server, bob)).json, []);
  });
});

describe('live export of 10,000 files', { skip: inProcessOnly('inserts rows and reads the heap of the server process') }, () => {
  const COUNT = 10_000;
  let server: TestServer;
  let tenantId: string;
  before(async () => {
    server = await startServer();
    const first = await uploadRaw(server, server.keys.test.account_key, 'seed', { name: 'seed.txt', path: '/seed' });
    const db = server.app.databases.environments.test;
    tenantId = (await sql<{ tenant_id: string }>`select tenant_id from files.file where id = ${first.json.id}`.execute(db)).rows[0]?.tenant_id as string;
    // Metadata only, through the files repository's own insert (the bytes are not exported here).
    for (let batch = 0; batch < COUNT / 1000; batch++) {
      await withTenant(db, tenantId, async (trx) => {
        for (let i = 0; i < 1000; i++) {
          const n = batch * 1000 + i;
          await insertFile({
            id: `file_${String(n).padStart(8, '0')}`,
            tenant_id: tenantId,
            user_id: null,
            name: `document ${n} with a rather long name to make every row weigh something.txt`,
            path: `/bulk/${n % 100}`,
            size: n,
            content_type: 'text/plain',
            sha256: sha256(String(n)),
            version: 1,
            created_at: new Date(),
            updated_at: new Date(),
          }).execute(trx);
        }
      });
    }
    await sql`delete from files.file_version where file_id = ${first.json.id}`.execute(db);
    await sql`delete from files.file where id = ${first.json.id}`.execute(db);
  });
  after(async () => server?.close());

  it('streams them all through HTTPS with flat memory (heap measured after GC while reading)', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    gc();
    const baseline = process.memoryUsage().heapUsed;
    let peak = Number.NEGATIVE_INFINITY;
    const response = await request(`${server.url}/v1/exports/files`, {
      dispatcher: server.http,
      headers: { authorization: `Bearer ${server.keys.test.account_key}`, accept: 'application/x-ndjson' },
    });
    assert.equal(response.statusCode, 200);
    let rest = '';
    let count = 0;
    let last = '';
    for await (const chunk of response.body) {
      const lines = (rest + chunk.toString('utf8')).split('\n');
      rest = lines.pop() ?? '';
      for (const line of lines) {
        const file = JSON.parse(line);
        assert.ok(file.id > last, 'ascending, no repeats');
        last = file.id;
        count++;
        if (count % 1000 === 0) {
          gc();
          peak = Math.max(peak, process.memoryUsage().heapUsed - baseline);
        }
      }
    }
    assert.equal(rest, '');
    assert.equal(count, COUNT);
    // The export's text alone is about 2.8 MB; holding the files would take several times that.
    console.log(`live export of ${COUNT} files: heap growth ${(peak / 2 ** 20).toFixed(1)} MiB at most (after GC)`);
    assert.ok(peak < 8 * 2 ** 20, `heap grew by ${peak} bytes`);
  });

  it('reads the next page only when the previous one has been consumed (backpressure)', async () => {
    const source = new FilesExportSource({ databases: server.app.databases, blobs: {} as never });
    let scans = 0;
    const counted: FilesExportPort = {
      scan: (principal, query) => {
        scans++;
        return source.scan(principal, query);
      },
      versions: (principal, ids) => source.versions(principal, ids),
      findBlobs: (principal, refs) => source.findBlobs(principal, refs),
    };
    const principal: TenantPrincipal = { kind: 'account_key', keyId: 'key_test', tenantId, environment: 'test' };
    const stream = await openLiveExport(counted, principal, { format: 'json', pageSize: 100 });
    const first = await new Promise<Buffer>((resolve) => stream.once('data', (chunk: Buffer) => resolve(chunk)));
    stream.pause();
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.ok(first.length > 0);
    assert.ok(scans <= 3, `${scans} pages read while the reader holds on to the first`);
    let text = first.toString('utf8');
    stream.resume();
    for await (const chunk of stream) text += chunk.toString('utf8');
    const files = JSON.parse(text);
    assert.equal(files.length, COUNT);
    assert.equal(scans, COUNT / 100 + 1, 'one read per page, and one that finds the end');
  });
});
