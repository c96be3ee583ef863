import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { sql } from 'kysely';
import { uploadRaw } from '../helpers/files.ts';
import { type Installation, startInstallation } from '../helpers/installation.ts';
import type { TestServer } from '../helpers/server.ts';

/**
 * Two Bantu processes of one installation (one database, one Redis prefix): what one of them
 * revokes or changes, the other refuses or shows at once. Without Redis each would keep its
 * own revocations and cached users, and B would go on serving for a while what A ended.
 */
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const PASSWORD = 'correct horse battery';

describe('two processes sharing PostgreSQL and Redis', () => {
  const prefix = `bantu-test:${randomBytes(6).toString('hex')}:`;
  let installation: Installation;
  let a: TestServer;
  let b: TestServer;

  before(async () => {
    installation = await startInstallation(2, { REDIS_URL, BANTU_REDIS_PREFIX: prefix });
    [a, b] = installation.servers as [TestServer, TestServer];
  });

  after(async () => {
    await installation?.close();
    const redis = new Redis(REDIS_URL);
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length) await redis.del(...keys);
    await redis.quit();
  });

  const register = async (server: TestServer, email: string) => {
    const response = await server.request('POST', '/v1/auth/register', { basic: server.keys.test.application_key, json: { email, password: PASSWORD, name: 'Before' } });
    assert.equal(response.status, 201, response.text);
    return response.json as { user: { id: string }; access_token: string; refresh_token: string };
  };
  const me = (server: TestServer, token: string) => server.request('GET', '/v1/users/me', { auth: token });

  it('a user deleted through A: B refuses its still-valid access token at once', async () => {
    const victim = await register(a, 'deleted-on-a@example.com');
    // B has verified the token and cached the user: the state a per-process B would keep.
    assert.equal((await me(b, victim.access_token)).status, 200);
    const deleted = await a.request('DELETE', `/v1/users/${victim.user.id}`, { basic: a.keys.test.account_key });
    assert.equal(deleted.status, 204);
    const refused = await me(b, victim.access_token);
    assert.equal(refused.status, 401);
    assert.equal(refused.json.code, 'unauthorized');
  });

  it('a session ended through A (logout): B refuses its access token at once, and only that session', async () => {
    const session = await register(a, 'logs-out-on-a@example.com');
    const other = (await a.request('POST', '/v1/auth/login', { basic: a.keys.test.application_key, json: { email: 'logs-out-on-a@example.com', password: PASSWORD } })).json;
    assert.equal((await me(b, session.access_token)).status, 200);
    const out = await a.request('POST', '/v1/auth/logout', { auth: session.access_token, json: { refresh_token: session.refresh_token } });
    assert.equal(out.status, 204);
    assert.equal((await me(b, session.access_token)).status, 401);
    assert.equal((await me(b, other.access_token)).status, 200, 'the other session goes on');
  });

  it('a key revoked through A: B, which holds it as verified in its key cache, refuses it at once', async () => {
    const created = await a.request('POST', '/v1/keys', { basic: a.keys.test.account_key, json: { kind: 'application', name: 'revoked-on-a', scopes: ['users:read'] } });
    assert.equal(created.status, 201, created.text);
    const key = created.json.key as string;
    assert.equal((await b.request('GET', '/v1/users', { basic: key })).status, 200, 'verified, and now cached, in B');
    assert.equal((await a.request('DELETE', `/v1/keys/${created.json.id}`, { basic: a.keys.test.account_key })).status, 204);
    const refused = await b.request('GET', '/v1/users', { basic: key });
    assert.equal(refused.status, 401);
    assert.equal(refused.json.code, 'unauthorized');
    assert.equal((await b.request('GET', '/v1/users', { basic: b.keys.test.account_key })).status, 200, 'other keys go on');
  });

  it('a change to a user through A is what B answers next', async () => {
    const user = await register(a, 'renamed-on-a@example.com');
    assert.equal((await me(b, user.access_token)).json.name, 'Before', 'B has read (and cached) the user');
    const renamed = await a.request('PATCH', '/v1/users/me', { auth: user.access_token, json: { name: 'After' } });
    assert.equal(renamed.status, 200);
    assert.equal((await me(b, user.access_token)).json.name, 'After');
    const promoted = await a.request('PATCH', `/v1/users/${user.user.id}`, { basic: a.keys.test.account_key, json: { role: 'admin' } });
    assert.equal(promoted.status, 200);
    assert.equal((await me(b, user.access_token)).json.role, 'admin');
  });

  it('concurrent twins under one Idempotency-Key on A and B make one file (the database claim holds across processes)', async () => {
    // Holds without Redis too: the claim is the idempotency row's primary key, taken in the
    // write's transaction. A guard, so that no in-process shortcut ever replaces it.
    const content = randomBytes(20_000);
    const headers = { 'idempotency-key': `twins-${randomBytes(4).toString('hex')}` };
    const key = a.keys.test.account_key;
    const answers = await Promise.all([a, b, a, b].map((server) => uploadRaw(server, key, content, { name: 'twins-across.bin', headers })));
    for (const answer of answers) assert.equal(answer.status, 201, answer.text);
    assert.equal(new Set(answers.map((answer) => answer.json.id)).size, 1);
    const rows = await sql`select id from files.file where name = 'twins-across.bin'`.execute(a.app.databases.environments.test);
    assert.equal(rows.rows.length, 1);
  });
});
