import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createTenant, uploadRaw } from './helpers/files.ts';
import { startServer, type TestServer } from './helpers/server.ts';

/** Every way one caller can touch a file; each must answer 404 to a caller who may not see it. */
async function touchAll(server: TestServer, auth: string, id: string): Promise<number[]> {
  return Promise.all([
    server.request('GET', `/v1/files/${id}`, { auth }),
    server.request('GET', `/v1/files/${id}/content`, { auth }),
    server.request('PUT', `/v1/files/${id}/content`, { auth, body: 'overwrite', headers: { 'content-type': 'text/plain' } }),
    server.request('PATCH', `/v1/files/${id}`, { auth, json: { name: 'stolen.txt' } }),
    server.request('DELETE', `/v1/files/${id}`, { auth }),
  ]).then((responses) => responses.map((r) => r.status));
}

describe('files isolation', () => {
  let server: TestServer;
  let file: { id: string };
  before(async () => {
    server = await startServer();
    file = (await uploadRaw(server, server.keys.test.account_key, 'secret of default/test', { name: 'secret.txt' })).json;
  });
  after(async () => server?.close());

  it('hides a file from another tenant: 404 everywhere, and absent from its lists', async () => {
    const other = await createTenant(server, 'Other Co');
    assert.deepEqual(await touchAll(server, other.test.account_key, file.id), [404, 404, 404, 404, 404]);
    const list = await server.request('GET', '/v1/files', { auth: other.test.account_key });
    assert.deepEqual(list.json.data, []);
  });

  it('hides a file from the other environment of the same tenant', async () => {
    assert.deepEqual(await touchAll(server, server.keys.live.account_key, file.id), [404, 404, 404, 404, 404]);
    const list = await server.request('GET', '/v1/files', { auth: server.keys.live.account_key });
    assert.deepEqual(list.json.data, []);
    const still = await server.request('GET', `/v1/files/${file.id}/content`, { auth: server.keys.test.account_key });
    assert.equal(still.text, 'secret of default/test', 'nothing was changed by the attempts');
  });

  it('needs files:read / files:write on application keys', async () => {
    const noScope = server.keys.test.application_key;
    assert.equal((await server.request('GET', '/v1/files', { auth: noScope })).status, 403);
    assert.equal((await uploadRaw(server, noScope, 'x', { name: 'x.txt' })).status, 403);
    const readOnly = await server.request('POST', '/v1/keys', {
      auth: server.keys.test.account_key,
      json: { kind: 'application', name: 'reader', scopes: ['files:read'] },
    });
    assert.equal(readOnly.status, 201, readOnly.text);
    const reader = readOnly.json.key;
    assert.equal((await server.request('GET', `/v1/files/${file.id}`, { auth: reader })).status, 200);
    assert.equal((await uploadRaw(server, reader, 'x', { name: 'x.txt' })).status, 403);
    assert.equal((await server.request('DELETE', `/v1/files/${file.id}`, { auth: reader })).status, 403);
    const writer = (
      await server.request('POST', '/v1/keys', { auth: server.keys.test.account_key, json: { kind: 'application', name: 'writer', scopes: ['files:write'] } })
    ).json.key;
    const created = await uploadRaw(server, writer, 'from the app', { name: 'app.txt' });
    assert.equal(created.status, 201);
    const ownerAttempt = await uploadRaw(server, writer, 'x', { name: 'y.txt', query: 'owner_id=usr_x' });
    assert.equal(ownerAttempt.status, 403, 'only account keys and admins choose the owner');
    assert.equal((await server.request('GET', '/v1/files', { auth: server.operatorToken })).status, 403);
    assert.equal((await server.request('GET', '/v1/files')).status, 401);
  });

  it('shows users their own files only; admins and account keys see all', async () => {
    const app = server.keys.test.application_key;
    const register = (email: string) => server.request('POST', '/v1/auth/register', { auth: app, json: { email, password: 'correct horse battery', name: email } });
    const alice = await register('alice@example.com');
    assert.equal(alice.status, 201, alice.text);
    const bob = await register('bob@example.com');
    const aliceToken = alice.json.access_token;
    const bobToken = bob.json.access_token;

    const aliceFile = await uploadRaw(server, aliceToken, 'alice only', { name: 'mine.txt' });
    assert.equal(aliceFile.status, 201, aliceFile.text);
    assert.equal(aliceFile.json.owner_id, alice.json.user.id);
    const bobSameName = await uploadRaw(server, bobToken, 'bob too', { name: 'mine.txt' });
    assert.equal(bobSameName.status, 201, 'names are per owner');

    assert.deepEqual(await touchAll(server, bobToken, aliceFile.json.id), [404, 404, 404, 404, 404]);
    assert.deepEqual(await touchAll(server, bobToken, file.id), [404, 404, 404, 404, 404], 'a tenant-owned file is not a user\'s');
    const bobList = await server.request('GET', '/v1/files', { auth: bobToken });
    assert.deepEqual(bobList.json.data.map((f: { id: string }) => f.id), [bobSameName.json.id]);
    const setOwner = await uploadRaw(server, bobToken, 'x', { name: 'z.txt', query: `owner_id=${alice.json.user.id}` });
    assert.equal(setOwner.status, 403);
    assert.equal((await server.request('GET', '/v1/usage', { auth: bobToken })).status, 403);

    const admin = await server.request('POST', '/v1/users', {
      auth: server.keys.test.account_key,
      json: { email: 'admin@example.com', password: 'correct horse battery', name: 'Admin', role: 'admin' },
    });
    assert.equal(admin.status, 201, admin.text);
    const login = await server.request('POST', '/v1/auth/login', { auth: app, json: { email: 'admin@example.com', password: 'correct horse battery' } });
    assert.equal(login.status, 200, login.text);
    const adminToken = login.json.access_token;
    assert.equal((await server.request('GET', `/v1/files/${aliceFile.json.id}`, { auth: adminToken })).status, 200);
    const forAlice = await uploadRaw(server, adminToken, 'for alice', { name: 'gift.txt', query: `owner_id=${alice.json.user.id}` });
    assert.equal(forAlice.status, 201);
    assert.equal(forAlice.json.owner_id, alice.json.user.id);
    assert.equal((await server.request('GET', `/v1/files/${forAlice.json.id}`, { auth: aliceToken })).status, 200);
    assert.equal((await server.request('GET', '/v1/usage', { auth: adminToken })).status, 200);
    const all = await server.request('GET', '/v1/files?limit=200', { auth: server.keys.test.account_key });
    const ids = all.json.data.map((f: { id: string }) => f.id);
    for (const id of [file.id, aliceFile.json.id, bobSameName.json.id, forAlice.json.id]) assert.ok(ids.includes(id));

    // An application key acts for a client app, not a user: within its scopes it reaches every
    // file of the tenant and environment, users' files included (documented on the routes).
    const appKey = await server.request('POST', '/v1/keys', {
      auth: server.keys.test.account_key,
      json: { kind: 'application', name: 'sync app', scopes: ['files:read', 'files:write'] },
    });
    assert.equal(appKey.status, 201, appKey.text);
    const appKeyed = appKey.json.key;
    const appList = await server.request('GET', '/v1/files?limit=200', { auth: appKeyed });
    const appIds = appList.json.data.map((f: { id: string }) => f.id);
    for (const id of [file.id, aliceFile.json.id, bobSameName.json.id, forAlice.json.id]) assert.ok(appIds.includes(id), `the application key lists ${id}`);
    assert.equal((await server.request('GET', `/v1/files/${aliceFile.json.id}/content`, { auth: appKeyed })).text, 'alice only');
    const appReplace = await server.request('PUT', `/v1/files/${bobSameName.json.id}/content`, { auth: appKeyed, body: 'bob v2', headers: { 'content-type': 'text/plain' } });
    assert.equal(appReplace.status, 200, appReplace.text);
    assert.equal(appReplace.json.owner_id, bob.json.user.id, 'the owner stays the user');
    assert.equal((await server.request('GET', '/v1/usage', { auth: appKeyed })).status, 403, 'usage stays for account keys and admins');
  });
});
