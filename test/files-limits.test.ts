import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import pg from 'pg';
import { backedUp, blobCount, eventsOf, sha256, streamUpload, tempFiles, until, uploadRaw, writeChunks } from './helpers/files.ts';
import { startServer, type TestServer } from './helpers/server.ts';
import { inProcessOnly } from './helpers/shape.ts';

const MiB = 1024 * 1024;

async function fileCount(server: TestServer): Promise<number> {
  const result = await sql<{ n: number }>`select count(*)::int as n from files.file`.execute(server.app.databases.environments.test);
  return result.rows[0]?.n ?? 0;
}

describe('upload limits, disconnects and idempotency', () => {
  let server: TestServer;
  let key: string;
  before(async () => {
    server = await startServer({ BANTU_MAX_UPLOAD_BYTES: String(MiB) });
    key = server.keys.test.account_key;
  });
  after(async () => server?.close());

  it(
    'answers 413 from Content-Length before reading the body, keeping nothing',
    async () => {
    const [blobs, files] = [await blobCount(server), await fileCount(server)];
    const response = await streamUpload(server, {
      path: '/v1/files?name=big.bin',
      key,
      headers: { 'content-type': 'application/octet-stream', 'content-length': MiB + 1 },
      write: async () => undefined, // not one byte of body: the answer comes from the header alone
    });
    assert.equal(response.status, 413);
    assert.equal(response.json.code, 'payload_too_large');
    assert.equal(response.headers.connection, 'close');
    assert.equal(await blobCount(server), blobs);
    assert.equal(await fileCount(server), files);
    assert.deepEqual(await tempFiles(server), []);
  },
  );

  it('answers 413 mid-stream for a chunked body with no Content-Length, raw or multipart, keeping nothing', async () => {
    const [blobs, files] = [await blobCount(server), await fileCount(server)];
    const raw = await streamUpload(server, {
      path: '/v1/files?name=chunked.bin',
      key,
      headers: { 'content-type': 'application/octet-stream' },
      write: (request) => writeChunks(request, 3 * MiB),
    });
    assert.equal(raw.status, 413);
    assert.equal(raw.json.code, 'payload_too_large');

    const boundary = 'xBoundaryx';
    const multipart = await streamUpload(server, {
      path: '/v1/files',
      key,
      headers: { 'content-type': `multipart/form-data; boundary=${boundary}` },
      write: async (request) => {
        request.write(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="mp.bin"\r\nContent-Type: application/octet-stream\r\n\r\n`);
        await writeChunks(request, 3 * MiB, 64 * 1024, false);
      },
    });
    assert.equal(multipart.status, 413);
    assert.equal(multipart.json.code, 'payload_too_large');
    await until(async () => (await tempFiles(server)).length === 0, 'temp files to go');
    assert.equal(await blobCount(server), blobs);
    assert.equal(await fileCount(server), files);

    const exact = await uploadRaw(server, key, randomBytes(MiB), { name: 'exactly-the-limit.bin' });
    assert.equal(exact.status, 201, 'the limit itself is allowed');
  });

  for (const kind of ['raw', 'multipart'] as const) {
    it(`leaves nothing behind when the client disconnects mid-upload (${kind})`, async () => {
      const [blobs, files] = [await blobCount(server), await fileCount(server)];
      const https = await import('node:https');
      const boundary = 'yBoundaryy';
      const request = https.request(new URL(kind === 'raw' ? '/v1/files?name=cut.bin' : '/v1/files', server.url), {
        method: 'POST',
        ca: server.ca,
        agent: false,
        headers: {
          authorization: `Bearer ${key}`,
          'content-type': kind === 'raw' ? 'application/octet-stream' : `multipart/form-data; boundary=${boundary}`,
          'content-length': 900 * 1024,
        },
      });
      request.on('error', () => undefined);
      if (kind === 'multipart') request.write(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="cut.bin"\r\n\r\n`);
      await writeChunks(request, 300 * 1024, 16 * 1024, false);
      // In S3 a body under one part (8 MiB) stays in the process until it ends: nothing shows there to wait for.
      if (!server.s3) await until(async () => (await tempFiles(server)).length > 0, 'the upload to reach the store');
      request.destroy();
      await until(async () => (await tempFiles(server)).length === 0, 'the temp file to be removed');
      assert.equal(await blobCount(server), blobs);
      assert.equal(await fileCount(server), files);
      const after = await server.request('GET', '/healthz');
      assert.equal(after.status, 200, 'the server is fine');
    });
  }

  it('replays a retried create with the same Idempotency-Key, storing nothing twice; another request under it is 409', async () => {
    const content = randomBytes(10_000);
    const headers = { 'idempotency-key': 'create-once-1' };
    const first = await uploadRaw(server, key, content, { name: 'idem.bin', headers });
    assert.equal(first.status, 201, first.text);
    const [blobs, files] = [await blobCount(server), await fileCount(server)];
    const retry = await uploadRaw(server, key, content, { name: 'idem.bin', headers });
    assert.equal(retry.status, 201);
    assert.deepEqual(retry.json, first.json);
    assert.equal(retry.headers['idempotent-replayed'], 'true');
    assert.equal(await blobCount(server), blobs);
    assert.equal(await fileCount(server), files);
    assert.equal((await eventsOf(server, first.json.id)).length, 1, 'one event');

    const otherBody = await uploadRaw(server, key, randomBytes(10_000), { name: 'idem.bin', headers });
    assert.equal(otherBody.status, 409);
    assert.equal(otherBody.json.code, 'idempotency_conflict');
    const otherName = await uploadRaw(server, key, content, { name: 'idem-2.bin', headers });
    assert.equal(otherName.status, 409);
    assert.equal(otherName.json.code, 'idempotency_conflict');
    assert.equal(await blobCount(server), blobs, 'a refused retry keeps no bytes');

    // The same key from another caller is another key.
    const otherCaller = await uploadRaw(server, server.keys.live.account_key, content, { name: 'idem.bin', headers });
    assert.equal(otherCaller.status, 201);
    assert.notEqual(otherCaller.json.id, first.json.id);
  });

  it('answers concurrent twins of one create with one file', async () => {
    const content = randomBytes(50_000);
    const responses = await Promise.all(
      Array.from({ length: 5 }, () => uploadRaw(server, key, content, { name: 'twins.bin', headers: { 'idempotency-key': 'twins-1' } })),
    );
    for (const response of responses) assert.equal(response.status, 201, response.text);
    assert.equal(new Set(responses.map((r) => r.json.id)).size, 1);
    const rows = await sql`select id from files.file where name = 'twins.bin'`.execute(server.app.databases.environments.test);
    assert.equal(rows.rows.length, 1);
  });

  it('replays the answer of a twin that commits its Idempotency-Key while the create waits on it, keeping no row, event or usage of its own', async () => {
    // The twin is a transaction of this test: it holds the key uncommitted, so the create
    // finds no recorded answer, uploads, and its write transaction waits on the key.
    const content = randomBytes(2_000);
    const first = await uploadRaw(server, key, content, { name: 'held.bin', headers: { 'idempotency-key': 'held-source' } });
    assert.equal(first.status, 201, first.text);
    const db = server.app.databases.environments.test;
    const source = await sql<{ tenant_id: string; principal: string; fingerprint: string }>`
      select tenant_id, principal, fingerprint from files.idempotency where key = 'held-source'`.execute(db);
    const recorded = source.rows[0];
    assert.ok(recorded);
    const counts = async () => {
      const result = await sql<{ files: number; events: number; bytes: number }>`
        select (select count(*)::int from files.file) as files, (select count(*)::int from bus.outbox) as events,
               (select coalesce(sum(bytes), 0)::bigint from files.usage) as bytes`.execute(db);
      return result.rows[0];
    };
    const before = await counts();
    const twin = new pg.Client({ connectionString: server.app.databases.environmentUrls.test });
    await twin.connect();
    try {
      await twin.query('begin');
      await twin.query(
        `insert into files.idempotency (tenant_id, principal, key, fingerprint, status, response, expires_at)
         values ($1, $2, 'held-1', $3, 201, $4, now() + interval '1 hour')`,
        [recorded.tenant_id, recorded.principal, recorded.fingerprint, JSON.stringify(first.json)],
      );
      const pending = uploadRaw(server, key, content, { name: 'held.bin', headers: { 'idempotency-key': 'held-1' } });
      // Asked outside the twin's transaction, which sees pg_stat_activity as of its first look.
      await until(async () => {
        const waiting = await sql`select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like '%files.idempotency%'`.execute(db);
        return waiting.rows.length > 0;
      }, 'the create to wait on the key');
      await twin.query('commit');
      const response = await pending;
      assert.equal(response.status, 201, response.text);
      assert.equal(response.headers['idempotent-replayed'], 'true');
      assert.deepEqual(response.json, first.json);
    } finally {
      await twin.end();
    }
    assert.deepEqual(await counts(), before);
  });

  it('replays a retried replace with the same Idempotency-Key: one new version, not two', async () => {
    const created = (await uploadRaw(server, key, 'v1', { name: 'idem-replace.txt' })).json;
    const put = () =>
      server.request('PUT', `/v1/files/${created.id}/content`, {
        auth: key,
        body: 'v2',
        headers: { 'content-type': 'text/plain', 'idempotency-key': 'replace-1', 'if-match': `"${created.sha256}"` },
      });
    const first = await put();
    assert.equal(first.status, 200);
    assert.equal(first.json.version, 2);
    const retry = await put();
    assert.equal(retry.status, 200, 'a replay, not a 412, although If-Match is now stale');
    assert.deepEqual(retry.json, first.json);
    const versions = await sql`select version from files.file_version where file_id = ${created.id}`.execute(server.app.databases.environments.test);
    assert.equal(versions.rows.length, 2);
  });

  it('answers 409 idempotency_conflict to a replace under the same Idempotency-Key with another body or another file, storing nothing', async () => {
    const created = (await uploadRaw(server, key, 'v1', { name: 'idem-replace-conflict.txt' })).json;
    const other = (await uploadRaw(server, key, 'other v1', { name: 'idem-replace-other.txt' })).json;
    const put = (id: string, body: string, contentType = 'text/plain') =>
      server.request('PUT', `/v1/files/${id}/content`, { auth: key, body, headers: { 'content-type': contentType, 'idempotency-key': 'replace-conflict-1' } });
    const first = await put(created.id, 'v2');
    assert.equal(first.status, 200, first.text);
    assert.equal(first.json.version, 2);
    const blobs = await blobCount(server);

    for (const [what, response] of [
      ['another body', await put(created.id, 'not v2')],
      ['another content type', await put(created.id, 'v2', 'text/markdown')],
      ['another file', await put(other.id, 'v2')],
    ] as const) {
      assert.equal(response.status, 409, `${what}: ${response.text}`);
      assert.equal(response.json.code, 'idempotency_conflict', what);
    }
    assert.equal(await blobCount(server), blobs, 'a refused request keeps no bytes');
    const versions = await sql`select version from files.file_version where file_id in (${created.id}, ${other.id})`.execute(server.app.databases.environments.test);
    assert.equal(versions.rows.length, 3, 'no version was added to either file');
    assert.equal((await server.request('GET', `/v1/files/${created.id}/content`, { auth: key })).text, 'v2');
    assert.equal((await server.request('GET', `/v1/files/${other.id}/content`, { auth: key })).text, 'other v1');
    const retry = await put(created.id, 'v2');
    assert.equal(retry.status, 200, 'the original request still replays');
    assert.equal(retry.headers['idempotent-replayed'], 'true');
    assert.deepEqual(retry.json, first.json);
  });

  it('keeps an Idempotency-Key 24 h: past that it no longer replays, and the sweep prunes expired keys', { skip: inProcessOnly('runs the sweep through app.files in-process') }, async () => {
    const db = server.app.databases.environments.test;
    const withKey = (idempotencyKey: string) => ({ 'idempotency-key': idempotencyKey });
    const created = await uploadRaw(server, key, 'e1', { name: 'expiry.txt', headers: withKey('expiry-create') });
    assert.equal(created.status, 201, created.text);
    const kept = await sql<{ ms: number }>`
      select (extract(epoch from expires_at - created_at) * 1000)::float8 as ms from files.idempotency where key = 'expiry-create'`.execute(db);
    assert.equal(kept.rows[0]?.ms, 24 * 3600 * 1000);

    const put = () =>
      server.request('PUT', `/v1/files/${created.json.id}/content`, { auth: key, body: 'e2', headers: { 'content-type': 'text/plain', ...withKey('expiry-replace') } });
    const first = await put();
    assert.equal(first.status, 200, first.text);
    assert.equal(first.json.version, 2);
    assert.equal((await uploadRaw(server, key, 'p', { name: 'expiry-prune.txt', headers: withKey('expiry-prune') })).status, 201);
    assert.equal((await uploadRaw(server, key, 'l', { name: 'expiry-live.txt', headers: withKey('expiry-live') })).status, 201);
    // 25 hours pass for three of the keys (the server has no clock to wind: age the rows).
    const aged = await sql`
      update files.idempotency set created_at = created_at - interval '25 hours', expires_at = expires_at - interval '25 hours'
      where key in ('expiry-create', 'expiry-replace', 'expiry-prune')`.execute(db);
    assert.equal(Number(aged.numAffectedRows), 3);

    const again = await put();
    assert.equal(again.status, 200, again.text);
    assert.equal(again.headers['idempotent-replayed'], undefined, 'a new request, not a replay');
    assert.equal(again.json.version, 3);
    const reused = await uploadRaw(server, key, 'something else', { name: 'expiry-2.txt', headers: withKey('expiry-create') });
    assert.equal(reused.status, 201, `an expired key is free for a new request: ${reused.text}`);
    assert.notEqual(reused.json.id, created.json.id);

    const swept = await server.app.files.sweep();
    assert.ok(swept.idempotency >= 1, JSON.stringify(swept));
    const left = await sql<{ key: string }>`
      select key from files.idempotency where key like 'expiry-%' order by key`.execute(db);
    assert.deepEqual(left.rows.map((r) => r.key), ['expiry-create', 'expiry-live', 'expiry-replace'], 'only the expired, unused key is pruned');
    const expired = await sql<{ n: number }>`select count(*)::int as n from files.idempotency where expires_at <= now()`.execute(db);
    assert.equal(expired.rows[0]?.n, 0);
  });

  it('keeps every one of 20 concurrent replaces: 21 distinct versions, events in version order', async () => {
    const created = (await uploadRaw(server, key, 'base', { name: 'contended.txt' })).json;
    const contents = Array.from({ length: 20 }, (_, i) => Buffer.from(`replace number ${i} ${randomBytes(8).toString('hex')}`));
    const responses = await Promise.all(
      contents.map((body) => server.request('PUT', `/v1/files/${created.id}/content`, { auth: key, body, headers: { 'content-type': 'text/plain' } })),
    );
    for (const response of responses) assert.equal(response.status, 200, response.text);
    assert.deepEqual(responses.map((r) => r.json.version).sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i + 2));
    const versions = await sql<{ version: number; sha256: string }>`
      select version, sha256 from files.file_version where file_id = ${created.id} order by version`.execute(server.app.databases.environments.test);
    assert.deepEqual(versions.rows.map((v) => v.version), Array.from({ length: 21 }, (_, i) => i + 1));
    assert.equal(new Set(versions.rows.map((v) => v.sha256)).size, 21);
    const expected = new Set([sha256('base'), ...contents.map((c) => sha256(c))]);
    for (const v of versions.rows) assert.ok(expected.has(v.sha256));
    const current = await server.request('GET', `/v1/files/${created.id}`, { auth: key });
    assert.equal(current.json.version, 21);
    // Delivery order (xid, id) follows commit order because each writer locks the row first.
    const events = await eventsOf(server, created.id);
    assert.deepEqual(events.map((e) => e.data.file.version), Array.from({ length: 21 }, (_, i) => i + 1));
  });
});

describe('tenant storage quota', () => {
  let server: TestServer;
  let key: string;
  before(async () => {
    server = await startServer({ BANTU_TENANT_QUOTA_BYTES: '100000' });
    key = server.keys.test.account_key;
  });
  after(async () => server?.close());

  it('answers 413 quota_exceeded over the quota, known or mid-stream, keeping nothing', async () => {
    assert.equal((await uploadRaw(server, key, randomBytes(60_000), { name: 'a.bin' })).status, 201);
    const blobs = await blobCount(server);
    const known = await uploadRaw(server, key, randomBytes(50_000), { name: 'b.bin' });
    assert.equal(known.status, 413);
    assert.equal(known.json.code, 'quota_exceeded');
    const chunked = await streamUpload(server, {
      path: '/v1/files?name=c.bin',
      key,
      headers: { 'content-type': 'application/octet-stream' },
      write: (request) => writeChunks(request, 50_000, 8 * 1024),
    });
    assert.equal(chunked.status, 413);
    assert.equal(chunked.json.code, 'quota_exceeded');
    const replace = await streamUpload(server, {
      method: 'PUT',
      path: `/v1/files/${(await server.request('GET', '/v1/files', { auth: key })).json.data[0].id}/content`,
      key,
      headers: { 'content-type': 'application/octet-stream', 'content-length': 50_000 },
      write: (request) => writeChunks(request, 50_000),
    });
    assert.equal(replace.status, 413);
    assert.equal(replace.json.code, 'quota_exceeded');
    await until(async () => (await tempFiles(server)).length === 0, 'temp files to go');
    assert.equal(await blobCount(server), blobs);

    await backedUp(server, key, 1);
    const usage = await server.request('GET', '/v1/usage', { auth: key });
    assert.deepEqual(usage.json, { files: 1, bytes: 60_000, versions: 1, backup_bytes: 60_000, quota_bytes: 100_000 });
    assert.equal((await uploadRaw(server, key, randomBytes(40_000), { name: 'fits.bin' })).status, 201, 'up to the quota itself');
    const other = await server.request('GET', '/v1/usage', { auth: server.keys.live.account_key });
    assert.equal(other.json.bytes, 0, 'each environment has its own count');
  });

  it('holds the quota under concurrent uploads', async () => {
    const fresh = await server.request('POST', '/v1/tenants', { auth: server.operatorToken, json: { name: 'Quota race' } });
    const tenantKey = fresh.json.keys.test.account_key;
    const responses = await Promise.all(Array.from({ length: 6 }, (_, i) => uploadRaw(server, tenantKey, randomBytes(30_000), { name: `r${i}.bin` })));
    const accepted = responses.filter((r) => r.status === 201).length;
    assert.equal(accepted, 3, responses.map((r) => r.status).join(','));
    for (const r of responses) if (r.status !== 201) assert.equal(r.json.code, 'quota_exceeded');
    const usage = await server.request('GET', '/v1/usage', { auth: tenantKey });
    assert.equal(usage.json.bytes, 90_000);
    // A refused create keeps no row and no event.
    const acceptedId = responses.find((r) => r.status === 201)?.json.id;
    const kept = await sql<{ files: number; events: number }>`
      with tenant as (select tenant_id from files.file where id = ${acceptedId})
      select (select count(*)::int from files.file where tenant_id = (select tenant_id from tenant)) as files,
             (select count(*)::int from bus.outbox where tenant_id = (select tenant_id from tenant)) as events`.execute(server.app.databases.environments.test);
    assert.deepEqual(kept.rows[0], { files: 3, events: 3 });
  });
});
