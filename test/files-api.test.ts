import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { eventsOf, multipartBody, sha256, uploadRaw } from './helpers/files.ts';
import { startServer, type TestServer } from './helpers/server.ts';

describe('files API', () => {
  let server: TestServer;
  let key: string;
  before(async () => {
    server = await startServer();
    key = server.keys.test.account_key;
  });
  after(async () => server?.close());

  it('uploads a raw body and answers 201 with the File object', async () => {
    const content = Buffer.from('hello, files');
    const response = await uploadRaw(server, key, content, { name: 'hello.txt', path: '/docs//2026/', contentType: 'text/plain' });
    assert.equal(response.status, 201, response.text);
    const file = response.json;
    assert.match(file.id, /^file_/);
    assert.equal(file.name, 'hello.txt');
    assert.equal(file.path, '/docs/2026');
    assert.equal(file.size, content.length);
    assert.equal(file.content_type, 'text/plain');
    assert.equal(file.sha256, sha256(content));
    assert.equal(file.version, 1);
    assert.equal(file.owner_id, null);
    assert.ok(Date.parse(file.created_at) && Date.parse(file.updated_at));
    const events = await eventsOf(server, file.id);
    assert.deepEqual(events.map((e) => e.type), ['File_create']);
    assert.deepEqual(events[0]?.data.file, file);
  });

  it('uploads multipart with the part file and fields path and name', async () => {
    const content = Buffer.from('multipart bytes');
    const { body, contentType } = multipartBody({ path: '/mp' }, { content, filename: 'from-part.bin', contentType: 'application/pdf' });
    const response = await server.request('POST', '/v1/files', { auth: key, body, headers: { 'content-type': contentType } });
    assert.equal(response.status, 201, response.text);
    assert.equal(response.json.name, 'from-part.bin');
    assert.equal(response.json.path, '/mp');
    assert.equal(response.json.content_type, 'application/pdf');
    assert.equal(response.json.sha256, sha256(content));
    const download = await server.request('GET', `/v1/files/${response.json.id}/content`, { auth: key });
    assert.equal(download.text, content.toString());
  });
});
