import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { resetTokenIn, waitForMails } from './helpers/mail.ts';
import { startServer, type TestServer } from './helpers/server.ts';

/**
 * Isolation matrix: user A vs user B, tenant 1 vs tenant 2, test vs live credentials, on
 * every user and key route. Refusals are 404 (or 401/403 for credentials that may not call
 * the route at all), and a refused answer never carries the other side's data. Each
 * refusal has a positive control: the rightful credential does see the resource.
 */
const PASSWORD = 'correct horse battery staple';

interface Keys {
  account_key: string;
  application_key: string;
}
interface Session {
  access_token: string;
  refresh_token: string;
  user: { id: string; email: string; name: string };
}

describe('isolation between users, tenants and environments', () => {
  let server: TestServer;
  let t1: { test: Keys; live: Keys };
  let t2: { test: Keys; live: Keys };
  let a: Session; // tenant 1, test
  let b: Session; // tenant 1, test
  let c: Session; // tenant 2, test
  let d: Session; // tenant 1, live, same email as A
  let t1Key: { id: string; key: string }; // tenant 1, test

  const register = async (key: string, email: string, password = PASSWORD): Promise<Session> => {
    const response = await server.request('POST', '/v1/auth/register', { basic: key, json: { email, password, name: `Name of ${email}` } });
    assert.equal(response.status, 201, response.text);
    return response.json;
  };

  before(async () => {
    server = await startServer();
    t1 = server.keys;
    const other = await server.request('POST', '/v1/tenants', { auth: server.operatorToken, json: { name: 'Other Co' } });
    t2 = other.json.keys;
    a = await register(t1.test.application_key, 'a@example.com');
    b = await register(t1.test.application_key, 'b@example.com');
    c = await register(t2.test.application_key, 'c@example.com');
    d = await register(t1.live.application_key, 'a@example.com', 'the live password');
    const key = await server.request('POST', '/v1/keys', { basic: t1.test.account_key, json: { kind: 'application', name: 'tenant 1 crm', scopes: ['users:read'] } });
    t1Key = { id: key.json.id, key: key.json.key };
  });
  after(async () => server?.close());

  /** Asserts a refusal that leaks nothing of `secrets`. */
  const refusedWithoutData = (response: { status: number; text: string }, secrets: string[], why: string, allowed = [401, 403, 404]) => {
    assert.ok(allowed.includes(response.status), `${why}: status ${response.status} ${response.text}`);
    for (const secret of secrets) assert.ok(!response.text.includes(secret), `${why}: leaked ${secret}`);
  };

  it('positive controls: the rightful credentials see each resource', async () => {
    assert.equal((await server.request('GET', `/v1/users/${a.user.id}`, { basic: t1.test.account_key })).status, 200);
    assert.equal((await server.request('GET', `/v1/users/${a.user.id}`, { auth: a.access_token })).status, 200, 'a user sees itself');
    assert.equal((await server.request('GET', `/v1/users/${c.user.id}`, { basic: t2.test.account_key })).status, 200);
    assert.equal((await server.request('GET', `/v1/users/${d.user.id}`, { basic: t1.live.account_key })).status, 200);
    assert.equal((await server.request('GET', '/v1/users/me', { auth: d.access_token })).json.id, d.user.id);
    assert.notEqual(a.user.id, d.user.id, 'the same email in two environments is two users');
  });

  it('user, tenant and environment boundaries on GET|PATCH|DELETE /v1/users/{id}', async () => {
    const crossings: Array<{ who: string; target: Session; credential: { auth?: string; basic?: string } }> = [
      { who: 'user A -> user B', target: b, credential: { auth: a.access_token } },
      { who: 'user B -> user A', target: a, credential: { auth: b.access_token } },
      { who: 'tenant 2 account key -> tenant 1 user', target: a, credential: { basic: t2.test.account_key } },
      { who: 'tenant 2 user -> tenant 1 user', target: a, credential: { auth: c.access_token } },
      { who: 'tenant 1 user -> tenant 2 user', target: c, credential: { auth: a.access_token } },
      { who: 'tenant 1 account key -> tenant 2 user', target: c, credential: { basic: t1.test.account_key } },
      { who: 'live account key -> test user', target: a, credential: { basic: t1.live.account_key } },
      { who: 'test account key -> live user', target: d, credential: { basic: t1.test.account_key } },
      { who: 'live user -> test user', target: a, credential: { auth: d.access_token } },
      { who: 'test user -> live user', target: d, credential: { auth: a.access_token } },
      { who: 'tenant 1 scoped app key -> tenant 2 user', target: c, credential: { basic: t1Key.key } },
    ];
    for (const { who, target, credential } of crossings) {
      const secrets = [target.user.id, target.user.name];
      const read = await server.request('GET', `/v1/users/${target.user.id}`, credential);
      refusedWithoutData(read, secrets, `${who} GET`, [404]);
      assert.equal(read.json.code, 'not_found');
      const patch = await server.request('PATCH', `/v1/users/${target.user.id}`, { ...credential, json: { name: 'pwned' } });
      refusedWithoutData(patch, secrets, `${who} PATCH`, credential.basic === t1Key.key ? [403, 404] : [404]);
      const remove = await server.request('DELETE', `/v1/users/${target.user.id}`, credential);
      refusedWithoutData(remove, secrets, `${who} DELETE`, credential.basic === t1Key.key ? [403, 404] : [404]);
    }
    for (const [session, key] of [[a, t1.test.account_key], [b, t1.test.account_key], [c, t2.test.account_key], [d, t1.live.account_key]] as const) {
      const still = await server.request('GET', `/v1/users/${session.user.id}`, { basic: key });
      assert.equal(still.status, 200, 'nobody was deleted');
      assert.equal(still.json.name, session.user.name, 'nobody was renamed');
    }
  });

  it('lists show only the caller tenant and environment; plain users get no list', async () => {
    const t1test = await server.request('GET', '/v1/users', { basic: t1.test.account_key });
    const ids = t1test.json.data.map((u: { id: string }) => u.id).sort();
    assert.deepEqual(ids, [a.user.id, b.user.id].sort());
    const t1live = await server.request('GET', '/v1/users', { basic: t1.live.account_key });
    assert.deepEqual(t1live.json.data.map((u: { id: string }) => u.id), [d.user.id]);
    const t2test = await server.request('GET', '/v1/users', { basic: t2.test.account_key });
    assert.deepEqual(t2test.json.data.map((u: { id: string }) => u.id), [c.user.id]);
    refusedWithoutData(await server.request('GET', '/v1/users', { auth: a.access_token }), [b.user.id, b.user.email], 'plain user lists users', [403]);
    const me = await server.request('GET', '/v1/users/me', { auth: a.access_token });
    assert.equal(me.json.id, a.user.id);
    refusedWithoutData(me, [b.user.id, d.user.id, c.user.id], '/me shows only the caller', [200]);
  });

  it('keys of one tenant and environment are invisible and irrevocable from the others', async () => {
    for (const [who, key] of [
      ['tenant 2 account key', t2.test.account_key],
      ['live account key', t1.live.account_key],
    ] as const) {
      const list = await server.request('GET', '/v1/keys?limit=200', { basic: key });
      assert.equal(list.status, 200);
      assert.ok(!list.text.includes(t1Key.id), `${who} lists tenant 1 test keys`);
      refusedWithoutData(await server.request('DELETE', `/v1/keys/${t1Key.id}`, { basic: key }), [t1Key.key], `${who} revokes`, [404]);
    }
    for (const credential of [{ auth: a.access_token }, { basic: t1Key.key }]) {
      refusedWithoutData(await server.request('GET', '/v1/keys', credential), [t1Key.id], 'non-account credential lists keys', [403]);
      refusedWithoutData(await server.request('DELETE', `/v1/keys/${t1Key.id}`, credential), [t1Key.id], 'non-account credential revokes', [403]);
    }
    assert.equal((await server.request('GET', '/v1/users', { basic: t1Key.key })).status, 200, 'the key survived');
    // A key only works in its own tenant: the scoped key sees tenant 1 users, never tenant 2's.
    const seen = await server.request('GET', '/v1/users', { basic: t1Key.key });
    assert.ok(!seen.text.includes(c.user.id));
  });

  it('audit trails are per tenant and environment', async () => {
    const t2audit = await server.request('GET', '/v1/audit?limit=200', { basic: t2.test.account_key });
    assert.equal(t2audit.status, 200);
    assert.ok(t2audit.text.includes(c.user.id));
    for (const secret of [a.user.id, b.user.id, d.user.id, t1Key.id]) assert.ok(!t2audit.text.includes(secret));
    const live = await server.request('GET', '/v1/audit?limit=200', { basic: t1.live.account_key });
    for (const secret of [a.user.id, b.user.id, t1Key.id]) assert.ok(!live.text.includes(secret));
    refusedWithoutData(await server.request('GET', '/v1/audit', { auth: a.access_token }), [a.user.id], 'user reads audit', [403]);
  });

  it('auth routes: credentials of one tenant or environment cannot use another one\'s tokens or accounts', async () => {
    for (const key of [t2.test.application_key, t1.live.application_key]) {
      const refresh = await server.request('POST', '/v1/auth/refresh', { basic: key, json: { refresh_token: a.refresh_token } });
      refusedWithoutData(refresh, [a.user.id, a.user.email], 'foreign refresh', [400]);
      const login = await server.request('POST', '/v1/auth/login', { basic: key, json: { email: 'a@example.com', password: PASSWORD } });
      refusedWithoutData(login, [a.user.id], 'foreign login', [401]);
    }
    const own = await server.request('POST', '/v1/auth/refresh', { basic: t1.test.application_key, json: { refresh_token: a.refresh_token } });
    assert.equal(own.status, 200, 'the foreign attempts did not spend or revoke the token');
    const liveLogin = await server.request('POST', '/v1/auth/login', { basic: t1.live.application_key, json: { email: 'A@example.com', password: 'the live password' } });
    assert.equal(liveLogin.json.user.id, d.user.id);

    // A reset token mailed for tenant 1 test works only there.
    await server.request('POST', '/v1/auth/password/forgot', { basic: t1.test.application_key, json: { email: 'b@example.com' } });
    const [mailFile] = await waitForMails(server.dataDir, 1);
    const token = resetTokenIn(await fs.readFile(mailFile as string, 'utf8'));
    for (const key of [t2.test.application_key, t1.live.application_key]) {
      const reset = await server.request('POST', '/v1/auth/password/reset', { basic: key, json: { token, password: 'hijacked password' } });
      assert.equal(reset.status, 400);
      assert.equal(reset.json.code, 'invalid_token');
    }
    const reset = await server.request('POST', '/v1/auth/password/reset', { basic: t1.test.application_key, json: { token, password: 'b new password' } });
    assert.equal(reset.status, 204);
  });

  it('logout cannot end another user\'s session', async () => {
    const victim = await server.request('POST', '/v1/auth/login', { basic: t1.test.application_key, json: { email: 'a@example.com', password: PASSWORD } });
    const out = await server.request('POST', '/v1/auth/logout', { auth: c.access_token, json: { refresh_token: victim.json.refresh_token } });
    assert.equal(out.status, 204, 'the same answer as for any token');
    const refresh = await server.request('POST', '/v1/auth/refresh', { basic: t1.test.application_key, json: { refresh_token: victim.json.refresh_token } });
    assert.equal(refresh.status, 200, 'the victim session is alive');
  });
});
