import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { decodeProtectedHeader } from 'jose';
import { SecretBox } from '../src/core/secret-box.ts';
import { TokenService } from '../src/services/identity/domain/tokens.service.ts';
import { startServer, type TestServer } from './helpers/server.ts';

/**
 * The operator's view of the JWT signing keys (GET /v1/signing-keys) and rotation
 * (POST /v1/signing-keys/rotate), over real HTTPS; and a second TokenService on the same
 * databases standing in for another process of the installation, which must follow a
 * rotation made elsewhere and drop retired keys once their tokens have expired.
 */
const PASSWORD = 'correct horse battery staple';

interface KeyView {
  kid: string;
  environment: 'live' | 'test';
  algorithm: string;
  status: 'active' | 'retired';
  created_at: string;
  retired_at: string | null;
  verifies_until: string | null;
}

describe('JWT signing keys: listing and rotation (operator)', () => {
  let server: TestServer;

  before(async () => {
    server = await startServer();
    const registered = await server.request('POST', '/v1/auth/register', {
      basic: server.keys.test.application_key,
      json: { email: 'kim@example.com', password: PASSWORD, name: 'Kim' },
    });
    assert.equal(registered.status, 201);
  });
  after(async () => server?.close());

  const list = async (): Promise<KeyView[]> => {
    const response = await server.request('GET', '/v1/signing-keys', { auth: server.operatorToken });
    assert.equal(response.status, 200);
    assert.equal(response.json.next_cursor, null);
    return response.json.data;
  };
  const active = (keys: KeyView[], environment: string) => keys.filter((key) => key.environment === environment && key.status === 'active');
  const login = async () => {
    const response = await server.request('POST', '/v1/auth/login', { basic: server.keys.test.application_key, json: { email: 'kim@example.com', password: PASSWORD } });
    assert.equal(response.status, 200);
    return response.json.access_token as string;
  };
  const me = (token: string) => server.request('GET', '/v1/users/me', { auth: token });
  const published = async () => (await server.request('GET', '/.well-known/jwks.json')).json.keys.map((key: { kid: string }) => key.kid) as string[];

  it('lists one active key per environment, without any private part', async () => {
    const response = await server.request('GET', '/v1/signing-keys', { auth: server.operatorToken });
    assert.equal(response.status, 200);
    const keys: KeyView[] = response.json.data;
    assert.equal(active(keys, 'live').length, 1);
    assert.equal(active(keys, 'test').length, 1);
    for (const key of keys) {
      assert.equal(key.algorithm, 'EdDSA');
      assert.equal(key.retired_at, null);
      assert.equal(key.verifies_until, null);
      assert.ok(!Number.isNaN(Date.parse(key.created_at)));
    }
    assert.doesNotMatch(response.text, /private|"d":|pkcs8/i);
  });

  it('answers other credentials with 401 or 403, never the keys', async () => {
    const kidsBefore = (await list()).map((key) => key.kid).sort();
    const token = await login();
    for (const [credential, status] of [
      [{ basic: server.keys.test.account_key }, 403],
      [{ basic: server.keys.live.application_key }, 403],
      [{ auth: token }, 403],
      [{ auth: 'not-the-operator-token-at-all-0123456789' }, 401],
      [{}, 401],
    ] as const) {
      for (const [method, url] of [
        ['GET', '/v1/signing-keys'],
        ['POST', '/v1/signing-keys/rotate'],
      ] as const) {
        const response = await server.request(method, url, { ...credential, ...(method === 'POST' ? { json: {} } : {}) });
        assert.equal(response.status, status, `${method} ${url} with ${JSON.stringify(Object.keys(credential))}`);
      }
    }
    assert.deepEqual((await list()).map((key) => key.kid).sort(), kidsBefore, 'nothing was rotated');
  });

  it(
    'rotates one environment: the new key signs, tokens of the old one keep working until they expire',
    async () => {
    const before = await list();
    const [oldTest] = active(before, 'test');
    const [oldLive] = active(before, 'live');
    assert.ok(oldTest && oldLive);
    const oldToken = await login();
    assert.equal(decodeProtectedHeader(oldToken).kid, oldTest.kid);

    const rotated = await server.request('POST', '/v1/signing-keys/rotate', { auth: server.operatorToken, json: { environment: 'test' } });
    assert.equal(rotated.status, 201);
    assert.equal(rotated.json.data.length, 1);
    const fresh: KeyView = rotated.json.data[0];
    assert.equal(fresh.environment, 'test');
    assert.equal(fresh.status, 'active');
    assert.notEqual(fresh.kid, oldTest.kid);

    const after = await list();
    assert.deepEqual(active(after, 'test').map((key) => key.kid), [fresh.kid]);
    assert.deepEqual(active(after, 'live').map((key) => key.kid), [oldLive.kid], 'live is untouched');
    const retired = after.find((key) => key.kid === oldTest.kid);
    assert.ok(retired, 'the old key is still listed');
    assert.equal(retired.status, 'retired');
    assert.ok(retired.retired_at && retired.verifies_until);
    assert.equal(Date.parse(retired.verifies_until) - Date.parse(retired.retired_at), (15 * 60 + 60 + 60) * 1000, 'a token lifetime, the clock skew and one refresh interval');

    const newToken = await login();
    assert.equal(decodeProtectedHeader(newToken).kid, fresh.kid);
    assert.equal((await me(newToken)).status, 200);
    assert.equal((await me(oldToken)).status, 200, 'a token of the retired key still verifies');
    const kids = await published();
    assert.ok(kids.includes(oldTest.kid) && kids.includes(fresh.kid) && kids.includes(oldLive.kid));
  },
  );

  it('rotates both environments when none is named ({} or no body at all)', async () => {
    for (const options of [{ json: {} }, {}]) {
      const before = await list();
      const rotated = await server.request('POST', '/v1/signing-keys/rotate', { auth: server.operatorToken, ...options });
      assert.equal(rotated.status, 201);
      const fresh: KeyView[] = rotated.json.data;
      assert.deepEqual(fresh.map((key) => key.environment).sort(), ['live', 'test']);
      const after = await list();
      for (const environment of ['live', 'test']) {
        const [now] = active(after, environment);
        assert.ok(now && fresh.some((key) => key.kid === now.kid));
        assert.ok(!active(before, environment).some((key) => key.kid === now.kid));
      }
    }
  });

  it('refuses a bad body with 422 and rotates nothing', async () => {
    const before = (await list()).map((key) => key.kid).sort();
    for (const json of [{ environment: 'prod' }, { environment: 1 }, { environment: 'test', extra: true }, [], null]) {
      const response = await server.request('POST', '/v1/signing-keys/rotate', { auth: server.operatorToken, json });
      assert.equal(response.status, 422, JSON.stringify(json));
      assert.equal(response.json.code, 'validation_failed');
    }
    for (const body of ['{"environment":', '']) {
      const malformed = await server.request('POST', '/v1/signing-keys/rotate', { auth: server.operatorToken, body, headers: { 'content-type': 'application/json' } });
      assert.equal(malformed.status, 422, JSON.stringify(body));
      assert.equal(malformed.json.code, 'validation_failed');
    }
    assert.deepEqual((await list()).map((key) => key.kid).sort(), before);
  });

  it('another process that read its keys a moment before a rotation accepts the new key\'s tokens at once', async () => {
    const other = new TokenService({ databases: server.app.databases, box: new SecretBox(server.secretKey), issuer: () => server.url, refreshEveryMs: 3_600_000 });
    await other.start();
    try {
      const token = await login();
      // A token naming a key id nobody has: the other process reads its key set again now.
      const [header, payload, signature] = token.split('.') as [string, string, string];
      const forgedHeader = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(header, 'base64url').toString()), kid: 'no-such-key' })).toString('base64url');
      assert.equal(await other.verify(`${forgedHeader}.${payload}.${signature}`), null);

      const rotated = await server.request('POST', '/v1/signing-keys/rotate', { auth: server.operatorToken, json: { environment: 'test' } });
      assert.equal(rotated.status, 201);
      const fresh = await login();
      assert.equal(decodeProtectedHeader(fresh).kid, rotated.json.data[0].kid);
      const claims = await other.verify(fresh);
      assert.ok(claims, 'the token of the new key is accepted, not refused until some later reload');
      assert.equal(claims.environment, 'test');
    } finally {
      other.stop();
    }
  });

  it('another process follows a rotation at its next refresh, and drops a retired key once its tokens have expired', async () => {
    const secret = server.secretKey;
    let offsetMs = 0;
    // Stands in for another process of the installation, re-reading its key sets every 50 ms.
    const other = new TokenService({
      databases: server.app.databases,
      box: new SecretBox(secret),
      issuer: () => server.url,
      now: () => Date.now() + offsetMs,
      refreshEveryMs: 50,
    });
    await other.start();
    try {
      const claims = { userId: 'usr_x', tenantId: 'ten_x', environment: 'test' as const, role: 'user' as const, sessionId: 'ses_x' };
      const kidOf = () => decodeProtectedHeader(other.sign(claims).token).kid;
      const until = async (condition: () => boolean) => {
        for (let i = 0; i < 200 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
        return condition();
      };
      const before = kidOf();
      const rotated = await server.request('POST', '/v1/signing-keys/rotate', { auth: server.operatorToken, json: { environment: 'test' } });
      const newKid: string = rotated.json.data[0].kid;

      // With no request in between, the periodic re-read alone brings the new signer.
      assert.ok(await until(() => kidOf() === newKid), 'signs with the new key');
      assert.ok(other.jwks().keys.some((key) => key.kid === before), 'the retired key still verifies its tokens');

      // Past a token lifetime, the clock skew and one refresh interval after its retirement, it leaves the set and the JWKS.
      offsetMs = (15 * 60 + 60 + 60 + 1) * 1000;
      assert.ok(await until(() => !other.jwks().keys.some((key) => key.kid === before)), 'the retired key is gone');
    } finally {
      other.stop();
    }
  });
});
