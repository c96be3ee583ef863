import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { sql } from 'kysely';
import { request } from 'undici';
import { runCli } from './helpers/cli.ts';
import { backedUp, sha256, streamUpload, uploadRaw } from './helpers/files.ts';
import { objectKeys, startS3rver, type TestS3 } from './helpers/s3.ts';
import { makeTempDir, startServer, type TestServer } from './helpers/server.ts';

/**
 * Files and backups in S3 (issue 16), end to end: Bantu started with S3_* pointing at s3rver on
 * 127.0.0.1, spoken to over HTTPS, its buckets read back with the SDK.
 */
const MiB = 1024 * 1024;
const FILES = 'bantu-files';
const BACKUPS = 'bantu-backups';
const objectOf = (sha: string) => `${sha.slice(0, 2)}/${sha}`;

describe('files and backups in S3', () => {
  let s3: TestS3;
  let client: S3Client;
  let server: TestServer;
  const env = () => s3.env({ S3_BUCKET: FILES, S3_BACKUP_BUCKET: BACKUPS });
  before(async () => {
    s3 = await startS3rver();
    client = s3.client();
    server = await startServer(env());
  });
  after(async () => {
    await server?.close();
    client?.destroy();
    await s3?.close();
  });

  const uploaded: Record<'live' | 'test', Array<{ id: string; sha256: string }>> = { live: [], test: [] };

  it("keeps each environment's files and backups in its own buckets, each object under its content address", async () => {
    const shared = 'the same bytes in both environments';
    for (const environment of ['live', 'test'] as const) {
      const key = server.keys[environment].account_key;
      for (const [name, content] of [
        [`${environment}-only.txt`, `only in ${environment}: ${randomBytes(8).toString('hex')}`],
        ['shared.txt', shared],
      ]) {
        const answer = await uploadRaw(server, key, content as string, { name: name as string, contentType: 'text/plain' });
        assert.equal(answer.status, 201, answer.text);
        uploaded[environment].push(answer.json);
      }
      await backedUp(server, key, 2);
    }
    const expected = (environment: 'live' | 'test') => uploaded[environment].map((file) => objectOf(file.sha256)).sort();
    assert.notDeepEqual(expected('live'), expected('test'));
    for (const environment of ['live', 'test'] as const) {
      assert.deepEqual(await objectKeys(client, `${FILES}-${environment}`), expected(environment), `${FILES}-${environment}`);
      assert.deepEqual(await objectKeys(client, `${BACKUPS}-${environment}`), expected(environment), `${BACKUPS}-${environment}`);
    }
    // The backup copied each blob inside S3 (one service for both): a CopyObject from the files bucket, no GET.
    for (const environment of ['live', 'test'] as const) {
      const copies = s3.requests.filter((r) => r.copySource?.startsWith(`${FILES}-${environment}/`) && r.path.startsWith(`/${BACKUPS}-${environment}/`));
      assert.deepEqual(copies.map((r) => r.path).sort(), expected(environment).map((object) => `/${BACKUPS}-${environment}/${object}`), environment);
      assert.ok(!s3.requests.some((r) => r.method === 'GET' && r.path.startsWith(`/${FILES}-${environment}/`) && r.path.length > `/${FILES}-${environment}/`.length), 'no blob read back');
    }
    // Nothing went to the data dir's folders.
    assert.equal(fs.existsSync(path.join(server.dataDir, 'blobs')), false);
    assert.equal(fs.existsSync(path.join(server.dataDir, 'backups')), false);

    const key = server.keys.live.account_key;
    const file = uploaded.live[0] as { id: string };
    const whole = await server.request('GET', `/v1/files/${file.id}/content`, { auth: key });
    assert.equal(whole.status, 200);
    assert.match(whole.text, /^only in live: /);
    const part = await server.request('GET', `/v1/files/${file.id}/content`, { auth: key, headers: { range: 'bytes=5-11' } });
    assert.equal(part.status, 206);
    assert.equal(part.text, 'in live');
    const version = await server.request('GET', `/v1/files/${file.id}/versions/1/content`, { auth: key });
    assert.equal(version.status, 200);
    assert.equal(version.text, whole.text);
  });

  it('bantu backup verify finds a flipped byte in a backup object, exits 1 and names it', async () => {
    const cli = () => runCli(['backup', 'verify'], { ...env(), DATABASE_URL: server.app.databases.controlUrl, BANTU_DATA_DIR: server.dataDir, BANTU_LOG_LEVEL: 'error' });
    const clean = cli();
    assert.equal((await clean.exited).code, 0, clean.stdout() + clean.stderr());
    assert.match(clean.stdout(), /verified 4 blobs holding 4 versions: all intact/);

    const bad = uploaded.test[0] as { id: string; sha256: string };
    const object = { Bucket: `${BACKUPS}-test`, Key: objectOf(bad.sha256) };
    const bytes = Buffer.from(await ((await client.send(new GetObjectCommand(object))).Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
    bytes[3] = (bytes[3] as number) ^ 0x01;
    await client.send(new PutObjectCommand({ ...object, Body: bytes }));

    const verify = cli();
    assert.equal((await verify.exited).code, 1, verify.stdout() + verify.stderr());
    const out = verify.stdout();
    assert.match(out, new RegExp(`DAMAGED environment=test tenant=\\S+ file=${bad.id} version=1 event=File_create sha256=${bad.sha256}: checksum mismatch`));
    for (const other of [...uploaded.live, ...uploaded.test.slice(1)]) assert.doesNotMatch(out, new RegExp(other.id));
    assert.match(out, /1 blobs damaged \(1 versions\)/);
  });

  it('S3 stopped mid-upload: 503 service_unavailable with Retry-After, no row, no event; started again, the same upload succeeds', async () => {
    const key = server.keys.test.account_key;
    const db = server.app.databases.environments.test;
    const count = async () => ({
      files: (await sql<{ n: number }>`select count(*)::int as n from files.file`.execute(db)).rows[0]?.n,
      events: (await sql<{ n: number }>`select count(*)::int as n from bus.outbox`.execute(db)).rows[0]?.n,
    });
    const before = await count();
    const body = randomBytes(12 * MiB);
    const upload = (write: Parameters<typeof streamUpload>[1]['write']) =>
      streamUpload(server, { path: '/v1/files?name=outage.bin', key, headers: { 'content-type': 'application/octet-stream', 'content-length': body.length }, write });

    const answer = await upload(async (request) => {
      await new Promise<void>((resolve) => request.write(body.subarray(0, 6 * MiB), () => resolve()));
      await s3.stop();
      if (!request.destroyed) request.end(body.subarray(6 * MiB));
    });
    try {
      assert.equal(answer.status, 503, JSON.stringify(answer.json));
      assert.match(String(answer.headers['content-type']), /^application\/problem\+json/);
      assert.equal(answer.json.code, 'service_unavailable');
      assert.equal(answer.headers['retry-after'], '5');
      assert.doesNotMatch(JSON.stringify(answer.json), /127\.0\.0\.1|ECONNREFUSED|S3/i, 'nothing of what is behind the gateway');
      assert.deepEqual(await count(), before, 'no file row, no event');
      const ready = await server.request('GET', '/readyz');
      assert.equal(ready.status, 503);
      assert.equal(ready.json.dependencies.s3_blobs_test.status, 'down');
    } finally {
      await s3.start();
    }

    const again = await upload(async (request) => void request.end(body));
    assert.equal(again.status, 201, JSON.stringify(again.json));
    assert.equal(again.json.sha256, sha256(body));
    assert.equal(again.json.size, body.length);
    const content = await request(`${server.url}/v1/files/${again.json.id}/content`, {
      headers: { authorization: `Bearer ${key}`, range: `bytes=${9 * MiB}-${9 * MiB + 99}` },
      dispatcher: server.http,
    });
    assert.equal(content.statusCode, 206);
    assert.deepEqual(Buffer.from(await content.body.arrayBuffer()), body.subarray(9 * MiB, 9 * MiB + 100));
    assert.ok((await objectKeys(client, `${FILES}-test`)).includes(objectOf(sha256(body))));
    assert.equal((await server.request('GET', '/readyz')).status, 200);
  });
});

describe('bantu start with an S3 bucket it cannot use', () => {
  let s3: TestS3;
  before(async () => {
    s3 = await startS3rver();
  });
  after(async () => s3?.close());

  it('stops the start with one plain line naming the bucket, before anything starts', async () => {
    const dir = await makeTempDir();
    try {
      const bad = runCli(['start'], { ...s3.env({ S3_BUCKET: 'refused' }), S3_ACCESS_KEY_ID: 'NOT-A-KEY', BANTU_DATA_DIR: dir, BANTU_PORT: '0' });
      assert.equal((await bad.exited).code, 1, bad.stdout() + bad.stderr());
      assert.equal(
        bad.stderr(),
        `Bantu cannot start: S3 bucket "refused-live" at ${s3.endpoint} refuses these credentials: check S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY and the bucket policy (HTTP 403)\n`,
      );
      assert.doesNotMatch(bad.stderr() + bad.stdout(), /S3RVER/, 'no secret');
      assert.ok(!fs.existsSync(path.join(dir, 'postgres')), 'nothing was started');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
