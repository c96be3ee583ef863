import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { sql } from 'kysely';
import { request } from 'undici';
import { withTenant } from '../src/adapters/db/pg.ts';
import { DownloadTokens } from '../src/services/exports/domain/download-token.ts';
import { isSafeEntryName } from '../src/services/exports/domain/entry-names.ts';
import { insertFile } from '../src/services/files/repo/files.repo.ts';
import { createTenant, sha256, until, uploadRaw } from './helpers/files.ts';
import { decodeQuotedPrintable, type SmtpReceiver, startSmtpReceiver, waitForMails } from './helpers/mail.ts';
import { startServer, type TestServer } from './helpers/server.ts';
import { inProcessOnly } from './helpers/shape.ts';
import { readZip } from './helpers/zip.ts';

/** Zip exports: the durable job, the mailed signed link, the zip's layout, names and bytes. */
const run = promisify(execFile);
const PASSWORD = 'correct horse battery';

type Server = Pick<TestServer, 'request' | 'http'>;

async function waitFinished(server: Server, auth: string, id: string) {
  let last: { status: string } | undefined;
  await until(
    async () => {
      const response = await server.request('GET', `/v1/exports/${id}`, { auth });
      assert.equal(response.status, 200, response.text);
      last = response.json;
      return ['ready', 'failed'].includes(response.json.status);
    },
    `export ${id} to finish`,
    120_000,
  );
  // biome-ignore lint/suspicious/noExplicitAny: test JSON
  return last as any;
}

function linkIn(mail: string): string {
  const match = /https:\/\/\S+\/v1\/exports\/exp_[a-z0-9]+\/download\?token=[A-Za-z0-9._-]+/.exec(decodeQuotedPrintable(mail));
  assert.ok(match, `the mail carries a download link:\n${mail}`);
  return match[0];
}

async function get(server: Server, url: string, headers: Record<string, string> = {}) {
  const response = await request(url, { dispatcher: server.http, headers });
  const body = Buffer.from(await response.body.arrayBuffer());
  return { status: response.statusCode, headers: response.headers, body };
}

async function register(server: TestServer, email: string): Promise<{ token: string; id: string }> {
  const response = await server.request('POST', '/v1/auth/register', { auth: server.keys.test.application_key, json: { email, password: PASSWORD, name: email } });
  assert.equal(response.status, 201, response.text);
  return { token: response.json.access_token, id: response.json.user.id };
}

async function unzipTest(buffer: Buffer, dir: string): Promise<string> {
  const file = path.join(dir, `check-${Date.now()}.zip`);
  await fs.writeFile(file, buffer);
  const { stdout } = await run('/usr/bin/unzip', ['-t', file]);
  await fs.rm(file);
  return stdout;
}

describe('zip export mailed as a signed link', () => {
  let server: TestServer;
  let alice: { token: string; id: string };
  let bob: { token: string; id: string };
  const contents = new Map<string, Buffer[]>();
  let exportId: string;
  let zip: Buffer;
  let link: string;

  before(async () => {
    server = await startServer();
    alice = await register(server, 'alice@example.com');
    bob = await register(server, 'bob@example.com');
    const upload = async (name: string, folder: string, data: Buffer) => {
      const response = await uploadRaw(server, alice.token, data, { name, path: folder, contentType: 'application/octet-stream' });
      assert.equal(response.status, 201, response.text);
      contents.set(response.json.id, [data]);
      return response.json.id as string;
    };
    await upload('notes.txt', '/', Buffer.from('first notes'));
    const report = await upload('report.bin', '/reports/2026', Buffer.alloc(300_000, 7));
    await upload('überblick.pdf', '/reports', Buffer.from('%PDF-1.7 ünïcödé'));
    const v2 = Buffer.from('the second version of the report, shorter');
    const replaced = await server.request('PUT', `/v1/files/${report}/content`, { auth: alice.token, body: v2, headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(replaced.status, 200, replaced.text);
    contents.get(report)?.push(v2);
    // Not alice's: never in her export.
    await uploadRaw(server, bob.token, 'bob secret', { name: 'bob.txt' });
    await uploadRaw(server, server.keys.test.account_key, 'tenant file', { name: 'tenant.txt' });
  });
  after(async () => server?.close());

  it('queues the export, runs it, mails the link, and the zip holds the manifest and every byte (versions included)', async () => {
    const created = await server.request('POST', '/v1/exports', { auth: alice.token, json: { include_versions: true } });
    assert.equal(created.status, 202, created.text);
    assert.deepEqual(Object.keys(created.json).sort(), ['created_at', 'id', 'status']);
    assert.equal(created.json.status, 'pending');
    exportId = created.json.id;

    const finished = await waitFinished(server, alice.token, exportId);
    assert.equal(finished.status, 'ready', JSON.stringify(finished));
    assert.equal(finished.files_total, 3);
    assert.equal(finished.files_done, 3);
    // Every version's entry, plus the current content's.
    const allBytes = [...contents.values()].reduce((sum, versions) => sum + versions.reduce((n, b) => n + b.length, 0) + (versions.at(-1)?.length ?? 0), 0);
    assert.equal(finished.bytes, allBytes, 'every version, plus the current content');
    assert.equal(finished.error, null);
    assert.ok(Date.parse(finished.expires_at) - Date.parse(finished.completed_at) >= 23.9 * 3600_000, 'kept 24 h');

    const [mail] = await waitForMails(server.dataDir, 1);
    const eml = await fs.readFile(mail as string, 'utf8');
    assert.match(eml, /^To: alice@example\.com/m);
    link = linkIn(eml);
    assert.ok(link.startsWith(`${server.url}/v1/exports/${exportId}/download?token=`));

    const downloaded = await get(server, link);
    assert.equal(downloaded.status, 200);
    assert.equal(downloaded.headers['content-type'], 'application/zip');
    assert.equal(Number(downloaded.headers['content-length']), downloaded.body.length);
    zip = downloaded.body;
    assert.match(await unzipTest(zip, server.dataDir), /No errors detected/);

    const entries = await readZip(zip);
    const byName = new Map(entries.map((e) => [e.name, e.data]));
    assert.equal(byName.size, entries.length, 'no two entries alike');
    const manifest = JSON.parse(byName.get('manifest.json')?.toString('utf8') ?? 'null');
    assert.equal(manifest.export_id, exportId);
    assert.equal(manifest.environment, 'test');
    assert.equal(manifest.created_at, created.json.created_at);
    assert.equal(manifest.files.length, 3);
    for (const file of manifest.files) {
      const uploaded = contents.get(file.id);
      assert.ok(uploaded, `only alice's files: ${file.id}`);
      assert.deepEqual(Object.keys(file).sort(), ['content_type', 'created_at', 'entry', 'id', 'name', 'path', 'sha256', 'size', 'updated_at', 'version', 'versions']);
      const current = uploaded.at(-1) as Buffer;
      assert.deepEqual(byName.get(file.entry), current, `${file.entry} is the current content, byte for byte`);
      assert.equal(file.sha256, sha256(current));
      assert.equal(file.entry, `files${file.path === '/' ? '' : file.path}/${file.name}`);
      assert.equal(file.versions.length, uploaded.length);
      file.versions.forEach((version: { version: number; entry: string; sha256: string }, index: number) => {
        assert.equal(version.entry, `versions${file.path === '/' ? '' : file.path}/${file.name}/v${index + 1}`);
        assert.deepEqual(byName.get(version.entry), uploaded[index], `${version.entry} byte for byte`);
        assert.equal(version.sha256, sha256(uploaded[index] as Buffer));
      });
    }
    assert.equal(entries.length, 1 + 3 + 4, 'the manifest, 3 files, 4 versions');
  });

  it('serves Range requests with the right bytes, and the creator\'s own credential instead of the token', async () => {
    const part = await get(server, link, { range: 'bytes=100-1099' });
    assert.equal(part.status, 206);
    assert.equal(part.headers['content-range'], `bytes 100-1099/${zip.length}`);
    assert.deepEqual(part.body, zip.subarray(100, 1100));
    const tail = await get(server, link, { range: 'bytes=-22' });
    assert.deepEqual(tail.body, zip.subarray(zip.length - 22), 'the end of central directory');
    const beyond = await get(server, link, { range: `bytes=${zip.length}-` });
    assert.equal(beyond.status, 416);

    const own = await get(server, `${server.url}/v1/exports/${exportId}/download`, { authorization: `Bearer ${alice.token}` });
    assert.equal(own.status, 200);
    assert.deepEqual(own.body, zip);
    const none = await get(server, `${server.url}/v1/exports/${exportId}/download`);
    assert.equal(none.status, 401, 'neither a token nor credentials');
  });

  it('answers 404 to forged, expired and other exports\' tokens, and to another user', async () => {
    const url = new URL(link);
    const token = url.searchParams.get('token') as string;
    const at = (id: string, t: string) => `${server.url}/v1/exports/${id}/download?token=${encodeURIComponent(t)}`;
    const forged = `${token.slice(0, -1)}${token.endsWith('A') ? 'B' : 'A'}`;
    assert.equal((await get(server, at(exportId, forged))).status, 404);
    assert.equal((await get(server, at(exportId, 'test.9999999999.garbage'))).status, 404);
    const tokens = new DownloadTokens(server.secretKey);
    assert.equal((await get(server, at(exportId, tokens.sign(exportId, 'test', new Date(Date.now() - 1000))))).status, 404, 'expired');
    assert.equal((await get(server, at(exportId, tokens.sign(exportId, 'live', new Date(Date.now() + 3600_000))))).status, 404, 'the other environment');

    const second = await server.request('POST', '/v1/exports', { auth: alice.token, json: { include_content: false } });
    assert.equal(second.status, 202, second.text);
    await waitFinished(server, alice.token, second.json.id);
    assert.equal((await get(server, at(second.json.id, token))).status, 404, "another export's token");
    const metadataOnly = await get(server, at(second.json.id, tokens.sign(second.json.id, 'test', new Date(Date.now() + 3600_000))));
    assert.equal(metadataOnly.status, 200);
    const entries = await readZip(metadataOnly.body);
    assert.deepEqual(entries.map((e) => e.name), ['manifest.json'], 'include_content false: the manifest alone');
    assert.ok(JSON.parse(entries[0]?.data.toString() ?? '{}').files.every((f: { entry: null }) => f.entry === null));

    assert.equal((await server.request('GET', `/v1/exports/${exportId}`, { auth: bob.token })).status, 404);
    assert.equal((await get(server, `${server.url}/v1/exports/${exportId}/download`, { authorization: `Bearer ${bob.token}` })).status, 404);
    assert.equal((await server.request('GET', `/v1/exports/${exportId}`, { auth: server.keys.test.account_key })).status, 404, "the key did not make it");
    assert.equal((await server.request('GET', '/v1/exports/exp_nothing', { auth: alice.token })).status, 404);
    const bobList = await server.request('GET', '/v1/exports', { auth: bob.token });
    assert.deepEqual(bobList.json, { data: [], next_cursor: null });
    const aliceList = await server.request('GET', '/v1/exports', { auth: alice.token });
    assert.deepEqual(aliceList.json.data.map((e: { id: string }) => e.id), [second.json.id, exportId], 'newest first');
  });

  it('writes audit entries for the export created and downloaded', async () => {
    const audit = await server.request('GET', '/v1/audit?limit=200', { auth: server.keys.test.account_key });
    assert.equal(audit.status, 200, audit.text);
    const mine = audit.json.data.filter((e: { detail: { export_id?: string } }) => e.detail.export_id === exportId);
    const types = mine.map((e: { type: string }) => e.type);
    assert.ok(types.includes('export_created'), JSON.stringify(audit.json.data.slice(0, 5)));
    assert.ok(types.includes('export_downloaded'), types.join());
    assert.deepEqual(mine.find((e: { type: string }) => e.type === 'export_created').actor, { type: 'user', id: alice.id });
  });

  it('expires a finished export after its time: the sweep deletes the zip and the link stops working', { skip: inProcessOnly('moves the expiry in the database') }, async () => {
    await sql`update exports.export set expires_at = now() - interval '1 second' where id = ${exportId}`.execute(server.app.databases.environments.test);
    assert.equal((await get(server, link)).status, 404, 'past its expiry, before any sweep');
    assert.equal((await server.request('GET', `/v1/exports/${exportId}`, { auth: alice.token })).json.status, 'expired', 'expired before the sweep too');
    assert.ok((await server.app.exports.sweep()) >= 1);
    const status = await server.request('GET', `/v1/exports/${exportId}`, { auth: alice.token });
    assert.equal(status.json.status, 'expired');
    assert.equal((await get(server, link)).status, 404);
  });
});

describe('zip export requests', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ BANTU_EXPORTS_MAX_RUNNING: '1' });
  });
  after(async () => server?.close());

  it('refuses bad input with problem+json', async () => {
    const key = server.keys.test.account_key;
    const cases: Array<[unknown, number, string]> = [
      [{}, 422, 'validation_failed'],
      [{ email: 'not an address' }, 422, 'validation_failed'],
      [{ email: 'ops@example.com', unknown: 1 }, 422, 'validation_failed'],
      [{ email: 'ops@example.com', include_content: 'yes' }, 422, 'validation_failed'],
      [{ email: 'ops@example.com', path: '/a/../b' }, 422, 'validation_failed'],
    ];
    for (const [json, status, code] of cases) {
      const response = await server.request('POST', '/v1/exports', { auth: key, json });
      assert.equal(response.status, status, `${JSON.stringify(json)}: ${response.text}`);
      assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
      assert.equal(response.json.code, code);
    }
    const notJson = await server.request('POST', '/v1/exports', { auth: key, body: '{', headers: { 'content-type': 'application/json' } });
    assert.equal(notJson.status, 422);
    assert.equal(notJson.json.code, 'validation_failed');
    assert.equal((await server.request('POST', '/v1/exports', { json: {} })).status, 401);
    assert.equal((await server.request('POST', '/v1/exports', { auth: server.keys.test.application_key, json: { email: 'a@example.com' } })).status, 403);
  });

  it('allows a few running exports per tenant: more is 429 rate_limited', { skip: inProcessOnly('holds an export running in the database') }, async () => {
    const key = server.keys.test.account_key;
    const db = server.app.databases.environments.test;
    const first = await server.request('POST', '/v1/exports', { auth: key, json: { email: 'ops@example.com' } });
    assert.equal(first.status, 202);
    await waitFinished(server, key, first.json.id);
    // A run in hand: pending or running counts, the limit here is 1.
    const tenantId = (await sql<{ tenant_id: string }>`select tenant_id from exports.export where id = ${first.json.id}`.execute(db)).rows[0]?.tenant_id;
    await sql`insert into exports.export (id, tenant_id, creator, principal, include_content, include_versions, email, status)
      values ('exp_held', ${tenantId}, 'key:x', '{}'::jsonb, true, false, 'x@example.com', 'running')`.execute(db);
    const refused = await server.request('POST', '/v1/exports', { auth: key, json: { email: 'ops@example.com' } });
    assert.equal(refused.status, 429, refused.text);
    assert.equal(refused.json.code, 'rate_limited');
    assert.ok(refused.headers['retry-after']);
    const other = await createTenant(server, 'Other Co');
    assert.equal((await server.request('POST', '/v1/exports', { auth: other.test.account_key, json: { email: 'ops@other.example' } })).status, 202, 'per tenant');
    await sql`delete from exports.export where id = 'exp_held'`.execute(db);
    assert.equal((await server.request('POST', '/v1/exports', { auth: key, json: { email: 'ops@example.com' } })).status, 202);
  });
});

describe('zip exports cut short too often', { skip: inProcessOnly('puts an interrupted run in the database') }, () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(async () => server?.close());

  it('fail with the reason after their tries instead of running for ever, and the next one runs', async () => {
    const key = server.keys.test.account_key;
    await uploadRaw(server, key, 'content', { name: 'a.txt' });
    const first = await server.request('POST', '/v1/exports', { auth: key, json: { email: 'ops@example.com' } });
    assert.equal((await waitFinished(server, key, first.json.id)).status, 'ready');
    const db = server.app.databases.environments.test;
    const tenantId = (await sql<{ tenant_id: string }>`select tenant_id from exports.export where id = ${first.json.id}`.execute(db)).rows[0]?.tenant_id;
    // As a worker killed during its third run leaves it, and one killed during its first.
    await sql`insert into exports.export (id, tenant_id, creator, principal, include_content, include_versions, email, status, attempts)
      select 'exp_tried_out', tenant_id, creator, principal, true, false, email, 'running', 3 from exports.export where id = ${first.json.id}`.execute(db);
    await sql`insert into exports.export (id, tenant_id, creator, principal, include_content, include_versions, email, status, attempts)
      select 'exp_once', tenant_id, creator, principal, true, false, email, 'running', 1 from exports.export where id = ${first.json.id}`.execute(db);
    assert.ok(tenantId);
    await server.app.exports.recover();
    const triedOut = await server.request('GET', '/v1/exports/exp_tried_out', { auth: key });
    assert.equal(triedOut.json.status, 'failed');
    assert.match(triedOut.json.error, /interrupted 3 times .* request it again/);
    const once = await waitFinished(server, key, 'exp_once');
    assert.equal(once.status, 'ready', 'a run cut short once is run again');
    const again = await server.request('POST', '/v1/exports', { auth: key, json: { email: 'ops@example.com' } });
    assert.equal(again.status, 202);
    assert.equal((await waitFinished(server, key, again.json.id)).status, 'ready');
  });
});

describe('zip export of bytes that are not what the database records', { skip: inProcessOnly('alters a blob on disk') }, () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(async () => server?.close());

  it('fails the export with the reason, never ready, and the next one may be asked for', async () => {
    const key = server.keys.test.account_key;
    const good = await uploadRaw(server, key, 'intact bytes', { name: 'good.txt' });
    const bad = await uploadRaw(server, key, 'the original bytes', { name: 'bad.txt' });
    const blob = path.join(server.dataDir, 'blobs', 'test', bad.json.sha256.slice(0, 2), bad.json.sha256);
    await fs.chmod(blob, 0o600);
    await fs.writeFile(blob, 'THE ALTERED  BYTES');
    const created = await server.request('POST', '/v1/exports', { auth: key, json: { email: 'ops@example.com' } });
    const finished = await waitFinished(server, key, created.json.id);
    assert.equal(finished.status, 'failed');
    assert.match(finished.error, /files\/bad\.txt: the stored bytes .* are not the recorded/);
    const token = new DownloadTokens(server.secretKey).sign(created.json.id, 'test', new Date(Date.now() + 3600_000));
    assert.equal((await get(server, `${server.url}/v1/exports/${created.json.id}/download?token=${token}`)).status, 404, 'a failed export has nothing to download');
    const metadata = await server.request('POST', '/v1/exports', { auth: key, json: { email: 'ops@example.com', include_content: false } });
    assert.equal((await waitFinished(server, key, metadata.json.id)).status, 'ready');
    assert.equal(good.status, 201);
  });
});

describe('zip export over SMTP, and hostile names', () => {
  let server: TestServer;
  let smtp: SmtpReceiver;
  before(async () => {
    smtp = await startSmtpReceiver();
    server = await startServer({ SMTP_URL: smtp.url });
  });
  after(async () => {
    await server?.close();
    await smtp?.close();
  });

  it('gives every entry a safe, unique name, and unzip accepts the archive', { skip: inProcessOnly('writes hostile rows through the files repository') }, async () => {
    const key = server.keys.test.account_key;
    const seeds = [Buffer.from('one'), Buffer.from('two'), Buffer.from('three')];
    const stored: Array<{ id: string; size: number; sha256: string }> = [];
    for (const [i, data] of seeds.entries()) {
      const response = await uploadRaw(server, key, data, { name: `seed${i}.bin`, path: '/seed' });
      stored.push(response.json);
    }
    const db = server.app.databases.environments.test;
    const tenantId = (await sql<{ tenant_id: string }>`select tenant_id from files.file where id = ${stored[0]?.id}`.execute(db)).rows[0]?.tenant_id as string;
    // Names the API refuses, written as the files repository would: the export must cope with any stored row.
    const long = 'n'.repeat(251);
    const hostile: Array<[string, string]> = [
      ['/', '..'],
      ['/', '.'],
      ['/', '../../etc/passwd'],
      ['/../..', 'escape.txt'],
      ['/', '/absolute'],
      ['/', 'tab\there\u0001\u001f\u007f'],
      ['/', `${long}.txt`],
      ['/other', `${long}.txt`],
      ['/a:b', 'same.txt'],
      ['/a_b', 'same.txt'],
      ['/A_B', 'same.txt'],
      ['/', 'Same.TXT'],
      ['/', 'same.txt'],
      ['/', 'a_b'],
      ['/', 'e\u0301.txt'],
      ['/', '\u00e9.txt'],
      ['/', 'C:\\windows\\win.ini'],
    ];
    await withTenant(db, tenantId, async (trx) => {
      for (const [i, [folder, name]] of hostile.entries()) {
        const seed = stored[i % seeds.length] as { size: number; sha256: string };
        await insertFile({
          id: `file_hostile_${String(i).padStart(3, '0')}`,
          tenant_id: tenantId,
          user_id: `usr_${i}`,
          name,
          path: folder,
          size: seed.size,
          content_type: 'application/octet-stream',
          sha256: seed.sha256,
          version: 1,
          created_at: new Date(),
          updated_at: new Date(),
        }).execute(trx);
      }
    });

    assert.equal((await server.request('POST', '/v1/exports', { auth: key, json: {} })).json.code, 'validation_failed', 'a key names the address');
    const created = await server.request('POST', '/v1/exports', { auth: key, json: { email: 'ops@example.com', include_versions: true } });
    assert.equal(created.status, 202, created.text);
    const finished = await waitFinished(server, key, created.json.id);
    assert.equal(finished.status, 'ready', JSON.stringify(finished));
    await until(() => smtp.received.length > 0, 'the SMTP server to receive the mail');
    assert.deepEqual(smtp.received[0]?.to, ['ops@example.com']);
    const downloaded = await get(server, linkIn(smtp.received[0]?.data ?? ''));
    assert.equal(downloaded.status, 200);
    assert.equal((await fs.readdir(path.join(server.dataDir, 'mail')).catch(() => [])).length, 0, 'with SMTP_URL no .eml is written');

    assert.match(await unzipTest(downloaded.body, server.dataDir), /No errors detected/);
    const entries = await readZip(downloaded.body);
    const names = entries.map((e) => e.name);
    assert.equal(new Set(names.map((n) => n.toLowerCase())).size, names.length, 'unique, ignoring case');
    const folders = new Set(names.flatMap((n) => n.split('/').slice(0, -1).map((_, i, all) => all.slice(0, i + 1).join('/').toLowerCase())));
    for (const name of names) {
      assert.ok(isSafeEntryName(name), `safe: ${JSON.stringify(name)}`);
      assert.ok(!folders.has(name.toLowerCase()), `no entry is also a folder: ${name}`);
      assert.ok(name === 'manifest.json' || name.startsWith('files/') || name.startsWith('versions/'), name);
    }
    const manifest = JSON.parse(entries.find((e) => e.name === 'manifest.json')?.data.toString('utf8') ?? 'null');
    assert.equal(manifest.files.length, seeds.length + hostile.length);
    const byName = new Map(entries.map((e) => [e.name, e.data]));
    for (const file of manifest.files) {
      assert.equal(sha256(byName.get(file.entry) as Buffer), file.sha256, `${JSON.stringify(file.name)} -> ${file.entry}`);
      for (const version of file.versions) assert.equal(sha256(byName.get(version.entry) as Buffer), version.sha256);
    }
    const entryOf = (id: string) => manifest.files.find((f: { id: string }) => f.id === id).entry as string;
    assert.equal(entryOf('file_hostile_008'), 'files/a_b/same.txt');
    assert.equal(entryOf('file_hostile_009'), 'files/a_b (2)/same.txt', 'folders that collide after sanitizing get a deterministic suffix');
    assert.equal(entryOf('file_hostile_010'), 'files/A_B (3)/same.txt');
    assert.ok(Buffer.byteLength(entryOf('file_hostile_007').split('/').pop() as string) <= 255);
  });
});
