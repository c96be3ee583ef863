import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import tls from 'node:tls';
import { sql } from 'kysely';
import { blobCount, multipartBody, tempFiles, until, uploadRaw } from './helpers/files.ts';
import type { TestServer } from './helpers/server.ts';
import { sharedWhenDistributed } from './helpers/shared-server.ts';
import { type ClientAnswer, fetchUpload, httpsUpload, parseResponse, tlsUpload, type Upload } from './helpers/uploads.ts';

/**
 * Bad uploads always get their answer (issue 11): a malformed multipart body is a 4xx, never a
 * 500; an answer given before the body was read reaches the client, whichever client it is;
 * and nothing of a refused upload is kept (blob, temp file, row, event).
 */
const MiB = 1024 * 1024;
const LIMIT = MiB;
const B = 'bantuBoundary';
const MULTIPART = `multipart/form-data; boundary=${B}`;
/** Every block has the same limit: distributed, they share one deployment. */
const servers = sharedWhenDistributed({ BANTU_MAX_UPLOAD_BYTES: String(LIMIT) });

interface Kept {
  blobs: number;
  files: number;
  events: number;
}

async function kept(server: TestServer): Promise<Kept> {
  const db = server.app.databases.environments.test;
  const files = await sql<{ n: number }>`select count(*)::int as n from files.file`.execute(db);
  const events = await sql<{ n: number }>`select count(*)::int as n from bus.outbox`.execute(db);
  return { blobs: await blobCount(server), files: files.rows[0]?.n ?? 0, events: events.rows[0]?.n ?? 0 };
}

/** Nothing of a refused upload remains: temp files go (the store removes them as it fails), the rest never came. */
async function assertNothingKept(server: TestServer, before: Kept, what: string): Promise<void> {
  await until(async () => (await tempFiles(server)).length === 0, `${what}: temp files to go`);
  assert.deepEqual(await kept(server), before, `${what}: blobs, file rows and events unchanged`);
}

function assertProblem(answer: ClientAnswer, status: number, code: string, what: string): void {
  assert.equal(answer.status, status, `${what}: ${JSON.stringify(answer.json)}`);
  assert.match(answer.headers['content-type'] ?? '', /^application\/problem\+json/, what);
  assert.equal(answer.json?.code, code, what);
}

const part = (headers: string[], body: string | Buffer = '') => Buffer.concat([Buffer.from(`--${B}\r\n${headers.join('\r\n')}\r\n\r\n`), Buffer.from(body), Buffer.from('\r\n')]);
const filePart = (content: string | Buffer, filename = 'a.txt') => part([`Content-Disposition: form-data; name="file"; filename="${filename}"`, 'Content-Type: text/plain'], content);
const field = (name: string, value: string) => part([`Content-Disposition: form-data; name="${name}"`], value);
const closing = Buffer.from(`--${B}--\r\n`);
const body = (...pieces: Buffer[]) => Buffer.concat(pieces);

/** The table: each body, what it is, and the problem it must get. */
const MALFORMED: { what: string; contentType?: string; body: Buffer; status: number; code: string; field?: string }[] = [
  { what: 'the boundary never appears in the body', body: Buffer.from('hello world, no boundary here'), status: 400, code: 'malformed_body' },
  { what: 'no boundary parameter in Content-Type', contentType: 'multipart/form-data', body: body(filePart('x'), closing), status: 400, code: 'malformed_body' },
  { what: 'cut short inside the file part', body: Buffer.from(`--${B}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhalf of the cont`), status: 400, code: 'malformed_body' },
  { what: 'cut short after the file part (no closing boundary)', body: body(filePart('a whole file part')), status: 400, code: 'malformed_body' },
  { what: 'cut short inside part headers', body: Buffer.from(`--${B}\r\nContent-Disposition: form-data; na`), status: 400, code: 'malformed_body' },
  {
    what: 'part headers over the size limit',
    body: body(part([`X-Padding: ${'p'.repeat(20 * 1024)}`, 'Content-Disposition: form-data; name="file"; filename="a.txt"'], 'content'), closing),
    status: 422,
    code: 'validation_failed',
    field: 'file',
  },
  {
    what: 'more part header lines than allowed',
    body: body(part([...Array.from({ length: 30 }, (_, i) => `X-H${i}: v`), 'Content-Disposition: form-data; name="file"; filename="a.txt"'], 'content'), closing),
    status: 422,
    code: 'validation_failed',
    field: 'file',
  },
  { what: 'no file part', body: body(field('name', 'a.txt'), field('path', '/docs'), closing), status: 422, code: 'validation_failed', field: 'file' },
  { what: 'an empty body', body: Buffer.alloc(0), status: 422, code: 'validation_failed', field: 'file' },
  { what: 'two file parts', body: body(filePart('first'), filePart('second', 'b.txt'), closing), status: 422, code: 'validation_failed', field: 'file' },
  { what: 'a field over its size limit, before the file', body: body(field('path', `/${'d'.repeat(5000)}`), filePart('x'), closing), status: 422, code: 'validation_failed', field: 'path' },
  { what: 'a field over its size limit, after the file', body: body(filePart('x'), field('name', 'n'.repeat(5000)), closing), status: 422, code: 'validation_failed', field: 'name' },
  { what: 'a field the upload does not take', body: body(filePart('x'), field('f'.repeat(200), 'v'), closing), status: 422, code: 'validation_failed' },
  { what: 'a second file part under another name', body: body(filePart('x'), part(['Content-Disposition: form-data; name="other"; filename="b.txt"'], 'y'), closing), status: 422, code: 'validation_failed', field: 'other' },
  {
    what: 'a Content-Disposition that is not form-data',
    body: body(part(['Content-Disposition: attachment; name="file"; filename="a.txt"'], 'x'), closing),
    status: 422,
    code: 'validation_failed',
    field: 'file',
  },
  { what: 'a part without Content-Disposition', body: body(part(['Content-Type: text/plain'], 'x'), closing), status: 422, code: 'validation_failed', field: 'file' },
  { what: 'a file part with an unsafe filename', body: body(filePart('x', '..'), closing), status: 422, code: 'validation_failed', field: 'name' },
  { what: 'a field named __proto__', body: body(field('__proto__', 'x'), filePart('x'), closing), status: 400, code: 'malformed_body' },
  { what: 'a JSON field that is not JSON', body: body(part(['Content-Disposition: form-data; name="meta"', 'Content-Type: application/json'], '{nope'), filePart('x'), closing), status: 400, code: 'malformed_body' },
  { what: 'more parts than allowed', body: body(...Array.from({ length: 25 }, () => field('path', '/p')), filePart('x'), closing), status: 413, code: 'payload_too_large' },
];

describe('malformed multipart bodies', () => {
  let server: TestServer;
  let key: string;
  before(async () => {
    server = await servers.start();
    key = server.keys.test.account_key;
  });
  after(async () => server?.close());

  for (const bad of MALFORMED) {
    it(`answers ${bad.status} ${bad.code} to ${bad.what}, keeping nothing`, async () => {
      const before = await kept(server);
      const answer = await fetchUpload(server, { path: '/v1/files', auth: key, contentType: bad.contentType ?? MULTIPART, body: bad.body });
      assertProblem(answer, bad.status, bad.code, bad.what);
      if (bad.field) assert.ok(answer.json.errors?.some((e: { field: string }) => e.field === bad.field), `${bad.what}: errors name ${bad.field}: ${JSON.stringify(answer.json)}`);
      await assertNothingKept(server, before, bad.what);
      assert.equal((await server.request('GET', '/healthz')).status, 200);
    });
  }

  it('the same malformed bodies on a replace keep the file as it was', async () => {
    const created = await uploadRaw(server, key, 'version one', { name: 'kept.txt', contentType: 'text/plain' });
    assert.equal(created.status, 201, created.text);
    const before = await kept(server);
    // A replace keeps the file's name: the part's filename is not checked there.
    for (const bad of MALFORMED.filter((m) => m.field !== 'name' || m.what.includes('size limit'))) {
      const answer = await fetchUpload(server, { method: 'PUT', path: `/v1/files/${created.json.id}/content`, auth: key, contentType: bad.contentType ?? MULTIPART, body: bad.body });
      // A replace takes no form fields, so some bodies fail on a field first: any 4xx problem, never a new version.
      assert.ok(answer.status >= 400 && answer.status < 500, `${bad.what}: ${answer.status} ${JSON.stringify(answer.json)}`);
      assert.ok(['malformed_body', 'validation_failed', 'payload_too_large'].includes(answer.json?.code), bad.what);
    }
    await assertNothingKept(server, before, 'replaces');
    const file = await server.request('GET', `/v1/files/${created.json.id}/content`, { auth: key });
    assert.equal(file.text, 'version one');
  });

  it('a well-formed multipart upload still works', async () => {
    const { body: form, contentType } = multipartBody({ path: '/ok' }, { content: 'fine', filename: 'fine.txt', contentType: 'text/plain' });
    const answer = await fetchUpload(server, { path: '/v1/files', auth: key, contentType, body: form });
    assert.equal(answer.status, 201, JSON.stringify(answer.json));
    assert.equal(answer.json.path, '/ok');
  });
});

describe('answers given before the body is read reach the client', () => {
  let server: TestServer;
  let key: string;
  let otherUserFile: string;
  let ownFile: string;
  let userToken: string;
  before(async () => {
    server = await servers.start();
    key = server.keys.test.account_key;
    const app = server.keys.test.application_key;
    const register = (email: string) => server.request('POST', '/v1/auth/register', { basic: app, json: { email, password: 'password 123', name: email } });
    const owner = await register('owner@example.com');
    userToken = (await register('intruder@example.com')).json.access_token;
    const file = await uploadRaw(server, owner.json.access_token, 'private', { name: 'private.txt' });
    assert.equal(file.status, 201, file.text);
    otherUserFile = file.json.id;
    ownFile = (await uploadRaw(server, key, 'mine', { name: 'mine.txt' })).json.id;
  });
  after(async () => server?.close());

  const clients = {
    'undici fetch': (upload: Upload) => fetchUpload(server, upload),
    'node:https': (upload: Upload) => httpsUpload(server, upload),
    'a slow TLS socket': (upload: Upload) => tlsUpload(server, upload, { chunkBytes: 64 * 1024, pauseMs: 1 }),
  };

  const oversized = (factor: number, kind: 'raw' | 'multipart', chunked: boolean): Upload => {
    const content = randomBytes(factor * LIMIT);
    if (kind === 'raw') return { path: '/v1/files?name=big.bin', auth: key, contentType: 'application/octet-stream', body: content, chunked };
    const form = multipartBody({}, { content, filename: 'big.bin' });
    return { path: '/v1/files', auth: key, contentType: form.contentType, body: form.body, chunked };
  };

  for (const [client, send] of Object.entries(clients)) {
    for (const kind of ['raw', 'multipart'] as const) {
      it(`${client}: 413 at 2x, 8x and 64x the limit (${kind}, declared and chunked), nothing kept`, async () => {
        for (const factor of [2, 8, 64]) {
          for (const chunked of [false, true]) {
            const what = `${factor}x ${kind}${chunked ? ' chunked' : ''}`;
            const before = await kept(server);
            assertProblem(await send(oversized(factor, kind, chunked)), 413, 'payload_too_large', what);
            await assertNothingKept(server, before, what);
          }
        }
      });
    }

    it(`${client}: 404 for another user's file and 401 without credentials, read while still sending`, async () => {
      const body = randomBytes(8 * LIMIT);
      const before = await kept(server);
      const notMine = await send({ method: 'PUT', path: `/v1/files/${otherUserFile}/content`, auth: userToken, contentType: 'application/octet-stream', body });
      assertProblem(notMine, 404, 'not_found', 'another user\'s file');
      const anonymous = await send({ path: '/v1/files?name=anon.bin', contentType: 'application/octet-stream', body });
      assertProblem(anonymous, 401, 'unauthorized', 'no credentials');
      assert.ok(anonymous.headers['www-authenticate'], 'with WWW-Authenticate');
      await assertNothingKept(server, before, '404 and 401');
    });
  }

  // A client that checks for an answer only once its request is out: without a lingering close
  // its writes meet a closed socket (EPIPE or ECONNRESET) and it never reads the answer.
  for (const [what, upload] of [
    ['413 by Content-Length', () => oversized(8, 'raw', false)],
    ['413 mid-stream, raw', () => oversized(8, 'raw', true)],
    ['413 mid-stream, multipart', () => oversized(8, 'multipart', true)],
    ['401', () => ({ path: '/v1/files?name=a.bin', contentType: 'application/octet-stream', body: randomBytes(8 * LIMIT) })],
    ['404', () => ({ method: 'PUT' as const, path: `/v1/files/${otherUserFile}/content`, auth: userToken, contentType: 'application/octet-stream', body: randomBytes(8 * LIMIT) })],
    ['412', () => ({ method: 'PUT' as const, path: `/v1/files/${ownFile}/content`, auth: key, headers: { 'if-match': `"${'0'.repeat(64)}"` }, contentType: 'application/octet-stream', body: randomBytes(8 * LIMIT) })],
  ] as const) {
    it(`a client that writes its whole body before reading still reads the answer (${what})`, async () => {
      const answer = await tlsUpload(server, upload(), { writeAllFirst: true, pauseMs: 0 });
      assert.equal(answer.status, Number(what.slice(0, 3)), JSON.stringify(answer));
      assert.equal(answer.headers.connection, 'close');
    });
  }

  it('cuts off a client that keeps sending after the answer: at most 64 MiB more', async () => {
    const result = await keepSending(server, { auth: key, chunkBytes: 256 * 1024, pauseMs: 0, giveUpAfterBytes: 512 * MiB });
    assert.equal(result.status, 413);
    assert.ok(result.closedByServer, `the server closed the connection (sent ${result.sentAfterAnswer} bytes after the answer)`);
    // 64 MiB drained, plus what socket buffers on both sides held when it stopped reading.
    assert.ok(result.sentAfterAnswer < 64 * MiB + 16 * MiB, `${result.sentAfterAnswer} bytes sent after the answer`);
  });

  it('cuts off a client that trickles after the answer, and stays healthy', async () => {
    // 1 KiB every 20 ms would last 60 s: the server must end it well before the client does.
    const result = await keepSending(server, { auth: key, chunkBytes: 1024, pauseMs: 20, giveUpAfterBytes: 3000 * 1024 });
    assert.equal(result.status, 413);
    assert.ok(result.closedByServer, `the server closed the connection (${result.sentAfterAnswer} bytes after the answer)`);
    assert.ok(result.sentAfterAnswer < 3000 * 1024);
    assert.equal((await server.request('GET', '/healthz')).status, 200);
  });
});

/**
 * Declares a body far over the limit, reads the 413, and keeps writing until the server closes
 * the connection or `giveUpAfterBytes` more have been written.
 */
function keepSending(
  server: TestServer,
  options: { auth: string; chunkBytes: number; pauseMs: number; giveUpAfterBytes: number },
): Promise<{ status: number; sentAfterAnswer: number; closedByServer: boolean }> {
  const url = new URL(server.url);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: url.hostname, port: Number(url.port), ca: server.ca, servername: 'localhost' });
    const received: Buffer[] = [];
    let status = 0;
    let sentAfterAnswer = 0;
    let closedByServer = false;
    socket.on('data', (chunk: Buffer) => {
      received.push(chunk);
      status ||= parseResponse(Buffer.concat(received))?.status ?? 0;
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      closedByServer = sentAfterAnswer < options.giveUpAfterBytes;
      if (!status) reject(new Error('closed before an answer'));
      else resolve({ status, sentAfterAnswer, closedByServer });
    });
    socket.once('secureConnect', async () => {
      socket.write(`POST /v1/files?name=endless.bin HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${options.auth}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${100 * 1024 * MiB}\r\n\r\n`);
      const chunk = randomBytes(options.chunkBytes);
      while (!socket.destroyed && sentAfterAnswer < options.giveUpAfterBytes) {
        const flushed = socket.write(chunk);
        if (status) sentAfterAnswer += chunk.length;
        if (!flushed) await new Promise((resolve) => socket.once('drain', resolve).once('close', resolve));
        await new Promise((resolve) => setTimeout(resolve, options.pauseMs));
      }
      socket.destroy();
    });
  });
}
