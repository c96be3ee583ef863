import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startServer, type TestServer } from './helpers/server.ts';
import { knownDistributedBug } from './helpers/shape.ts';

/** API key management: creation, listing without secrets, checksum, scopes, revocation. */
describe('API keys', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(async () => server?.close());

  const createKey = (body: unknown, key = server.keys.test.account_key) => server.request('POST', '/v1/keys', { basic: key, json: body });

  it('creates a key and shows its secret once; lists never show it', async () => {
    const created = await createKey({ kind: 'application', name: 'CRM', scopes: ['users:read', 'files:read'] });
    assert.equal(created.status, 201, created.text);
    assert.deepEqual(Object.keys(created.json).sort(), ['created_at', 'environment', 'id', 'key', 'kind', 'name', 'prefix', 'scopes']);
    assert.match(created.json.key, /^app_[0-9A-Za-z]{38}_test$/);
    assert.equal(created.json.environment, 'test');
    assert.equal(created.json.kind, 'application');
    assert.deepEqual(created.json.scopes.sort(), ['files:read', 'users:read']);
    assert.ok(created.json.key.startsWith(created.json.prefix.split('…')[0]));

    const live = await createKey({ kind: 'account', name: 'Ops' }, server.keys.live.account_key);
    assert.equal(live.status, 201);
    assert.match(live.json.key, /^acc_[0-9A-Za-z]{38}_live$/);
    assert.equal(live.json.environment, 'live');
    assert.equal((await server.request('GET', '/v1/keys', { basic: live.json.key })).status, 200, 'a new account key works');

    const list = await server.request('GET', '/v1/keys', { basic: server.keys.test.account_key });
    assert.equal(list.status, 200);
    const listed = list.json.data.find((k: { id: string }) => k.id === created.json.id);
    assert.ok(listed);
    assert.equal(listed.key, undefined);
    assert.ok(!list.text.includes(created.json.key), 'never the secret');
    assert.ok(!list.text.includes(server.keys.test.account_key));
    assert.ok(!list.json.data.some((k: { id: string }) => k.id === live.json.id), 'only the caller environment');
  });

  it('refuses unknown scopes, kinds and fields with 422', async () => {
    for (const body of [
      { kind: 'application', name: 'X', scopes: ['users:admin'] },
      { kind: 'superuser', name: 'X' },
      { kind: 'application' },
      { kind: 'application', name: 'X', expires: 'never' },
      { kind: 'application', name: '' },
    ]) {
      const response = await createKey(body);
      assert.equal(response.status, 422, JSON.stringify(body));
      assert.equal(response.json.code, 'validation_failed');
    }
  });

  it('lets only account keys manage keys', async () => {
    assert.equal((await server.request('GET', '/v1/keys', { basic: server.keys.test.application_key })).status, 403);
    assert.equal((await createKey({ kind: 'account', name: 'escalate' }, server.keys.test.application_key)).status, 403);
    const user = await server.request('POST', '/v1/auth/register', {
      basic: server.keys.test.application_key,
      json: { email: 'keyless@example.com', password: 'a good password', name: 'K' },
    });
    assert.equal((await server.request('GET', '/v1/keys', { auth: user.json.access_token })).status, 403);
    assert.equal((await server.request('GET', '/v1/keys')).status, 401);
  });

  it('refuses a key with one character changed (checksum)', async () => {
    const key = server.keys.test.account_key;
    assert.equal((await server.request('GET', '/v1/keys', { basic: key })).status, 200);
    const swap = (c: string) => (c === 'a' ? 'b' : 'a');
    for (const position of [4, 20, 35, 41]) {
      const changed = key.slice(0, position) + swap(key[position] as string) + key.slice(position + 1);
      assert.notEqual(changed, key);
      const response = await server.request('GET', '/v1/keys', { basic: changed });
      assert.equal(response.status, 401, `position ${position}`);
      assert.equal(response.json.code, 'unauthorized');
    }
    const otherEnvironment = `${key.slice(0, -5)}_live`;
    assert.equal((await server.request('GET', '/v1/keys', { basic: otherEnvironment })).status, 401, 'the environment is covered by the checksum');
  });

  it('grants application keys their scopes only', async () => {
    const bare = server.keys.test.application_key;
    const denied = await server.request('GET', '/v1/users', { basic: bare });
    assert.equal(denied.status, 403);
    assert.equal(denied.json.code, 'forbidden');
    assert.match(denied.json.detail, /users:read/);

    const reader = (await createKey({ kind: 'application', name: 'reader', scopes: ['users:read'] })).json.key;
    assert.equal((await server.request('GET', '/v1/users', { basic: reader })).status, 200);
    const write = await server.request('POST', '/v1/users', { basic: reader, json: { email: 'w@example.com', password: 'a good password', name: 'W' } });
    assert.equal(write.status, 403, 'users:read does not write');

    const writer = (await createKey({ kind: 'application', name: 'writer', scopes: ['users:write'] })).json.key;
    const created = await server.request('POST', '/v1/users', { basic: writer, json: { email: 'w@example.com', password: 'a good password', name: 'W' } });
    assert.equal(created.status, 201);
    // users:write manages plain users only: no admin made, changed or deleted by an application key.
    const makeAdmin = await server.request('POST', '/v1/users', { basic: writer, json: { email: 'adm@example.com', password: 'a good password', name: 'A', role: 'admin' } });
    assert.equal(makeAdmin.status, 403);
    const promote = await server.request('PATCH', `/v1/users/${created.json.id}`, { basic: writer, json: { role: 'admin' } });
    assert.equal(promote.status, 403);
    const boss = await server.request('POST', '/v1/users', {
      basic: server.keys.test.account_key,
      json: { email: 'boss@example.com', password: 'a good password', name: 'Boss', role: 'admin' },
    });
    assert.equal((await server.request('PATCH', `/v1/users/${boss.json.id}`, { basic: writer, json: { password: 'taken over now' } })).status, 403);
    assert.equal((await server.request('DELETE', `/v1/users/${boss.json.id}`, { basic: writer })).status, 403);
    assert.equal((await server.request('PATCH', `/v1/users/${created.json.id}`, { basic: writer, json: { name: 'Renamed' } })).status, 200, 'plain users are fine');
    // Without any scope an application key still signs users in.
    const login = await server.request('POST', '/v1/auth/login', { basic: bare, json: { email: 'w@example.com', password: 'a good password' } });
    assert.equal(login.status, 200);
  });

  it('revokes a key: 204, then 401 with it, 404 on a second revoke', async () => {
    const created = (await createKey({ kind: 'application', name: 'doomed', scopes: ['users:read'] })).json;
    assert.equal((await server.request('GET', '/v1/users', { basic: created.key })).status, 200, 'works and is now cached');
    const revoked = await server.request('DELETE', `/v1/keys/${created.id}`, { basic: server.keys.test.account_key });
    assert.equal(revoked.status, 204);
    assert.equal(revoked.text, '');
    assert.equal((await server.request('GET', '/v1/users', { basic: created.key })).status, 401);
    assert.equal((await server.request('GET', '/v1/users', { auth: created.key })).status, 401, 'as Bearer too');
    assert.equal((await server.request('DELETE', `/v1/keys/${created.id}`, { basic: server.keys.test.account_key })).status, 404);
    const list = await server.request('GET', '/v1/keys', { basic: server.keys.test.account_key });
    assert.ok(!list.json.data.some((k: { id: string }) => k.id === created.id));

    const audit = await server.request('GET', '/v1/audit?limit=200', { basic: server.keys.test.account_key });
    const types = audit.json.data.map((e: { type: string; detail: { key_id?: string } }) => `${e.type}:${e.detail.key_id ?? ''}`);
    assert.ok(types.includes(`key_created:${created.id}`));
    assert.ok(types.includes(`key_revoked:${created.id}`));
    assert.ok(!audit.text.includes(created.key), 'the audit trail never holds a secret');
  });

  it('paginates keys with a cursor', async () => {
    for (let i = 0; i < 4; i++) await createKey({ kind: 'application', name: `page ${i}` });
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const page = await server.request('GET', `/v1/keys?limit=3${cursor ? `&cursor=${cursor}` : ''}`, { basic: server.keys.test.account_key });
      assert.equal(page.status, 200);
      seen.push(...page.json.data.map((k: { id: string }) => k.id));
      cursor = page.json.next_cursor;
    } while (cursor);
    assert.equal(new Set(seen).size, seen.length);
    assert.deepEqual(seen, [...seen].sort().reverse());
    assert.ok(seen.length >= 6);
  });
});
