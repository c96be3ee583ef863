import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { backedUp, eventsOf, multipartBody, sha256, uploadRaw } from './helpers/files.ts';
import type { TestServer } from './helpers/server.ts';
import { sharedWhenDistributed } from './helpers/shared-server.ts';

/** Both blocks take the default env: distributed, they share one deployment. */
const servers = sharedWhenDistributed();

describe('files API', () => {
  let server: TestServer;
  let key: string;
  before(async () => {
    server = await servers.start();
    key = server.keys.test.account_key;
  });
  after(async () => server?.close());

  it('uploads a raw body and answers 201 with the File object and a File_create event', async () => {
    const content = Buffer.from('hello, files');
    const response = await uploadRaw(server, key, content, { name: 'hello.txt', path: 'docs//2026/', contentType: 'text/plain; charset=utf-8' });
    assert.equal(response.status, 201, response.text);
    const file = response.json;
    assert.match(file.id, /^file_/);
    assert.equal(file.name, 'hello.txt');
    assert.equal(file.path, '/docs/2026');
    assert.equal(file.size, content.length);
    assert.equal(file.content_type, 'text/plain; charset=utf-8');
    assert.equal(file.sha256, sha256(content));
    assert.equal(file.version, 1);
    assert.equal(file.owner_id, null);
    assert.ok(Date.parse(file.created_at) && Date.parse(file.updated_at));
    const events = await eventsOf(server, file.id);
    assert.deepEqual(events.map((e) => e.type), ['File_create']);
    assert.deepEqual(events[0]?.data.file, file);
  });

  it('uploads multipart: part file, fields path and name, filename as the default name', async () => {
    const content = Buffer.from('multipart bytes');
    const { body, contentType } = multipartBody({ path: '/mp' }, { content, filename: 'from-part.bin', contentType: 'application/pdf' });
    const response = await server.request('POST', '/v1/files', { auth: key, body, headers: { 'content-type': contentType } });
    assert.equal(response.status, 201, response.text);
    assert.equal(response.json.name, 'from-part.bin');
    assert.equal(response.json.path, '/mp');
    assert.equal(response.json.content_type, 'application/pdf');
    assert.equal(response.json.sha256, sha256(content));

    const named = multipartBody({ name: 'chosen.pdf', path: '/mp' }, { content, filename: 'ignored.bin' });
    const second = await server.request('POST', '/v1/files', { auth: key, body: named.body, headers: { 'content-type': named.contentType } });
    assert.equal(second.status, 201, second.text);
    assert.equal(second.json.name, 'chosen.pdf');
  });

  it('uploads a JSON document as a raw body without parsing it, and an empty file', async () => {
    const json = Buffer.from(JSON.stringify({ big: 'x'.repeat(2 * 1024 * 1024) }));
    const response = await uploadRaw(server, key, json, { name: 'data.json', contentType: 'application/json' });
    assert.equal(response.status, 201, response.text);
    assert.equal(response.json.size, json.length);
    assert.equal(response.json.sha256, sha256(json));
    const empty = await uploadRaw(server, key, Buffer.alloc(0), { name: 'empty' });
    assert.equal(empty.status, 201, empty.text);
    assert.equal(empty.json.size, 0);
  });

  it('refuses a multipart body without a file part, and bad names and paths, with 422', async () => {
    const { body, contentType } = multipartBody({ name: 'x.txt' });
    const noFile = await server.request('POST', '/v1/files', { auth: key, body, headers: { 'content-type': contentType } });
    assert.equal(noFile.status, 422, noFile.text);
    assert.equal(noFile.json.code, 'validation_failed');
    assert.equal(noFile.json.errors[0].field, 'file');

    const badNames = ['a/b', 'a\\b', 'nul\u0000x', 'tab\tx', '.', '..', 'é'.repeat(128), ''];
    for (const name of badNames) {
      const response = await uploadRaw(server, key, 'x', { name });
      assert.equal(response.status, 422, `name ${JSON.stringify(name)}: ${response.text}`);
      assert.equal(response.json.errors[0].field, 'name');
    }
    const missing = await uploadRaw(server, key, 'x', {});
    assert.equal(missing.status, 422);
    for (const path of ['/a/../b', '..', `/${'a'.repeat(250)}/${'b'.repeat(250)}/${'c'.repeat(250)}/${'d'.repeat(250)}/${'e'.repeat(30)}`]) {
      const response = await uploadRaw(server, key, 'x', { name: 'ok.txt', path });
      assert.equal(response.status, 422, `path ${path}: ${response.text}`);
      assert.equal(response.json.errors[0].field, 'path');
    }
    const ok = await uploadRaw(server, key, 'x', { name: 'é'.repeat(127), path: '/' });
    assert.equal(ok.status, 201, '254 bytes of name is fine');
  });

  it('answers 409 file_exists for the same name in the same folder, and allows it elsewhere', async () => {
    const first = await uploadRaw(server, key, 'one', { name: 'same.txt', path: '/dup' });
    assert.equal(first.status, 201);
    const again = await uploadRaw(server, key, 'two', { name: 'same.txt', path: '/dup/' });
    assert.equal(again.status, 409);
    assert.equal(again.json.code, 'file_exists');
    const mp = multipartBody({ path: '/dup' }, { content: 'three', filename: 'same.txt' });
    const viaMultipart = await server.request('POST', '/v1/files', { auth: key, body: mp.body, headers: { 'content-type': mp.contentType } });
    assert.equal(viaMultipart.status, 409);
    const elsewhere = await uploadRaw(server, key, 'two', { name: 'same.txt', path: '/other' });
    assert.equal(elsewhere.status, 201);
    const otherOwner = await uploadRaw(server, key, 'two', { name: 'same.txt', path: '/dup', query: 'owner_id=usr_someone' });
    assert.equal(otherOwner.status, 201, 'another owner may use the name');
    assert.equal(otherOwner.json.owner_id, 'usr_someone');
  });

  it('gets metadata, and lists newest first with a cursor and a path filter', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const response = await uploadRaw(server, key, `list ${i}`, { name: `l${i}.txt`, path: '/list' });
      ids.push(response.json.id);
    }
    const one = await server.request('GET', `/v1/files/${ids[0]}`, { auth: key });
    assert.equal(one.status, 200);
    assert.equal(one.json.name, 'l0.txt');

    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const page: { status: number; json: { data: Array<{ id: string; path: string }>; next_cursor: string | null } } = await server.request(
        'GET',
        `/v1/files?path=/list/&limit=2${cursor ? `&cursor=${cursor}` : ''}`,
        { auth: key },
      );
      assert.equal(page.status, 200);
      assert.ok(page.json.data.length <= 2);
      for (const file of page.json.data) assert.equal(file.path, '/list');
      seen.push(...page.json.data.map((f) => f.id));
      cursor = page.json.next_cursor;
    } while (cursor);
    assert.deepEqual(seen, [...ids].reverse(), 'newest first, each once');

    const all = await server.request('GET', '/v1/files?limit=200', { auth: key });
    assert.ok(all.json.data.length > 5);
    assert.equal((await server.request('GET', '/v1/files?limit=0', { auth: key })).status, 422);
    assert.equal((await server.request('GET', '/v1/files?cursor=!!', { auth: key })).status, 422);
    assert.equal((await server.request('GET', '/v1/files/file_nope', { auth: key })).status, 404);
  });

  it('downloads with ETag, Last-Modified, Content-Disposition, nosniff; Range gives 206, 416; If-None-Match gives 304', async () => {
    const content = Buffer.from('0123456789abcdefghij');
    const created = (await uploadRaw(server, key, content, { name: 'Résumé "final";.txt', contentType: 'text/html' })).json;
    const url = `/v1/files/${created.id}/content`;
    const full = await server.request('GET', url, { auth: key });
    assert.equal(full.status, 200);
    assert.equal(full.text, content.toString());
    assert.equal(full.headers['content-type'], 'text/html');
    assert.equal(full.headers['content-length'], String(content.length));
    assert.equal(full.headers.etag, `"${sha256(content)}"`);
    assert.equal(full.headers['last-modified'], new Date(created.updated_at).toUTCString());
    assert.equal(full.headers['x-content-type-options'], 'nosniff');
    assert.equal(full.headers['accept-ranges'], 'bytes');
    assert.equal(full.headers['content-disposition'], `attachment; filename="R_sum_ _final_;.txt"; filename*=UTF-8''R%C3%A9sum%C3%A9%20%22final%22%3B.txt`);

    const cases: Array<[string, number, string, string | undefined]> = [
      ['bytes=0-3', 206, '0123', 'bytes 0-3/20'],
      ['bytes=10-', 206, 'abcdefghij', 'bytes 10-19/20'],
      ['bytes=-5', 206, 'fghij', 'bytes 15-19/20'],
      ['bytes=15-100', 206, 'fghij', 'bytes 15-19/20'],
      ['bytes=0-1,4-5', 200, content.toString(), undefined],
    ];
    for (const [range, status, body, contentRange] of cases) {
      const response = await server.request('GET', url, { auth: key, headers: { range } });
      assert.equal(response.status, status, range);
      assert.equal(response.text, body, range);
      assert.equal(response.headers['content-range'], contentRange, range);
      if (status === 206) assert.equal(response.headers['content-length'], String(body.length));
    }
    const unsatisfiable = await server.request('GET', url, { auth: key, headers: { range: 'bytes=20-' } });
    assert.equal(unsatisfiable.status, 416);
    assert.equal(unsatisfiable.json.code, 'range_not_satisfiable');
    assert.equal(unsatisfiable.headers['content-range'], 'bytes */20');

    const notModified = await server.request('GET', url, { auth: key, headers: { 'if-none-match': `"${sha256(content)}"` } });
    assert.equal(notModified.status, 304);
    assert.equal(notModified.text, '');
    const modified = await server.request('GET', url, { auth: key, headers: { 'if-none-match': '"something-else"' } });
    assert.equal(modified.status, 200);
    const staleIfRange = await server.request('GET', url, { auth: key, headers: { range: 'bytes=0-3', 'if-range': '"old"' } });
    assert.equal(staleIfRange.status, 200, 'a stale If-Range sends the whole content');
  });

  it('replaces content: version + 1, If-Match 412 when stale, File_update event', async () => {
    const v1 = Buffer.from('version one');
    const created = (await uploadRaw(server, key, v1, { name: 'replace.txt' })).json;
    const v2 = Buffer.from('version two, longer');
    const replaced = await server.request('PUT', `/v1/files/${created.id}/content`, {
      auth: key,
      body: v2,
      headers: { 'content-type': 'text/plain', 'if-match': `"${sha256(v1)}"` },
    });
    assert.equal(replaced.status, 200, replaced.text);
    assert.equal(replaced.json.version, 2);
    assert.equal(replaced.json.sha256, sha256(v2));
    assert.equal(replaced.json.size, v2.length);
    assert.equal(replaced.json.created_at, created.created_at);

    const stale = await server.request('PUT', `/v1/files/${created.id}/content`, {
      auth: key,
      body: 'lost?',
      headers: { 'content-type': 'text/plain', 'if-match': `"${sha256(v1)}"` },
    });
    assert.equal(stale.status, 412);
    assert.equal(stale.json.code, 'version_conflict');

    const mp = multipartBody({}, { content: 'version three', filename: 'whatever.txt', contentType: 'text/markdown' });
    const viaMultipart = await server.request('PUT', `/v1/files/${created.id}/content`, { auth: key, body: mp.body, headers: { 'content-type': mp.contentType } });
    assert.equal(viaMultipart.status, 200, viaMultipart.text);
    assert.equal(viaMultipart.json.version, 3);
    assert.equal(viaMultipart.json.name, 'replace.txt', 'a replace keeps the name');
    assert.equal(viaMultipart.json.content_type, 'text/markdown');

    const download = await server.request('GET', `/v1/files/${created.id}/content`, { auth: key });
    assert.equal(download.text, 'version three');
    const versions = await sql<{ version: number; sha256: string }>`
      select version, sha256 from files.file_version where file_id = ${created.id} order by version`.execute(server.app.databases.environments.test);
    assert.deepEqual(versions.rows.map((v) => v.version), [1, 2, 3]);
    assert.deepEqual((await eventsOf(server, created.id)).map((e) => [e.type, e.data.file.version]), [
      ['File_create', 1],
      ['File_update', 2],
      ['File_update', 3],
    ]);
    const missing = await server.request('PUT', '/v1/files/file_missing/content', { auth: key, body: 'x', headers: { 'content-type': 'text/plain' } });
    assert.equal(missing.status, 404);
  });

  it('renames and moves with PATCH, refusing a taken name with 409', async () => {
    const a = (await uploadRaw(server, key, 'a', { name: 'a.txt', path: '/mv' })).json;
    await uploadRaw(server, key, 'b', { name: 'b.txt', path: '/mv' });
    const renamed = await server.request('PATCH', `/v1/files/${a.id}`, { auth: key, json: { name: 'a2.txt', path: '/moved/' } });
    assert.equal(renamed.status, 200, renamed.text);
    assert.equal(renamed.json.name, 'a2.txt');
    assert.equal(renamed.json.path, '/moved');
    assert.equal(renamed.json.version, 2);
    assert.equal(renamed.json.sha256, a.sha256);
    const clash = await server.request('PATCH', `/v1/files/${a.id}`, { auth: key, json: { name: 'b.txt', path: '/mv' } });
    assert.equal(clash.status, 409);
    assert.equal(clash.json.code, 'file_exists');
    const bad = await server.request('PATCH', `/v1/files/${a.id}`, { auth: key, json: { name: '../x' } });
    assert.equal(bad.status, 422);
    const unknown = await server.request('PATCH', `/v1/files/${a.id}`, { auth: key, json: { size: 3 } });
    assert.equal(unknown.status, 422);
    const events = await eventsOf(server, a.id);
    assert.deepEqual(events.map((e) => e.type), ['File_create', 'File_update']);
    assert.equal(events[1]?.data.file.name, 'a2.txt');
  });

  it('deletes: 204, then 404, a File_delete event with the last state, and the name is free again', async () => {
    const file = (await uploadRaw(server, key, 'bye', { name: 'gone.txt', path: '/del' })).json;
    const deleted = await server.request('DELETE', `/v1/files/${file.id}`, { auth: key });
    assert.equal(deleted.status, 204);
    assert.equal((await server.request('GET', `/v1/files/${file.id}`, { auth: key })).status, 404);
    assert.equal((await server.request('GET', `/v1/files/${file.id}/content`, { auth: key })).status, 404);
    assert.equal((await server.request('DELETE', `/v1/files/${file.id}`, { auth: key })).status, 404);
    const events = await eventsOf(server, file.id);
    assert.deepEqual(events.map((e) => e.type), ['File_create', 'File_delete']);
    assert.deepEqual(events[1]?.data.file, file);
    const list = await server.request('GET', '/v1/files?path=/del', { auth: key });
    assert.deepEqual(list.json.data, []);
    const again = await uploadRaw(server, key, 'hello again', { name: 'gone.txt', path: '/del' });
    assert.equal(again.status, 201);
  });

  it('reports usage to account keys: files, bytes, versions, backup_bytes (what the backup holds), quota_bytes', async () => {
    const fresh = await server.request('POST', '/v1/tenants', { auth: server.operatorToken, json: { name: 'Usage Co' } });
    const tenantKey = fresh.json.keys.test.account_key;
    const empty = await server.request('GET', '/v1/usage', { auth: tenantKey });
    assert.equal(empty.status, 200);
    assert.deepEqual(empty.json, { files: 0, bytes: 0, versions: 0, backup_bytes: 0, quota_bytes: null });
    const f = (await uploadRaw(server, tenantKey, '12345', { name: 'u.txt' })).json;
    await server.request('PUT', `/v1/files/${f.id}/content`, { auth: tenantKey, body: '123', headers: { 'content-type': 'text/plain' } });
    await uploadRaw(server, tenantKey, '1', { name: 'v.txt' });
    // The same bytes as u.txt's first version: counted again in `bytes`, held once by the backup.
    await uploadRaw(server, tenantKey, '12345', { name: 'w.txt' });
    await server.request('DELETE', `/v1/files/${f.id}`, { auth: tenantKey });
    // Another tenant's backup of the same bytes is not this tenant's.
    await uploadRaw(server, key, '12345', { name: 'usage-elsewhere.txt' });

    const status = await backedUp(server, tenantKey, 5); // create, update, create, create, delete
    assert.equal(status.versions, 5);
    assert.equal(status.bytes, 9, 'distinct content: 5 + 3 + 1');
    const used = await server.request('GET', '/v1/usage', { auth: tenantKey });
    assert.deepEqual(used.json, { files: 2, bytes: 14, versions: 4, backup_bytes: 9, quota_bytes: null });
    const otherEnvironment = await server.request('GET', '/v1/usage', { auth: fresh.json.keys.live.account_key });
    assert.equal(otherEnvironment.json.backup_bytes, 0, 'each environment has its own backups');
    const app = await server.request('GET', '/v1/usage', { auth: fresh.json.keys.test.application_key });
    assert.equal(app.status, 403);
  });
});

describe('usage under concurrent writes of one tenant', () => {
  let server: TestServer;
  before(async () => {
    server = await servers.start();
  });
  after(async () => server?.close());

  it('counts every one of 48 concurrent creates, replaces and deletes exactly, spread over shards so they do not wait on one row', async () => {
    const fresh = await server.request('POST', '/v1/tenants', { auth: server.operatorToken, json: { name: 'Busy Co' } });
    const tenantKey = fresh.json.keys.test.account_key;
    const created = await Promise.all(Array.from({ length: 24 }, (_, i) => uploadRaw(server, tenantKey, 'x'.repeat(i + 1), { name: `c-${i}.txt` })));
    for (const answer of created) assert.equal(answer.status, 201, answer.text);
    const ids = created.map((answer) => answer.json.id as string);
    const changes = await Promise.all([
      ...ids.slice(0, 16).map((id) => server.request('PUT', `/v1/files/${id}/content`, { auth: tenantKey, body: 'yy', headers: { 'content-type': 'text/plain' } })),
      ...ids.slice(16).map((id) => server.request('DELETE', `/v1/files/${id}`, { auth: tenantKey })),
    ]);
    const unexpected = changes.map((answer, i) => ({ answer, expected: i < 16 ? 200 : 204 })).filter(({ answer, expected }) => answer.status !== expected);
    assert.deepEqual(
      unexpected.map(({ answer }) => `${answer.status} ${answer.text}`),
      [],
      'every replace answers 200 and every delete 204',
    );
    const used = await server.request('GET', '/v1/usage', { auth: tenantKey });
    // 1 + 2 + ... + 24 bytes created, 16 replaces of 2 bytes each; deletes keep their versions' bytes.
    assert.deepEqual({ files: used.json.files, bytes: used.json.bytes, versions: used.json.versions }, { files: 16, bytes: 300 + 32, versions: 40 });
    const shards = await sql<{ n: number }>`
      select count(*)::int as n from files.usage where tenant_id = (select tenant_id from files.file where id = ${ids[0]})`.execute(server.app.databases.environments.test);
    assert.ok((shards.rows[0]?.n ?? 0) > 1, `48 writes went to ${shards.rows[0]?.n} usage row(s)`);
  });
});
